"""The functional k-means: seeding and Lloyd iterations on torch tensors, on their device.

One iteration = ``assign`` (fused distance + argmin) → ``cluster_sums`` → means →
``resplit_empty`` (faiss's rule) → optional normalisation/rounding. All of it runs on the data's
device through the backend registry; nothing is copied to the host unless ``record_times`` or
``verbose`` asks for per-iteration timings/prints (one device synchronisation per iteration).
A leading batch dimension clusters B independent problems in one call.

Two optional extensions, both off by default (then the loop is exactly the plain one above):

- ``mask`` [B, N] bool marks real rows; False rows are padding (e.g. when problems of unequal
  sizes are stacked into one [B, N_max, D] tensor). Padding rows get weight 0 (they never move a
  centroid or count in a cluster's size, so the re-split never sees them), are left out of the
  objective, are never drawn as initial centroids, and come back with assignment -1, dist 0.
- ``group`` (a ``torch.distributed`` process group): x is this rank's shard of the rows. Seeding
  draws from the global row set with the shared seed, per-iteration sums and counts (one packed
  buffer) are all-reduced, the re-split then runs identically on every rank from the reduced
  counts and the shared seed, and the objective is all-reduced at the end. Same seed, same rows:
  P ranks give the centroids of one process on the concatenated rows, up to float32 summation
  order. Each rank gets back the assignments of its own rows.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import torch

from fastdc.engine import collectives as fdist
from fastdc.ops.assign import assign
from fastdc.ops.checks import first_nonfinite_row
from fastdc.ops.cluster_sums import cluster_sums, means_from_sums
from fastdc.ops.resplit_empty import resplit_empty

INIT_METHODS = ("random", "kmeans++")


@dataclass
class KMeansResult:
    """What :func:`kmeans` returns. Shapes are for one problem; a batched call adds a leading B
    (and obj/nsplit/imbalance become [niter, B]).

    centroids: [k, D] float32. assignments: [N] int64, nearest final centroid of every row.
    dist: [N] float32, distance (or inner product) to that centroid. obj: [niter] float64, the
    objective of each iteration's assignment step (sum of distances; of inner products when
    spherical). nsplit: [niter] int64, empty clusters re-split in each iteration. imbalance:
    [niter] float64, faiss's imbalance factor k·Σn_j²/(Σn_j)². times / search_times: cumulative
    seconds per iteration (only with ``record_times``, else empty lists).
    """

    centroids: torch.Tensor
    assignments: torch.Tensor
    dist: torch.Tensor
    obj: torch.Tensor
    nsplit: torch.Tensor
    imbalance: torch.Tensor
    times: list[float] = field(default_factory=list)
    search_times: list[float] = field(default_factory=list)


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    niter: int = 20,
    seed: int = 0,
    init: str | torch.Tensor = "random",
    spherical: bool = False,
    weights: torch.Tensor | None = None,
    n_frozen: int = 0,
    int_centroids: bool = False,
    backend: str | None = None,
    verbose: bool = False,
    record_times: bool = False,
    check_finite: bool = True,
    mask: torch.Tensor | None = None,
    group: fdist.Group | None = None,
) -> KMeansResult:
    """Lloyd's k-means with faiss's empty-cluster re-split, on x's device.

    x: [N, D] or [B, N, D] float tensor (other real dtypes are converted to float32).
    k: number of clusters, 1 <= k <= N. niter: Lloyd iterations. seed: drives the seeding and
    the re-splits; same seed, data and backend give the same result.
    init: "random" (k distinct rows, uniformly), "kmeans++" (D² sampling), or a tensor
    [k0, D] / [B, k0, D] of initial centroids (k0 <= k; the rest drawn at random).
    spherical: inner-product assignment and unit-norm centroids. weights: [N] / [B, N]
    non-negative per-row weights. n_frozen: keep the first n_frozen initial centroids fixed.
    int_centroids: round centroids to integers after each update.
    mask: [N] / [B, N] bool, True for real rows; False rows are padding, ignored everywhere
    (see the module docstring); each problem needs at least k real rows.
    group: a ``torch.distributed`` process group: x is this rank's shard (N may differ across
    ranks, each needs >= 1 row, masked or not) and the result equals one process on the
    concatenation of the shards in rank order. ``init`` must then be "random" or a tensor
    (rank 0's is used); "kmeans++" raises ValueError. With a group, verbose prints on rank 0.
    Raises ValueError (shapes, k, NaN/inf rows with the row index, bad weights) or TypeError.
    """
    x, squeezed = _as_batched_float(x)
    B, N, D = x.shape
    m = _check_mask(mask, B, N, x.device)
    if m is None and group is None:
        _check_k(k, N)
    else:
        rows = torch.full((B,), N, dtype=torch.int64) if m is None else m.sum(dim=1).cpu()
        _check_k(k, int(fdist.all_reduce_sum(rows.to(x.device), group).min()))
    if niter < 0:
        raise ValueError(f"niter must be >= 0, got {niter}")
    if check_finite:
        for b in range(B):
            row = first_nonfinite_row(x[b])
            if row is not None:
                where = f"row {row}" if B == 1 else f"problem {b}, row {row}"
                raise ValueError(f"x contains NaN or inf at {where}; remove or impute it first")
    w = _check_weights(weights, B, N, x.device, mask=m, group=group)
    metric = "ip" if spherical else "l2"
    centroids = initial_centroids(x, k, init=init, seed=seed, weights=w, mask=m, group=group)
    if not 0 <= n_frozen <= k:
        raise ValueError(f"n_frozen must be in [0, k={k}], got {n_frozen}")
    if n_frozen and not isinstance(init, torch.Tensor):
        raise ValueError("n_frozen needs initial centroids given as a tensor in `init`")
    if spherical:
        centroids = _normalize(centroids)

    split_gen = torch.Generator(device=x.device)
    split_gen.manual_seed(int(seed) + 1)
    obj = torch.zeros(niter, B, dtype=torch.float64, device=x.device)
    nsplit = torch.zeros(niter, B, dtype=torch.int64, device=x.device)
    imbalance = torch.zeros(niter, B, dtype=torch.float64, device=x.device)
    times: list[float] = []
    search_times: list[float] = []
    timed = record_times or verbose
    reduce_obj_each_iter = verbose and group is not None  # every rank joins that all-reduce
    verbose = verbose and fdist.is_main(group)
    t0, t_search = time.perf_counter(), 0.0
    if verbose:
        where = "" if group is None else f" on rank 0 of {fdist.world_size(group)}"
        print(
            f"Clustering {N} points{where} in {D}D to {k} clusters ({B} problem(s)), "
            f"{niter} iterations",
            file=sys.stderr,
        )
    for it in range(niter):
        ts = time.perf_counter()
        dist, idx = assign(x, centroids, metric=metric, backend=backend)
        if timed:
            _sync(x.device)
            t_search += time.perf_counter() - ts
        if m is not None:
            dist = dist.masked_fill(~m, 0.0)
        obj[it] = dist.sum(dim=1, dtype=torch.float64)
        sums, counts = cluster_sums(x, idx, k, weights=w, backend=backend, check_ids=False)
        if group is not None:
            sums, counts = _all_reduce_sums(sums, counts, group)
        centroids, imbalance[it], nsplit[it] = finish_iteration(
            centroids, sums, counts, split_gen=split_gen, n_frozen=n_frozen,
            spherical=spherical, int_centroids=int_centroids, backend=backend,
        )
        if timed:
            _sync(x.device)
            times.append(time.perf_counter() - t0)
            search_times.append(t_search)
        shown = obj[it]
        if reduce_obj_each_iter:
            shown = fdist.all_reduce_sum(obj[it].clone(), group)
        if verbose:
            print(
                f"  Iteration {it} ({times[-1]:.2f} s, search {t_search:.2f} s): "
                f"objective={float(shown.sum()):g} imbalance={float(imbalance[it].mean()):.3f} "
                f"nsplit={int(nsplit[it].sum())}",
                file=sys.stderr,
            )
    dist, idx = assign(x, centroids, metric=metric, backend=backend)
    if group is not None:
        fdist.all_reduce_sum(obj, group)
    if m is not None:
        dist, idx = dist.masked_fill(~m, 0.0), idx.masked_fill(~m, -1)
    result = KMeansResult(centroids, idx, dist, obj, nsplit, imbalance, times, search_times)
    if squeezed:
        result.centroids, result.assignments, result.dist = centroids[0], idx[0], dist[0]
        result.obj, result.nsplit, result.imbalance = obj[:, 0], nsplit[:, 0], imbalance[:, 0]
    return result


def finish_iteration(
    centroids: torch.Tensor,
    sums: torch.Tensor,
    counts: torch.Tensor,
    *,
    split_gen: torch.Generator,
    n_frozen: int = 0,
    spherical: bool = False,
    int_centroids: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The end of one Lloyd iteration, once the (reduced) per-cluster sums are known.

    centroids: [B, k, D] float32, the iteration's current centroids (only the n_frozen first
    are read). sums: [B, k, D] float32, counts: [B, k] float32 — already summed over all rows
    (and all ranks). split_gen: the re-split generator on the centroids' device (advanced).
    Returns (new centroids [B, k, D] float32: means, frozen ones kept, empty clusters re-split,
    normalised when spherical, rounded when int_centroids; imbalance [B] float64; nsplit [B]
    int64). Shared by :func:`kmeans` and :func:`fastdc.engine.streaming.kmeans_streaming`.
    """
    imbalance = _imbalance(counts)
    new = means_from_sums(sums, counts)
    if n_frozen:
        new[:, :n_frozen] = centroids[:, :n_frozen]
    new, _, nsplit = resplit_empty(
        new, counts, generator=split_gen, n_frozen=n_frozen, backend=backend
    )
    if spherical:
        new = _normalize(new)
    if int_centroids:
        new = new.round()
    return new, imbalance, nsplit


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
    """Seed k centroids for each problem of x [B, N, D]; returns [B, k, D] float32.

    "random": k distinct rows drawn uniformly (a seeded CPU generator, so the same rows are
    drawn on every device). "kmeans++": D² sampling (weighted by ``weights`` when given).
    A tensor gives the first k0 centroids; rows k0..k-1 are drawn at random.
    mask: [B, N] bool or None; only True rows are ever drawn ("random" draws among the real
    rows in order, so a problem padded at its end draws the rows its unpadded version would).
    group: process group or None; with one, rows are drawn from the concatenation of all
    ranks' (real) rows with the shared seed, each rank fills in the rows it owns and the
    result is all-reduced; a tensor ``init`` is taken from rank 0; "kmeans++" raises
    ValueError (its sequential D² sampling has no exact sharded equivalent here).
    """
    B, N, D = x.shape
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    if group is not None and isinstance(init, str) and init == "kmeans++":
        raise ValueError(
            "init='kmeans++' is not supported with a process group (D² sampling over shards "
            "would not reproduce the single-process draw); use init='random' or pass centroids"
        )
    if mask is not None:
        mask = _check_mask(mask, B, N, x.device)
    if mask is not None or group is not None:
        draw = lambda n: _random_rows_sharded(x, n, gen, mask, group)  # noqa: E731
    else:
        draw = lambda n: _random_rows(x, n, gen)  # noqa: E731
    if isinstance(init, torch.Tensor):
        given = given_centroids(init, B, k, D, x.device, group)
        if given.shape[1] == k:
            return given.clone()
        rest = draw(k - given.shape[1])
        return torch.cat([given, rest], dim=1)
    if init == "random":
        return draw(k)
    if init == "kmeans++":
        if mask is not None:  # padding rows get probability 0
            weights = mask.float() if weights is None else weights * mask
        return _kmeans_plus_plus(x, k, gen, weights)
    raise ValueError(f"init must be one of {INIT_METHODS} or a tensor of centroids, got {init!r}")


def given_centroids(
    init: torch.Tensor, B: int, k: int, D: int, device: torch.device, group=None
) -> torch.Tensor:
    """Validate user-given initial centroids [k0, D] / [B, k0, D] (k0 <= k, finite) and return
    them as [B, k0, D] float32 on ``device`` (rank 0's copy when a group is given)."""
    given = init.unsqueeze(0) if init.dim() == 2 else init
    if given.dim() != 3 or given.shape[0] != B or given.shape[2] != D or given.shape[1] > k:
        raise ValueError(
            f"init centroids must be [k0, {D}] or [{B}, k0, {D}] with k0 <= k={k}, "
            f"got {tuple(init.shape)}"
        )
    if not bool(torch.isfinite(given).all()):
        raise ValueError("init centroids contain NaN or inf")
    given = given.to(device=device, dtype=torch.float32)
    if group is not None:
        given = fdist.broadcast_from_first(given.contiguous(), group)
    return given


def _random_rows(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    rows = torch.stack([torch.randperm(x.shape[1], generator=gen)[:k] for _ in range(x.shape[0])])
    rows = rows.to(x.device)
    return torch.gather(x, 1, rows.unsqueeze(-1).expand(-1, -1, x.shape[2])).float()


def _random_rows_sharded(
    x: torch.Tensor, k: int, gen: torch.Generator, mask: torch.Tensor | None, group
) -> torch.Tensor:
    """k distinct real rows per problem, drawn uniformly from the rows of all ranks.

    The real rows of all ranks, concatenated in rank order, are numbered 0..M-1; every rank
    draws the same k positions from a seeded permutation of M (as :func:`_random_rows` does for
    one process), copies the rows it owns into a zero [B, k, D] float32 buffer and the buffer is
    summed over the group (adding zeros is exact, so every rank holds the same rows).
    """
    B, N, D = x.shape
    out = torch.zeros(B, k, D, dtype=torch.float32, device=x.device)
    real = [
        torch.arange(N, device=x.device) if mask is None else mask[b].nonzero().flatten()
        for b in range(B)
    ]
    local = torch.tensor([len(r) for r in real], dtype=torch.int64)
    per_rank = fdist.all_gather_sizes(local.to(x.device), group, x.device).cpu()  # [P, B]
    me = fdist.rank(group)
    offset, total = per_rank[:me].sum(dim=0), per_rank.sum(dim=0)
    for b in range(B):
        pos = torch.randperm(int(total[b]), generator=gen)[:k]
        mine = (pos >= offset[b]) & (pos < offset[b] + local[b])
        slots = mine.nonzero().flatten().to(x.device)
        rows = real[b][(pos[mine] - offset[b]).to(x.device)]
        out[b, slots] = x[b, rows].float()
    return fdist.all_reduce_sum(out, group)


def _kmeans_plus_plus(
    x: torch.Tensor, k: int, gen: torch.Generator, weights: torch.Tensor | None
) -> torch.Tensor:
    """D² sampling: each next centroid is a row drawn with probability ∝ weight · d²(row, seeds).

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


def _as_batched_float(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"x must be a torch.Tensor, got {type(x).__name__} (use fastdc.kmeans.Kmeans for "
            "NumPy arrays, or torch.from_numpy)"
        )
    if x.is_complex():
        raise TypeError(f"x has complex dtype {x.dtype}; k-means needs real data")
    if not x.dtype.is_floating_point:
        x = x.float()
    if x.dim() not in (2, 3):
        raise ValueError(f"x must be [N, D] or [B, N, D], got shape {tuple(x.shape)}")
    squeezed = x.dim() == 2
    x = x.unsqueeze(0) if squeezed else x
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(
            f"x is empty (shape {tuple(x.shape)}); it needs at least one row and one column"
        )
    return x.contiguous(), squeezed


def _check_k(k: int, n: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n < k:
        raise ValueError(
            f"n={n} training points is fewer than k={k} clusters: lower k or provide more points"
        )


def _check_mask(mask, B: int, N: int, device: torch.device) -> torch.Tensor | None:
    if mask is None:
        return None
    m = torch.as_tensor(mask, device=device)
    if m.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = real row), got {m.dtype}")
    if m.dim() == 1:
        m = m.unsqueeze(0)
    if m.shape != (B, N):
        raise ValueError(f"mask must have shape [N] or [B, N] = [{B}, {N}], got {tuple(m.shape)}")
    return m.contiguous()


def _check_weights(
    weights, B: int, N: int, device: torch.device, *, mask=None, group=None
) -> torch.Tensor | None:
    """Validated [B, N] float32 weights, with padding rows (mask False) at weight 0."""
    if weights is None and mask is None:
        return None
    if weights is None:
        w = mask.float()
    else:
        w = torch.as_tensor(weights, device=device).float()
        if w.dim() == 1:
            w = w.unsqueeze(0)
        if w.shape != (B, N):
            raise ValueError(
                f"weights must have shape [N] or [B, N] = [{B}, {N}], got {tuple(w.shape)}"
            )
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError("weights must be finite and non-negative")
        if mask is not None:
            w = w * mask
    totals = w.sum(dim=1, dtype=torch.float64)
    if group is not None:
        totals = fdist.all_reduce_sum(totals, group)
    if bool((totals == 0).any()):
        raise ValueError("weights are all zero (in at least one problem); nothing to cluster")
    return w.contiguous()


def _all_reduce_sums(
    sums: torch.Tensor, counts: torch.Tensor, group
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum [B, k, D] sums and [B, k] counts over ``group`` in one packed float32 all-reduce."""
    B, k, D = sums.shape
    buf = fdist.all_reduce_sum(torch.cat([sums.reshape(B, k * D), counts], dim=1), group)
    return buf[:, : k * D].reshape(B, k, D).contiguous(), buf[:, k * D :].contiguous()


def _normalize(c: torch.Tensor) -> torch.Tensor:
    return c / c.norm(dim=-1, keepdim=True).clamp_min(1e-20)


def _imbalance(counts: torch.Tensor) -> torch.Tensor:
    """faiss's imbalance factor per problem: k · Σ n_j² / (Σ n_j)² (1 = perfectly balanced)."""
    c = counts.double()
    return c.shape[-1] * (c * c).sum(dim=-1) / c.sum(dim=-1).clamp_min(1e-300) ** 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

