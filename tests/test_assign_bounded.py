"""assign_bounded (Elkan's per-centroid bounds, fastdc.ops.assign_bounded): over Lloyd passes on
odd shapes, every SIMD path this CPU has gives the labels of that path's float32 ``assign`` bit
for bit (its dist too with exact_dist and in the first pass, else within the error bound), its
bounds stay below the float64 distances, and it skips most distances once the centroids settle;
ties, re-split jumps, non-finite rows and bad input; the torch reference. Bounds are stored
beside each centroid's cumulative shift (stored - shift bounds the distance). Paths this CPU lacks
are skipped with the feature they need."""

import pytest
import torch

pytest.importorskip("fastdc._C", reason="the fastdc._C extension is not built")
cpu = pytest.importorskip("fastdc.ops.cpu")

from fastdc.engine.pruning import error_coefficient  # noqa: E402
from fastdc.ops import assign_bounded, cluster_sums, means_from_sums  # noqa: E402
from fastdc.ops.assign import assign_bounded_ref, assign_ref  # noqa: E402
from tests.helpers import isa_params  # noqa: E402

ISA_PARAMS = isa_params()

SHAPES = [(1, 300, 7, 1), (2, 257, 33, 17), (1, 500, 40, 64), (1, 130, 9, 3), (3, 90, 5, 8),
          (1, 400, 100, 35)]
"""(B, N, K, D): K = 1, K off the 16-wide panel, D below 8 and off the 8-wide steps, B > 1."""


def _blobs(B, N, K, D, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(B, max(2, K // 2), D, generator=g)
    pick = torch.randint(centres.shape[1], (B, N), generator=g)
    x = torch.gather(centres, 1, pick[..., None].expand(B, N, D))
    x = (x + 0.4 * torch.randn(B, N, D, generator=g)).contiguous()
    return x, x[:, torch.randperm(N, generator=g)[:K]].contiguous()


def _shift(cum, old, new):
    """The cumulative shifts cum [B, K] after the centroids moved from old to new, each step
    rounded up (as the Lloyd loop keeps them)."""
    moved = torch.linalg.vector_norm(new.double() - old.double(), dim=2) * (1 + 2.0**-22)
    total = cum.double() + moved
    up = total.float()
    return torch.where(up.double() < total, up.nextafter(torch.full_like(up, torch.inf)), up)


def _check_pass(x, c, labels, lower, shift, dist, isa, exact):
    """labels = assign's; dist = assign's bits (exact) or within E of them; every stored bound
    less its centroid's cumulative shift at most the float64 distance."""
    ref_dist, ref_idx = cpu.assign_cpu(x=x, centroids=c, metric="l2", precision="fp32", isa=isa)
    assert torch.equal(labels, ref_idx)
    err = error_coefficient(x.shape[2]) * (x.norm(dim=2).double()
                                           + c.norm(dim=2).amax(dim=1, keepdim=True)) ** 2
    if exact:
        assert torch.equal(dist, ref_dist)
    else:
        assert bool(((dist.double() - ref_dist.double()).abs() <= err).all())
    true = torch.cdist(x.double(), c.double())
    assert bool((lower.double() - shift.double()[:, None, :] <= true).all())


@pytest.mark.parametrize("isa", ISA_PARAMS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_passes_give_assigns_labels_and_valid_bounds(isa, shape):
    B, N, K, D = shape
    x, c = _blobs(B, N, K, D, seed=N + K + D)
    labels = torch.full((B, N), -1, dtype=torch.int64)
    lower = torch.zeros(B, N, K)
    shift = torch.zeros(B, K)
    computed = []
    for it in range(8):
        exact = it == 0 or it % 3 == 2
        dist, done = cpu.assign_bounded_cpu(x, c, labels, lower, shift, first=it == 0,
                                            exact_dist=exact, isa=isa)
        _check_pass(x, c, labels, lower, shift, dist, isa, exact)
        computed.append(int(done.sum()))
        sums, counts = cluster_sums(x, labels, K)
        new = torch.where(counts[..., None] > 0, means_from_sums(sums, counts), c)
        shift, c = _shift(shift, c, new), new.contiguous()
    assert computed[0] == B * N * K
    assert computed[-1] <= 0.5 * B * N * K


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_ties_jumps_and_duplicates(isa):
    """Equal centroids (exact ties: the smallest index), duplicated rows, and a centroid that
    jumps far (a re-split) between passes."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(30, 6, generator=g)
    x = base.repeat(10, 1)[None].contiguous()
    c = torch.cat([base[:4], base[:4], base[10:14]])[None].contiguous()
    labels = torch.empty(1, 300, dtype=torch.int64)
    lower = torch.zeros(1, 300, 12)
    start = torch.full((1, 12), 0.25)  # cumulative shifts need not start at 0
    dist, _ = cpu.assign_bounded_cpu(x, c, labels, lower, start, first=True, isa=isa)
    _check_pass(x, c, labels, lower, start, dist, isa, exact=True)
    assert int(((labels >= 4) & (labels < 8)).sum()) == 0  # copies 4-7 lose every tie
    new = c.clone()
    new[0, 5] = 50.0  # a far jump
    new[0, 6] = base[20]  # onto a row
    shift = _shift(start, c, new)
    dist, _ = cpu.assign_bounded_cpu(x, new, labels, lower, shift, first=False, exact_dist=True,
                                     isa=isa)
    _check_pass(x, new, labels, lower, shift, dist, isa, exact=True)


@pytest.mark.parametrize("isa", ISA_PARAMS)
def test_non_finite_rows_are_scored_exactly(isa):
    """Rows holding NaN or inf skip the bounds: assign's labels (and dist) all the same."""
    x, c = _blobs(1, 64, 5, 7, seed=9)
    x[0, 3, 2] = float("nan")
    x[0, 10, 0] = float("inf")
    labels = torch.empty(1, 64, dtype=torch.int64)
    lower = torch.zeros(1, 64, 5)
    for first in (True, False):
        dist, _ = cpu.assign_bounded_cpu(x, c, labels, lower, torch.zeros(1, 5), first=first,
                                         exact_dist=True, isa=isa)
        ref_dist, ref_idx = cpu.assign_cpu(x=x, centroids=c, metric="l2", precision="fp32",
                                           isa=isa)
        assert torch.equal(labels, ref_idx)
        torch.testing.assert_close(dist, ref_dist, equal_nan=True, rtol=0, atol=0)
        assert bool((lower[0, 3] == 0).all() and (lower[0, 10] == 0).all())  # read back: <= 0


def test_reference_and_errors():
    x, c = _blobs(2, 50, 6, 5, seed=1)
    labels = torch.empty(2, 50, dtype=torch.int64)
    lower = torch.empty(2, 50, 6)
    shift = torch.rand(2, 6)
    dist, computed = assign_bounded_ref(x, c, labels, lower, shift, True)
    ref_dist, ref_idx = assign_ref(x, c, "l2")
    assert torch.equal(labels, ref_idx) and torch.equal(dist, ref_dist)
    true = torch.cdist(x.double(), c.double())
    assert bool((lower.double() - shift.double()[:, None, :] <= true).all())
    assert computed.tolist() == [300, 300]
    dist, _ = assign_bounded(x, c, labels, lower, torch.zeros(2, 6), first=True, backend="cpu")
    assert torch.equal(labels, ref_idx)
    bad = labels.clone()
    bad[1, 7] = 6
    with pytest.raises(ValueError, match=r"labels out of \[0, K\)"):
        assign_bounded(x, c, bad, lower, torch.zeros(2, 6), first=False, backend="cpu")
    with pytest.raises(ValueError, match=r"lower \[B, N, K\]"):
        assign_bounded(x, c, labels, lower[:, :, :5], torch.zeros(2, 6), first=False)
