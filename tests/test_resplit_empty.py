"""resplit_empty: faiss's rule, identical across backends, properties."""

import pytest
import torch

from fastdc.ops import resplit_empty
from fastdc.ops.resplit_empty import EPS
from tests.helpers import backend_params


def problem(B=1, K=12, D=6, empty=(2, 5, 9), seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(B, K, D, generator=g)
    counts = torch.randint(1, 40, (B, K), generator=g).float()
    counts[:, list(empty)] = 0
    c[:, list(empty)] = 0
    return c, counts


@pytest.mark.parametrize("backend,device", backend_params("resplit_empty"))
@pytest.mark.parametrize("B,K,D", [(1, 12, 6), (3, 40, 257), (1, 2, 1)])
def test_identical_to_reference(backend, device, B, K, D):
    c, n = problem(B, K, D, empty=range(1, K, 3))
    ref = resplit_empty(c, n, seed=7, backend="torch")
    got = resplit_empty(c.to(device), n.to(device), seed=7, backend=backend)
    if device == "cpu":  # the uniforms come from the device's generator: comparable on CPU
        for r, o in zip(ref, got, strict=True):
            assert torch.equal(r, o.cpu())
    assert int((got[1] == 0).sum()) == 0


@pytest.mark.parametrize("backend,device", backend_params("resplit_empty"))
def test_no_empty_cluster_and_counts_conserved(backend, device):
    c, n = problem(K=50, D=7, empty=range(0, 50, 2))
    new_c, new_n, nsplit = resplit_empty(c.to(device), n.to(device), seed=1, backend=backend)
    assert int(nsplit) == 25
    assert bool((new_n > 0).all())
    assert float(new_n.sum()) == pytest.approx(float(n.sum()))


def test_split_copies_donor_with_faiss_perturbation():
    c = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    n = torch.tensor([10.0, 0.0])
    new_c, new_n, nsplit = resplit_empty(c, n, seed=0)
    up = torch.tensor([1 + EPS, 1 - EPS, 1 + EPS])
    down = torch.tensor([1 - EPS, 1 + EPS, 1 - EPS])
    assert int(nsplit) == 1
    assert torch.equal(new_c[1], c[0] * up)
    assert torch.equal(new_c[0], c[0] * down)
    assert new_n.tolist() == [5.0, 5.0]


def test_donor_probability_follows_size_minus_one():
    # donors: cluster 0 (size 1 -> weight 0), cluster 1 (size 4 -> 3), cluster 2 (size 2 -> 1)
    counts = torch.tensor([1.0, 4.0, 2.0, 0.0])
    picks = []
    for seed in range(400):
        _, n, _ = resplit_empty(torch.zeros(4, 2), counts, seed=seed)
        picks.append(1 if n[1] < 4 else 2)
    share = sum(p == 1 for p in picks) / len(picks)
    assert 0.65 < share < 0.85  # expected 3/4
    assert all(p in (1, 2) for p in picks)


def test_frozen_clusters_are_neither_split_nor_donors():
    c, n = problem(K=6, D=3, empty=(1, 4))
    n[0, 0] = 1000  # by far the likeliest donor, but frozen
    new_c, new_n, nsplit = resplit_empty(c[0], n[0], seed=3, n_frozen=2)
    assert int(nsplit) == 1  # only cluster 4 (cluster 1 is frozen)
    assert torch.equal(new_c[:2], c[0, :2]) and torch.equal(new_n[:2], n[0, :2])


def test_same_seed_same_result_and_inputs_untouched():
    c, n = problem(K=30, empty=range(0, 30, 3))
    c0, n0 = c.clone(), n.clone()
    a = resplit_empty(c, n, seed=11)
    b = resplit_empty(c, n, seed=11)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert torch.equal(c, c0) and torch.equal(n, n0)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="must match"):
        resplit_empty(torch.zeros(4, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="n_frozen"):
        resplit_empty(torch.zeros(4, 2), torch.ones(4), n_frozen=5)
