"""assign on the CPU, side by side: the ``cpu`` backend vs the ``torch`` reference vs faiss's
exhaustive search (IndexFlatL2), N=100 000 rows, D=256, K=1 000 centroids; and a size sweep
(N, D, K) of the cpu backend's SIMD paths with GFLOP/s and the fraction of the FMA peak
measured in the same run, against faiss. ``pytest --benchmark`` runs a small sweep (seconds);
``python benchmarks/bench_assign.py`` the full one (cells too big for a 2-core machine skipped,
and named in the table's note).

GPU timings of the same op (Triton, CUDA C) come from ``python benchmarks/bench_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.op_inputs import D, K, N, features, need
from benchmarks.report import record
from benchmarks.timing import measure
from fastdc.ops import assign

TABLE = "op_assign_cpu_100k_256_1k"
FLOP = 2.0 * N * K * D


@pytest.mark.parametrize("backend,precision", [("cpu", "default"), ("cpu", "fp32"),
                                               ("torch", "default")])
def test_assign(backend, precision):
    need("assign", backend)
    x, c = features()
    seconds = measure(lambda: assign(x, c, backend=backend, precision=precision), rounds=2).best
    name = f"fastdc {backend}" + ("" if precision == "default" else f" {precision}")
    record(TABLE, {"name": name, "time_s": seconds,
                   "GFLOP/s": FLOP / seconds / 1e9}, reference="faiss IndexFlatL2.search",
           note="nearest centroid of every row, best of 2 after a warm-up; fastdc cpu: the "
           "default (bf16 pass with an exact float32 re-check where the CPU has AVX512-BF16: "
           "the float32 answers), cpu fp32: float32 only")


def test_assign_faiss():
    faiss = pytest.importorskip("faiss")
    x, c = features()
    index = faiss.IndexFlatL2(D)
    index.add(c.numpy())
    xn = x.numpy()
    seconds = measure(lambda: index.search(xn, 1), rounds=2).best
    record(TABLE, {"name": "faiss IndexFlatL2.search", "time_s": seconds,
                   "GFLOP/s": FLOP / seconds / 1e9})


# --- size sweep: GFLOP/s and fraction of the measured FMA peak, against faiss -----------------

SWEEP_N = (10_000, 100_000, 1_000_000)
SWEEP_D = (64, 256, 1024)
SWEEP_K = (100, 1_000, 10_000)
SMALL = ((10_000,), (64, 256), (100, 1_000))  # what pytest --benchmark runs: seconds
MAX_FLOP = 6e10  # cells above this (about 1 s of fastdc on 2 cores) are skipped on this machine
SWEEP_TABLE = "assign_sweep_cpu"
PEAK_TRIALS = 8  # the FMA peak is the best of short trials: the machine is shared


def sweep_cells(ns, ds, ks, max_flop=MAX_FLOP):
    """(N, D, K) of the sweep whose 2*N*K*D flops fit in ``max_flop``, and those skipped."""
    cells = [(n, d, k) for n in ns for d in ds for k in ks]
    return ([c for c in cells if 2.0 * c[0] * c[1] * c[2] <= max_flop],
            [c for c in cells if 2.0 * c[0] * c[1] * c[2] > max_flop])


def sweep_row(n, d, k, peaks, faiss):
    """One table row: seconds of every float32 path, of the bf16 pass where the CPU has it
    (with the fraction of rows it could not settle), and of faiss; GFLOP/s and the fraction of
    the peak of the default (the bf16 pass against the bf16 peak, else the widest path)."""
    from fastdc import _C
    from fastdc.ops import cpu

    g = torch.Generator().manual_seed(n + d + k)
    x = torch.randn(1, n, d, generator=g)
    c = x[:, torch.randperm(n, generator=g)[:k]].contiguous()
    flop = 2.0 * n * k * d
    row = {"name": f"N={n} D={d} K={k}"}
    for isa in reversed(cpu.isa_available()):
        row[f"{isa}_s"] = measure(lambda isa=isa: cpu.assign_cpu(
            x=x, centroids=c, metric="l2", isa=isa, precision="fp32"), rounds=1).best
    default = "bf16" if cpu.use_bf16(k=k) else cpu.simd()
    if cpu.use_bf16():
        row["bf16_s"] = measure(lambda: cpu.assign_cpu(x=x, centroids=c, metric="l2",
                                                       precision="bf16"), rounds=1).best
        dist, idx = torch.empty(1, n), torch.empty(1, n, dtype=torch.int64)
        unsettled = _C.assign(x.numpy(), c.numpy(), False, dist.numpy(), idx.numpy(),
                              torch.get_num_threads(), "avx512", None, True)
        row["unsettled"] = unsettled / n
    row["GFLOP/s"] = flop / row[f"{default}_s"] / 1e9
    row["peak_frac"] = row["GFLOP/s"] / peaks[default]
    if faiss is not None:
        index = faiss.IndexFlatL2(d)
        index.add(c[0].numpy())
        xn = x[0].numpy()
        row["faiss_s"] = measure(lambda: index.search(xn, 1), rounds=1).best
        row["x_vs_faiss"] = row["faiss_s"] / row[f"{default}_s"]
    return row


def run_sweep(ns, ds, ks, max_flop=MAX_FLOP):
    """Record the sweep table (:mod:`benchmarks.report`); returns the skipped cells."""
    from fastdc.ops import cpu

    try:
        import faiss
    except ImportError:
        faiss = None
    peaks = {isa: max(cpu.fma_peak_gflops(isa, seconds=0.05) for _ in range(PEAK_TRIALS))
             for isa in cpu.isa_available()}
    if cpu.use_bf16():
        peaks["bf16"] = max(cpu.bf16_peak_gflops(seconds=0.05) for _ in range(PEAK_TRIALS))
    cells, skipped = sweep_cells(ns, ds, ks, max_flop)
    for n, d, k in cells:
        record(SWEEP_TABLE, sweep_row(n, d, k, peaks, faiss))
    peak_text = ", ".join(f"{isa} {gf:.1f}" for isa, gf in peaks.items())
    skip_text = "; ".join(f"N={n} D={d} K={k}" for n, d, k in skipped) or "none"
    record(SWEEP_TABLE, {"name": "fma peak GFLOP/s: " + peak_text},
           note=f"L2 assign, 1 timed call after a warm-up; <path>_s: the float32 paths; "
           f"bf16_s: the bf16 pass where the CPU has AVX512-BF16 (rows with several candidates "
           f"or scored in float32: unsettled; same answers), the default from K = "
           f"{cpu.BF16_MIN_K}; GFLOP/s and peak_frac (of the measured peak, best of short "
           f"trials, of its instruction) of the default on "
           f"{torch.get_num_threads()} threads; skipped (> {max_flop:.0e} flop): {skip_text}")
    return skipped


def test_assign_sweep_small():
    need("assign", "cpu")
    skipped = run_sweep(*SMALL)
    assert not skipped


class _Printer:
    """The two methods of pytest's terminal reporter that print_tables uses, on stdout."""

    def write_sep(self, sep, title):
        print(f" {title} ".center(100, sep))

    def write_line(self, line):
        print(line)


if __name__ == "__main__":
    from benchmarks.report import print_tables

    run_sweep(SWEEP_N, SWEEP_D, SWEEP_K)
    print_tables(_Printer())
