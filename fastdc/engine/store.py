"""The feature store: N rows of D features on the host, and their trip to the device in chunks.

DeepCluster's clustering step needs every image's feature each epoch. When N·D does not fit on
the GPU (or in RAM), the features live in a :class:`FeatureStore` on the host (a CPU tensor, or
an ``np.memmap`` file on disk) in fp16 or fp32. :func:`device_chunks` streams a store through a
device ``chunk_rows`` rows at a time; on CUDA the host→device copies use pinned buffers on a
side stream, so the next chunk's copy overlaps the current chunk's compute. The streamed k-means
(:class:`fastdc.engine.rows.StoreRows`) and the streamed PCA
(:func:`fastdc.engine.pca.pca_whiten_streaming`) read stores through it.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

DTYPES = {"float16": torch.float16, "float32": torch.float32}
"""The dtypes a store holds its rows in, by the name its metadata file gives them."""
_NP = {torch.float16: np.float16, torch.float32: np.float32}
DEFAULT_CHUNK_ROWS = 65536  # rows per chunk on the device: 64 MB of fp32 at D = 256


class FeatureStore:
    """N rows of D features on the host: in RAM (CPU tensor) or on disk (``np.memmap``).

    Create with :meth:`in_memory` or :meth:`create` (on disk), fill with :meth:`write`, then
    :meth:`finalize` (required for disk stores: it makes the cache visible under its name,
    atomically). Read with :meth:`chunks` / :attr:`data`. ``dtype`` is torch.float16 or
    torch.float32; rows are converted to it on write.

    On-disk layout in ``directory``: ``<name>.json`` (shape, dtype, data file) and the data file
    ``<name>.<token>.bin`` (raw row-major). While being written the data lives in
    ``<name>.<token>.partial`` and no json points to it; :meth:`finalize` flushes, renames it to
    ``.bin`` and only then atomically replaces the json (write + ``os.replace``), so
    :meth:`open` never sees a half-written cache, and an old complete cache stays valid until
    the new one is complete.
    """

    def __init__(self, data: torch.Tensor, *, directory: Path | None = None, name: str = "",
                 data_file: Path | None = None, mm: np.memmap | None = None) -> None:
        self.data = data  # [N, D] CPU tensor (memmap-backed for disk stores)
        self.directory, self.name = directory, name
        self._data_file, self._mm = data_file, mm
        self.complete = directory is None

    # ---- construction

    @classmethod
    def in_memory(cls, n: int, d: int, dtype: torch.dtype = torch.float16) -> FeatureStore:
        """A zero-filled [n, d] store in RAM."""
        _check_dtype(dtype)
        return cls(torch.zeros(n, d, dtype=dtype))

    @classmethod
    def from_tensor(cls, x: torch.Tensor, dtype: torch.dtype | None = None) -> FeatureStore:
        """A RAM store holding x [N, D] (converted to ``dtype``, default x's if fp16/fp32)."""
        dtype = dtype or (x.dtype if x.dtype in _NP else torch.float32)
        _check_dtype(dtype)
        return cls(x.detach().to("cpu", dtype).contiguous())

    @classmethod
    def create(cls, directory: str | os.PathLike, n: int, d: int,
               dtype: torch.dtype = torch.float16, name: str = "features") -> FeatureStore:
        """A new on-disk [n, d] store under ``directory`` (created if needed), zero-filled.

        Invisible to :meth:`open` until :meth:`finalize`. Leftover ``<name>.*.partial`` files
        of interrupted writers of the same name are removed.
        """
        _check_dtype(dtype)
        if n < 1 or d < 1:
            raise ValueError(f"a feature store needs n >= 1 and d >= 1, got [{n}, {d}]")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(f"{name}.*.partial"):
            stale.unlink(missing_ok=True)
        path = directory / f"{name}.{uuid.uuid4().hex[:12]}.partial"
        mm = np.memmap(path, dtype=_NP[dtype], mode="w+", shape=(n, d))
        store = cls(torch.from_numpy(mm), directory=directory, name=name, data_file=path, mm=mm)
        store.complete = False
        return store

    @classmethod
    def open(cls, directory: str | os.PathLike, name: str = "features") -> FeatureStore:
        """Open a complete on-disk store read-only. FileNotFoundError when there is none (or
        only a partial one); ValueError when the data file does not match its metadata."""
        directory = Path(directory)
        meta_path = directory / f"{name}.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no complete feature cache {name!r} in {directory}")
        meta = json.loads(meta_path.read_text())
        n, d = meta["shape"]
        dtype = DTYPES[meta["dtype"]]
        path = directory / meta["file"]
        expected = n * d * torch.empty(0, dtype=dtype).element_size()
        if not path.is_file() or path.stat().st_size != expected:
            raise ValueError(f"feature cache {path} is missing or not {expected} bytes")
        mm = np.memmap(path, dtype=_NP[dtype], mode="r", shape=(n, d))
        with warnings.catch_warnings():  # read-only array: the store never writes to it
            warnings.simplefilter("ignore", UserWarning)
            data = torch.from_numpy(mm)
        store = cls(data, directory=directory, name=name, data_file=path, mm=mm)
        store.complete = True
        return store

    # ---- writing

    def write(self, rows: int | torch.Tensor | np.ndarray, values: torch.Tensor) -> None:
        """Store values [m, D] (any float dtype, any device) at rows ``start..start+m`` (an
        int) or at the given int64 row indices [m]."""
        if self.complete and self.directory is not None:
            raise RuntimeError("this feature cache is finalized (read-only)")
        v = values.detach().to("cpu", self.dtype)
        if isinstance(rows, int):
            self.data[rows : rows + v.shape[0]] = v
        else:
            self.data[torch.as_tensor(rows, dtype=torch.int64).cpu()] = v

    def finalize(self) -> FeatureStore:
        """Make a disk store complete and visible under its name (atomically); no-op in RAM."""
        if self.directory is None or self.complete:
            return self
        assert self._mm is not None and self._data_file is not None
        self._mm.flush()
        final = self._data_file.with_suffix(".bin")
        os.replace(self._data_file, final)
        meta_path = self.directory / f"{self.name}.json"
        old = None
        if meta_path.is_file():
            try:
                old = self.directory / json.loads(meta_path.read_text())["file"]
            except (ValueError, KeyError):
                old = None
        tmp = meta_path.with_name(f"{meta_path.name}.{uuid.uuid4().hex[:8]}.tmp")
        dtype_name = "float16" if self.dtype == torch.float16 else "float32"
        tmp.write_text(json.dumps({"shape": list(self.shape), "dtype": dtype_name,
                                   "file": final.name}))
        os.replace(tmp, meta_path)
        if old is not None and old != final:
            old.unlink(missing_ok=True)
        self._data_file, self.complete = final, True
        return self

    # ---- reading

    @property
    def shape(self) -> tuple[int, int]:
        """(N, D): rows and features."""
        return (int(self.data.shape[0]), int(self.data.shape[1]))

    @property
    def dtype(self) -> torch.dtype:
        """torch.float16 or torch.float32: how the rows are stored."""
        return self.data.dtype

    @property
    def on_disk(self) -> bool:
        """True for a memmap store on disk, False for a store in RAM."""
        return self.directory is not None

    def __len__(self) -> int:
        return self.shape[0]

    def chunks(self, rows: int) -> Iterator[torch.Tensor]:
        """Consecutive CPU blocks [rows, D] (the last one shorter), in store dtype (views)."""
        if rows < 1:
            raise ValueError(f"chunk rows must be >= 1, got {rows}")
        for start in range(0, len(self), rows):
            yield self.data[start : start + rows]

    def take(self, index: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Rows at ``index`` [m] (int64) as a CPU tensor [m, D] in store dtype."""
        return self.data[torch.as_tensor(index, dtype=torch.int64)]

    def subset(self, index: np.ndarray, *, chunk_rows: int = DEFAULT_CHUNK_ROWS,
               name: str | None = None) -> FeatureStore:
        """A new store (same kind and dtype; on disk as ``name``, default ``<name>-subset``)
        with the rows at ``index`` (sorted int64 [m], m >= 1), copied ``chunk_rows`` at a time."""
        index = np.asarray(index, dtype=np.int64)
        if self.directory is None or len(index) == 0:
            out = FeatureStore.in_memory(len(index), self.shape[1], self.dtype)
        else:
            out = FeatureStore.create(self.directory, len(index), self.shape[1], self.dtype,
                                      name or f"{self.name}-subset")
        for start in range(0, len(index), chunk_rows):
            part = index[start : start + chunk_rows]
            out.write(start, self.take(part))
        return out.finalize()


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in _NP:
        raise ValueError(f"feature store dtype must be torch.float16 or torch.float32, "
                         f"got {dtype}")


# --------------------------------------------------------------------------- to the device


def device_chunks(store: FeatureStore, chunk_rows: int, device: torch.device | str
                  ) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (start row, block [m, D] float32 on ``device``) over the whole store.

    On CUDA: two pinned host buffers and two device buffers (store dtype); chunk j+1 is copied
    host→pinned (CPU) and pinned→device (``non_blocking`` on a side stream) while the GPU
    computes on chunk j. Events order the reuse of each buffer: the side stream waits until the
    compute stream is done with a device buffer before overwriting it, and the CPU waits for
    a pinned buffer's previous copy before refilling it. The consumer must enqueue its work on
    the current stream and not keep references to a block after asking for the next one.
    Elsewhere: a plain ``.to(device, float32)`` per block.
    """
    device = torch.device(device)
    if device.type != "cuda":
        for j, block in enumerate(store.chunks(chunk_rows)):
            yield j * chunk_rows, block.to(device=device, dtype=torch.float32)
        return
    yield from _cuda_chunks(store, chunk_rows, device)


def _cuda_chunks(store: FeatureStore, chunk_rows: int, device: torch.device
                 ) -> Iterator[tuple[int, torch.Tensor]]:
    n, d = store.shape
    rows = min(chunk_rows, n)
    compute = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    pinned = [torch.empty(rows, d, dtype=store.dtype, pin_memory=True) for _ in range(2)]
    staged = [torch.empty(rows, d, dtype=store.dtype, device=device) for _ in range(2)]
    copied = [torch.cuda.Event(), torch.cuda.Event()]  # pinned→device copy of a slot done
    consumed = [torch.cuda.Event(), torch.cuda.Event()]  # compute done with a slot's block
    blocks = store.chunks(rows)

    def stage(j: int, block: torch.Tensor) -> None:
        s, m = j % 2, block.shape[0]
        copied[s].synchronize()  # the previous copy out of pinned[s] has finished
        pinned[s][:m].copy_(block)
        with torch.cuda.stream(side):
            side.wait_event(consumed[s])  # compute no longer reads staged[s]
            staged[s][:m].copy_(pinned[s][:m], non_blocking=True)
            copied[s].record(side)

    first = next(blocks, None)
    if first is None:
        return
    sizes = [first.shape[0], 0]
    stage(0, first)
    j = 0
    while True:
        s = j % 2
        compute.wait_event(copied[s])
        block = staged[s][: sizes[s]].to(torch.float32)  # fp32 store: the buffer itself
        yield j * rows, block
        consumed[s].record(compute)
        del block
        nxt = next(blocks, None)
        if nxt is None:
            break
        sizes[(j + 1) % 2] = nxt.shape[0]
        stage(j + 1, nxt)  # overlaps the GPU work enqueued for chunk j
        j += 1
    compute.wait_stream(side)
