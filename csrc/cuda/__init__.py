"""CUDA C kernel sources, installed as the package ``fastdc.cuda_src`` (package data for CuPy)."""
