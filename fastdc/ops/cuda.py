"""Backend ``cuda``: the CUDA C kernels of csrc/cuda, compiled at run time through CuPy.

Each source (see :mod:`fastdc.ops.cuda_sources`) is compiled once per process and device by
``cupy.RawModule`` (NVRTC) with its launch sizes as defines, and cached; kernels launch with the
same sizes on torch's current stream with torch tensors passed by data_ptr, so no data is
copied. Importing this module without CuPy raises ImportError, which the registry records (CuPy
is the optional extra ``fastdc[cuda]``).

Implements assign (fp32 on CUDA cores: every ``precision`` computes in fp32), knn (fp32 on
CUDA cores, k <= ``LAUNCH["knn"]["MAX_K"]``), cluster_sums (fp32 atomics, not deterministic),
resplit_empty and sobel (uint8/float32 input). The public ops validated the inputs and made them
contiguous; the launchers only allocate and launch.
"""

from __future__ import annotations

import cupy
import numpy as np
import torch

from fastdc.ops.checks import grad_reasons
from fastdc.ops.cuda_sources import LAUNCH, defines, source
from fastdc.ops.knn import knn_outputs
from fastdc.ops.registry import register
from fastdc.ops.resplit_empty import EPS

_MODULES: dict[tuple[str, int], cupy.RawModule] = {}  # (source name, device index) -> module


def _kernel(name: str, entry: str, device: torch.device):
    """The compiled kernel ``entry`` of ``name``.cu on ``device`` (compiled once, cached)."""
    key = (name, device.index or 0)
    if key not in _MODULES:
        with cupy.cuda.Device(key[1]):
            options = ("--std=c++17", *defines(name))
            _MODULES[key] = cupy.RawModule(code=source(name), options=options)
    return _MODULES[key].get_function(entry)


def _launch(kernel, grid, block, args, device: torch.device, shared_mem: int = 0) -> None:
    """Launch on torch's current stream of ``device``."""
    with cupy.cuda.Device(device.index or 0):
        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream)
        with stream:
            kernel(grid, block, args, shared_mem=shared_mem)


def _ptr(t: torch.Tensor | None) -> np.uint64:
    return np.uint64(0 if t is None else t.data_ptr())


def _i64(v: int) -> np.int64:
    return np.int64(v)


def _blocks(n: int, per_block: int) -> int:
    """Blocks that cover n items, per_block at a time."""
    return (n + per_block - 1) // per_block


def _on_cuda(**tensors) -> list[str]:
    off = [n for n, t in tensors.items() if t is not None and t.device.type != "cuda"]
    if not off:
        return []
    return [f"cuda backend needs tensors on a CUDA device ({', '.join(off)} are not)"]


# ----------------------------------------------------------------------------------- assign


def _assign_reasons(x, centroids, metric, precision="default", **_):
    why = _on_cuda(x=x, centroids=centroids)
    if x.dtype != torch.float32:
        why.append(f"cuda assign takes float32 x, not {x.dtype}")
    return why


@register("assign", "cuda", _assign_reasons)
def assign_cuda(x: torch.Tensor, centroids: torch.Tensor, metric: str, precision: str = "default"):
    """x [B, N, D], centroids [B, K, D] float32 CUDA -> (dist [B, N] float32, idx [B, N] int64).

    Always fp32 products (``precision`` is accepted and has no effect: fp32 is at least as
    accurate as every mode). Ties go to the smallest index.
    """
    B, N, D = x.shape
    K = centroids.shape[1]
    dist = torch.empty(B, N, dtype=torch.float32, device=x.device)
    idx = torch.empty(B, N, dtype=torch.int64, device=x.device)
    if N == 0:
        return dist, idx
    csq = (centroids * centroids).sum(dim=2).contiguous()
    size = LAUNCH["assign"]
    _launch(
        _kernel("assign", "assign_f32", x.device), (_blocks(N, size["TILE_N"]), B),
        (size["THREADS"],),
        (_ptr(x), _ptr(centroids), _ptr(csq), _ptr(dist), _ptr(idx), _i64(N), _i64(K), _i64(D),
         np.int32(metric == "l2")),
        x.device,
    )
    return dist, idx


# -------------------------------------------------------------------------------------- knn


def _knn_reasons(x, y, k, metric, **_):
    why = _on_cuda(x=x, y=y)
    if x.dtype != torch.float32:
        why.append(f"cuda knn takes float32, not {x.dtype}")
    max_k = LAUNCH["knn"]["MAX_K"]
    if k > max_k:
        why.append(f"cuda knn keeps at most k = {max_k} neighbours per row in shared memory, "
                   f"got k = {k}")
    if y.shape[1] >= 2**31:
        why.append(f"cuda knn indexes the database in 31 bits, M = {y.shape[1]} is larger")
    return why


@register("knn", "cuda", _knn_reasons)
def knn_cuda(x: torch.Tensor, y: torch.Tensor, k: int, metric: str):
    """x [B, N, D], y [B, M, D] float32 CUDA, 1 <= k <= min(M, MAX_K) -> (dist [B, N, k]
    float32, idx [B, N, k] int64), best first, equal scores to the smallest index. Extra memory:
    |x|^2 and |y|^2 for L2 (the reference's torch reductions)."""
    B, N, D = x.shape
    M = y.shape[1]
    dist, idx, xsq, ysq = knn_outputs(x, y, k, metric)
    if dist.numel() == 0:
        return dist, idx
    is_l2 = metric == "l2"
    size = LAUNCH["knn"]
    _launch(
        _kernel("knn", "knn_f32", x.device), (_blocks(N, size["TILE_N"]), B), (size["THREADS"],),
        (_ptr(x), _ptr(y), _ptr(xsq), _ptr(ysq), _ptr(dist), _ptr(idx), _i64(N), _i64(M),
         _i64(D), np.int32(k), np.int32(is_l2)),
        x.device,
    )
    return dist, idx


# ----------------------------------------------------------------------------- cluster_sums


def _cluster_sums_reasons(x, idx, k, weights=None, **_):
    why = _on_cuda(x=x, idx=idx, weights=weights)
    if x.dtype != torch.float32:
        why.append(f"cuda cluster_sums takes float32 x, not {x.dtype}")
    return why


@register("cluster_sums", "cuda", _cluster_sums_reasons)
def cluster_sums_cuda(x: torch.Tensor, idx: torch.Tensor, k: int, weights: torch.Tensor | None):
    """x [B, N, D] float32, idx [B, N] int64, weights [B, N] float32 or None -> (sums [B, k, D],
    counts [B, k]) float32, by fp32 atomics (not bit-identical run to run)."""
    B, N, D = x.shape
    sums = torch.zeros(B, k, D, dtype=torch.float32, device=x.device)
    counts = torch.zeros(B, k, dtype=torch.float32, device=x.device)
    size = LAUNCH["cluster_sums"]
    if N:
        _launch(
            _kernel("cluster_sums", "cluster_sums_f32", x.device), (_blocks(N, size["ROWS"]), B),
            (size["THREADS"],),
            (_ptr(x), _ptr(idx), _ptr(weights), _ptr(sums), _ptr(counts), _i64(N), _i64(k),
             _i64(D)),
            x.device,
        )
    return sums, counts


# ---------------------------------------------------------------------------- resplit_empty


def _resplit_empty_reasons(centroids, counts, uniforms, n_frozen=0, **_):
    return _on_cuda(centroids=centroids, counts=counts, uniforms=uniforms)


@register("resplit_empty", "cuda", _resplit_empty_reasons)
def resplit_empty_cuda(centroids: torch.Tensor, counts: torch.Tensor, uniforms: torch.Tensor,
                       n_frozen: int) -> torch.Tensor:
    """In place on centroids [B, K, D] / counts [B, K] float32 (contiguous); uniforms [B, K]
    float64. Returns nsplit [B] int64. One block per problem, no host sync."""
    B, K, D = centroids.shape
    nsplit = torch.empty(B, dtype=torch.int64, device=centroids.device)
    _launch(
        _kernel("resplit_empty", "resplit_empty_f32", centroids.device), (B,),
        (LAUNCH["resplit_empty"]["THREADS"],),
        (_ptr(centroids), _ptr(counts), _ptr(uniforms), _ptr(nsplit), _i64(K), _i64(D),
         _i64(n_frozen), np.float32(EPS)),
        centroids.device,
    )
    return nsplit


# ------------------------------------------------------------------------------------ sobel

_SOBEL_OUT = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


def _sobel_reasons(images, mean=None, std=None, out_dtype=torch.float32, **_):
    why = _on_cuda(images=images) + grad_reasons(images=images)
    if images.dtype not in (torch.uint8, torch.float32):
        why.append(f"cuda sobel takes uint8 or float32 images, not {images.dtype}")
    return why


@register("sobel", "cuda", _sobel_reasons)
def sobel_cuda(images: torch.Tensor, mean, std, out_dtype: torch.dtype) -> torch.Tensor:
    """images [B, 3, H, W] uint8/float32 CUDA -> [B, 2, H, W] in out_dtype (fp32/fp16/bf16)."""
    B, _, H, W = images.shape
    out = torch.empty(B, 2, H, W, dtype=out_dtype, device=images.device)
    if out.numel() == 0:
        return out
    is_u8 = images.dtype == torch.uint8
    entry = f"sobel_{'u8' if is_u8 else 'f32'}_{_SOBEL_OUT[out_dtype]}"
    m = [float(v) for v in mean] if mean is not None else [0.0] * 3
    s = [float(v) for v in std] if std is not None else [1.0] * 3
    size = LAUNCH["sobel"]
    block = (size["BLOCK_X"], size["BLOCK_Y"])
    grid = (_blocks(W, block[0]), _blocks(H, block[1]), B)
    _launch(
        _kernel("sobel", entry, images.device), grid, block,
        (_ptr(images), _ptr(out), _i64(H), _i64(W), np.int32(is_u8), np.int32(mean is not None),
         *map(np.float32, m), *map(np.float32, s)),
        images.device,
    )
    return out
