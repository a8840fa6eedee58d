"""The cpu backend's SIMD paths (generic, AVX2, AVX-512), each against the float64 brute force
on odd shapes, ties and thread counts; paths this CPU lacks are skipped with the feature they
need. Also the path choice: FASTDC_CPU_ISA, unknown names, fastdc.info."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastdc._C", reason="the fastdc._C extension is not built")
cpu = pytest.importorskip("fastdc.ops.cpu")

from tests.helpers import (  # noqa: E402
    ISAS,
    ODD_SHAPE_IDS,
    ODD_SHAPES,
    assert_assign_matches,
    isa_params,
)

ROOT = Path(__file__).resolve().parents[1]
ISA_PARAMS = isa_params()


def _data(B, N, K, D, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, D, generator=g), torch.randn(B, K, D, generator=g)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=ODD_SHAPE_IDS)
def test_path_matches_float64_brute_force(isa, metric, shape):
    x, c = _data(*shape, seed=sum(shape))
    dist, idx = cpu.assign_cpu(x=x, centroids=c, metric=metric, isa=isa)
    assert dist.shape == idx.shape == shape[:2]
    assert_assign_matches(dist, idx, x, c, metric)


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_path_ragged_shapes_around_its_tile(isa, metric):
    """N, K, D one off the AVX-512 12 x 32 and the AVX2 6 x 16 tiles, B = 2, K = 1."""
    for B, N, K, D in [(2, 11, 31, 17), (2, 13, 33, 15), (1, 25, 65, 1), (2, 37, 1, 9)]:
        x, c = _data(B, N, K, D, seed=N * K)
        dist, idx = cpu.assign_cpu(x=x, centroids=c, metric=metric, isa=isa)
        assert_assign_matches(dist, idx, x, c, metric)
        if K == 1:
            assert (idx == 0).all()


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_path_ties_go_to_the_smallest_index(isa, metric):
    """Exact copies of centroids in other lanes, vectors and 32-wide panels."""
    g = torch.Generator().manual_seed(1)
    base = torch.randint(-3, 4, (5, 8), generator=g).float()
    c = torch.cat([base] * 14)  # centroid j equals j + 5, j + 10, ... up to 69
    x = torch.randint(-3, 4, (50, 8), generator=g).float()
    _, idx = cpu.assign_cpu(x=x[None], centroids=c[None], metric=metric, isa=isa)
    scores = ((x[:, None] - c[None]) ** 2).sum(-1) if metric == "l2" else -(x @ c.T)
    expected = [row.tolist().index(min(row.tolist())) for row in scores]
    assert max(expected) < 5
    assert idx[0].tolist() == expected


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_path_rows_reduce_like_the_scalar_loop(isa, metric):
    """The per-row reduction over the tile's lanes (branch-free on AVX2 and AVX-512) against
    the generic path: rows of NaN, of inf, of zeros (scores -0 and +0 tie), and centroids that
    tie across lanes and in the half-width last panel (K = 100)."""
    g = torch.Generator().manual_seed(5)
    c = torch.randint(-2, 3, (100, 7), generator=g).float()
    c[50:] = c[:50]  # every score ties with one 50 centroids on, in another lane
    c[37] = 0.0
    x = torch.randint(-2, 3, (61, 7), generator=g).float()
    x[3], x[4, 2], x[5] = float("nan"), float("inf"), 0.0
    x[6] = -c[37]
    got = cpu.assign_cpu(x=x[None], centroids=c[None], metric=metric, isa=isa)
    ref = cpu.assign_cpu(x=x[None], centroids=c[None], metric=metric, isa="generic")
    assert torch.equal(got[1], ref[1])
    assert torch.equal(got[0].view(torch.int32), ref[0].view(torch.int32))


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_path_results_do_not_depend_on_the_thread_count(isa):
    x, c = _data(1, 2_000, 40, 70, seed=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        d1, i1 = cpu.assign_cpu(x=x, centroids=c, metric="l2", isa=isa)
        torch.set_num_threads(3)
        d3, i3 = cpu.assign_cpu(x=x, centroids=c, metric="l2", isa=isa)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(i1, i3) and torch.equal(d1, d3)


def test_default_path_is_the_widest_available():
    available = cpu.isa_available()
    assert available[0] == "generic" and set(available) <= set(ISAS)
    assert available == [isa for isa in ISAS if not cpu.isa_missing(isa)]
    if "FASTDC_CPU_ISA" not in os.environ and "FASTDC_CPU_SIMD" not in os.environ:
        assert cpu.simd() == available[-1]


def test_unknown_or_missing_path_is_a_clear_error():
    x, c = _data(1, 5, 3, 4, seed=0)
    with pytest.raises(ValueError, match="generic, avx2 or avx512"):
        cpu.assign_cpu(x=x, centroids=c, metric="l2", isa="sse9")
    with pytest.raises(ValueError, match="generic, avx2 or avx512"):
        cpu.isa_missing("sse9")
    lacking = [isa for isa in ISAS if cpu.isa_missing(isa)]
    for isa in lacking:
        with pytest.raises(ValueError, match=f"lacks {cpu.isa_missing(isa)}"):
            cpu.assign_cpu(x=x, centroids=c, metric="l2", isa=isa)


def test_fma_peak_is_positive_for_every_path():
    for isa in cpu.isa_available():
        assert cpu.fma_peak_gflops(isa, threads=1, seconds=0.01) > 0


ENV_SCRIPT = """
from fastdc.info import report
from fastdc.ops import cpu
print(cpu.simd())
print(report())
"""


def _run_with(value: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, FASTDC_CPU_ISA=value, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", ENV_SCRIPT], env=env, capture_output=True,
                          text=True, cwd=ROOT)


def test_environment_forces_a_narrower_path_and_info_names_it():
    run = _run_with("generic")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == "generic"
    assert "cpu backend SIMD path: generic (FASTDC_CPU_ISA=generic)" in run.stdout
    assert f"SIMD paths on this CPU: {', '.join(cpu.isa_available())}" in run.stdout


def test_environment_naming_an_unknown_path_is_refused():
    run = _run_with("avx1024")
    assert run.returncode != 0
    assert "FASTDC_CPU_ISA=avx1024 is not a SIMD path" in run.stderr


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_path_second_best_matches_float64(isa, metric):
    """Ragged shapes around each tile, K = 1, and exact ties between best and second."""
    from tests.test_assign import assert_second_matches

    for B, N, K, D in [(2, 13, 33, 15), (1, 25, 65, 3), (2, 7, 1, 9), (1, 40, 2, 5)]:
        x, c = _data(B, N, K, D, seed=N + K)
        dist, idx, dist2 = cpu.assign_cpu(x=x, centroids=c, metric=metric, isa=isa, second=True)
        assert_second_matches(dist, idx, dist2, x, c, metric)
    c = torch.cat([torch.randn(1, 5, 8)] * 9, dim=1)  # every centroid 5 times in 45
    x = torch.randn(1, 30, 8)
    dist, idx, dist2 = cpu.assign_cpu(x=x, centroids=c, metric=metric, isa=isa, second=True)
    assert torch.equal(dist2, dist) and int(idx.max()) < 5


# --- the bf16 pass (AVX512-BF16): the float32 answers, bit for bit --------------------------

needs_bf16 = pytest.mark.skipif(bool(cpu.bf16_missing()),
                                reason=f"this CPU lacks {cpu.bf16_missing()} (the bf16 pass)")


def _bf16_cases():
    """(name, x [B, N, D], c [B, K, D]): odd shapes; normalised mixtures; integer data full of
    exact ties; a large common offset; near-duplicate centroids (many candidates per row);
    every centroid 20 times (more candidates than the re-check keeps)."""
    g = torch.Generator().manual_seed(7)
    for B, N, K, D in [(2, 13, 33, 15), (1, 300, 65, 1), (2, 250, 40, 31), (1, 700, 129, 64)]:
        x = torch.randn(B, N, D, generator=g)
        yield f"randn-{B}x{N}x{K}x{D}", x, torch.randn(B, K, D, generator=g)
        mix = torch.nn.functional.normalize(x + 0.3 * x.roll(1, dims=1), dim=2)
        yield f"mixture-{N}x{K}x{D}", mix, mix[:, :K].contiguous()
    ints = torch.randint(-3, 4, (2, 400, 9), generator=g).float()
    yield "integer-ties", ints, ints[:, :50].contiguous()
    far = torch.rand(1, 500, 48, generator=g) * 10 + 1000
    yield "offset", far, far[:, :70].contiguous()
    c = torch.randn(1, 30, 24, generator=g)
    yield "near-duplicates", c[:, :8].repeat(1, 40, 1), c + 1e-4 * torch.randn(1, 30, 24)
    yield "repeated-20x", torch.randn(1, 90, 16), torch.randn(1, 3, 16).repeat(1, 20, 1)


@needs_bf16
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_bf16_pass_gives_the_float32_answers_bit_for_bit(metric):
    for name, x, c in _bf16_cases():
        ref = cpu.assign_cpu(x=x, centroids=c, metric=metric, isa="avx512", precision="fp32")
        got = cpu.assign_cpu(x=x, centroids=c, metric=metric, isa="avx512", precision="bf16")
        assert torch.equal(got[1], ref[1]), name
        assert torch.equal(got[0], ref[0]), name
        if name.startswith(("randn", "mixture")) and x.shape[2] > 4:  # others: near ties
            assert_assign_matches(got[0], got[1], x, c, metric)


@needs_bf16
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_bf16_second_bound_is_on_the_right_side_of_the_float32_second(metric):
    for name, x, c in _bf16_cases():
        d, i, d2 = cpu.assign_cpu(x=x, centroids=c, metric=metric, isa="avx512",
                                  precision="fp32", second=True)
        bd, bi, b2 = cpu.assign_cpu(x=x, centroids=c, metric=metric, isa="avx512",
                                    precision="bf16", second="bound")
        assert torch.equal(bi, i) and torch.equal(bd, d), name
        assert bool((b2 <= d2).all() if metric == "l2" else (b2 >= d2).all()), name
        if c.shape[1] > 1:
            assert bool(torch.isfinite(b2).all()), name  # a bound, not +-inf


@needs_bf16
def test_bf16_pass_rows_it_cannot_settle_are_counted_and_non_finite_rows_match():
    from fastdc import _C

    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 600, 40, generator=g)
    x[0, 5, 3], x[0, 9, :] = float("nan"), float("inf")
    x[0, 11, 0] = 3e38
    c = torch.randn(1, 50, 40, generator=g)
    c[0, 7:] = c[0, :1]  # 43 copies of one centroid: more candidates than the re-check keeps
    out = [torch.empty(1, 600), torch.empty(1, 600, dtype=torch.int64)]
    ref = cpu.assign_cpu(x=x, centroids=c, metric="l2", isa="avx512", precision="fp32")
    unsettled = _C.assign(x.numpy(), c.numpy(), False, out[0].numpy(), out[1].numpy(), 2,
                          "avx512", None, True)
    assert torch.equal(out[1], ref[1])
    assert torch.equal(out[0].nan_to_num(-1), ref[0].nan_to_num(-1))
    assert 3 <= unsettled < 600


@needs_bf16
def test_bf16_pass_that_cannot_settle_rows_switches_to_float32_and_stays_exact():
    """40 near copies of each of 5 centroids: every row has more candidates than the list
    keeps, so the bf16 pass settles nothing and later blocks go straight to float32."""
    from fastdc import _C

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4_000, 64, generator=g)
    c = torch.randn(1, 5, 64, generator=g).repeat(1, 40, 1)
    c += 1e-6 * torch.randn(c.shape, generator=g)
    dist, idx = torch.empty(1, 4_000), torch.empty(1, 4_000, dtype=torch.int64)
    unsettled = _C.assign(x.numpy(), c.numpy(), False, dist.numpy(), idx.numpy(), 2, "avx512",
                          None, True)
    ref = cpu.assign_cpu(x=x, centroids=c, metric="l2", isa="avx512", precision="fp32")
    assert torch.equal(idx, ref[1]) and torch.equal(dist, ref[0])
    assert unsettled == 4_000


def test_bf16_precision_choice_and_errors():
    assert not cpu.use_bf16("fp32")
    assert not cpu.use_bf16("default", isa="avx2")
    assert not cpu.use_bf16("default", isa="generic")
    if cpu.bf16_missing() or cpu.isa_missing("avx512"):
        with pytest.raises(ValueError, match="precision='bf16' on the cpu backend needs"):
            cpu.use_bf16("bf16")
    else:
        assert cpu.use_bf16("bf16", isa="avx512") and cpu.use_bf16("default", isa="avx512")
    # a CPU without the bf16 instructions is named first, before the path in use
    with pytest.raises(ValueError, match=cpu.bf16_missing() or "avx512 path"):
        cpu.use_bf16("bf16", isa="avx2")


def test_bf16_peak_is_measured_where_the_cpu_has_it():
    if cpu.bf16_missing():
        with pytest.raises(ValueError, match="lacks"):
            cpu.bf16_peak_gflops(threads=1, seconds=0.01)
    else:
        assert cpu.bf16_peak_gflops(threads=1, seconds=0.01) > 0


KNN_SCRIPT = """
import hashlib, torch
from fastdc.ops import cpu
g = torch.Generator().manual_seed(9)
x, y = torch.randn(2, 301, 37, generator=g), torch.randn(2, 203, 37, generator=g)
for metric in ("l2", "ip"):
    d, i = cpu.knn_cpu(x=x, y=y, k=7, metric=metric)
    print(cpu.simd(), metric, hashlib.sha256(d.numpy().tobytes() + i.numpy().tobytes()).hexdigest())
"""


def test_knn_x86_paths_give_the_same_bits():
    """knn's AVX-512 and AVX2 tiles (assign's width-generic ones) run the same chain per
    lane: the same dist and idx, bit for bit, on ragged shapes (one process per path, as
    FASTDC_CPU_ISA is read once)."""
    paths = [isa for isa in ("avx2", "avx512") if not cpu.isa_missing(isa)]
    if len(paths) < 2:
        pytest.skip("needs a CPU with AVX-512 and AVX2")
    digests = []
    for isa in paths:
        env = dict(os.environ, FASTDC_CPU_ISA=isa, PYTHONPATH=str(ROOT))
        out = subprocess.run([sys.executable, "-c", KNN_SCRIPT], env=env, capture_output=True,
                             text=True, check=True).stdout.split("\n")
        assert [line.split()[0] for line in out if line] == [isa, isa]
        digests.append([line.split()[2] for line in out if line])
    assert digests[0] == digests[1]
