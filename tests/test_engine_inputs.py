"""The engine's entry points on hostile inputs: values whose squared distances overflow float32
are refused with a clear error, and tensors that require grad are detached once (same result,
fast backends, no fallback warning)."""

from __future__ import annotations

import logging

import pytest
import torch

from fastdc.engine import (
    PCA,
    FeatureStore,
    FlatIndex,
    kmeans,
    kmeans_streaming,
    pca_whiten,
    two_level_kmeans,
)
from fastdc.engine.checks import CHECK_ROWS, check_rows
from fastdc.kmeans import Kmeans
from fastdc.ops import registry
from tests.helpers import blobs


def huge_row_data() -> torch.Tensor:
    """[200, 8] float32 blobs with row 17 scaled to norm ~1e30 (finite, but its squared
    distances overflow float32)."""
    x = blobs(200, 8, 4, seed=0)
    x[17] *= 1e30
    return x


def test_kmeans_refuses_rows_whose_distances_overflow():
    with pytest.raises(ValueError, match=r"row 17 has norm .*scale the data"):
        kmeans(huge_row_data(), 4, niter=3)
    batch = torch.stack([blobs(200, 8, 4, seed=1), huge_row_data()])
    with pytest.raises(ValueError, match="problem 1, row 17"):
        kmeans(batch, 4, niter=3)
    with pytest.raises(ValueError, match="row 17 has norm"):
        kmeans(huge_row_data(), 4, niter=0, init="kmeans++")


def test_row_checks_name_bad_rows_past_the_first_chunk():
    """check_rows reads CHECK_ROWS rows of one problem at a time: a bad row in a later chunk
    (and of a later problem) is still found and named by its own index."""
    n = CHECK_ROWS + 1000
    x = torch.rand(2, n, 2)
    x[1, CHECK_ROWS + 7, 1] = float("nan")
    with pytest.raises(ValueError, match=f"NaN or inf at problem 1, row {CHECK_ROWS + 7}"):
        check_rows(x)
    x[1, CHECK_ROWS + 7, 1] = 0.5
    x[0, CHECK_ROWS + 3, 0] = 1e30
    with pytest.raises(ValueError, match=f"problem 0, row {CHECK_ROWS + 3} has norm 1e"):
        check_rows(x)
    with pytest.raises(ValueError, match=f"problem 0, row {CHECK_ROWS + 13} has norm"):
        check_rows(x, start=10)
    x[0, CHECK_ROWS + 3, 0] = 0.5
    check_rows(x)  # every row fine: no error


def test_kmeans_streaming_refuses_rows_whose_distances_overflow():
    store = FeatureStore.from_tensor(huge_row_data())
    with pytest.raises(ValueError, match=r"row 17 has norm .*scale the data"):
        kmeans_streaming(store, 4, niter=3, device="cpu", chunk_rows=8)
    with pytest.raises(ValueError, match="row 17 has norm"):
        kmeans_streaming(store, 4, niter=0, device="cpu", chunk_rows=8)


def test_faiss_style_train_refuses_rows_whose_distances_overflow():
    with pytest.raises(ValueError, match=r"row 17 has norm .*scale the data"):
        Kmeans(8, 4, niter=3, min_points_per_centroid=1).train(huge_row_data().numpy())


def test_large_but_safe_values_cluster_to_finite_results():
    x = blobs(300, 8, 4, seed=2) * 1e17  # row norms ~1e18: below the 6.5e18 limit
    res = kmeans(x, 4, niter=4, seed=0)
    assert bool(torch.isfinite(res.obj).all()) and bool(torch.isfinite(res.centroids).all())
    scaled = kmeans(x / 1e17, 4, niter=4, seed=0)
    assert torch.equal(res.assignments, scaled.assignments)


@pytest.fixture
def fallback_log(monkeypatch, caplog):
    """The "fastdc" warnings of this test, with the registry's log-once memory emptied so that
    a fallback seen by an earlier test would be logged again."""
    monkeypatch.setattr(registry, "_LOGGED", set())
    caplog.set_level(logging.WARNING, logger="fastdc")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "fastdc"]


def assert_same(a, b):
    for name in ("centroids", "assignments", "dist", "obj", "nsplit"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_kmeans_detaches_inputs_that_require_grad(fallback_log):
    x = blobs(500, 6, 5, seed=3)
    w = torch.rand(500, generator=torch.Generator().manual_seed(1)) + 0.5
    init = x[:5].clone()
    plain = kmeans(x, 5, niter=4, weights=w, init=init)
    graded = kmeans(x.clone().requires_grad_(), 5, niter=4, weights=w.clone().requires_grad_(),
                    init=init.clone().requires_grad_())
    assert_same(graded, plain)
    assert not graded.centroids.requires_grad
    h = two_level_kmeans(x.clone().requires_grad_(), 2, 3, niter=3)
    assert not h.sub_centroids.requires_grad
    store = FeatureStore.from_tensor(x)
    streamed = kmeans_streaming(store, 5, niter=4, init=init.clone().requires_grad_())
    assert_same(streamed, kmeans_streaming(store, 5, niter=4, init=init))
    assert fallback_log() == []


def test_faiss_style_kmeans_and_index_detach_inputs_that_require_grad(fallback_log):
    x = blobs(400, 6, 4, seed=4)
    km = Kmeans(6, 4, niter=3, min_points_per_centroid=1)
    obj = km.train(x.clone().requires_grad_())
    ref = Kmeans(6, 4, niter=3, min_points_per_centroid=1)
    assert obj == ref.train(x)
    assert torch.equal(km.centroids, ref.centroids) and not km.centroids.requires_grad
    D, I = km.assign(x.clone().requires_grad_())
    assert torch.equal(I, ref.assign(x)[1]) and not D.requires_grad
    index = FlatIndex(6)
    index.add(ref.centroids.clone().requires_grad_())
    D, I = index.search(x.clone().requires_grad_(), 1)
    assert torch.equal(I[:, 0], ref.assign(x)[1]) and not D.requires_grad
    assert fallback_log() == []


def test_pca_detaches_inputs_that_require_grad(fallback_log):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(300, 10, generator=g) @ torch.randn(10, 10, generator=g)
    z = pca_whiten(x.clone().requires_grad_(), 4)
    assert torch.equal(z, pca_whiten(x, 4)) and not z.requires_grad
    pca = PCA(4).fit(x.clone().requires_grad_())
    assert not pca.transform(x.clone().requires_grad_()).requires_grad
    assert fallback_log() == []


def test_fallback_log_fixture_sees_a_fallback(fallback_log):
    """The premise of the tests above: an input the cpu backend cannot take (float64) falls
    back to the torch reference, and the fixture sees that warning."""
    from fastdc.ops import assign

    if "cpu" not in registry.available("assign"):
        pytest.skip("the cpu backend is not built")
    x = torch.randn(20, 3, dtype=torch.float64)
    assign(x, x[:2])
    assert any("assign" in m for m in fallback_log())
