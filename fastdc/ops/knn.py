"""knn: the k nearest database rows of every query row (L2) or the k most similar ones (inner
product), best first, without building the N×M distance matrix.

Reference: chunked ``addmm`` + a stable sort of each chunk's scores, never more than
``_CHUNK_ELEMS`` scores alive at once. Rows are ranked by ``||y||^2 - 2 x.y`` (L2) or
``-x.y`` (IP), the score the fused kernels compute; equal scores go to the smallest index.

Backends: ``cpu`` (csrc/cpu/knn.cpp, float32) on CPU tensors; ``triton`` (kernels/knn.py,
float32, exact fp32 products, k <= 64) and ``cuda`` (csrc/cuda/knn.cu, float32 FMAs on CUDA
cores, k <= 64) on CUDA tensors; this reference everywhere else (other dtypes, k > 64 on a
GPU).
"""

from __future__ import annotations

import torch

from fastdc.ops.checks import batched_pair, check_metric
from fastdc.ops.registry import register, select

_CHUNK_ELEMS = 1 << 22  # scores per chunk: 16 MB of fp32


def knn_outputs(x: torch.Tensor, y: torch.Tensor, k: int, metric: str) -> tuple[torch.Tensor, ...]:
    """What a fused knn kernel needs besides its inputs: (dist [B, N, k] float32, idx [B, N, k]
    int64, both empty; |x|² [B, N] and |y|² [B, M] float32 for L2, the reference's torch
    reductions so that distances match it closely, or None and None for the inner product)."""
    B, N, _ = x.shape
    dist = torch.empty(B, N, k, dtype=torch.float32, device=x.device)
    idx = torch.empty(B, N, k, dtype=torch.int64, device=x.device)
    if metric != "l2":
        return dist, idx, None, None
    return dist, idx, (x * x).sum(dim=2).contiguous(), (y * y).sum(dim=2).contiguous()


@register("knn", "torch")
def knn_ref(
    x: torch.Tensor, y: torch.Tensor, k: int, metric: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference knn on any device.

    x: [B, N, D] float, y: [B, M, D] float (same dtype and device), 1 <= k <= M.
    Returns dist [B, N, k] float32 (squared L2 distance clamped at 0, or the inner product)
    and idx [B, N, k] int64, best first, equal scores to the smallest index.
    """
    B, N, _ = x.shape
    M = y.shape[1]
    dist = torch.empty(B, N, k, dtype=torch.float32, device=x.device)
    idx = torch.empty(B, N, k, dtype=torch.int64, device=x.device)
    rows = max(1, _CHUNK_ELEMS // max(M, 1))
    l2 = metric == "l2"
    for b in range(B):
        c, x_sq = y[b], (x[b] * x[b]).sum(dim=1, keepdim=True)
        c_sq = (c * c).sum(dim=1) if l2 else torch.zeros_like(c[:, 0])
        for start in range(0, N, rows):
            end = min(start + rows, N)
            scores = torch.addmm(c_sq, x[b, start:end], c.T, alpha=-2.0 if l2 else -1.0)
            best, arg = torch.sort(scores, dim=1, stable=True)
            best = (x_sq[start:end] + best[:, :k]).clamp_min_(0) if l2 else -best[:, :k]
            dist[b, start:end], idx[b, start:end] = best, arg[:, :k]
    return dist, idx


def knn(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
    *,
    metric: str = "l2",
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest rows of the database ``y`` for every row of ``x``.

    x: [N, D] or [B, N, D] float; y: [M, D] or [B, M, D], same dtype and device; 1 <= k <= M.
    metric: "l2" (squared Euclidean, smallest first) or "ip" (inner product, largest first).
    Returns (dist, idx): float32 and int64 tensors of shape [N, k] or [B, N, k], sorted best
    first, equal scores in increasing index. With ``y = x`` every row finds itself (L2
    distance ~0) unless an equal row has a smaller index. On a GPU float32 inputs with k <= 64
    run the fused Triton kernel (or, without Triton, the CUDA C one), the rest the chunked
    reference (logged once). Not
    differentiable: inputs that require grad are detached. Raises ValueError/TypeError on
    mismatched shapes, dtypes, devices or a k outside [1, M].
    """
    check_metric(metric)
    xb, yb, squeezed = batched_pair(x, y, "y", "M")
    M = yb.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= M:
        raise ValueError(
            f"k must be an int in [1, M] = [1, {M}] (the database rows), got {k!r}; "
            "ask for fewer neighbours or pass a larger y"
        )
    impl = select("knn", backend, x=xb, y=yb, k=k, metric=metric)
    dist, idx = impl.fn(x=xb, y=yb, k=k, metric=metric)
    if squeezed:
        return dist[0], idx[0]
    return dist, idx
