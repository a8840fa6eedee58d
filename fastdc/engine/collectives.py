"""Thin helpers on ``torch.distributed`` for the k-means engine and the trainer.

Everything here takes an explicit process ``group`` (a ``torch.distributed`` ProcessGroup, e.g.
``torch.distributed.group.WORLD``); ``group=None`` means "not distributed": the helpers then act
as a world of one (sums are the identity, gathers return the input), so one code path serves one
process and many. Collectives run on the tensors' own device: CPU tensors need a gloo group,
CUDA tensors an NCCL group (or gloo, slowly). No pickles, no files: only tensor collectives.

- :func:`rank`, :func:`world_size`, :func:`is_main`: where this process stands in ``group``;
- :func:`all_reduce_sum`: in-place sum over the group; :func:`all_reduce_sum_packed`: several
  tensors summed in one collective;
- :func:`all_gather_sizes`, :func:`gather_rows`: variable-length row shards (e.g. labels)
  concatenated in rank order on every rank;
- :func:`shard_range`: the contiguous rows [start, stop) of N that a rank owns;
- :func:`free_port`, :func:`spawn`: run a function in P local gloo processes (tests, benchmarks).
"""

from __future__ import annotations

import io
import os
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

Group = Any  # a torch.distributed ProcessGroup; typed loosely (its class moved across versions)


def world_size(group: Group | None) -> int:
    """Number of processes in ``group`` (1 when ``group`` is None)."""
    return 1 if group is None else dist.get_world_size(group)


def rank(group: Group | None) -> int:
    """This process's rank inside ``group`` (0 when ``group`` is None)."""
    return 0 if group is None else dist.get_rank(group)


def is_main(group: Group | None) -> bool:
    """True on the rank that writes outputs (rank 0 of ``group``; always true without a group)."""
    return rank(group) == 0


def all_reduce_sum(t: torch.Tensor, group: Group | None) -> torch.Tensor:
    """Sum ``t`` over ``group`` in place and return it (identity when ``group`` is None).

    Every rank receives bit-identical results (gloo and NCCL reduce each chunk once, then
    broadcast it), so decisions taken from the reduced values agree across ranks.
    """
    if group is not None:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def all_reduce_sum_packed(tensors: Sequence[torch.Tensor], group: Group | None
                          ) -> list[torch.Tensor]:
    """Sum several tensors (one dtype, one device, any shapes) over ``group`` in one collective.

    Returns new tensors of the input shapes (the inputs themselves with a world of one, where
    there is nothing to add). One packed buffer costs one collective's latency instead of one
    per tensor.
    """
    if world_size(group) == 1:
        return list(tensors)
    flat = all_reduce_sum(torch.cat([t.reshape(-1) for t in tensors]), group)
    sizes = [t.numel() for t in tensors]
    return [part.view(t.shape) for part, t in zip(flat.split(sizes), tensors, strict=True)]


def broadcast_from_first(t: torch.Tensor, group: Group | None) -> torch.Tensor:
    """Overwrite ``t`` in place with rank 0's copy (group-local rank 0); identity without group."""
    if group is not None:
        dist.broadcast(t, src=dist.get_global_rank(group, 0), group=group)
    return t


def all_gather_sizes(n: int | torch.Tensor, group: Group | None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Every rank's ``n`` (an int, or an int64 tensor of any fixed shape), stacked in rank order.

    Returns int64 [P, *n.shape] on ``device`` (P = world size; [1, ...] without a group).
    """
    t = torch.as_tensor(n, dtype=torch.int64, device=device)
    if group is None:
        return t.unsqueeze(0).clone()
    out = [torch.empty_like(t) for _ in range(world_size(group))]
    dist.all_gather(out, t.contiguous(), group=group)
    return torch.stack(out)


def gather_rows(t: torch.Tensor, group: Group | None) -> torch.Tensor:
    """Concatenate every rank's ``t`` [n_r, ...] along dim 0, in rank order, on every rank.

    The shards may have different lengths n_r (they are padded to the longest for the
    collective and trimmed after); the trailing shape and dtype must agree. Use it to exchange
    labels: ``gather_rows(labels_local, group)`` -> int64 [sum_r n_r].
    Without a group, returns ``t`` unchanged.
    """
    if group is None:
        return t
    sizes = all_gather_sizes(t.shape[0], group, t.device).tolist()
    longest = max(sizes)
    padded = t.new_zeros((longest, *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def shard_range(n: int, group: Group | None) -> tuple[int, int]:
    """Rows [start, stop) of 0..n-1 owned by this rank: contiguous, sizes differ by at most 1.

    Concatenating the ranks' shards in rank order gives back 0..n-1, which is the layout
    :func:`gather_rows` and the distributed k-means expect.
    """
    p, r = world_size(group), rank(group)
    base, extra = divmod(n, p)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


# --------------------------------------------------------------------------- local launching


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(fn: Callable[..., Any], nprocs: int = 2, args: tuple = (), *,
          backend: str = "gloo", threads: int = 1, timeout_s: float = 300.0) -> list[Any]:
    """Run ``fn(group, *args)`` in ``nprocs`` fresh processes joined in one process group.

    Each child initialises ``backend`` over TCP on 127.0.0.1 (a free port), sets
    ``torch.set_num_threads(threads)``, calls ``fn`` with the world group, and sends back its
    return value (anything ``torch.save`` can write: tensors, dicts, tuples, numbers, str).
    ``fn`` must be importable by name (a module-level function), as with any "spawn" start.
    Returns the ranks' return values in rank order. Raises RuntimeError with the child's
    traceback if any rank fails, or TimeoutError after ``timeout_s`` seconds.
    """
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = free_port()
    procs = [
        ctx.Process(target=_child, args=(fn, r, nprocs, port, backend, threads, args, queue))
        for r in range(nprocs)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors: list[str] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(results) + len(errors) < nprocs:
            if time.monotonic() > deadline:
                raise TimeoutError(f"spawn: ranks did not finish within {timeout_s:.0f} s")
            if queue.empty():
                if any(p.exitcode not in (None, 0) for p in procs) and queue.empty():
                    dead = [i for i, p in enumerate(procs) if p.exitcode not in (None, 0)]
                    raise RuntimeError(f"spawn: rank(s) {dead} died without reporting")
                time.sleep(0.02)
                continue
            r, ok, value = queue.get()
            if ok:
                results[r] = torch.load(io.BytesIO(value), weights_only=False)
            else:
                errors.append(f"rank {r}:\n{value}")
                break
    finally:
        for p in procs:
            p.join(timeout=0 if errors else 30)
            if p.is_alive():
                p.terminate()
                p.join()
    if errors:
        raise RuntimeError("spawn: a rank failed\n" + "\n".join(errors))
    return [results[r] for r in range(nprocs)]


def _child(fn, r: int, nprocs: int, port: int, backend: str, threads: int, args: tuple,
           queue) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(threads)
    try:
        dist.init_process_group(
            backend, init_method=f"tcp://127.0.0.1:{port}", rank=r, world_size=nprocs
        )
        try:
            value = fn(dist.group.WORLD, *args)
        finally:
            dist.destroy_process_group()
        # serialise to bytes: tensors put on a queue as-is travel as shared-memory handles that
        # die with this process, which may exit before the parent reads them
        buf = io.BytesIO()
        torch.save(value, buf)
        queue.put((r, True, buf.getvalue()))
    except BaseException:  # noqa: BLE001 - report every failure to the parent, then exit
        queue.put((r, False, traceback.format_exc()))
