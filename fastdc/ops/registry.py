"""The backend registry: which implementation of an op runs on which inputs.

Every op (``assign``, ``cluster_sums``, ``resplit_empty``, ``sobel``) has a pure-PyTorch reference
registered as backend ``torch`` and optional fast backends (``triton``, ``cuda``, ``cpu``). Each
implementation comes with a ``not_supported_reasons(**inputs) -> list[str]`` function; the
registry picks the first backend, in :data:`AUTO_ORDER` for the inputs' device, whose list is
empty.

``backend="name"`` (or the environment variable ``FASTDC_BACKEND=name``) forces one backend; a
forced backend that cannot run raises :class:`BackendError` with its reasons. An automatic
choice that skips a fast backend for a reason other than the device says so once in the log
(logger ``fastdc``).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("fastdc")

PREFERENCE = ("triton", "cuda", "cpu", "torch")
"""All backends, fastest first."""

AUTO_ORDER = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpu", "torch")}
"""Automatic choice order per device type of the inputs: the first backend that supports them
wins. GPU backends are never picked automatically for CPU tensors (the Triton interpreter runs
them, slowly, only when forced)."""

_IMPLS: dict[str, dict[str, Implementation]] = {}
_LOAD_ERRORS: dict[str, str] = {}
_LOGGED: set[tuple[str, str, str]] = set()


class BackendError(RuntimeError):
    """A requested backend is unknown, failed to load, or cannot run on the given inputs."""


@dataclass(frozen=True)
class Implementation:
    """One backend's implementation of one op.

    ``fn`` takes the op's inputs as keyword arguments; ``reasons`` takes the same keywords and
    returns why ``fn`` cannot run on them (empty list: it can). Reasons that mention "device"
    (e.g. "needs tensors on a CUDA device") are expected and not logged on fallback.
    """

    op: str
    backend: str
    fn: Callable
    reasons: Callable[..., list[str]]


def register(op: str, backend: str, reasons: Callable[..., list[str]] | None = None):
    """Decorator: register ``fn`` as ``backend``'s implementation of ``op``."""
    if backend not in PREFERENCE:
        raise ValueError(f"unknown backend {backend!r}; expected one of {PREFERENCE}")

    def wrap(fn: Callable) -> Callable:
        _IMPLS.setdefault(op, {})[backend] = Implementation(
            op, backend, fn, reasons or (lambda **_: [])
        )
        return fn

    return wrap


def record_load_error(backend: str, message: str) -> None:
    """Remember why ``backend`` could not be loaded (shown by ``python -m fastdc.info``)."""
    _LOAD_ERRORS[backend] = message


def load_errors() -> dict[str, str]:
    """Backends that failed to load, with the reason."""
    _load_all()
    return dict(_LOAD_ERRORS)


def available(op: str) -> list[str]:
    """Names of the backends that registered an implementation of ``op``, in preference order."""
    _load_all()
    impls = _IMPLS.get(op, {})
    return [name for name in PREFERENCE if name in impls]


def select(op: str, backend: str | None = None, **inputs) -> Implementation:
    """Pick the implementation of ``op`` for ``inputs``.

    ``backend`` (or ``$FASTDC_BACKEND`` when ``backend`` is None) forces one backend.
    Raises BackendError when a forced backend is unknown, did not load, or cannot run on inputs.
    """
    _load_all()
    impls = _IMPLS.get(op)
    if not impls:
        raise BackendError(f"no implementation registered for op {op!r}")
    forced = backend or os.environ.get("FASTDC_BACKEND") or None
    if forced is not None:
        return _forced(op, forced, impls, inputs)
    skipped = []
    for name in AUTO_ORDER.get(_device_type(inputs), ("torch",)):
        impl = impls.get(name)
        if impl is None:
            continue
        why = impl.reasons(**inputs)
        if not why:
            _log_fallback(op, name, skipped)
            return impl
        skipped.append((name, why))
    raise BackendError(f"no backend can run {op!r}: " + _format(skipped))


class SelectOnce:
    """:func:`select` for a run of calls on inputs that differ only in their values, as a
    loop's blocks do: the implementation is chosen at the first call and again only when the
    caller's ``key`` (what the choice depends on for these inputs: dtypes, devices, options)
    changes. The ops' public checks and :func:`select` cost 25-60 us a call, a fifth of a Lloyd
    iteration at 5 000 x 32, K = 100 (2-core AMD EPYC Zen 3)."""

    def __init__(self, op: str, backend: str | None = None) -> None:
        self.op, self.backend = op, backend
        self.key: object = _UNSET
        self.fn: Callable | None = None

    def __call__(self, key: object, **inputs):
        """The chosen implementation's result on ``inputs`` (the keywords of :func:`select`)."""
        if self.fn is None or key != self.key:
            self.fn = select(self.op, self.backend, **inputs).fn
            self.key = key
        return self.fn(**inputs)


_UNSET = object()


def _device_type(inputs: dict) -> str:
    for value in inputs.values():
        if hasattr(value, "device"):
            return value.device.type
    return "cpu"


def _forced(op: str, name: str, impls: dict[str, Implementation], inputs: dict) -> Implementation:
    if name not in PREFERENCE:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(PREFERENCE)}")
    impl = impls.get(name)
    if impl is None:
        why = _LOAD_ERRORS.get(name, f"backend {name!r} has no implementation of {op!r}")
        raise BackendError(
            f"backend {name!r} was requested for {op!r} but is not available: {why}. "
            "Run `python -m fastdc.info` to see which backends loaded."
        )
    why = impl.reasons(**inputs)
    if why:
        raise BackendError(
            f"backend {name!r} was requested for {op!r} but cannot run on these inputs: "
            + "; ".join(why)
        )
    return impl


def _log_fallback(op: str, chosen: str, skipped: list[tuple[str, list[str]]]) -> None:
    notable = [(n, w) for n, w in skipped if not any("device" in r for r in w)]
    if not notable:
        return
    key = (op, chosen, _format(notable))
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.warning("fastdc: %s runs on backend %r; skipped %s", op, chosen, key[2])


def _format(skipped: list[tuple[str, list[str]]]) -> str:
    return "; ".join(f"{name} ({', '.join(why)})" for name, why in skipped)


_LOADED = False
_BACKEND_MODULES = {
    "fastdc.ops": "torch",
    "fastdc.ops.cpu": "cpu",
    "fastdc.kernels": "triton",
    "fastdc.ops.cuda": "cuda",
}


def _load_all() -> None:
    """Import every backend module once so that it registers its implementations."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for module, name in _BACKEND_MODULES.items():
        try:
            if module == "fastdc.kernels":
                import_kernels()
            else:
                importlib.import_module(module)
        except Exception as exc:  # a backend that fails to import must not break the others
            record_load_error(name, f"{type(exc).__name__}: {exc}")


def import_kernels():
    """Import the Triton kernels as ``fastdc.kernels``.

    setup.py installs the top-level ``kernels/`` directory under that name; in a source
    checkout that was not installed, load it from ``kernels/`` beside the package instead.
    """
    try:
        return importlib.import_module("fastdc.kernels")
    except ModuleNotFoundError as exc:
        source = Path(__file__).resolve().parents[2] / "kernels"
        if exc.name != "fastdc.kernels" or not (source / "__init__.py").exists():
            raise
    spec = importlib.util.spec_from_file_location(
        "fastdc.kernels", source / "__init__.py", submodule_search_locations=[str(source)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["fastdc.kernels"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["fastdc.kernels"]
        raise
    return module
