"""cluster_sums / update_centroids: per-cluster (weighted) sums and counts, then means.

Reference: ``index_add_`` in float64 over the flattened (batch, cluster) index.
"""

from __future__ import annotations

import torch

from fastdc.ops.checks import as_batched, check_float, check_same_device
from fastdc.ops.registry import register, select


@register("cluster_sums", "torch")
def cluster_sums_ref(
    x: torch.Tensor, idx: torch.Tensor, k: int, weights: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference per-cluster sums on any device.

    x: [B, N, D] float, idx: [B, N] int64 in [0, k), weights: [B, N] float32 or None.
    Returns sums [B, k, D] float32 (sum of weight * row) and counts [B, k] float32 (sum of
    weights, or of ones). Accumulates in float64.
    """
    B, N, D = x.shape
    flat = (idx + torch.arange(B, device=idx.device).unsqueeze(1) * k).reshape(-1)
    rows = x.reshape(B * N, D).to(torch.float64)
    w = None if weights is None else weights.reshape(-1).to(torch.float64)
    if w is not None:
        rows = rows * w.unsqueeze(1)
    sums = torch.zeros(B * k, D, dtype=torch.float64, device=x.device).index_add_(0, flat, rows)
    ones = w if w is not None else torch.ones(B * N, dtype=torch.float64, device=x.device)
    counts = torch.zeros(B * k, dtype=torch.float64, device=x.device).index_add_(0, flat, ones)
    return sums.view(B, k, D).float(), counts.view(B, k).float()


def cluster_sums(
    x: torch.Tensor,
    idx: torch.Tensor,
    k: int,
    *,
    weights: torch.Tensor | None = None,
    backend: str | None = None,
    check_ids: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster sums and counts (the part of the centroid update that all-reduces).

    x: [N, D] or [B, N, D] float; idx: [N] or [B, N] integer in [0, k); weights: like idx,
    float, non-negative, or None. Returns sums float32 [k, D] / [B, k, D] and counts float32
    [k] / [B, k]. Raises ValueError on mismatched shapes or out-of-range ids.
    check_ids=False skips the id range check (a device sync on GPUs) for ids that come
    straight from :func:`fastdc.ops.assign`, as in the k-means loop. Not differentiable:
    inputs that require grad are detached, so the fast backends run on them.
    """
    xb, squeezed = as_batched(x, "x", 2)
    ib, _ = as_batched(idx, "idx", 1)
    check_float(xb, "x")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if ib.dtype.is_floating_point or ib.dtype == torch.bool:
        raise TypeError(f"idx must be an integer tensor, got {ib.dtype}")
    if ib.shape != xb.shape[:2]:
        raise ValueError(f"idx {tuple(idx.shape)} must match x {tuple(x.shape)} without D")
    wb = None
    if weights is not None:
        wb, _ = as_batched(weights, "weights", 1)
        check_float(wb, "weights")
        if wb.shape != ib.shape:
            raise ValueError(f"weights {tuple(weights.shape)} must match idx {tuple(idx.shape)}")
        wb = wb.detach().float().contiguous()
    check_same_device(x=xb, idx=ib, weights=wb)
    if check_ids and ib.numel() and (int(ib.min()) < 0 or int(ib.max()) >= k):
        lo, hi = int(ib.min()), int(ib.max())
        raise ValueError(f"idx holds ids outside [0, {k}): min {lo}, max {hi}")
    xb, ib = xb.detach().contiguous(), ib.to(torch.int64).contiguous()
    impl = select("cluster_sums", backend, x=xb, idx=ib, k=k, weights=wb)
    sums, counts = impl.fn(x=xb, idx=ib, k=k, weights=wb)
    if squeezed:
        return sums[0], counts[0]
    return sums, counts


def update_centroids(
    x: torch.Tensor, idx: torch.Tensor, k: int, *, weights: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """New centroids as the (weighted) mean of their rows.

    Same inputs as :func:`cluster_sums`. Returns (centroids float32 [k, D] / [B, k, D],
    counts float32 [k] / [B, k]); an empty cluster's centroid is all zeros (re-split it with
    :func:`fastdc.ops.resplit_empty`).
    """
    sums, counts = cluster_sums(x, idx, k, weights=weights, backend=backend)
    return means_from_sums(sums, counts), counts


def means_from_sums(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """sums [..., k, D] / counts [..., k] (float32); an empty cluster (count 0), whose sums
    are 0, gets 0."""
    return sums / counts.where(counts > 0, 1.0).unsqueeze(-1)
