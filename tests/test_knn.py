"""knn: every backend against a float64 brute-force top-k on odd shapes (ragged N/M/D, k = 1,
k = M, batched), exact ties, the self-neighbour of a graph, poisoned outputs and errors. The
triton backend runs here compiled on a GPU, else under TRITON_INTERPRET=1 on fewer rows; the
cuda backend runs on a GPU (its kernel runs on the CPU in tests/test_cuda_emulated.py). k above
a kernel's list limit (kernels/knn.py: MAX_K; LAUNCH["knn"]["MAX_K"] for csrc/cuda/knn.cu) is
left to the reference."""

import pytest
import torch

from fastdc.ops import knn
from fastdc.ops.cuda_sources import LAUNCH
from fastdc.ops.registry import BackendError
from tests.helpers import (
    NEAR_TIE,
    ODD_SHAPE_IDS,
    ODD_SHAPES,
    TOLERANCES,
    assert_close,
    backend_params,
    is_interpreted,
    poisoned_allocations,
    triton_kernels,
)

INTERPRETED_ROWS = 100
INTERPRETED_MAX_K = 8  # k = M under the interpreter only up to here; k = 64: its own test
TRITON_MAX_K = 64  # kernels/knn.py: MAX_K
CUDA_MAX_K = LAUNCH["knn"]["MAX_K"]  # csrc/cuda/knn.cu's list length
LARGEST_K = min(TRITON_MAX_K, CUDA_MAX_K)  # the longest list every kernel keeps


def ks_for(backend, device, M):
    """k = 1, 5 and M, the ones ``backend`` takes (triton: k <= TRITON_MAX_K, and under the
    interpreter k <= INTERPRETED_MAX_K; cuda: k <= CUDA_MAX_K)."""
    top = {"triton": TRITON_MAX_K, "cuda": CUDA_MAX_K}.get(backend, M)
    if is_interpreted(backend, device):
        top = INTERPRETED_MAX_K
    return [k for k in sorted({1, min(5, M), M}) if k <= top]


def brute_force_topk(x, y, k, metric):
    """float64 truth: (values [B, N, k], idx [B, N, k], clear [B, N, k]) with clear False where
    the score is within 10·NEAR_TIE × the row's largest |score| of a sorted neighbour (float32
    rounding, relative to the products' size, may order those either way)."""
    x64, y64 = x.double(), y.double()
    if metric == "l2":
        s = (x64 * x64).sum(-1, keepdim=True) + (y64 * y64).sum(-1).unsqueeze(1)
        s = s - 2 * x64 @ y64.transpose(1, 2)
    else:
        s = -(x64 @ y64.transpose(1, 2))
    values, idx = torch.sort(s, dim=-1, stable=True)
    gap = 10 * NEAR_TIE * values.abs().amax(dim=-1, keepdim=True).clamp_min(1)
    inf = torch.full_like(values[..., :1], float("inf"))
    before = torch.cat([inf, values[..., 1:] - values[..., :-1]], dim=-1)
    after = torch.cat([values[..., 1:] - values[..., :-1], inf], dim=-1)
    clear = (before > gap) & (after > gap)
    values = values if metric == "l2" else -values
    return values[..., :k], idx[..., :k], clear[..., :k]


def assert_close_scaled(dist, values):
    """float32 tolerance, absolute part scaled by the row's largest |value|: scores near 0 are
    differences of float32 products of that size, so their error does not shrink with them."""
    tol = TOLERANCES[torch.float32]
    expected = values.cpu()
    scale = expected.abs().amax(dim=-1, keepdim=True).clamp_min(1)
    err = (dist.cpu().double() - expected).abs()
    assert (err <= tol.atol * scale + tol.rtol * expected.abs()).all(), float(err.max())


@pytest.mark.parametrize("backend,device", backend_params("knn"))
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=ODD_SHAPE_IDS)
def test_matches_float64_brute_force(backend, device, metric, shape):
    B, N, M, D = shape
    if is_interpreted(backend, device):
        N = min(N, INTERPRETED_ROWS)
    g = torch.Generator().manual_seed(N * 17 + M)
    x = torch.randn(B, N, D, generator=g).to(device)
    y = torch.randn(B, M, D, generator=g).to(device)
    for k in ks_for(backend, device, M):
        with poisoned_allocations():
            dist, idx = knn(x, y, k, metric=metric, backend=backend)
        assert dist.shape == idx.shape == (B, N, k)
        assert dist.dtype == torch.float32 and idx.dtype == torch.int64
        values, truth, clear = brute_force_topk(x, y, k, metric)
        same = idx.cpu() == truth.cpu()
        assert same[clear.cpu()].all(), f"k={k}: {int((~same & clear.cpu()).sum())} wrong"
        assert_close_scaled(dist, values)


@pytest.mark.parametrize("backend,device", backend_params("knn"))
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_ties_go_to_the_smallest_index(backend, device, metric):
    # small integers: every score is exact in float32, and the database repeats each row 3
    # times across panels, so every rank ties exactly with two others
    g = torch.Generator().manual_seed(3)
    base = torch.randint(-3, 4, (11, 6), generator=g).float()
    y = torch.cat([base, base, base]).to(device)
    x = torch.randint(-3, 4, (29, 6), generator=g).float().to(device)
    dist, idx = knn(x, y, 33, metric=metric, backend=backend)
    values, truth, _ = brute_force_topk(x[None], y[None], 33, metric)
    assert torch.equal(idx.cpu(), truth[0].cpu())
    assert torch.equal(dist.cpu().double(), values[0].cpu())


@pytest.mark.parametrize("backend,device", backend_params("knn"))
def test_graph_of_x_finds_itself_first(backend, device):
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(1)).to(device)
    dist, idx = knn(x, x, 6, backend=backend)
    assert torch.equal(idx[:, 0].cpu(), torch.arange(300))
    assert dist[:, 0].abs().max().item() < 1e-4
    assert (dist[:, 1:] >= dist[:, :-1]).all()


@pytest.mark.parametrize("backend,device", backend_params("knn"))
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_the_largest_k_over_many_tiles(backend, device, metric):
    # k = 64 (the triton and cuda kernels' largest list, one full 64-slot list) against a
    # database of ten 32-row (five 64-row) tiles: every tile merges into a full list; clustered
    # rows make close scores
    g = torch.Generator().manual_seed(5)
    y = (torch.randn(4, 8, generator=g).repeat(80, 1) + 0.1 * torch.randn(320, 8, generator=g))
    x = torch.randn(2, 37, 8, generator=g).to(device)
    y = torch.stack([y, y.flip(0)]).to(device)
    with poisoned_allocations():
        dist, idx = knn(x, y, LARGEST_K, metric=metric, backend=backend)
    values, truth, clear = brute_force_topk(x, y, LARGEST_K, metric)
    same = idx.cpu() == truth.cpu()
    assert same[clear.cpu()].all(), f"{int((~same & clear.cpu()).sum())} wrong"
    assert_close_scaled(dist, values)


def test_triton_declines_a_k_above_its_limit():
    kernels = triton_kernels("knn")
    x, y = torch.zeros(1, 3, 4), torch.zeros(1, 100, 4)
    assert not [r for r in kernels._reasons(x=x, y=y, k=TRITON_MAX_K, metric="l2")
                if "device" not in r]
    why = kernels._reasons(x=x, y=y, k=TRITON_MAX_K + 1, metric="l2")
    assert any(f"at most k = {TRITON_MAX_K}" in r for r in why)
    assert any("float32" in r for r in kernels._reasons(x=x.double(), y=y.double(), k=2,
                                                          metric="ip"))


def test_cpu_results_do_not_depend_on_the_thread_count():
    if "cpu" not in [p.values[0] for p in backend_params("knn")]:
        pytest.skip("cpu backend not built")
    x, y = torch.randn(1100, 40), torch.randn(900, 40)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = knn(x, y, 7, backend="cpu")
        torch.set_num_threads(max(2, threads))
        many = knn(x, y, 7, backend="cpu")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


def test_unbatched_and_mixed_dtype_inputs():
    x, y = torch.randn(20, 8, dtype=torch.float64), torch.randn(15, 8)
    dist, idx = knn(x, y, 4)
    values, truth, _ = brute_force_topk(x[None], y[None].double(), 4, "l2")
    assert torch.equal(idx, truth[0])
    assert_close(dist, values[0], torch.float32)


@pytest.mark.parametrize(
    "x,y,k,error,match",
    [
        (torch.randn(4, 3), torch.randn(5, 3), 0, ValueError, "k must be an int in"),
        (torch.randn(4, 3), torch.randn(5, 3), 6, ValueError, r"\[1, 5\]"),
        (torch.randn(4, 3), torch.randn(5, 3), 2.0, ValueError, "k must be an int"),
        (torch.randn(4, 3), torch.randn(5, 2), 1, ValueError, "feature dimension"),
        (torch.randn(2, 4, 3), torch.randn(5, 3), 1, ValueError, "both be batched"),
        (torch.randn(4, 3), torch.ones(5, 3, dtype=torch.int64), 1, TypeError, "floating"),
        (torch.randn(4), torch.randn(5, 3), 1, ValueError, "must have 2 dims"),
    ],
)
def test_bad_inputs_say_what_is_wrong(x, y, k, error, match):
    with pytest.raises(error, match=match):
        knn(x, y, k)


def test_bad_metric_and_backend():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="metric must be"):
        knn(x, x, 1, metric="cos")
    with pytest.raises(BackendError, match="unknown backend"):
        knn(x, x, 1, backend="nope")
