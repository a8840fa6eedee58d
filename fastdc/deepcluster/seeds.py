"""The random streams of a run.

Every random choice of epoch ``e`` draws from a generator seeded from ``(--seed, stream, e[,
batch])`` by :func:`derive_seed`, never from state carried over from earlier epochs, so a run
resumed from a checkpoint draws exactly what the uninterrupted run drew. Each use has its own
stream number below; the numbers are part of a run's results (changing one changes them).
"""

from __future__ import annotations

import numpy as np

STREAM_INIT = 0  # the model's random init
STREAM_KMEANS = 1  # k-means seeding, per epoch
STREAM_SAMPLER = 2  # the epoch's order, uniform over the clusters
STREAM_AUGMENT = 3  # random-resized crops and flips, per batch (in memory) or image (folders)
STREAM_DROPOUT = 4  # the global torch generator before each training step (dropout)
STREAM_HEAD = 5  # the fresh head after each re-clustering
STREAM_SPLIT = 6  # the final evaluation's train / test split
STREAM_ROTATION = 7  # DeeperCluster's rotations, per batch
STREAM_RANK = 8  # a distributed rank's own seed for augmentation, dropout and rotations


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from ``seed`` and integer ``keys`` (e.g. stream, epoch, batch)."""
    state = np.random.SeedSequence([int(seed), *[int(k) for k in keys]]).generate_state(2)
    return int((int(state[0]) << 32 | int(state[1])) & 0x7FFF_FFFF_FFFF_FFFF)
