"""``--tensorboard``: TensorBoard event files in ``--out/tensorboard``, beside log.jsonl.

Everything is logged against the run's global step (training steps done since it began):
``train/loss`` after every step (the step's mean over all ranks), and at the end of each epoch
its record's losses and NMIs (``epoch/<key>``) and the sizes of its clusters
(``clusters/size``, a histogram over every target; ``clusters/nonempty``;
``clusters/largest_share``, the largest cluster's fraction of the images). A resumed run reopens
the folder with ``purge_step`` one past the checkpoint's step, so TensorBoard hides what a stopped
session wrote after its checkpoint (and a run started afresh in a used folder hides everything).
Only rank 0 writes; :func:`torch.utils.tensorboard.SummaryWriter` needs the ``tensorboard``
package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fastdc.deepcluster.config import UsageError

# Entries of an epoch's record logged as epoch/<key> (when present and not None).
EPOCH_SCALARS = ("train_loss", "clustering_loss", "clustering_loss_super", "nmi_prev",
                 "nmi_labels", "nmi_labels_super", "train_loss_super_rot", "train_loss_sub",
                 "train_acc_super_rot", "train_acc_sub")


class TensorBoardLog:
    """The event files of a run in ``folder``; does nothing when ``enabled`` is False.

    Raises UsageError when enabled without the tensorboard package.
    """

    def __init__(self, folder: Path, enabled: bool) -> None:
        self.folder, self.writer, self._writer_class = folder, None, None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise UsageError("--tensorboard needs the tensorboard package: pip install "
                             "tensorboard (or pip install 'fastdc[tensorboard]')") from err
        self._writer_class = SummaryWriter

    def open(self, step: int) -> None:
        """Start writing after global step ``step`` (0 for a new run): events a stopped session
        logged after it are purged from TensorBoard's view."""
        if self._writer_class is not None:
            self.writer = self._writer_class(str(self.folder), purge_step=step + 1)

    def loss(self, step: int, loss: float) -> None:
        """The training loss of global step ``step`` (counted from 1)."""
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)

    def epoch(self, record: dict[str, Any], assignment: np.ndarray, n_targets: int,
              step: int) -> None:
        """An epoch's record and the sizes of its ``n_targets`` clusters (``assignment``: int64
        [N] targets, -1 for unreadable images), at global step ``step``."""
        if self.writer is None:
            return
        for key in EPOCH_SCALARS:
            if record.get(key) is not None:
                self.writer.add_scalar(f"epoch/{key}", record[key], step)
        sizes = np.bincount(assignment[assignment >= 0], minlength=n_targets)
        self.writer.add_histogram("clusters/size", sizes, step)
        self.writer.add_scalar("clusters/nonempty", int(np.count_nonzero(sizes)), step)
        self.writer.add_scalar("clusters/largest_share", float(sizes.max() / max(sizes.sum(), 1)),
                               step)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
