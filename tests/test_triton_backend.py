"""The Triton backend (kernels/*.py) as a whole: every kernel compiles for sm_90 (the CPU
interpreter misses compile-only errors), and every op's reasons ask for a CUDA device unless
the interpreter runs. Each op's results on this backend are tested with every other backend in
tests/test_<op>.py (compiled on a GPU, else under TRITON_INTERPRET=1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import triton_kernels

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "op, inputs",
    [
        ("assign", dict(x=torch.zeros(1, 2, 3), centroids=torch.zeros(1, 1, 3), metric="l2")),
        ("knn", dict(x=torch.zeros(1, 2, 3), y=torch.zeros(1, 4, 3), k=2, metric="l2")),
        ("cluster_sums", dict(x=torch.zeros(1, 2, 3), idx=torch.zeros(1, 2, dtype=torch.int64),
                              k=1, weights=None)),
        ("resplit_empty", dict(centroids=torch.zeros(1, 2, 3), counts=torch.zeros(1, 2),
                               uniforms=torch.zeros(1, 2, dtype=torch.float64), n_frozen=0)),
        ("sobel", dict(images=torch.zeros(1, 3, 4, 4), mean=None, std=None,
                       out_dtype=torch.float32)),
    ],
)
def test_reasons_need_a_device_without_the_interpreter(monkeypatch, op, inputs):
    kernels = triton_kernels(op)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    why = kernels._reasons(**inputs)
    assert why and "device" in why[0]
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not kernels._reasons(**inputs)


def test_sobel_declines_images_that_require_grad():
    kernels = triton_kernels("sobel")
    images = torch.zeros(1, 3, 4, 4, requires_grad=True)
    why = kernels._reasons(images=images, mean=None, std=None, out_dtype=torch.float32)
    assert any("autograd" in r for r in why)


# ------------------------------------------------------------------- sm_90 compile (no GPU)

_PRELUDE = r"""
import sys
sys.path.insert(0, {root!r})
from fastdc.ops.registry import import_kernels
import_kernels()
import triton
from triton.backends.compiler import GPUTarget
from fastdc.kernels import assign as A, cluster_sums as U, resplit_empty as R, sobel as S

TARGET = GPUTarget("cuda", 90, 32)
SMEM_LIMIT = 232448  # bytes of shared memory one H100 block may use
SHIFT = A.count_shift(10000)  # the packed candidate count's bit at DeepCluster's K = 10 000


def build(fn, sig, const, **opts):
    # pointers 16-byte aligned, as Triton's launcher specialises torch tensors at run time
    attrs = {{(fn.arg_names.index(n),): [["tt.divisibility", 16]]
             for n, t in sig.items() if t.startswith("*")}}
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs)
    return triton.compile(src, target=TARGET, options=opts)


P = lambda t: "*" + t
sig_a = dict(x_ptr=P("fp32"), c_ptr=P("fp32"), pad_ptr=P("fp32"), coef_ptr=P("fp32"),
             rows_ptr=P("i32"), nrows_ptr=P("i64"), dist_ptr=P("fp32"), idx_ptr=P("i64"),
             cand_ptr=P("i64"), N="i32", K="i32", KP="i32", N_LIST="i32")
consts = ["D", "IS_L2", "DOT_MODE", "COUNT_SHIFT", "GATHER", "UPCAST_BF16", "BLOCK_N",
          "BLOCK_K", "BLOCK_D"]
sig_a.update({{k: "constexpr" for k in consts}})
"""

_COMPILE_SCRIPT = _PRELUDE + r"""
fits = 0
for mode, count, gather, D, dtype in [("bf16", True, False, 256, "fp32"),
                                      ("ieee", False, True, 256, "fp32"),
                                      ("bf16", False, False, 257, "fp32"),
                                      ("ieee", False, False, 64, "bf16")]:
    sig = dict(sig_a, x_ptr=P(dtype), c_ptr=P("bf16" if count else dtype))
    cfgs = A._prune_assign_configs(A.assign_configs(), dict(N=1281167, K=10000), D=D)
    for cfg in cfgs[:2]:
        kw = dict(cfg.kwargs)
        kw["BLOCK_D"] = A._resolve_block_d(dict(kw, D=D))
        const = dict(D=D, IS_L2=True, DOT_MODE=mode, COUNT_SHIFT=SHIFT * count, GATHER=gather,
                     UPCAST_BF16=False, **kw)
        k = build(A._assign_kernel, sig, const, num_warps=cfg.num_warps,
                  num_stages=cfg.num_stages)
        fits += k.metadata.shared <= SMEM_LIMIT
assert fits >= 4, fits
build(A._rescore_kernel,
      dict(x_ptr=P("fp32"), c_ptr=P("fp32"), pad_ptr=P("fp32"), second_ptr=P("i64"),
           idx_ptr=P("i64"), dist_ptr=P("fp32"), N="i32", K="i32", KP="i32", D="constexpr",
           IS_L2="constexpr", BLOCK_N="constexpr", BLOCK_D="constexpr"),
      dict(D=256, IS_L2=True, BLOCK_N=32, BLOCK_D=64))
for mode in ("bf16", "tf32"):  # the accumulation probe multiplies as the counting passes do
    k = build(A._dot_probe_kernel, dict(a_ptr=P("fp32"), b_ptr=P("fp32"), out_ptr=P("fp32"),
                                        M="constexpr", D="constexpr", DOT_MODE="constexpr",
                                        UPCAST_BF16="constexpr"),
              dict(M=64, D=256, DOT_MODE=mode, UPCAST_BF16=False))
    assert "wgmma" in k.asm["ptx"], mode
build(R._resplit_empty_kernel,
      dict(c_ptr=P("fp32"), cnt_ptr=P("fp32"), u_ptr=P("fp64"), nsplit_ptr=P("i64"), K="i32",
           D="i32", n_frozen="i32", EPS="constexpr", BLOCK_K="constexpr", BLOCK_D="constexpr"),
      dict(EPS=1 / 1024, BLOCK_K=1024, BLOCK_D=256))
sig_u = dict(x_ptr=P("fp32"), idx_ptr=P("i64"), w_ptr=P("fp32"), sums_ptr=P("fp32"),
             counts_ptr=P("fp32"), N="i32", K="i32", D="i32", HAS_W="constexpr",
             BLOCK_N="constexpr", BLOCK_D="constexpr")
build(U._cluster_sums_atomic_kernel, sig_u, dict(HAS_W=True, BLOCK_N=64, BLOCK_D=128))
sig_v = dict(x_ptr=P("bf16"), perm_ptr=P("i64"), start_ptr=P("i64"), w_ptr=P("fp32"),
             sums_ptr=P("fp32"), counts_ptr=P("fp32"), N="i32", K="i32", D="i32",
             HAS_W="constexpr", BLOCK_R="constexpr", BLOCK_D="constexpr")
build(U._cluster_sums_segment_kernel, sig_v, dict(HAS_W=False, BLOCK_R=32, BLOCK_D=128))
print("compiled")
"""


# Every autotune candidate of the default mode's four passes (bf16 main pass, TF32 and tf32x3
# counting passes, fp32 re-check) and of the one-pass TF32 and tf32x3 modes at D = 256: no
# stack frame (spills live there), shared memory within one H100 block's limit, wgmma in the
# tensor-core passes' PTX.
_ASSIGN_CONFIGS_SCRIPT = _PRELUDE + r"""
import os, re, subprocess, tempfile
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
# (mode, COUNT, GATHER): the default mode's bf16 main pass, its TF32 and tf32x3 counting
# passes and full fp32 pass on gathered rows, and the one-pass TF32 and tf32x3 modes
passes = [("bf16", True, False), ("tf32", True, True), ("tf32x3", True, True),
          ("ieee", False, True), ("tf32", False, False), ("tf32x3", False, False)]
runs = [(cfg, *p) for p in passes for cfg in A._prune_assign_configs(
    A.assign_configs(), dict(N=1281167, K=10000), D=256, DOT_MODE=p[0], COUNT_SHIFT=SHIFT * p[1])]
assert sum(r[1] == "bf16" for r in runs) == len(A.assign_configs()), runs
for cfg, mode, count, gather in runs:
    kw = dict(cfg.kwargs)
    kw["BLOCK_D"] = A._resolve_block_d(dict(kw, D=256))
    const = dict(D=256, IS_L2=True, DOT_MODE=mode, COUNT_SHIFT=SHIFT * count, GATHER=gather,
                 UPCAST_BF16=False, **kw)
    sig = dict(sig_a, c_ptr=P("bf16")) if mode == "bf16" else sig_a
    k = build(A._assign_kernel, sig, const, num_warps=cfg.num_warps,
              num_stages=cfg.num_stages)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        res = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    stack = int(re.search(r"STACK:(\d+)", res).group(1))
    assert stack == 0, (cfg, res)
    assert k.metadata.shared <= SMEM_LIMIT, (cfg, k.metadata.shared)
    assert mode == "ieee" or "wgmma" in k.asm["ptx"], cfg
print("compiled")
"""


# Every knn autotune candidate, at D = 128 (the resident x tile) and D = 256 (D streamed), for
# k padded to 1, 8 (PIC's k = 6) and 64 (the largest), L2, and the inner product at k = 6: no
# stack frame, shared memory within the limit.
_KNN_CONFIGS_SCRIPT = _PRELUDE + r"""
import os, re, subprocess, tempfile
from fastdc.kernels import knn as KN
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
sig = dict(x_ptr=P("fp32"), y_ptr=P("fp32"), xsq_ptr=P("fp32"), ysq_ptr=P("fp32"),
           dist_ptr=P("fp32"), idx_ptr=P("i64"), N="i32", M="i32", K="i32")
sig.update({{k: "constexpr" for k in ["D", "IS_L2", "KP", "BLOCK_N", "BLOCK_M", "BLOCK_D"]}})
runs = [(D, kp, True) for D in (128, 256) for kp in (1, 8, 64)] + [(128, 8, False)]
seen = set()
for D, kp, l2 in runs:
    for cfg in KN._prune_knn_configs(KN.knn_configs(), dict(N=200000, M=200000), D=D, KP=kp):
        kw = dict(cfg.kwargs)
        kw["BLOCK_D"] = KN._resolve_block_d(dict(kw, D=D))
        seen.add(str(cfg))
        k = build(KN._knn_kernel, sig, dict(D=D, IS_L2=l2, KP=kp, **kw),
                  num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(k.asm["cubin"])
            f.flush()
            res = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True,
                                 text=True, check=True).stdout
        assert int(re.search(r"STACK:(\d+)", res).group(1)) == 0, (D, kp, cfg, res)
        assert k.metadata.shared <= SMEM_LIMIT, (D, kp, cfg, k.metadata.shared)
assert len(seen) == len(KN.knn_configs()), seen
print("compiled")
"""


# cluster_sums' atomic pass (sort, segmented scans, atomics) for each weighting and input dtype,
# and sobel for uint8 (look-up table) and float input: no stack frame, shared memory within the
# limit.
_CLUSTER_SUMS_SOBEL_SCRIPT = _PRELUDE + r"""
import os, re, subprocess, tempfile
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")


def check(k, what):
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        res = subprocess.run([CUOBJDUMP, "-res-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    assert int(re.search(r"STACK:(\d+)", res).group(1)) == 0, (what, res)
    assert k.metadata.shared <= SMEM_LIMIT, (what, k.metadata.shared)


sig_u = dict(x_ptr=P("fp32"), idx_ptr=P("i64"), w_ptr=P("fp32"), sums_ptr=P("fp32"),
             counts_ptr=P("fp32"), N="i32", K="i32", D="i32", HAS_W="constexpr",
             BLOCK_N="constexpr", BLOCK_D="constexpr")
for dtype in ("fp32", "bf16"):
    for has_w in (True, False):
        for D in (16, 256):
            cfg = U.cluster_sums_config(1281167, D, 10000)
            k = build(U._cluster_sums_atomic_kernel, dict(sig_u, x_ptr=P(dtype)),
                      dict(HAS_W=has_w, BLOCK_N=cfg["BLOCK_N"],
                           BLOCK_D=cfg["BLOCK_D_ATOMIC"]),
                      num_warps=cfg["num_warps"])
            check(k, ("cluster_sums", dtype, has_w, D))
sig_s = dict(img_ptr=P("u8"), lut_ptr=P("fp32"), out_ptr=P("fp32"), H="i32", W="i32",
             m0="fp32", m1="fp32", m2="fp32", s0="fp32", s1="fp32", s2="fp32",
             IS_U8="constexpr", NORM="constexpr", BLOCK_H="constexpr", BLOCK_W="constexpr")
for img, is_u8 in (("u8", True), ("fp16", False), ("fp32", False)):
    for W in (32, 224):
        cfg = S.sobel_config(224, W)
        k = build(S._sobel_kernel, dict(sig_s, img_ptr=P(img)),
                  dict(IS_U8=is_u8, NORM=True, BLOCK_H=cfg["BLOCK_H"], BLOCK_W=cfg["BLOCK_W"]),
                  num_warps=cfg["num_warps"])
        check(k, ("sobel", img, W))
k = build(S._sobel_kernel, dict(sig_s, img_ptr=P("fp16"), out_ptr=P("bf16"), H="constexpr"),
          dict(H=1, IS_U8=False, NORM=False, BLOCK_H=32, BLOCK_W=32))  # H == 1 is specialised
check(k, ("sobel", "H == 1"))
print("compiled")
"""


def _compile_in_subprocess(script: str, tmp_path) -> None:
    """Run a compile script without the interpreter; skip when Triton ships no ptxas."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", script.format(root=str(ROOT))],
        capture_output=True, text=True, env=env, timeout=600,
    )
    if "ptxas" in proc.stderr and "not found" in proc.stderr:
        pytest.skip("Triton's ptxas is not available")
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU run compiles them for real")
def test_triton_kernels_compile_for_sm90(tmp_path):
    """The interpreter runs kernels as Python and misses compile-only errors (constexpr
    rules, shared-memory size): compile every kernel for sm_90 with Triton's own ptxas."""
    _compile_in_subprocess(_COMPILE_SCRIPT, tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU run compiles them for real")
def test_assign_configs_do_not_spill_on_sm90(tmp_path):
    """Each autotune tile of the default mode's passes (and of the one-pass TF32 and tf32x3
    modes) compiles for sm_90 without a stack frame, within the shared-memory limit, and on
    wgmma (about 70 s on 2 cores)."""
    _compile_in_subprocess(_ASSIGN_CONFIGS_SCRIPT, tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU run compiles them for real")
def test_knn_configs_do_not_spill_on_sm90(tmp_path):
    """Each autotune tile of the knn kernel compiles for sm_90 without a stack frame and within
    the shared-memory limit, for k padded to 1, 8 and 64 (about 60 s on 2 cores)."""
    _compile_in_subprocess(_KNN_CONFIGS_SCRIPT, tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU run compiles them for real")
def test_cluster_sums_and_sobel_do_not_spill_on_sm90(tmp_path):
    """cluster_sums' atomic pass and sobel, at their launch configs, compile for sm_90 without
    a stack frame (spills live there) and within one H100 block's shared memory."""
    _compile_in_subprocess(_CLUSTER_SUMS_SOBEL_SCRIPT, tmp_path)
