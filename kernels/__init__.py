"""Triton kernels, installed as ``fastdc.kernels``: importing registers backend ``triton``.

One module per op (assign, cluster_sums, resplit_empty, sobel); each registers its function
with :func:`fastdc.backends.register`. GPU tensors run compiled; CPU tensors run only under
``TRITON_INTERPRET=1`` (Triton's interpreter, for tests).
"""

from . import assign, resplit, sobel, update

__all__ = ["assign", "resplit", "sobel", "update"]
