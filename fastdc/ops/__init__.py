"""The ops with their pure-PyTorch references (backend ``torch``).

Each public op validates its inputs, brings them to the batched layout ``[B, ...]`` and hands
them to the backend picked by :mod:`fastdc.ops.registry`. Backends only ever see batched,
contiguous tensors of the documented dtypes. Code above the ops imports these names from
``fastdc.ops`` itself.
"""

from fastdc.ops import registry
from fastdc.ops.assign import assign, assign_bounded, assign_dist
from fastdc.ops.checks import first_nonfinite_row
from fastdc.ops.cluster_sums import cluster_sums, means_from_sums, update_centroids
from fastdc.ops.knn import knn
from fastdc.ops.lloyd_step import lloyd_step
from fastdc.ops.resplit_empty import resplit_empty
from fastdc.ops.row_norms import row_norms
from fastdc.ops.sobel import IMAGENET_MEAN, IMAGENET_STD, Sobel, sobel, sobel_weights

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Sobel",
    "assign",
    "assign_bounded",
    "assign_dist",
    "cluster_sums",
    "first_nonfinite_row",
    "knn",
    "lloyd_step",
    "means_from_sums",
    "registry",
    "resplit_empty",
    "row_norms",
    "sobel",
    "sobel_weights",
    "update_centroids",
]
