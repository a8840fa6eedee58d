"""The Lloyd loop: one k-means for every rows source, and its two public faces.

One iteration = ``assign`` (fused distance + argmin) → ``cluster_sums`` → means →
``resplit_empty`` (faiss's rule) → optional normalisation/rounding. :func:`lloyd` runs it over a
:class:`fastdc.engine.rows.Rows` source, block by block, on the source's device through the
backend registry. Nothing is copied to the host unless ``record_times`` or ``verbose`` asks for
per-iteration timings/prints (one device synchronisation per iteration, per block when there are
several) or ``early_stop_threshold`` for a stop test (one flag per iteration, see
:mod:`fastdc.engine.convergence`). A leading batch dimension clusters B independent problems in
one call.

- :func:`kmeans`: a tensor [N, D] / [B, N, D] in memory (:class:`~fastdc.engine.rows.TensorRows`,
  or :class:`~fastdc.engine.rows.MaskedRows` with a ``mask`` of padding rows);
- :func:`kmeans_streaming`: a :class:`~fastdc.engine.store.FeatureStore` streamed through the
  device (:class:`~fastdc.engine.rows.StoreRows`).

**Accumulation rule.** In each pass every block gets its own ``assign`` and ``cluster_sums``
call; the block's float32 sums and counts and its float64 objective are added in float64, in
block order, and the totals rounded to float32 (one block: its own values, which is what that
rounding gives back). The result depends on the blocks, never on the source: the same rows in
the same blocks (``kmeans(x, chunk_rows=c)`` and ``kmeans_streaming(store, chunk_rows=c)`` on
the rows of x; ``kmeans(x)`` reads one block, as does a store read with ``chunk_rows >= N``)
give bit-identical centroids, assignments and objectives.

**Sharding.** With a process ``group`` every rank passes its own shard of the rows. Seeding draws
from the global row set with the shared seed, each iteration's sums and counts are all-reduced
(one packed buffer), the re-split then runs identically on every rank from the reduced counts and
the shared seed, and the objective is all-reduced at the end. P ranks give the centroids of one
process on the concatenated rows, up to float32 summation order; each rank gets back the
assignments of its own rows.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from fastdc.engine import collectives as fdist
from fastdc.engine.checks import as_batched_float, check_k, check_mask, check_rows, check_weights
from fastdc.engine.convergence import REASONS, StopCheck, check_early_stop_threshold
from fastdc.engine.pruning import Assigner, check_prune
from fastdc.engine.rows import Block, MaskedRows, Rows, StoreRows, TensorRows
from fastdc.engine.seeding import seed_centroids
from fastdc.engine.store import DEFAULT_CHUNK_ROWS, FeatureStore
from fastdc.ops import means_from_sums, registry
from fastdc.ops.lloyd_step import lloyd_run
from fastdc.ops.resplit_empty import resplit_in_place
from fastdc.ops.threads import kernels_own_the_cores


@dataclass
class KMeansResult:
    """What :func:`kmeans` returns. Shapes are for one problem; a batched call adds a leading B
    (and obj/nsplit/imbalance/changed become [n_iter, B]).

    centroids: [k, D] float32. assignments: [N] int64, nearest final centroid of every row.
    dist: [N] float32, distance (or inner product) to that centroid. Both None when the run was
    asked for no labels (``labels=False``). obj: [n_iter] float64, the
    objective of each iteration's assignment step (sum of distances; of inner products when
    spherical). nsplit: [n_iter] int64, empty clusters re-split in each iteration. imbalance:
    [n_iter] float64, faiss's imbalance factor k·Σn_j²/(Σn_j)². times / search_times: cumulative
    seconds per iteration (only with ``record_times``, else empty lists; where the cpu backend
    runs the loop in one call they are read inside it, and where it runs each iteration in one
    call, :func:`fastdc.ops.lloyd_step` with ``verbose``, an iteration's search time is that
    call's: the sums, means and re-split with the assignment). n_iter: the iterations
    run (niter unless the loop stopped early). changed: [n_iter] int64, rows whose assignment
    changed in each iteration (over all ranks; iteration 0 counts every row), or None when no
    stop test ran. stop_reason: None, or why the loop stopped ("converged": a fixed point, the
    result equals the full run's; "threshold": early_stop_threshold), set even when that
    happened in the last iteration. pruned: [n_iter] float64, the fraction of real rows (over
    all ranks) whose assignment the bounds proved without computing distances in each iteration
    (0 in iteration 0; with "elkan" bounds, the fraction of row-centroid distances not
    computed), or None when the run did not prune.
    """

    centroids: torch.Tensor
    assignments: torch.Tensor | None
    dist: torch.Tensor | None
    obj: torch.Tensor
    nsplit: torch.Tensor
    imbalance: torch.Tensor
    times: list[float] = field(default_factory=list)
    search_times: list[float] = field(default_factory=list)
    changed: torch.Tensor | None = None
    stop_reason: str | None = None
    pruned: torch.Tensor | None = None

    @property
    def n_iter(self) -> int:
        """Iterations run (the length of obj)."""
        return int(self.obj.shape[0])


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
    chunk_rows: int | None = None,
    early_stop_threshold: float | None = None,
    prune: bool | str | None = None,
    precision: str = "default",
    labels: bool = True,
) -> KMeansResult:
    """Lloyd's k-means with faiss's empty-cluster re-split, on x's device.

    x: [N, D] or [B, N, D] float tensor (other real dtypes are converted to float32; a tensor
    that requires grad is detached). k: number of clusters, 1 <= k <= N. niter: Lloyd
    iterations. seed: drives the seeding and the re-splits; same seed, data and backend give
    the same result.
    init: "random" (k distinct rows, uniformly), "kmeans++" (D² sampling), or a tensor
    [k0, D] / [B, k0, D] of initial centroids (k0 <= k; the rest drawn at random).
    spherical: inner-product assignment and unit-norm centroids. weights: [N] / [B, N]
    non-negative per-row weights. n_frozen: keep the first n_frozen initial centroids fixed.
    int_centroids: round centroids to integers after each update.
    check_finite: refuse NaN/inf rows and rows whose squared distances overflow float32
    (norm above 6.5e18) with a ValueError naming the row (one scan of x).
    mask: [N] / [B, N] bool, True for real rows; False rows are padding: weight 0, out of the
    objective and the seeding, assignment -1 and dist 0; each problem needs >= k real rows.
    group: a ``torch.distributed`` process group: x is this rank's shard (N may differ across
    ranks, each needs >= 1 row, masked or not) and the result equals one process on the
    concatenation of the shards in rank order. ``init`` must then be "random" or a tensor
    (rank 0's is used); "kmeans++" raises ValueError. With a group, verbose prints on rank 0.
    chunk_rows: None reads x as one block; an int reads it in blocks of that many rows (views
    of x; with B > 1 the ops copy each block to make it contiguous). The result depends on the
    blocks, not on where the rows come from: on [N, D] float32 it is bit-identical to
    :func:`kmeans_streaming` of the same rows on x's device with the same chunk_rows.
    early_stop_threshold: None (default) or < 0: all niter iterations, nothing read back; 0:
    stop at the first fixed point (the full run's result; obj/nsplit/imbalance cut to n_iter);
    > 0: also once the relative objective change is <= it (faiss). Costs an int32 label per
    row and a flag read (host sync) per iteration (:mod:`fastdc.engine.convergence`).
    prune: exact bound-based pruning of the assignment step from the second iteration on
    (:mod:`fastdc.engine.pruning`; same assignments and centroids as without; "centres" and
    "second" on the cpu backend also the same dist and objective, bit for bit, elsewhere and
    with "elkan" equal up to float32 rounding). None (default): automatic on the cpu backend
    with niter >= 2: "elkan" for D >= 32, niter >= 8 and N * k <= 2^24 (k <= D beyond
    N * k = 2^22), else "second"
    for N * k >= 2^23 and N >= 32 k; off on GPUs. False: off; True: on ("second" bounds);
    "centres" (Elkan's centre-centre test alone), "second" (adds Hamerly's second-distance
    bound) or "elkan" (a bound per row and centroid, N * k float32 values; cpu backend only):
    those bounds. Ignored (no pruning) for spherical k-means and non-float32 rows.
    precision: passed to every ``assign`` (:func:`fastdc.ops.assign`): "default" takes the
    cpu backend's bf16 pass where the CPU has AVX512-BF16 (the float32 answers, bit for bit),
    "fp32" never; on GPU backends, their modes.
    labels: False skips the final assignment pass (one pass over x, 1/(niter + 1) of the
    work), for callers that only need the centroids (``faiss.Kmeans.train`` computes no
    labels either): the result's assignments and dist are then None.
    Raises ValueError (shapes, k, NaN/inf or too large rows with the row index, bad weights,
    early_stop_threshold, prune) or TypeError.
    """
    x, squeezed = as_batched_float(x)
    B, N, _ = x.shape
    m = check_mask(mask, B, N, x.device)
    w = check_weights(weights, B, N, x.device, mask=m, group=group)
    rows: Rows = (TensorRows(x, w, chunk_rows=chunk_rows, group=group) if m is None
                  else MaskedRows(x, m, w, chunk_rows=chunk_rows, group=group))
    opts = LloydOptions(niter=niter, seed=seed, init=init, spherical=spherical,
                        n_frozen=n_frozen, int_centroids=int_centroids, backend=backend,
                        verbose=verbose, record_times=record_times, check_finite=check_finite,
                        early_stop_threshold=early_stop_threshold, prune=prune,
                        precision=precision, labels=labels)
    res = lloyd(rows, k, opts)
    return _first_problem(res) if squeezed else res


def kmeans_streaming(
    store: FeatureStore,
    k: int,
    *,
    niter: int = 20,
    seed: int = 0,
    init: str | torch.Tensor = "random",
    spherical: bool = False,
    device: torch.device | str = "cpu",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    backend: str | None = None,
    group: fdist.Group | None = None,
    early_stop_threshold: float | None = None,
    prune: bool | str | None = None,
    precision: str = "default",
) -> KMeansResult:
    """:func:`kmeans` of the rows of a store, streamed through ``device`` in chunks.

    store: [N, D] fp16/fp32 rows (with ``group``: this rank's shard, N >= 1 on every rank; the
    result equals one process on the concatenated shards). Each chunk is converted to fp32 on
    the device, so an fp16 store gives kmeans's result on the fp16-rounded rows. Device memory
    is O(chunk_rows·D + k·D). init: "random" (the rows :func:`kmeans` draws for this seed) or
    a tensor [k0, D] (k0 <= k; with a group rank 0's is used); "kmeans++" raises ValueError
    (D² sampling needs k passes over the data). Bit-identical to
    ``kmeans(x, ..., chunk_rows=chunk_rows)`` on the same fp32 rows (module docstring).
    Returns a :class:`KMeansResult` for one problem: centroids [k, D] float32 on ``device``;
    assignments [N] int64 and dist [N] float32 on the CPU (this rank's rows); obj [niter]
    float64 (summed over ranks), nsplit [niter] int64, imbalance [niter] float64 on
    ``device`` (n_iter entries with an early stop). early_stop_threshold: as in :func:`kmeans`
    (the previous labels stay in host memory, pinned on CUDA). prune: as in :func:`kmeans` (the
    bounds' per-row state, 8 bytes a row, 12 with "second", stays in host memory). precision:
    as in :func:`kmeans`. Raises ValueError as :func:`kmeans` does.
    """
    rows = StoreRows(store, torch.device(device), chunk_rows, group=group)
    opts = LloydOptions(niter=niter, seed=seed, init=init, spherical=spherical, backend=backend,
                        early_stop_threshold=early_stop_threshold, prune=prune,
                        precision=precision)
    return _first_problem(lloyd(rows, k, opts))


@dataclass(frozen=True)
class LloydOptions:
    """How :func:`lloyd` runs: the arguments of :func:`kmeans` of the same names."""

    niter: int = 20
    seed: int = 0
    init: str | torch.Tensor = "random"
    spherical: bool = False
    n_frozen: int = 0
    int_centroids: bool = False
    backend: str | None = None
    verbose: bool = False
    record_times: bool = False
    check_finite: bool = True
    early_stop_threshold: float | None = None
    prune: bool | str | None = None
    precision: str = "default"
    labels: bool = True


def lloyd(rows: Rows, k: int, opts: LloydOptions) -> KMeansResult:
    """The Lloyd loop over any rows source (module docstring). Where ``assign`` runs on the
    cpu backend, the iterations and the labels pass run inside
    :func:`fastdc.ops.threads.kernels_own_the_cores` (torch's own ops on one thread, so that
    no idle OpenMP thread spins on a core the next kernel needs).

    Returns a batched :class:`KMeansResult`: centroids [B, k, D] float32 on the rows' device,
    assignments [B, N] int64 and dist [B, N] float32 on ``rows.out_device`` (None without
    ``opts.labels``), obj and imbalance
    [n_iter, B] float64, nsplit and changed [n_iter, B] int64, pruned [n_iter, B] float64 or
    None (n_iter <= niter: the loop stops
    early when ``opts.early_stop_threshold`` says so). Raises ValueError or TypeError (k,
    niter, n_frozen, init, early_stop_threshold, rows with NaN/inf or too large when
    ``opts.check_finite``).
    """
    per_rank = fdist.all_gather_sizes(rows.real_counts(), rows.group, rows.device).cpu()
    check_k(k, int(per_rank.sum(dim=0).min()))
    if int(per_rank.sum(dim=1).min()) < rows.min_rows_per_rank:
        raise ValueError("every rank needs at least one row")
    _check_options(k, opts)
    centroids = seed_centroids(rows, k, opts.init, opts.seed, per_rank, check=opts.check_finite)
    if opts.spherical:
        centroids = _normalize(centroids)
    split_gen = torch.Generator(device=rows.device)
    split_gen.manual_seed(int(opts.seed) + 1)
    metric = "ip" if opts.spherical else "l2"
    B, dev = rows.batch, rows.device
    # per iteration: objective [B], re-splits [B], cluster sizes [B, k] (the imbalance factors
    # are computed once, at the end) and pruned rows [B]; stacked at the end
    objs: list[torch.Tensor] = []
    splits: list[torch.Tensor] = []
    sizes: list[torch.Tensor] = []
    fractions: list[torch.Tensor] = []
    clock = _Clock(opts.record_times or opts.verbose, dev)
    log = _Log(opts.verbose, rows, k, opts.niter)
    stop = StopCheck(rows, opts.early_stop_threshold)
    assigner = Assigner(rows, metric, opts.backend, _prune_bounds(rows, k, opts), opts.precision)
    sums_op = registry.SelectOnce("cluster_sums", opts.backend)
    kernels_on_cpu = _assign_on_cpu(rows, opts)
    step = _Step.where_it_runs(rows, k, opts, assigner) if kernels_on_cpu else None
    with kernels_own_the_cores() if kernels_on_cpu else nullcontext():
        in_one_call = step is not None and step.runs_whole(rows, opts)
        if in_one_call:
            centroids = step.run(rows, centroids, opts, split_gen, stop, clock,
                                 (objs, sizes, splits, fractions))
        for it in range(0 if in_one_call else opts.niter):
            blocks = _blocks(rows, opts.check_finite and it == 0)
            if step is not None:
                with clock.searching():  # the whole step: assignment, sums, means, re-split
                    obj_it, counts, new, nsplit_it = step(blocks, centroids, split_gen, stop)
            else:
                obj_it, sums, counts = _sums_pass(blocks, centroids, k, assigner, sums_op,
                                                  clock, stop)
            objs.append(obj_it)
            fractions.append(assigner.end_pass())
            if step is None:
                sums, counts = fdist.all_reduce_sum_packed([sums, counts], rows.group)
                new, nsplit_it = finish_iteration(
                    centroids, sums, counts, split_gen=split_gen, n_frozen=opts.n_frozen,
                    spherical=opts.spherical, int_centroids=opts.int_centroids,
                    backend=opts.backend,
                )
                assigner.moved(centroids, new)
            sizes.append(counts)
            splits.append(nsplit_it)
            centroids = new
            clock.lap()
            log.iteration(it, clock, obj_it, counts, nsplit_it)
            if stop.end_iteration(obj_it, nsplit_it):
                log.stopped(it, stop.reason)
                break
        dist = idx = None
        step = None  # its buffers (dist, labels: 12 bytes a row) go before the labels pass's
        if opts.labels:
            blocks = _blocks(rows, opts.check_finite and opts.niter == 0)
            dist, idx = _labels_pass(blocks, rows, centroids, assigner)
    obj = _stack(objs, (B,), torch.float64, dev)
    nsplit = _stack(splits, (B,), torch.int64, dev)
    imbalance = _imbalance(_stack(sizes, (B, k), torch.float32, dev))
    pruned = _stack([f.double() for f in fractions], (B,), torch.float64, dev)
    obj, pruned = fdist.all_reduce_sum_packed([obj, pruned], rows.group)
    pruned = None if assigner.bounds is None else pruned / per_rank.sum(dim=0).to(dev)
    return KMeansResult(centroids, idx, dist, obj, nsplit, imbalance, clock.times,
                        clock.search_times, stop.changed_rows(), stop.reason, pruned)


def _stack(items: list[torch.Tensor], shape: tuple[int, ...], dtype: torch.dtype,
           device: torch.device) -> torch.Tensor:
    """The per-iteration values stacked: [n_iter, *shape] (n_iter = len(items), maybe 0)."""
    if not items:
        return torch.zeros((0, *shape), dtype=dtype, device=device)
    return torch.stack(items)


def _assign_on_cpu(rows: Rows, opts: LloydOptions) -> bool:
    """Whether the loop's ``assign`` runs on the cpu backend (CPU rows, selected there). Its
    iterations then run inside :func:`fastdc.ops.threads.kernels_own_the_cores`; the torch
    backend needs torch's threads for its own matrix products."""
    if rows.device.type != "cpu":
        return False
    probe = torch.zeros(1, 1, rows.shape[2])
    impl = registry.select("assign", opts.backend, x=probe, centroids=probe, metric="l2")
    return impl.backend == "cpu"


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """The end of one Lloyd iteration, once the (reduced) per-cluster sums are known.

    centroids: [B, k, D] float32, the iteration's current centroids (only the n_frozen first
    are read). sums: [B, k, D] float32, counts: [B, k] float32: already summed over all rows
    (and all ranks). split_gen: the re-split generator on the centroids' device (advanced).
    Returns (new centroids [B, k, D] float32: means, frozen ones kept, empty clusters re-split,
    normalised when spherical, rounded when int_centroids; nsplit [B] int64).
    """
    new = means_from_sums(sums, counts)
    if n_frozen:
        new[:, :n_frozen] = centroids[:, :n_frozen]
    # new is this function's own tensor: re-split in place (on a copy of counts)
    nsplit = resplit_in_place(new, counts.clone(), generator=split_gen, n_frozen=n_frozen,
                              backend=backend)
    if spherical:
        new = _normalize(new)
    if int_centroids:
        new = new.round()
    return new, nsplit


def _check_options(k: int, opts: LloydOptions) -> None:
    if opts.niter < 0:
        raise ValueError(f"niter must be >= 0, got {opts.niter}")
    if not 0 <= opts.n_frozen <= k:
        raise ValueError(f"n_frozen must be in [0, k={k}], got {opts.n_frozen}")
    if opts.n_frozen and not isinstance(opts.init, torch.Tensor):
        raise ValueError("n_frozen needs initial centroids given as a tensor in `init`")
    check_early_stop_threshold(opts.early_stop_threshold)
    check_prune(opts.prune)


AUTO_PRUNE_WORK = 1 << 23
"""Automatic pruning needs N * K >= this: its per-pass bookkeeping made 20 iterations on the
built-in run's 5 000 x 32 features (K = 100) 1.4x slower, while it made a 100k x 256 mixture
with K = 1 000 2.5x faster (benchmarks/results/kmeans_prune_*.json, AMD EPYC Zen 4)."""

AUTO_PRUNE_ROWS = 32
"""Automatic pruning also needs N >= this many rows per cluster. With few rows per cluster the
centroids move far and the per-pass tests (K x K centre distances, own distances, the second
distance) are a large part of the pass: on DeepCluster-like rows (PCA-whitened, L2-normalised,
where nothing prunes), 20 iterations took 1.14-1.28x as long pruned at N/K = 10 (N = 10 000,
D = 64 and 256, K = 1 000) and 1.03-1.06x at N/K = 20-50 (2 threads, 2-core AMD EPYC Zen 4,
2026-12-04); the mixtures that prune well have 100 rows per cluster."""

AUTO_ELKAN_MIN_D = 32
"""Automatic "elkan" bounds need D >= this. 20 iterations of DeepCluster-like rows with the
loop in one call (:func:`fastdc.ops.lloyd_step.lloyd_run`), unpruned / "elkan" ms, 1 thread,
then 2 (2-core AMD EPYC Zen 3, 2026-12-06): the built-in run's whitened features (5 000 x 32,
K = 100) 12.9 / 9.1, 10.5 / 5.7; 5 000 x 32, K = 100: 12.9 / 11.9, 10.7 / 7.3; 20 000 x 32,
K = 200: 79.5 / 71.0, 49.3 / 39.7; 2 000 x 32, K = 40: 3.3 / 3.5, 3.5 / 3.5; 10 000 x 64,
K = 100: 40.4 / 25.9, 26.9 / 15.9. Below, at 5 000 x 16, K = 100: 10.1 / 12.0 on one thread (a
bounded pass costs about as much as assign's tile there)."""

AUTO_ELKAN_MIN_NITER = 8
"""Automatic "elkan" bounds need niter >= this: its first passes score every pair (and cost more
than assign's), so short runs lose. DeepCluster-like rows, labels=False, 2 threads, unpruned /
"elkan" ms at niter 4, 6, 8, 10: 10k x 256, K = 100: 17.2 / 18.7, 23.7 / 22.2, 32.0 / 24.5,
38.3 / 27.2; 20k x 128, K = 100: 18.0 / 20.9, 25.5 / 26.2, 32.5 / 29.8, 40.9 / 31.6 (2-core AMD
EPYC Zen 3, 2026-12-06)."""

AUTO_ELKAN_MAX_WORK = 1 << 24
"""Automatic "elkan" bounds need N * K <= this (64 MB of float32 bounds) and, beyond
:data:`AUTO_ELKAN_SMALL`, K <= D (bounds no larger than the rows themselves); beyond, "second"
(12 bytes a row) takes over."""

AUTO_ELKAN_SMALL = 1 << 22
"""N * K up to which automatic "elkan" bounds may outgrow the rows (K > D): 16 MB at most, the
size of a 4 096-row block of float32 distances at K = 1 000 (5 000 x 32, K = 100: 2 MB)."""

AUTO_PRUNE_NITER = 2
"""Automatic pruning also needs niter >= this: the first pass only seeds the bounds, so with
one iteration they could serve the final labels pass alone, for the price of their per-row
state (at 1M rows, D = 256, K = 1 000, niter = 1: 40 MB beyond the input pruned, 21 MB not,
faiss 29 MB; 2-core AMD EPYC Zen 3, 2026-12-06)."""


def _prune_bounds(rows: Rows, k: int, opts: LloydOptions) -> str | None:
    """The bounds the run prunes with (:mod:`fastdc.engine.pruning`), or None. Automatic
    (``prune=None``) where the rows are on the CPU and ``assign`` runs on the cpu backend
    (whose distances the pruned rows reproduce) with niter at least :data:`AUTO_PRUNE_NITER`:
    "elkan" for D at least :data:`AUTO_ELKAN_MIN_D`, k <= D (or N * k at most
    :data:`AUTO_ELKAN_SMALL`), N * k at most :data:`AUTO_ELKAN_MAX_WORK` and niter at least
    :data:`AUTO_ELKAN_MIN_NITER`, else
    "second" for N * k at least :data:`AUTO_PRUNE_WORK` and N at least
    :data:`AUTO_PRUNE_ROWS` k; off on GPUs (unmeasured). An explicit "elkan" raises
    ValueError where ``assign`` would not run on the cpu backend."""
    if opts.prune is False or opts.spherical or rows.dtype != torch.float32:
        return None
    on_cpu = (rows.device.type == "cpu" and opts.backend in (None, "cpu")
              and "cpu" in registry.available("assign"))
    if opts.prune == "elkan" and not on_cpu:
        raise ValueError("prune='elkan' needs rows on the CPU and the cpu backend (built with "
                         f"fastdc._C); got rows on {rows.device} and backend={opts.backend!r}")
    if opts.prune is not None:
        return "second" if opts.prune is True else opts.prune
    _, n, d = rows.shape
    if not on_cpu or opts.niter < AUTO_PRUNE_NITER:
        return None
    if (d >= AUTO_ELKAN_MIN_D and (k <= d or n * k <= AUTO_ELKAN_SMALL)
            and n * k <= AUTO_ELKAN_MAX_WORK and opts.niter >= AUTO_ELKAN_MIN_NITER):
        return "elkan"
    return "second" if n * k >= AUTO_PRUNE_WORK and n >= AUTO_PRUNE_ROWS * k else None


def _blocks(rows: Rows, check: bool) -> Iterator[Block]:
    """One pass over ``rows``; with ``check``, each block goes through
    :func:`fastdc.engine.checks.check_rows` first (the first pass of a clustering)."""
    for block in rows.blocks():
        if check:
            check_rows(block.x, block.start)
        yield block


def _sums_pass(blocks: Iterator[Block], centroids: torch.Tensor, k: int, assigner: Assigner,
               sums_op: registry.SelectOnce, clock: _Clock, stop: StopCheck
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """assign + cluster_sums on every block (whose labels ``stop`` observes); returns
    (objective [B] float64, sums [B, k, D] float32, counts [B, k] float32) summed by the
    accumulation rule (module docstring). ``sums_op``: cluster_sums, chosen once for the
    blocks."""
    totals: list[torch.Tensor] = []
    assigner.begin(centroids)
    for block in blocks:
        with clock.searching():
            dist, idx = assigner(block, centroids)
        stop.observe(block, idx)
        obj = block.objective(dist)
        del dist  # before cluster_sums' own buffers (its row order: 4 bytes a row)
        weights = None if block.weights is None else block.weights.contiguous()
        sums, counts = sums_op((block.x.dtype, block.x.device, weights is None),
                               x=block.x.contiguous(), idx=idx.contiguous(), k=k, weights=weights)
        partial = (obj, sums, counts)
        if not totals:
            totals = list(partial)  # one block: float64 of it rounds back to itself
            continue
        totals = [t.double() for t in totals]  # a no-op from the third block on
        for total, part in zip(totals, partial, strict=True):
            total += part
    obj, sums, counts = totals
    return obj, sums.float(), counts.float()


ONE_CALL_MAX_WORK = 1 << 28
"""The loop runs in one call (:meth:`_Step.run`) up to this many multiply-adds an iteration
(B * N * k * D; 5 000 x 32, K = 100: 1.6e7), a few ms of work: there the 0.1-0.2 ms of Python
between iterations is most of the gap to faiss. Beyond, each iteration is its own call: the
Python is then a small part of it, and an interrupt (Ctrl-C) is taken between iterations."""


class _Step:
    """A Lloyd iteration in one kernel call (:func:`fastdc.ops.lloyd_step` on the cpu backend):
    the assignment ("elkan" bounds or none), sums, means and re-split of :func:`_sums_pass` and
    :func:`finish_iteration`, the same results bit for bit, without their Python (about 0.2 ms
    an iteration: at 5 000 x 32, K = 100 as much as the assignment). The objective and the stop
    test still read the pass's dist and labels here, as they do there."""

    def __init__(self, rows: Rows, k: int, opts: LloydOptions, assigner: Assigner) -> None:
        self.k, self.n_frozen, self.assigner = k, opts.n_frozen, assigner
        self.op = registry.SelectOnce("lloyd_step", "cpu")
        self.precision = opts.precision
        B, N, _ = rows.shape
        self.dist = torch.empty(B, N, dtype=torch.float32)
        # the labels of passes without bounds ("elkan" keeps its own: Assigner.elkan_state)
        self.labels = torch.empty(B, N, dtype=torch.int64) if assigner.bounds is None else None

    @classmethod
    def where_it_runs(cls, rows: Rows, k: int, opts: LloydOptions, assigner: Assigner
                      ) -> _Step | None:
        """The step where the loop can take it, else None. The caller has checked that the
        loop's ``assign`` runs on the cpu backend (so the rows are on the CPU); the step also
        needs float32 rows read as one block by one process, squared L2 with "elkan" bounds or
        none, and centroids neither normalised nor rounded. The cpu backend's ``lloyd_step``
        then takes the tensors ``assign`` takes (contiguous float32 CPU tensors)."""
        if (rows.dtype != torch.float32 or rows.group is not None or not rows.single_block()
                or opts.spherical or opts.int_centroids or assigner.bounds not in (None, "elkan")
                or "cpu" not in registry.available("lloyd_step")):
            return None
        return cls(rows, k, opts, assigner)

    def runs_whole(self, rows: Rows, opts: LloydOptions) -> bool:
        """Whether :meth:`run` takes the whole loop: at least one iteration, no per-iteration
        progress lines (``verbose``), no padding rows (the stop test and the objective leave
        them out) and at most :data:`ONE_CALL_MAX_WORK` multiply-adds an iteration."""
        B, N, D = rows.shape
        return (opts.niter > 0 and not opts.verbose and getattr(rows, "mask", None) is None
                and B * N * self.k * D <= ONE_CALL_MAX_WORK)

    def run(self, rows: Rows, centroids: torch.Tensor, opts: LloydOptions,
            split_gen: torch.Generator, stop: StopCheck, clock: _Clock, records: tuple
            ) -> torch.Tensor:
        """All ``opts.niter`` iterations in one call (:func:`fastdc.ops.lloyd_step.lloyd_run`),
        with the per-iteration loop's results bit for bit: the re-split's uniforms drawn at
        once (the generator gives the same numbers in one draw as in niter), the stop test's
        and the clock's records filled in. Appends to ``records`` = (objectives [B], counts
        [B, k], nsplit [B], pruned rows [B]) per iteration, as the loop does; returns the last
        centroids [B, k, D]."""
        B = rows.batch
        (block,) = _blocks(rows, opts.check_finite)
        self.assigner.begin(centroids)  # the passes' k
        uniforms = torch.rand((opts.niter, B, self.k), generator=split_gen, dtype=torch.float64)
        if self.labels is None:
            labels, lower, shift = self.assigner.elkan_buffers(self.k)
            state = {"labels": labels, "lower": lower, "shift": shift,
                     **self.assigner.elkan_schedule()}
        else:
            state = {"labels": self.labels, "lower": None, "shift": None}
        weights = None if block.weights is None else block.weights.contiguous()
        out = centroids.clone()
        start = time.perf_counter()
        res = lloyd_run(block.x.contiguous(), out, uniforms, dist=self.dist, weights=weights,
                        n_frozen=self.n_frozen, threshold=stop.threshold,
                        precision=self.precision, backend="cpu", **state)
        clock.record_run(start, res["seconds"].tolist(), res["search"].tolist())
        stop.record_run(res["changed"], res["reason"])
        pruned = self.assigner.end_run(res["n_iter"], res["computed"], res["refresh"])
        objs, sizes, splits, fractions = records
        objs.extend(res["obj"].unbind())
        sizes.extend(res["counts"].unbind())
        splits.extend(res["nsplit"].unbind())
        fractions.extend(pruned.unbind())
        return out

    def __call__(self, blocks: Iterator[Block], centroids: torch.Tensor,
                 split_gen: torch.Generator, stop: StopCheck
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One iteration over the pass's one block: (objective [B] float64, counts [B, k]
        float32, new centroids [B, k, D] float32, nsplit [B] int64); draws the re-split's
        uniforms from split_gen as :func:`finish_iteration` does."""
        (block,) = blocks
        uniforms = torch.rand((centroids.shape[0], self.k), generator=split_gen,
                              dtype=torch.float64)
        self.assigner.begin(centroids)  # the pass's k, for end_pass
        if self.labels is None:
            state = self.assigner.elkan_state(self.k)
        else:
            state = {"labels": self.labels, "lower": None, "shift": None, "first": True}
        weights = None if block.weights is None else block.weights.contiguous()
        new, counts, nsplit, computed = self.op(
            None, x=block.x.contiguous(), centroids=centroids.contiguous(), uniforms=uniforms,
            dist=self.dist, weights=weights, n_frozen=self.n_frozen, precision=self.precision,
            **state)
        if self.labels is None:
            self.assigner.computed += computed
        stop.observe(block, state["labels"])
        return block.objective(self.dist), counts, new, nsplit


def _labels_pass(blocks: Iterator[Block], rows: Rows, centroids: torch.Tensor,
                 assigner: Assigner) -> tuple[torch.Tensor, torch.Tensor]:
    """The final assignment: (dist [B, N] float32, idx [B, N] int64) on ``rows.out_device``."""
    parts = []
    assigner.begin(centroids, final=True)
    for block in blocks:
        dist, idx = assigner(block, centroids)
        parts.append((dist.to(rows.out_device), idx.to(rows.out_device)))
    return rows.collect(parts)


class _Clock:
    """Cumulative wall-clock seconds at the end of each iteration and spent in ``assign``;
    when enabled, each reading synchronises the device."""

    def __init__(self, enabled: bool, device: torch.device) -> None:
        self.enabled, self.device = enabled, device
        self.t0, self.search = time.perf_counter(), 0.0
        self.times: list[float] = []
        self.search_times: list[float] = []

    @contextmanager
    def searching(self) -> Iterator[None]:
        """Time the enclosed assign call (adds to the search time)."""
        if not self.enabled:
            yield
            return
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.search += time.perf_counter() - start

    def record_run(self, start: float, seconds: list[float], search: list[float]) -> None:
        """Record the iterations of one call that began at ``start`` (time.perf_counter):
        their cumulative seconds since then and in the assignments."""
        if self.enabled:
            self.times.extend(start - self.t0 + s for s in seconds)
            self.search_times.extend(self.search + s for s in search)
            self.search += search[-1] if search else 0.0

    def lap(self) -> None:
        """Record the end of an iteration."""
        if self.enabled:
            self._sync()
            self.times.append(time.perf_counter() - self.t0)
            self.search_times.append(self.search)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class _Log:
    """faiss-style progress lines on stderr (rank 0 only; every rank joins the objective's
    all-reduce so that rank 0 prints the global value)."""

    def __init__(self, verbose: bool, rows: Rows, k: int, niter: int) -> None:
        self.verbose, self.group = verbose, rows.group
        self.main = verbose and fdist.is_main(rows.group)
        world = fdist.world_size(rows.group)
        where = f" on rank 0 of {world}" if world > 1 else ""
        B, N, D = rows.shape
        self._say(f"Clustering {N} points{where} in {D}D to {k} clusters ({B} problem(s)), "
                  f"{niter} iterations")

    def iteration(self, it: int, clock: _Clock, obj: torch.Tensor, sizes: torch.Tensor,
                  nsplit: torch.Tensor) -> None:
        """One line per iteration: times, objective (over all ranks), imbalance (of the cluster
        sizes [B, k]), splits."""
        if not self.verbose:
            return
        imbalance = _imbalance(sizes)
        total = fdist.all_reduce_sum(obj.clone(), self.group)
        self._say(f"  Iteration {it} ({clock.times[-1]:.2f} s, search {clock.search:.2f} s): "
                  f"objective={float(total.sum()):g} imbalance={float(imbalance.mean()):.3f} "
                  f"nsplit={int(nsplit.sum())}")

    def stopped(self, it: int, reason: str) -> None:
        """The line faiss prints when it stops early (with the reason, a key of REASONS)."""
        self._say(f"  Converged at iteration {it}: {REASONS[reason]}")

    def _say(self, line: str) -> None:
        if self.main:
            print(line, file=sys.stderr)


def _first_problem(res: KMeansResult) -> KMeansResult:
    """A batched result of one problem without its batch dimension."""
    changed = None if res.changed is None else res.changed[:, 0]
    pruned = None if res.pruned is None else res.pruned[:, 0]
    assignments = None if res.assignments is None else res.assignments[0]
    dist = None if res.dist is None else res.dist[0]
    return KMeansResult(res.centroids[0], assignments, dist, res.obj[:, 0],
                        res.nsplit[:, 0], res.imbalance[:, 0], res.times, res.search_times,
                        changed, res.stop_reason, pruned)


def _normalize(c: torch.Tensor) -> torch.Tensor:
    return c / c.norm(dim=-1, keepdim=True).clamp_min(1e-20)


def _imbalance(counts: torch.Tensor) -> torch.Tensor:
    """faiss's imbalance factor of cluster sizes counts [..., k] float: k · Σ n_j² / (Σ n_j)²
    as float64 [...] (1 = perfectly balanced)."""
    c = counts.double()
    return c.shape[-1] * (c * c).sum(dim=-1) / c.sum(dim=-1).clamp_min(1e-300) ** 2
