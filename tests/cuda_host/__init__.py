"""The CUDA C sources on the CPU: g++ builds each csrc/cuda/<op>.cu, unchanged, on cuda_host.h
into a shared library (launcher.cpp), and :func:`load_cuda_backend` runs fastdc/ops/cuda.py's
own launchers on CPU tensors through a stand-in for the part of CuPy they use
(``RawModule(code=..., options=...)``, ``get_function``, a kernel call), so the launch sizes,
grid, argument order and argument types are the ones a GPU run would use."""

from __future__ import annotations

import ctypes
import importlib.util
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

import fastdc.ops
from fastdc.ops import registry
from fastdc.ops.cuda_sources import LAUNCH, source

HERE = Path(__file__).resolve().parent
GXX = shutil.which("g++")
FLAGS = ("-std=c++20", "-pthread", "-O1", "-shared", "-fPIC")

KERNELS = {
    "assign": ("assign_f32",),
    "cluster_sums": ("cluster_sums_f32",),
    "resplit_empty": ("resplit_empty_f32",),
    "sobel": tuple(f"sobel_{i}_{o}" for i in ("u8", "f32") for o in ("f32", "f16", "bf16")),
    "knn": ("knn_f32",),
}
"""Every kernel (extern "C" entry point) of every source."""

_TYPES = {  # numpy scalar dtype of a launcher argument -> (type code, ctypes type)
    np.dtype(np.uint64): ("p", ctypes.c_uint64),  # a data_ptr
    np.dtype(np.int64): ("q", ctypes.c_int64),
    np.dtype(np.int32): ("i", ctypes.c_int32),
    np.dtype(np.float32): ("f", ctypes.c_float),
    np.dtype(np.float64): ("d", ctypes.c_double),
}


def build(name: str, code: str, options, kernels, out_dir: Path) -> Path:
    """Compile ``code`` (CUDA C, e.g. the text of csrc/cuda/<name>.cu) with its ``-D`` options
    and the launch entry for each of ``kernels`` into out_dir/<name>.so; raises RuntimeError
    with g++'s messages if it does not compile."""
    cu = out_dir / f"{name}.cu"
    cu.write_text(code)
    lib = out_dir / f"{name}.so"
    listed = "".join(f"CUDA_HOST_KERNEL({k})" for k in kernels)
    cmd = [GXX, *FLAGS, f"-I{HERE}", *[o for o in options if o.startswith("-D")],
           f'-DCUDA_HOST_SOURCE="{cu}"', f"-DCUDA_HOST_KERNELS={listed}",
           str(HERE / "launcher.cpp"), "-o", str(lib)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode:
        raise RuntimeError(f"g++ could not build {name}.cu:\n{proc.stderr}")
    return lib


def exported_kernels(lib: Path) -> set[str]:
    """The extern "C" functions the library defines, less the launcher's own (C++ functions
    have mangled names that start with _Z; _init and _fini belong to the loader)."""
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True,
                         text=True, check=True).stdout
    names = set(re.findall(r" T (\w+)$", out, flags=re.M))
    return {n for n in names if not n.startswith(("cuda_host_", "_"))}


class Module:
    """Stand-in for ``cupy.RawModule``: a csrc/cuda source (found by its text, with the kernels
    of :data:`KERNELS`) or ``code`` with the given ``kernels``, built by g++."""

    def __init__(self, out_dir: Path, code: str, options=(), name=None, kernels=None):
        if name is None:
            names = [n for n in LAUNCH if source(n) == code]
            if len(names) != 1:
                raise ValueError("code is not the text of one csrc/cuda source")
            name, kernels = names[0], KERNELS[names[0]]
        self.name = name
        self.path = build(name, code, options, kernels, out_dir)
        self.lib = ctypes.CDLL(str(self.path))
        self.lib.cuda_host_signature.restype = ctypes.c_char_p
        self.lib.cuda_host_launch.argtypes = [
            ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
            ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_int]

    def get_function(self, entry: str) -> Function:
        return Function(self, entry)


class Function:
    """A kernel: ``f(grid, block, args, shared_mem=0)`` as a CuPy ``RawKernel`` is called."""

    def __init__(self, module: Module, entry: str):
        signature = module.lib.cuda_host_signature(entry.encode())
        if signature is None:
            raise AttributeError(f"{module.name}.cu has no kernel {entry!r}")
        self.module, self.entry, self.signature = module, entry, signature.decode()

    def __call__(self, grid, block, args, shared_mem: int = 0) -> None:
        if shared_mem:
            raise ValueError("the kernels use static shared memory only")
        codes, values = [], []
        for a in args:
            code, ctype = _TYPES[np.asarray(a).dtype]
            codes.append(code)
            values.append(ctype(a.item()))
        if "".join(codes) != self.signature:
            raise TypeError(f"{self.entry} takes ({self.signature}), the launcher passed "
                            f"({''.join(codes)}) (p pointer, q int64, i int32, f float)")
        ptrs = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        error = ctypes.create_string_buffer(512)
        status = self.module.lib.cuda_host_launch(
            self.entry.encode(), _dim3(grid), _dim3(block), ptrs, error, len(error))
        if status:
            raise RuntimeError(f"{self.entry}: {error.value.decode()}")


def _dim3(sizes) -> ctypes.Array:
    sizes = tuple(sizes) + (1,) * (3 - len(sizes))
    return (ctypes.c_uint * 3)(*sizes)


def fake_cupy(out_dir: Path) -> types.ModuleType:
    """The names of ``cupy`` that fastdc/ops/cuda.py touches at import and in ``_kernel``."""
    cupy = types.ModuleType("cupy")
    cupy.RawModule = lambda code, options=(): Module(out_dir, code, options)
    cupy.cuda = types.SimpleNamespace(Device=_NoContext)
    return cupy


class _NoContext:
    def __init__(self, *_):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *_):
        return False


def load_cuda_backend(out_dir: Path):
    """fastdc/ops/cuda.py as a private module on the CuPy stand-in, its launches run by the
    emulator on the calling thread (no streams), nothing added to the backend registry.
    Returns (module, {op: (fn, reasons)})."""
    impls = {}

    def register(op, backend, reasons=None):
        def wrap(fn):
            impls[op] = (fn, reasons)
            return fn
        return wrap

    path = Path(fastdc.ops.__file__).parent / "cuda.py"
    spec = importlib.util.spec_from_file_location("fastdc_ops_cuda_emulated", path)
    module = importlib.util.module_from_spec(spec)
    real_register = registry.register
    saved_cupy = sys.modules.get("cupy")
    sys.modules["cupy"] = fake_cupy(out_dir)
    registry.register = register
    try:
        spec.loader.exec_module(module)
    finally:
        registry.register = real_register
        if saved_cupy is None:
            del sys.modules["cupy"]
        else:
            sys.modules["cupy"] = saved_cupy
    module._launch = lambda kernel, grid, block, args, device, shared_mem=0: kernel(
        grid, block, args, shared_mem=shared_mem)
    return module, impls
