"""fastdc.clustering: DeepCluster's clustering.py API."""

import numpy as np
import pytest
import torch

from fastdc import clustering
from fastdc.kmeans import kmeans
from tests.helpers import blobs


def features(n=600, d=64, seed=0):
    return blobs(n, d, 6, seed=seed, spread=0.5).numpy()


def test_preprocess_features_shape_norm_and_kind():
    x = features()
    z = clustering.preprocess_features(x, pca=16)
    assert isinstance(z, np.ndarray) and z.shape == (600, 16) and z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
    zt = clustering.preprocess_features(torch.from_numpy(x), pca=16)
    assert isinstance(zt, torch.Tensor)


def test_run_kmeans_returns_ids_and_loss():
    ids, loss = clustering.run_kmeans(features(), 6, seed=1)
    assert len(ids) == 600 and all(isinstance(i, int) and 0 <= i < 6 for i in ids)
    assert isinstance(loss, float) and loss > 0


def test_run_kmeans_stops_early_with_the_full_runs_result():
    x = features(seed=5)
    ids, loss = clustering.run_kmeans(x, 6, seed=1, niter=200)
    full = kmeans(torch.from_numpy(x), 6, niter=200, seed=1)
    assert ids == full.assignments.tolist() and loss == float(full.obj[-1])
    stopped = kmeans(torch.from_numpy(x), 6, niter=200, seed=1, early_stop_threshold=0.0)
    assert stopped.n_iter < 200  # premise: run_kmeans did stop early


def test_kmeans_cluster_fills_images_lists():
    km = clustering.Kmeans(6, pca=8, seed=2)
    loss = km.cluster(features())
    assert loss > 0 and len(km.images_lists) == 6
    assert sorted(i for c in km.images_lists for i in c) == list(range(600))
    labels = clustering.arrange_clustering(km.images_lists)
    for cluster, images in enumerate(km.images_lists):
        assert (labels[images] == cluster).all()


def test_same_seed_same_clusters():
    a, b = clustering.Kmeans(6, pca=8, seed=4), clustering.Kmeans(6, pca=8, seed=4)
    a.cluster(features(seed=3))
    b.cluster(features(seed=3))
    assert a.images_lists == b.images_lists


def test_arrange_clustering_rejects_incomplete_lists():
    with pytest.raises(ValueError, match="exactly once"):
        clustering.arrange_clustering([[0, 2], [3]])


def test_cluster_assign_relabels_nonempty_clusters():
    data = [(torch.full((3, 4, 4), float(i)), 0) for i in range(5)]
    ds = clustering.cluster_assign([[0, 3], [], [1, 2, 4]], data, transform=lambda t: t + 1)
    assert len(ds) == 5
    items = [ds[i] for i in range(5)]
    assert [label for _, label in items] == [0, 0, 1, 1, 1]
    assert float(items[0][0][0, 0, 0]) == 1.0 and float(items[1][0][0, 0, 0]) == 4.0


def test_unif_label_sampler_is_uniform_over_nonempty_clusters():
    lists = [list(range(0, 10)), [], list(range(10, 1000)), [1000, 1001]]
    sampler = clustering.UnifLabelSampler(3000, lists, seed=0)
    idx = np.array(list(sampler))
    assert len(sampler) == 3000 and len(idx) == 3000
    cluster_of = np.array(clustering.arrange_clustering(lists))
    counts = np.bincount(cluster_of[idx], minlength=4)
    assert counts[1] == 0
    assert all(abs(c - 1000) <= 1 for c in counts[[0, 2, 3]])
    again = list(clustering.UnifLabelSampler(3000, lists, seed=0))
    assert again == idx.tolist()
    with pytest.raises(ValueError, match="every cluster is empty"):
        clustering.UnifLabelSampler(5, [[], []])
