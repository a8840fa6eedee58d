"""The CUDA C sources (csrc/cuda/<op>.cu): one per op, compiled for sm_90 with nvcc (when it is
on PATH) with the launch sizes of fastdc/ops/cuda_sources.py, which no source writes itself and
without which every source refuses to compile. The ``cuda`` backend's results are tested with
every other backend in tests/test_<op>.py (on a GPU), and every kernel's values on the CPU by
tests/test_cuda_emulated.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fastdc.ops.cuda_sources import LAUNCH, defines, source

CUDA_DIR = Path(__file__).resolve().parents[1] / "csrc" / "cuda"
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
EXPECTED = {"assign.cu", "cluster_sums.cu", "knn.cu", "resplit_empty.cu", "sobel.cu"}
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")


def nvcc(source_path: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["nvcc", "-arch=sm_90", "--ptx", "-std=c++17", *options, "-o", str(out),
         str(source_path)],
        capture_output=True, text=True, timeout=300,
    )


def test_every_op_has_a_cuda_source_and_launch_sizes():
    assert EXPECTED <= {p.name for p in SOURCES}
    assert {p.stem for p in SOURCES} == set(LAUNCH)
    assert all(source(p.stem) == p.read_text() for p in SOURCES)


@pytest.mark.parametrize("source_path", SOURCES, ids=lambda p: p.name)
def test_launch_sizes_are_written_once(source_path):
    """Each size is used by the source and defined only by the compiler options."""
    text = source_path.read_text()
    for name in LAUNCH[source_path.stem]:
        assert re.search(rf"\b{name}\b", text), f"{name} is not used"
        assert not re.search(rf"#\s*define\s+{name}\b", text), f"{name} is defined in the .cu"


@needs_nvcc
@pytest.mark.parametrize("source_path", SOURCES, ids=lambda p: p.name)
def test_cu_compiles_for_sm90(source_path, tmp_path):
    out = tmp_path / (source_path.stem + ".ptx")
    proc = nvcc(source_path, out, *defines(source_path.stem))
    assert proc.returncode == 0, proc.stderr
    assert ".entry" in out.read_text()  # at least one extern "C" kernel was emitted


@needs_nvcc
@pytest.mark.parametrize("source_path", SOURCES, ids=lambda p: p.name)
def test_cu_kernels_do_not_spill_on_sm90(source_path, tmp_path):
    """ptxas -v on the sm_90 cubin: every kernel has no stack frame and no spills."""
    out = tmp_path / (source_path.stem + ".cubin")
    proc = subprocess.run(
        ["nvcc", "-arch=sm_90", "-cubin", "-std=c++17", "-Xptxas", "-v",
         *defines(source_path.stem), "-o", str(out), str(source_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill "
                        r"loads", proc.stderr)
    kernels = re.findall(r"Compiling entry function '(\w+)'", proc.stderr)
    assert frames and len(frames) == len(kernels), proc.stderr
    assert all(f == ("0", "0", "0") for f in frames), dict(zip(kernels, frames, strict=True))


@needs_nvcc
@pytest.mark.parametrize("source_path", SOURCES, ids=lambda p: p.name)
def test_cu_refuses_to_compile_without_the_launch_sizes(source_path, tmp_path):
    proc = nvcc(source_path, tmp_path / "out.ptx")
    assert proc.returncode != 0
    assert "fastdc/ops/cuda_sources.py" in proc.stderr


@needs_nvcc
def test_launch_sizes_that_break_the_thread_layout_do_not_compile(tmp_path):
    sizes = dict(LAUNCH["assign"], THREADS=128)
    options = [f"-D{k}={v}" for k, v in sizes.items()]
    proc = nvcc(CUDA_DIR / "assign.cu", tmp_path / "out.ptx", *options)
    assert proc.returncode != 0 and "one thread per 4 x 4 block" in proc.stderr
