"""assign: every backend against the float64 brute force and the reference, odd shapes."""

import pytest
import torch

from fastdc.ops import assign
from fastdc.ops.assign import assign_ref
from tests.helpers import backend_params, is_interpreted, poisoned_allocations

# (B, N, K, D): N=1, K=1, K>N, D not a power of two, B>1
SHAPES = [
    (1, 1, 1, 1),
    (1, 1, 5, 3),
    (1, 7, 3, 64),
    (1, 1000, 37, 257),
    (3, 50, 70, 3),
    (2, 1030, 129, 64),
]


def brute_force(x, c, metric):
    """float64 scores [B, N, K]; returns (best value, best index, gap to the runner-up)."""
    x64, c64 = x.double(), c.double()
    if metric == "l2":
        s = ((x64.unsqueeze(2) - c64.unsqueeze(1)) ** 2).sum(-1)
    else:
        s = -(x64 @ c64.transpose(1, 2))
    top = s.topk(min(2, s.shape[-1]), dim=-1, largest=False)
    gap = top.values[..., 1] - top.values[..., 0] if s.shape[-1] > 1 else torch.full_like(
        top.values[..., 0], float("inf")
    )
    best = top.values[..., 0] if metric == "l2" else -top.values[..., 0]
    return best, top.indices[..., 0], gap


@pytest.mark.parametrize("backend,device", backend_params("assign"))
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_float64_brute_force(backend, device, metric, shape):
    B, N, K, D = shape
    if is_interpreted(backend, device) and N * K > 70_000:
        N = 300  # the interpreter is slow: keep the odd shape, trim N
    g = torch.Generator().manual_seed(N * 31 + K)
    x = torch.randn(B, N, D, generator=g).to(device)
    c = torch.randn(B, K, D, generator=g).to(device)
    with poisoned_allocations():
        dist, idx = assign(x, c, metric=metric, backend=backend)
    assert dist.shape == (B, N) and idx.shape == (B, N)
    assert dist.dtype == torch.float32 and idx.dtype == torch.int64
    best, arg, gap = (t.cpu() for t in brute_force(x.cpu(), c.cpu(), metric))
    clear = gap > 1e-3 * (1 + best.abs())  # rows without a near tie
    assert clear.float().mean() > 0.9
    assert torch.equal(idx.cpu()[clear], arg[clear])
    torch.testing.assert_close(dist.cpu().double(), best, rtol=1e-4, atol=1e-4 * D)


@pytest.mark.parametrize("backend,device", backend_params("assign"))
def test_unbatched_matches_reference(backend, device):
    g = torch.Generator().manual_seed(3)
    x, c = torch.randn(517, 33, generator=g), torch.randn(45, 33, generator=g)
    dist, idx = assign(x.to(device), c.to(device), backend=backend)
    rd, ri = assign_ref(x[None], c[None], "l2")
    assert idx.shape == (517,)
    assert torch.equal(idx.cpu(), ri[0])
    torch.testing.assert_close(dist.cpu(), rd[0], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend,device", backend_params("assign"))
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_ties_go_to_the_smallest_index(backend, device, metric):
    # small integers: every product and sum is exact, so copies of a centroid tie exactly
    g = torch.Generator().manual_seed(0)
    c = torch.randint(-3, 4, (3, 8), generator=g).float()
    c = torch.cat([c, c, c])  # centroids j, j+3 and j+6 are identical
    x = torch.randint(-3, 4, (40, 8), generator=g).float()
    _, idx = assign(x.to(device), c.to(device), metric=metric, backend=backend)
    scores = ((x[:, None] - c[None]) ** 2).sum(-1) if metric == "l2" else -(x @ c.T)
    expected = [row.tolist().index(min(row.tolist())) for row in scores]
    assert max(expected) < 3
    assert idx.cpu().tolist() == expected


@pytest.mark.parametrize("backend,device", backend_params("assign"))
def test_identical_points_have_zero_distance(backend, device):
    x = torch.full((20, 9), 2.5)
    dist, idx = assign(x.to(device), x[:4].to(device), backend=backend)
    assert torch.equal(idx.cpu(), torch.zeros(20, dtype=torch.int64))
    assert float(dist.abs().max()) < 1e-4


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="feature dimension"):
        assign(torch.randn(5, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="both be batched"):
        assign(torch.randn(2, 5, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="dims"):
        assign(torch.randn(5), torch.randn(2, 5))


def test_bad_dtype_and_metric_are_clear_errors():
    with pytest.raises(TypeError, match="floating"):
        assign(torch.ones(5, 3, dtype=torch.int64), torch.randn(2, 3))
    with pytest.raises(ValueError, match="metric"):
        assign(torch.randn(5, 3), torch.randn(2, 3), metric="cosine")
