"""Where a process stands in a run, and everything that differs between one process and a
rank of a ``torchrun`` group (:class:`Distribution`).

One process is a world of one: its shard is every image, its part of the epoch order is the
whole order and every sum over the group is the identity, so the trainer has one code path.
In a group of P ranks:

- each rank embeds its contiguous shard of the images
  (:func:`fastdc.engine.collectives.shard_range`); PCA and k-means run over the group and the
  labels are gathered on every rank;
- every rank draws the same global epoch order from the shared seed and trains on its own
  disjoint part (positions r, r + P, ... of the order cut to a multiple of P, so every rank
  runs the same number of steps); augmentation, dropout and rotations draw from a per-rank
  seed;
- the model is wrapped in DistributedDataParallel; per-batch losses and the stop flag are
  all-reduced, so every rank holds the same epoch state; after each epoch the BatchNorm
  buffers of rank 0 are broadcast, so every rank embeds with the model rank 0 checkpoints;
- only rank 0 prints and writes outputs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from fastdc.deepcluster.seeds import STREAM_RANK, derive_seed
from fastdc.engine import collectives as fdist


class Distribution:
    """One process (``group`` None) or one rank of a torch.distributed group.

    ``device``: where this process trains; collectives run there for NCCL (CUDA), on the CPU
    for gloo.
    """

    def __init__(self, group: fdist.Group | None, device: torch.device) -> None:
        self.group = group
        self.rank, self.world = fdist.rank(group), fdist.world_size(group)
        self.main = self.rank == 0
        self.device = device
        self.comm_device = device if device.type == "cuda" else torch.device("cpu")
        self._ddp: torch.nn.Module | None = None

    @property
    def distributed(self) -> bool:
        """True for a group of more than one process."""
        return self.world > 1

    def rank_seed(self, seed: int) -> int:
        """This rank's seed for augmentation, dropout and rotations (``seed`` in 1 process)."""
        return derive_seed(seed, STREAM_RANK, self.rank) if self.distributed else seed

    def rank_name(self, name: str) -> str:
        """A file name of this rank's own: ``name``, or ``name.rank<r>`` in a group."""
        return f"{name}.rank{self.rank}" if self.distributed else name

    def shard(self, n: int) -> tuple[int, int] | None:
        """This rank's rows [start, stop) of ``n`` (None in one process: every row)."""
        return fdist.shard_range(n, self.group) if self.distributed else None

    def gather_mask(self, ok: np.ndarray) -> np.ndarray:
        """bool [n_r] of this rank's rows -> bool [N] of every rank's rows, in rank order."""
        t = torch.from_numpy(ok.astype(np.uint8)).to(self.comm_device)
        return fdist.gather_rows(t, self.group).cpu().numpy().astype(bool)

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """[n_r, ...] of this rank -> [N, ...] of every rank, in rank order, on every rank."""
        return fdist.gather_rows(t, self.group)

    def my_part(self, order: np.ndarray) -> np.ndarray:
        """This rank's part of the epoch order (int64 [M] -> [M // P]): positions rank,
        rank + P, ... of the order cut to a multiple of P. The whole order in one process."""
        if not self.distributed:
            return order
        usable = len(order) - len(order) % self.world
        return order[self.rank:usable:self.world]

    def agreed_stop(self, stop: bool) -> bool:
        """True on every rank when any rank received a stop signal (one all-reduce)."""
        flag = torch.tensor([1.0 if stop else 0.0], dtype=torch.float64, device=self.comm_device)
        return bool(fdist.all_reduce_sum(flag, self.group).item() > 0)

    def sum_step(self, loss_sum: float, rows: int, stop: bool, stat_sums: Sequence[float] = ()
                 ) -> tuple[float, int, bool, list[float]]:
        """One training step's (loss × rows, rows, stop, the method's statistics × rows)
        summed over the group (one all-reduce; the stop is True when any rank stops)."""
        t = torch.tensor([loss_sum, rows, float(stop), *stat_sums], dtype=torch.float64,
                         device=self.comm_device)
        loss_sum, rows_all, stops, *sums = fdist.all_reduce_sum(t, self.group).tolist()
        return loss_sum, int(rows_all), stops > 0, sums

    def prepare_model(self, model: torch.nn.Module, sync_bn: bool) -> torch.nn.Module:
        """``model`` with SyncBatchNorm when ``sync_bn`` asks for it in a group on CUDA."""
        if not (sync_bn and self.distributed):
            return model
        if self.device.type == "cuda":
            return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if self.main:
            print("note: --sync-bn needs CUDA; BatchNorm stays per process on the CPU",
                  file=sys.stderr)
        return model

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module a training step calls: ``model``, or in a group its DDP wrapper (built
        once per head: call :meth:`new_head` after replacing the head, since DDP registers the
        parameters it was built with)."""
        if not self.distributed:
            return model
        if self._ddp is None:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(model, device_ids=ids, process_group=self.group)
        return self._ddp

    def new_head(self) -> None:
        """Forget the DDP wrapper: the model's head was replaced."""
        self._ddp = None

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
        if self.distributed:
            for buf in model.buffers():
                fdist.broadcast_from_first(buf.data, self.group)
