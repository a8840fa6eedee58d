"""Step 5 of an epoch: one pass of training on the pseudo-labels.

The images of the epoch's order (this rank's part of it) come with random-resized crops (+
flips); the method prepares the inputs (DeeperCluster rotates them) and computes the loss on
the readable rows; the body's SGD (lr, momentum, weight decay, persistent across epochs) and
the head's SGD (no momentum, rebuilt with every new head) step together. Before each step the
global torch generator, which dropout draws from, is seeded from (seed, epoch, batch), so a run
resumed at a batch boundary trains exactly as the uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fastdc.deepcluster.config import Config
from fastdc.deepcluster.data import Batch, SkipLog, Source
from fastdc.deepcluster.distribution import Distribution
from fastdc.deepcluster.features import Placement, warn_unreadable
from fastdc.deepcluster.methods import Method
from fastdc.deepcluster.models import DeepClusterNet
from fastdc.deepcluster.run_control import Interrupted, StopFlag, progress_bar
from fastdc.deepcluster.seeds import STREAM_DROPOUT, derive_seed


@dataclass
class Partial:
    """An epoch in its training phase (saved in the checkpoint when a run stops there).

    assignment: int64 [N] targets; order: int64 [M] the epoch's training order; batch: steps
    done; loss_sum / seen: summed loss × rows and rows so far (over all ranks); record: the
    epoch's record so far; stat_sums: the method's step statistics × rows, summed likewise.
    """

    epoch: int
    batch: int
    assignment: np.ndarray
    order: np.ndarray
    loss_sum: float
    seen: int
    record: dict[str, Any]
    stat_sums: list[float] = field(default_factory=list)

    def state(self, head_optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The checkpoint's ``partial`` entry (with the head optimiser's state)."""
        return {"epoch": self.epoch, "batch": self.batch,
                "assignment": self.assignment.astype(np.int32), "order": self.order,
                "loss_sum": self.loss_sum, "seen": self.seen, "record": self.record,
                "stat_sums": self.stat_sums, "head_optimizer": head_optimizer.state_dict()}

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> Partial:
        """The inverse of :meth:`state` (without the head optimiser)."""
        return cls(s["epoch"], s["batch"], np.asarray(s["assignment"], dtype=np.int64),
                   np.asarray(s["order"], dtype=np.int64), s["loss_sum"], s["seen"],
                   s["record"], list(s.get("stat_sums", [])))


class EpochTraining:
    """Trains a model for one epoch on the targets of a :class:`Partial`."""

    def __init__(self, cfg: Config, source: Source, method: Method, place: Placement,
                 dist: Distribution, stop: StopFlag, skips: SkipLog, progress: bool,
                 on_batch: Callable[[int, int], None] | None = None) -> None:
        self.cfg, self.source, self.method, self.place = cfg, source, method, place
        self.dist, self.stop, self.skips, self.progress = dist, stop, skips, progress
        self.on_batch = on_batch
        self.rank_seed = dist.rank_seed(cfg.seed)

    def run(self, p: Partial, model: DeepClusterNet,
            optimizers: tuple[torch.optim.Optimizer, ...],
            on_step: Callable[[int, float], None] | None = None) -> float:
        """Train on this rank's part of ``p.order`` from batch ``p.batch`` on, updating ``p``
        after every step, and calling ``on_step(steps done this epoch, the step's mean loss
        over all ranks)``; returns the epoch's mean loss over all ranks, and writes the means
        of the method's step statistics into ``p.record`` as ``train_<name>``. Raises
        Interrupted at a batch boundary after a stop signal (not after the last batch)."""
        model.train()
        net = self.dist.wrap(model)
        self.method.begin_epoch(p.assignment)
        targets = torch.from_numpy(p.assignment)
        order = self.dist.my_part(p.order)
        bs = self.cfg.batch_size
        nbatches = math.ceil(len(order) / bs)
        batches = self.source.train_batches(order, bs, self.rank_seed, p.epoch, self.place.device,
                                            self.cfg.workers, start_batch=p.batch)
        with progress_bar("train", nbatches, self.progress, initial=p.batch) as bar:
            for batch in batches:
                warn_unreadable(self.skips, self.source, batch.errors)
                loss_sum, rows, stats = self.step(net, batch, targets, p, optimizers)
                p.batch += 1
                bar.update()
                if self.on_batch is not None:
                    self.on_batch(p.epoch, p.batch)
                loss_sum, rows, stop, stats = self.dist.sum_step(loss_sum, rows,
                                                                 bool(self.stop), stats)
                p.loss_sum += loss_sum
                p.seen += rows
                p.stat_sums = [a + b for a, b in zip(p.stat_sums or [0.0] * len(stats), stats,
                                                     strict=True)]
                if on_step is not None and rows:
                    on_step(p.batch, loss_sum / rows)
                if stop and p.batch < nbatches:
                    raise Interrupted
        self.dist.sync_buffers(model)
        if p.stat_sums:
            for name, total in zip(self.method.step_stats, p.stat_sums, strict=True):
                p.record[f"train_{name}"] = total / max(p.seen, 1)
        return p.loss_sum / max(p.seen, 1)

    def step(self, net: torch.nn.Module, batch: Batch, targets: torch.Tensor, p: Partial,
             optimizers: tuple[torch.optim.Optimizer, ...]) -> tuple[float, int, list[float]]:
        """One SGD step on ``batch`` with targets int64 [N] of every image; returns (loss ×
        readable rows, readable rows, the method's step statistics × readable rows). A batch
        without readable images is skipped in one process; in a group the step runs anyway
        with a zero loss (DDP's all-reduce needs every rank)."""
        nstats = len(self.method.step_stats)
        if not (batch.ok.any() or self.dist.distributed):
            return 0.0, 0, [0.0] * nstats
        torch.manual_seed(derive_seed(self.rank_seed, STREAM_DROPOUT, p.epoch, p.batch))
        keep = batch.ok.to(self.place.device)
        batch_targets = targets[batch.index].to(self.place.device)
        images, aux = self.method.inputs(batch.images, keep, self.rank_seed, p.epoch, p.batch)
        with self.place.autocast():
            logits = net(self.place.inputs(images))
        rows = int(keep.sum())
        if rows:
            loss, stats = self.method.loss_and_stats(logits[keep], batch_targets[keep], aux)
        else:
            loss, stats = logits.float().sum() * 0.0, torch.zeros(nstats)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers:
            opt.step()
        return float(loss.detach()) * rows, rows, (stats.double() * rows).tolist()
