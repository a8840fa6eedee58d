"""Where the Lloyd loop reads its rows: the "rows" interface and its three sources.

The loop (:func:`fastdc.engine.lloyd.lloyd`) never touches a tensor of all rows. It asks a
:class:`Rows` source for one pass over its rows as a sequence of :class:`Block` s (a block holds
rows ``start..start+m`` of every problem, as [B, m, D] on the compute device), for the real rows
it holds (to draw random seeds) and, for k-means++, for the whole tensor.

- :class:`TensorRows`: an in-memory tensor x [B, N, D] with optional weights [B, N], read as
  one block (default) or in blocks of ``chunk_rows`` rows: views of x, never copies;
- :class:`MaskedRows`: a batch of problems padded to one length: mask [B, N] (False = padding)
  gives padding rows weight 0, keeps them out of the objective and the seeding, and labels them
  -1 (distance 0) in the result;
- :class:`StoreRows`: a :class:`fastdc.engine.store.FeatureStore` [N, D] streamed through the
  device in chunks of ``chunk_rows`` rows (pinned double buffering on CUDA); one problem.

Sharding composes with every source: give it a process ``group`` and its rows are this rank's
shard of the rows of all ranks, concatenated in rank order. The loop then sums its statistics
over the group with :mod:`fastdc.engine.collectives` (which act as a world of one without a
group), so no source and no loop code tests for a group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fastdc.engine import collectives as fdist
from fastdc.engine.checks import check_chunk_rows
from fastdc.engine.store import FeatureStore, device_chunks

OBJECTIVE_CHUNK = 1 << 16
"""Rows per float64 partial sum of a block's objective (:meth:`Block.objective`)."""


@dataclass
class Block:
    """Rows ``start..start+m`` of every problem of a source.

    x: [B, m, D] float on the compute device (float32 for stores). weights: [B, m] float32 or
    None (all ones). mask: [B, m] bool or None (all real).
    """

    start: int
    x: torch.Tensor
    weights: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def objective(self, dist: torch.Tensor) -> torch.Tensor:
        """Sum of dist [B, m] float32 over the block's real rows: [B] float64, the rows added
        one after the other in row order (a float64 running sum, as the cpu backend's one-call
        loop adds them: :func:`fastdc.ops.lloyd_step.lloyd_run`), :data:`OBJECTIVE_CHUNK` rows
        at a time (a float64 copy of the whole block would take 8 MB at a million rows)."""
        if self.mask is not None:
            dist = dist.masked_fill(~self.mask, 0.0)
        total = None
        for start in range(0, dist.shape[1], OBJECTIVE_CHUNK):
            part = dist[:, start : start + OBJECTIVE_CHUNK].double()
            if total is not None:  # the running sum goes on from the last chunk's
                part[:, 0] += total
            total = part.cumsum(dim=1)[:, -1]
        if total is None:
            return torch.zeros(dist.shape[0], dtype=torch.float64, device=dist.device)
        return total


class Rows(ABC):
    """The rows one Lloyd loop clusters: B problems of D features each, this rank's shard.

    shape: (B, N, D) on this rank, padding rows included. dtype: the blocks' dtype. device:
    where blocks and centroids live. group: process group or None. out_device: where the final
    assignments are gathered. min_rows_per_rank: the fewest rows a rank may hold.
    """

    min_rows_per_rank = 0
    dtype = torch.float32  # of the blocks' rows

    def __init__(self, shape: tuple[int, int, int], device: torch.device,
                 group: fdist.Group | None, out_device: torch.device) -> None:
        self.shape, self.device, self.group, self.out_device = shape, device, group, out_device
        self.batch, self.dim = shape[0], shape[2]

    @abstractmethod
    def blocks(self) -> Iterator[Block]:
        """One pass over this rank's rows, in row order (at least one block)."""

    def single_block(self) -> bool:
        """Whether every pass reads all of this rank's rows as one block."""
        return False

    @abstractmethod
    def real_counts(self) -> torch.Tensor:
        """[B] int64 (CPU): the real rows of each problem on this rank."""

    @abstractmethod
    def take_real(self, b: int, j: torch.Tensor) -> torch.Tensor:
        """Real rows number j [m] (int64, CPU; counted among problem b's real rows on this
        rank) as [m, D] float32 on the device."""

    def plus_plus_input(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x [B, N, D], weights [B, N] or None with padding at 0) for k-means++ seeding, which
        needs every row at once. Raises ValueError for sources that stream."""
        raise ValueError(
            f"init='kmeans++' needs all rows in memory (D² sampling takes k passes over the "
            f"data); {type(self).__name__} streams them: use init='random' or pass centroids"
        )

    def collect(self, parts: list[tuple[torch.Tensor, torch.Tensor]]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Join the per-block (dist [B, m] float32, idx [B, m] int64) of one pass, on
        ``out_device``, into [B, N] (no copy for a single block)."""
        if len(parts) == 1:
            return parts[0]
        return torch.cat([d for d, _ in parts], dim=1), torch.cat([i for _, i in parts], dim=1)


class TensorRows(Rows):
    """x [B, N, D] float (contiguous) with weights [B, N] float32 or None, on x's device.

    chunk_rows: None reads x as one block; an int reads blocks of that many rows (views).
    """

    def __init__(self, x: torch.Tensor, weights: torch.Tensor | None = None, *,
                 chunk_rows: int | None = None, group: fdist.Group | None = None) -> None:
        super().__init__(tuple(x.shape), x.device, group, x.device)
        self.x, self.weights, self.dtype = x, weights, x.dtype
        self.step = x.shape[1] if chunk_rows is None else check_chunk_rows(chunk_rows)
        self._whole: Block | None = None  # the one block, once made

    def blocks(self) -> Iterator[Block]:
        """Blocks of ``step`` rows: views of x, weights and mask (one block: the same views
        every pass, made once)."""
        if self._whole is not None:
            yield self._whole
            return
        for start in range(0, self.x.shape[1], self.step):
            block = Block(start, *(self._rows(t, start) for t in self._columns()))
            if self.single_block():
                self._whole = block
            yield block

    def _columns(self) -> tuple:
        return self.x, self.weights, None

    def single_block(self) -> bool:
        """Whether ``chunk_rows`` (if any) covers every row."""
        return self.step >= self.x.shape[1]

    def _rows(self, t: torch.Tensor | None, start: int) -> torch.Tensor | None:
        return None if t is None else t[:, start : start + self.step]

    def real_counts(self) -> torch.Tensor:
        """[B] int64: N for every problem."""
        return torch.full((self.batch,), self.x.shape[1], dtype=torch.int64)

    def take_real(self, b: int, j: torch.Tensor) -> torch.Tensor:
        """Rows j of problem b as [m, D] float32."""
        return self.x[b, j.to(self.device)].float()

    def plus_plus_input(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x, weights) as given."""
        return self.x, self.weights


class MaskedRows(TensorRows):
    """A padded batch: x [B, N, D], mask [B, N] bool (True = real row), weights [B, N] float32
    or None. Padding rows count with weight 0, whatever ``weights`` holds for them."""

    def __init__(self, x: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None,
                 *, chunk_rows: int | None = None, group: fdist.Group | None = None) -> None:
        weights = mask.float() if weights is None else weights * mask
        super().__init__(x, weights, chunk_rows=chunk_rows, group=group)
        self.mask = mask
        self._real: dict[int, torch.Tensor] = {}

    def _columns(self) -> tuple:
        return self.x, self.weights, self.mask

    def real_counts(self) -> torch.Tensor:
        """[B] int64: the True entries of each problem's mask."""
        return self.mask.sum(dim=1).cpu()

    def take_real(self, b: int, j: torch.Tensor) -> torch.Tensor:
        """The j-th real rows of problem b (in row order) as [m, D] float32."""
        if b not in self._real:
            self._real[b] = self.mask[b].nonzero().flatten()
        return self.x[b, self._real[b][j.to(self.device)]].float()

    def collect(self, parts: list[tuple[torch.Tensor, torch.Tensor]]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`Rows.collect`, then padding rows get dist 0 and idx -1."""
        dist, idx = super().collect(parts)
        return dist.masked_fill(~self.mask, 0.0), idx.masked_fill(~self.mask, -1)


class StoreRows(Rows):
    """A feature store [N, D] (fp16/fp32, host) as one problem, streamed through ``device``
    ``chunk_rows`` rows at a time and converted to float32 there. Final assignments are
    gathered on the CPU; every rank needs at least one row."""

    min_rows_per_rank = 1

    def __init__(self, store: FeatureStore, device: torch.device, chunk_rows: int, *,
                 group: fdist.Group | None = None) -> None:
        super().__init__((1, *store.shape), device, group, torch.device("cpu"))
        self.store, self.chunk_rows = store, check_chunk_rows(chunk_rows)

    def blocks(self) -> Iterator[Block]:
        """The store's chunks, as [1, m, D] float32 blocks on the device."""
        for start, x in device_chunks(self.store, self.chunk_rows, self.device):
            yield Block(start, x.unsqueeze(0))

    def single_block(self) -> bool:
        """Whether ``chunk_rows`` covers the whole store."""
        return self.chunk_rows >= len(self.store)

    def real_counts(self) -> torch.Tensor:
        """[1] int64: the store's N."""
        return torch.tensor([len(self.store)], dtype=torch.int64)

    def take_real(self, b: int, j: torch.Tensor) -> torch.Tensor:
        """Store rows j as [m, D] float32 on the device."""
        return self.store.take(j).float().to(self.device)
