"""Kmeans(progressive_dim_steps=...): faiss's progressive-dimension clustering in the wrapper."""

import numpy as np
import pytest

from fastdc.kmeans import Kmeans


def curved(n=10000, d=32, seed=0) -> np.ndarray:
    """[n, d] float32 rows on a curved 6-dimensional surface (few strong principal axes): the
    kind of data where clustering the leading axes first helps."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 6))
    mix = rng.standard_normal((6, d)) * rng.uniform(0.2, 3.0, size=d)
    return np.tanh(latent @ mix).astype(np.float32)


def assigned_means(x: np.ndarray, km: Kmeans) -> np.ndarray:
    """The mean of the rows the trained km assigns to each centroid."""
    _, labels = km.assign(x)
    return np.stack([x[labels == j].mean(axis=0) for j in range(km.k)])


@pytest.mark.parametrize("seed", [0, 1])
def test_progressive_objective_beats_plain_kmeans(seed):
    """faiss's test_progressive_dim idea: on structured data the progressive run ends lower."""
    x = curved(seed=seed)
    plain = Kmeans(32, 50).train(x)
    km = Kmeans(32, 50, progressive_dim_steps=5)
    final = km.train(x)
    assert final < plain
    assert final == km.obj[-1] and len(km.obj) == len(km.iteration_stats)
    assert len(km.converged_at) == 5 and km.cp.niter == 10  # faiss's default with the steps


def test_dimensions_grow_geometrically_and_centroids_come_back(capsys):
    x = curved(3000, 32, seed=2)
    km = Kmeans(32, 12, progressive_dim_steps=5, niter=300, verbose=True)
    km.train(x)
    err = capsys.readouterr().err
    dims = [int(line.rsplit(" ", 1)[1]) for line in err.splitlines() if "Progressive" in line]
    assert dims == [2, 4, 7, 16, 32]  # int(32 ** (i / 5)) in float64, i = 1..5, as faiss prints
    assert km.converged_at[-1] is not None  # the last step reached a fixed point...
    # ...so, rotated back, each centroid is the mean of the rows it is nearest to
    np.testing.assert_allclose(km.centroids, assigned_means(x, km), rtol=0, atol=1e-4)


def test_without_pca_and_with_weights():
    x = curved(2000, 16, seed=3)
    km = Kmeans(16, 6, progressive_dim_steps=3, apply_pca=False, niter=300,
                max_points_per_centroid=1000)
    km.train(x)
    assert km.centroids.shape == (6, 16) and km.converged_at[-1] is not None
    np.testing.assert_allclose(km.centroids, assigned_means(x, km), rtol=0, atol=1e-4)
    w = np.random.default_rng(0).random(2000).astype(np.float32)
    one = Kmeans(16, 1, progressive_dim_steps=4, niter=2, max_points_per_centroid=10_000)
    one.train(x, weights=w)
    np.testing.assert_allclose(one.centroids[0], (w[:, None] * x).sum(0) / w.sum(), atol=1e-4)


def test_progressive_parameters_are_checked():
    x = curved(500, 8)
    with pytest.raises(NotImplementedError, match="init_centroids"):
        Kmeans(8, 4, progressive_dim_steps=2).train(x, init_centroids=x[:4])
    with pytest.raises(NotImplementedError, match="spherical"):
        Kmeans(8, 4, progressive_dim_steps=2, spherical=True).train(x)
    with pytest.raises(ValueError, match="progressive_dim_steps"):
        Kmeans(8, 4, progressive_dim_steps=0)
    with pytest.raises(TypeError, match="apply_pca"):
        Kmeans(8, 4, apply_pca=False)
    assert Kmeans(8, 4).cp.niter == 25
    assert Kmeans(8, 4, progressive_dim_steps=2, niter=3).cp.niter == 3
