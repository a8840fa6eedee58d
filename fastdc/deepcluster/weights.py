"""Network weights in fastdc's layout and in the reference DeepCluster code's.

The reference code (facebookresearch/deepcluster, ``models/alexnet.py``, ``models/vgg16.py``)
releases AlexNet and VGG16 checkpoints (``checkpoint.pth.tar``: a dict ``epoch``, ``arch``,
``state_dict``, ``optimizer``). :func:`read_weights` reads those, fastdc's training
checkpoints and the weight files :func:`write_weights` writes, as :class:`Weights` in fastdc's
key names; ``--init-from``, ``eval_linear --checkpoint`` and ``python -m
fastdc.convert_weights`` go through it.

Key map, reference <-> fastdc (``<i>``: the same layer index on both sides)::

    reference                           fastdc               what
    features.module.<i>.*  (*)          body.<i>.*           conv, BatchNorm2d, ReLU, max-pool
    classifier.<i>.*                    classifier.<i>.*     AlexNet: i = 1, 4; VGG16: i = 0, 3
    top_layer.weight, top_layer.bias    top_layer.*          the k-way head [k, 4096], [k]
    sobel.0.weight [1, 3, 1, 1], .bias  (none)               grey = mean of RGB (1x1 conv)
    sobel.1.weight [2, 1, 3, 3], .bias  (none)               the two 3x3 Sobel filters

(*) The released files hold the features inside ``DataParallel``: ``features.module.<i>``;
``features.<i>`` (no wrapper) is read too, and written files use the released form.

How the nets differ: the reference's AlexNet and VGG16 built with BatchNorm (``bn=True``, the
released ones) have exactly fastdc's layers (conv sizes, BatchNorm after every conv, pools,
classifier), so every weight maps one to one. The differences carry no weights: the
reference's classifier ends with a ReLU that fastdc applies in ``forward`` (both take the
clustering features before it); fastdc adds an adaptive average pool before the classifier,
the identity at 224 px; the reference's Sobel front is two frozen convolutions, fastdc's a
fixed op (:class:`fastdc.ops.Sobel`): their weights are checked equal to the fixed filters on
the way in and written on the way out. Refused, with the reason: the reference's ``bn=False``
nets (no BatchNorm), a Sobel front with other weights, and towards the reference layout
fastdc's ``small`` net and nets for 1-channel images, which it has no counterpart for. Files
saved by PyTorch before 0.4.1 have no BatchNorm ``num_batches_tracked``: it is set to 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastdc.deepcluster.checkpoint import CheckpointError, read_file, save_checkpoint
from fastdc.deepcluster.models import build_model
from fastdc.ops import sobel_weights

LAYOUTS = ("fastdc", "reference")
WEIGHTS_FORMAT = "fastdc-weights-1"
# (reference prefix, fastdc prefix), after the reference's DataParallel ``module.`` is dropped.
KEY_MAP = (("features.", "body."), ("classifier.", "classifier."), ("top_layer.", "top_layer."))
RELEASED_FEATURES = "features.module."  # how the released files name the features
REFERENCE_ARCHS = {5: "alexnet", 13: "vgg16"}  # by their number of conv layers
HEAD = "top_layer."


@dataclass
class Weights:
    """A net's weights in fastdc's key names, with the architecture they fit.

    state: fastdc state-dict keys -> CPU tensors (``top_layer.*`` when the file had a head);
    layout: the file's layout ("fastdc" or "reference"); epoch: the epochs trained, when the
    file says; config: the run's settings (a fastdc checkpoint), or the architecture's.
    """

    arch: str
    sobel: bool
    in_channels: int
    state: dict[str, torch.Tensor]
    layout: str
    epoch: int | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def head(self) -> int | None:
        """Outputs of the head, None when the file has none."""
        w = self.state.get(HEAD + "weight")
        return None if w is None else int(w.shape[0])

    def describe(self) -> str:
        """One line: "alexnet + sobel, reference layout, epoch 500, head 10000"."""
        parts = [self.arch + (" + sobel" if self.sobel else ""), f"{self.layout} layout"]
        parts += [] if self.epoch is None else [f"epoch {self.epoch}"]
        parts += [] if self.head is None else [f"head {self.head}"]
        return ", ".join(parts)


def read_weights(path: str | os.PathLike) -> Weights:
    """The weights in ``path``: a fastdc checkpoint or weight file, or a reference DeepCluster
    checkpoint (a dict with ``state_dict``, or the bare state dict), converted. Raises
    CheckpointError for a missing, unreadable or foreign file, and for weights that do not
    fit their architecture (naming the keys and shapes)."""
    obj, where = read_file(path), str(path)
    if isinstance(obj, dict) and "config" in obj and "model" in obj:
        cfg = obj["config"]
        if not all(key in cfg for key in ("arch", "sobel", "in_channels")):
            raise CheckpointError(f"{where!r} has no architecture (arch, sobel, in_channels)")
        return Weights(cfg["arch"], bool(cfg["sobel"]), int(cfg["in_channels"]),
                       dict(obj["model"]), "fastdc", obj.get("epoch"), dict(cfg))
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if isinstance(state, dict) and is_reference_layout(state):
        return from_reference(state, arch=obj.get("arch"), epoch=obj.get("epoch"), where=where)
    raise CheckpointError(f"{where!r} is neither a fastdc checkpoint nor a reference "
                          "DeepCluster checkpoint (state_dict keys features.*, classifier.*, "
                          "top_layer.*)")


def is_reference_layout(state: dict[str, Any]) -> bool:
    """True for a state dict with the reference's key names (``features.*``, no ``body.*``)."""
    keys = [_strip_module(k) for k in state if isinstance(k, str)]
    return (any(k.startswith("features.") for k in keys)
            and not any(k.startswith("body.") for k in keys))


def reference_key(key: str) -> str:
    """The reference's name for fastdc key ``key`` (``body.0.weight`` ->
    ``features.module.0.weight``). Raises CheckpointError for a key it has no place for."""
    for ref, ours in KEY_MAP:
        if key.startswith(ours):
            return (RELEASED_FEATURES if ref == "features." else ref) + key[len(ours):]
    raise CheckpointError(f"fastdc key {key!r} has no place in the reference layout")


def fastdc_key(key: str) -> str | None:
    """fastdc's name for reference key ``key`` (``features.module.0.weight`` ->
    ``body.0.weight``), None for a key outside the map (``sobel.*`` included)."""
    key = _strip_module(key)
    for ref, ours in KEY_MAP:
        if key.startswith(ref):
            return ours + key[len(ref):]
    return None


def _strip_module(key: str) -> str:
    """``key`` without DataParallel's ``module`` segments (as the reference's load_model)."""
    return ".".join(part for part in key.split(".") if part != "module")


def from_reference(state: dict[str, torch.Tensor], *, arch: str | None = None,
                   epoch: int | None = None, where: str = "") -> Weights:
    """Convert a reference state dict (see the module docstring) to :class:`Weights`.

    ``arch``: "alexnet" or "vgg16" (the checkpoint's ``arch``), else told by the number of conv
    layers. Raises CheckpointError for a net without BatchNorm, a Sobel front with other
    weights, a key outside the map, or shapes that do not fit the architecture.
    """
    state = {_strip_module(k): v for k, v in state.items()}
    sobel = _take_sobel(state, where)
    features = [k for k in state if k.startswith("features.")]
    if not any(k.endswith(".running_mean") for k in features):
        raise CheckpointError(f"{where!r} holds a reference net without BatchNorm (bn=False); "
                              "fastdc's nets have BatchNorm after every convolution")
    convs = sum(1 for k in features if k.endswith(".weight") and state[k].dim() == 4)
    arch = arch or REFERENCE_ARCHS.get(convs)
    if arch not in REFERENCE_ARCHS.values():
        raise CheckpointError(f"{where!r}: a reference net with {convs} conv layers is neither "
                              "AlexNet (5) nor VGG16 (13)")
    ours = {}
    for key, value in state.items():
        name = fastdc_key(key)
        if name is None:
            raise CheckpointError(f"{where!r}: key {key!r} has no place in fastdc's {arch} "
                                  "(expected features.*, classifier.*, top_layer.*, sobel.*)")
        ours[name] = value
    for key in [k for k in ours if k.endswith(".running_mean")]:
        ours.setdefault(key.replace(".running_mean", ".num_batches_tracked"),
                        torch.tensor(0, dtype=torch.long))
    head = ours[HEAD + "weight"].shape[0] if HEAD + "weight" in ours else None
    check_shapes(ours, expected_shapes(arch, 3, sobel, head), where, "reference")
    config = {"arch": arch, "sobel": sobel, "in_channels": 3, "k": head or 1, "seed": 0}
    return Weights(arch, sobel, 3, ours, "reference", epoch, config)


def reference_sobel_state() -> dict[str, torch.Tensor]:
    """The reference's Sobel front as state-dict entries: the grey 1×1 conv (weights 1/3) and
    the 3×3 Sobel conv, zero biases."""
    grey, filt = sobel_weights()
    return {"sobel.0.weight": grey, "sobel.0.bias": torch.zeros(1),
            "sobel.1.weight": filt, "sobel.1.bias": torch.zeros(2)}


def _take_sobel(state: dict[str, torch.Tensor], where: str) -> bool:
    """Remove the ``sobel.*`` entries from ``state``; True when there were some. Raises
    CheckpointError unless they are DeepCluster's fixed filters."""
    found = {k: state.pop(k) for k in [k for k in state if k.startswith("sobel.")]}
    if not found:
        return False
    want = reference_sobel_state()
    same = found.keys() == want.keys() and all(
        found[k].shape == want[k].shape and torch.allclose(found[k].float(), want[k], atol=1e-6)
        for k in want)
    if not same:
        raise CheckpointError(f"{where!r}: its Sobel layers (sobel.*) are not DeepCluster's "
                              "fixed grey + Sobel filters, and fastdc's Sobel front is fixed")
    return True


def expected_shapes(arch: str, in_channels: int, sobel: bool, head: int | None
                    ) -> dict[str, torch.Size]:
    """The state-dict shapes of fastdc's ``arch`` (built on the meta device); without the head
    when ``head`` is None."""
    with torch.device("meta"):
        model = build_model(arch, head or 1, in_channels, sobel=sobel)
    return {k: v.shape for k, v in model.state_dict().items()
            if head is not None or not k.startswith(HEAD)}


def check_shapes(state: dict[str, torch.Tensor], expected: dict[str, torch.Size], where: str,
                 layout: str = "fastdc") -> None:
    """Raise CheckpointError naming the missing, unexpected and mis-shaped keys of ``state``
    against ``expected`` (keys in the file's ``layout``)."""
    def name(key: str) -> str:
        return reference_key(key) if layout == "reference" else key

    problems = [f"{name(k)} missing" for k in expected if k not in state]
    problems += [f"unexpected {name(k)}" for k in state if k not in expected]
    problems += [f"{name(k)} has shape {tuple(state[k].shape)}, expected {tuple(shape)}"
                 for k, shape in expected.items() if k in state and state[k].shape != shape]
    if problems:
        more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
        raise CheckpointError(f"the weights in {where!r} do not fit the architecture: "
                              + "; ".join(problems[:4]) + more)


def load_into(model: torch.nn.Module, weights: Weights, *, head: bool, where: str = "") -> None:
    """Copy ``weights`` into ``model`` (shapes checked first), with the head (``head=True``)
    or without it (the model keeps its own). Raises CheckpointError when they do not fit."""
    own = model.state_dict()
    keep = {k: v for k, v in weights.state.items() if head or not k.startswith(HEAD)}
    check_shapes(keep, {k: v.shape for k, v in own.items() if head or not k.startswith(HEAD)},
                 where or weights.describe())
    own.update(keep)
    model.load_state_dict(own)


def to_reference(weights: Weights) -> dict[str, Any]:
    """The reference checkpoint of ``weights``: ``{"epoch", "arch", "state_dict"}`` with the
    released key names (no optimiser state: the reference's load_model reads the rest). Raises
    CheckpointError for nets the reference has no counterpart for."""
    if weights.arch not in REFERENCE_ARCHS.values():
        raise CheckpointError(f"the reference code has no {weights.arch!r} net: only alexnet "
                              "and vgg16 convert to its layout")
    if weights.in_channels != 3:
        raise CheckpointError(f"the reference nets read RGB images; these weights are for "
                              f"{weights.in_channels}-channel images")
    state = {reference_key(k): v for k, v in weights.state.items()}
    state.update(reference_sobel_state() if weights.sobel else {})
    return {"epoch": weights.epoch or 0, "arch": weights.arch, "state_dict": state}


def to_fastdc(weights: Weights) -> dict[str, Any]:
    """A fastdc weight file of ``weights``: ``{"format", "config", "model", "epoch"}``, read by
    :func:`read_weights` and by ``eval_linear --checkpoint``."""
    config = {"k": weights.head or 1, "seed": 0, **weights.config,
              "arch": weights.arch, "sobel": weights.sobel, "in_channels": weights.in_channels}
    return {"format": WEIGHTS_FORMAT, "config": config, "model": weights.state,
            "epoch": weights.epoch or 0}


def write_weights(weights: Weights, path: str | os.PathLike, layout: str) -> Path:
    """Write ``weights`` to ``path`` in ``layout`` ("fastdc" or "reference"), atomically.
    Raises CheckpointError when the reference layout cannot hold them, ValueError for an
    unknown layout."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return save_checkpoint(to_reference(weights) if layout == "reference" else to_fastdc(weights),
                           path)
