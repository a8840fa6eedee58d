"""python -m fastdc.info."""

import subprocess
import sys

from fastdc.info import OPS, report


def test_report_lists_every_op_and_the_reference_backend():
    text = report()
    for op in OPS:
        line = next(line for line in text.splitlines() if line.strip().startswith(op))
        assert "torch" in line
    assert "torch " in text and "fastdc" in text


def test_module_runs():
    out = subprocess.run(
        [sys.executable, "-m", "fastdc.info"], capture_output=True, text=True, check=True
    )
    assert "backends per op" in out.stdout
