"""Benchmarks: run with ``pytest --benchmark`` (see the root conftest.py)."""
