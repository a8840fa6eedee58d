"""The benchmark suite's own code, without running a benchmark: the one timer
(benchmarks/timing.py), which every benchmark uses, and the GPU script's CPU-side helpers."""

from __future__ import annotations

import datetime
import importlib.util
import re
from pathlib import Path

import pytest
import torch

from benchmarks.timing import Timing, measure

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def test_measure_times_rounds_after_untimed_warmups():
    calls = []
    timing = measure(lambda: calls.append(len(calls)) or len(calls), rounds=4, warmup=2)
    assert len(calls) == 6 and len(timing.seconds) == 4
    assert timing.result == 6  # the last call's return value
    assert all(s >= 0 for s in timing.seconds)
    assert timing.best == min(timing.seconds) and timing.best <= timing.median <= max(
        timing.seconds)


def test_timing_summaries():
    timing = Timing((3.0, 1.0, 2.0, 6.0), None)
    assert (timing.best, timing.median, timing.mean) == (1.0, 2.5, 3.0)


def test_measure_rejects_no_rounds():
    with pytest.raises(ValueError, match="rounds"):
        measure(lambda: None, rounds=0)


@pytest.mark.parametrize("path", sorted(BENCHMARKS.glob("*.py")), ids=lambda p: p.name)
def test_every_benchmark_times_with_the_one_helper(path):
    """No second timer: clocks are read in benchmarks/timing.py only."""
    if path.name == "timing.py":
        return
    text = path.read_text()
    for clock in (r"perf_counter", r"time\.time\(", r"time\.monotonic", r"cuda\.Event",
                  r"benchmark\.pedantic", r"\bbenchmark\("):
        assert not re.search(clock, text), f"{path.name} reads a clock: {clock}"


def test_bench_gpu_cpu_side_helpers():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCHMARKS / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = bench.result_path("NVIDIA H100 80GB HBM3", datetime.date(2025, 1, 2))
    assert path.name == "gpu_nvidia-h100-80gb-hbm3_2025-01-02.json"
    assert bench.assign_flops(2, 3, 4) == 48.0
    table = bench.format_table([{"case": "assign", "impl": "triton", "ms": 1.5},
                                {"case": "assign", "impl": "x", "ms": None, "note": "n/a"}])
    assert "1.500" in table and "n/a" in table
    assert set(bench.versions()) >= {"torch", "triton"}
    if not torch.cuda.is_available():
        assert bench.main([]) == 2  # a clear message and a non-zero exit, no crash


def test_gpu_run_also_runs_the_gpu_tests_and_the_trainer(tmp_path):
    from benchmarks.bench_gpu import smoke_commands

    one = smoke_commands(tmp_path, gpus=1)
    assert one[0][1:3] == ["-m", "pytest"] and one[0][4:6] == ["-m", "gpu"]
    trainer = [c for c in one if "fastdc.train" in c]
    assert len(trainer) == 2 and sum("--amp" in c for c in trainer) == 1
    assert all(c[c.index("--device") + 1] == "cuda" for c in trainer)
    two = smoke_commands(tmp_path, gpus=2)
    assert len(two) == 4 and "--nproc_per_node" in two[-1]
