"""The epoch loop of DeepCluster (Caron et al., ECCV 2018) and DeeperCluster (ICCV 2019).

Each epoch follows DeepCluster's ``main.py``, one module per step:

1. features of every image (centre crops, eval mode): the penultimate FC layer before its ReLU
   (:mod:`fastdc.deepcluster.features`);
2. PCA whitening to ``--pca-dim`` + row L2 norm, and
3. the method's k-means (:mod:`fastdc.deepcluster.pseudo_labels`,
   :mod:`fastdc.deepcluster.methods`);
4. ``--reassign`` × N images drawn uniformly over the non-empty clusters, and a fresh head
   (N(0, 0.01), zero bias, its own SGD without momentum);
5. one epoch of cross-entropy training on the cluster ids with random-resized crops (+ flips),
   SGD on the body (lr, momentum, weight decay persist) (:mod:`fastdc.deepcluster.training`).

``--reassign-every E`` re-clusters every E epochs; the epochs between keep the targets and the
head and draw a fresh order. What differs between DeepCluster and DeeperCluster lives in the
method objects, what differs between one process and a torchrun group in
:mod:`fastdc.deepcluster.distribution`, the files and console lines in
:mod:`fastdc.deepcluster.outputs` and the comparison at the end in
:mod:`fastdc.deepcluster.final_eval`.

Reproducibility: every random choice draws from its own stream
(:mod:`fastdc.deepcluster.seeds`). A run stopped by SIGINT/SIGTERM saves ``checkpoint.pt`` at the
next batch boundary (mid-epoch state included, :class:`fastdc.deepcluster.training.Partial`) and
continues from it; on the CPU the resumed run ends bit-identical to an uninterrupted one.
``checkpoint.pt`` is rewritten after every epoch; ``--save-every N`` also keeps a copy,
``checkpoint_epochNNN.pt``, every N epochs. ``--init-from`` weights replace the random init
of everything but the head before the first epoch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastdc.deepcluster.checkpoint import rng_states, save_checkpoint, set_rng_states
from fastdc.deepcluster.config import Config, pick_device
from fastdc.deepcluster.data import SkipLog, Source
from fastdc.deepcluster.distribution import Distribution
from fastdc.deepcluster.features import FeaturePass, Placement
from fastdc.deepcluster.final_eval import final_evaluation
from fastdc.deepcluster.methods import Clusters, make_method
from fastdc.deepcluster.models import DeepClusterNet, initial_model
from fastdc.deepcluster.outputs import Outputs, epoch_record
from fastdc.deepcluster.pseudo_labels import PseudoLabels
from fastdc.deepcluster.run_control import Interrupted, StopFlag
from fastdc.deepcluster.seeds import STREAM_HEAD, STREAM_INIT, derive_seed
from fastdc.deepcluster.tensorboard_log import TensorBoardLog
from fastdc.deepcluster.training import EpochTraining, Partial
from fastdc.deepcluster.weights import Weights, load_into
from fastdc.engine import collectives as fdist

CHECKPOINT_FORMAT = "fastdc-deepcluster-1"


class Trainer:
    """One DeepCluster or DeeperCluster run; :meth:`run` does everything.

    ``on_batch(epoch, batches_done)`` is called after every training step; ``group``: the
    torch.distributed group of a multi-process run (None: one process).
    """

    def __init__(self, cfg: Config, source: Source, out: Path, *,
                 on_batch: Callable[[int, int], None] | None = None,
                 group: fdist.Group | None = None) -> None:
        self.cfg, self.source, self.out = cfg, source, out
        self.dist = Distribution(group, pick_device(cfg.device))
        self.place = Placement.for_device(self.dist.device, cfg.amp)
        self.method = make_method(cfg, self.dist)
        self.progress = ((sys.stderr.isatty() if cfg.progress is None else cfg.progress)
                         and self.dist.main)
        self.stop, self.skips = StopFlag(), SkipLog()
        self.outputs = Outputs(cfg, out, self.dist.main)
        self.board = TensorBoardLog(out / "tensorboard", bool(cfg.tensorboard) and self.dist.main)
        self.model = self.dist.prepare_model(self.new_model(), cfg.sync_bn)
        self.optimizer = torch.optim.SGD(self.model.body_parameters(), lr=cfg.lr,
                                         momentum=cfg.momentum, weight_decay=cfg.wd)
        self.head_optimizer = self._head_optimizer()
        self.features = FeaturePass(cfg, source, self.place, self.dist, self.stop, self.skips,
                                    self.progress)
        self.pseudo_labels = PseudoLabels(cfg, self.method, self.dist)
        self.training = EpochTraining(cfg, source, self.method, self.place, self.dist,
                                      self.stop, self.skips, self.progress, on_batch)
        self.epoch = 0  # completed epochs
        self.records: list[dict[str, Any]] = []
        self.assignment: np.ndarray | None = None  # the last completed epoch's targets
        self.partial: Partial | None = None  # the epoch in its training phase
        self.elapsed = 0.0  # wall time of earlier sessions of this run
        self.steps = 0  # training steps of the completed epochs
        self.t0 = time.perf_counter()

    def new_model(self) -> DeepClusterNet:
        """The model at its random init (the same for every run with this seed), placed."""
        cfg = self.cfg
        model = initial_model(cfg.arch, self.method.head_outputs, cfg.in_channels, cfg.sobel,
                              derive_seed(cfg.seed, STREAM_INIT))
        return self.place.model(model)

    def _head_optimizer(self) -> torch.optim.SGD:
        # DeepCluster: SGD(top_layer.parameters(), lr, weight_decay), no momentum;
        # DeeperCluster's reference: momentum 0.9 (--head-momentum).
        return torch.optim.SGD(self.model.top_layer.parameters(), lr=self.cfg.lr,
                               momentum=self.cfg.head_momentum or 0.0,
                               weight_decay=self.cfg.wd)

    # ---- checkpoints

    def state(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly (the checkpoint's content)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": asdict(self.cfg),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_states(),
            "assignment": None if self.assignment is None else self.assignment.astype(np.int32),
            "records": self.records,
            "partial": None if self.partial is None else self.partial.state(self.head_optimizer),
            "skipped": self.skips.skipped,
            "elapsed": self.elapsed + (time.perf_counter() - self.t0),
            "steps": self.steps,
        }

    def save(self, snapshot: bool = False) -> None:
        """Write checkpoint.pt, and with ``snapshot`` at every --save-every-th epoch also
        checkpoint_epochNNN.pt (rank 0 only; the other ranks hold the same state)."""
        if not self.dist.main:
            return
        state = self.state()
        save_checkpoint(state, self.out / "checkpoint.pt")
        every = self.cfg.save_every
        if snapshot and every and self.epoch % every == 0:
            save_checkpoint(state, self.out / f"checkpoint_epoch{self.epoch:03d}.pt")

    def restore(self, state: dict[str, Any]) -> None:
        """Load a checkpoint written by :meth:`state` (architecture already checked)."""
        head = state["model"]["top_layer.weight"].shape[0]
        if head != self.method.head_outputs:  # --clustering pic sizes the head to its clusters
            self.method.n_targets = self.method.head_outputs = head
            self.model.reset_head(head)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.head_optimizer = self._head_optimizer()
        self.epoch = int(state["epoch"])
        self.records = list(state["records"])
        a = state["assignment"]
        self.assignment = None if a is None else np.asarray(a, dtype=np.int64)
        self.skips.skipped = dict(state.get("skipped", {}))
        self.elapsed = float(state.get("elapsed", 0.0))
        self.steps = int(state.get("steps", 0))
        if state.get("partial") is not None:
            self.head_optimizer.load_state_dict(state["partial"]["head_optimizer"])
            self.partial = Partial.from_state(state["partial"])
        set_rng_states(state["rng"])

    def start(self, state: dict[str, Any] | None = None, init: Weights | None = None) -> None:
        """Print the run's first line; with a checkpoint ``state``, continue from it, else
        start from ``init``'s weights (head dropped) when given."""
        self.outputs.banner(self.source, self.method.title, self.method.describe(),
                            self.place.device, self.dist.world)
        if state is None:
            # A folder without a checkpoint keeps nothing of a run killed before its first one.
            self.outputs.rewrite_log([])
            self.outputs.choices()
            self.board.open(0)
            if self.cfg.resume:
                self.outputs.say(f"--resume: no checkpoint in {self.out} yet; starting the run")
            if init is not None:
                load_into(self.model, init, head=False, where=self.cfg.init_from)
                self.outputs.say(f"initialised from {self.cfg.init_from} ({init.describe()}); "
                                 "head dropped")
            return
        self.restore(state)
        self.outputs.rewrite_log(self.records)
        where = f"epoch {self.epoch + 1}"
        if self.partial is not None:
            where += f", batch {self.partial.batch + 1}"
        self.board.open(self.steps + (0 if self.partial is None else self.partial.batch))
        self.outputs.say(f"resuming at {where}")

    # ---- the epoch

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Cluster (steps 1-4), then train for one epoch (step 5), or finish a resumed one;
        returns the epoch's record."""
        t_start = time.perf_counter()
        if self.partial is not None and self.partial.epoch == epoch:
            p = self.partial
        elif self.assignment is None or epoch % self.cfg.reassign_every == 0:
            p = self.recluster(epoch, t_start)
        else:
            p = self.keep_targets(epoch)
        t_train = time.perf_counter()
        r, steps = p.record, self.steps
        optimizers = (self.optimizer, self.head_optimizer)
        r["train_loss"] = self.training.run(p, self.model, optimizers,
                                            lambda done, loss: self.board.loss(steps + done, loss))
        r["time_train"] = r.get("time_train", 0.0) + time.perf_counter() - t_train
        r["time"] = r["time_features"] + r["time_clustering"] + r["time_train"]
        self.assignment, self.partial = p.assignment, None
        self.epoch, self.steps = epoch + 1, steps + p.batch
        return r

    def recluster(self, epoch: int, t_start: float) -> Partial:
        """Steps 1-4: features, whitening + k-means, the epoch's order and a fresh head.
        Raises Interrupted after them on a stop signal (the checkpoint then holds them)."""
        feats, ok = self.features(self.model, shard=True, store=self.cfg.streamed_features)
        t_feat = time.perf_counter()
        assignment, clusters = self.pseudo_labels.assign(feats, ok, epoch)
        del feats
        times = (t_feat - t_start, time.perf_counter() - t_feat)
        record = self._record(epoch, assignment, clusters, times)
        order = self.pseudo_labels.sample_order(assignment, epoch)
        head_gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, STREAM_HEAD, epoch))
        self.model.reset_head(self.method.head_outputs, head_gen,
                              normal=self.cfg.head_init != "default")
        self.head_optimizer = self._head_optimizer()
        self.dist.new_head()
        self.partial = Partial(epoch, 0, assignment, order, 0.0, 0, record)
        if self.stop:
            raise Interrupted
        return self.partial

    def keep_targets(self, epoch: int) -> Partial:
        """An epoch between re-clusterings: the same targets and head, a fresh order."""
        assignment = self.assignment
        record = self._record(epoch, assignment, None, (0.0, 0.0))
        order = self.pseudo_labels.sample_order(assignment, epoch)
        self.partial = Partial(epoch, 0, assignment, order, 0.0, 0, record)
        return self.partial

    def _record(self, epoch: int, assignment: np.ndarray, clusters: Clusters | None,
                times: tuple[float, float]) -> dict[str, Any]:
        """The epoch's record before training (``clusters`` None: no re-clustering)."""
        labels = self.source.labels
        previous = None if clusters is None else self.assignment
        record = epoch_record(epoch, assignment, previous, labels, len(self.skips),
                              None if clusters is None else clusters.loss, times)
        record.update({} if clusters is None else clusters.extra)
        if self.cfg.reassign_every > 1:
            record["reclustered"] = clusters is not None
        record.update(self.method.metrics(assignment, labels))
        return record

    # ---- the run

    def run(self) -> dict[str, Any]:
        """Train for the remaining epochs, evaluate, write the outputs; returns the summary.

        Raises Interrupted (after saving the checkpoint) when SIGINT/SIGTERM arrives.
        """
        self.t0 = time.perf_counter()
        self.stop.install()
        try:
            first = self.epoch
            for epoch in range(self.epoch, self.cfg.epochs):
                record = self.run_epoch(epoch)
                self.records.append(record)
                self.outputs.epoch_done(record, self.assignment)
                self.board.epoch(record, self.assignment, self.method.n_targets, self.steps)
                self.save(snapshot=True)
                per_epoch = (time.perf_counter() - self.t0) / (epoch + 1 - first)
                self.outputs.print_epoch(record, per_epoch * (self.cfg.epochs - epoch - 1))
            ev = None
            if self.cfg.final_eval and self.dist.main:
                ev = final_evaluation(self.cfg, self.source, self.features, self.model,
                                      self.new_model(), self.progress)
        except Interrupted:
            self.save()
            raise Interrupted(str(self.out), self.stop.signum) from None
        finally:
            self.stop.uninstall()
            self.board.close()
        wall = self.elapsed + time.perf_counter() - self.t0
        if ev is not None:
            self.outputs.print_table(ev)
        if self.cfg.plots:
            self.outputs.plots(self.records, self.assignment, self.source)
        return self.outputs.write_summary(self.source, self.place.device, self.dist.world,
                                          self.records, ev, self.skips, wall)
