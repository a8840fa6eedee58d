"""The k-means engine: one Lloyd loop over a "rows" source, seeding, PCA, the two-level
hierarchy, the flat index and the collectives that shard them over a process group. Built on
:mod:`fastdc.ops`; never imports the DeepCluster application.

Modules, from the bottom up:

- ``collectives``: thin ``torch.distributed`` helpers; ``group=None`` is a world of one;
- ``checks``: validation of user input and the one scan of the rows (NaN/inf, overflow);
- ``store``: :class:`FeatureStore` (rows on the host, in RAM or on disk) and its chunked,
  double-buffered trip to the device;
- ``rows``: the sources the loop reads: a tensor, a masked (padded) batch, a streamed store,
  each optionally a shard of a process group;
- ``seeding``: initial centroids ("random" incl. the sharded draw, k-means++, given);
- ``convergence``: when the loop stops before niter (a fixed point, faiss's
  early_stop_threshold);
- ``pruning``: exact bound-based pruning of the loop's assignment step;
- ``lloyd``: the loop, :func:`kmeans` (in memory) and :func:`kmeans_streaming` (a store);
- ``pca``: PCA-whitening of a tensor or of a streamed store;
- ``hierarchy``: DeeperCluster's two-level k-means; ``index``: a flat nearest-neighbour index;
- ``pic``: power iteration clustering on a k-NN graph (DeepCluster's ``--clustering pic``).

Code outside the engine imports these names from ``fastdc.engine`` itself, never from its
modules, so the engine can be reorganised behind them.
"""

from fastdc.engine import collectives
from fastdc.engine.collectives import Group
from fastdc.engine.convergence import check_early_stop_threshold
from fastdc.engine.hierarchy import pack_groups, two_level_kmeans
from fastdc.engine.index import FlatIndex, to_tensor
from fastdc.engine.lloyd import KMeansResult, kmeans, kmeans_streaming
from fastdc.engine.pca import PCA, l2_normalize_rows, pca_whiten, pca_whiten_streaming
from fastdc.engine.pic import PICResult, knn_graph, pic
from fastdc.engine.pruning import PRUNE_BOUNDS, check_prune
from fastdc.engine.seeding import initial_centroids
from fastdc.engine.store import DTYPES as STORE_DTYPES
from fastdc.engine.store import FeatureStore

__all__ = [
    "PCA",
    "PRUNE_BOUNDS",
    "STORE_DTYPES",
    "FeatureStore",
    "FlatIndex",
    "Group",
    "KMeansResult",
    "PICResult",
    "check_early_stop_threshold",
    "check_prune",
    "collectives",
    "initial_centroids",
    "kmeans",
    "kmeans_streaming",
    "knn_graph",
    "l2_normalize_rows",
    "pack_groups",
    "pca_whiten",
    "pca_whiten_streaming",
    "pic",
    "to_tensor",
    "two_level_kmeans",
]
