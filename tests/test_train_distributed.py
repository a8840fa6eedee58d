"""``python -m fastdc.train`` over 2 gloo processes (torchrun and fastdc.engine.collectives.spawn):
both methods run and finish with rank 0's outputs, the first epoch's clusters match one process,
and the trainer's sharded clustering equals the single-process clustering of the same features.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastdc.deepcluster import Trainer, load_mnist, main, parse_config, resolve_defaults
from fastdc.engine import collectives as fdist

TINY = ["--subset", "300", "--epochs", "2", "--batch-size", "64", "--pca-dim", "16",
        "--no-final-eval"]
METHODS = {
    "deepcluster": ["--k", "8"],
    "deepercluster": ["--method", "deepercluster", "--k", "5", "--super-classes", "3"],
}


def torchrun(args: list[str], nproc: int = 2, module: str = "fastdc.train", **env_vars: str
             ) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` (or a script path instead of ``-m module``) in ``nproc``
    gloo processes under torchrun, with ``env_vars`` added to the environment."""
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", **env_vars)
    target = ["-m", module] if module else []
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(fdist.free_port()),
           *target, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


# Each rank: DDP step + buffer broadcast inside process_group_from_env, then counts its OS
# threads. Leaving the context must free the gloo group (its destructor joins gloo's worker
# threads); a group kept alive until interpreter exit aborts the process there at random.
GROUP_RELEASE = """
import gc, os, torch, torch.distributed as dist
from fastdc.deepcluster.process_group import process_group_from_env
threads = lambda: len(os.listdir("/proc/self/task"))
before = threads()
with process_group_from_env("cpu") as env:
    net = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2),
                                                    process_group=env.group)
    net(torch.ones(3, 4)).sum().backward()
    dist.broadcast(torch.ones(5), src=0, group=env.group)
    del net
gc.collect()
with open(os.environ["THREADS_OUT"] + os.environ["RANK"], "w") as f:  # one file a rank: the
    f.write(f"{before} {threads()}")  # ranks share torchrun's stdout, lines can interleave
"""


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_leaving_the_torchrun_process_group_joins_gloo_threads(tmp_path):
    script = tmp_path / "release.py"
    script.write_text(GROUP_RELEASE)
    proc = torchrun([str(script)], module="", THREADS_OUT=str(tmp_path / "threads.rank"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in range(2):
        before, after = map(int, (tmp_path / f"threads.rank{rank}").read_text().split())
        assert after <= before, (rank, before, after)


@pytest.mark.stress
@pytest.mark.parametrize("method", list(METHODS))
def test_torchrun_two_processes_train_and_match_one_process(tmp_path, method, capsys):
    # features streamed through an on-disk cache (kept by --resume below), in both runs
    out2, cache = tmp_path / "two", tmp_path / "cache"
    proc = torchrun([*TINY, *METHODS[method], "--feature-cache", str(cache), "--out", str(out2)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("epoch   2/2") == 1  # only rank 0 prints
    assert "× 2 processes" in proc.stdout
    for name in ("checkpoint.pt", "log.jsonl", "summary.json", "curves.png", "clusters.png",
                 "assignments/epoch_001.npy", "assignments/epoch_002.npy"):
        assert (out2 / name).is_file(), name
    summary = json.loads((out2 / "summary.json").read_text())
    assert summary["world_size"] == 2 and len(summary["epochs"]) == 2
    assert all(np.isfinite(r["train_loss"]) for r in summary["epochs"])

    # one process, same seed: the same model at epoch 1, so the same clusters up to float
    # summation order (sharded embedding, all-reduced PCA and k-means)
    out1 = tmp_path / "one"
    assert main([*TINY, *METHODS[method], "--no-plots", "--feature-cache", str(tmp_path / "c1"),
                 "--out", str(out1)]) == 0
    capsys.readouterr()
    a1 = np.load(out1 / "assignments" / "epoch_001.npy")
    a2 = np.load(out2 / "assignments" / "epoch_001.npy")
    assert np.mean(a1 == a2) >= 0.99
    r1, r2 = read_log(out1)[0], read_log(out2)[0]
    assert r2["clustering_loss"] == pytest.approx(r1["clustering_loss"], rel=1e-4)
    assert r2["nmi_labels"] == pytest.approx(r1["nmi_labels"], abs=0.02)

    # every rank resumes from rank 0's checkpoint and adds an epoch, this time with the final
    # evaluation: every rank still exits 0
    proc = torchrun(["--resume", "--epochs", "3", "--out", str(out2)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resuming at epoch 3" in proc.stdout and proc.stdout.count("epoch   3/3") == 1
    assert sorted(p.name for p in cache.glob("features.rank*.json")) == [
        "features.rank0.json", "features.rank1.json"]
    assert json.loads((out2 / "summary.json").read_text())["final_evaluation"]
    assert [r["epoch"] for r in read_log(out2)] == [1, 2, 3]
    assert torch.load(out2 / "checkpoint.pt", weights_only=False)["epoch"] == 3


def features(n: int = 300, d: int = 32, centres: int = 12, seed: int = 0) -> torch.Tensor:
    """Well-separated Gaussian blobs: no near-ties, so assignments must agree exactly."""
    g = torch.Generator().manual_seed(seed)
    c = 6.0 * torch.randn(centres, d, generator=g)
    return c[torch.randint(centres, (n,), generator=g)] + torch.randn(n, d, generator=g)


def make_trainer(method: str, out: Path, group=None) -> Trainer:
    src = load_mnist(300)
    cfg = resolve_defaults(parse_config([*TINY, *METHODS[method], "--out", str(out)]), src)
    return Trainer(cfg, src, out, group=group)


def readable() -> np.ndarray:
    ok = np.ones(300, dtype=bool)
    ok[[3, 150, 299]] = False  # unreadable rows on both shards
    return ok


def _cluster_worker(group, out: str) -> dict:
    """Each rank clusters its shard of the same features through Trainer.cluster."""
    result = {}
    x, ok = features(), readable()
    start, stop = fdist.shard_range(len(x), group)
    for method in METHODS:
        trainer = make_trainer(method, Path(out), group)
        assignment, clusters = trainer.pseudo_labels.assign(x[start:stop], ok[start:stop], epoch=1)
        result[method] = (assignment, clusters.loss, clusters.extra)
        result[method + "_part"] = trainer.dist.my_part(np.arange(11))
    return result


def test_sharded_trainer_clustering_equals_one_process(tmp_path):
    ranks = fdist.spawn(_cluster_worker, 2, (str(tmp_path),))
    x, ok = features(), readable()
    for method in METHODS:
        want, clusters = make_trainer(method, tmp_path).pseudo_labels.assign(x, ok, epoch=1)
        want_loss, want_extra = clusters.loss, clusters.extra
        for r in ranks:  # every rank holds every image's label
            got, loss, extra = r[method]
            np.testing.assert_array_equal(got, want)
            assert loss == pytest.approx(want_loss, rel=1e-5)
            for key, value in want_extra.items():
                assert extra[key] == pytest.approx(value, rel=1e-5)
        # disjoint, equal-length parts of the epoch order
        parts = [r[method + "_part"] for r in ranks]
        assert len(parts[0]) == len(parts[1]) == 5
        assert not set(parts[0]) & set(parts[1])
