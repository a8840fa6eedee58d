"""Exact bound-based pruning of the Lloyd loop's assignment step (squared L2 only).

From the second pass on, a row keeps the centroid ``a`` it had in the previous pass unless a
bound fails to prove that ``assign`` would give it ``a`` again; only the rows that fail are
gathered and re-assigned. The assignments are those of the unpruned loop, bit for bit.

Per pass and row, with ``u`` an upper bound of ``||x - c_a||`` (from one gather and one dot
product per row, also the row's distance for the objective: see the end of this docstring) and
``E`` a bound on the rounding error of the kernel's squared distances (below), the row is pruned
when one of these holds:

- centres (Elkan's test): ``4 s (s - u) > 2E`` with ``s = 1/2 min_{j != a} ||c_a - c_j||``
  (K x K centroid distances per pass). Then for every j != a, ``||x - c_j|| >= 2s - u``, so
  ``d_j - d_a >= 4 s (s - u) > 2E``;
- second (Hamerly's bound, ``bounds="second"``): ``l^2 - u^2 > 2E`` with ``l`` a lower bound
  on ``min_{j != a} ||x - c_j||``, set when the row was last re-assigned (its second-smallest
  distance) and lowered after every update by the largest shift of the other centroids.

Exactness. ``assign`` computes ``||x||^2 - 2 x.c + ||c||^2`` in float32: each of the D products
and D + 2 additions rounds by at most 2^-24 relative, so its error on one squared distance is at
most ``(D + 2) 2^-24 (||x|| + ||c||)^2`` (Higham, Accuracy and Stability of Numerical
Algorithms, 2002, section 3.1), in any summation order. ``E = gamma (||x|| + max_j ||c_j||)^2``
with ``gamma = 2 (D + 2) 2^-24`` (twice that bound). A margin of 2E between the true distances
means the kernel cannot rank them the other way, nor tie them (ties go to the smallest index,
so a tight test is never a pruned row). The bounds themselves are rounded outwards: ``u^2`` and
the shifts (computed directly: relative error <= (D + 2) 2^-24) are scaled by ``1 + gamma``,
the centre distances (expansion form) lowered by ``gamma (2 max ||c||)^2``, and the tests are
evaluated in float64, whose own rounding (~1e-16 relative) is far below E.

Re-split centroids jump; their shift is large, the K x K distances are recomputed every pass,
and ``l`` drops by the jump, so the bounds loosen by themselves. The pruned rows' distances are
the kernel's own where the backend can reproduce them (the cpu backend, ``assign_dist``: then
``u^2 = dist + E`` and the objective equals the unpruned one bit for bit); elsewhere they are
computed directly (the objective then equals the unpruned one up to float32 rounding). The
per-row state (previous labels int64, which the pass returns as its labels, and ``l`` float32
with ``second``, rounded down) lives on the rows' ``out_device``, like the stop test's labels;
``||x||`` in E is the largest row norm of the problem.

elkan (``bounds="elkan"``, the cpu backend only): a lower bound of ``||x - c_j||`` per row and
centroid (Elkan, "Using the triangle inequality to accelerate k-means", ICML 2003), N x K float32
on the CPU, through :func:`fastdc.ops.assign_bounded`. Its first :data:`_ELKAN_TILE_PASSES`
passes (and any pass after one that estimated more than :data:`_ELKAN_REFRESH` of the
distances) score every pair with assign's tile, the last of the first ones and the others
setting every bound (the bounds of a pass that another such pass follows are never read: those
passes are plain ``assign``); the others read each bound
back lowered by its centroid's moves since it was set (bounds are stored beside each centroid's
cumulative shift, so a pass writes only the bounds it sets) and estimate only the distances
whose bound does not rule the centroid out, with the same 2E margin (the proof is in
``csrc/cpu/assign_bounded.cpp``). Labels and centroids are the unpruned loop's bit for bit;
the passes' dist (hence the objective) are estimates within E of the kernel's (the final labels
pass is exact). ``pruned`` counts the fraction of row-centroid distances a pass did not compute,
in rows.
"""

from __future__ import annotations

import torch

from fastdc.engine.rows import Block, Rows
from fastdc.ops import assign, assign_dist, registry
from fastdc.ops.lloyd_step import grow_shifts

PRUNE_BOUNDS = ("centres", "second", "elkan")
"""The bounds :class:`Assigner` can prune with (module docstring)."""

_ROUNDING = 2.0**-24  # float32 unit roundoff
_CHUNK_ELEMS = 1 << 19  # centre-centre scores alive at once (2 MB of float32)
_WHOLE_BLOCK = 0.5  # above this fraction of failing rows, re-assign a problem without gathering
_SECOND_PAYS = 0.1  # seed the second bound while the previous pass pruned this fraction of rows
_TEST_BYTES = 1 << 23  # rows tested at once: as many as fill this many bytes of one problem's
# x, 2^10 to 2^16 rows; the failing rows a test gathers (up to half of them: _WHOLE_BLOCK) stay
# below 4 MB (8 MB from D = 4096 on) and the float64 temporaries below 3 MB a problem; a chunk
# costs ~0.15 ms of Python, 0.7 % of a pass at 10^6 x 256, K = 1 000 (2-core AMD EPYC Zen 3)
_ASSIGN_ROWS = 1 << 16  # rows a pass that assigns every row assigns at once
# Testing a row costs about 160/K of assigning it (the own distance, a gathered dot product,
# against K scores; 0.4 s against 2.5 s for 1M rows, D = 256, K = 1000 on the 2-core AMD EPYC
# Zen 4): passes after one that pruned fewer than _TEST_PAYS + _TEST_COST / K of the rows
# assign every row instead (at most _TEST_MAX: where every row prunes, testing pays), until
# _RETRY such passes have gone by.
_TEST_PAYS = 0.05
_TEST_COST = 100.0
_TEST_MAX = 0.9
_RETRY = 3
_LOWER_SHRINK = 2.0**-22  # l is stored in float32: 4 roundings of 2^-24, outwards
_GATHER_ELEMS = 1 << 20  # gathered centroid values alive at once (4 MB: stays in cache)
_ELKAN_TILE_PASSES = 3  # "elkan": the first passes score every pair with assign's tile (the
# centroids still move far: the first bounded pass estimated 36-99 % of the distances). 20
# DeepCluster-like iterations, best of 7, with 1 / 2 / 3 / 4 / 5 such passes: 10k x 256, K = 100:
# 42.6 / 41.3 / 38.7 / 45.4 / 46.8 ms (3-5 in another run: 46.4 / 45.4 / 46.8); 20k x 128,
# K = 200: 91.7 / 87.1 / 79.4 ms, 75.4 with 4; 5k x 32, K = 100: 14.6-15.2 ms for all (2-core
# AMD EPYC Zen 3)
_ELKAN_REFRESH = 0.5  # after an "elkan" pass that estimated more than this fraction of the
# distances, the next pass scores every pair with assign's tile (cheaper at that fraction)


def error_coefficient(d: int) -> float:
    """gamma for rows of d features: twice the (d + 2) 2^-24 bound of the module docstring."""
    return 2.0 * (d + 2) * _ROUNDING


def check_prune(prune: bool | str | None) -> None:
    """Raise ValueError unless ``prune`` is None, a bool or one of :data:`PRUNE_BOUNDS`."""
    if prune is None or isinstance(prune, bool) or prune in PRUNE_BOUNDS:
        return
    raise ValueError(
        f"prune must be None (automatic), True, False or one of {PRUNE_BOUNDS}, got {prune!r}"
    )


class Assigner:
    """The assignment step of one Lloyd run: ``assign`` on every block, or pruned by bounds.

    rows: the source (shape [B, N, D], devices). bounds: None (no pruning; ``metric`` as given)
    or one of :data:`PRUNE_BOUNDS` (squared L2). precision: of every ``assign``. Per pass:
    :meth:`begin` with the pass's centroids [B, K, D] float32, one call per block,
    :meth:`end_pass`; after each centroid
    update, :meth:`moved`. Measured policies (benchmarks/bench_kmeans.py, AMD EPYC Zen 4):
    a problem where more than half the rows fail is re-assigned whole; with the second bound,
    failing rows get the (slower) second distance only in the first bound pass and while the
    previous pass pruned >= 10% of the rows (on structureless data it prunes ~1% and would cost
    2.5x), never in the final pass; after a pass that pruned too few rows to pay for its tests
    (:data:`_TEST_PAYS`), every row is assigned for :data:`_RETRY` passes (labels kept, bounds
    of changed labels dropped).
    """

    def __init__(self, rows: Rows, metric: str, backend: str | None, bounds: str | None,
                 precision: str = "default") -> None:
        self.metric, self.backend, self.bounds = metric, backend, bounds
        self.ops = {"backend": backend, "precision": precision}  # keywords of every assign
        self.device = rows.device
        B, N, D = rows.shape
        self.gamma = error_coefficient(D)
        self.test_rows = max(1 << 10, min(1 << 16, _TEST_BYTES // (4 * max(D, 1))))
        self.pruned = torch.zeros(B, dtype=torch.int64, device=rows.device)
        self.ready = False  # labels hold a previous pass
        self.seed_second = True  # re-assign with the second distance (first pass, while it pays)
        self.final = False  # the pass is the last one (no bound is needed after it)
        self.skip, self.skipped = False, 0  # assign every row this pass; passes skipped so far
        self.k = 1
        self.plain = registry.SelectOnce("assign", backend)  # _assign's
        self.real_counts = rows.real_counts()
        self.real_rows = int(self.real_counts.sum())
        self.lower: torch.Tensor | None = None
        if bounds is None:
            return
        out = rows.out_device
        # [B, N] int64 on out: the first pass's own idx when it is one block on out (no second
        # N-row buffer beside it), else a buffer the first pass fills
        self.labels: torch.Tensor | None = None
        self.out_device, self.n_rows = out, N
        self.x_max = torch.zeros(B, dtype=torch.float64, device=rows.device)
        if bounds == "second":
            self.lower = torch.zeros(B, N, dtype=torch.float32, device=out)
        # "elkan": [B, N, K] stored bounds and [B, K] cumulative shifts on the CPU (allocated by
        # the first pass), the distances estimated in the current pass, and whether the next
        # pass scores all
        self.all_lower: torch.Tensor | None = None
        self.shift: torch.Tensor | None = None
        self.computed = torch.zeros(B, dtype=torch.int64)
        # assign_bounded's implementation: contiguous float32 CPU tensors in every pass
        self.bounded = registry.SelectOnce("assign_bounded", backend)
        self.refresh = True
        self.passes = 0

    def begin(self, centroids: torch.Tensor, final: bool = False) -> None:
        """Prepare a pass with centroids [B, K, D] float32: max norms, half centre gaps.
        ``final``: no pass follows (the failing rows need no second distance)."""
        self.final, self.k = final, centroids.shape[1]
        if self.bounds in (None, "elkan") or not self.ready or self.skip:
            return
        c_sq = (centroids * centroids).sum(dim=2)
        self.c_max = c_sq.max(dim=1).values.double().sqrt()
        gap = _nearest_other_sq(centroids, c_sq).double()
        gap -= self.gamma * (2 * self.c_max[:, None]) ** 2
        self.half_gap = 0.5 * gap.clamp_min(0).sqrt()

    def __call__(self, block: Block, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dist [B, m] float32, idx [B, m] int64) of the block's rows: ``assign``'s result.
        Pruned, idx is a view of the per-row labels (valid until the next pass)."""
        if self.bounds is None:
            return self._assign(block.x, centroids, self.metric)
        if self.bounds == "elkan":
            return self._elkan(block, centroids)
        B, m, _ = block.x.shape
        if self.ready and self.skip:
            return self._assign_all(block, centroids)
        if not self.ready:
            dist, idx = self._assign(block.x, centroids, "l2")
            if self.labels is None:
                if m == self.n_rows and idx.device == self.out_device:
                    self.labels = idx
                else:
                    self.labels = torch.empty(B, self.n_rows, dtype=torch.int64,
                                              device=self.out_device)
            labels = self.labels[:, block.start : block.start + m]
            for start in range(0, m, self.test_rows):  # the largest row norm
                part = block.x[:, start : start + self.test_rows].float()
                norm = torch.linalg.vector_norm(part, dim=2).amax(dim=1).double()
                torch.maximum(self.x_max, norm, out=self.x_max)
            if labels.data_ptr() != idx.data_ptr():
                labels.copy_(idx, non_blocking=True)
            return dist, idx
        labels = self.labels[:, block.start : block.start + m]
        dist = torch.empty(B, m, dtype=torch.float32, device=self.device)
        idx = labels.to(self.device, non_blocking=True)
        lower = None
        if self.lower is not None:
            lower = self.lower[:, block.start : block.start + m].to(self.device)
        err = (self.gamma * (self.x_max + self.c_max) ** 2)[:, None]
        for start in range(0, m, self.test_rows):
            part = slice(start, start + self.test_rows)
            mask = None if block.mask is None else block.mask[:, part]
            self._test(block.x[:, part], centroids, err, mask,
                       (dist[:, part], idx[:, part], None if lower is None else lower[:, part]))
        if idx is not labels:  # state on another device: write it back
            labels.copy_(idx, non_blocking=True)
            if lower is not None:
                self.lower[:, block.start : block.start + m].copy_(lower, non_blocking=True)
        return dist, idx

    def _assign(self, x: torch.Tensor, centroids: torch.Tensor, metric: str
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`fastdc.ops.assign` of rows x [B, m, D] (a block's) to centroids [B, K, D]
        float32: (dist [B, m] float32, idx [B, m] int64), the implementation chosen once for
        the loop's blocks (:class:`fastdc.ops.registry.SelectOnce`)."""
        return self.plain((x.dtype, x.device, metric), x=x.contiguous(),
                          centroids=centroids.to(x.dtype).contiguous(), metric=metric,
                          precision=self.ops["precision"])

    def _assign_all(self, block: Block, centroids: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A pass that assigns every row (after passes that pruned too few),
        :data:`_ASSIGN_ROWS` rows at a time written into the labels, so that no second label
        buffer of the block's size lives beside them; a changed label loses its bound l.
        Returns (dist, idx)."""
        B, m, _ = block.x.shape
        labels = self.labels[:, block.start : block.start + m]
        dist = torch.empty(B, m, dtype=torch.float32, device=self.device)
        for start in range(0, m, _ASSIGN_ROWS):
            part = slice(start, start + _ASSIGN_ROWS)
            dist[:, part], idx = self._assign(block.x[:, part], centroids, "l2")
            idx = idx.to(labels.device)
            if self.lower is not None:
                lower = self.lower[:, block.start + start : block.start + start + idx.shape[1]]
                lower.masked_fill_(labels[:, part] != idx, 0.0)
            labels[:, part] = idx
        return dist, labels.to(self.device, non_blocking=True)

    def elkan_buffers(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The "elkan" state of all this rank's rows, allocated at the first call: (labels
        [B, N] int64, stored bounds [B, N, k] float32 (the first pass that sets bounds writes
        them), cumulative shifts [B, k] float32)."""
        if self.all_lower is None:
            B = self.real_counts.numel()
            self.labels = torch.empty(B, self.n_rows, dtype=torch.int64)
            self.all_lower = torch.empty(B, self.n_rows, k, dtype=torch.float32)
            self.shift = torch.zeros(B, k, dtype=torch.float32)
        return self.labels, self.all_lower, self.shift

    def elkan_schedule(self) -> dict:
        """When the "elkan" passes score every pair, as :func:`fastdc.ops.lloyd_step.lloyd_run`
        takes it: the first ``tile_passes``, and any after one that estimated more than
        ``refresh_above`` of the distances."""
        return {"tile_passes": _ELKAN_TILE_PASSES, "refresh_above": _ELKAN_REFRESH}

    def end_run(self, n_iter: int, computed: torch.Tensor, refresh: bool) -> torch.Tensor:
        """Close ``n_iter`` passes run in one call (:func:`fastdc.ops.lloyd_step.lloyd_run`)
        that estimated computed [n_iter, B] int64 distances ("elkan"; None or anything for the
        others), the next pass scoring every pair when ``refresh``. Returns the real rows
        pruned in each, [n_iter, B], as :meth:`end_pass` would have."""
        B = self.real_counts.numel()
        self.ready = self.bounds is not None and n_iter > 0
        if self.bounds != "elkan":
            return torch.zeros(n_iter, B, dtype=torch.int64, device=self.device)
        self.passes += n_iter
        self.refresh = refresh
        return (1 - computed.double() / (self.n_rows * self.k)) * self.real_counts.double()

    def elkan_state(self, k: int) -> dict:
        """The "elkan" state for this pass as :func:`fastdc.ops.lloyd_step` takes it (labels
        [B, N] int64, lower [B, N, k] and shift [B, k] float32, all of this rank's rows; first:
        whether the pass scores every pair), allocated by the first pass; lower and shift are
        None in a pass whose bounds no pass reads (the next one scores every pair too: plain
        assign, the same labels and dist, 1.7x cheaper at 5 000 x 32, K = 100 on one Zen 3
        core). The caller adds the pass's computed distances to :attr:`computed` and, having
        grown the shifts itself, skips :meth:`moved`."""
        self.elkan_buffers(k)
        if self.refresh and self.passes < _ELKAN_TILE_PASSES - 1:
            return {"labels": self.labels, "lower": None, "shift": None, "first": True}
        return {"labels": self.labels, "lower": self.all_lower, "shift": self.shift,
                "first": self.refresh}

    def _elkan(self, block: Block, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One block of an "elkan" pass (:func:`fastdc.ops.assign_bounded`): labels and bounds
        of the block's rows updated in place; returns (dist, idx view of the labels)."""
        B, m, _ = block.x.shape
        K = centroids.shape[1]
        state = self.elkan_state(K)
        part = slice(block.start, block.start + m)
        labels, lower = self.labels[:, part], self.all_lower[:, part]
        if state["lower"] is None:  # assign's own pass: the same labels and dist
            dist, idx = self._assign(block.x, centroids, "l2")
            labels.copy_(idx)
            self.computed += m * K
            return dist, labels
        lab = labels if labels.is_contiguous() else labels.contiguous()
        low = lower if lower.is_contiguous() else lower.contiguous()
        dist, computed = self.bounded(None, x=block.x.float().contiguous(),
                                      centroids=centroids.contiguous(), labels=lab, lower=low,
                                      shift=self.shift, first=self.refresh,
                                      exact_dist=self.final)
        if lab is not labels:
            labels.copy_(lab)
            lower.copy_(low)
        self.computed += computed
        return dist, labels

    def _test(self, x: torch.Tensor, centroids: torch.Tensor, err: torch.Tensor,
              mask: torch.Tensor | None, out: tuple) -> None:
        """Bound tests and re-assignment of rows x [B, r, D], in place in out = (dist, idx,
        lower) views [B, r]; err [B, 1] float64."""
        dist, idx, lower = out
        own = assign_dist(x.contiguous(), centroids, idx, **self.ops)
        if own is None:  # computed directly: relative error <= gamma
            dist.copy_(_own_sq_dist(x, centroids, idx))
            u_sq = dist.double() * (1 + self.gamma)
        else:  # the kernel's own value: within E of the exact one
            dist.copy_(own)
            u_sq = dist.double() + err
        s = self.half_gap.gather(1, idx)
        keep = 4 * s * (s - u_sq.sqrt()) > 2 * err
        if lower is not None:
            keep |= lower.double() ** 2 - u_sq > 2 * err
        real = keep if mask is None else keep & mask
        self.pruned += real.sum(dim=1)
        self._reassign(x, centroids, ~keep, err, out)

    def _reassign(self, x: torch.Tensor, centroids: torch.Tensor, fail: torch.Tensor,
                  err: torch.Tensor, out: tuple) -> None:
        """Re-assign the rows where fail [B, m] is True, in place in out = (dist, idx, lower):
        the gathered rows, or the whole problem when most rows fail (no gather); with the second
        bound, by ``assign(..., second="bound")`` while it pays (:attr:`seed_second`; its d2, the
        kernel's second distance or a lower bound of it, bounds every other centroid's:
        ``d_j >= d2 - E``), else by ``assign``
        (rows whose label changes then lose their bound l)."""
        dist, idx, lower = out
        m = x.shape[1]
        for b, count in enumerate(fail.sum(dim=1).tolist()):
            if not count:
                continue
            sel = fail[b].nonzero().flatten() if count <= _WHOLE_BLOCK * m else slice(None)
            xs = x[b, sel].float()
            if lower is not None and self.seed_second and not self.final:
                e = err[b].expand(xs.shape[0])
                dist[b, sel], idx[b, sel], d2 = assign(xs, centroids[b], second="bound",
                                                       **self.ops)
                lower[b, sel] = _round_down((d2.double() - e).clamp_min(0).sqrt())
                continue
            new_dist, new_idx = assign(xs, centroids[b], **self.ops)
            if lower is not None:
                lower[b, sel] = lower[b, sel].masked_fill(new_idx != idx[b, sel], 0.0)
            dist[b, sel], idx[b, sel] = new_dist, new_idx

    def end_pass(self) -> torch.Tensor:
        """Close a pass: returns the real rows pruned in it, [B] (this rank): int64, or with
        "elkan" float64, the real rows times the fraction of distances the pass did not
        compute (padding rows count in that fraction)."""
        if self.bounds == "elkan":  # a few numbers per problem: Python floats, one tensor
            computed = self.computed.tolist()
            self.computed.zero_()
            total = self.n_rows * self.k
            self.passes += 1
            self.refresh = self.passes < _ELKAN_TILE_PASSES or not self.refresh and (
                sum(computed) > _ELKAN_REFRESH * total * len(computed))
            self.ready = True
            return torch.tensor([(1 - done / total) * real for done, real in
                                 zip(computed, self.real_counts.tolist(), strict=True)],
                                dtype=torch.float64)
        pruned, self.pruned = self.pruned, torch.zeros_like(self.pruned)
        if self.ready and not self.skip:
            fraction = float(pruned.sum()) / max(self.real_rows, 1)
            self.seed_second = fraction >= _SECOND_PAYS
            self.skip, self.skipped = fraction < self.test_pays(), 0
        elif self.skip:  # after _RETRY passes, test again, seeding the second bound afresh
            self.skipped += 1
            self.skip = self.skipped < _RETRY
            self.seed_second = True
        self.ready = self.bounds is not None
        return pruned

    def test_pays(self) -> float:
        """The fraction of rows a pass must prune for the next pass to test its rows."""
        return min(_TEST_PAYS + _TEST_COST / self.k, _TEST_MAX)

    def moved(self, old: torch.Tensor, new: torch.Tensor) -> None:
        """Centroids went from old to new ([B, K, D] float32): lower the bounds ``l`` by the
        largest shift of a centroid other than each row's own; with "elkan", add every
        centroid's shift to its cumulative shift (rounded up)."""
        if self.bounds == "elkan":  # the cumulative shifts, each step rounded up
            if self.shift is not None:
                grow_shifts(self.shift, old, new)
            return
        if self.lower is None or not self.ready:
            return
        shift = torch.linalg.vector_norm(new - old, dim=2).double() * (1 + self.gamma)
        if shift.shape[1] == 1:
            return  # no other centroid: l stays +inf
        top, arg = shift.topk(2, dim=1)
        # each row's shift is one of two values per problem: round them to float32 first, so
        # that the per-row temporaries are float32 (4 bytes a row), not float64
        top = (top * (1 + _LOWER_SHRINK)).float().to(self.lower.device)
        own_is_max = self.labels == arg[:, :1].to(self.lower.device)
        other = torch.where(own_is_max, top[:, 1:], top[:, :1])
        self.lower.sub_(other).mul_(1 - _LOWER_SHRINK).clamp_min_(0)


def _round_down(value: torch.Tensor) -> torch.Tensor:
    """float64 [m] -> float32 [m] no larger than the value (a lower bound stays one)."""
    return (value * (1 - _LOWER_SHRINK)).float()


def _own_sq_dist(x: torch.Tensor, centroids: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """||x_i - c_{idx_i}||^2 computed directly: x [B, m, D], centroids [B, K, D], idx [B, m]
    -> [B, m] float32, in cache-sized chunks of rows (no [B, m, D] temporary; index_select of
    whole rows is several times faster than an element-wise gather)."""
    B, m, D = x.shape
    out = torch.empty(B, m, dtype=torch.float32, device=x.device)
    step = max(1, _GATHER_ELEMS // D)
    for b in range(B):
        for start in range(0, m, step):
            diff = centroids[b].index_select(0, idx[b, start : start + step])
            diff.sub_(x[b, start : start + step])
            out[b, start : start + step] = (diff * diff).sum(dim=1)
    return out


def _nearest_other_sq(c: torch.Tensor, c_sq: torch.Tensor) -> torch.Tensor:
    """min over j != a of the squared distance c_a..c_j (expansion form, float32): c [B, K, D],
    c_sq [B, K] -> [B, K] (+inf for K == 1), in chunks of centroids."""
    B, K, _ = c.shape
    out = torch.empty(B, K, dtype=torch.float32, device=c.device)
    step = max(1, _CHUNK_ELEMS // max(1, B * K))
    for start in range(0, K, step):
        part = c[:, start : start + step]
        sq = torch.baddbmm(c_sq[:, start : start + step, None] + c_sq[:, None, :], part,
                           c.transpose(1, 2), alpha=-2.0)
        rows = torch.arange(part.shape[1], device=c.device)
        sq[:, rows, rows + start] = float("inf")
        out[:, start : start + step] = sq.min(dim=2).values
    return out
