"""assign: for every row of x, the nearest centroid (L2) or the most similar one (inner product).

Reference: chunked ``addmm`` + ``min``, never more than ``_CHUNK_ELEMS`` scores alive at once,
so it never builds the N×K distance matrix. Ties go to the smallest centroid index.
"""

from __future__ import annotations

import torch

from fastdc.ops.checks import batched_pair, check_metric
from fastdc.ops.registry import register, select

_CHUNK_ELEMS = 1 << 22  # scores per chunk: 16 MB of fp32, small next to any real x


@register("assign", "torch")
def assign_ref(
    x: torch.Tensor, centroids: torch.Tensor, metric: str, precision: str = "default"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference assign on any device.

    x: [B, N, D] float, centroids: [B, K, D] float (same dtype and device).
    Returns dist [B, N] float32 (squared L2 distance, clamped at 0, or the inner product) and
    idx [B, N] int64. ``precision`` is ignored: the reference computes in x's dtype.
    """
    B, N, _ = x.shape
    K = centroids.shape[1]
    dist = torch.empty(B, N, dtype=torch.float32, device=x.device)
    idx = torch.empty(B, N, dtype=torch.int64, device=x.device)
    rows = max(1, _CHUNK_ELEMS // max(K, 1))
    for b in range(B):
        c = centroids[b]
        c_sq = (c * c).sum(dim=1) if metric == "l2" else None
        for start in range(0, N, rows):
            xb = x[b, start : start + rows]
            if metric == "l2":
                scores = torch.addmm(c_sq, xb, c.T, alpha=-2.0)
                best, arg = scores.min(dim=1)
                best = ((xb * xb).sum(dim=1) + best).clamp_min_(0)
            else:
                best, arg = (xb @ c.T).max(dim=1)
            dist[b, start : start + rows] = best
            idx[b, start : start + rows] = arg
    return dist, idx


def assign(
    x: torch.Tensor,
    centroids: torch.Tensor,
    *,
    metric: str = "l2",
    precision: str = "default",
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every row, without building the N×K distance matrix.

    x: [N, D] or [B, N, D] float; centroids: [K, D] or [B, K, D], same dtype and device.
    metric: "l2" (squared Euclidean, smallest wins) or "ip" (inner product, largest wins).
    precision: "default" (matches a float64 brute force except on near ties), or a faster mode
    offered by GPU backends ("tf32", "bf16"); CPU backends always compute in fp32.
    Returns (dist, idx): float32 and int64 tensors of shape [N] or [B, N]; ties go to the
    smallest index. Not differentiable: inputs that require grad are detached, so the fast
    backends run on them. Raises ValueError/TypeError on mismatched shapes, dtypes or devices.
    """
    check_metric(metric)
    xb, cb, squeezed = batched_pair(x, centroids, "centroids", "K")
    if cb.shape[1] < 1:
        raise ValueError("centroids must hold at least one centroid (K >= 1)")
    impl = select("assign", backend, x=xb, centroids=cb, metric=metric, precision=precision)
    dist, idx = impl.fn(x=xb, centroids=cb, metric=metric, precision=precision)
    if squeezed:
        return dist[0], idx[0]
    return dist, idx
