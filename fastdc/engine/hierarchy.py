"""DeeperCluster's two-level targets: S super-classes, then k sub-classes inside each.

Level 1 clusters all rows into ``n_super`` super-classes. Level 2 clusters the rows of every
super-class into ``n_sub`` sub-classes — all super-classes in **one batched k-means call**: the
rows of each super-class are packed into one problem of a [B, M, D] tensor (M = the largest
super-class on this rank), and the padding slots are masked out (``kmeans(..., mask=...)``:
weight 0, no objective, never drawn as a seed, never re-split; see :mod:`fastdc.engine.rows`).

Small super-classes: a super-class with size <= n_sub rows (counted over all ranks) is not
clustered; each of its rows becomes its own sub-class, numbered in row order (what k-means with
k_eff = size would converge to on distinct rows), and sub-classes size..n_sub-1 stay empty. The
result's ``k_eff[s] = min(n_sub, size_s)`` says how many sub-classes of s can be non-empty; the
trainer's uniform sampler must skip the empty ones.

Targets: ``targets = super * n_sub + sub`` in [0, n_super * n_sub). DeeperCluster's losses use
the super-class (crossed with the rotation, trainer-side) and the sub-class inside it.

With a process group, x is this rank's shard of the rows; both levels run the distributed
k-means, so the labels equal one process's on the concatenated shards (rank order), up to the
float tolerance of the all-reduced sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastdc.engine import collectives as fdist
from fastdc.engine.lloyd import KMeansResult, kmeans


@dataclass
class Hierarchy:
    """Two-level clustering of N rows (this rank's rows, with a process group).

    super_labels, sub_labels, targets: [N] int64; sub in [0, n_sub), targets = super·n_sub + sub.
    super_centroids: [S, D] float32. sub_centroids: [S, n_sub, D] float32 (a small
    super-class's unused slots are zero). super_sizes, k_eff: [S] int64, over all ranks.
    super_result: level-1 :class:`KMeansResult`; sub_result: the batched level-2 result over the
    packed problems (problem b is super-class ``batched[b]``), None when no super-class has
    more than n_sub rows. batched: [B] int64 ids of the super-classes that were clustered.
    """

    super_labels: torch.Tensor
    sub_labels: torch.Tensor
    targets: torch.Tensor
    super_centroids: torch.Tensor
    sub_centroids: torch.Tensor
    super_sizes: torch.Tensor
    k_eff: torch.Tensor
    batched: torch.Tensor
    super_result: KMeansResult
    sub_result: KMeansResult | None


@dataclass
class Packed:
    """Rows grouped by label into a padded batch (see :func:`pack_groups`).

    x: [B, M, D] (padding rows are zero), mask: [B, M] bool (True = real row),
    problem, slot: [N] int64, where row i went (problem -1: its group was not packed).
    """

    x: torch.Tensor
    mask: torch.Tensor
    problem: torch.Tensor
    slot: torch.Tensor


def pack_groups(x: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> Packed:
    """Pack the rows of x [N, D] whose label is in ``groups`` [B] into a [B, M, D] batch.

    Problem b holds the rows with label groups[b], in their original order, then zero
    padding up to M = the largest group (at least 1). labels: [N] int64 >= 0.
    """
    n, d = x.shape
    nlab = int(max(int(labels.max()) + 1 if n else 0, int(groups.max()) + 1 if len(groups) else 0))
    problem_of = torch.full((nlab,), -1, dtype=torch.int64, device=x.device)
    problem_of[groups.to(x.device)] = torch.arange(len(groups), device=x.device)
    sizes = torch.bincount(labels, minlength=nlab)
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    starts = torch.cumsum(sizes, 0) - sizes
    slot_sorted = torch.arange(n, device=x.device) - starts[sorted_labels]
    problem = torch.empty(n, dtype=torch.int64, device=x.device)
    slot = torch.empty(n, dtype=torch.int64, device=x.device)
    problem[order] = problem_of[sorted_labels]
    slot[order] = slot_sorted
    keep = problem >= 0
    m = max(int(sizes[groups.to(x.device)].max()) if len(groups) else 0, 1)
    xp = torch.zeros(len(groups), m, d, dtype=x.dtype, device=x.device)
    mask = torch.zeros(len(groups), m, dtype=torch.bool, device=x.device)
    xp[problem[keep], slot[keep]] = x[keep]
    mask[problem[keep], slot[keep]] = True
    slot = torch.where(keep, slot, torch.full_like(slot, -1))
    return Packed(xp, mask, problem, slot)


def two_level_kmeans(
    x: torch.Tensor,
    n_super: int,
    n_sub: int,
    *,
    niter: int = 20,
    seed: int = 0,
    spherical: bool = False,
    backend: str | None = None,
    group: fdist.Group | None = None,
) -> Hierarchy:
    """DeeperCluster's hierarchical k-means on x [N, D] float (this rank's rows with a group;
    detached if it requires grad). Returns a :class:`Hierarchy`.

    Level 1: ``kmeans(x, n_super, seed=seed)``. Level 2: one batched, masked
    ``kmeans(packed, n_sub, seed=seed + 1)`` over every super-class with more than n_sub rows;
    smaller super-classes give each row its own sub-class (module docstring).
    Raises ValueError when n_super or n_sub < 1 or N (over all ranks) < n_super.
    """
    if n_sub < 1:
        raise ValueError(f"n_sub must be >= 1, got {n_sub}")
    x = x.detach()
    x = x if x.dtype.is_floating_point else x.float()
    common = dict(niter=niter, spherical=spherical, backend=backend, group=group)
    top = kmeans(x, n_super, seed=seed, **common)
    sup = top.assignments
    n, d = x.shape
    local_sizes = torch.bincount(sup, minlength=n_super)
    sizes = fdist.all_reduce_sum(local_sizes.clone(), group)
    k_eff = sizes.clamp(max=n_sub)
    big = (sizes > n_sub).nonzero().flatten()
    small = (sizes <= n_sub) & (sizes > 0)

    sub = torch.full((n,), -1, dtype=torch.int64, device=x.device)
    sub_centroids = torch.zeros(n_super, n_sub, d, dtype=torch.float32, device=x.device)
    sub_result = None
    if len(big):
        packed = pack_groups(x, sup, big)
        sub_result = kmeans(packed.x, n_sub, seed=seed + 1, mask=packed.mask, **common)
        rows = packed.problem >= 0
        sub[rows] = sub_result.assignments[packed.problem[rows], packed.slot[rows]]
        sub_centroids[big] = sub_result.centroids
    if bool(small.any()):
        _one_sub_class_per_row(x, sup, small, local_sizes, group, sub, sub_centroids)
    return Hierarchy(
        super_labels=sup,
        sub_labels=sub,
        targets=sup * n_sub + sub,
        super_centroids=top.centroids,
        sub_centroids=sub_centroids,
        super_sizes=sizes,
        k_eff=k_eff,
        batched=big,
        super_result=top,
        sub_result=sub_result,
    )


def _one_sub_class_per_row(x: torch.Tensor, sup: torch.Tensor, small: torch.Tensor,
                           local_sizes: torch.Tensor, group: fdist.Group | None,
                           sub: torch.Tensor, sub_centroids: torch.Tensor) -> None:
    """Give each row of a small super-class its own sub-class, numbered over all ranks in row
    order, and make the row its centroid. x: [N, D]; sup: [N] int64 super-class labels; small:
    [S] bool; local_sizes: [S] int64 rows per super-class on this rank. Fills sub [N] int64 and
    sub_centroids [S, n_sub, D] float32 in place."""
    before = fdist.all_gather_sizes(local_sizes, group, x.device)[: fdist.rank(group)]
    offset = before.sum(dim=0)  # rows of each super-class on lower ranks
    rows = small[sup].nonzero().flatten()
    order = torch.argsort(sup[rows], stable=True)
    rows = rows[order]
    labs = sup[rows]
    # position of each row among its super-class's rows on this rank (rows are sorted by
    # super-class, so subtract where its block starts), then after the lower ranks' rows
    small_sizes = local_sizes * small
    block_start = torch.cumsum(small_sizes, 0) - small_sizes
    within = torch.arange(len(rows), device=x.device) - block_start[labs]
    sub[rows] = within + offset[labs]
    seeds = torch.zeros_like(sub_centroids)
    seeds[labs, sub[rows]] = x[rows].float()
    sub_centroids += fdist.all_reduce_sum(seeds, group)
