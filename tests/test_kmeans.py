"""fastdc.kmeans: the functional k-means (properties) and the faiss-compatible Kmeans class."""

import warnings

import numpy as np
import pytest
import torch

from fastdc.kmeans import Kmeans, initial_centroids, kmeans
from tests.helpers import backend_params, blobs

faiss = pytest.importorskip("faiss")

# backends that can run a whole k-means on this machine (the interpreter is too slow for that)
KMEANS_BACKENDS = [p for p in backend_params("assign") if p.values[0] in ("torch", "cpu")]


@pytest.mark.parametrize("backend,device", KMEANS_BACKENDS)
def test_objective_never_increases(backend, device):
    x = blobs(3000, 24, 40, seed=1, spread=1.0).to(device)
    res = kmeans(x, 30, niter=12, seed=0, backend=backend)
    obj = res.obj.cpu()
    assert int(res.nsplit.sum()) == 0
    assert bool((obj[1:] <= obj[:-1] * (1 + 1e-6)).all()), obj


@pytest.mark.parametrize("backend,device", KMEANS_BACKENDS)
def test_backend_matches_reference(backend, device):
    x = blobs(2000, 19, 10, seed=2, spread=1.0)
    ref = kmeans(x, 16, niter=6, seed=3, backend="torch")
    got = kmeans(x.to(device), 16, niter=6, seed=3, backend=backend)
    torch.testing.assert_close(got.obj.cpu(), ref.obj, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(got.centroids.cpu(), ref.centroids, rtol=1e-4, atol=1e-4)
    assert (got.assignments.cpu() == ref.assignments).float().mean() > 0.999


@pytest.mark.parametrize("backend,device", KMEANS_BACKENDS)
def test_labels_false_skips_only_the_final_pass(backend, device, monkeypatch):
    x = blobs(1500, 11, 12, seed=4, spread=1.0).to(device)
    full = kmeans(x, 10, niter=5, seed=1, backend=backend)
    import fastdc.engine.lloyd as lloyd

    calls = []
    real = lloyd._labels_pass
    monkeypatch.setattr(lloyd, "_labels_pass", lambda *a: calls.append(1) or real(*a))
    kmeans(x, 10, niter=5, seed=1, backend=backend)
    assert len(calls) == 1  # the final assignment pass, after the iterations
    bare = kmeans(x, 10, niter=5, seed=1, backend=backend, labels=False)
    assert len(calls) == 1  # none without labels
    assert bare.assignments is None and bare.dist is None
    assert torch.equal(bare.centroids, full.centroids) and torch.equal(bare.obj, full.obj)
    km = Kmeans(11, 10, niter=5, seed=1, backend=backend)  # the drop-in trains without labels
    km.train(x.cpu().numpy())
    _, idx = km.index.search(x.cpu().numpy(), 1)
    assert (torch.from_numpy(idx[:, 0]) == kmeans(x, 10, niter=5, seed=1, backend=backend,
                                                   init="random").assignments.cpu()).all()


@pytest.mark.parametrize("backend,device", KMEANS_BACKENDS)
def test_empty_clusters_are_resplit(backend, device):
    x = blobs(400, 5, 4, seed=4, spread=0.05).to(device)
    init = x[:1].repeat(4, 1)  # four identical seeds: three clusters start empty
    res = kmeans(x, 4, niter=8, seed=0, init=init, backend=backend)
    assert int(res.nsplit[0]) == 3
    assert torch.bincount(res.assignments.cpu(), minlength=4).min() > 0


@pytest.mark.parametrize("backend,device", KMEANS_BACKENDS)
def test_degenerate_inputs_cluster_without_error(backend, device):
    same = torch.full((50, 6), 1.5, device=device)
    res = kmeans(same, 5, niter=3, backend=backend)
    assert float(res.obj[-1]) == pytest.approx(0.0, abs=1e-3)  # fp32 rounding of |x|²+|c|²-2xc
    few = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]], device=device).repeat(10, 1)
    res = kmeans(few, 5, niter=4, backend=backend)
    assert float(res.obj[-1]) == pytest.approx(0.0, abs=1e-3)
    assert res.centroids.shape == (5, 2)


def test_same_seed_same_result_and_seed_matters():
    x = blobs(1500, 10, 12, seed=5, spread=1.0)
    a, b = kmeans(x, 12, niter=5, seed=9), kmeans(x, 12, niter=5, seed=9)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.obj, b.obj)
    c = kmeans(x, 12, niter=5, seed=10)
    assert not torch.equal(a.centroids, c.centroids)


@pytest.mark.parametrize("backend,device", KMEANS_BACKENDS)
def test_result_independent_of_thread_count(backend, device):
    x = blobs(5000, 33, 20, seed=6, spread=1.0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kmeans(x, 20, niter=4, seed=1, backend=backend)
        torch.set_num_threads(2)
        two = kmeans(x, 20, niter=4, seed=1, backend=backend)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one.centroids, two.centroids) and torch.equal(one.obj, two.obj)


def test_batched_matches_separate_runs():
    x = torch.stack([blobs(600, 8, 6, seed=s, spread=1.0) for s in range(3)])
    init = x[:, :6].clone()
    batched = kmeans(x, 6, niter=5, init=init)
    for b in range(3):
        single = kmeans(x[b], 6, niter=5, init=init[b])
        torch.testing.assert_close(batched.centroids[b], single.centroids)
        torch.testing.assert_close(batched.obj[:, b], single.obj)


def test_kmeans_plus_plus_is_seeded_and_picks_rows():
    x = blobs(500, 4, 8, seed=7)
    a = initial_centroids(x[None], 8, init="kmeans++", seed=3)
    b = initial_centroids(x[None], 8, init="kmeans++", seed=3)
    assert torch.equal(a, b)
    assert all(bool((x == row).all(dim=1).any()) for row in a[0])
    res = kmeans(x, 8, niter=5, init="kmeans++")
    assert res.centroids.shape == (8, 4)


def test_spherical_gives_unit_centroids():
    x = torch.nn.functional.normalize(blobs(800, 16, 5, seed=8), dim=1)
    res = kmeans(x, 5, niter=5, spherical=True)
    torch.testing.assert_close(res.centroids.norm(dim=1), torch.ones(5))
    assert bool((res.obj[1:] >= res.obj[:-1] - 1e-3).all())  # inner products grow


@pytest.mark.parametrize(
    "x,k,match,exc",
    [
        (torch.randn(5, 3), 10, "fewer than k=10", ValueError),
        (torch.randn(5, 3), 0, "k must be >= 1", ValueError),
        (torch.randn(0, 3), 1, "empty", ValueError),
        (torch.randn(5), 1, r"\[N, D\]", ValueError),
        (torch.randn(5, 3, dtype=torch.complex64), 1, "complex", TypeError),
        (np.zeros((5, 3)), 1, "torch.Tensor", TypeError),
    ],
)
def test_bad_inputs_raise_clear_errors(x, k, match, exc):
    with pytest.raises(exc, match=match):
        kmeans(x, k, niter=1)


def test_nan_row_is_named():
    x = torch.randn(20, 4)
    x[13, 2] = float("nan")
    with pytest.raises(ValueError, match="row 13"):
        kmeans(x, 3)
    x[13, 2] = float("inf")
    with pytest.raises(ValueError, match="row 13"):
        Kmeans(4, 3, min_points_per_centroid=1).train(x.numpy())


# ---- the faiss-compatible class ------------------------------------------------------------


def gaussian(n=20000, d=32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)


def test_same_init_same_objective_as_faiss():
    x = gaussian()
    init = x[:64].copy()
    ours = Kmeans(32, 64, niter=10, max_points_per_centroid=1000)
    theirs = faiss.Kmeans(32, 64, niter=10, max_points_per_centroid=1000)
    o, f = ours.train(x, init_centroids=init), theirs.train(x, init_centroids=init)
    assert o == pytest.approx(f, rel=1e-3)  # float32 update rounding differs → near ties drift
    np.testing.assert_allclose(ours.obj, theirs.obj, rtol=1e-3)


@pytest.mark.filterwarnings("ignore:Sampling a subset")  # both libraries subsample alike
def test_own_init_objective_within_one_percent_of_faiss():
    x = gaussian(seed=1)
    o = Kmeans(32, 64, niter=15, seed=5).train(x)
    f = faiss.Kmeans(32, 64, niter=15, seed=5).train(x)
    assert abs(o - f) / f < 0.01


@pytest.mark.filterwarnings("ignore:Sampling a subset")
def test_faiss_attributes_and_shapes():
    x = gaussian(3000, 12)
    km = Kmeans(12, 10, niter=4, nredo=2)
    obj = km.train(x)
    assert km.centroids.shape == (10, 12) and km.centroids.dtype == np.float32
    assert km.obj.shape == (8,) and obj == km.obj[-1]
    assert len(km.iteration_stats) == 8
    assert set(km.iteration_stats[0]) == {"obj", "time", "time_search", "imbalance_factor",
                                          "nsplit", "pruned"}
    D, I = km.assign(x[:7])
    assert D.shape == (7,) and I.shape == (7,) and I.dtype == np.int64
    D, I = km.index.search(x[:7], 3)
    assert D.shape == (7, 3) and bool((np.diff(D, axis=1) >= 0).all())
    fd, fi = _faiss_search(km.centroids, x[:7], 3)
    np.testing.assert_array_equal(I, fi)
    np.testing.assert_allclose(D, fd, rtol=1e-4, atol=1e-4)
    assert km.index.ntotal == 10


def _faiss_search(centroids, q, n):
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(centroids)
    return index.search(q, n)


def test_nredo_keeps_the_best_run():
    x = gaussian(4000, 8, seed=3)
    km = Kmeans(8, 20, niter=3, nredo=3)
    km.train(x)
    finals = km.obj[2::3]
    D, _ = km.assign(x)
    assert float(D.sum()) <= finals.min() * 1.0001


def test_frozen_int_spherical_and_weights():
    x = gaussian(2000, 6, seed=4) * 10
    init = x[:3].copy()
    km = Kmeans(6, 8, niter=3, frozen_centroids=True)
    km.train(x, init_centroids=init)
    np.testing.assert_array_equal(km.centroids[:3], init)
    km = Kmeans(6, 8, niter=3, int_centroids=True)
    km.train(x)
    np.testing.assert_array_equal(km.centroids, np.round(km.centroids))
    km = Kmeans(6, 8, niter=3, spherical=True)
    km.train(x)
    np.testing.assert_allclose(np.linalg.norm(km.centroids, axis=1), 1.0, rtol=1e-5)
    w = np.random.default_rng(0).random(2000).astype(np.float32)
    km = Kmeans(6, 1, niter=1, max_points_per_centroid=10_000)
    km.train(x, weights=w)
    np.testing.assert_allclose(km.centroids[0], (w[:, None] * x).sum(0) / w.sum(), rtol=1e-4,
                               atol=1e-4)


def test_torch_input_gives_torch_output():
    x = torch.from_numpy(gaussian(1000, 5))
    km = Kmeans(5, 4, niter=2)
    km.train(x)
    D, I = km.assign(x)
    assert isinstance(km.centroids, torch.Tensor) and isinstance(I, torch.Tensor)


def test_parameters_and_warnings():
    with pytest.raises(TypeError, match="unknown Kmeans parameter"):
        Kmeans(4, 2, nitre=3)
    with pytest.raises(NotImplementedError, match="init_method"):
        Kmeans(4, 2, init_method=2)
    with pytest.raises(ValueError, match="4 columns but d=5"):
        Kmeans(5, 2).train(gaussian(100, 4))
    with pytest.raises(TypeError, match="cannot be converted"):
        Kmeans(2, 1).train(np.array([["a", "b"]]))
    with pytest.raises(RuntimeError, match="before train"):
        Kmeans(2, 1).assign(gaussian(3, 2))
    with pytest.warns(UserWarning, match="please provide at least"):
        Kmeans(4, 10, niter=1).train(gaussian(100, 4))
    with pytest.warns(UserWarning, match="Sampling a subset of 20 / 100"):
        Kmeans(4, 2, niter=1, max_points_per_centroid=10).train(gaussian(100, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Kmeans(4, 2, niter=1, min_points_per_centroid=1).train(gaussian(100, 4))
