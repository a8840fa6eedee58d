"""The "elkan" assignment passes against plain ``assign``, pass by pass, without the rest of the
Lloyd loop: the 20 assignment passes of a k-means run replayed along the unpruned loop's own
centroids, through the loop's :class:`fastdc.engine.pruning.Assigner` (its first passes score
every pair, the later ones read the bounds back; the shifts are the loop's). Only the
assignment calls are timed, so the per-pass cost of the bounded kernel can be tuned apart from
the loop's Python, on one thread (the steadiest figure on a shared machine) and on all.

Rows: DeepCluster-like (PCA-whitened, L2-normalised ReLU mixtures) at 5 000 x 32, 10 000 x 64
and 10 000 x 256 with K = 100, and the built-in run's whitened features when
``FASTDC_BENCH_PRUNE_FEATURES`` names a ``--feature-cache`` folder.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.bench_kmeans import PRUNE_FEATURES, _prune_data, deepcluster_like
from benchmarks.report import record
from benchmarks.timing import measure
from fastdc.engine import kmeans
from fastdc.engine.pruning import _ELKAN_TILE_PASSES, Assigner
from fastdc.engine.rows import TensorRows
from fastdc.ops import registry
from fastdc.ops.threads import kernels_own_the_cores

NITER = 20
ROUNDS = 5  # alternating rounds of both replays; the best of each
TABLE = "assign_bounded_replay_cpu"
CASES = [("deepcluster-like", 5_000, 32, 100), ("deepcluster-like", 10_000, 64, 100),
         ("deepcluster-like", 10_000, 256, 100), ("built-in features", 0, 0, 0)]


def _rows(case: tuple[str, int, int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(x [N, D] float32, initial centroids [K, D], K) of one case."""
    name, n, d, k = case
    if name == "built-in features":
        if not PRUNE_FEATURES:
            pytest.skip("set FASTDC_BENCH_PRUNE_FEATURES to a trainer's --feature-cache folder")
        x, k = _prune_data("deepcluster")
        rng = np.random.default_rng(0)
        return torch.from_numpy(x), torch.from_numpy(x[rng.choice(len(x), k, replace=False)]), k
    x, init = deepcluster_like(n, d, k)
    return torch.from_numpy(x), torch.from_numpy(init), k


def _replay(x: torch.Tensor, path: list[torch.Tensor], bounds: str | None
            ) -> tuple[list[float], list[float], torch.Tensor]:
    """Seconds of each assignment pass of a loop whose centroids follow ``path`` ([1, K, D]
    each, NITER + 1 of them), the fraction of distances each pass skipped (0 without bounds)
    and the last pass's labels [1, N]."""
    rows = TensorRows(x[None])
    assigner = Assigner(rows, "l2", "cpu", bounds)
    seconds, skipped = [], []
    for it in range(NITER):
        assigner.begin(path[it])
        (block,) = rows.blocks()
        timing = measure(lambda: assigner(block, path[it]), rounds=1, warmup=0)  # noqa: B023
        seconds.append(timing.best)
        _, idx = timing.result
        skipped.append(float(assigner.end_pass().sum()) / x.shape[0])
        assigner.moved(path[it], path[it + 1])
    return seconds, skipped, idx.clone()


@pytest.mark.parametrize("threads", [1, None])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]} {c[1]}x{c[2]}")
def test_elkan_passes_against_assign(case, threads):
    if "cpu" not in registry.available("assign_bounded"):
        pytest.skip("the cpu backend is not built")
    x, init, k = _rows(case)
    # the unpruned loop's centroids after 0, 1, ..., NITER iterations (the same as "elkan"'s)
    path = [init[None].contiguous()] + [
        kmeans(x, k, niter=it, init=init, labels=False, prune=False).centroids[None]
        for it in range(1, NITER + 1)]
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with kernels_own_the_cores():
            best = {"elkan": None, "plain": None}
            for _ in range(ROUNDS):
                for name, bounds in (("elkan", "elkan"), ("plain", None)):
                    run = _replay(x, path, bounds)
                    if best[name] is None or sum(run[0]) < sum(best[name][0]):
                        best[name] = run
    finally:
        torch.set_num_threads(before)
    (elkan, skipped, labels), (plain, _, plain_labels) = best["elkan"], best["plain"]
    tile = _ELKAN_TILE_PASSES
    n, d = x.shape
    record(TABLE, {
        "name": f"{case[0]} {n}x{d} K={k}, {threads or torch.get_num_threads()} thread(s)",
        "assign_s": sum(plain), "elkan_s": sum(elkan), "x_vs_assign": sum(plain) / sum(elkan),
        "assign_pass_ms": 1e3 * float(np.median(plain)),
        "elkan_tile_pass_ms": 1e3 * float(np.mean(elkan[:tile])),
        "elkan_bounded_pass_ms": 1e3 * float(np.median(elkan[tile:])),
        "skipped_after_tile_passes": float(np.mean(skipped[tile:])),
    }, note=f"{NITER} assignment passes replayed along the unpruned loop's centroids, only the "
            f"assignment calls timed (the loop's Assigner); best of {ROUNDS} alternating "
            "rounds; x_vs_assign = assign_s / elkan_s; tile passes: the first "
            f"{tile}, which score every pair; skipped: the fraction of distances the later "
            "passes did not compute")
    assert torch.equal(labels, plain_labels)  # the bounds change the work, never the labels
