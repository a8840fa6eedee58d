"""Initial centroids for the Lloyd loop, for any rows source (:mod:`fastdc.engine.rows`).

- "random": k distinct real rows per problem, drawn uniformly with a seeded CPU generator (so
  every device draws the same rows). The real rows of all ranks, concatenated in rank order, are
  numbered 0..M-1; every rank draws the same k positions from a seeded permutation of M, copies
  the rows it owns into a zero [B, k, D] float32 buffer, and the buffer is summed over the group
  (adding zeros is exact, so every rank holds the same rows). Without a group this is simply
  ``x[randperm(N)[:k]]``; a problem padded at its end draws the rows its unpadded version would.
- "kmeans++": D² sampling on the whole tensor (in-memory sources, one process).
- a tensor [k0, D] / [B, k0, D]: the first k0 centroids (rank 0's copy), the rest drawn at
  random as above.
"""

from __future__ import annotations

import torch

from fastdc.engine import collectives as fdist
from fastdc.engine.checks import check_mask, check_rows
from fastdc.engine.rows import MaskedRows, Rows, TensorRows

INIT_METHODS = ("random", "kmeans++")


def seed_centroids(rows: Rows, k: int, init: str | torch.Tensor, seed: int,
                   per_rank: torch.Tensor, *, check: bool = False) -> torch.Tensor:
    """Seed k centroids for each problem of ``rows``; returns [B, k, D] float32 on its device.

    init: "random", "kmeans++" or a tensor of centroids (module docstring). per_rank: [P, B]
    int64 (CPU), the real rows of every problem on every rank (rank order). check: run
    :func:`fastdc.engine.checks.check_rows` on the rows k-means++ reads. Raises ValueError for
    an unknown init, bad given centroids, or "kmeans++" with a group or a streaming source.
    """
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    if isinstance(init, torch.Tensor):
        given = given_centroids(init, rows.batch, k, rows.dim, rows.device, rows.group)
        if given.shape[1] == k:
            return given.clone()
        return torch.cat([given, draw_rows(rows, k - given.shape[1], gen, per_rank)], dim=1)
    if init == "random":
        return draw_rows(rows, k, gen, per_rank)
    if init == "kmeans++":
        if fdist.world_size(rows.group) > 1:
            raise ValueError(
                "init='kmeans++' is not supported with a process group (D² sampling over shards "
                "would not reproduce the single-process draw); use init='random' or pass "
                "centroids"
            )
        x, weights = rows.plus_plus_input()
        if check:
            check_rows(x)
        return kmeans_plus_plus(x, k, gen, weights)
    raise ValueError(f"init must be one of {INIT_METHODS} or a tensor of centroids, got {init!r}")


def initial_centroids(
    x: torch.Tensor,
    k: int,
    *,
    init: str | torch.Tensor = "random",
    seed: int = 0,
    weights: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    group: fdist.Group | None = None,
) -> torch.Tensor:
    """The centroids :func:`fastdc.engine.lloyd.kmeans` starts from, for x [B, N, D] float.

    init: "random", "kmeans++" (weighted by ``weights`` [B, N] when given) or a tensor
    [k0, D] / [B, k0, D] (k0 <= k; the rest drawn at random). mask: [B, N] bool or None; only
    True rows are ever drawn. group: process group or None (x is then this rank's shard; see the
    module docstring). Returns [B, k, D] float32 on x's device. Raises ValueError for an unknown
    init or "kmeans++" with a group.
    """
    B, N, _ = x.shape
    x = x.detach()
    mask = check_mask(mask, B, N, x.device)
    rows = TensorRows(x, weights, group=group) if mask is None else MaskedRows(
        x, mask, weights, group=group
    )
    per_rank = fdist.all_gather_sizes(rows.real_counts(), group, x.device).cpu()
    return seed_centroids(rows, k, init, seed, per_rank)


def given_centroids(
    init: torch.Tensor, B: int, k: int, D: int, device: torch.device, group=None
) -> torch.Tensor:
    """Validate user-given initial centroids [k0, D] / [B, k0, D] (k0 <= k, finite) and return
    them as [B, k0, D] float32 on ``device`` (rank 0's copy with a group). Raises ValueError."""
    given = init.detach()
    given = given.unsqueeze(0) if given.dim() == 2 else given
    if given.dim() != 3 or given.shape[0] != B or given.shape[2] != D or given.shape[1] > k:
        raise ValueError(
            f"init centroids must be [k0, {D}] or [{B}, k0, {D}] with k0 <= k={k}, "
            f"got {tuple(init.shape)}"
        )
    if not bool(torch.isfinite(given).all()):
        raise ValueError("init centroids contain NaN or inf")
    given = given.to(device=device, dtype=torch.float32)
    return fdist.broadcast_from_first(given.contiguous(), group)


def draw_rows(rows: Rows, n: int, gen: torch.Generator, per_rank: torch.Tensor) -> torch.Tensor:
    """n distinct real rows per problem, drawn uniformly from the rows of all ranks.

    per_rank: [P, B] int64 (CPU) real rows per rank and problem. Returns [B, n, D] float32 on
    the rows' device, the same on every rank (module docstring).
    """
    me = fdist.rank(rows.group)
    offset, total = per_rank[:me].sum(dim=0), per_rank.sum(dim=0)
    out = torch.zeros(rows.batch, n, rows.dim, dtype=torch.float32, device=rows.device)
    for b in range(rows.batch):
        pos = torch.randperm(int(total[b]), generator=gen)[:n]
        mine = (pos >= offset[b]) & (pos < offset[b] + per_rank[me, b])
        if bool(mine.any()):
            slots = mine.nonzero().flatten().to(rows.device)
            out[b, slots] = rows.take_real(b, pos[mine] - offset[b])
    return fdist.all_reduce_sum(out, rows.group)


def kmeans_plus_plus(
    x: torch.Tensor, k: int, gen: torch.Generator, weights: torch.Tensor | None
) -> torch.Tensor:
    """D² sampling on x [B, N, D]: each next centroid is a row drawn with probability
    ∝ weight · d²(row, seeds). weights: [B, N] float or None. Returns [B, k, D] float32.

    O(N·k·D) work, k sequential steps; no host synchronisation (sampling stays on device).
    """
    B, N, D = x.shape
    out = torch.empty(B, k, D, dtype=torch.float32, device=x.device)
    dev_gen = torch.Generator(device=x.device)
    dev_gen.manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
    w = torch.ones(B, N, device=x.device) if weights is None else weights
    mind = torch.full((B, N), float("inf"), device=x.device)
    prob = w.clone()
    for i in range(k):
        pick = torch.multinomial(prob, 1, generator=dev_gen)  # [B, 1]
        c = torch.gather(x, 1, pick.unsqueeze(-1).expand(-1, -1, D)).float()  # [B, 1, D]
        out[:, i] = c[:, 0]
        d2 = ((x.float() - c) ** 2).sum(dim=2)
        mind = torch.minimum(mind, d2)
        prob = w * mind
        # all chosen rows already cover every row exactly (fewer distinct rows than k):
        # fall back to weight-proportional sampling instead of an all-zero distribution
        prob = torch.where(prob.sum(dim=1, keepdim=True) > 0, prob, w)
    return out
