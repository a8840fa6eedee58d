"""Features bigger than device memory (or RAM): a host/disk feature store streamed in chunks.

DeepCluster's clustering step needs every image's feature each epoch. When N·D does not fit on
the GPU (or in RAM), the features live in a :class:`FeatureStore` on the host — a CPU tensor,
or an ``np.memmap`` file on disk — in fp16 or fp32, and the PCA-whitening and the k-means
stream them through the device ``chunk_rows`` rows at a time:

- :func:`pca_whiten_streaming`: two passes for the mean and the covariance (fp32 products,
  float64 sums, the eigen step of :class:`fastdc.engine.pca.PCA`), one pass applying the transform
  and the row L2 norm into a new store.
- :func:`kmeans_streaming`: each Lloyd iteration streams the store once: ``assign`` and
  ``cluster_sums`` per chunk, sums/counts/objective accumulated on the device, then the same
  end of iteration as :func:`fastdc.engine.lloyd.kmeans`
  (:func:`fastdc.engine.lloyd.finish_iteration`).
  Device memory is O(chunk_rows·D + k·D). On the same fp32 rows it gives lloyd's result up to
  the float summation order (the chunks are summed in float64).

With a process group every rank streams its own shard; statistics are all-reduced exactly as
:mod:`fastdc.engine.pca` and :mod:`fastdc.engine.lloyd` do, so P ranks match one process on the
concatenated
rows. On CUDA the host→device copies use pinned buffers on a side stream, so the next chunk's
copy overlaps the current chunk's compute.
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

from fastdc.engine import collectives as fdist
from fastdc.engine.lloyd import (
    KMeansResult,
    _all_reduce_sums,
    _check_k,
    _normalize,
    finish_iteration,
    given_centroids,
)
from fastdc.engine.pca import PCA, l2_normalize_rows
from fastdc.ops.assign import assign
from fastdc.ops.checks import first_nonfinite_row
from fastdc.ops.cluster_sums import cluster_sums

DTYPES = {"float16": torch.float16, "float32": torch.float32}
_NP = {torch.float16: np.float16, torch.float32: np.float32}
DEFAULT_CHUNK_ROWS = 65536


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
        return (int(self.data.shape[0]), int(self.data.shape[1]))

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    @property
    def on_disk(self) -> bool:
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


# --------------------------------------------------------------------------- streaming


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


def pca_whiten_streaming(
    store: FeatureStore,
    dim: int = 256,
    *,
    device: torch.device | str = "cpu",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    group: fdist.Group | None = None,
    eigen_power: float = -0.5,
    out_dtype: torch.dtype | None = None,
    out_dir: str | os.PathLike | None = None,
    out_name: str = "whitened",
) -> FeatureStore:
    """:func:`fastdc.engine.pca.pca_whiten` of a store, streamed: PCA-whiten to ``dim`` dims + row
    L2.

    store: [N, D] fp16/fp32 (with ``group``: this rank's shard, any N >= 0; all ranks fit the
    PCA of the concatenated rows). Pass 1: float64 column sums; pass 2: centred covariance
    (fp32 products per chunk, float64 sums); both all-reduced with a group; the eigen step is
    :meth:`fastdc.engine.pca.PCA.fit_covariance`. Pass 3 writes the whitened, normalised rows
    [N, min(dim, D)] into a new store of ``out_dtype`` (default: the input's), on disk under
    ``out_dir`` as ``out_name`` when given, else in RAM. Raises ValueError for NaN/inf rows
    (with the row index) or fewer than 2 rows in total.
    """
    device = torch.device(device)
    n_local, d = store.shape
    n = n_local
    if group is not None:
        n = int(fdist.all_reduce_sum(torch.tensor([n], dtype=torch.int64, device=device), group))
    if n < 2:
        raise ValueError(f"PCA needs at least 2 rows, got {n}")
    col_sums = torch.zeros(d, dtype=torch.float64, device=device)
    for start, x in device_chunks(store, chunk_rows, device):
        row = first_nonfinite_row(x)
        if row is not None:
            raise ValueError(f"features contain NaN or inf (first bad row: {start + row}); "
                             "fix them first")
        col_sums += x.sum(dim=0, dtype=torch.float64)
    mean = fdist.all_reduce_sum(col_sums, group) / n
    mean32 = mean.float()
    cov = torch.zeros(d, d, dtype=torch.float64, device=device)
    for _, x in device_chunks(store, chunk_rows, device):
        xc = x - mean32
        cov += (xc.T @ xc).double()
    cov = fdist.all_reduce_sum(cov, group) / n
    pca = PCA(dim, eigen_power).fit_covariance(mean, cov, n)
    out_dtype = out_dtype or store.dtype
    d_out = pca.components.shape[1]
    if out_dir is None or n_local == 0:  # (an empty shard needs no file)
        out = FeatureStore.in_memory(n_local, d_out, out_dtype)
    else:
        out = FeatureStore.create(out_dir, n_local, d_out, out_dtype, out_name)
    for start, x in device_chunks(store, chunk_rows, device):
        out.write(start, l2_normalize_rows(pca.transform(x)))
    return out.finalize()


def kmeans_streaming(
    store: FeatureStore,
    k: int,
    *,
    niter: int = 20,
    seed: int = 0,
    init: str | torch.Tensor = "random",
    spherical: bool = False,
    device: torch.device | str = "cpu",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    backend: str | None = None,
    group: fdist.Group | None = None,
) -> KMeansResult:
    """:func:`fastdc.engine.lloyd.kmeans` of the rows of a store, streamed through ``device``.

    store: [N, D] fp16/fp32 rows (with ``group``: this rank's shard, N >= 1 on every rank; the
    result equals one process on the concatenated shards, as for lloyd). Each chunk is
    converted to fp32 on the device, so an fp16 store gives lloyd's result on the fp16-rounded
    rows. init: "random" (the same rows lloyd draws for this seed) or a tensor [k0, D] of
    initial centroids (k0 <= k; with a group rank 0's is used); "kmeans++" raises ValueError
    (D² sampling needs k passes over the data). Each iteration: per chunk ``assign`` +
    ``cluster_sums`` (accumulated in float64 on the device), all-reduce with a group, then
    :func:`fastdc.engine.lloyd.finish_iteration`. Returns a :class:`KMeansResult` for one problem:
    centroids [k, D] float32 on ``device``; assignments [N] int64 and dist [N] float32 on the
    CPU (this rank's rows); obj [niter] float64 (summed over ranks), nsplit [niter] int64,
    imbalance [niter] float64 on ``device``.
    """
    device = torch.device(device)
    n_local, d = store.shape
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if niter < 0:
        raise ValueError(f"niter must be >= 0, got {niter}")
    sizes = fdist.all_gather_sizes(n_local, group, device).cpu().flatten()  # [P]
    _check_k(k, int(sizes.sum()))
    if group is not None and int(sizes.min()) < 1:
        raise ValueError("every rank needs at least one row")
    metric = "ip" if spherical else "l2"
    centroids = _initial_centroids(store, k, init, seed, sizes, device, group)
    if spherical:
        centroids = _normalize(centroids)
    split_gen = torch.Generator(device=device)
    split_gen.manual_seed(int(seed) + 1)
    obj = torch.zeros(niter, 1, dtype=torch.float64, device=device)
    nsplit = torch.zeros(niter, 1, dtype=torch.int64, device=device)
    imbalance = torch.zeros(niter, 1, dtype=torch.float64, device=device)
    for it in range(niter):
        sums = torch.zeros(1, k, d, dtype=torch.float64, device=device)
        counts = torch.zeros(1, k, dtype=torch.float64, device=device)
        for start, x in device_chunks(store, chunk_rows, device):
            if it == 0:
                row = first_nonfinite_row(x)
                if row is not None:
                    raise ValueError(f"x contains NaN or inf at row {start + row}; remove or "
                                     "impute it first")
            xb = x.unsqueeze(0)
            dist, idx = assign(xb, centroids, metric=metric, backend=backend)
            obj[it] += dist.sum(dim=1, dtype=torch.float64)
            s, c = cluster_sums(xb, idx, k, backend=backend, check_ids=False)
            sums += s
            counts += c
        sums, counts = sums.float(), counts.float()
        if group is not None:
            sums, counts = _all_reduce_sums(sums, counts, group)
        centroids, imbalance[it], nsplit[it] = finish_iteration(
            centroids, sums, counts, split_gen=split_gen, spherical=spherical, backend=backend
        )
    assignments = torch.empty(n_local, dtype=torch.int64)
    dists = torch.empty(n_local, dtype=torch.float32)
    for start, x in device_chunks(store, chunk_rows, device):
        dist, idx = assign(x.unsqueeze(0), centroids, metric=metric, backend=backend)
        assignments[start : start + x.shape[0]] = idx[0].cpu()
        dists[start : start + x.shape[0]] = dist[0].float().cpu()
    if group is not None:
        fdist.all_reduce_sum(obj, group)
    return KMeansResult(centroids[0], assignments, dists, obj[:, 0], nsplit[:, 0],
                        imbalance[:, 0])


def _initial_centroids(store: FeatureStore, k: int, init: str | torch.Tensor, seed: int,
                       sizes: torch.Tensor, device: torch.device, group) -> torch.Tensor:
    """[1, k, D] float32 on ``device``: the rows :func:`fastdc.engine.lloyd.initial_centroids`
    draws.

    A seeded CPU generator permutes the M rows of all ranks (rank order) and takes the first
    k positions, as lloyd does with and without a group (M = N for one process); each rank
    copies the rows it owns into a zero buffer that is summed over the group.
    """
    d = store.shape[1]
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    given = None
    if isinstance(init, torch.Tensor):
        given = given_centroids(init, 1, k, d, device, group)
        if given.shape[1] == k:
            return given.clone()
    elif init != "random":
        raise ValueError(f"kmeans_streaming supports init='random' or a tensor of centroids, "
                         f"got {init!r}")
    n_draw = k - (0 if given is None else given.shape[1])
    me = fdist.rank(group)
    offset, local = int(sizes[:me].sum()), int(sizes[me])
    pos = torch.randperm(int(sizes.sum()), generator=gen)[:n_draw]
    mine = (pos >= offset) & (pos < offset + local)
    out = torch.zeros(1, n_draw, d, dtype=torch.float32)
    if bool(mine.any()):
        out[0, mine] = store.take(pos[mine] - offset).float()
    drawn = fdist.all_reduce_sum(out.to(device), group)
    return drawn if given is None else torch.cat([given, drawn], dim=1)
