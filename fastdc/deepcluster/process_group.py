"""Process-group setup for ``torchrun --nproc_per_node N -m fastdc.train ...``.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in
each process's environment. :func:`process_group_from_env` joins them with
``torch.distributed.init_process_group`` (``env://``): NCCL when the run trains on CUDA, gloo on
the CPU. Without those variables, or with ``WORLD_SIZE=1``, it does nothing and yields None: a
plain ``python -m fastdc.train`` runs exactly as a single process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

# torch.distributed.nn binds ``group.WORLD`` into default arguments when first imported, which
# DistributedDataParallel does: imported here, before any group exists, it holds None and does
# not keep the group of process_group_from_env alive after it is destroyed (see there).
import torch.distributed.nn  # noqa: F401

from fastdc.engine import Group


@dataclass
class DistEnv:
    """Where this process stands: ``group`` (None when not distributed), ranks, device name."""

    group: Group | None
    rank: int
    world_size: int
    local_rank: int
    device: str


def env_world_size() -> int:
    """WORLD_SIZE from the environment (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def wants_cuda(device: str) -> bool:
    """True when ``--device`` (auto, cpu, cuda, cuda:1...) means training on a GPU here."""
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


@contextmanager
def process_group_from_env(device: str = "auto") -> Iterator[DistEnv]:
    """Join the torchrun process group for the run's ``--device``; destroy it on exit.

    On CUDA each process takes GPU ``LOCAL_RANK`` (``DistEnv.device`` = ``cuda:LOCAL_RANK``)
    and NCCL; on the CPU, gloo. Yields a :class:`DistEnv` with ``group=None`` when the
    environment does not describe more than one process.
    """
    world = env_world_size()
    if world <= 1 or dist.is_initialized():
        group = dist.group.WORLD if dist.is_initialized() else None
        yield DistEnv(group, 0 if group is None else dist.get_rank(), dist.get_world_size()
                      if group is not None else 1, int(os.environ.get("LOCAL_RANK", "0")),
                      device)
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = wants_cuda(device)
    if cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    env = DistEnv(dist.group.WORLD, dist.get_rank(), dist.get_world_size(), local_rank, device)
    try:
        yield env
    finally:
        dist.destroy_process_group()
        # Free the group object now, not at interpreter exit: its destructor joins gloo's worker
        # threads. A worker still running at exit may drop the last reference to a finished
        # collective there; freeing its tensors takes the GIL, which during finalization ends
        # the thread inside a noexcept destructor (std::terminate, SIGABRT). The caller's
        # DistEnv is the last holder once the trainer is gone (after an exception: once the
        # caller has handled it).
        env.group = None
