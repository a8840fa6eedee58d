"""Step 1 of an epoch: the features of every image, and where the model runs.

:class:`Placement` says how the model runs on its device (bf16 autocast with ``--amp`` on CUDA,
channels-last memory on CUDA). :class:`FeaturePass` runs a model over the images (centre crops,
eval mode, no augmentation) and returns the penultimate FC layer's output before its ReLU: in
device memory, or with ``--feature-dtype float16`` / ``--feature-cache`` in a host
:class:`fastdc.engine.FeatureStore` (RAM, or a memmap for data beyond RAM) that the PCA and
k-means stream through the device.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
import torch

from fastdc.deepcluster.config import Config
from fastdc.deepcluster.data import SkipLog, Source
from fastdc.deepcluster.distribution import Distribution
from fastdc.deepcluster.models import DeepClusterNet
from fastdc.deepcluster.run_control import Interrupted, StopFlag, note, progress_bar
from fastdc.engine import STORE_DTYPES, FeatureStore


@dataclass
class Placement:
    """Where and how the model runs: ``device``, bf16 autocast (``amp``) and channels-last
    memory (``channels_last``), both for CUDA only."""

    device: torch.device
    amp: bool
    channels_last: bool

    @classmethod
    def for_device(cls, device: torch.device, amp: bool) -> Placement:
        """The placement on ``device``; ``--amp`` on the CPU trains in float32 (with a note)."""
        cuda = device.type == "cuda"
        if amp and not cuda:
            print("note: --amp is for GPUs; training in float32 on the CPU", file=sys.stderr)
        return cls(device, amp and cuda, cuda)

    def autocast(self) -> torch.autocast:
        """The autocast context of the model's forward pass (disabled without ``amp``)."""
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp)

    def model(self, model: DeepClusterNet) -> DeepClusterNet:
        """``model`` moved to the device (and its memory format)."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Images float [B, C, H, W] in the model's memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def warn_unreadable(skips: SkipLog, source: Source, errors: dict[int, str]) -> None:
    """Record a batch's unreadable images {index: reason}; warn once per image on stderr."""
    for index, reason in errors.items():
        if skips.add(index, source.path(index), reason):
            note(f"warning: skipping unreadable image {source.path(index)}: {reason}")


class FeaturePass:
    """Features of every image (or of this rank's shard) with a given model."""

    def __init__(self, cfg: Config, source: Source, place: Placement, dist: Distribution,
                 stop: StopFlag, skips: SkipLog, progress: bool) -> None:
        self.cfg, self.source, self.place, self.dist = cfg, source, place, dist
        self.stop, self.skips, self.progress = stop, skips, progress

    @torch.no_grad()
    def __call__(self, model: DeepClusterNet, label: str = "features", *, shard: bool = False,
                 store: bool = False) -> tuple[torch.Tensor | FeatureStore, np.ndarray]:
        """Features of every image, or with ``shard`` in a group of this rank's rows
        [start, stop) (:meth:`Distribution.shard`); ``store``: into a host FeatureStore.

        Returns (float32 [n, D] on the device or the finalised store, bool [n] ok-mask), n =
        the rows embedded. Raises Interrupted on a stop signal: checked after each batch, or in
        a sharded pass once after the loop, agreed by all ranks (shards may differ by a batch).
        """
        model.eval()
        n_all, bs = len(self.source), self.cfg.batch_size
        rows = self.dist.shard(n_all) if shard else None
        start, stop = rows if rows is not None else (0, n_all)
        n = stop - start
        feats = (self._store(n, model.feature_dim) if store
                 else torch.zeros(n, model.feature_dim, device=self.place.device))
        ok = np.zeros(n, dtype=bool)
        with progress_bar(label, math.ceil(n / bs), self.progress) as bar:
            for batch in self.source.eval_batches(bs, self.place.device, self.cfg.workers,
                                                  rows=rows):
                with self.place.autocast():
                    f = model.features(self.place.inputs(batch.images))
                if store:
                    feats.write(batch.index - start, f)
                else:
                    feats[batch.index.to(self.place.device) - start] = f.float()
                ok[batch.index.numpy() - start] = batch.ok.numpy()
                warn_unreadable(self.skips, self.source, batch.errors)
                bar.update()
                if self.stop and rows is None:
                    raise Interrupted
        if rows is not None and self.dist.agreed_stop(bool(self.stop)):
            raise Interrupted
        return (feats.finalize() if store else feats), ok

    def _store(self, n: int, d: int) -> FeatureStore:
        """Where a streamed pass puts its features [n, d]: RAM, or a memmap named ``features``
        (``features.rank<r>`` in a group) under ``--feature-cache``."""
        dtype = STORE_DTYPES[self.cfg.feature_dtype]
        if self.cfg.feature_cache is None or n == 0:
            return FeatureStore.in_memory(n, d, dtype)
        return FeatureStore.create(self.cfg.feature_cache, n, d, dtype,
                                   self.dist.rank_name("features"))
