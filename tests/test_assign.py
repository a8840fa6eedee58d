"""assign: every backend (torch reference, cpu, triton, cuda) against the float64 brute force
of tests/helpers.py on odd shapes, ties, poisoned outputs and errors; then the properties of
single backends (the Triton precision modes and near-tie re-check, GPU-size agreement)."""

import logging

import pytest
import torch

from fastdc import ops
from fastdc.ops import assign
from fastdc.ops import registry as backends
from fastdc.ops.assign import assign_ref
from fastdc.ops.registry import BackendError
from tests.helpers import (
    ODD_SHAPE_IDS,
    ODD_SHAPES,
    TOLERANCES,
    TRITON_DEVICE,
    assert_assign_matches,
    assert_close,
    backend_params,
    brute_force,
    is_interpreted,
    poisoned_allocations,
    triton_kernels,
)

INTERPRETED_ROWS = 300  # the interpreter is slow: above 70 000 scores or 1 100 rows, trim N


def randn(*shape: int, seed: int, device="cpu") -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device)


@pytest.mark.parametrize("backend,device", backend_params("assign"))
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=ODD_SHAPE_IDS)
def test_matches_float64_brute_force(backend, device, metric, shape):
    B, N, K, D = shape
    if is_interpreted(backend, device) and (N * K > 70_000 or B * N > 1_100):
        N = INTERPRETED_ROWS
    g = torch.Generator().manual_seed(N * 31 + K)
    x = torch.randn(B, N, D, generator=g).to(device)
    c = torch.randn(B, K, D, generator=g).to(device)
    with poisoned_allocations():
        dist, idx = assign(x, c, metric=metric, backend=backend)
    assert dist.shape == (B, N) and idx.shape == (B, N)
    assert dist.dtype == torch.float32 and idx.dtype == torch.int64
    truth = assert_assign_matches(dist, idx, x, c, metric)
    assert truth.clear.float().mean() > 0.9


@pytest.mark.parametrize("backend,device", backend_params("assign"))
def test_distances_have_the_float32_relative_error(backend, device):
    """Far from 0 (L2 distances of Gaussian rows), every distance is within the table's rtol."""
    x, c = randn(1, 600, 32, seed=5, device=device), randn(1, 50, 32, seed=6, device=device)
    dist, idx = assign(x, c, backend=backend)
    truth = assert_assign_matches(dist, idx, x, c, "l2")
    rel = (dist.cpu().double() - truth.best.cpu()).abs() / truth.best.cpu().clamp_min(1e-12)
    assert float(rel[truth.clear.cpu()].max()) <= TOLERANCES[torch.float32].rtol


@pytest.mark.parametrize("backend,device", backend_params("assign"))
def test_unbatched_matches_reference(backend, device):
    x, c = randn(517, 33, seed=3), randn(45, 33, seed=4)
    dist, idx = assign(x.to(device), c.to(device), backend=backend)
    rd, ri = assign_ref(x[None], c[None], "l2")
    assert idx.shape == (517,)
    assert torch.equal(idx.cpu(), ri[0])
    assert_close(dist, rd[0], torch.float32)


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
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("precision", ["default", "fp32"])
def test_exact_copies_across_tiles_go_to_the_smallest_index(backend, device, metric, precision):
    # Entries of +-1: every dot product and norm is a small integer, exact in fp32, TF32 and
    # bf16 whatever the summation order, so copies of a centroid score exactly alike on every
    # backend (with Gaussian rows the Triton interpreter's numpy matmul, OpenBLAS's Haswell
    # kernel, rounds identical columns at different tile positions differently). Equal norms
    # make each row's own centroid the best inner product too.
    K, D = 70, 19
    c = randn(K, D, seed=7).sign()
    # copies of centroid 3 in another 8-lane (19) and 16-centroid panel (35) of the cpu kernel;
    # of 0 in the same lane of the next panel (16); of 5 in the same (6) and in another (50)
    # 32-wide Triton tile; of 20 in the last, ragged tile (69)
    for copy, original in [(19, 3), (35, 3), (16, 0), (6, 5), (50, 5), (69, 20)]:
        c[copy] = c[original]
    copies = [3, 0, 35, 16, 5, 6, 50, 20, 69]
    x = torch.cat([c[copies], randn(11, D, seed=8)])
    dist, idx = assign(x.to(device), c.to(device), metric=metric, precision=precision,
                       backend=backend)
    assert idx[: len(copies)].tolist() == [3, 0, 3, 0, 5, 5, 5, 20, 20]
    assert_assign_matches(dist[None], idx[None], x[None], c[None], metric)
    same = c[:1].expand(K, D).contiguous()  # every centroid identical: index 0 for every row
    _, idx = assign(randn(33, D, seed=9, device=device).sign(), same.to(device), metric=metric,
                    precision=precision, backend=backend)
    assert (idx == 0).all()


@pytest.mark.parametrize("backend,device", backend_params("assign"))
def test_identical_points_have_zero_distance(backend, device):
    x = torch.full((20, 9), 2.5)
    dist, idx = assign(x.to(device), x[:4].to(device), backend=backend)
    assert torch.equal(idx.cpu(), torch.zeros(20, dtype=torch.int64))
    assert float(dist.abs().max()) < 1e-4


@pytest.mark.parametrize("backend,device", backend_params("assign"))
def test_l2_distance_is_clamped_at_zero(backend, device):
    c = randn(1, 5, 64, seed=9) * 100
    x = c[:, [4, 2, 2]].clone()  # rows equal to centroids: exact distance 0
    dist, idx = assign(x.to(device), c.to(device), backend=backend)
    assert idx[0].tolist() == [4, 2, 2]
    assert (dist >= 0).all()
    assert (dist.cpu() <= 1e-3 * (c * c).sum(-1).max()).all()


@pytest.mark.parametrize("backend,device", backend_params("assign"))
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 13, 17, 5), (1, 1001, 40, 257)],
                         ids=lambda s: "x".join(map(str, s)))
def test_writes_every_output_element(backend, device, shape):
    B, N, K, D = shape
    if is_interpreted(backend, device):
        N = min(N, INTERPRETED_ROWS)
    x, c = randn(B, N, D, seed=5, device=device), randn(B, K, D, seed=6, device=device)
    for metric in ("l2", "ip"):
        with poisoned_allocations():
            dist, idx = assign(x, c, metric=metric, backend=backend)
        assert bool(dist.isfinite().all()) and bool(((idx >= 0) & (idx < K)).all())
        assert torch.equal(idx.cpu(), brute_force(x, c, metric).idx.cpu())


def test_inputs_that_require_grad_run_on_the_fast_backend(monkeypatch, caplog):
    """assign is not differentiable: the public op detaches, so no fallback to torch."""
    monkeypatch.setattr(backends, "_LOGGED", set())
    x, c = randn(300, 24, seed=10), randn(17, 24, seed=11)
    with caplog.at_level(logging.WARNING, logger="fastdc"):
        dist, idx = assign(x.requires_grad_(), c.requires_grad_())
    assert not [r for r in caplog.records if r.name == "fastdc"]
    expect_d, expect_i = assign(x.detach(), c.detach())
    assert torch.equal(idx, expect_i) and torch.equal(dist, expect_d)
    assert not dist.requires_grad


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


# --------------------------------------------------------------------- triton: precisions

TRITON_SHAPES = [(1, 1, 5, 3), (3, 7, 40, 3), (1, 1030, 13, 64), (2, 45, 70, 257)]


@pytest.mark.parametrize("shape", TRITON_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_triton_default_equals_the_reference_on_every_row(shape, metric):
    """The bf16 pass re-checks its candidates in fp32: every index equals the fp32 reference's."""
    kernels = triton_kernels("assign")
    B, N, K, D = shape
    x, c = randn(B, N, D, seed=0, device=TRITON_DEVICE), randn(B, K, D, seed=1,
                                                               device=TRITON_DEVICE)
    with poisoned_allocations():
        dist, idx = kernels.assign_triton(x, c, metric, "default")
    ref_d, ref_i = assign_ref(x, c, metric)
    assert torch.equal(idx, ref_i)
    assert_close(dist, ref_d, torch.float32)


@pytest.mark.parametrize("precision", ["fp32", "tf32x3", "tf32", "bf16"])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_triton_precision_modes(precision, metric):
    kernels = triton_kernels("assign")
    x, c = randn(2, 50, 64, seed=1, device=TRITON_DEVICE), randn(2, 37, 64, seed=2,
                                                                 device=TRITON_DEVICE)
    with poisoned_allocations():
        dist, idx = kernels.assign_triton(x, c, metric, precision)
    # the interpreter multiplies in fp32 whatever the mode; on a GPU tf32 and bf16 round
    rounds = precision == "bf16" or (precision == "tf32" and TRITON_DEVICE == "cuda")
    assert_assign_matches(dist, idx, x, c, metric, precision if rounds else torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_half_inputs(dtype):
    kernels = triton_kernels("assign")
    x = randn(2, 40, 24, seed=2).to(dtype).to(TRITON_DEVICE)
    c = randn(2, 33, 24, seed=3).to(dtype).to(TRITON_DEVICE)
    dist, idx = kernels.assign_triton(x, c, "l2", "default")
    ref_d, ref_i = assign_ref(x.float(), c.float(), "l2")  # half products are exact in fp32
    assert torch.equal(idx, ref_i)
    assert_close(dist, ref_d, torch.float32)


def test_triton_recheck_path_covers_every_row(monkeypatch):
    """With an infinite candidate width every row goes through the compacted fp32 pass."""
    kernels = triton_kernels("assign")
    monkeypatch.setattr(kernels, "candidate_width",
                        lambda cmax, *_: torch.full((len(cmax), 3), 1e30, device=cmax.device))
    x, c = randn(3, 77, 40, seed=4, device=TRITON_DEVICE), randn(3, 45, 40, seed=5,
                                                                 device=TRITON_DEVICE)
    for metric in ("l2", "ip"):
        dist, idx = kernels.assign_triton(x, c, metric, "default")
        ref_d, ref_i = assign_ref(x, c, metric)
        assert torch.equal(idx, ref_i)
        assert_close(dist, ref_d, torch.float32)


@pytest.mark.parametrize("wide,d", [(("bf16",), 48), (("bf16", "tf32"), 48),
                                    (("bf16", "tf32"), 300)])
def test_triton_later_counting_passes_settle_rows_left_open(monkeypatch, wide, d):
    """With the width of the passes in ``wide`` made infinite every row reaches the next
    counting pass (TF32 or tf32x3; D = 300 streams D in chunks); its own bound settles most of
    them, so far fewer reach the full fp32 pass, and every index still equals the fp32
    reference's."""
    kernels = triton_kernels("assign")
    width = kernels.candidate_width

    def widened(cmax, cl_max, d, mode):
        if mode in wide:
            return torch.full((len(cmax), 3), 1e30, device=cmax.device)
        return width(cmax, cl_max, d, mode)

    flagged = []
    compact = kernels._compact

    def counting_compact(flag):
        flagged.append(int(flag.sum()))
        return compact(flag)

    monkeypatch.setattr(kernels, "candidate_width", widened)
    monkeypatch.setattr(kernels, "_compact", counting_compact)
    x, c = randn(2, 150, d, seed=6, device=TRITON_DEVICE), randn(2, 70, d, seed=7,
                                                                 device=TRITON_DEVICE)
    for metric in ("l2", "ip"):
        flagged.clear()
        with poisoned_allocations():
            dist, idx = kernels.assign_triton(x, c, metric, "default")
        ref_d, ref_i = assign_ref(x, c, metric)
        assert torch.equal(idx, ref_i)
        assert_close(dist, ref_d, torch.float32)
        # rows taken by the TF32 pass, the tf32x3 pass and the full fp32 pass
        assert flagged[:len(wide)] == [300] * len(wide) and flagged[len(wide)] < 30, flagged
        assert len(flagged) == 3


@pytest.mark.parametrize("k", [16384, 16385], ids=["int32-count", "int64-count"])
def test_triton_packed_count_at_the_largest_indices(k):
    """Two equal centroids at the last two indices, the others far away: the packed sum names
    both exactly on either side of the int32 packing's limit (K = 16 384), and with every
    centroid equal the count reads more than two (an over-count at most), so the rows reach
    the full fp32 pass and keep index 0."""
    kernels = triton_kernels("assign")
    assert kernels.count_shift(k) == (15 if k <= 16384 else 32)
    x = 0.01 * randn(1, 6, 16, seed=10)
    c = 100.0 + randn(1, k, 16, seed=11)
    c[:, -2:] = 0.0
    xd, cd = x.to(TRITON_DEVICE), c.to(TRITON_DEVICE)
    cf = cd.float()
    dist = torch.empty(1, 6, device=TRITON_DEVICE)
    idx = torch.empty(1, 6, dtype=torch.int64, device=TRITON_DEVICE)
    cand = torch.empty(1, 6, dtype=torch.int64, device=TRITON_DEVICE)
    kernels._counting_pass(xd, kernels._pad_rows(cd, torch.bfloat16), cf,
                           cf.norm(dim=2).amax(dim=1), kernels._score_offsets(cf, True), dist,
                           idx, cand, is_l2=True, mode="bf16")
    assert bool((cand >> 32 == 2).all()) and bool((idx == k - 2).all())
    assert bool(((cand & 0xFFFFFFFF) == 2 * k - 3).all())

    same = torch.zeros(1, k, 16)
    dist, idx = kernels.assign_triton(xd, same.to(TRITON_DEVICE), "l2", "default")
    assert bool((idx == 0).all())
    assert_close(dist.cpu(), assign_ref(x, same, "l2")[0], torch.float32)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_triton_two_candidates_are_rescored_in_fp32(metric):
    """Each centroid twice: every row has two equal best scores and keeps the smaller index."""
    kernels = triton_kernels("assign")
    x, c = randn(2, 90, 24, seed=8), randn(2, 20, 24, seed=9)
    c = torch.cat([c, c], dim=1)
    dist, idx = kernels.assign_triton(x.to(TRITON_DEVICE), c.to(TRITON_DEVICE), metric)
    ref_d, ref_i = assign_ref(x, c, metric)
    assert torch.equal(idx.cpu(), ref_i) and bool((idx < 20).all())
    assert_close(dist.cpu(), ref_d, torch.float32)


def test_triton_main_pass_candidates_hold_the_fp32_argmin():
    """The bf16 pass alone, on whitened unit rows: its packed count and index sum name a set
    that holds the fp32 arg-min; most rows have a single candidate."""
    from benchmarks.bench_rounding import fp32_scores, whitened_mixture

    kernels = triton_kernels("assign")
    x = whitened_mixture(300, d_in=80, dim=64, seed=1)
    c = x[torch.randperm(300, generator=torch.Generator().manual_seed(0))[:70]]
    truth = fp32_scores(x, c).argmin(dim=1)
    xd, cd = x[None].to(TRITON_DEVICE), c[None].to(TRITON_DEVICE)
    pad = kernels._score_offsets(cd, True)
    coef = kernels.candidate_width(c.norm(dim=1).amax().reshape(1),
                                   (c - c.bfloat16().float()).norm(dim=1).amax().reshape(1),
                                   64, "bf16").to(TRITON_DEVICE)
    dist = torch.empty(1, 300, device=TRITON_DEVICE)
    idx = torch.empty(1, 300, dtype=torch.int64, device=TRITON_DEVICE)
    cand = torch.empty(1, 300, dtype=torch.int64, device=TRITON_DEVICE)
    kernels._launch(xd, kernels._pad_rows(cd, torch.bfloat16), 70, pad, dist, idx, is_l2=True,
                    mode="bf16", coef=coef, cand=cand)
    count, first = (cand[0] >> 32).cpu(), idx[0].cpu()
    second = (cand[0] & 0xFFFFFFFF).cpu() - first
    assert bool((count >= 1).all())
    assert bool((truth == first)[count == 1].all())
    assert bool(((truth == first) | (truth == second))[count == 2].all())
    assert float((count == 1).float().mean()) > 0.5


def test_triton_through_the_public_op_and_its_reasons():
    triton_kernels("assign")
    x, c = randn(1, 20, 5, seed=6, device=TRITON_DEVICE), randn(1, 6, 5, seed=7,
                                                                device=TRITON_DEVICE)
    dist, idx = ops.assign(x[0], c[0], backend="triton")
    ref_d, ref_i = assign_ref(x, c, "l2")
    assert dist.shape == (20,) and torch.equal(idx, ref_i[0])
    with pytest.raises(BackendError, match="float32/float16/bfloat16"):
        ops.assign(x.double(), c.double(), backend="triton")
    with pytest.raises(BackendError, match="precision"):
        ops.assign(x, c, precision="fp8", backend="triton")


# -------------------------------------------------------------------------- GPU sizes


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_gpu_default_precision_agrees_with_float64(backend, metric):
    """DeepCluster-like unit rows at 200 000 × 2 000: >= 99.99 % of the rows without a near tie
    pick the float64 argmin (the proven bound's candidates hold it), distances within the table's
    rtol of the truth (floored at 1e-3)."""
    _need(backend)
    g = torch.Generator(device="cuda").manual_seed(0)
    x, c = _unit_rows(200_000, 256, g), _unit_rows(2_000, 256, g)
    dist, idx = ops.assign(x, c, metric=metric, backend=backend)
    truth = brute_force(x[None], c[None], metric)
    clear = truth.clear[0]
    assert float((idx == truth.idx[0])[clear].float().mean()) >= 0.9999
    rel = (dist.double() - truth.best[0]).abs() / truth.best[0].abs().clamp_min(1e-3)
    assert float(rel[clear].max()) <= TOLERANCES[torch.float32].rtol


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_batched_equals_one_problem_at_a_time(backend):
    _need(backend)
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(4, 5_000, 64, generator=g, device="cuda")
    c = torch.randn(4, 300, 64, generator=g, device="cuda")
    dist, idx = ops.assign(x, c, backend=backend)
    for b in range(4):
        d1, i1 = ops.assign(x[b], c[b], backend=backend)
        assert torch.equal(i1, idx[b]) and torch.equal(d1, dist[b])


def _need(backend: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if backend not in backends.available("assign"):
        pytest.skip(f"backend {backend!r} did not load")


def _unit_rows(n, d, gen):
    x = torch.randn(n, d, generator=gen, device="cuda")
    return x / x.norm(dim=1, keepdim=True)


# ------------------------------------------------------------------------- second best


def second_brute_force(x, c, metric):
    """float64 (best, second best) of every row of x [B, N, D] against c [B, K, D]."""
    x64, c64 = x.double(), c.double()
    if metric == "l2":
        scores = ((x64[:, :, None] - c64[:, None]) ** 2).sum(-1)
        top = scores.topk(min(2, c.shape[1]), dim=-1, largest=False).values
    else:
        top = (x64 @ c64.transpose(1, 2)).topk(min(2, c.shape[1]), dim=-1).values
    fill = torch.inf if metric == "l2" else -torch.inf
    second = top[..., 1] if c.shape[1] > 1 else torch.full_like(top[..., 0], fill)
    return top[..., 0], second


def assert_second_matches(dist, idx, dist2, x, c, metric):
    """dist2 within float32 rounding of the float64 second best; dist, idx as assign's."""
    assert dist2.shape == dist.shape and dist2.dtype == torch.float32
    assert_assign_matches(dist, idx, x, c, metric)
    _, truth2 = second_brute_force(x, c, metric)
    scale = (x.double() ** 2).sum(-1) + (c.double() ** 2).sum(-1).amax(-1, keepdim=True)
    finite = truth2.isfinite()
    assert torch.equal(dist2.double()[~finite], truth2[~finite])
    err = (dist2.double() - truth2).abs()[finite]
    assert bool((err <= 1e-5 * scale[finite]).all())


SECOND_BACKENDS = [p for p in backend_params("assign") if p.values[0] in ("torch", "cpu")]


@pytest.mark.parametrize("backend,device", SECOND_BACKENDS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 7, 1, 5), (2, 45, 2, 3), (3, 101, 37, 19),
                                   (1, 300, 70, 257)], ids=lambda s: "x".join(map(str, s)))
def test_second_matches_float64_brute_force(backend, device, metric, shape):
    B, N, K, D = shape
    x, c = randn(B, N, D, seed=N + K), randn(B, K, D, seed=N * K + 1)
    dist, idx, dist2 = assign(x, c, metric=metric, backend=backend, second=True)
    assert_second_matches(dist, idx, dist2, x, c, metric)
    if K == 1:
        assert (dist2 == (torch.inf if metric == "l2" else -torch.inf)).all()
    else:
        assert bool((dist2 >= dist).all() if metric == "l2" else (dist2 <= dist).all())


@pytest.mark.parametrize("backend,device", SECOND_BACKENDS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_second_equals_best_on_a_tie(backend, device, metric):
    """Copies of the best centroid in the same and other lanes and panels: dist2 == dist."""
    g = torch.Generator().manual_seed(2)
    base = torch.randint(-3, 4, (5, 8), generator=g).float()
    for copies in (2, 7):  # copies of every centroid 5 apart: 10 and 35 centroids
        c = torch.cat([base] * copies)
        x = torch.randint(-3, 4, (60, 8), generator=g).float()
        dist, idx, dist2 = assign(x, c, metric=metric, backend=backend, second=True)
        assert torch.equal(dist2, dist)
        assert int(idx.max()) < 5
    unique = torch.cat([base, base + 10])  # no tie: the second differs
    dist, _, dist2 = assign(base, unique, metric="l2", backend=backend, second=True)
    assert bool((dist2 > dist).all())


def test_second_on_other_backends_falls_back_to_the_reference():
    x, c = randn(40, 6, seed=1), randn(9, 6, seed=2)
    expect = assign_ref(x[None], c[None], "l2", second=True)
    for name in backends.available("assign"):
        if name == "triton" and not torch.cuda.is_available():
            continue  # under the interpreter: slow, and the same fallback
        if name == "cuda" and not torch.cuda.is_available():
            continue
        device = "cpu" if name in ("torch", "cpu") else "cuda"
        dist, idx, dist2 = assign(x.to(device), c.to(device), backend=name, second=True)
        assert torch.equal(idx.cpu(), expect[1][0])
        assert_close(dist2.cpu(), expect[2][0], torch.float32)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_assign_dist_reproduces_the_cpu_kernel_bit_for_bit(metric):
    from fastdc.ops import assign_dist, registry

    if "cpu" not in registry.available("assign"):
        pytest.skip("the cpu backend is not built")
    from fastdc.ops import cpu

    g = torch.Generator().manual_seed(4)
    x, c = torch.randn(2, 333, 45, generator=g), torch.randn(2, 29, 45, generator=g)
    for isa in cpu.isa_available():
        dist, idx = cpu.assign_cpu(x=x, centroids=c, metric=metric, isa=isa)
        assert torch.equal(cpu.assign_dist_cpu(x, c, idx, metric, isa=isa), dist)
    dist, idx = assign(x[0], c[0], metric=metric)
    other = torch.randint(29, (333,), generator=g)
    assert torch.equal(assign_dist(x[0], c[0], idx, metric=metric), dist)
    direct = assign_dist(x[0], c[0], other, metric=metric)
    expected = ((x[0] - c[0][other]) ** 2).sum(1) if metric == "l2" else (x[0] * c[0][other]).sum(1)
    torch.testing.assert_close(direct, expected, rtol=1e-4, atol=1e-4)
    assert assign_dist(x[0], c[0], idx, metric=metric, backend="torch") is None
    with pytest.raises(ValueError, match="idx out of"):
        assign_dist(x[0], c[0], other + 29, metric=metric)
    with pytest.raises(ValueError, match="idx must be int64"):
        assign_dist(x[0], c[0], other.int(), metric=metric)
