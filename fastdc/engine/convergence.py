"""When the Lloyd loop stops before ``niter``: at a fixed point, or on a small objective change.

**Fixed point.** Iteration i >= 1 is a fixed point when it gave every real row the centroid that
iteration i-1 gave it and neither iteration re-split a cluster. Its sums and counts then equal
iteration i-1's bit for bit (same rows, same labels, deterministic ``cluster_sums``), so the
centroids it produces equal the ones it started from, and every later iteration would repeat it
exactly. Stopping there gives the full run's centroids and final assignments; the objective,
imbalance and nsplit of the iterations not run would repeat the last ones. A re-split draws from
the generator and moves centroids, so an iteration with one is never a fixed point. (Backends
whose ``cluster_sums`` adds with atomics in varying order, such as the ``cuda`` one, only make
"bit for bit" hold up to that order, as for any two runs of them.)

**faiss's early_stop_threshold.** faiss's ``Clustering::train_encoded`` (faiss/Clustering.cpp,
read at facebookresearch/faiss 02dbb4e) stops after iteration i > 0 when
``|obj[i-1] - obj[i]| / |obj[i-1]| <= early_stop_threshold`` (a zero previous objective never
stops), with 0 as its default: it stops when the float32 objective did not change. Here a
threshold < 0 never stops early (as in faiss), 0 stops at a fixed point (the exact form of "the
objective did not change": the assignments did not), and > 0 stops on either rule, with the
objectives in float64 (summed over the ranks of a process group).

**Cost.** While active, the check keeps every row's label of the previous iteration (int32
[B, N] on ``rows.out_device``: beside in-memory rows, in pinned host memory for a streamed store,
so device memory stays O(chunk)), compares each block's new labels with it on the device, and
reads one flag per iteration: one host synchronisation per iteration on CUDA, plus, with a
process group, one all-reduce of the changed-row counts and objectives so that every rank stops
at the same iteration. Inactive, it does nothing and the loop reads nothing back.

A batch of problems stops when every problem has met the rule; one that has keeps iterating with
the others (at a fixed point that changes nothing).
"""

from __future__ import annotations

import math

import torch

from fastdc.engine import collectives as fdist
from fastdc.engine.rows import Block, Rows

REASONS = {
    "converged": "no assignment changed",
    "threshold": "relative objective change <= early_stop_threshold",
}
"""Why a run stopped early (``KMeansResult.stop_reason``) and what the verbose line says."""


def check_early_stop_threshold(threshold: float | None) -> None:
    """Raise ValueError unless ``threshold`` is None or a real, non-NaN number."""
    if threshold is None:
        return
    real = isinstance(threshold, int | float) and not isinstance(threshold, bool)
    if not real or math.isnan(threshold):
        raise ValueError(f"early_stop_threshold must be a number or None, got {threshold!r}")


class StopCheck:
    """The stop rule of one Lloyd run over ``rows`` (module docstring).

    threshold (checked by :func:`check_early_stop_threshold`): None or < 0: never stop early
    (the check is inactive and tracks nothing); 0: stop at a fixed point; > 0: also stop once
    the relative objective change of every problem was <= threshold. Per iteration:
    :meth:`observe` each block's labels, then :meth:`end_iteration`.
    ``history``: one [B] int64 per iteration, the rows (over all ranks) whose label changed
    (iteration 0: every real row). ``reason``: a key of :data:`REASONS` once it said stop.
    """

    def __init__(self, rows: Rows, threshold: float | None) -> None:
        self.active = threshold is not None and threshold >= 0
        self.threshold = float(threshold) if self.active else -1.0
        self.rows, self.reason = rows, None
        self.history: list[torch.Tensor] = []
        if not self.active:
            return
        B, N, _ = rows.shape
        pin = rows.out_device.type == "cpu" and rows.device.type == "cuda"
        self.labels = torch.full((B, N), -1, dtype=torch.int32, device=rows.out_device,
                                 pin_memory=pin)
        self.changed = torch.zeros(B, dtype=torch.int64, device=rows.device)
        self.done = torch.zeros(B, dtype=torch.bool, device=rows.device)
        self.prev_split = torch.zeros(B, dtype=torch.bool, device=rows.device)
        self.prev_obj: torch.Tensor | None = None

    def observe(self, block: Block, idx: torch.Tensor) -> None:
        """Count the real rows of ``block`` whose label idx [B, m] int64 (on the device) differs
        from the previous iteration's, and remember idx. Stream-ordered, no synchronisation."""
        if not self.active:
            return
        stored = self.labels[:, block.start : block.start + idx.shape[1]]
        moved = idx != stored.to(idx.device, non_blocking=True)
        if block.mask is not None:
            moved &= block.mask
        self.changed += moved.sum(dim=1)
        stored.copy_(idx.to(torch.int32), non_blocking=True)

    def end_iteration(self, obj: torch.Tensor, nsplit: torch.Tensor) -> bool:
        """Close an iteration: obj [B] float64 (this rank's objective), nsplit [B] int64
        (identical on every rank). Returns whether the loop stops here (the same on every
        rank); reads one flag from the device."""
        if not self.active:
            return False
        changed, total = fdist.all_reduce_sum_packed([self.changed.double(), obj],
                                                     self.rows.group)
        self.history.append(changed.long())
        self.changed = torch.zeros_like(self.changed)
        split = nsplit > 0
        fixed = (changed == 0) & ~split & ~self.prev_split
        self.done |= fixed
        if self.threshold > 0 and self.prev_obj is not None:
            prev = self.prev_obj
            self.done |= (prev != 0) & ((prev - total).abs() <= self.threshold * prev.abs())
        self.prev_obj, self.prev_split = total.clone(), split
        if not bool(self.done.all()):
            return False
        self.reason = "converged" if bool(fixed.all()) else "threshold"
        return True

    def record_run(self, changed: torch.Tensor | None, reason: str | None) -> None:
        """Take the records of iterations run in one call (:func:`fastdc.ops.lloyd_step.lloyd_run`,
        which applied this rule): changed [n_iter, B] int64 (None when inactive) and the reason
        it stopped (a key of :data:`REASONS`, or None)."""
        if self.active and changed is not None:
            self.history.extend(changed.unbind())
            self.reason = reason

    def changed_rows(self) -> torch.Tensor | None:
        """[n_iter, B] int64: :attr:`history` stacked (None when inactive)."""
        if not self.active:
            return None
        if not self.history:
            return torch.zeros(0, self.rows.batch, dtype=torch.int64, device=self.rows.device)
        return torch.stack(self.history)
