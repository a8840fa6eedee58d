"""k-means on the CPU, side by side: fastdc ``cpu`` vs faiss-cpu vs scikit-learn vs the torch
reference — N=100 000, D=256, K=1 000, 10 Lloyd iterations from the same initial centroids.

Reported per contender: seconds per iteration, GFLOP/s (2·N·K·D per iteration), the objective
of its final centroids (evaluated the same way for everyone) and its gap to faiss's. A second
table runs the faiss-style ``Kmeans`` of both libraries until they stop by themselves (at most
CONVERGE_NITER iterations, same initial centroids): iterations run, total seconds, objective.
A third gives the peak memory beyond the input for N=1 000 000 (measured in a fresh process).
A size sweep (N, D, K as in bench_assign.py) times SWEEP_NITER iterations of both libraries on
L2-normalised Gaussian rows; ``pytest --benchmark`` runs its small cells,
``python -m benchmarks.bench_kmeans`` the full one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.report import record
from benchmarks.timing import measure
from fastdc.kmeans import Kmeans, assign, kmeans
from fastdc.ops import registry as backends

N, D, K, NITER = 100_000, 256, 1_000, 10
CONVERGE_NITER = 100  # the cap of the run-until-converged table
TABLE = "kmeans_cpu_100k_256_1k"
FLOP = 2.0 * N * K * D


@pytest.fixture(scope="module")
def data():
    """Mixture of 2 000 Gaussians (structured, like real features) and K shared initial rows."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, D), dtype=np.float32)
    x = centres[rng.integers(2000, size=N)] + 0.5 * rng.standard_normal((N, D), dtype=np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    init = x[rng.choice(N, K, replace=False)].copy()
    return x, init


def objective(x: np.ndarray, centroids) -> float:
    """Sum of squared distances of x to its nearest centroid (same evaluation for everyone)."""
    c = torch.as_tensor(np.asarray(centroids, dtype=np.float32))
    dist, _ = assign(torch.from_numpy(x), c)
    return float(dist.double().sum())


def report(name: str, per_iter: float, total: float, centroids, x) -> None:
    record(
        TABLE,
        {
            "name": name,
            "time_per_iter_s": per_iter,
            "GFLOP/s": FLOP / per_iter / 1e9,
            "total_s": total,
            "objective": objective(x, centroids),
        },
        reference="faiss-cpu",
        note=f"N={N} D={D} K={K} niter={NITER}, same init; ratio = time per iteration",
    )


def _fastdc(data, backend: str):
    if backend not in backends.available("assign"):
        pytest.skip(f"backend {backend} not available")
    x, init = data
    xt, it = torch.from_numpy(x), torch.from_numpy(init)
    kmeans(xt[:5000], 100, niter=1, backend=backend)  # warm-up (thread pools, first touch)
    run = measure(lambda: kmeans(xt, K, niter=NITER, init=it, backend=backend,
                                 record_times=True), rounds=1, warmup=0)
    res = run.result
    report(f"fastdc {backend}", res.times[-1] / NITER, run.best, res.centroids.numpy(), x)


def test_fastdc_cpu(data):
    _fastdc(data, "cpu")


def test_torch_reference(data):
    _fastdc(data, "torch")


def test_faiss_cpu(data):
    faiss = pytest.importorskip("faiss")
    x, init = data
    params = dict(niter=NITER, seed=1, max_points_per_centroid=10**7)
    if hasattr(faiss.ClusteringParameters(), "early_stop_threshold"):
        params["early_stop_threshold"] = -1.0  # exactly NITER iterations, as the others
    km = faiss.Kmeans(D, K, **params)
    run = measure(lambda: km.train(x, init_centroids=init), rounds=1, warmup=0)
    report("faiss-cpu", km.iteration_stats[-1]["time"] / NITER, run.best, km.centroids, x)


@pytest.mark.parametrize("impl", ["fastdc Kmeans", "faiss Kmeans"])
def test_until_converged(data, impl):
    """Both faiss-style wrappers with their default stop rule (fastdc: no assignment changed;
    faiss: the objective did not change), from the same initial centroids."""
    x, init = data
    if impl == "faiss Kmeans":
        cls = pytest.importorskip("faiss").Kmeans
    else:
        cls = Kmeans
    km = cls(D, K, niter=CONVERGE_NITER, seed=1, max_points_per_centroid=10**7)
    run = measure(lambda: km.train(x, init_centroids=init), rounds=1, warmup=0)
    iters = len(km.iteration_stats)
    record(
        "kmeans_cpu_100k_256_1k_until_converged",
        {"name": impl, "total_s": run.best, "iterations": iters,
         "time_per_iter_s": run.best / iters, "objective": objective(x, km.centroids)},
        reference="faiss Kmeans",
        note=f"N={N} D={D} K={K}, at most {CONVERGE_NITER} iterations, same init, default "
        "stop rules",
    )
    assert 1 <= iters <= CONVERGE_NITER


def test_sklearn_lloyd(data):
    cluster = pytest.importorskip("sklearn.cluster")
    x, init = data
    km = cluster.KMeans(K, init=init, n_init=1, max_iter=NITER, tol=0.0, algorithm="lloyd")
    run = measure(lambda: km.fit(x), rounds=1, warmup=0)
    report("sklearn lloyd", run.best / km.n_iter_, run.best, km.cluster_centers_, x)


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("niter", [1, 5])
@pytest.mark.parametrize("impl", ["fastdc-cpu", "faiss-cpu"])
def test_peak_memory_1m(impl, niter):
    """Peak RSS beyond the input for N=1 000 000, D=256, K=1 000 (niter iterations: with 5,
    fastdc's automatic pruning is on and holds its per-row bounds)."""
    if impl == "faiss-cpu":
        pytest.importorskip("faiss")
    elif "cpu" not in backends.available("assign"):
        pytest.skip("cpu backend not available")
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory_probe", impl, "1000000", "256", "1000",
         str(niter)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    record(
        "kmeans_memory_1m_256_1k",
        {"name": f"{impl}, {niter} it.", "extra_peak_MB": result["extra_mb"],
         "input_MB": result["input_mb"], "time_s": result["time_s"]},
        note="peak RSS beyond the input, fresh process, niter iterations + final assignment "
        "(faiss: Kmeans.train, then index.search, as DeepCluster does); fastdc's defaults "
        "(pruning from 2 iterations at this size: its bounds cost about 12 bytes a row)",
    )
    assert result["extra_mb"] > 0


PRUNE_N = int(os.environ.get("FASTDC_BENCH_PRUNE_N", "20000"))  # 100000 for the full table
PRUNE_NITER = 20
PRUNE_FEATURES = os.environ.get("FASTDC_BENCH_PRUNE_FEATURES")  # a FeatureStore folder


def _prune_data(name: str) -> tuple[np.ndarray, int]:
    """(rows [n, d] float32, k) of one pruning data set: an L2-normalised Gaussian mixture
    (K = N / 100), uniform rows, or the trainer's whitened, L2-normalised features
    (``python -m fastdc.train --feature-cache DIR`` leaves them in DIR; K = N / 50)."""
    rng = np.random.default_rng(1)
    if name == "mixture":
        k = PRUNE_N // 100
        centres = rng.standard_normal((k, D), dtype=np.float32)
        x = centres[rng.integers(k, size=PRUNE_N)]
        x += 0.3 * rng.standard_normal((PRUNE_N, D), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True), k
    if name == "uniform":
        return rng.random((PRUNE_N, D), dtype=np.float32), PRUNE_N // 100
    if not PRUNE_FEATURES:
        pytest.skip("set FASTDC_BENCH_PRUNE_FEATURES to a trainer's --feature-cache folder")
    meta = json.loads((Path(PRUNE_FEATURES) / "whitened.json").read_text())
    x = np.fromfile(Path(PRUNE_FEATURES) / meta["file"], dtype=np.float32)
    x = x.reshape(meta["shape"])
    return x / np.linalg.norm(x, axis=1, keepdims=True), len(x) // 50


def _initial_rows(x: np.ndarray, k: int) -> np.ndarray:
    """k distinct rows of x [n, d] (a fixed draw): the pruning runs' initial centroids [k, d]."""
    return x[np.random.default_rng(2).choice(len(x), k, replace=False)].copy()


PRUNE_RUNS = [(False, "fp32"), (False, "default"), ("centres", "default"), ("second", "fp32"),
              ("second", "default"), ("elkan", "default"), (None, "default")]
"""(prune, precision) of the runs: "default" takes the bf16 pass where the CPU has it; prune None
is the automatic choice."""


@pytest.mark.parametrize("name", ["mixture", "deepcluster", "uniform"])
def test_pruning(name):
    """PRUNE_NITER Lloyd iterations from the same initial rows: fastdc pruned ("centres",
    "second") and unpruned, float32 only and with the bf16 pass, against faiss.Kmeans;
    assignments checked equal to the unpruned float32 run's, pruned fractions per iteration
    recorded."""
    x, k = _prune_data(name)
    init = _initial_rows(x, k)
    xt, it = torch.from_numpy(x), torch.from_numpy(init)
    table = f"kmeans_prune_{name}_{len(x)}_{x.shape[1]}_{k}"
    note = (f"N={len(x)} D={x.shape[1]} K={k} niter={PRUNE_NITER}, same init; "
            "ratio = total time")
    runs = {}
    kmeans(xt, k, niter=1, init=it)  # warm-up: thread pools, first touch of the rows
    for prune, precision in PRUNE_RUNS:
        run = measure(lambda p=prune, q=precision: kmeans(xt, k, niter=PRUNE_NITER, init=it,
                                                         prune=p, precision=q),
                      rounds=1, warmup=0)
        runs[prune, precision] = res = run.result
        pruned = [] if res.pruned is None else [round(float(v), 3) for v in res.pruned]
        record(table, {"name": f"fastdc prune={prune} {precision}", "total_s": run.best,
                       "objective": objective(x, res.centroids.numpy()),
                       "same_assignments": bool(torch.equal(res.assignments,
                                                            runs[False, "fp32"].assignments)),
                       "pruned_per_iter": pruned}, note=note)
    faiss = pytest.importorskip("faiss")
    km = faiss.Kmeans(x.shape[1], k, niter=PRUNE_NITER, seed=1, max_points_per_centroid=10**7,
                      early_stop_threshold=-1.0)
    run = measure(lambda: km.train(x, init_centroids=init), rounds=1, warmup=0)
    record(table, {"name": "faiss-cpu", "total_s": run.best,
                   "objective": objective(x, km.centroids)}, reference="faiss-cpu", note=note)
    assert all(torch.equal(r.assignments, runs[False, "fp32"].assignments) for r in runs.values())


# --- size sweep: fastdc's defaults against faiss.Kmeans, same initial centroids -------------

SWEEP_NITER = 5
KMEANS_SWEEP_TABLE = "kmeans_sweep_cpu"


def kmeans_sweep_row(n: int, d: int, k: int, faiss) -> dict:
    """Seconds of SWEEP_NITER iterations of fastdc (defaults) and faiss from the same rows."""
    g = torch.Generator().manual_seed(n + d + k)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    init = x[torch.randperm(n, generator=g)[:k]].clone()
    row = {"name": f"N={n} D={d} K={k}"}
    run = measure(lambda: kmeans(x, k, niter=SWEEP_NITER, init=init, labels=False), rounds=1)
    row["fastdc_s"] = run.best
    row["GFLOP/s"] = 2.0 * n * k * d * SWEEP_NITER / run.best / 1e9
    if faiss is not None:
        km = faiss.Kmeans(d, k, niter=SWEEP_NITER, max_points_per_centroid=10**9,
                          early_stop_threshold=-1.0)
        xn, cn = x.numpy(), init.numpy()
        row["faiss_s"] = measure(lambda: km.train(xn, init_centroids=cn), rounds=1).best
        row["x_vs_faiss"] = row["faiss_s"] / row["fastdc_s"]
    return row


def run_kmeans_sweep(ns, ds, ks) -> list:
    """Record the sweep table; returns the skipped cells (too big for this machine)."""
    from benchmarks.bench_assign import sweep_cells

    try:
        import faiss
    except ImportError:
        faiss = None
    cells, skipped = sweep_cells(ns, ds, ks)
    for n, d, k in cells:
        if n < 10 * k:  # fewer than 10 rows a cluster: not a clustering (faiss refuses it)
            continue
        record(KMEANS_SWEEP_TABLE, kmeans_sweep_row(n, d, k, faiss),
               note=f"{SWEEP_NITER} Lloyd iterations (faiss forced to run them all; fastdc with "
               "labels=False, no final assignment pass, as faiss's train), same initial "
               "rows, L2-normalised Gaussian rows, 1 timed run after a warm-up; fastdc with its "
               "defaults (bf16 pass from K=256 where the CPU has it, pruning from N*K=2^23 and "
               "N >= 32 K); "
               "cells with N < 10 K left out; skipped (one assign > 6e10 flop): "
               + ("; ".join(f"N={n} D={d} K={k}" for n, d, k in skipped) or "none"))
    return skipped


def test_kmeans_sweep_small():
    if "cpu" not in backends.available("assign"):
        pytest.skip("cpu backend not available")
    assert not run_kmeans_sweep((10_000,), (64, 256), (100, 1_000))


# --- small problems: where per-call overhead counts -------------------------------------------

SMALL_CASES = [(5_000, 32, 100), (10_000, 256, 100), (20_000, 64, 300)]
"""(N, D, K): the trainer's whitened features of the built-in run, DeepCluster's clustering
step on 10k features, and a mid-sized cell."""
SMALL_NITER = 20
SMALL_ROUNDS = 9
SMALL_TABLE = "kmeans_small_cpu"


def deepcluster_like(n: int, d: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows [n, d] float32, k initial rows): a ReLU-ed mixture of 3k Gaussians in 2d
    dimensions (CNN-like features), PCA-whitened to d dimensions and L2-normalised, as
    DeepCluster's preprocess_features leaves them."""
    from fastdc.engine import pca_whiten

    rng = np.random.default_rng(n + d + k)
    centres = rng.standard_normal((3 * k, 2 * d), dtype=np.float32)
    raw = centres[rng.integers(3 * k, size=n)]
    raw += 0.7 * rng.standard_normal((n, 2 * d), dtype=np.float32)
    x = pca_whiten(torch.from_numpy(np.maximum(raw, 0)), dim=d, eigen_power=-0.5)
    x = torch.nn.functional.normalize(x, dim=1).numpy()
    return np.ascontiguousarray(x), x[rng.choice(n, k, replace=False)].copy()


def _small_data(case: tuple[int, int, int] | str) -> tuple[np.ndarray, np.ndarray, str]:
    """(rows, initial rows, label) of a small case: DeepCluster-like rows of shape (n, d, k), or
    "built-in features": the trainer's whitened features (``FASTDC_BENCH_PRUNE_FEATURES``;
    the pruning runs' rows and initial rows)."""
    if case != "built-in features":
        n, d, k = case
        return (*deepcluster_like(n, d, k), f"N={n} D={d} K={k}")
    x, k = _prune_data("deepcluster")
    init = _initial_rows(x, k)
    return x, init, f"built-in features N={len(x)} D={x.shape[1]} K={k}"


@pytest.mark.parametrize("threads", [None, 1], ids=["all-threads", "1-thread"])
@pytest.mark.parametrize("case", [*SMALL_CASES, "built-in features"],
                         ids=lambda c: c if isinstance(c, str) else "x".join(map(str, c)))
def test_small_problems(case, threads):
    """SMALL_NITER Lloyd iterations from the same initial rows, fastdc (defaults) against
    faiss.Kmeans (all iterations), SMALL_ROUNDS rounds alternating the two after one warm-up
    each, each timed call after an untimed one of the same library; the best round of each.
    Assignments checked equal to fastdc's unpruned float32 loop; the load average is read
    before and after. threads=1: both libraries on one thread
    (what each does per core, less sensitive to other processes on a shared machine)."""
    faiss = pytest.importorskip("faiss")
    if threads is None:
        _small_problem(case, faiss, "")
        return
    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    try:
        _small_problem(case, faiss, f", {threads} thread")
    finally:
        torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])


def _small_problem(case: tuple[int, int, int] | str, faiss, label: str) -> None:
    x, init, name = _small_data(case)
    d, k = x.shape[1], len(init)
    xt, it = torch.from_numpy(x), torch.from_numpy(init)
    km = faiss.Kmeans(d, k, niter=SMALL_NITER, seed=1, max_points_per_centroid=10**7,
                      early_stop_threshold=-1.0)

    def ours():  # the same passes as faiss's train: no final assignment pass
        return kmeans(xt, k, niter=SMALL_NITER, init=it, labels=False)

    def theirs():
        km.train(x, init_centroids=init)

    load = os.getloadavg()[0]
    ours(), theirs()
    mine, faiss_s = [], []
    for _ in range(SMALL_ROUNDS):
        # each timed call follows an untimed one of the same library: the other's idle
        # threads (faiss's OpenMP ones spin for a while after a call) have settled by then
        mine.append(measure(ours, rounds=1, warmup=1))
        faiss_s.append(measure(theirs, rounds=1, warmup=1).best)
    res = kmeans(xt, k, niter=SMALL_NITER, init=it)  # the labels of the timed runs' centroids
    assert torch.equal(res.centroids, mine[-1].result.centroids)
    ref = kmeans(xt, k, niter=SMALL_NITER, init=it, prune=False, precision="fp32")
    fastdc_s = min(m.best for m in mine)
    record(SMALL_TABLE, {
        "name": f"{name}{label}", "fastdc_s": fastdc_s, "faiss_s": min(faiss_s),
        "x_vs_faiss": min(faiss_s) / fastdc_s,
        "objective": objective(x, res.centroids.numpy()),
        "faiss_objective": objective(x, km.centroids),
        "same_assignments": bool(torch.equal(res.assignments, ref.assignments)),
        "loadavg_1min": [load, os.getloadavg()[0]],
    }, note=f"{SMALL_NITER} Lloyd iterations (fastdc with labels=False: no final assignment "
            "pass, as faiss's train), same initial rows, DeepCluster-like rows "
            "(PCA-whitened, L2-normalised ReLU mixture); best of "
            f"{SMALL_ROUNDS} alternating rounds, each timed call after an untimed one of the same "
            "library; x_vs_faiss = faiss_s / fastdc_s; built-in "
            "features: the trainer's whitened features (FASTDC_BENCH_PRUNE_FEATURES)")
    assert torch.equal(res.assignments, ref.assignments)


if __name__ == "__main__":
    from benchmarks.bench_assign import SWEEP_D, SWEEP_K, SWEEP_N, _Printer
    from benchmarks.report import print_tables

    run_kmeans_sweep(SWEEP_N, SWEEP_D, SWEEP_K)
    print_tables(_Printer())
