"""knn on the CPU, the k-NN graph of PIC (y = x): the fused ``cpu`` kernel vs a full-matrix
``torch.cdist`` + ``topk`` vs faiss's exhaustive search (IndexFlatL2), N = 12 000 rows, D = 128,
k = 6 (DeepCluster's 5 neighbours + the row itself). Time (best of 2 after a warm-up) and the
peak resident memory each adds beyond its inputs (VmHWM after resetting it, Linux only).
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.memory_probe import reset_peak, status_mb
from benchmarks.op_inputs import need
from benchmarks.report import record
from benchmarks.timing import measure
from fastdc.ops import knn

TABLE = "op_knn_cpu_12k_128_k6"
N, D, K = 12_000, 128, 6
FLOP = 2.0 * N * N * D


def _x() -> torch.Tensor:
    return torch.randn(N, D, generator=torch.Generator().manual_seed(0))


def _record(name: str, fn) -> None:
    reset_peak()
    base = status_mb("VmRSS")
    seconds = measure(fn, rounds=2).best
    record(TABLE, {"name": name, "time_s": seconds, "GFLOP/s": FLOP / seconds / 1e9,
                   "extra_MiB": status_mb("VmHWM") - base},
           reference="torch.cdist + topk",
           note="k nearest rows of every row (y = x); extra_MiB: peak RSS beyond the inputs")


def test_knn_fused():
    need("knn", "cpu")
    x = _x()
    _record("fastdc cpu", lambda: knn(x, x, K, backend="cpu"))


def test_knn_cdist_topk():
    x = _x()
    _record("torch.cdist + topk", lambda: torch.cdist(x, x).topk(K, largest=False))


def test_knn_faiss():
    faiss = pytest.importorskip("faiss")
    xn = _x().numpy()

    def run():
        index = faiss.IndexFlatL2(D)
        index.add(xn)
        return index.search(xn, K)

    _record("faiss IndexFlatL2.search", run)
