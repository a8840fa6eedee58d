"""Side-by-side tables for ``pytest --benchmark``.

Benchmarks call :func:`record` with one row per contender; at the end of the session the root
conftest calls :func:`print_tables`, which prints every table (with ratios against the table's
reference row) and appends the run to ``benchmarks/results/<table>.json`` together with the
machine, device and library versions.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
_TABLES: dict[str, dict] = {}


def record(table: str, row: dict, *, reference: str | None = None, note: str = "") -> None:
    """Add ``row`` (must hold "name"; numbers in the other columns) to ``table``.

    ``reference``: the name of the row the ratios are taken against (set it once per table).
    """
    t = _TABLES.setdefault(table, {"rows": [], "reference": None, "note": ""})
    if reference is not None:
        t["reference"] = reference
    if note:
        t["note"] = note
    t["rows"] = [r for r in t["rows"] if r["name"] != row["name"]] + [row]


def machine() -> dict:
    """Where the numbers were taken: CPU, threads, GPU, library versions, date."""
    info = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_name(),
        "cpu_family_model": _cpu_family_model(),
        "cpu_simd": _cpu_simd(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    for name in ("faiss", "sklearn", "triton"):
        try:
            info[name] = __import__(name).__version__
        except Exception:
            info[name] = None
    return info


def _cpu_family_model() -> str | None:
    """"family F model M" from /proc/cpuinfo (a VM's model name hides the generation: AMD EPYC
    family 23 is Zen 1/2, 25 model 0-15 Zen 3, 25 model 16+ Zen 4), or None elsewhere."""
    try:
        fields = dict(line.split(":", 1) for line in
                      Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
                      if ":" in line)
    except OSError:
        return None
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    if "cpu family" not in fields:
        return None
    return f"family {fields['cpu family']} model {fields.get('model', '?')}"


def _cpu_simd() -> str | None:
    """The cpu backend's SIMD path in use (avx512, avx2 or generic), None without the
    extension."""
    try:
        from fastdc.ops import cpu

        return cpu.simd()
    except ImportError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_table(name: str, table: dict) -> str:
    """The table as aligned text, with a ratio column for every 'time' column."""
    rows = table["rows"]
    cols = [c for c in rows[0] if c != "name"] if rows else []
    for r in rows[1:]:
        cols += [c for c in r if c != "name" and c not in cols]
    ref = next((r for r in rows if r["name"] == table["reference"]), None)
    header = ["name"] + cols + ([f"x vs {ref['name']}"] if ref else [])
    time_col = next((c for c in cols if "time" in c or c.endswith("_s")), None)
    lines = []
    for r in rows:
        cells = [r["name"]] + [_fmt(r.get(c)) for c in cols]
        if ref and time_col and r.get(time_col) and ref.get(time_col):
            cells.append(f"{r[time_col] / ref[time_col]:.2f}")
        elif ref:
            cells.append("")
        lines.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines, strict=False)]
    out = [f"== {name} ==" + (f"  ({table['note']})" if table["note"] else "")]
    out.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)))
    out += ["  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)) for cells in lines]
    return "\n".join(out)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_tables(terminalreporter) -> None:
    """Print all tables and append them to benchmarks/results/<table>.json."""
    if not _TABLES:
        return
    meta = machine()
    terminalreporter.write_sep("=", "fastdc side-by-side benchmarks")
    terminalreporter.write_line(
        f"{meta['cpu']} [{meta['cpu_family_model']}, SIMD path {meta['cpu_simd']}] "
        f"({meta['cores']} cores, {meta['torch_threads']} torch threads), "
        f"GPU: {meta['gpu']}, torch {meta['torch']}, faiss {meta['faiss']}"
    )
    RESULTS.mkdir(exist_ok=True)
    for name, table in _TABLES.items():
        terminalreporter.write_line("")
        terminalreporter.write_line(format_table(name, table))
        path = RESULTS / f"{name}.json"
        runs = json.loads(path.read_text()) if path.exists() else []
        runs.append({"machine": meta, **table})
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(runs, indent=1))
        tmp.replace(path)
