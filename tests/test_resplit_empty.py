"""resplit_empty: faiss's rule, bit-identical across backends (torch reference, cpu, triton,
cuda) given the same uniforms, edge cases, properties and errors."""

import logging

import pytest
import torch

from fastdc.ops import registry as backends
from fastdc.ops import resplit_empty
from fastdc.ops.resplit_empty import EPS, resplit_empty_ref
from tests.helpers import backend_params, is_interpreted, run_backend


def problem(B=1, K=12, D=6, empty=(2, 5, 9), seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(B, K, D, generator=g)
    counts = torch.randint(1, 40, (B, K), generator=g).float()
    counts[:, list(empty)] = 0
    c[:, list(empty)] = 0
    return c, counts


def random_case(B, K, D, seed):
    """Integer counts (exact float64 prefix sums), 30 % empty, at least one empty slot, and
    for 5 to 40 clusters every other one empty in the last problem (later splits see the
    updated weights); uniforms."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(B, K, D, generator=g)
    counts = torch.randint(1, 6, (B, K), generator=g).float()
    counts[torch.rand(B, K, generator=g) < 0.3] = 0
    counts[0, -1] = 0
    if 4 < K <= 40:
        counts[-1, 1::2] = 0
    return c, counts, torch.rand(B, K, generator=g, dtype=torch.float64)


def split_like_the_reference(backend, device, c, counts, u, n_frozen):
    """Run ``backend`` in place on copies; assert every bit equals the reference's; nsplit."""
    got_c, got_n = c.clone().to(device), counts.clone().to(device)
    nsplit = run_backend("resplit_empty", backend, centroids=got_c, counts=got_n,
                         uniforms=u.to(device), n_frozen=n_frozen)
    ref_c, ref_n = c.clone(), counts.clone()
    ref_split = resplit_empty_ref(ref_c, ref_n, u, n_frozen)
    assert torch.equal(nsplit.cpu(), ref_split)
    assert torch.equal(got_c.cpu(), ref_c) and torch.equal(got_n.cpu(), ref_n)
    return nsplit.cpu()


@pytest.mark.parametrize("backend,device", backend_params("resplit_empty"))
@pytest.mark.parametrize(
    "B,K,D,n_frozen",
    [(1, 1, 1, 0), (1, 1, 3, 0), (1, 6, 3, 0), (1, 12, 7, 0), (1, 12, 7, 3), (3, 40, 7, 2),
     (3, 40, 257, 0), (3, 40, 257, 3), (1, 50, 257, 10), (2, 300, 64, 0), (3, 300, 65, 2)],
)
def test_bit_identical_to_reference(backend, device, B, K, D, n_frozen):
    if is_interpreted(backend, device) and K >= 300:
        B = 1  # the interpreter is slow: one problem of a few hundred clusters is enough
    c, counts, u = random_case(B, K, D, seed=K * 7 + D)
    nsplit = split_like_the_reference(backend, device, c, counts, u, n_frozen)
    if n_frozen == 0 and K > 1:
        assert int(nsplit.sum()) > 0


@pytest.mark.parametrize("backend,device", backend_params("resplit_empty"))
@pytest.mark.parametrize(
    "counts, expect",
    [
        ([0.0, 1.0, 0.0, 1.0], 2),  # every (count - 1) weight is 0: weigh by raw counts
        ([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], 3),  # the same, three empties
        ([0.0, 0.0, 0.0], 0),  # nothing can donate: no split, no error, nothing changes
        ([0.0, 7.0, 0.0, 0.0, 2.0], 3),  # one big donor split three times
    ],
)
def test_edge_cases_like_the_reference(backend, device, counts, expect):
    cnt = torch.tensor([counts])
    K = cnt.shape[1]
    c = torch.randn(1, K, 5, generator=torch.Generator().manual_seed(10))
    u = torch.rand(1, K, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    assert int(split_like_the_reference(backend, device, c, cnt, u, 0)[0]) == expect


@pytest.mark.parametrize("backend,device", backend_params("resplit_empty"))
@pytest.mark.parametrize("B,K,D,n_frozen", [(1, 12, 6, 0), (3, 40, 257, 0), (1, 2, 1, 0),
                                            (2, 30, 9, 1)])
def test_public_op_identical_to_reference(backend, device, B, K, D, n_frozen):
    """Same seed, same uniforms on the device's generator: the torch backend's very result."""
    c, n = problem(B, K, D, empty=range(1, K, 3))
    ref = resplit_empty(c.to(device), n.to(device), seed=7, n_frozen=n_frozen, backend="torch")
    got = resplit_empty(c.to(device), n.to(device), seed=7, n_frozen=n_frozen, backend=backend)
    for r, o in zip(ref, got, strict=True):
        assert torch.equal(r, o)
    assert int((got[1][..., n_frozen:] == 0).sum()) == 0


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


def test_nothing_to_split_returns_copies_and_draws_the_same_uniforms():
    c, counts = torch.randn(2, 6, 5), torch.tensor([[3.0, 1, 2, 5, 1, 1], [0.0, 4, 4, 1, 2, 3]])
    g, same = torch.Generator(), torch.Generator()
    g.manual_seed(4), same.manual_seed(4)
    new, n, nsplit = resplit_empty(c, counts, generator=g, n_frozen=1)  # only a frozen 0
    assert nsplit.tolist() == [0, 0] and torch.equal(new, c) and torch.equal(n, counts)
    assert new.data_ptr() != c.data_ptr() and n.data_ptr() != counts.data_ptr()
    torch.rand(2, 6, generator=same, dtype=torch.float64)  # what a call with a split draws
    assert torch.equal(g.get_state(), same.get_state())


def test_inputs_that_require_grad_run_on_the_fast_backend(monkeypatch, caplog):
    """resplit_empty is not differentiable: the public op detaches, so no fallback to torch."""
    monkeypatch.setattr(backends, "_LOGGED", set())
    c, n = problem(K=30, empty=range(0, 30, 4))
    with caplog.at_level(logging.WARNING, logger="fastdc"):
        got = resplit_empty(c[0].requires_grad_(), n[0].requires_grad_(), seed=2)
    assert not [r for r in caplog.records if r.name == "fastdc"]
    expect = resplit_empty(c[0].detach(), n[0].detach(), seed=2)
    assert all(torch.equal(a, b) for a, b in zip(got, expect, strict=True))
    assert not got[0].requires_grad


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="must match"):
        resplit_empty(torch.zeros(4, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="n_frozen"):
        resplit_empty(torch.zeros(4, 2), torch.ones(4), n_frozen=5)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_large_bit_identical(backend):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if backend not in backends.available("resplit_empty"):
        pytest.skip(f"backend {backend!r} did not load")
    g = torch.Generator().manual_seed(4)
    c = torch.randn(2, 10_000, 256, generator=g)
    cnt = torch.randint(1, 300, (2, 10_000), generator=g).float()
    cnt[torch.rand(2, 10_000, generator=g) < 0.01] = 0
    out = resplit_empty(c.cuda(), cnt.cuda(), seed=5, n_frozen=3, backend=backend)
    ref = resplit_empty(c.cuda(), cnt.cuda(), seed=5, n_frozen=3, backend="torch")
    for a, b in zip(out, ref, strict=True):
        assert torch.equal(a, b)
