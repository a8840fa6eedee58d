"""Steps 2 to 4 of an epoch: features -> pseudo-labels -> the epoch's training order.

2. PCA whitening to ``--pca-dim`` (eigenvalue power -0.5) and row L2 norm of the readable
   images' features (:func:`fastdc.engine.pca_whiten`, or :func:`fastdc.engine.
   pca_whiten_streaming` ``--kmeans-chunk`` rows at a time for features in a host store);
3. the method's clustering (:mod:`fastdc.deepcluster.methods`): k-means with ``--k`` clusters
   and ``--kmeans-iters`` Lloyd iterations, or DeeperCluster's two-level k-means, or with
   ``--clustering pic`` power iteration clustering (:func:`fastdc.engine.pic`, DeepCluster's
   defaults: 5 neighbours, sigma 0.2), whose cluster count sizes the head; in a group
   each rank brings its shard, PCA and k-means run over the group and every rank gets every
   image's target;
4. ``--reassign`` × N images drawn uniformly over the non-empty targets
   (:class:`fastdc.clustering.UnifLabelSampler`), the same order on every rank.
"""

from __future__ import annotations

import numpy as np
import torch

from fastdc.clustering import UnifLabelSampler
from fastdc.deepcluster.config import Config, UsageError
from fastdc.deepcluster.distribution import Distribution
from fastdc.deepcluster.methods import Clusters, Method
from fastdc.deepcluster.seeds import STREAM_KMEANS, STREAM_SAMPLER, derive_seed
from fastdc.engine import FeatureStore, pca_whiten, pca_whiten_streaming, pic


class PseudoLabels:
    """Turns an epoch's features into targets, and targets into the epoch's order."""

    def __init__(self, cfg: Config, method: Method, dist: Distribution) -> None:
        self.cfg, self.method, self.dist = cfg, method, dist
        if cfg.clustering == "pic" and (cfg.method != "deepcluster" or dist.group is not None):
            raise UsageError("--clustering pic runs with --method deepcluster in one process "
                             "(not under torchrun); use --clustering kmeans there")

    def assign(self, feats: torch.Tensor | FeatureStore, ok: np.ndarray, epoch: int
               ) -> tuple[np.ndarray, Clusters]:
        """Whiten and cluster the readable images' features (steps 2 and 3).

        feats: float32 [n, D] on the device or a host store, ok: bool [n] — every image, or
        this rank's shard in a group. Returns (targets int64 [N] of *every* image, -1 for
        unreadable ones; the method's :class:`Clusters`). Raises UsageError when fewer images
        are readable than the method needs.
        """
        ok_all = self.dist.gather_mask(ok)
        n_rows = int(ok_all.sum())
        if n_rows < self.method.min_rows:
            raise UsageError(f"{self.method.min_rows_flag} {self.method.min_rows} is larger "
                             f"than the number of readable images ({n_rows} of {len(ok_all)})")
        seed = derive_seed(self.cfg.seed, STREAM_KMEANS, epoch) % (2**31)
        if self.cfg.clustering == "pic":
            clusters = self.pic(self.whiten(feats, ok))
        else:
            clusters = self.method.cluster(self.whiten(feats, ok), seed, n_rows)
        assignment = np.full(len(ok_all), -1, dtype=np.int64)
        assignment[np.flatnonzero(ok_all)] = clusters.labels.cpu().numpy()
        return assignment, clusters

    def pic(self, x: torch.Tensor | FeatureStore) -> Clusters:
        """Power iteration clustering of the whitened rows x [n, d]; the method's targets and
        head become the clusters it finds. PIC has no loss (None)."""
        if isinstance(x, FeatureStore):
            x = x.data.to(self.dist.device, torch.float32)
        res = pic(x)
        self.method.n_targets = self.method.head_outputs = res.n_clusters
        return Clusters(res.labels, None, {"pic_clusters": res.n_clusters})

    def whiten(self, feats: torch.Tensor | FeatureStore, ok: np.ndarray
               ) -> torch.Tensor | FeatureStore:
        """Step 2 on the readable rows: float32 [n_ok, pca_dim] on the device, or for a store
        a new store (in RAM, or next to the feature cache as ``whitened``)."""
        cfg, dist = self.cfg, self.dist
        if not isinstance(feats, FeatureStore):
            keep = torch.from_numpy(np.flatnonzero(ok)).to(dist.device)
            return pca_whiten(feats[keep], dim=cfg.pca_dim, group=dist.group)
        if not ok.all():
            feats = feats.subset(np.flatnonzero(ok), chunk_rows=cfg.kmeans_chunk)
        return pca_whiten_streaming(feats, cfg.pca_dim, device=dist.device,
                                    chunk_rows=cfg.kmeans_chunk, group=dist.group,
                                    out_dir=cfg.feature_cache,
                                    out_name=dist.rank_name("whitened"))

    def sample_order(self, assignment: np.ndarray, epoch: int) -> np.ndarray:
        """Step 4: int64 [reassign × N_readable] image indices drawn uniformly over the
        non-empty targets of ``assignment`` (int64 [N], -1 never drawn). Empty targets (beyond
        a small super-class's ``k_eff``) are never drawn."""
        n_targets = self.method.n_targets
        valid = assignment >= 0
        order = np.argsort(assignment, kind="stable")[np.count_nonzero(~valid):]
        bounds = np.searchsorted(assignment[order], np.arange(n_targets + 1))
        images_lists = [order[bounds[c]:bounds[c + 1]].tolist() for c in range(n_targets)]
        size = max(1, int(self.cfg.reassign * int(valid.sum())))
        sampler = UnifLabelSampler(size, images_lists,
                                   seed=derive_seed(self.cfg.seed, STREAM_SAMPLER, epoch) % 2**31)
        return np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler))
