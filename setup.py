"""Build fastdc: the Python package, the Triton kernels (as fastdc.kernels), the CUDA C sources
(as package data, compiled at run time by CuPy) and the C++/OpenMP extension fastdc._C.

The extension is compiled with portable flags: SIMD paths (AVX2+FMA) are chosen at run time by
CPU feature checks inside csrc/cpu, so a wheel built here runs on any x86-64 (and builds on
other architectures with the generic path).
"""

import sys
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

openmp = [] if sys.platform == "darwin" else ["-fopenmp"]

ext = Pybind11Extension(
    "fastdc._C",
    sorted(glob("csrc/cpu/*.cpp")),
    include_dirs=["csrc/cpu"],
    depends=sorted(glob("csrc/cpu/*.h")),
    cxx_std=17,
    extra_compile_args=["-O3", *openmp],
    extra_link_args=openmp,
)

setup(
    name="fastdc",
    version="0.1.0",
    description="Fast DeepCluster: fused k-means kernels (C++/OpenMP, Triton, CUDA) and a trainer",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[
        "fastdc",
        "fastdc.ops",
        "fastdc.engine",
        "fastdc.deepcluster",
        "fastdc.evaluation",
        "fastdc.kernels",
        "fastdc.cuda_src",
    ],
    package_dir={"fastdc.kernels": "kernels", "fastdc.cuda_src": "csrc/cuda"},
    package_data={"fastdc.cuda_src": ["*.cu", "*.cuh"]},
    ext_modules=[ext],
    cmdclass={"build_ext": build_ext},
    install_requires=[
        "numpy>=1.23",
        "torch>=2.4",
        "torchvision>=0.19",
        "triton>=3.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "mlxtend>=0.23",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "scikit-learn>=1.3",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "faiss-cpu>=1.8",
            "ruff>=0.5",
            "import-linter>=2.0",
            "tensorboard>=2.14",
        ],
        "cuda": ["cupy-cuda13x>=13"],
        "tensorboard": ["tensorboard>=2.14"],
    },
    zip_safe=False,
)
