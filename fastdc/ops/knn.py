"""knn: the k nearest database rows of every query row (L2) or the k most similar ones (inner
product), best first, without building the N×M distance matrix.

Reference: chunked ``addmm`` + a stable sort of each chunk's scores, never more than
``_CHUNK_ELEMS`` scores alive at once. Rows are ranked by ``||y||^2 - 2 x.y`` (L2) or
``-x.y`` (IP), the score the fused kernels compute; equal scores go to the smallest index.
"""

from __future__ import annotations

import torch

from fastdc.ops.checks import as_batched, check_float, check_metric, check_same_device
from fastdc.ops.registry import register, select

_CHUNK_ELEMS = 1 << 22  # scores per chunk: 16 MB of fp32


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
    for b in range(B):
        c = y[b]
        c_sq = (c * c).sum(dim=1) if metric == "l2" else torch.zeros_like(c[:, 0])
        for start in range(0, N, rows):
            xb = x[b, start : start + rows]
            scores = torch.addmm(c_sq, xb, c.T, alpha=-2.0 if metric == "l2" else -1.0)
            best, arg = torch.sort(scores, dim=1, stable=True)
            best, arg = best[:, :k], arg[:, :k]
            if metric == "l2":
                best = ((xb * xb).sum(dim=1, keepdim=True) + best).clamp_min_(0)
            else:
                best = -best
            dist[b, start : start + rows] = best
            idx[b, start : start + rows] = arg
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
    distance ~0) unless an equal row has a smaller index. Not differentiable: inputs that
    require grad are detached. Raises ValueError/TypeError on mismatched shapes, dtypes,
    devices or a k outside [1, M].
    """
    check_metric(metric)
    xb, squeezed = as_batched(x, "x", 2)
    yb, y_squeezed = as_batched(y, "y", 2)
    if squeezed != y_squeezed:
        raise ValueError(
            f"x {tuple(x.shape)} and y {tuple(y.shape)} must both be batched "
            "([B, N, D] and [B, M, D]) or both not"
        )
    check_float(xb, "x")
    check_float(yb, "y")
    check_same_device(x=xb, y=yb)
    if xb.shape[0] != yb.shape[0] or xb.shape[2] != yb.shape[2]:
        raise ValueError(
            f"x {tuple(x.shape)} and y {tuple(y.shape)} disagree: they need the same batch "
            "size and the same feature dimension D"
        )
    M = yb.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= M:
        raise ValueError(
            f"k must be an int in [1, M] = [1, {M}] (the database rows), got {k!r}; "
            "ask for fewer neighbours or pass a larger y"
        )
    if yb.dtype != xb.dtype:
        yb = yb.to(xb.dtype)
    xb, yb = xb.detach().contiguous(), yb.detach().contiguous()
    impl = select("knn", backend, x=xb, y=yb, k=k, metric=metric)
    dist, idx = impl.fn(x=xb, y=yb, k=k, metric=metric)
    if squeezed:
        return dist[0], idx[0]
    return dist, idx
