"""The k-means engine: Lloyd iterations, seeding, PCA, the two-level hierarchy, the flat index
and the collectives that shard them over a process group. Built on :mod:`fastdc.ops`; never
imports the DeepCluster application.

Code outside the engine imports these names from ``fastdc.engine`` itself, never from its
modules, so the engine can be reorganised behind them.
"""

from fastdc.engine import collectives
from fastdc.engine.collectives import Group
from fastdc.engine.hierarchy import pack_groups, two_level_kmeans
from fastdc.engine.index import FlatIndex, to_tensor
from fastdc.engine.lloyd import KMeansResult, initial_centroids, kmeans
from fastdc.engine.pca import PCA, l2_normalize_rows, pca_whiten
from fastdc.engine.streaming import DTYPES as STORE_DTYPES
from fastdc.engine.streaming import FeatureStore, kmeans_streaming, pca_whiten_streaming

__all__ = [
    "PCA",
    "STORE_DTYPES",
    "FeatureStore",
    "FlatIndex",
    "Group",
    "KMeansResult",
    "collectives",
    "initial_centroids",
    "kmeans",
    "kmeans_streaming",
    "l2_normalize_rows",
    "pack_groups",
    "pca_whiten",
    "pca_whiten_streaming",
    "to_tensor",
    "two_level_kmeans",
]
