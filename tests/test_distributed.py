"""fastdc.engine.collectives + ``kmeans(..., group=...)``: 2 gloo processes on CPU against one
process
on the concatenated data (k-means, re-splits, masked batches, PCA, the hierarchy, label gather).

All distributed work runs in one 2-process session (spawning costs seconds); each test checks
one part of what the ranks sent back against a single-process run computed here.
"""

from __future__ import annotations

import pytest
import torch

from fastdc.engine import collectives as fdist
from fastdc.engine import kmeans, pca_whiten, two_level_kmeans

SPLIT = 0.4  # rank 0 holds the first 40 % of the rows, rank 1 the rest (uneven on purpose)


def gaussian_blobs(n=3000, d=16, centres=25, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = 5.0 * torch.randn(centres, d, generator=g)
    return c[torch.randint(centres, (n,), generator=g)] + torch.randn(n, d, generator=g)


def few_distinct_points(n=2000, seed=1) -> torch.Tensor:
    """Rows from only 8 distinct integer points: k=12 must leave clusters empty (re-splits),
    and integer sums are exact in any order, so both runs must agree bit for bit."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n, 3), generator=g).float() * torch.tensor([1.0, 2.0, 4.0])


def batched_problem(seed=2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [2, 1000, 8] with the second problem padded after 700 real rows; init [2, 6, 8]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.stack([gaussian_blobs(1000, 8, 10, seed), gaussian_blobs(1000, 8, 10, seed + 1)])
    mask = torch.ones(2, 1000, dtype=torch.bool)
    mask[1, 700:] = False
    x[1, 700:] = 0.0
    return x, mask, torch.randn(2, 6, 8, generator=g)


def correlated(n=1500, d=24, seed=3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) + 2.0


def split_point(n: int) -> int:
    return int(n * SPLIT)


def my_rows(t: torch.Tensor, group, dim: int = 0) -> torch.Tensor:
    cut = split_point(t.shape[dim])
    if fdist.rank(group) == 0:
        return t.narrow(dim, 0, cut)
    return t.narrow(dim, cut, t.shape[dim] - cut)


def _worker(group) -> dict:
    """Runs on each rank; returns this rank's results (CPU tensors)."""
    r = fdist.rank(group)
    out: dict = {"rank": r, "world": fdist.world_size(group)}
    res = kmeans(my_rows(gaussian_blobs(), group), 20, niter=8, seed=3, group=group)
    out["blobs"] = (res.centroids, fdist.gather_rows(res.assignments, group), res.obj, res.nsplit)
    res = kmeans(my_rows(gaussian_blobs(seed=7), group), 20, niter=100, seed=8, group=group,
                 early_stop_threshold=0.0)
    out["converged"] = (res.centroids, fdist.gather_rows(res.assignments, group), res.changed,
                        res.stop_reason)
    res = kmeans(my_rows(few_distinct_points(), group), 12, niter=6, seed=4, group=group)
    out["splits"] = (res.centroids, fdist.gather_rows(res.assignments, group), res.nsplit)
    x, mask, init = batched_problem()
    if r == 1:
        init = init + 1000.0  # only rank 0's init may be used
    res = kmeans(my_rows(x, group, 1), 6, niter=6, init=init[:, :4], mask=my_rows(mask, group, 1),
                 group=group)
    out["batched"] = (res.centroids, res.assignments, res.obj)
    out["pca"] = pca_whiten(my_rows(correlated(), group), 10, group=group)
    out["pca_wide"] = pca_whiten(my_rows(correlated(n=120, d=300), group), 10, group=group)
    h = two_level_kmeans(my_rows(gaussian_blobs(seed=5), group), 4, 9, niter=6, seed=6,
                         group=group)
    out["hierarchy"] = (fdist.gather_rows(h.targets, group), h.sub_centroids, h.k_eff)
    out["gather"] = fdist.gather_rows(torch.arange(3 + 2 * r) + 10 * r, group)
    out["shard"] = fdist.shard_range(11, group)
    try:
        kmeans(my_rows(gaussian_blobs(), group), 5, init="kmeans++", group=group)
        out["kmeans++"] = "no error"
    except ValueError as e:
        out["kmeans++"] = str(e)
    return out


def _failing_worker(group) -> None:
    if fdist.rank(group) == 1:
        raise KeyError("rank one fails on purpose")


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    return fdist.spawn(_worker, 2, timeout_s=240)


def test_two_ranks_give_the_centroids_and_labels_of_one_process(ranks):
    single = kmeans(gaussian_blobs(), 20, niter=8, seed=3)
    for out in ranks:
        centroids, labels, obj, nsplit = out["blobs"]
        torch.testing.assert_close(centroids, single.centroids, rtol=0, atol=1e-5)
        assert torch.equal(labels, single.assignments)
        torch.testing.assert_close(obj, single.obj, rtol=1e-6, atol=0)
        assert torch.equal(nsplit, single.nsplit)
    assert torch.equal(ranks[0]["blobs"][0], ranks[1]["blobs"][0])  # ranks agree bit for bit


def test_ranks_stop_together_where_one_process_converges(ranks):
    single = kmeans(gaussian_blobs(seed=7), 20, niter=100, seed=8, early_stop_threshold=0.0)
    assert single.stop_reason == "converged" and single.n_iter < 100
    for out in ranks:
        centroids, labels, changed, reason = out["converged"]
        assert reason == "converged"
        assert torch.equal(changed, single.changed)  # all-reduced counts: the same stop
        assert torch.equal(labels, single.assignments)
        torch.testing.assert_close(centroids, single.centroids, rtol=0, atol=1e-5)


def test_resplits_are_decided_identically_on_every_rank(ranks):
    single = kmeans(few_distinct_points(), 12, niter=6, seed=4)
    assert int(single.nsplit.sum()) > 0  # premise: empty clusters were re-split
    for out in ranks:
        centroids, labels, nsplit = out["splits"]
        assert torch.equal(nsplit, single.nsplit)
        assert torch.equal(centroids, single.centroids)
        assert torch.equal(labels, single.assignments)


def test_batched_masked_problems_with_rank0_init(ranks):
    x, mask, init = batched_problem()
    single = kmeans(x, 6, niter=6, init=init[:, :4], mask=mask)
    labels = torch.cat([ranks[0]["batched"][1], ranks[1]["batched"][1]], dim=1)
    assert torch.equal(labels, single.assignments)
    assert bool((labels[1, 700:] == -1).all())
    for out in ranks:
        torch.testing.assert_close(out["batched"][0], single.centroids, rtol=0, atol=1e-5)
        torch.testing.assert_close(out["batched"][2], single.obj, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name,n,d", [("pca", 1500, 24), ("pca_wide", 120, 300)])
def test_distributed_pca_matches_one_process(ranks, name, n, d):
    single = pca_whiten(correlated(n=n, d=d), 10)  # N < D: one process fits the Gram matrix
    z = torch.cat([ranks[0][name], ranks[1][name]])
    sign = torch.sign((z * single).sum(dim=0))  # eigenvectors are defined up to sign
    torch.testing.assert_close(z * sign, single, rtol=0, atol=1e-4)


def test_distributed_hierarchy_matches_one_process(ranks):
    single = two_level_kmeans(gaussian_blobs(seed=5), 4, 9, niter=6, seed=6)
    for out in ranks:
        targets, sub_centroids, k_eff = out["hierarchy"]
        assert torch.equal(targets, single.targets)
        assert torch.equal(k_eff, single.k_eff)
        torch.testing.assert_close(sub_centroids, single.sub_centroids, rtol=0, atol=1e-5)


def test_gather_rows_and_shards(ranks):
    expected = torch.tensor([0, 1, 2, 10, 11, 12, 13, 14])
    assert [out["world"] for out in ranks] == [2, 2]
    for out in ranks:
        assert torch.equal(out["gather"], expected)
    assert [out["shard"] for out in ranks] == [(0, 6), (6, 11)]
    assert fdist.shard_range(11, None) == (0, 11)
    assert fdist.gather_rows(expected, None) is expected


def test_kmeans_plus_plus_is_refused_with_a_group(ranks):
    for out in ranks:
        assert "kmeans++" in out["kmeans++"] and "not supported" in out["kmeans++"]


def test_spawn_reports_a_failing_rank():
    with pytest.raises(RuntimeError, match="rank one fails on purpose"):
        fdist.spawn(_failing_worker, 2, timeout_s=120)
