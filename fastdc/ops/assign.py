"""assign: for every row of x, the nearest centroid (L2) or the most similar one (inner product).

Reference: chunked ``addmm`` + ``min``, never more than ``_CHUNK_ELEMS`` scores alive at once,
so it never builds the N×K distance matrix. Ties go to the smallest centroid index.
``second=True`` also returns the second best (for bound-based pruning in the Lloyd loop); the
torch and cpu backends compute it, the others fall back to the torch reference for it.
"""

from __future__ import annotations

import torch

from fastdc.ops.checks import batched_pair, check_metric
from fastdc.ops.registry import register, select

_CHUNK_ELEMS = 1 << 22  # scores per chunk: 16 MB of fp32, small next to any real x


SECOND_BACKENDS = ("torch", "cpu")
"""Backends that compute ``second=True`` themselves; the others fall back to ``torch``."""


@register("assign", "torch")
def assign_ref(
    x: torch.Tensor,
    centroids: torch.Tensor,
    metric: str,
    precision: str = "default",
    second: bool | str = False,
) -> tuple[torch.Tensor, ...]:
    """Reference assign on any device.

    x: [B, N, D] float, centroids: [B, K, D] float (same dtype and device).
    Returns dist [B, N] float32 (squared L2 distance, clamped at 0, or the inner product) and
    idx [B, N] int64, then with ``second`` dist2 [B, N] float32: the second best (equal to
    dist on a tie; +inf for L2, -inf for IP when K == 1; ``second="bound"`` gives the same exact
    value, a bound trivially). ``precision`` is ignored: the reference computes in x's dtype.
    """
    B, N, _ = x.shape
    K = centroids.shape[1]
    out = [torch.empty(B, N, dtype=dt, device=x.device)
           for dt in (torch.float32, torch.int64, torch.float32)[: 3 if second else 2]]
    rows = max(1, _CHUNK_ELEMS // max(K, 1))
    for b in range(B):
        c = centroids[b]
        c_sq = (c * c).sum(dim=1) if metric == "l2" else None
        for start in range(0, N, rows):
            xb = x[b, start : start + rows]
            for o, value in zip(out, _best_two(xb, c, c_sq, metric, second), strict=False):
                o[b, start : start + rows] = value
    return tuple(out)


def _best_two(xb, c, c_sq, metric, second):
    """(best, arg[, second best]) of the rows xb [n, D] against c [K, D]."""
    if metric == "l2":
        scores = torch.addmm(c_sq, xb, c.T, alpha=-2.0)
        xsq = (xb * xb).sum(dim=1, keepdim=True)
    else:
        scores, xsq = -(xb @ c.T), None
    best, arg = scores.min(dim=1)  # the first minimum: ties go to the smallest index
    found = [best, arg]
    if second:
        rest = scores.scatter(1, arg[:, None], float("inf"))
        found.append(rest.min(dim=1).values if scores.shape[1] > 1 else torch.full_like(best,
                                                                                       torch.inf))
    if metric == "l2":
        found[0] = (xsq[:, 0] + found[0]).clamp_min_(0)
        if second:
            found[2] = (xsq[:, 0] + found[2]).clamp_min_(0)
    else:
        found[0] = -found[0]
        if second:
            found[2] = -found[2]
    return found


def assign(
    x: torch.Tensor,
    centroids: torch.Tensor,
    *,
    metric: str = "l2",
    precision: str = "default",
    backend: str | None = None,
    second: bool | str = False,
) -> tuple[torch.Tensor, ...]:
    """Nearest centroid of every row, without building the N×K distance matrix.

    x: [N, D] or [B, N, D] float; centroids: [K, D] or [B, K, D], same dtype and device.
    metric: "l2" (squared Euclidean, smallest wins) or "ip" (inner product, largest wins).
    precision: "default" (matches a float64 brute force except on near ties), or a faster mode
    offered by GPU backends ("tf32", "bf16"). The cpu backend's answers are always the float32
    ones: "default" uses its bf16 pass with an exact re-check where the CPU has AVX512-BF16,
    "fp32" never, "bf16" always (see :func:`fastdc.ops.cpu.use_bf16`).
    Returns (dist, idx): float32 and int64 tensors of shape [N] or [B, N]; ties go to the
    smallest index. ``second=True`` returns (dist, idx, dist2) with dist2 float32 [N] or [B, N]
    the second-smallest squared distance (IP: the second-largest inner product); equal to dist
    when the best two tie; +inf (IP: -inf) when K == 1. ``second="bound"`` lets dist2 be a bound
    instead (L2: <= the second-smallest squared distance; IP: >= the second-largest inner
    product), which the cpu backend's bf16 pass gives at no cost. The torch and cpu backends
    compute dist2; on others (triton, cuda) it runs on the torch reference. Not differentiable:
    inputs that require grad are detached, so the fast backends run on them. Raises
    ValueError/TypeError on mismatched shapes, dtypes or devices.
    """
    check_metric(metric)
    if second not in (False, True, "bound"):
        raise ValueError(f"second must be False, True or 'bound', got {second!r}")
    xb, cb, squeezed = batched_pair(x, centroids, "centroids", "K")
    if cb.shape[1] < 1:
        raise ValueError("centroids must hold at least one centroid (K >= 1)")
    impl = select("assign", backend, x=xb, centroids=cb, metric=metric, precision=precision)
    if not second:
        out = impl.fn(x=xb, centroids=cb, metric=metric, precision=precision)
    elif impl.backend in SECOND_BACKENDS:
        out = impl.fn(x=xb, centroids=cb, metric=metric, precision=precision, second=second)
    else:
        out = assign_ref(xb, cb, metric, precision, second=True)
    return tuple(t[0] for t in out) if squeezed else tuple(out)


def assign_dist(
    x: torch.Tensor,
    centroids: torch.Tensor,
    idx: torch.Tensor,
    *,
    metric: str = "l2",
    precision: str = "default",
    backend: str | None = None,
) -> torch.Tensor | None:
    """The dist :func:`assign` reports for each row when its centroid is ``idx``, bit for bit,
    where the backend ``assign`` takes for these inputs can reproduce it (the cpu backend);
    None elsewhere (the caller then computes the distance its own way).

    x: [N, D] or [B, N, D] float32; centroids: [K, D] or [B, K, D]; idx: [N] or [B, N] int64 in
    [0, K). Returns float32 [N] or [B, N] on the CPU, or None. Raises ValueError on mismatched
    shapes or an idx out of range.
    """
    check_metric(metric)
    xb, cb, squeezed = batched_pair(x, centroids, "centroids", "K")
    impl = select("assign", backend, x=xb, centroids=cb, metric=metric, precision=precision)
    if impl.backend != "cpu":
        return None
    from fastdc.ops.cpu import assign_dist_cpu

    ib = idx[None] if squeezed else idx
    if ib.shape != xb.shape[:2] or ib.dtype != torch.int64:
        raise ValueError(f"idx must be int64 of shape {tuple(xb.shape[:2])}, got "
                         f"{ib.dtype} {tuple(ib.shape)}")
    dist = assign_dist_cpu(xb, cb, ib, metric)
    return dist[0] if squeezed else dist


@register("assign_bounded", "torch")
def assign_bounded_ref(
    x: torch.Tensor,
    centroids: torch.Tensor,
    labels: torch.Tensor,
    lower: torch.Tensor,
    shift: torch.Tensor,
    first: bool,
    exact_dist: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of :func:`assign_bounded`: :func:`assign_ref`'s labels and dist, and every
    stored bound set to the float64 distance plus the shift, rounded down to float32 (the old
    bounds are not needed: nothing is pruned). Returns (dist [B, N] float32, computed [B] int64
    = N * K)."""
    dist, idx = assign_ref(x, centroids, "l2")
    labels.copy_(idx)
    B, N, _ = x.shape
    rows = max(1, _CHUNK_ELEMS // max(centroids.shape[1], 1))
    for b in range(B):
        for start in range(0, N, rows):
            exact = torch.cdist(x[b, start : start + rows].double(), centroids[b].double())
            exact += shift[b].double()
            low = exact.float()
            low = torch.where(low.double() > exact, torch.nextafter(low, torch.zeros_like(low)),
                              low)
            lower[b, start : start + rows] = low
    computed = torch.full((B,), N * centroids.shape[1], dtype=torch.int64, device=x.device)
    return dist, computed


def assign_bounded(
    x: torch.Tensor,
    centroids: torch.Tensor,
    labels: torch.Tensor,
    lower: torch.Tensor,
    shift: torch.Tensor,
    *,
    first: bool,
    exact_dist: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`assign` (squared L2) with a lower bound per row and centroid (Elkan's bounds),
    for the passes of a Lloyd loop: most distances of most rows are never computed, and the
    labels are still assign's, bit for bit (the cpu backend's float32 path).

    x: [B, N, D] float32; centroids: [B, K, D] float32; labels: [B, N] int64, in/out: each row's
    centroid in the previous pass (read unless ``first``), replaced by this pass's; shift:
    [B, K] float32, each centroid's cumulative shift S_j (a running sum of upper bounds of its
    moves, rounded up at every step); lower: [B, N, K] float32, in/out: stored bounds,
    ``lower[b, i, j] - S_j <= ||x_i - c_j||`` for the previous centroids and shifts (read
    unless ``first``), replaced by stored bounds for these. first: score every pair (the
    first pass; labels and lower are only written). exact_dist: dist bit for bit assign's; by
    default, rows settled by their estimates get the estimate, within 2 (D + 2) 2^-24
    (||x|| + max ||c||)^2 of it. Returns (dist [B, N] float32, computed [B] int64: the
    distances the pass estimated besides each row's previous centroid's; N * K when
    ``first``). All tensors contiguous on one device; raises ValueError on mismatched shapes or
    labels out of [0, K).
    """
    B, N, D = x.shape
    K = centroids.shape[1]
    if centroids.shape != (B, K, D) or labels.shape != (B, N) or lower.shape != (B, N, K) \
            or shift.shape != (B, K):
        raise ValueError(
            f"assign_bounded needs x [B, N, D], centroids [B, K, D], labels [B, N], lower "
            f"[B, N, K], shift [B, K]; got {tuple(x.shape)}, {tuple(centroids.shape)}, "
            f"{tuple(labels.shape)}, {tuple(lower.shape)}, {tuple(shift.shape)}")
    impl = select("assign_bounded", backend, x=x, centroids=centroids, labels=labels,
                  lower=lower, shift=shift, first=first, exact_dist=exact_dist)
    return impl.fn(x=x, centroids=centroids, labels=labels, lower=lower, shift=shift,
                   first=first, exact_dist=exact_dist)
