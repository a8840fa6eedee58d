"""Triton kernels, installed as ``fastdc.kernels`` (placeholder until the GPU kernels land)."""
