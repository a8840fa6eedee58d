"""Scale-out pieces of the k-means engine on this CPU, side by side (``pytest --benchmark``).

1. Distributed k-means: N=200 000, D=64, K=256, 10 Lloyd iterations, same seed, in fresh
   processes: 1 process × 1 thread, 1 process × 2 threads (the reference), 2 gloo processes ×
   1 thread each (``kmeans(..., group=...)``, every rank holding half of the rows). Reported:
   seconds per iteration (from the loop's own clock, after a barrier), the measured time of one
   all-reduce of the K·D + K float32 sums/counts buffer between the 2 processes, and the final
   objective (identical up to summation order: the runs must agree).
2. DeeperCluster's sub-class clustering: S=16 super-classes of 4-6k rows, D=64, k=32, 10
   iterations: one batched, masked ``kmeans`` call over the padded [16, 6000, 64] batch vs a
   Python loop of 16 ``kmeans`` calls.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.report import record
from benchmarks.timing import measure
from fastdc.engine import collectives as fdist
from fastdc.engine import initial_centroids, kmeans, pack_groups

N, D, K, NITER = 200_000, 64, 256, 10
TABLE = "kmeans_distributed_cpu_200k_64_256"


def _data() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    centres = 3.0 * torch.randn(2000, D, generator=g)
    return centres[torch.randint(2000, (N,), generator=g)] + torch.randn(N, D, generator=g)


def _run(group, distributed: bool) -> dict:
    """One rank: cluster its rows (all of them when not distributed), time the loop."""
    x = _data()
    if distributed:
        start, stop = fdist.shard_range(N, group)
        x = x[start:stop].contiguous()
    use = group if distributed else None
    kmeans(x[:5000], 16, niter=1)  # warm-up: thread pools, first touch
    torch.distributed.barrier(group)
    run = measure(lambda: kmeans(x, K, niter=NITER, seed=1, group=use, record_times=True),
                  rounds=1, warmup=0)
    res = run.result
    allreduce = float("nan")
    if distributed:
        buf = torch.zeros(1, K * D + K)
        torch.distributed.barrier(group)
        allreduce = measure(lambda: fdist.all_reduce_sum(buf, group), rounds=20, warmup=0).mean
    return {"per_iter": res.times[-1] / NITER, "total": run.best, "obj": float(res.obj[-1]),
            "allreduce": allreduce}


@pytest.mark.parametrize(
    "name, nprocs, threads",
    [("1 process x 2 threads", 1, 2), ("1 process x 1 thread", 1, 1),
     ("2 gloo processes x 1 thread", 2, 1)],
)
def test_distributed_kmeans(name, nprocs, threads):
    ranks = fdist.spawn(_run, nprocs, (nprocs > 1,), threads=threads, timeout_s=600)
    per_iter = max(r["per_iter"] for r in ranks)  # the slowest rank sets the pace
    record(
        TABLE,
        {"name": name, "time_per_iter_s": per_iter,
         "GFLOP/s": 2.0 * N * K * D / per_iter / 1e9,
         "total_s": max(r["total"] for r in ranks),
         "allreduce_ms": ranks[0]["allreduce"] * 1e3 if nprocs > 1 else None,
         "objective": ranks[0]["obj"]},
        reference="1 process x 2 threads",
        note=f"N={N} D={D} K={K} niter={NITER}, seed 1, fresh processes, 2-core CPU; "
        f"all-reduce of {K * D + K} float32 per iteration",
    )
    assert len({round(r["obj"], 0) for r in ranks}) == 1  # ranks agree on the objective


S, SUB_K, SUB_D = 16, 32, 64
SUB_TABLE = "subclass_batched_vs_looped_16x5k_64_32"


@pytest.fixture(scope="module")
def super_classes():
    g = torch.Generator().manual_seed(1)
    sizes = torch.randint(4000, 6001, (S,), generator=g)
    xs = [torch.randn(SUB_K * 2, SUB_D, generator=g)[torch.randint(SUB_K * 2, (int(n),),
                                                                    generator=g)]
          + 0.3 * torch.randn(int(n), SUB_D, generator=g) for n in sizes]
    labels = torch.cat([torch.full((int(n),), s) for s, n in enumerate(sizes)])
    x = torch.cat(xs)
    packed = pack_groups(x, labels, torch.arange(S))
    init = initial_centroids(packed.x, SUB_K, seed=2, mask=packed.mask)
    return x, labels, packed, init


def _record_sub(name: str, seconds: float, obj: float, rows: int) -> None:
    record(
        SUB_TABLE,
        {"name": name, "time_s": seconds, "time_per_iter_s": seconds / NITER,
         "objective": obj, "rows": rows},
        reference="looped (16 calls)",
        note=f"S={S} super-classes of 4000-6000 rows, D={SUB_D}, k={SUB_K}, niter={NITER}, "
        "same seeds; batched pads to the largest super-class",
    )


def test_subclasses_batched(super_classes):
    x, labels, packed, init = super_classes
    run = measure(lambda: kmeans(packed.x, SUB_K, niter=NITER, init=init, mask=packed.mask))
    res = run.result
    _record_sub("batched (1 call)", run.best, float(res.obj[-1].sum()), packed.x.shape[1])
    assert bool((res.assignments[packed.mask] >= 0).all())


def test_subclasses_looped(super_classes):
    x, labels, packed, init = super_classes
    run = measure(lambda: [kmeans(x[labels == s], SUB_K, niter=NITER, init=init[s])
                           for s in range(S)])
    obj = sum(float(r.obj[-1]) for r in run.result)
    _record_sub("looped (16 calls)", run.best, obj, int(torch.bincount(labels).max()))
    assert len(run.result) == S
