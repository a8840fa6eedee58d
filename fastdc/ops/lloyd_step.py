"""lloyd_step / lloyd_run: one iteration, or all of them, of the Lloyd loop over rows held in one
block, in one call.

assign (or assign_bounded's pass with its per-centroid bounds) -> cluster_sums -> means (the
first ``n_frozen`` centroids kept) -> resplit_empty (faiss's rule) -> with bounds, each
centroid's cumulative shift grown by its move. The reference composes the ops' own references;
the cpu backend runs its kernels back to back in one call, with the same results as calling
them one by one, bit for bit, and without the Python between them (about 0.2 ms an iteration,
as much as the assignment itself at 5 000 x 32, K = 100).

lloyd_run runs the iterations themselves on the cpu backend (there is no other): lloyd_step
after lloyd_step with the rules the engine's loop applies between them, whose results, bit for
bit, are its reference (tests/test_lloyd_step.py).
"""

from __future__ import annotations

import torch

from fastdc.ops.assign import assign_bounded_ref, assign_ref
from fastdc.ops.checks import check_same_device
from fastdc.ops.cluster_sums import cluster_sums_ref, means_from_sums
from fastdc.ops.registry import register, select
from fastdc.ops.resplit_empty import resplit_empty_ref


def grow_shifts(shift: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> None:
    """shift [B, K] float32 += an upper bound of ||new_j - old_j|| (centroids [B, K, D]
    float32), in place, the float32 total never below the exact sum: the move in float64 (its
    rounding far below 2^-22) grown by 2^-22, added in float64, grown by 2^-23 and 2^-149
    (rounding the total to float32 loses at most 2^-24 relative, 2^-150 absolute among
    subnormals)."""
    move = torch.linalg.vector_norm(new.double() - old.double(), dim=2)
    total = move.mul_(1 + 2.0**-22).add_(shift).mul_(1 + 2.0**-23).add_(2.0**-149)
    shift.copy_(total)


@register("lloyd_step", "torch")
def lloyd_step_ref(x: torch.Tensor, centroids: torch.Tensor, uniforms: torch.Tensor,
                   labels: torch.Tensor, dist: torch.Tensor, weights: torch.Tensor | None,
                   n_frozen: int, lower: torch.Tensor | None, shift: torch.Tensor | None,
                   first: bool, precision: str = "default"
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference :func:`lloyd_step` on any device: the ops' references one after the other
    (arguments and results as there)."""
    B, N, _ = x.shape
    K = centroids.shape[1]
    if lower is None:
        d, idx = assign_ref(x, centroids, "l2")
        labels.copy_(idx)
        computed = torch.full((B,), N * K, dtype=torch.int64, device=x.device)
    else:
        d, computed = assign_bounded_ref(x, centroids, labels, lower, shift, first)
    dist.copy_(d)
    sums, counts = cluster_sums_ref(x, labels, K, weights)
    new = means_from_sums(sums, counts)
    new[:, :n_frozen] = centroids[:, :n_frozen]
    nsplit = resplit_empty_ref(new, counts.clone(), uniforms, n_frozen)
    if lower is not None:
        grow_shifts(shift, centroids, new)
    return new, counts, nsplit, computed


def lloyd_step(
    x: torch.Tensor,
    centroids: torch.Tensor,
    uniforms: torch.Tensor,
    *,
    labels: torch.Tensor,
    dist: torch.Tensor,
    weights: torch.Tensor | None = None,
    n_frozen: int = 0,
    lower: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    first: bool = False,
    precision: str = "default",
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Lloyd iteration (squared L2) of the rows x, all of them in one block.

    x: [B, N, D] float32; centroids: [B, K, D] float32, the iteration's; uniforms: [B, K]
    float64 in [0, 1), the re-split's draws (:func:`fastdc.ops.resplit_empty`); weights:
    [B, N] float32 or None; n_frozen: the first centroids kept as they are. labels: [B, N]
    int64, out: each row's centroid (in/out with bounds, as :func:`fastdc.ops.assign_bounded`
    takes them); dist: [B, N] float32, out: its squared distance (with bounds, as
    assign_bounded gives it). lower [B, N, K] and shift [B, K] float32 (both or neither):
    assign_bounded's bounds and cumulative shifts, in/out, the shifts then grown by upper
    bounds of the moves to the new centroids (see :func:`grow_shifts`); first: assign_bounded's.
    precision: :func:`fastdc.ops.assign`'s (without bounds).

    Returns (new centroids [B, K, D] float32: means, empty clusters re-split; counts [B, K]
    float32: the rows (weights) of each cluster, before the re-split; nsplit [B] int64;
    computed [B] int64: assign_bounded's count of estimated distances, N * K without bounds).
    All tensors contiguous on one device; ValueError on mismatched shapes.
    """
    B, N, D = x.shape
    K = centroids.shape[1]
    shapes = {"centroids": (centroids, (B, K, D)), "uniforms": (uniforms, (B, K)),
              "labels": (labels, (B, N)), "dist": (dist, (B, N)),
              "weights": (weights, (B, N)), "lower": (lower, (B, N, K)), "shift": (shift, (B, K))}
    for name, (t, shape) in shapes.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"lloyd_step: {name} must be {list(shape)} for x {list(x.shape)} and "
                             f"{K} centroids, got {list(t.shape)}")
    if (lower is None) != (shift is None):
        raise ValueError("lloyd_step: give both lower and shift (the bounds), or neither")
    if not 0 <= n_frozen <= K:
        raise ValueError(f"lloyd_step: n_frozen must be in [0, {K}], got {n_frozen}")
    check_same_device(x=x, centroids=centroids, uniforms=uniforms, labels=labels, dist=dist,
                      weights=weights, lower=lower, shift=shift)
    inputs = dict(x=x, centroids=centroids, uniforms=uniforms, labels=labels, dist=dist,
                  weights=weights, n_frozen=n_frozen, lower=lower, shift=shift, first=first,
                  precision=precision)
    return select("lloyd_step", backend, **inputs).fn(**inputs)


def lloyd_run(
    x: torch.Tensor,
    centroids: torch.Tensor,
    uniforms: torch.Tensor,
    *,
    labels: torch.Tensor,
    dist: torch.Tensor,
    weights: torch.Tensor | None = None,
    n_frozen: int = 0,
    lower: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    tile_passes: int = 1,
    refresh_above: float = 1.0,
    threshold: float = -1.0,
    precision: str = "default",
    backend: str | None = None,
) -> dict:
    """The Lloyd loop's iterations over the rows x (one block) in one call: :func:`lloyd_step`
    after lloyd_step, ``uniforms.shape[0]`` of them unless the stop test ends the run.

    x, weights, n_frozen, labels, dist, lower, shift, precision: as :func:`lloyd_step` takes
    them (labels and dist are the last pass's on return). centroids: [B, K, D] float32, in/out:
    the initial centroids, replaced by the last iteration's new ones. uniforms: [niter, B, K]
    float64, one re-split draw per iteration. With bounds, the first ``tile_passes`` passes
    score every pair (only the last of them, and later ones, set the bounds), and so does a
    pass after one that estimated more than ``refresh_above`` of the distances (the engine's
    schedule, :mod:`fastdc.engine.pruning`). threshold: :mod:`fastdc.engine.convergence`'s
    rule (< 0: never stop early; 0: at a fixed point; > 0: also on a relative objective change
    <= threshold).

    Returns a dict: "n_iter" (iterations run), "obj" [n_iter, B] float64 (each pass's dist
    summed in row order), "counts" [n_iter, B, K] float32, "nsplit" and "computed" [n_iter, B]
    int64, "changed" [n_iter, B] int64 or None (threshold < 0), "seconds" and "search"
    [n_iter] float64 (cumulative seconds since the call began, and in the assignments),
    "refresh" (whether a pass after these would score every pair), "reason" (None,
    "converged" or "threshold"). ValueError on mismatched shapes; BackendError where the cpu
    backend is not built.
    """
    inputs = dict(x=x, centroids=centroids, uniforms=uniforms, labels=labels, dist=dist,
                  weights=weights, n_frozen=n_frozen, lower=lower, shift=shift,
                  tile_passes=tile_passes, refresh_above=refresh_above, threshold=threshold,
                  precision=precision)
    return select("lloyd_run", backend, **inputs).fn(**inputs)
