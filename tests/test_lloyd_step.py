"""lloyd_step (one Lloyd iteration in one call) against the ops it runs one by one, and
lloyd_run (every iteration in one call) against the engine's loop, bit for bit.

The cpu backend's cases skip where fastdc._C is not built; the reference's run everywhere."""

import pytest
import torch

import fastdc.engine.lloyd as lloyd
from fastdc.engine import kmeans
from fastdc.ops import assign, assign_bounded, cluster_sums, lloyd_step, means_from_sums, registry
from fastdc.ops.lloyd_step import grow_shifts, lloyd_run
from fastdc.ops.resplit_empty import resplit_empty_ref
from tests.helpers import ODD_SHAPES, blobs, brute_force

CPU = "cpu" in registry.available("lloyd_step")


def needs_cpu() -> None:
    if not CPU:
        pytest.skip("the cpu backend is not built (fastdc._C)")


def problem(B: int, N: int, K: int, D: int, seed: int, weighted: bool, empty: bool):
    """(x [B, N, D], centroids [B, K, D], uniforms [B, K], weights [B, N] or None): centroids
    drawn from the rows, with one far away (an empty cluster) when ``empty`` and K > 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, D, generator=g)
    c = x[:, torch.randint(N, (K,), generator=g)].clone()
    if empty and K > 1:
        c[:, K - 1] = 1e3
    uniforms = torch.rand(B, K, generator=g, dtype=torch.float64)
    weights = torch.rand(B, N, generator=g) if weighted else None
    return x, c, uniforms, weights


def one_by_one(x, c, uniforms, weights, n_frozen):
    """The iteration from the cpu ops one after the other: (new, counts, nsplit, labels, dist)."""
    dist, labels = assign(x, c, backend="cpu")
    sums, counts = cluster_sums(x, labels, c.shape[1], weights=weights, backend="cpu")
    new = means_from_sums(sums, counts)
    new[:, :n_frozen] = c[:, :n_frozen]
    nsplit = resplit_empty_ref(new, counts.clone(), uniforms, n_frozen)
    return new, counts, nsplit, labels, dist


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_step_is_the_ops_one_by_one(shape, weighted):
    needs_cpu()
    B, N, K, D = shape
    n_frozen = min(2, K - 1)
    x, c, uniforms, weights = problem(B, N, K, D, sum(shape), weighted, empty=True)
    labels = torch.empty(B, N, dtype=torch.int64)
    dist = torch.empty(B, N)
    new, counts, nsplit, computed = lloyd_step(x, c, uniforms, labels=labels, dist=dist,
                                               weights=weights, n_frozen=n_frozen, backend="cpu")
    ref = one_by_one(x, c, uniforms, weights, n_frozen)
    for got, want in zip((new, counts, nsplit, labels, dist), ref, strict=True):
        assert torch.equal(got, want)
    assert computed.tolist() == [N * K] * B
    # the reference backend: assign's truth, the cpu labels away from near ties, and where
    # every label agrees the same re-splits and means up to float32 rounding
    labels_ref, dist_ref = torch.empty_like(labels), torch.empty_like(dist)
    out = lloyd_step(x, c, uniforms, labels=labels_ref, dist=dist_ref, weights=weights,
                     n_frozen=n_frozen, backend="torch")
    truth = brute_force(x, c, "l2")
    assert torch.equal(labels_ref[truth.clear], truth.idx[truth.clear])
    assert torch.equal(labels[truth.clear], truth.idx[truth.clear])
    if torch.equal(labels_ref, labels):
        assert torch.equal(out[2], nsplit) and torch.equal(out[1], counts)
        torch.testing.assert_close(out[0], new, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_step_with_bounds_is_assign_bounded_then_the_update(seed):
    needs_cpu()
    x = blobs(600, 33, 12, seed=seed).unsqueeze(0)
    K = 12
    g = torch.Generator().manual_seed(seed)
    c = x[:, torch.randperm(600, generator=g)[:K]].clone()
    uniforms = torch.rand(1, K, generator=g, dtype=torch.float64)
    state = {name: [] for name in ("step", "ops")}
    for name in state:  # two iterations: a pass that sets the bounds, one that reads them
        labels = torch.empty(1, 600, dtype=torch.int64)
        lower = torch.empty(1, 600, K)
        shift = torch.zeros(1, K)
        cur = c
        for first in (True, False):
            dist = torch.empty(1, 600)
            if name == "step":
                new, counts, nsplit, computed = lloyd_step(
                    x, cur, uniforms, labels=labels, dist=dist, lower=lower, shift=shift,
                    first=first, backend="cpu")
            else:
                dist, computed = assign_bounded(x, cur, labels, lower, shift, first=first,
                                                backend="cpu")
                sums, counts = cluster_sums(x, labels, K, backend="cpu")
                new = means_from_sums(sums, counts)
                nsplit = resplit_empty_ref(new, counts.clone(), uniforms, 0)
                grow_shifts(shift, cur, new)
            state[name].append((new, counts, nsplit, computed, labels.clone(), dist,
                                lower.clone(), shift.clone()))
            cur = new
    for got, want in zip(state["step"], state["ops"], strict=True):
        for a, b in zip(got[:7], want[:7], strict=True):
            assert torch.equal(a, b)
        # the shifts: float64 moves summed in another order, the same up to their rounding up
        torch.testing.assert_close(got[7], want[7], rtol=1e-6, atol=1e-30)
    moved = torch.linalg.vector_norm(state["step"][0][0].double() - c.double(), dim=2)
    assert bool((state["step"][0][7].double() >= moved).all())  # never below the true move


def test_step_rejects_mismatched_shapes():
    x, c, uniforms, _ = problem(1, 10, 3, 4, 0, weighted=False, empty=False)
    labels, dist = torch.empty(1, 10, dtype=torch.int64), torch.empty(1, 10)
    with pytest.raises(ValueError, match="uniforms must be"):
        lloyd_step(x, c, uniforms[:, :2], labels=labels, dist=dist)
    with pytest.raises(ValueError, match="both lower and shift"):
        lloyd_step(x, c, uniforms, labels=labels, dist=dist, lower=torch.empty(1, 10, 3))
    with pytest.raises(ValueError, match="n_frozen"):
        lloyd_step(x, c, uniforms, labels=labels, dist=dist, n_frozen=4)


def test_run_rejects_mismatched_shapes():
    needs_cpu()
    x, c, _, _ = problem(1, 10, 3, 4, 0, weighted=False, empty=False)
    labels, dist = torch.empty(1, 10, dtype=torch.int64), torch.empty(1, 10)
    with pytest.raises(ValueError, match="uniforms must be"):
        lloyd_run(x, c, torch.rand(5, 1, 2, dtype=torch.float64), labels=labels, dist=dist)


def run_three_ways(monkeypatch, x, k, **opts):
    """kmeans(x, k, **opts) with every iteration in one call, one call per iteration, and the
    loop of separate ops (the cpu backend's three ways)."""
    results = [kmeans(x, k, **opts)]
    with monkeypatch.context() as m:
        m.setattr(lloyd._Step, "runs_whole", lambda *a: False)
        results.append(kmeans(x, k, **opts))
        m.setattr(lloyd._Step, "where_it_runs", classmethod(lambda *a: None))
        results.append(kmeans(x, k, **opts))
    return results


def assert_same(a, b) -> None:
    for name in ("centroids", "assignments", "dist", "obj", "nsplit", "imbalance", "changed",
                 "pruned"):
        va, vb = getattr(a, name), getattr(b, name)
        assert (va is None) == (vb is None), name
        assert va is None or torch.equal(va, vb), name
    assert a.stop_reason == b.stop_reason and a.n_iter == b.n_iter


CASES = [
    dict(niter=12, prune=False),
    dict(niter=12, prune="elkan"),
    dict(niter=40, prune="elkan", early_stop_threshold=0.0),
    dict(niter=40, prune=False, early_stop_threshold=0.0),
    dict(niter=30, prune="elkan", early_stop_threshold=1e-3),
    dict(niter=10, prune=False, weighted=True),
    dict(niter=10, prune="elkan", frozen=3),
    dict(niter=9, prune="elkan", batch=2, early_stop_threshold=0.0),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_run_is_the_loop_bit_for_bit(monkeypatch, case):
    needs_cpu()
    case = dict(case)
    batch, weighted = case.pop("batch", 1), case.pop("weighted", False)
    frozen = case.pop("frozen", 0)
    x = torch.stack([blobs(700, 32, 9, seed=s, spread=1.0) for s in range(batch)])
    x[:, 600:] = x[:, :100]  # duplicated rows: ties
    K = 40  # more clusters than blobs: re-splits along the way
    opts = dict(case, seed=3, backend="cpu")
    if weighted:
        opts["weights"] = torch.rand(batch, 700, generator=torch.Generator().manual_seed(1))
    if frozen:
        opts["init"] = x[:, :frozen].clone()
        opts["n_frozen"] = frozen
    if batch == 1:
        x = x[0]
        opts = {k: v[0] if isinstance(v, torch.Tensor) else v for k, v in opts.items()}
    whole, per_iteration, separate = run_three_ways(monkeypatch, x, K, **opts)
    assert int(whole.nsplit.sum()) > 0 or frozen  # the re-split's draws are exercised
    assert_same(whole, per_iteration)
    assert_same(whole, separate)


def test_run_records_times_and_stops_like_the_loop(monkeypatch):
    needs_cpu()
    x = blobs(2000, 32, 8, seed=2)
    res = kmeans(x, 8, niter=200, seed=1, record_times=True, early_stop_threshold=0.0)
    assert res.stop_reason == "converged" and res.n_iter < 200
    assert len(res.times) == len(res.search_times) == res.n_iter
    assert all(b >= a for a, b in zip(res.times, res.times[1:], strict=False))
    assert all(s <= t for s, t in zip(res.search_times, res.times, strict=True))
    per_iteration = run_three_ways(monkeypatch, x, 8, niter=200, seed=1,
                                   early_stop_threshold=0.0)[1]
    assert_same(res, per_iteration)


def test_large_runs_take_one_call_per_iteration(monkeypatch):
    """Beyond ONE_CALL_MAX_WORK multiply-adds an iteration the loop calls lloyd_step once per
    iteration (an interrupt lands between them), with the same results."""
    needs_cpu()
    x = blobs(600, 32, 6, seed=4)
    calls = {"run": 0, "step": 0}
    for name, key in (("run", "run"), ("__call__", "step")):
        real = getattr(lloyd._Step, name)

        def spy(*a, real=real, key=key, **kw):
            calls[key] += 1
            return real(*a, **kw)

        monkeypatch.setattr(lloyd._Step, name, spy)
    whole = kmeans(x, 12, niter=9, seed=2, prune="elkan")
    assert calls == {"run": 1, "step": 0}
    monkeypatch.setattr(lloyd, "ONE_CALL_MAX_WORK", 600 * 12 * 32 - 1)
    per_iteration = kmeans(x, 12, niter=9, seed=2, prune="elkan")
    assert calls == {"run": 1, "step": 9}
    assert_same(whole, per_iteration)
