"""cluster_sums / update_centroids: every backend against a float64 computation."""

import pytest
import torch

from fastdc.ops import cluster_sums, update_centroids
from tests.helpers import backend_params, poisoned_allocations

SHAPES = [(1, 1, 1, 1), (1, 7, 3, 5), (1, 1000, 37, 257), (3, 50, 70, 3), (2, 1500, 10, 64)]


def expected(x, idx, k, w):
    B, N, D = x.shape
    sums = torch.zeros(B, k, D, dtype=torch.float64)
    counts = torch.zeros(B, k, dtype=torch.float64)
    for b in range(B):
        for i in range(N):
            wi = 1.0 if w is None else float(w[b, i])
            sums[b, idx[b, i]] += wi * x[b, i].double()
            counts[b, idx[b, i]] += wi
    return sums, counts


@pytest.mark.parametrize("backend,device", backend_params("cluster_sums"))
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_float64(backend, device, weighted, shape):
    B, N, K, D = shape
    g = torch.Generator().manual_seed(N + K)
    x = torch.randn(B, N, D, generator=g)
    idx = torch.randint(K, (B, N), generator=g)
    w = torch.rand(B, N, generator=g) if weighted else None
    with poisoned_allocations():
        sums, counts = cluster_sums(
            x.to(device), idx.to(device), K, weights=None if w is None else w.to(device),
            backend=backend,
        )
    es, ec = expected(x, idx, K, w)
    assert sums.shape == (B, K, D) and counts.shape == (B, K)
    assert sums.dtype == torch.float32 and counts.dtype == torch.float32
    torch.testing.assert_close(sums.cpu().double(), es, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(counts.cpu().double(), ec, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend,device", backend_params("cluster_sums"))
def test_update_gives_means_and_zero_for_empty(backend, device):
    x = torch.tensor([[0.0, 2.0], [2.0, 4.0], [10.0, 10.0]])
    idx = torch.tensor([0, 0, 2])
    c, n = update_centroids(x.to(device), idx.to(device), 4, backend=backend)
    assert torch.equal(c.cpu(), torch.tensor([[1.0, 3.0], [0, 0], [10.0, 10.0], [0, 0]]))
    assert torch.equal(n.cpu(), torch.tensor([2.0, 0.0, 1.0, 0.0]))


@pytest.mark.parametrize("backend,device", backend_params("cluster_sums"))
def test_is_deterministic(backend, device):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3000, 40, generator=g).to(device)
    idx = torch.randint(17, (3000,), generator=g).to(device)
    a = cluster_sums(x, idx, 17, backend=backend)
    b = cluster_sums(x, idx, 17, backend=backend)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_inputs_are_clear_errors():
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"outside \[0, 4\)"):
        cluster_sums(x, torch.tensor([0, 1, 2, 3, 4]), 4)
    with pytest.raises(ValueError, match="must match"):
        cluster_sums(x, torch.tensor([0, 1]), 4)
    with pytest.raises(TypeError, match="integer"):
        cluster_sums(x, torch.zeros(5), 4)
    with pytest.raises(ValueError, match="positive int"):
        cluster_sums(x, torch.zeros(5, dtype=torch.int64), 0)
