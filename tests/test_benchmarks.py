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


def test_bench_gpu_main_pass_counts_as_the_simulation_does():
    """The GPU script's bf16 pass alone (Triton; the interpreter on a CPU) at a K the padding
    must round up: every row has a candidate, the kernel's count is at least the CPU
    simulation's (it counts against a running minimum), its fractions add up to one, and each
    later pass takes the rows the one before leaves open."""
    from fastdc.kernels.assign import candidates_ref

    from benchmarks.bench_gpu import main_pass, recheck_fractions
    from tests.helpers import TRITON_DEVICE, triton_kernels

    triton_kernels("assign")
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(1, 90, 32, generator=g), torch.randn(1, 70, 32, generator=g)
    count = (main_pass(x.to(TRITON_DEVICE), c.to(TRITON_DEVICE)) >> 32).cpu()[0]
    ref_count, _, _ = candidates_ref(x[0], c[0])
    assert bool((count >= 1).all()) and bool((count >= ref_count).all())
    fractions = recheck_fractions(x.to(TRITON_DEVICE), c.to(TRITON_DEVICE))
    bf16 = [fractions[k] for k in ("one", "two", "more", "zero")]
    assert sum(bf16) == pytest.approx(1.0) and fractions["zero"] == 0.0
    assert fractions["to_tf32"] == fractions["more"]
    assert fractions["to_fp32"] <= fractions["to_tf32x3"] <= fractions["to_tf32"]


def test_bench_gpu_accumulation_probe_reads_the_dot_error():
    """The GPU script's accumulation stage, under the interpreter on a CPU (numpy rounds to
    nearest): every error within IEEE's γ_d, below the tensor cores' allowance."""
    from benchmarks.bench_gpu import accumulation_probe
    from tests.helpers import TRITON_DEVICE, triton_kernels

    triton_kernels("assign")
    probe = accumulation_probe(TRITON_DEVICE)
    assert probe["allowed"] == 4.0
    for mode in ("bf16", "tf32"):
        assert 0.0 <= probe[mode]["unit_last"] <= probe[mode]["max"] <= probe["allowed"]
        if TRITON_DEVICE == "cpu":
            assert probe[mode]["max"] <= 1.0


def test_gpu_run_also_runs_the_gpu_tests_and_the_trainer(tmp_path):
    from benchmarks.bench_gpu import smoke_commands

    one = smoke_commands(tmp_path, gpus=1)
    assert one[0][1:3] == ["-m", "pytest"] and one[0][4:6] == ["-m", "gpu"]
    trainer = [c for c in one if "fastdc.train" in c]
    assert len(trainer) == 4 and sum("--amp" in c for c in trainer) == 1
    assert sum("pic" in c for c in trainer) == 1 and sum("deepercluster" in c for c in trainer) == 1
    assert all(c[c.index("--device") + 1] == "cuda" for c in trainer)
    two = smoke_commands(tmp_path, gpus=2)
    assert len(two) == 6 and "--nproc_per_node" in two[-1]


def test_gpu_estimate_finds_the_innermost_hgmma_loop():
    from benchmarks.gpu_estimate import main_loop_length

    sass = "\n".join([
        "/*0000*/ MOV R1, c[0x0][0x28] ;",
        "/*0010*/ HGMMA.64x32x16.F32.BF16 R24, R40, gdesc[UR4], RZ ;",
        "/*0020*/ IADD3 R2, R2, 0x1, RZ ;",
        "/*0030*/ HGMMA.64x32x16.F32.BF16 R24, R40, gdesc[UR4], R24 ;",
        "/*0040*/ FSETP.GEU.AND P0, PT, R3, R4, PT ;",
        "/*0050*/ @!P0 BRA 0x20 ;",  # inner loop: 0x20..0x50, four instructions
        "/*0060*/ @!P1 BRA 0x0 ;",  # outer loop: seven instructions
        "/*0070*/ @P2 BRA 0x90 ;",  # forward branch: not a loop
        "/*0080*/ EXIT ;",
    ])
    assert main_loop_length(sass) == 4
    assert main_loop_length("/*0000*/ FADD R1, R2, R3 ;\n/*0010*/ BRA 0x0 ;") == 0


def test_gpu_estimate_overlaps_only_with_two_ctas_per_sm_or_prefetch():
    from benchmarks.gpu_estimate import H100, pass_seconds, tile_cycles

    small = {"registers": 128, "shared_bytes": 80 * 1024, "loop_instructions": 400}
    big = dict(small, shared_bytes=150 * 1024)
    two = tile_cycles(small, 64, 32, 256, 4, 2, H100["bf16_flops"])
    one = tile_cycles(big, 64, 32, 256, 4, 2, H100["bf16_flops"])
    assert two["ctas_per_sm"] == 2 and one["ctas_per_sm"] == 1
    assert two["tensor"] == pytest.approx(256)  # 2·64·32·256 flop at 4 096 flop per clock
    assert two["total"] == max(two["tensor"], two["l2"], two["smem"], two["issue"])
    assert one["total"] == max(one["tensor"] + one["issue"], one["l2"], one["smem"])
    # one stage: nothing prefetched, each tile also waits for its own centroid copy
    serial = tile_cycles(big, 64, 32, 256, 4, 1, H100["bf16_flops"])
    assert serial["total"] == pytest.approx(one["tensor"] + one["issue"] + one["l2"])
    paired = tile_cycles(small, 64, 32, 256, 4, 1, H100["bf16_flops"])
    assert paired["total"] == pytest.approx(max(
        two["tensor"], two["l2"], two["smem"], two["issue"],
        (two["tensor"] + two["issue"] + two["l2"]) / 2))
    # one wave of 132 programs over one centroid tile: exactly one tile time
    assert pass_seconds(one, 64, 32, 64 * 132, 32) == pytest.approx(
        one["total"] / H100["clock_hz"])
