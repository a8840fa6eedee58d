"""Stopping the Lloyd loop early (fastdc.engine.convergence): at a fixed point the result equals
the full run's, for every rows source; faiss's early_stop_threshold; the faiss-style wrapper."""

import numpy as np
import pytest
import torch

from fastdc.engine import FeatureStore, kmeans, kmeans_streaming
from fastdc.kmeans import Kmeans
from tests.helpers import backend_params

KMEANS_BACKENDS = [p for p in backend_params("assign") if p.values[0] in ("torch", "cpu")]


def uniform(n=1000, d=32, seed=0, batch=None) -> torch.Tensor:
    """Structureless rows: k-means needs many iterations to settle on them."""
    shape = (n, d) if batch is None else (batch, n, d)
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def assert_stopped_run_equals_full_run(stopped, full):
    """stopped: a run with early_stop_threshold=0 that reached a fixed point; full: the same
    run without a stop test. Same centroids, labels, distances; obj/nsplit/imbalance are the
    full run's first n_iter entries, and the full run's later entries repeat the last one."""
    n = stopped.n_iter
    assert stopped.stop_reason == "converged" and 1 <= n < full.n_iter
    assert torch.equal(stopped.centroids, full.centroids)
    assert torch.equal(stopped.assignments, full.assignments)
    assert torch.equal(stopped.dist, full.dist)
    for name in ("obj", "nsplit", "imbalance"):
        got, ref = getattr(stopped, name), getattr(full, name)
        assert torch.equal(got, ref[:n]), name
        assert bool((ref[n:] == got[-1]).all()), name  # a fixed point repeats itself
    assert full.changed is None and full.stop_reason is None
    assert int(stopped.changed[-1].sum()) == 0 and int(stopped.nsplit[-1].sum()) == 0


@pytest.mark.parametrize("backend,device", KMEANS_BACKENDS)
@pytest.mark.parametrize("mode", ["l2", "spherical", "int_centroids"])
def test_fixed_point_stop_gives_the_full_run(backend, device, mode):
    x = uniform().to(device)
    if mode == "spherical":
        x = x / x.norm(dim=1, keepdim=True)
    if mode == "int_centroids":
        x = (x * 40).round()
    opts = dict(niter=150, seed=1, backend=backend, spherical=mode == "spherical",
                int_centroids=mode == "int_centroids")
    full = kmeans(x, 10, **opts)
    stopped = kmeans(x, 10, early_stop_threshold=0.0, **opts)
    assert_stopped_run_equals_full_run(stopped, full)
    assert int(stopped.changed[0]) == 1000  # iteration 0 counts every row
    assert bool((stopped.changed[1:-1] > 0).all())  # it stopped at the first fixed point


def test_no_stop_at_an_iteration_that_resplits():
    same = torch.full((50, 6), 1.5)  # one distinct point, k = 5: re-splits in every iteration
    res = kmeans(same, 5, niter=12, early_stop_threshold=0.0)
    assert res.n_iter == 12 and res.stop_reason is None
    assert bool((res.nsplit > 0).all())
    x = uniform(600, 4, seed=8)
    init = x[:1].repeat(6, 1)  # six equal seeds: five clusters are re-split in iteration 0
    full = kmeans(x, 6, niter=100, init=init, seed=3)
    assert int(full.nsplit[0]) == 5  # premise: the run re-splits
    stopped = kmeans(x, 6, niter=100, init=init, seed=3, early_stop_threshold=0.0)
    assert_stopped_run_equals_full_run(stopped, full)


def test_masked_batch_stops_when_every_problem_has_converged():
    x = uniform(500, 8, seed=2, batch=3)
    mask = torch.ones(3, 500, dtype=torch.bool)
    mask[1, 300:] = False
    init = x[:, :6].clone()
    full = kmeans(x, 6, niter=150, mask=mask, init=init)
    stopped = kmeans(x, 6, niter=150, mask=mask, init=init, early_stop_threshold=0.0)
    assert_stopped_run_equals_full_run(stopped, full)
    alone = [kmeans(x[b, mask[b]], 6, niter=150, init=init[b], early_stop_threshold=0.0)
             for b in range(3)]
    assert len({r.n_iter for r in alone}) > 1  # premise: the problems converge at different times
    assert stopped.n_iter == max(r.n_iter for r in alone)
    assert int(stopped.changed[0, 1]) == 300  # padding rows never count


@pytest.mark.parametrize("chunk", [1000, 333, 7])
def test_streamed_store_stops_like_the_in_memory_loop(chunk):
    x = uniform(1000, 12, seed=4)
    store = FeatureStore.from_tensor(x)
    stopped = kmeans_streaming(store, 8, niter=150, seed=5, chunk_rows=chunk,
                               early_stop_threshold=0.0)
    full = kmeans_streaming(store, 8, niter=150, seed=5, chunk_rows=chunk)
    assert_stopped_run_equals_full_run(stopped, full)
    same = kmeans(x, 8, niter=150, seed=5, chunk_rows=chunk, early_stop_threshold=0.0)
    assert torch.equal(same.centroids, stopped.centroids)
    assert torch.equal(same.changed, stopped.changed) and torch.equal(same.obj, stopped.obj)


def test_threshold_stops_on_the_relative_objective_change():
    x = uniform(2000, 16, seed=6)
    thr = 1e-3
    res = kmeans(x, 20, niter=200, seed=7, early_stop_threshold=thr)
    obj = res.obj
    rel = ((obj[:-1] - obj[1:]).abs() / obj[:-1].abs()).tolist()
    assert res.stop_reason == "threshold"
    assert rel[-1] <= thr and all(r > thr for r in rel[:-1])
    assert res.n_iter < kmeans(x, 20, niter=200, seed=7, early_stop_threshold=0.0).n_iter


@pytest.mark.parametrize("threshold", [None, -1.0])
def test_no_stop_test_runs_every_iteration(threshold):
    res = kmeans(uniform(300, 4), 3, niter=60, early_stop_threshold=threshold)
    assert res.n_iter == 60 and res.changed is None and res.stop_reason is None


def test_verbose_says_where_it_converged(capsys):
    res = kmeans(uniform(400, 4), 4, niter=100, verbose=True, early_stop_threshold=0.0)
    err = capsys.readouterr().err
    assert f"Converged at iteration {res.n_iter - 1}: no assignment changed" in err
    assert err.count("  Iteration ") == res.n_iter


@pytest.mark.parametrize("bad", [float("nan"), "0", True])
def test_bad_threshold_is_refused(bad):
    with pytest.raises(ValueError, match="early_stop_threshold"):
        kmeans(uniform(50, 3), 2, early_stop_threshold=bad)
    with pytest.raises(ValueError, match="early_stop_threshold"):
        Kmeans(3, 2, early_stop_threshold=bad)


# ---- the faiss-style wrapper -----------------------------------------------------------------


def test_wrapper_stops_early_on_uniform_data_like_faiss():
    """faiss's own convergence test (tests/test_clustering.py, TestEarlyStopping), against the
    wrapper: 1000 iterations allowed on uniform data, far fewer run."""
    x = np.random.default_rng(42).uniform(size=(1000, 32)).astype(np.float32)
    km = Kmeans(32, 10, niter=1000)
    obj = km.train(x)
    n = len(km.iteration_stats)
    assert n < 1000 and km.converged_at == [n - 1]
    assert list(km.obj) == [st["obj"] for st in km.iteration_stats] and obj == km.obj[-1]
    full = Kmeans(32, 10, niter=n + 20, early_stop_threshold=-1.0)
    full.train(x)
    assert len(full.iteration_stats) == n + 20 and full.converged_at == [None]
    np.testing.assert_array_equal(km.centroids, full.centroids)
    np.testing.assert_array_equal(km.obj, full.obj[:n])


def test_wrapper_threshold_and_redos():
    x = np.random.default_rng(3).uniform(size=(1500, 8)).astype(np.float32)
    exact = Kmeans(8, 12, niter=300, nredo=2)
    exact.train(x)
    loose = Kmeans(8, 12, niter=300, nredo=2, early_stop_threshold=0.01)
    loose.train(x)
    assert len(exact.converged_at) == 2 and None not in exact.converged_at
    assert all(a < b for a, b in zip(loose.converged_at, exact.converged_at, strict=True))
    assert len(loose.obj) == sum(loose.converged_at) + 2


@pytest.mark.gpu
def test_fixed_point_stop_on_cuda_in_memory_and_streamed():
    """On a GPU the labels of a streamed store are kept in pinned host memory; deterministic
    mode makes the GPU backends' sums bit-reproducible, so the stopped run equals the full."""
    x = uniform(3000, 24, seed=9)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        full = kmeans(x.cuda(), 12, niter=150, seed=2)
        stopped = kmeans(x.cuda(), 12, niter=150, seed=2, early_stop_threshold=0.0)
        assert_stopped_run_equals_full_run(stopped, full)
        streamed = kmeans_streaming(FeatureStore.from_tensor(x), 12, niter=150, seed=2,
                                    device="cuda", chunk_rows=500, early_stop_threshold=0.0)
        chunked = kmeans(x.cuda(), 12, niter=150, seed=2, chunk_rows=500,
                         early_stop_threshold=0.0)
    finally:
        torch.use_deterministic_algorithms(was)
    assert streamed.stop_reason == "converged"
    assert torch.equal(streamed.changed, chunked.changed)
    assert torch.equal(streamed.centroids, chunked.centroids)
    assert torch.equal(streamed.assignments, chunked.assignments.cpu())
