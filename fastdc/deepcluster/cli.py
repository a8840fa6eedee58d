"""The command line of ``python -m fastdc.train`` (and of ``torchrun ... -m fastdc.train``).

Under torchrun each process joins the group from torchrun's environment
(:mod:`fastdc.deepcluster.process_group`: NCCL on CUDA, gloo on the CPU); without it one
process runs. Bad input ends with a one-line error and status 2, a stop signal with the
command that continues the run and status 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

from fastdc.deepcluster.checkpoint import CheckpointError
from fastdc.deepcluster.config import UsageError, parse_config
from fastdc.deepcluster.data import DataError
from fastdc.deepcluster.launch import train
from fastdc.deepcluster.process_group import process_group_from_env
from fastdc.deepcluster.run_control import Interrupted


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 bad input, 130/143 stop)."""
    try:
        cfg = parse_config(argv)
        with process_group_from_env(cfg.device) as env:
            if env.group is not None:
                cfg.device = env.device
            train(cfg, group=env.group)
    except (DataError, UsageError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print(f"stopped; checkpoint saved in {stop.out}. Continue with: "
              f"python -m fastdc.train --resume --out {stop.out}", file=sys.stderr)
        return 143 if stop.signum == signal.SIGTERM else 130
    return 0
