"""The k-means ops with their pure-PyTorch references (backend ``torch``).

Each public op validates its inputs, brings them to the batched layout ``[B, ...]`` and hands
them to the backend picked by :mod:`fastdc.ops.registry`. Backends only ever see batched,
contiguous tensors of the documented dtypes.
"""

from fastdc.ops.assign import assign
from fastdc.ops.cluster_sums import cluster_sums, update_centroids
from fastdc.ops.resplit_empty import resplit_empty
from fastdc.ops.sobel import Sobel, sobel

__all__ = ["assign", "cluster_sums", "update_centroids", "resplit_empty", "sobel", "Sobel"]
