"""The CUDA C sources of the ``cuda`` backend (csrc/cuda/<op>.cu) and their launch sizes.

:data:`LAUNCH` is the only place the launch sizes are written: :mod:`fastdc.ops.cuda` launches
with them and compiles every source with them as ``-D`` defines (:func:`defines`); each ``.cu``
file stops with ``#error`` when one is missing and checks with ``static_assert`` that the sizes
fit its thread layout. Importing this module needs no CuPy (tests compile the sources with nvcc).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

LAUNCH: dict[str, dict[str, int]] = {
    "assign": {
        "THREADS": 256,  # threads per block: a 16 x 16 grid of threads, one 4 x 4 score block each
        "TILE_N": 64,  # rows per block: 16 thread rows x 4 rows per thread
        "TILE_K": 64,  # centroids per tile: 16 thread columns x 4 centroids per thread
        "TILE_D": 16,  # features staged per step: 2 x 64 x 16 floats = 8 KB of shared memory
    },
    "cluster_sums": {
        "THREADS": 128,  # threads per block, striding over D (D = 256: two elements each)
        "ROWS": 16,  # rows per block: amortises the block's index and weight loads
    },
    "resplit_empty": {
        "THREADS": 256,  # one block per problem; also the width of its prefix-sum scan
    },
    "knn": {
        "THREADS": 128,  # threads per block: an 8 x 16 grid of threads, one 4 x 4 score block each
        "TILE_N": 32,  # query rows per block: 8 thread rows x 4 rows per thread
        "TILE_M": 64,  # database rows per tile: 16 thread columns x 4 rows per thread
        "TILE_D": 16,  # features staged per step: (32 + 64) x 16 floats = 6 KB of shared memory
        "MAX_K": 64,  # longest list per row: 32 x 64 (score, index) pairs = 16 KB of shared memory
    },
    "sobel": {
        "BLOCK_X": 32,  # pixels per block row: one warp reads 32 contiguous pixels
        "BLOCK_Y": 8,  # rows per block (256 threads, one output pixel each)
    },
}
"""Launch sizes per source name (= op name), as compile-time defines."""


def defines(name: str) -> tuple[str, ...]:
    """The ``-DNAME=value`` compiler options of ``name``.cu (NVRTC and nvcc alike)."""
    return tuple(f"-D{key}={value}" for key, value in LAUNCH[name].items())


def source(name: str) -> str:
    """Text of csrc/cuda/<name>.cu: from the source tree this package sits in (a checkout,
    also when another checkout is installed in editable mode), else from the installed package
    data ``fastdc.cuda_src``."""
    path = Path(__file__).resolve().parents[2] / "csrc" / "cuda" / f"{name}.cu"
    if path.exists():
        return path.read_text()
    return importlib.resources.files("fastdc.cuda_src").joinpath(f"{name}.cu").read_text()
