"""The ``cpu`` backend: C++/OpenMP kernels from the pybind11 extension :mod:`fastdc._C`.

Registers ``assign``, ``assign_bounded``, ``knn``, ``cluster_sums``, ``resplit_empty``,
``row_norms`` and ``sobel``. Each implementation takes the same keyword arguments as the op's
reference (batched, contiguous tensors), passes them to C++ as zero-copy NumPy views,
allocates the outputs with torch and runs on :func:`fastdc.ops.threads.kernel_threads` threads.
The kernels compute in float32; other dtypes fall back to the ``torch`` reference (the
``reasons`` functions say why). Importing this module fails when the extension was not built;
the registry records that error.
"""

from __future__ import annotations

import numpy as np
import torch

from fastdc import _C
from fastdc.ops.checks import grad_reasons
from fastdc.ops.registry import register
from fastdc.ops.threads import kernel_threads

_SOBEL_OUT = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
"""Output dtypes of the fused Sobel kernel and their codes in ``_C.sobel``."""


def simd() -> str:
    """The SIMD path the kernels take by default: "avx512", "avx2" or "generic" (the widest
    this CPU runs, or the one named by the environment variable ``FASTDC_CPU_ISA``). Raises
    ValueError when ``FASTDC_CPU_ISA`` names an unknown path or one this CPU lacks."""
    return _C.simd()


def isa_available() -> list[str]:
    """The SIMD paths this CPU runs, narrowest first (e.g. ["generic", "avx2", "avx512"])."""
    return list(_C.isa_available())


def isa_missing(isa: str) -> str:
    """The CPU features the path ``isa`` needs that this CPU lacks, space-separated ("" when it
    runs here). Raises ValueError for a name other than generic, avx2, avx512."""
    return _C.isa_missing(isa)


def bf16_missing() -> str:
    """The CPU features the bf16 pass of ``assign`` needs that this CPU lacks, space-separated
    ("" when it runs here): AVX-512 F/BW and AVX512-BF16."""
    return _C.bf16_missing()


BF16_MIN_K = 256
"""The smallest K at which "default" takes the bf16 pass: at K = 100 its per-row work (packing,
candidates) outweighs the faster tile, from K = 1 000 on it is 1.5-1.8x the float32 path
(benchmarks/results/assign_sweep_cpu.json, AMD EPYC Zen 4, 2 threads)."""


def use_bf16(precision: str = "default", isa: str = "", k: int | None = None) -> bool:
    """Whether ``assign_cpu`` scores with the bf16 pass: with ``precision`` "default" where the
    CPU has AVX512-BF16, the path (``isa``, "" = :func:`simd`) is avx512 and ``k`` (the number
    of centroids, None: large) is at least :data:`BF16_MIN_K`; always with "bf16" (ValueError
    naming what is missing when it cannot); never with "fp32". Other precision names (the GPU
    modes) count as "default". Both passes give the same answers."""
    path = isa or simd()
    available = path == "avx512" and not bf16_missing()
    if precision == "bf16" and not available:
        lacking = bf16_missing() or f"the avx512 path (the path in use is {path})"
        raise ValueError(f"precision='bf16' on the cpu backend needs {lacking}; use "
                         "precision='default' (bf16 where it runs) or 'fp32'")
    if precision == "default" and k is not None and k < BF16_MIN_K:
        return False
    return available and precision != "fp32"


def fma_peak_gflops(isa: str = "", threads: int | None = None, seconds: float = 0.2) -> float:
    """Measured FMA throughput of the SIMD path ``isa`` ("" = the default path) on ``threads``
    threads (default :func:`fastdc.ops.threads.kernel_threads`), in GFLOP/s: independent
    vector FMA chains, as many as the path's assign tile has accumulators, run for
    ``seconds``."""
    return _C.fma_peak_gflops(isa, threads or kernel_threads(), seconds)


def bf16_peak_gflops(threads: int | None = None, seconds: float = 0.2) -> float:
    """Measured throughput of the bf16 pass's instruction (VDPBF16PS) on ``threads`` threads
    (default :func:`fastdc.ops.threads.kernel_threads`), in GFLOP/s; ValueError where
    :func:`bf16_missing` is not empty."""
    return _C.bf16_peak_gflops(threads or kernel_threads(), seconds)


def _kernel_reasons(**tensors: tuple[torch.Tensor | None, torch.dtype]) -> list[str]:
    """Why the kernels cannot take these tensors (``name=(tensor or None, dtype it needs)``):
    they read contiguous CPU tensors of the given dtypes."""
    present = {name: t for name, (t, _) in tensors.items() if t is not None}
    reasons = []
    if any(t.device.type != "cpu" for t in present.values()):
        reasons.append("needs tensors on the CPU device")
    if any(not t.is_contiguous() for t in present.values()):
        reasons.append("needs contiguous tensors")
    for name, (t, dtype) in tensors.items():
        if t is not None and t.dtype != dtype:
            reasons.append(f"takes {_name(dtype)} {name}, got {_name(t.dtype)}")
    return reasons


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _np(t: torch.Tensor) -> np.ndarray:
    """Zero-copy NumPy view of a contiguous CPU tensor."""
    return (t.detach() if t.requires_grad else t).numpy()


# --- assign -----------------------------------------------------------------------------------


def _assign_reasons(x, centroids, metric, precision="default") -> list[str]:
    reasons = _kernel_reasons(x=(x, torch.float32), centroids=(centroids, torch.float32))
    if metric not in ("l2", "ip"):
        reasons.append(f"unknown metric {metric!r}")
    return reasons


@register("assign", "cpu", _assign_reasons)
def assign_cpu(
    x: torch.Tensor,
    centroids: torch.Tensor,
    metric: str,
    precision: str = "default",
    isa: str = "",
    second: bool | str = False,
) -> tuple[torch.Tensor, ...]:
    """x: [B, N, D] float32, centroids: [B, K, D] float32 -> dist [B, N] float32, idx [B, N]
    int64, the float32 answers. ``precision``: "default" scores with the bf16 pass where the CPU
    has AVX512-BF16 (a bf16 main pass whose rounding bound settles most rows; the others are
    scored again in float32, so the answers are the float32 ones, bit for bit), "fp32" never,
    "bf16" always (see :func:`use_bf16`). ``isa``: the SIMD path ("generic", "avx2", "avx512";
    "" = :func:`simd`); a path this CPU lacks raises ValueError naming the missing feature.
    ``second``: also return dist2 [B, N] float32, the second best (see
    :func:`fastdc.ops.assign`): exact with True (float32 pass), a bound with "bound" (the bf16
    pass, when it is used)."""
    B, N, _ = x.shape
    dist = torch.empty(B, N, dtype=torch.float32)
    idx = torch.empty(B, N, dtype=torch.int64)
    dist2 = torch.empty(B, N, dtype=torch.float32) if second else None
    bf16 = use_bf16(precision, isa, k=centroids.shape[1]) and second in (False, "bound")
    _C.assign(_np(x), _np(centroids), metric == "ip", _np(dist), _np(idx),
              kernel_threads(), isa, None if dist2 is None else _np(dist2), bf16)
    return (dist, idx) if dist2 is None else (dist, idx, dist2)


def assign_dist_cpu(x: torch.Tensor, centroids: torch.Tensor, idx: torch.Tensor, metric: str,
                    isa: str = "") -> torch.Tensor:
    """x: [B, N, D] float32, centroids: [B, K, D] float32, idx: [B, N] int64 in [0, K) -> dist
    [B, N] float32: the dist :func:`assign_cpu` reports for each row when its centroid is idx,
    bit for bit as the path ``isa`` ("" = :func:`simd`) computes it (the bf16 pass reports the
    float32 one). ValueError for an idx out of range."""
    dist = torch.empty(idx.shape, dtype=torch.float32)
    _C.assign_dist(_np(x), _np(centroids), _np(idx.contiguous()), metric == "ip", _np(dist),
                   kernel_threads(), isa)
    return dist


def _assign_bounded_reasons(x, centroids, labels, lower, shift, first, exact_dist) -> list[str]:
    return _kernel_reasons(x=(x, torch.float32), centroids=(centroids, torch.float32),
                           labels=(labels, torch.int64), lower=(lower, torch.float32),
                           shift=(shift, torch.float32))


@register("assign_bounded", "cpu", _assign_bounded_reasons)
def assign_bounded_cpu(x: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor,
                       lower: torch.Tensor, shift: torch.Tensor, first: bool,
                       exact_dist: bool = False,
                       isa: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fastdc.ops.assign_bounded` on the C++ kernel (the float32 path ``isa``, "" =
    :func:`simd`): labels and lower updated in place; returns (dist [B, N] float32, computed
    [B] int64). ValueError for labels out of [0, K)."""
    B, N, _ = x.shape
    dist = torch.empty(B, N, dtype=torch.float32)
    computed = torch.empty(B, dtype=torch.int64)
    _C.assign_bounded(_np(x), _np(centroids), _np(shift), bool(first), bool(exact_dist),
                      _np(labels), _np(lower), _np(dist), _np(computed), kernel_threads(), isa)
    return dist, computed


# --- lloyd_step -------------------------------------------------------------------------------


def _lloyd_step_reasons(x, centroids, uniforms, labels, dist, weights, n_frozen, lower, shift,
                        first, precision="default") -> list[str]:
    return _kernel_reasons(x=(x, torch.float32), centroids=(centroids, torch.float32),
                           uniforms=(uniforms, torch.float64), labels=(labels, torch.int64),
                           dist=(dist, torch.float32), weights=(weights, torch.float32),
                           lower=(lower, torch.float32), shift=(shift, torch.float32))


@register("lloyd_step", "cpu", _lloyd_step_reasons)
def lloyd_step_cpu(x: torch.Tensor, centroids: torch.Tensor, uniforms: torch.Tensor,
                   labels: torch.Tensor, dist: torch.Tensor, weights: torch.Tensor | None,
                   n_frozen: int, lower: torch.Tensor | None, shift: torch.Tensor | None,
                   first: bool, precision: str = "default", isa: str = ""
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`fastdc.ops.lloyd_step` in one call of the C++ kernels (the path ``isa``, "" =
    :func:`simd`; the bf16 pass as :func:`assign_cpu` takes it, without bounds): the results of
    assign_cpu (or assign_bounded_cpu), cluster_sums_cpu and resplit_empty_cpu called one by
    one, bit for bit."""
    B, _, D = x.shape
    K = centroids.shape[1]
    new = torch.empty(B, K, D, dtype=torch.float32)
    counts = torch.empty(B, K, dtype=torch.float32)
    nsplit = torch.empty(B, dtype=torch.int64)
    computed = torch.empty(B, dtype=torch.int64)
    bf16 = lower is None and use_bf16(precision, isa, k=K)
    _C.lloyd_step(_np(x), _np(centroids), None if weights is None else _np(weights),
                  _np(uniforms), n_frozen, _np(labels), _np(dist),
                  None if lower is None else _np(lower), None if shift is None else _np(shift),
                  bool(first), _np(new), _np(counts), _np(nsplit), _np(computed),
                  kernel_threads(), isa, bf16)
    return new, counts, nsplit, computed


def _lloyd_run_reasons(x, centroids, uniforms, labels, dist, weights, n_frozen, lower, shift,
                       tile_passes, refresh_above, threshold, precision="default") -> list[str]:
    return _lloyd_step_reasons(x, centroids, uniforms, labels, dist, weights, n_frozen, lower,
                               shift, True, precision)


@register("lloyd_run", "cpu", _lloyd_run_reasons)
def lloyd_run_cpu(x: torch.Tensor, centroids: torch.Tensor, uniforms: torch.Tensor,
                  labels: torch.Tensor, dist: torch.Tensor, weights: torch.Tensor | None,
                  n_frozen: int, lower: torch.Tensor | None, shift: torch.Tensor | None,
                  tile_passes: int, refresh_above: float, threshold: float,
                  precision: str = "default", isa: str = "") -> dict:
    """:func:`fastdc.ops.lloyd_step.lloyd_run` in one call of the C++ loop (the path ``isa``,
    "" = :func:`simd`; the bf16 pass as :func:`assign_cpu` takes it, in passes without
    bounds)."""
    niter, B, K = uniforms.shape
    obj = torch.empty(niter, B, dtype=torch.float64)
    counts = torch.empty(niter, B, K, dtype=torch.float32)
    nsplit = torch.empty(niter, B, dtype=torch.int64)
    computed = torch.empty(niter, B, dtype=torch.int64)
    changed = torch.empty(niter, B, dtype=torch.int64)
    seconds = torch.empty(niter, dtype=torch.float64)
    search = torch.empty(niter, dtype=torch.float64)
    bf16 = use_bf16(precision, isa, k=K)
    n, refresh, reason = _C.lloyd_run(
        _np(x), None if weights is None else _np(weights), _np(uniforms), n_frozen,
        _np(centroids), _np(labels), _np(dist), None if lower is None else _np(lower),
        None if shift is None else _np(shift), tile_passes, refresh_above, threshold, _np(obj),
        _np(counts), _np(nsplit), _np(computed), _np(changed), _np(seconds), _np(search),
        kernel_threads(), isa, bf16)
    return {"n_iter": n, "obj": obj[:n], "counts": counts[:n], "nsplit": nsplit[:n],
            "computed": computed[:n], "changed": changed[:n] if threshold >= 0 else None,
            "seconds": seconds[:n], "search": search[:n], "refresh": refresh,
            "reason": (None, "converged", "threshold")[reason]}


# --- knn --------------------------------------------------------------------------------------


def _knn_reasons(x, y, k, metric) -> list[str]:
    reasons = _kernel_reasons(x=(x, torch.float32), y=(y, torch.float32))
    if metric not in ("l2", "ip"):
        reasons.append(f"unknown metric {metric!r}")
    return reasons


@register("knn", "cpu", _knn_reasons)
def knn_cpu(x: torch.Tensor, y: torch.Tensor, k: int, metric: str
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [B, N, D] float32, y: [B, M, D] float32 -> dist [B, N, k] float32, idx [B, N, k]
    int64, best first (the fused top-k kernel; float32 throughout)."""
    B, N, _ = x.shape
    dist = torch.empty(B, N, k, dtype=torch.float32)
    idx = torch.empty(B, N, k, dtype=torch.int64)
    _C.knn(_np(x), _np(y), k, metric == "ip", _np(dist), _np(idx), kernel_threads())
    return dist, idx


# --- cluster_sums -----------------------------------------------------------------------------


def _cluster_sums_reasons(x, idx, k, weights) -> list[str]:
    return _kernel_reasons(
        x=(x, torch.float32), idx=(idx, torch.int64), weights=(weights, torch.float32)
    )


@register("cluster_sums", "cpu", _cluster_sums_reasons)
def cluster_sums_cpu(
    x: torch.Tensor, idx: torch.Tensor, k: int, weights: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [B, N, D] float32, idx: [B, N] int64, weights: [B, N] float32 or None ->
    sums [B, k, D] float32, counts [B, k] float32 (float64 accumulation, deterministic)."""
    B, _, D = x.shape
    sums = torch.empty(B, k, D, dtype=torch.float32)
    counts = torch.empty(B, k, dtype=torch.float32)
    w = None if weights is None else _np(weights)
    _C.cluster_sums(_np(x), _np(idx), w, _np(sums), _np(counts), kernel_threads())
    return sums, counts


# --- resplit_empty ----------------------------------------------------------------------------


def _resplit_empty_reasons(centroids, counts, uniforms, n_frozen) -> list[str]:
    return _kernel_reasons(
        centroids=(centroids, torch.float32),
        counts=(counts, torch.float32),
        uniforms=(uniforms, torch.float64),
    )


@register("resplit_empty", "cpu", _resplit_empty_reasons)
def resplit_empty_cpu(
    centroids: torch.Tensor, counts: torch.Tensor, uniforms: torch.Tensor, n_frozen: int
) -> torch.Tensor:
    """In place on centroids [B, K, D] float32 and counts [B, K] float32, given uniforms
    [B, K] float64; returns nsplit [B] int64. Bit-identical to ``resplit_empty_ref``."""
    nsplit = torch.empty(centroids.shape[0], dtype=torch.int64)
    _C.resplit_empty(_np(centroids), _np(counts), _np(uniforms), int(n_frozen), _np(nsplit))
    return nsplit


# --- row_norms --------------------------------------------------------------------------------


@register("row_norms", "cpu", lambda x: _kernel_reasons(x=(x, torch.float32)))
def row_norms_cpu(x: torch.Tensor) -> torch.Tensor:
    """x: [B, N, D] float32 -> [B, N] float32 norms (squares summed in float64)."""
    norms = torch.empty(x.shape[:2], dtype=torch.float32)
    _C.row_norms(_np(x), _np(norms), kernel_threads())
    return norms


# --- sobel ------------------------------------------------------------------------------------


def _sobel_reasons(images, mean, std, out_dtype) -> list[str]:
    reasons = _kernel_reasons(images=(images, images.dtype)) + grad_reasons(images=images)
    if images.dtype not in (torch.uint8, torch.float32):
        reasons.append(f"takes uint8 or float32 images, got {images.dtype}")
    if out_dtype not in _SOBEL_OUT:
        reasons.append(f"writes float32/float16/bfloat16 only, got {out_dtype}")
    return reasons


@register("sobel", "cpu", _sobel_reasons)
def sobel_cpu(images: torch.Tensor, mean, std, out_dtype: torch.dtype) -> torch.Tensor:
    """images [B, 3, H, W] uint8 or float32 -> [B, 2, H, W] out_dtype, in one fused pass."""
    B, _, H, W = images.shape
    out = torch.empty(B, 2, H, W, dtype=out_dtype)
    view = out if out_dtype == torch.float32 else out.view(torch.int16)
    m = None if mean is None else np.asarray(mean, dtype=np.float32)
    s = None if std is None else np.asarray(std, dtype=np.float32)
    _C.sobel(_np(images), m, s, _np(view), _SOBEL_OUT[out_dtype], kernel_threads())
    return out
