"""Bound-based pruning of the Lloyd loop (fastdc.engine.pruning): the pruned loop gives the
unpruned loop's assignments and centroids bit for bit, on many seeds and shapes, ties, re-splits,
K = 1 and K = N, batches, blocks and streamed stores; the pruned fraction is reported.
"elkan" runs on the cpu backend only: its cases skip where fastdc._C is not built."""

import numpy as np
import pytest
import torch

from fastdc.engine import FeatureStore, kmeans, kmeans_streaming, pruning
from fastdc.engine.pruning import _ELKAN_TILE_PASSES, error_coefficient
from fastdc.kmeans import Kmeans
from fastdc.ops import assign, registry

BOUNDS = ["centres", "second", "elkan"]


def blobs(n: int, d: int, centres: int, seed: int, spread: float = 0.3) -> torch.Tensor:
    """[n, d] float32 Gaussian blobs around `centres` standard-normal centres."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centres, d, generator=g)
    return c[torch.randint(centres, (n,), generator=g)] + spread * torch.randn(n, d, generator=g)


def skip_without_kernels(bounds: str) -> None:
    """"elkan" needs the cpu backend's kernel."""
    if bounds == "elkan" and "cpu" not in registry.available("assign"):
        pytest.skip("prune='elkan' needs the cpu backend (fastdc._C is not built)")


def assert_same_run(pruned, ref):
    """Same centroids, assignments and re-splits bit for bit; objective and dist up to float32
    rounding (the kernel's expansion form against the direct one); pruned fractions in [0, 1],
    none in iteration 0."""
    assert torch.equal(pruned.centroids, ref.centroids)
    assert torch.equal(pruned.assignments, ref.assignments)
    assert torch.equal(pruned.nsplit, ref.nsplit)
    torch.testing.assert_close(pruned.obj, ref.obj, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pruned.dist, ref.dist, rtol=1e-4, atol=1e-4)
    assert ref.pruned is None
    assert pruned.pruned.shape == pruned.obj.shape
    assert bool((pruned.pruned[0] == 0).all())
    assert bool(((pruned.pruned >= 0) & (pruned.pruned <= 1)).all())


@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize("seed", range(6))
def test_pruned_run_equals_unpruned_run(bounds, seed):
    skip_without_kernels(bounds)
    n, d, k = 700 + 137 * seed, 3 + 5 * seed, 5 + 9 * seed
    x = blobs(n, d, max(2, k // 2), seed, spread=0.1 + 0.2 * (seed % 3))
    if seed % 2:
        x = x / x.norm(dim=1, keepdim=True)
    opts = dict(niter=12, seed=seed)
    ref = kmeans(x, k, prune=False, **opts)
    res = kmeans(x, k, prune=bounds, **opts)
    assert_same_run(res, ref)


@pytest.mark.parametrize("bounds", BOUNDS)
def test_well_separated_blobs_are_mostly_pruned(bounds):
    skip_without_kernels(bounds)
    x = blobs(4000, 16, 20, seed=1, spread=0.05)
    res = kmeans(x, 20, niter=10, seed=3, prune=bounds, init="kmeans++")
    assert_same_run(res, kmeans(x, 20, niter=10, seed=3, prune=False, init="kmeans++"))
    assert float(res.pruned[-1]) > 0.9


@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_ties_from_duplicated_rows_and_centroids(bounds, backend):
    skip_without_kernels(bounds)
    if bounds == "elkan" and backend == "torch":
        with pytest.raises(ValueError, match="prune='elkan' needs rows on the CPU and the cpu"):
            kmeans(torch.zeros(4, 2), 2, prune="elkan", backend="torch")
        return
    x = blobs(40, 6, 4, seed=2).repeat(25, 1)  # 40 distinct rows, each 25 times
    init = torch.cat([x[:3], x[:3], x[5:9]])  # equal centroids: exact ties, re-splits
    opts = dict(niter=10, seed=4, init=init, backend=backend)
    ref = kmeans(x, 10, prune=False, **opts)
    assert int(ref.nsplit[0]) > 0  # premise: equal centroids leave clusters empty
    assert_same_run(kmeans(x, 10, prune=bounds, **opts), ref)


@pytest.mark.parametrize("bounds", BOUNDS)
def test_resplits_in_every_iteration(bounds):
    skip_without_kernels(bounds)
    x = blobs(5, 4, 5, seed=3).repeat(30, 1)  # 5 distinct rows, k = 12: empties every time
    ref = kmeans(x, 12, niter=8, seed=2, prune=False)
    assert bool((ref.nsplit > 0).all())
    assert_same_run(kmeans(x, 12, niter=8, seed=2, prune=bounds), ref)


@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize("k", [1, 300])
def test_one_cluster_and_one_row_per_cluster(bounds, k):
    skip_without_kernels(bounds)
    x = blobs(300, 5, 30, seed=4)
    ref = kmeans(x, k, niter=5, prune=False)
    res = kmeans(x, k, niter=5, prune=bounds)
    assert_same_run(res, ref)
    if k == 1:  # no other centroid: nothing to compute (after "elkan"'s passes that score all)
        first = _ELKAN_TILE_PASSES if bounds == "elkan" else 1
        assert bool((res.pruned[first:] == 1).all())


@pytest.mark.parametrize("bounds", BOUNDS)
def test_masked_batch_in_blocks(bounds):
    skip_without_kernels(bounds)
    x = torch.stack([blobs(500, 7, 8, seed=s) for s in range(3)])
    mask = torch.ones(3, 500, dtype=torch.bool)
    mask[1, 333:] = False
    opts = dict(niter=9, seed=1, mask=mask, chunk_rows=128)
    ref = kmeans(x, 12, prune=False, **opts)
    assert_same_run(kmeans(x, 12, prune=bounds, **opts), ref)


@pytest.mark.parametrize("bounds", ["centres", "second"])
def test_rows_tested_and_assigned_in_several_chunks(bounds, monkeypatch):
    """Blocks larger than the rows a pass tests (or assigns) at once: the chunks' results land
    in the right rows, in a batch of two problems too (at k = 25 a pass that prunes under 90 %
    of the rows is followed by passes that assign every row: both kinds run)."""
    monkeypatch.setattr(pruning, "_TEST_BYTES", 0)  # the floor: 1024 rows a test
    monkeypatch.setattr(pruning, "_ASSIGN_ROWS", 700)
    x = torch.stack([blobs(2600, 6, 20, seed=s) for s in range(2)])
    ref = kmeans(x, 25, niter=10, seed=3, prune=False)
    res = kmeans(x, 25, niter=10, seed=3, prune=bounds)
    assert_same_run(res, ref)
    assert float(res.pruned[1:].max()) > 0


def test_streamed_store_prunes_like_memory():
    x = blobs(900, 10, 12, seed=5)
    ref = kmeans(x, 16, niter=8, seed=5, chunk_rows=200, prune="second")
    res = kmeans_streaming(FeatureStore.from_tensor(x), 16, niter=8, seed=5, chunk_rows=200,
                           prune="second")
    assert torch.equal(res.centroids, ref.centroids) and torch.equal(res.obj, ref.obj)
    assert torch.equal(res.assignments, ref.assignments) and torch.equal(res.pruned, ref.pruned)
    assert float(res.pruned.max()) > 0


def test_automatic_choice_and_where_pruning_does_not_apply(monkeypatch):
    import fastdc.engine.lloyd as lloyd

    x = blobs(400, 6, 10, seed=6)
    big = blobs(2 ** 14, 4, 8, seed=6)  # N * K = 2^23: on by default with the cpu backend
    auto = kmeans(big, 512, niter=2)
    assert (auto.pruned is not None) == ("cpu" in registry.available("assign"))
    assert kmeans(big, 512, niter=2, backend="torch").pruned is None
    assert kmeans(big, 1024, niter=2).pruned is None  # 16 rows per cluster: too few to pay
    assert kmeans(big, 512, niter=1).pruned is None  # one iteration: only the labels pass
    wide = blobs(2000, 64, 8, seed=6)  # D >= 32, K <= D, niter >= 8: per-centroid bounds
    built = "cpu" in registry.available("assign")
    assert (kmeans(wide, 64, niter=8).pruned is not None) == built
    assert (kmeans(wide, 65, niter=8).pruned is not None) == built  # K > D, bounds small
    assert (kmeans(wide[:, :32].contiguous(), 65, niter=8).pruned is not None) == built
    assert kmeans(wide[:, :16].contiguous(), 65, niter=8).pruned is None  # D < 32
    monkeypatch.setattr(lloyd, "AUTO_ELKAN_SMALL", 2000 * 64)
    assert kmeans(wide, 65, niter=8).pruned is None  # K > D and larger bounds than that
    assert kmeans(wide, 64, niter=7).pruned is None  # too few iterations to pay
    assert kmeans(x, 10, niter=3).pruned is None  # too small to pay
    assert kmeans(x, 10, niter=3, prune=False).pruned is None
    assert kmeans(x, 10, niter=3, prune=True).pruned is not None
    assert kmeans(x, 10, niter=3, spherical=True, prune=True).pruned is None
    assert kmeans(x.double(), 10, niter=3, prune=True).pruned is None
    with pytest.raises(ValueError, match="prune must be"):
        kmeans(x, 10, prune="hamerly")
    with pytest.raises(ValueError, match="prune must be"):
        Kmeans(6, 10, prune=2)


def test_faiss_style_wrapper_reports_the_pruned_fraction():
    x = blobs(2000, 8, 10, seed=7, spread=0.05).numpy()
    km = Kmeans(8, 10, niter=6, seed=1, prune="second", early_stop_threshold=-1)
    km.train(x)
    ref = Kmeans(8, 10, niter=6, seed=1, prune=False, early_stop_threshold=-1)
    ref.train(x)
    np.testing.assert_array_equal(km.centroids, ref.centroids)
    fractions = [st["pruned"] for st in km.iteration_stats]
    assert fractions[0] == 0 and max(fractions) > 0.5
    assert {st["pruned"] for st in ref.iteration_stats} == {None}


@pytest.mark.parametrize("k", [1, 2, 37])
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_second_distance_less_the_error_bound_is_a_lower_bound(k, backend):
    """The pruning's Hamerly bound: assign's second distance minus E bounds every other
    centroid's squared distance from below."""
    x = blobs(500, 9, 5, seed=8)
    x[250:] = x[:250]  # duplicated rows
    c = torch.cat([x[:k - k // 3], x[:k // 3]])  # equal centroids: exact ties
    err = error_coefficient(9) * (x.norm(dim=1).double() + c.norm(dim=1).max().double()) ** 2
    dist, idx, dist2 = assign(x, c, backend=backend, second=True)
    ref_dist, ref_idx = assign(x, c, backend=backend)
    assert torch.equal(idx, ref_idx) and torch.equal(dist, ref_dist)
    full = torch.cdist(x.double(), c.double()) ** 2
    full[torch.arange(500), idx] = float("inf")
    assert bool((dist2.double() - err <= full.min(dim=1).values + 1e-9).all())


@pytest.mark.parametrize("bounds", BOUNDS)
def test_cpu_backend_pruned_run_is_the_unpruned_run_bit_for_bit(bounds):
    """The pruned rows' distances are the kernel's own (assign_dist; "elkan": its exact labels
    pass): same dist, and the same obj ("elkan": within float32 rounding)."""
    if "cpu" not in registry.available("assign"):
        pytest.skip("the cpu backend is not built")
    x = torch.stack([blobs(700, 9, 14, seed=s) for s in range(2)])
    for opts in (dict(), dict(chunk_rows=150)):
        ref = kmeans(x, 14, niter=8, seed=2, prune=False, backend="cpu", **opts)
        res = kmeans(x, 14, niter=8, seed=2, prune=bounds, backend="cpu", **opts)
        assert float(res.pruned[1:].max()) > 0
        assert torch.equal(res.dist, ref.dist) and torch.equal(res.assignments, ref.assignments)
        if bounds == "elkan":  # the passes' distances are estimates (the labels pass is exact)
            torch.testing.assert_close(res.obj, ref.obj, rtol=1e-5, atol=0)
        else:
            assert torch.equal(res.obj, ref.obj)
