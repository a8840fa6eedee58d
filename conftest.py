"""Repository-wide pytest setup.

- ``pytest`` runs the tests in tests/; ``pytest --benchmark`` runs the benchmarks in
  benchmarks/ instead and prints their side-by-side tables.
- Without a CUDA device, Triton kernels run under the interpreter (TRITON_INTERPRET=1), which
  must be set before triton is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).parent


def pytest_addoption(parser):
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run the benchmarks in benchmarks/ (side by side with the reference) "
        "instead of the tests",
    )


def pytest_ignore_collect(collection_path, config):
    path = Path(collection_path).resolve()
    benchmarking = config.getoption("--benchmark")
    if path.is_relative_to(ROOT / "benchmarks"):
        return not benchmarking
    if path.is_relative_to(ROOT / "tests"):
        return benchmarking
    return None


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    import pytest

    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not config.getoption("--benchmark"):
        return
    from benchmarks.report import print_tables

    print_tables(terminalreporter)
