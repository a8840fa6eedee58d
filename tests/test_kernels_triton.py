"""Every Triton kernel (kernels/*.py) against its torch reference.

Without CUDA the kernels run under Triton's CPU interpreter (TRITON_INTERPRET=1, set before
triton is imported), so shapes stay small; with CUDA the same tests run compiled on the GPU.
Covers odd shapes (N = 1, N > 1000, K > N, D = 3/64/257, B = 1/3), both metrics, every
precision mode, poisoned outputs, ties, and bit-identical re-splits.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

from fastdc.ops.registry import import_kernels

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


import_kernels()  # fastdc.kernels, from kernels/ when this checkout is not installed

from fastdc.kernels import assign as kassign  # noqa: E402
from fastdc.kernels.assign import assign_triton  # noqa: E402
from fastdc.kernels.cluster_sums import cluster_sums_triton  # noqa: E402
from fastdc.kernels.resplit_empty import resplit_empty_triton  # noqa: E402
from fastdc.kernels.sobel import sobel_triton  # noqa: E402

from fastdc import ops  # noqa: E402
from fastdc.ops.assign import assign_ref  # noqa: E402
from fastdc.ops.cluster_sums import cluster_sums_ref  # noqa: E402
from fastdc.ops.registry import BackendError  # noqa: E402
from fastdc.ops.resplit_empty import resplit_empty_ref  # noqa: E402
from fastdc.ops.sobel import IMAGENET_MEAN, IMAGENET_STD, sobel_ref  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


@pytest.fixture
def poisoned(monkeypatch):
    """Make torch.empty return NaN (float) / -1 (integer) filled tensors during the call, so a
    kernel that leaves an output element unwritten is caught."""
    real_empty = torch.empty

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        if t.dtype.is_floating_point:
            t.fill_(float("nan"))
        elif t.dtype != torch.bool:
            t.fill_(-1)
        return t

    monkeypatch.setattr(torch, "empty", empty)
    yield
    monkeypatch.setattr(torch, "empty", real_empty)


# ------------------------------------------------------------------------------------- assign

ASSIGN_SHAPES = [  # (B, N, K, D)
    (1, 1, 5, 3),  # a single row
    (3, 7, 40, 3),  # K > N, batched, tiny D
    (1, 1030, 13, 64),  # N > 1000 (several row tiles, a ragged last one)
    (2, 45, 70, 257),  # D = 257: chunked features; K spans three 32-wide tiles
]


def _data(B, N, K, D, seed=0, dtype=torch.float32):
    g = _gen(seed)
    x = torch.randn(B, N, D, generator=g).to(dtype).to(DEV)
    c = torch.randn(B, K, D, generator=g).to(dtype).to(DEV)
    return x, c


@pytest.mark.parametrize("shape", ASSIGN_SHAPES)
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_assign_default_matches_reference(shape, metric, poisoned):
    x, c = _data(*shape)
    dist, idx = assign_triton(x, c, metric, "default")
    ref_d, ref_i = assign_ref(x, c, metric)
    assert dist.shape == ref_d.shape and dist.dtype == torch.float32
    assert idx.dtype == torch.int64
    assert not dist.isnan().any() and (idx >= 0).all(), "an output element was not written"
    assert torch.equal(idx, ref_i)
    torch.testing.assert_close(dist, ref_d, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "tf32x3", "tf32", "bf16"])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_assign_precision_modes(precision, metric, poisoned):
    x, c = _data(2, 50, 37, 64, seed=1)
    dist, idx = assign_triton(x, c, metric, precision)
    ref_d, ref_i = assign_ref(x, c, metric)
    assert not dist.isnan().any() and (idx >= 0).all()
    if precision == "bf16":  # 8-bit mantissa products: most rows agree, distances ~1e-2
        assert (idx == ref_i).float().mean() >= 0.9
        torch.testing.assert_close(dist, ref_d, rtol=3e-2, atol=0.5)
    else:  # the interpreter multiplies in fp32 whatever the mode; on a GPU tf32 rounds
        tol = 2e-2 if (precision == "tf32" and DEV == "cuda") else 1e-4
        assert (idx == ref_i).float().mean() >= (0.97 if tol > 1e-3 else 1.0)
        torch.testing.assert_close(dist, ref_d, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_assign_half_inputs(dtype):
    x, c = _data(2, 40, 33, 24, seed=2, dtype=dtype)
    dist, idx = assign_triton(x, c, "l2", "default")
    ref_d, ref_i = assign_ref(x.float(), c.float(), "l2")  # half products are exact in fp32
    assert torch.equal(idx, ref_i)
    torch.testing.assert_close(dist, ref_d, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("precision", ["default", "fp32"])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_assign_ties_go_to_smallest_index(precision, metric):
    g = _gen(3)
    D = 16
    c = torch.randn(1, 70, D, generator=g)
    c[0, 50] = c[0, 5]  # exact duplicates in different 32-wide tiles
    c[0, 6] = c[0, 5]  # and in the same tile
    c[0, 69] = c[0, 20]
    x = torch.cat([c[:, [5, 6, 50, 20, 69]], torch.randn(1, 11, D, generator=g)], dim=1)
    dist, idx = assign_triton(x.to(DEV), c.to(DEV), metric, precision)
    ref_d, ref_i = assign_ref(x, c, metric)
    if metric == "l2":  # each duplicated row is its own nearest centroid
        assert idx[0, :5].tolist() == [5, 5, 5, 20, 20]
    assert torch.equal(idx.cpu(), ref_i)
    torch.testing.assert_close(dist.cpu(), ref_d, rtol=1e-5, atol=1e-4)


def test_assign_recheck_path_covers_every_row(monkeypatch):
    """With an infinite tie tolerance every row goes through the compacted fp32 re-check."""
    monkeypatch.setattr(kassign, "TF32_TIE_TOL", 1e30)
    x, c = _data(3, 77, 45, 40, seed=4)
    for metric in ("l2", "ip"):
        dist, idx = assign_triton(x, c, metric, "default")
        ref_d, ref_i = assign_ref(x, c, metric)
        assert torch.equal(idx, ref_i)
        torch.testing.assert_close(dist, ref_d, rtol=1e-5, atol=1e-4)


def test_assign_agrees_with_float64_brute_force():
    x, c = _data(1, 600, 50, 32, seed=5)
    dist, idx = assign_triton(x, c, "l2", "default")
    d64 = torch.cdist(x.double(), c.double()) ** 2
    best = d64.min(dim=2)
    second = d64.topk(2, dim=2, largest=False).values[..., 1]
    clear = (second - best.values) > 1e-6 * best.values.abs().clamp_min(1)  # no near ties
    agree = (idx == best.indices)[clear].float().mean()
    assert agree >= 0.9999
    rel = ((dist.double() - best.values).abs() / best.values.clamp_min(1e-12))[clear]
    assert rel.max() <= 1e-5


def test_assign_through_public_op_and_registry():
    x, c = _data(1, 20, 6, 5, seed=6)
    dist, idx = ops.assign(x[0], c[0], backend="triton")
    ref_d, ref_i = assign_ref(x, c, "l2")
    assert dist.shape == (20,) and torch.equal(idx, ref_i[0])
    with pytest.raises(BackendError, match="float32/float16/bfloat16"):
        ops.assign(x.double(), c.double(), backend="triton")
    with pytest.raises(BackendError, match="precision"):
        ops.assign(x, c, precision="fp8", backend="triton")


def test_reasons_need_a_device_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    cpu = torch.zeros(1, 2, 3)
    why = kassign._reasons(x=cpu, centroids=cpu, metric="l2")
    assert why and "device" in why[0]


# ------------------------------------------------------------------------------- cluster_sums

SUMS_SHAPES = [(1, 1, 3, 3), (3, 300, 20, 64), (2, 40, 70, 257)]  # (B, N, K, D); K > N last


@pytest.mark.parametrize("shape", SUMS_SHAPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("deterministic", [False, True])
def test_cluster_sums_matches_reference(shape, weighted, deterministic, poisoned):
    B, N, K, D = shape
    if deterministic and D == 257:
        D = 33  # one program per (cluster, chunk): keep the interpreter's program count small
    g = _gen(7)
    x = torch.randn(B, N, D, generator=g).to(DEV)
    idx = torch.randint(0, K, (B, N), generator=g).to(DEV)
    w = torch.rand(B, N, generator=g).to(DEV) if weighted else None
    sums, counts = cluster_sums_triton(x, idx, K, w, deterministic)
    ref_s, ref_c = cluster_sums_ref(x, idx, K, w)
    assert not sums.isnan().any() and not counts.isnan().any()
    torch.testing.assert_close(sums, ref_s, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(counts, ref_c, rtol=1e-6, atol=1e-6)


def test_cluster_sums_deterministic_is_bit_identical_run_to_run():
    g = _gen(8)
    x = torch.randn(2, 200, 20, generator=g).to(DEV)
    idx = torch.randint(0, 4, (2, 200), generator=g).to(DEV)  # long segments
    first = cluster_sums_triton(x, idx, 4, None, True)
    second = cluster_sums_triton(x, idx, 4, None, True)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_cluster_sums_half_input_and_public_op():
    g = _gen(9)
    x = torch.randn(150, 24, generator=g).to(torch.bfloat16).to(DEV)
    idx = torch.randint(0, 9, (150,), generator=g).to(DEV)
    sums, counts = ops.cluster_sums(x, idx, 9, backend="triton")
    ref_s, ref_c = cluster_sums_ref(x[None], idx[None], 9, None)
    torch.testing.assert_close(sums, ref_s[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(counts, ref_c[0])


# ------------------------------------------------------------------------------ resplit_empty


def _resplit_case(B, K, D, seed, p_empty=0.3):
    g = _gen(seed)
    c = torch.randn(B, K, D, generator=g)
    cnt = torch.randint(1, 6, (B, K), generator=g).float()
    cnt[torch.rand(B, K, generator=g) < p_empty] = 0
    u = torch.rand(B, K, generator=g, dtype=torch.float64)
    return c, cnt, u


@pytest.mark.parametrize(
    "B, K, D, n_frozen",
    [(1, 1, 3, 0), (1, 6, 3, 0), (3, 40, 7, 2), (2, 300, 64, 0), (1, 50, 257, 10)],
)
def test_resplit_bit_identical_to_reference(B, K, D, n_frozen):
    c, cnt, u = _resplit_case(B, K, D, seed=K + D)
    c1, n1 = c.clone().to(DEV), cnt.clone().to(DEV)
    s1 = resplit_empty_triton(c1, n1, u.to(DEV), n_frozen)
    c2, n2 = c.clone(), cnt.clone()
    s2 = resplit_empty_ref(c2, n2, u, n_frozen)
    assert torch.equal(s1.cpu(), s2)
    assert torch.equal(c1.cpu(), c2) and torch.equal(n1.cpu(), n2)


@pytest.mark.parametrize(
    "counts, expect",
    [
        ([0.0, 1.0, 0.0, 1.0], 2),  # every (count - 1) weight is 0: weigh by raw counts
        ([0.0, 0.0, 0.0], 0),  # nothing can donate: no split, no error
        ([0.0, 7.0, 0.0, 0.0, 2.0], 3),  # one big donor split three times
    ],
)
def test_resplit_edge_cases(counts, expect):
    cnt = torch.tensor([counts])
    K = cnt.shape[1]
    c = torch.randn(1, K, 5, generator=_gen(10))
    u = torch.rand(1, K, generator=_gen(11), dtype=torch.float64)
    c1, n1 = c.clone().to(DEV), cnt.clone().to(DEV)
    s1 = resplit_empty_triton(c1, n1, u.to(DEV), 0)
    c2, n2 = c.clone(), cnt.clone()
    s2 = resplit_empty_ref(c2, n2, u, 0)
    assert int(s1[0]) == expect == int(s2[0])
    assert torch.equal(c1.cpu(), c2) and torch.equal(n1.cpu(), n2)


def test_resplit_public_op_same_seed_same_result():
    c, cnt, _ = _resplit_case(2, 30, 9, seed=12)
    a = ops.resplit_empty(c.to(DEV), cnt.to(DEV), seed=3, n_frozen=1, backend="triton")
    b = ops.resplit_empty(c.to(DEV), cnt.to(DEV), seed=3, n_frozen=1, backend="torch")
    for left, right in zip(a, b, strict=True):
        assert torch.equal(left.cpu(), right.cpu())
    assert (a[1][:, 1:] > 0).all()  # no empty non-frozen cluster is left


# -------------------------------------------------------------------------------------- sobel


def _images(B, H, W, dtype, seed):
    g = _gen(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, (B, 3, H, W), generator=g, dtype=torch.uint8).to(DEV)
    return torch.randn(B, 3, H, W, generator=g).to(dtype).to(DEV)


def _close_sobel(out, ref):
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert not out.float().isnan().any(), "an output element was not written"
    if out.dtype == torch.float32:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    else:  # one ulp of the output format (the interpreter truncates to bf16)
        ulp = 2.0**-7 if out.dtype == torch.bfloat16 else 2.0**-10
        torch.testing.assert_close(out.float(), ref.float(), rtol=ulp, atol=1e-3)


@pytest.mark.parametrize("in_dtype", [torch.uint8, torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("normalise", [True, False])
def test_sobel_matches_reference(in_dtype, out_dtype, normalise, poisoned):
    images = _images(2, 5, 7, in_dtype, seed=13)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalise else (None, None)
    out = sobel_triton(images, mean, std, out_dtype)
    _close_sobel(out, sobel_ref(images, mean, std, out_dtype))


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 33, 70), (3, 17, 2)])
def test_sobel_odd_sizes(shape, poisoned):
    images = _images(*shape, torch.uint8, seed=14)
    out = sobel_triton(images, IMAGENET_MEAN, IMAGENET_STD, torch.float32)
    _close_sobel(out, sobel_ref(images, IMAGENET_MEAN, IMAGENET_STD, torch.float32))


def test_sobel_public_op_and_module():
    images = _images(2, 9, 11, torch.float32, seed=15)
    ref = sobel_ref(images, None, None, torch.float32)
    _close_sobel(ops.sobel(images, mean=None, std=None, backend="triton"), ref)
    with torch.no_grad():
        _close_sobel(ops.Sobel(backend="triton")(images), ref)


# ------------------------------------------------------------------- sm_90 compile (no GPU)

_COMPILE_SCRIPT = r"""
import sys
sys.path.insert(0, {root!r})
from fastdc.ops.registry import import_kernels
import_kernels()
import triton
from triton.backends.compiler import GPUTarget
from fastdc.kernels import assign as A, cluster_sums as U, resplit_empty as R, sobel as S

TARGET = GPUTarget("cuda", 90, 32)
SMEM_LIMIT = 232448  # bytes of shared memory one H100 block may use


def build(fn, sig, const, **opts):
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=const)
    return triton.compile(src, target=TARGET, options=opts)


P = lambda t: "*" + t
sig_a = dict(x_ptr=P("fp32"), c_ptr=P("fp32"), csq_ptr=P("fp32"), cmax_ptr=P("fp32"),
             rows_ptr=P("i32"), nrows_ptr=P("i64"), dist_ptr=P("fp32"), idx_ptr=P("i64"),
             tie_ptr=P("i8"), N="i32", K="i32", N_LIST="i32", tie_tol="fp32")
consts = ["D", "IS_L2", "DOT_MODE", "TRACK_TIES", "GATHER", "UPCAST_BF16", "BLOCK_N",
          "BLOCK_K", "BLOCK_D"]
sig_a.update({{k: "constexpr" for k in consts}})
fits = 0
for mode, track, gather, D, dtype in [("tf32", True, False, 256, "fp32"),
                                      ("ieee", False, True, 256, "fp32"),
                                      ("bf16", False, False, 257, "fp32"),
                                      ("ieee", False, False, 64, "bf16")]:
    sig = dict(sig_a, x_ptr=P(dtype), c_ptr=P(dtype))
    cfgs = A._prune_assign_configs(A.assign_configs(), dict(N=1281167, K=10000), D=D)
    for cfg in cfgs[:2]:
        kw = dict(cfg.kwargs)
        kw["BLOCK_D"] = A._resolve_block_d(dict(kw, D=D))
        const = dict(D=D, IS_L2=True, DOT_MODE=mode, TRACK_TIES=track, GATHER=gather,
                     UPCAST_BF16=False, **kw)
        k = build(A._assign_kernel, sig, const, num_warps=cfg.num_warps,
                  num_stages=cfg.num_stages)
        fits += k.metadata.shared <= SMEM_LIMIT
assert fits >= 4, fits
build(A._exact_dist_kernel,
      dict(x_ptr=P("fp32"), c_ptr=P("fp32"), csq_ptr=P("fp32"), idx_ptr=P("i64"),
           dist_ptr=P("fp32"), N="i32", K="i32", D="constexpr", IS_L2="constexpr",
           BLOCK_N="constexpr", BLOCK_D="constexpr"),
      dict(D=256, IS_L2=True, BLOCK_N=32, BLOCK_D=64))
sig_s = dict(img_ptr=P("u8"), out_ptr=P("bf16"), H="i32", W="i32", m0="fp32", m1="fp32",
             m2="fp32", s0="fp32", s1="fp32", s2="fp32", IS_U8="constexpr", NORM="constexpr",
             BLOCK_H="constexpr", BLOCK_W="constexpr")
build(S._sobel_kernel, sig_s, dict(IS_U8=True, NORM=True, BLOCK_H=16, BLOCK_W=64))
build(S._sobel_kernel, dict(sig_s, img_ptr=P("fp16"), out_ptr=P("fp32"), H="constexpr"),
      dict(H=1, IS_U8=False, NORM=False, BLOCK_H=16, BLOCK_W=32))  # H == 1 is specialised
build(R._resplit_kernel,
      dict(c_ptr=P("fp32"), cnt_ptr=P("fp32"), u_ptr=P("fp64"), nsplit_ptr=P("i64"), K="i32",
           D="i32", n_frozen="i32", EPS="constexpr", BLOCK_K="constexpr", BLOCK_D="constexpr"),
      dict(EPS=1 / 1024, BLOCK_K=1024, BLOCK_D=256))
sig_u = dict(x_ptr=P("fp32"), idx_ptr=P("i64"), w_ptr=P("fp32"), sums_ptr=P("fp32"),
             counts_ptr=P("fp32"), N="i32", K="i32", D="i32", HAS_W="constexpr",
             BLOCK_N="constexpr", BLOCK_D="constexpr")
build(U._sums_atomic_kernel, sig_u, dict(HAS_W=True, BLOCK_N=64, BLOCK_D=128))
sig_v = dict(x_ptr=P("bf16"), perm_ptr=P("i64"), start_ptr=P("i64"), w_ptr=P("fp32"),
             sums_ptr=P("fp32"), counts_ptr=P("fp32"), N="i32", K="i32", D="i32",
             HAS_W="constexpr", BLOCK_R="constexpr", BLOCK_D="constexpr")
build(U._sums_segment_kernel, sig_v, dict(HAS_W=False, BLOCK_R=32, BLOCK_D=128))
print("compiled")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU run compiles them for real")
def test_triton_kernels_compile_for_sm90(tmp_path):
    """The interpreter runs kernels as Python and misses compile-only errors (constexpr
    rules, shared-memory size): compile every kernel for sm_90 with Triton's own ptxas."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", _COMPILE_SCRIPT.format(root=str(ROOT))],
        capture_output=True, text=True, env=env, timeout=600,
    )
    if "ptxas" in proc.stderr and "not found" in proc.stderr:
        pytest.skip("Triton's ptxas is not available")
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]


# ----------------------------------------------------------------- benchmark script (no GPU)


def test_bench_gpu_cpu_side_helpers():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import datetime

    path = bench.result_path("NVIDIA H100 80GB HBM3", datetime.date(2025, 1, 2))
    assert path.name == "gpu_nvidia-h100-80gb-hbm3_2025-01-02.json"
    assert bench.assign_flops(2, 3, 4) == 48.0
    table = bench.format_table([{"case": "assign", "impl": "triton", "ms": 1.5},
                                {"case": "assign", "impl": "x", "ms": None, "note": "n/a"}])
    assert "1.500" in table and "n/a" in table
    assert set(bench.versions()) >= {"torch", "triton"}
    if not torch.cuda.is_available():
        assert bench.main([]) == 2  # a clear message and a non-zero exit, no crash
