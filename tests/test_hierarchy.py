"""fastdc.engine.hierarchy and masked (padded) batched k-means: consistency of the two-level
targets, batched sub-class clustering == separate runs, padding rows never influence anything,
in one block or several."""

from __future__ import annotations

import pytest
import torch

from fastdc.engine import initial_centroids, kmeans, pack_groups, two_level_kmeans


def nested_blobs(sizes=(300, 450, 200), n_sub=5, d=12, seed=0):
    """Super-blobs (far apart) of n_sub tight sub-blobs each; returns x [N, d], super ids [N]."""
    g = torch.Generator().manual_seed(seed)
    xs, labels = [], []
    for s, size in enumerate(sizes):
        centre = 40.0 * torch.randn(d, generator=g)
        subs = centre + 6.0 * torch.randn(n_sub, d, generator=g)
        which = torch.arange(size) % n_sub
        xs.append(subs[which] + 0.3 * torch.randn(size, d, generator=g))
        labels.append(torch.full((size,), s))
    perm = torch.randperm(sum(sizes), generator=g)
    return torch.cat(xs)[perm].contiguous(), torch.cat(labels)[perm]


def test_every_row_has_a_super_class_and_a_sub_class_inside_it():
    x, _ = nested_blobs()
    k = 6
    h = two_level_kmeans(x, 3, k, niter=8, seed=1)
    n = x.shape[0]
    assert h.super_labels.shape == h.sub_labels.shape == h.targets.shape == (n,)
    assert int(h.super_labels.min()) >= 0 and int(h.super_labels.max()) < 3
    assert bool((h.sub_labels >= 0).all())
    assert bool((h.sub_labels < h.k_eff[h.super_labels]).all())
    assert torch.equal(h.targets, h.super_labels * k + h.sub_labels)
    assert int(h.super_sizes.sum()) == n
    assert torch.equal(h.super_sizes, torch.bincount(h.super_labels, minlength=3))
    # each row's sub-class is its nearest sub-centroid inside its own super-class
    d2 = ((x[:, None, :].double() - h.sub_centroids[h.super_labels].double()) ** 2).sum(-1)
    mine = d2.gather(1, h.sub_labels[:, None])[:, 0]
    # nearest, up to fp32 ties (the assign kernel's error scales with ||x||², as in faiss)
    tol = 1e-5 * (x.double() ** 2).sum(dim=1) + 1e-5
    assert bool((mine <= d2.amin(dim=1) + tol).all())
    # the three super-blobs are recovered (well separated), so targets split them exactly
    assert len(torch.unique(h.targets)) == 3 * k


def test_batched_sub_classes_match_separate_runs_with_the_same_init():
    x, _ = nested_blobs()
    k, seed = 5, 2
    h = two_level_kmeans(x, 3, k, niter=8, seed=seed)
    assert h.sub_result is not None and len(h.batched) == 3
    # the level-2 call is one batched problem; rebuild its packing and seeds, then run each
    # super-class alone from the same seeds
    packed = pack_groups(x, h.super_labels, h.batched)
    init = initial_centroids(packed.x, k, seed=seed + 1, mask=packed.mask)
    assert int(h.sub_result.nsplit.sum()) == 0  # premise: the shared re-split stream is unused
    for b, s in enumerate(h.batched.tolist()):
        rows = h.super_labels == s
        alone = kmeans(x[rows], k, niter=8, init=init[b])
        assert int(alone.nsplit.sum()) == 0
        torch.testing.assert_close(h.sub_centroids[s], alone.centroids, rtol=0, atol=1e-5)
        assert torch.equal(h.sub_labels[rows], alone.assignments)
        torch.testing.assert_close(h.sub_result.obj[:, b], alone.obj, rtol=1e-6, atol=0)


def test_padded_batch_matches_unpadded_runs_including_random_seeding():
    x, labels = nested_blobs(sizes=(120, 260, 90), n_sub=4, seed=3)
    groups = torch.tensor([0, 1, 2])
    packed = pack_groups(x, labels, groups)
    assert packed.x.shape == (3, 260, x.shape[1])
    assert torch.equal(packed.mask.sum(dim=1), torch.tensor([120, 260, 90]))
    # a problem padded at its end draws the same random seeds as its unpadded version
    for b in range(3):
        mine = initial_centroids(packed.x[b : b + 1], 4, seed=7, mask=packed.mask[b : b + 1])
        assert torch.equal(mine[0], initial_centroids(x[labels == b][None], 4, seed=7)[0])


def test_padding_rows_never_influence_results():
    x, labels = nested_blobs(sizes=(150, 220), n_sub=4, seed=4)
    packed = pack_groups(x, labels, torch.tensor([0, 1]))
    pad = ~packed.mask
    assert bool(pad.any())
    garbage = packed.x.clone()
    garbage[pad] = 1e6 + 1e3 * torch.randn(int(pad.sum()), x.shape[1])
    runs = [kmeans(xp, 4, niter=6, seed=5, mask=packed.mask) for xp in (packed.x, garbage)]
    clean, dirty = runs
    assert torch.equal(clean.centroids, dirty.centroids)
    assert torch.equal(clean.obj, dirty.obj)
    assert torch.equal(clean.assignments, dirty.assignments)
    assert bool((dirty.assignments[pad] == -1).all()) and bool((dirty.dist[pad] == 0).all())
    assert bool((dirty.centroids.abs() < 1e5).all())  # no garbage row ever became a centroid
    # seeding never picks a padding row, for either init method, with or without weights
    w = torch.rand(packed.mask.shape) + 0.1
    for init in ("random", "kmeans++"):
        for weights in (None, w):
            c = initial_centroids(garbage, 50, init=init, seed=6, weights=weights,
                                  mask=packed.mask)
            assert bool((c.abs() < 1e5).all()), init
    # the objective counts real rows only: iteration 0's is the real rows' distance to the seeds
    seeds = initial_centroids(garbage, 4, seed=5, mask=packed.mask)
    d2 = ((garbage[:, :, None, :].double() - seeds[:, None].double()) ** 2).sum(-1).amin(-1)
    expected = (d2 * packed.mask).sum(dim=1)
    torch.testing.assert_close(dirty.obj[0], expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("chunk", [1, 37, 260])
def test_masked_batch_read_in_blocks_matches_one_block(chunk):
    x, labels = nested_blobs(sizes=(150, 260), n_sub=4, seed=6)
    packed = pack_groups(x, labels, torch.tensor([0, 1]))
    w = torch.rand(packed.mask.shape, generator=torch.Generator().manual_seed(0)) + 0.5
    # Blocks round their partial sums to float32, so centroids agree to rounding after a pass;
    # later passes may move a row that sits within that rounding of a tie (and its centroid
    # with it), so the later passes agree on all but a few rows.
    first = [kmeans(packed.x, 4, niter=1, seed=2, weights=w, mask=packed.mask, chunk_rows=c)
             for c in (None, chunk)]
    torch.testing.assert_close(first[1].centroids, first[0].centroids, rtol=1e-6, atol=1e-5)
    assert torch.equal(first[1].assignments, first[0].assignments)
    one = kmeans(packed.x, 4, niter=5, seed=2, weights=w, mask=packed.mask)
    blocks = kmeans(packed.x, 4, niter=5, seed=2, weights=w, mask=packed.mask, chunk_rows=chunk)
    torch.testing.assert_close(blocks.obj[-1], one.obj[-1], rtol=1e-3, atol=0)
    assert float((blocks.assignments == one.assignments).float().mean()) >= 0.98
    assert bool((blocks.assignments[~packed.mask] == -1).all())
    assert bool((blocks.dist[~packed.mask] == 0).all())


def test_mask_all_true_is_the_plain_loop():
    x, _ = nested_blobs(sizes=(400,), n_sub=6, seed=5)
    plain = kmeans(x, 6, niter=6, seed=3)
    masked = kmeans(x, 6, niter=6, seed=3, mask=torch.ones(len(x), dtype=torch.bool))
    assert torch.equal(plain.centroids, masked.centroids)
    assert torch.equal(plain.assignments, masked.assignments)
    assert torch.equal(plain.obj, masked.obj)


def test_small_super_classes_give_one_sub_class_per_row():
    x, _ = nested_blobs(sizes=(40, 9, 6), n_sub=3, seed=5)
    k = 10
    h = two_level_kmeans(x, 3, k, niter=6, seed=0)
    small = (h.super_sizes <= k).nonzero().flatten().tolist()
    assert small, "premise: at least one super-class has fewer rows than k"
    for s in small:
        rows = (h.super_labels == s).nonzero().flatten()
        assert int(h.k_eff[s]) == len(rows)
        assert torch.equal(h.sub_labels[rows], torch.arange(len(rows)))
        assert torch.equal(h.sub_centroids[s, : len(rows)], x[rows])
        assert bool((h.sub_centroids[s, len(rows) :] == 0).all())
    assert bool((h.sub_labels < h.k_eff[h.super_labels]).all())


def test_mask_errors_are_clear():
    x = torch.randn(2, 20, 3)
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[:, :4] = True
    with pytest.raises(TypeError, match="bool"):
        kmeans(x, 2, mask=mask.int())
    with pytest.raises(ValueError, match="mask must have shape"):
        kmeans(x, 2, mask=mask[:, :10])
    with pytest.raises(ValueError, match="fewer than k=5"):
        kmeans(x, 5, mask=mask)
    with pytest.raises(ValueError, match="n_sub"):
        two_level_kmeans(x[0], 2, 0)
