"""GPU benchmark of the ops' kernels: ``python benchmarks/bench_gpu.py``.

On a CUDA device: how the tensor cores accumulate (against the bound the counting passes rest
on), correctness checks (every backend against the torch reference), then
timings by :func:`benchmarks.timing.measure` (median of a few calls, the device synchronised
before every clock read, warm-up and Triton autotuning outside the timed region) of assign, one
k-means iteration, 20 iterations, cluster_sums + resplit_empty, sobel, the batched case and the
knn graph of PIC (N = 200 000, D = 128, k = 6, against chunked ``torch.cdist`` + ``topk``), for
DeepCluster's shape (N = 1 281 167, D = 256, K = 10 000), side by side with the ``torch``
reference in fp32 with TF32 off (the faiss-gpu stand-in: an SGEMM tile then an argmin pass),
a TF32 ``torch.mm`` of the same shape, and flash-kmeans / fastkmeans when importable. Writes
``benchmarks/results/gpu_<device>_<date>.json`` and prints a table. Without CUDA it says so and
exits with status 2. After the timings it runs ``pytest -m gpu`` and short trainer runs on the
device (fp32, ``--amp``, ``--clustering pic``, ``--method deepercluster``, and two processes
under torchrun with two GPUs), recorded under "smoke"; ``--budget-s`` skips what would start
past a wall-clock budget. ``--quick`` shrinks every size (a smoke run). ``--estimate`` needs no GPU:
it compiles the assign kernels for sm_90 and prints their resources and a modelled H100 time
per Lloyd iteration (benchmarks/gpu_estimate.py, assumptions printed). The helpers above
``main`` need no GPU, so tests can import this file.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import re
import sys
import tempfile
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

from benchmarks.timing import Deadline, measure  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

DEEPCLUSTER = {"N": 1_281_167, "D": 256, "K": 10_000}
BATCHED = {"B": 16, "N": 80_000, "D": 256, "K": 5_000}
SOBEL = {"B": 256, "H": 224, "W": 224}  # one ImageNet training batch
KNN = {"N": 200_000, "D": 128, "k": 6}  # PIC's graph: 5 neighbours + the row itself (y = x)
KNN_CHUNK = 4096  # rows per torch.cdist + topk chunk (a 4096 × N fp32 block: 3.3 GB at 200k)
QUICK_SCALE = 64  # --quick divides N (and the sobel batch) by this
GPU_ROUNDS = {"rounds": 5, "warmup": 2}  # timed calls (median reported) after compile/autotune

TARGETS = {  # the kernels' targets on one H100
    "kmeans_20_iters_s": 0.5,
    "assign_vs_tf32_mm": 0.6,
    "cluster_sums_resplit_empty_share_of_iter": 0.10,
    "sobel_vs_copy_bandwidth": 0.8,
    "batched_speedup": 2.0,
}


# ------------------------------------------------------------------------ CPU-side helpers


def ensure_fastdc_importable() -> None:
    """Load every backend (``fastdc.kernels`` from kernels/ in a source checkout)."""
    from fastdc.ops import registry as backends

    backends.available("assign")  # loads every backend (kernels/ too, in a source checkout)


def result_path(device_name: str, date: _dt.date | None = None) -> Path:
    """benchmarks/results/gpu_<device>_<date>.json with the device name made filename-safe."""
    date = date or _dt.date.today()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower() or "gpu"
    return RESULTS / f"gpu_{slug}_{date.isoformat()}.json"


def versions() -> dict:
    """Versions of everything the figures depend on (importable ones only)."""
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda_runtime": torch.version.cuda}
    for name in ("triton", "cupy", "flash_kmeans", "fastkmeans", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except Exception:
            out[name] = None
    return out


def assign_flops(n: int, k: int, d: int, b: int = 1) -> float:
    """Multiply-adds ×2 of the x·cᵀ product that assign (and the TF32 mm) performs."""
    return 2.0 * b * n * k * d


def format_table(rows: list[dict]) -> str:
    """Fixed-width table of result rows (keys: case, impl, ms, note)."""
    head = f"{'case':<34} {'implementation':<28} {'ms':>10}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        ms = "—" if r.get("ms") is None else f"{r['ms']:.3f}"
        lines.append(f"{r['case']:<34} {r['impl']:<28} {ms:>10}  {r.get('note', '')}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ GPU parts


def _impl(op: str, backend: str, **inputs):
    from fastdc.ops.registry import select

    return select(op, backend, **inputs).fn


def _backends(op: str) -> list[str]:
    from fastdc.ops.registry import available

    return [b for b in ("triton", "cuda") if b in available(op)]


def kmeans_iteration(x, c, backend: str, gen: torch.Generator, precision: str = "default"):
    """One Lloyd iteration on [B, N, D] / [B, K, D] without host syncs: assign, then
    :func:`centroid_update`. Returns the new centroids."""
    f_assign = _impl("assign", backend, x=x, centroids=c, metric="l2", precision=precision)
    _, idx = f_assign(x=x, centroids=c, metric="l2", precision=precision)
    return centroid_update(x, idx, c.shape[1], backend, gen)


def centroid_update(x, idx, k: int, backend: str, gen: torch.Generator):
    """cluster_sums, means and resplit_empty of [B, N, D] rows with ids [B, N] into k clusters,
    without host syncs. Returns the new centroids [B, k, D]."""
    from fastdc.ops import means_from_sums

    f_sums = _impl("cluster_sums", backend, x=x, idx=idx, k=k, weights=None)
    sums, counts = f_sums(x=x, idx=idx, k=k, weights=None)
    new = means_from_sums(sums, counts).contiguous()
    u = torch.rand(counts.shape, generator=gen, dtype=torch.float64, device=x.device)
    f_split = _impl("resplit_empty", backend, centroids=new, counts=counts, uniforms=u,
                    n_frozen=0)
    f_split(centroids=new, counts=counts, uniforms=u, n_frozen=0)
    return new


def correctness(dev) -> list[dict]:
    """Small checks of every fast backend against the reference; one row per (op, backend)."""
    from fastdc import ops

    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(3, 5000, 96, generator=g, device=dev)
    c = torch.randn(3, 700, 96, generator=g, device=dev)
    images = torch.randint(0, 256, (4, 3, 64, 80), dtype=torch.uint8, device=dev)
    cnt = torch.randint(0, 5, (3, 700), generator=g, device=dev).float()
    out = []
    _, ref_i = ops.assign(x, c, backend="torch")
    ref_s, ref_n = ops.cluster_sums(x, ref_i, 700, backend="torch")
    ref_sob = ops.sobel(images, backend="torch")
    ref_split = ops.resplit_empty(c, cnt, seed=1, backend="torch")
    ref_knn = [ops.knn(x, c, 6, metric=m, backend="torch") for m in ("l2", "ip")]
    for b in ("triton", "cuda"):
        checks = {
            "assign": lambda b=b: float((ops.assign(x, c, backend=b)[1] == ref_i).float().mean()),
            "cluster_sums": lambda b=b: float(
                (ops.cluster_sums(x, ref_i, 700, backend=b)[0] - ref_s).abs().max()),
            "sobel": lambda b=b: float((ops.sobel(images, backend=b) - ref_sob).abs().max()),
            "resplit_empty": lambda b=b: all(
                torch.equal(p, q)
                for p, q in zip(ops.resplit_empty(c, cnt, seed=1, backend=b), ref_split,
                                strict=True)),
        }
        if b in _backends("knn"):
            checks["knn"] = lambda b=b: _knn_agreement(x, c, ref_knn, b)
        for op, fn in checks.items():
            try:
                value = fn()
                ok = value is True or (op in ("assign", "knn") and value >= 0.999) or (
                    isinstance(value, float) and op not in ("assign", "knn") and value < 1e-3)
                out.append({"op": op, "backend": b, "value": value, "ok": bool(ok)})
            except Exception as exc:
                out.append({"op": op, "backend": b, "value": None, "ok": False,
                            "error": f"{type(exc).__name__}: {exc}"[:300]})
    return out


def _knn_agreement(x, y, ref: list, backend: str) -> float:
    """Fraction of knn(x, y, 6) entries (L2 and IP, worse of the two) whose index equals the
    reference's ``ref`` [(dist, idx) for l2, ip] and whose value is within 1e-4 relative."""
    from fastdc import ops

    agree = []
    for metric, (ref_d, ref_i) in zip(("l2", "ip"), ref, strict=True):
        dist, idx = ops.knn(x, y, 6, metric=metric, backend=backend)
        close = (dist - ref_d).abs() <= 1e-4 * (1 + ref_d.abs())
        agree.append(float(((idx == ref_i) & close).float().mean()))
    return min(agree)


def _third_party_kmeans(x: torch.Tensor, k: int, iters: int) -> list[dict]:
    """flash-kmeans / fastkmeans, 20 iterations each, when importable (errors recorded)."""
    rows = []
    try:
        import fastkmeans

        xs = x[0].cpu().numpy()
        km = fastkmeans.FastKMeans(d=xs.shape[1], k=k, niter=iters, gpu=True, verbose=False)
        ms = measure(lambda: km.train(xs), rounds=1, warmup=1).median * 1e3
        rows.append({"case": f"kmeans {iters} iterations", "impl": "fastkmeans", "ms": ms,
                     "note": "includes its host->device copy of x"})
    except Exception as exc:
        rows.append({"case": f"kmeans {iters} iterations", "impl": "fastkmeans", "ms": None,
                     "note": f"unavailable: {type(exc).__name__}: {exc}"[:120]})
    try:
        import flash_kmeans

        fn = flash_kmeans.batch_kmeans_Euclid
        ms = measure(lambda: fn(x, k, max_iters=iters, tol=-1.0), rounds=1, warmup=1).median * 1e3
        rows.append({"case": f"kmeans {iters} iterations", "impl": "flash-kmeans", "ms": ms})
    except Exception as exc:
        rows.append({"case": f"kmeans {iters} iterations", "impl": "flash-kmeans", "ms": None,
                     "note": f"unavailable: {type(exc).__name__}: {exc}"[:120]})
    return rows


def agreement(found: dict, ref: tuple) -> dict:
    """Per (backend, precision): the fraction of rows whose index equals the fp32 reference's,
    and the largest relative distance gap on the rows that differ (near ties when tiny)."""
    ref_d, ref_i = ref
    out = {}
    for (b, p), (dist, idx) in found.items():
        differ = idx != ref_i
        gap = ((dist - ref_d).abs() / ref_d.abs().clamp_min(1e-12))[differ]
        out[f"{b} ({p})"] = {"same_index": float(1 - differ.float().mean()),
                             "rows_differing": int(differ.sum()),
                             "max_rel_dist_gap_where_differing":
                                 float(gap.max()) if gap.numel() else 0.0}
    return out


def _counting_passes(x: torch.Tensor, c: torch.Tensor, modes: tuple[str, ...]
                     ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The default mode's counting passes ``modes`` (a prefix of its modes) on [B, N, D] /
    [B, K, D] (L2), through the Triton launcher's own pieces: the packed candidates [B, N]
    int64 they leave, and the rows each pass after the first took ([B] int64 each)."""
    from fastdc.kernels import assign as tk

    cf = c.float()
    B, N, _ = x.shape
    dist = torch.empty(B, N, dtype=torch.float32, device=x.device)
    idx = torch.empty(B, N, dtype=torch.int64, device=x.device)
    cand = torch.empty(B, N, dtype=torch.int64, device=x.device)
    taken = tk.counting_passes(x, tk._pad_rows(c), cf, tk._score_offsets(cf, True), dist, idx,
                               cand, is_l2=True, modes=modes)
    return cand, taken


def main_pass(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The default mode's bf16 main pass alone on [B, N, D] / [B, K, D] (L2); returns the
    packed candidates [B, N] int64 it writes."""
    return _counting_passes(x, c, ("bf16",))[0]


def chain_fractions(x: torch.Tensor, c: torch.Tensor) -> dict:
    """Fractions of the rows each re-check pass of the default mode takes on [B, N, D] /
    [B, K, D] (L2), as the kernels count them: ``to_tf32`` and ``to_tf32x3`` the counting
    passes, ``to_fp32`` the full fp32 pass."""
    from fastdc.kernels.assign import COUNTING_MODES

    cand, taken = _counting_passes(x, c, COUNTING_MODES)
    B, N = cand.shape
    out = {f"to_{m}": float(t.sum()) / (B * N) for m, t in zip(COUNTING_MODES[1:], taken,
                                                                 strict=True)}
    out["to_fp32"] = float(((cand >> 32) > 2).float().mean())
    return out


def recheck_fractions(x: torch.Tensor, c: torch.Tensor) -> dict:
    """Fractions of rows with 0, 1, 2 and more than 2 candidates after :func:`main_pass` (the
    last go on to the TF32 counting pass), as the kernel counts them, and the fractions each
    later pass takes (:func:`chain_fractions`)."""
    count = (main_pass(x, c) >> 32).flatten()
    return {"one": float((count == 1).float().mean()), "two": float((count == 2).float().mean()),
            "more": float((count > 2).float().mean()), "zero": float((count < 1).float().mean()),
            **chain_fractions(x, c)}


def accumulation_probe(dev) -> dict:
    """How the tensor cores add (:func:`fastdc.kernels.assign.accumulation_error`), per mode, in
    units of IEEE fp32's γ_d: the largest over the probe's dot products, the unit-first row
    (an adder that cuts at the largest term's last bit: about 2) and the unit-last one; and
    the 4 that ``ACC_UNIT`` allows, which the counting passes' bounds rest on."""
    from fastdc.kernels import assign as tk

    out = {"allowed": tk.ACC_UNIT / 2.0**-24}
    for mode in ("bf16", "tf32"):
        err = tk.accumulation_error(mode, dev)
        out[mode] = {"max": float(err.max()), "unit_first": float(err[0, 0]),
                     "unit_last": float(err[1, 0])}
    return out


def autotuned_configs() -> dict:
    """What Triton's autotuner chose for each key of the assign kernel in this process."""
    from fastdc.kernels import assign as tk

    return {str(key): str(cfg) for key, cfg in getattr(tk._assign_tuned, "cache", {}).items()}


def _failed(rows: list[dict], case: str, impl: str, exc: Exception) -> None:
    """Record a timing that raised, so the other implementations still run."""
    rows.append({"case": case, "impl": impl, "ms": None,
                 "note": f"failed: {type(exc).__name__}: {exc}"[:200]})


def _time_assign(x, c, rows: list[dict], summary: dict) -> None:
    """assign in every backend and precision, and a TF32 torch.mm of the same shape."""
    N, K, D = x.shape[1], c.shape[1], x.shape[2]
    flops = assign_flops(N, K, D)
    impls = [(b, p) for b in _backends("assign") for p in
             (("default", "tf32", "bf16") if b == "triton" else ("default",))]
    impls.append(("torch", "default"))
    found = {}
    for b, p in impls:
        try:
            fn = _impl("assign", b, x=x, centroids=c, metric="l2", precision=p)
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            timing = measure(lambda fn=fn, p=p: fn(x=x, centroids=c, metric="l2", precision=p),
                             **GPU_ROUNDS)
        except Exception as exc:
            _failed(rows, "assign", f"{b} ({p})", exc)
            continue
        ms = timing.median * 1e3
        extra = torch.cuda.max_memory_allocated() - base
        rows.append({"case": "assign", "impl": f"{b} ({p})", "ms": ms,
                     "note": f"{flops / ms / 1e9:.1f} TFLOP/s, +{extra / 2**20:.0f} MB"})
        summary[f"assign_ms_{b}_{p}"] = ms
        summary[f"assign_extra_mb_{b}_{p}"] = extra / 2**20
        found[(b, p)] = timing.result
    if ("torch", "default") in found:
        summary["agreement_with_fp32_reference"] = agreement(found, found[("torch", "default")])
    try:
        summary["recheck_fractions_triton_default"] = recheck_fractions(x, c)
        ms = measure(lambda: main_pass(x, c), **GPU_ROUNDS).median * 1e3
        rows.append({"case": "assign", "impl": "triton (default): bf16 pass alone", "ms": ms,
                     "note": f"{flops / ms / 1e9:.1f} TFLOP/s, counting candidates"})
        summary["assign_ms_triton_main_pass"] = ms
    except Exception as exc:
        summary["recheck_fractions_triton_default"] = f"failed: {type(exc).__name__}: {exc}"

    # TF32 torch.mm of the same shape, timed on a row chunk (the full N×K product is 51 GB)
    chunk = min(N, 131_072)
    xc = x[0, :chunk]
    torch.backends.cuda.matmul.allow_tf32 = True
    ms_mm = measure(lambda: torch.mm(xc, c[0].T), **GPU_ROUNDS).median * 1e3 * N / chunk
    torch.backends.cuda.matmul.allow_tf32 = False
    rows.append({"case": "assign", "impl": "torch.mm TF32 (scaled)", "ms": ms_mm,
                 "note": f"{flops / ms_mm / 1e9:.1f} TFLOP/s, GEMM only, no argmin"})
    summary["tf32_mm_ms"] = ms_mm
    xh, ch = xc.bfloat16(), c[0].bfloat16()
    ms_bf = measure(lambda: torch.mm(xh, ch.T), **GPU_ROUNDS).median * 1e3 * N / chunk
    rows.append({"case": "assign", "impl": "torch.mm bf16 (scaled)", "ms": ms_bf,
                 "note": f"{flops / ms_bf / 1e9:.1f} TFLOP/s, GEMM only, no argmin"})
    summary["bf16_mm_ms"] = ms_bf
    if "assign_ms_triton_default" in summary:
        summary["assign_vs_tf32_mm"] = ms_mm / summary["assign_ms_triton_default"]
        summary["assign_vs_bf16_mm"] = ms_bf / summary["assign_ms_triton_default"]


def _time_kmeans(x, c, rows: list[dict], summary: dict) -> None:
    """One and 20 Lloyd iterations per backend, and the centroid update's share of one."""
    for b in [*_backends("assign"), "torch"]:
        try:
            _time_kmeans_backend(x, c, b, rows, summary)
        except Exception as exc:
            _failed(rows, "kmeans", b, exc)
    rows += _third_party_kmeans(x, c.shape[1], 20)


def _time_kmeans_backend(x, c, b: str, rows: list[dict], summary: dict) -> None:
    """:func:`_time_kmeans` for one backend."""
    gen = torch.Generator(device=x.device).manual_seed(1)
    ms1 = measure(lambda b=b, gen=gen: kmeans_iteration(x, c, b, gen),
                  **GPU_ROUNDS).median * 1e3
    rows.append({"case": "kmeans 1 iteration", "impl": b, "ms": ms1})

    def twenty(b=b, gen=gen):
        cur = c
        for _ in range(20):
            cur = kmeans_iteration(x, cur, b, gen)
        return cur

    # the reference re-splits on the host and the CUDA C fallback runs ~0.3 s per iteration
    slow = b in ("torch", "cuda")
    ms20 = measure(twenty, rounds=1 if slow else 3, warmup=0 if slow else 1).median * 1e3
    rows.append({"case": "kmeans 20 iterations", "impl": b, "ms": ms20})
    summary[f"kmeans_20_iters_s_{b}"] = ms20 / 1e3
    _, idx = _impl("assign", b, x=x, centroids=c, metric="l2", precision="default")(
        x=x, centroids=c, metric="l2", precision="default")
    ms_ur = measure(lambda b=b, idx=idx, gen=gen: centroid_update(x, idx, c.shape[1], b, gen),
                    **GPU_ROUNDS).median * 1e3
    rows.append({"case": "cluster_sums + resplit_empty", "impl": b, "ms": ms_ur,
                 "note": f"{100 * ms_ur / ms1:.1f}% of an iteration"})
    summary[f"cluster_sums_resplit_empty_share_{b}"] = ms_ur / ms1
    grouped = idx.sort(dim=-1).values  # ids grouped by cluster, as ImageNet's rows come
    ms_gr = measure(lambda b=b, g=grouped, gen=gen: centroid_update(x, g, c.shape[1], b, gen),
                    **GPU_ROUNDS).median * 1e3
    rows.append({"case": "cluster_sums + resplit_empty, grouped ids", "impl": b,
                 "ms": ms_gr, "note": f"{ms_gr / ms_ur:.2f}x the random ids' time"})


def _time_kmeans_mixture(n: int, k: int, dev, rows: list[dict], summary: dict) -> None:
    """20 Lloyd iterations of the Triton backend on DeepCluster-like rows (a PCA-whitened,
    L2-normalised ReLU mixture, :func:`benchmarks.bench_rounding.whitened_mixture`), and the
    default mode's candidate fractions at the first and the 21st assignment."""
    from benchmarks.bench_rounding import whitened_mixture

    x = whitened_mixture(n, d_in=512, dim=DEEPCLUSTER["D"], device=dev)[None].contiguous()
    g = torch.Generator(device=dev).manual_seed(2)
    c = x[:, torch.randperm(n, generator=g, device=dev)[:k]].contiguous()
    summary["mixture_recheck_fractions_first"] = recheck_fractions(x, c)
    gen = torch.Generator(device=dev).manual_seed(1)

    def twenty():
        cur = c
        for _ in range(20):
            cur = kmeans_iteration(x, cur, "triton", gen)
        return cur

    timing = measure(twenty, rounds=3, warmup=1)
    ms = timing.median * 1e3
    rows.append({"case": "kmeans 20 iterations, whitened mixture", "impl": "triton", "ms": ms,
                 "note": f"{ms / 20:.1f} ms per iteration"})
    summary["kmeans_20_iters_s_triton_mixture"] = ms / 1e3
    summary["mixture_recheck_fractions_after_20"] = recheck_fractions(x, timing.result)


def _time_sobel(batch: int, dev, rows: list[dict], summary: dict) -> None:
    """sobel per backend vs a device-to-device copy of the same bytes."""
    images = torch.randint(0, 256, (batch, 3, SOBEL["H"], SOBEL["W"]), dtype=torch.uint8,
                           device=dev)
    norm = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    for out_dtype in (torch.float32, torch.bfloat16):
        moved = images.numel() + 2 * batch * SOBEL["H"] * SOBEL["W"] * out_dtype.itemsize
        src = torch.empty(moved // 2, dtype=torch.uint8, device=dev)
        dst = torch.empty_like(src)
        ms_copy = measure(lambda src=src, dst=dst: dst.copy_(src),  # reads + writes = moved
                          **GPU_ROUNDS).median * 1e3
        rows.append({"case": f"sobel uint8->{out_dtype}", "impl": "copy (same bytes)",
                     "ms": ms_copy, "note": f"{moved / ms_copy / 1e6:.0f} GB/s"})
        for b in [*_backends("sobel"), "torch"]:
            try:
                fn = _impl("sobel", b, images=images, out_dtype=out_dtype, **norm)
                ms = measure(lambda fn=fn, od=out_dtype: fn(images=images, out_dtype=od, **norm),
                             **GPU_ROUNDS).median * 1e3
            except Exception as exc:
                _failed(rows, f"sobel uint8->{out_dtype}", b, exc)
                continue
            rows.append({"case": f"sobel uint8->{out_dtype}", "impl": b, "ms": ms,
                         "note": f"{moved / ms / 1e6:.0f} GB/s, {ms_copy / ms:.2f}× copy"})
            summary[f"sobel_vs_copy_{b}_{out_dtype}"] = ms_copy / ms


def _time_batched(xb, cb, rows: list[dict], summary: dict) -> None:
    """B problems in one assign launch vs B calls of one problem."""
    Bb = xb.shape[0]
    for b in _backends("assign"):
        try:
            fn = _impl("assign", b, x=xb, centroids=cb, metric="l2", precision="default")
            one = measure(lambda fn=fn: fn(x=xb, centroids=cb, metric="l2", precision="default"),
                          **GPU_ROUNDS).median * 1e3
            singles = [(xb[i:i + 1].contiguous(), cb[i:i + 1].contiguous()) for i in range(Bb)]
            many = measure(lambda fn=fn, singles=singles: [
                fn(x=a, centroids=q, metric="l2", precision="default") for a, q in singles],
                **GPU_ROUNDS).median * 1e3
        except Exception as exc:
            _failed(rows, f"batched assign B={Bb}", b, exc)
            continue
        rows.append({"case": f"batched assign B={Bb}", "impl": f"{b} one launch", "ms": one})
        rows.append({"case": f"batched assign B={Bb}", "impl": f"{b} {Bb} calls", "ms": many,
                     "note": f"speed-up {many / one:.2f}×"})
        summary[f"batched_speedup_{b}"] = many / one


def _time_knn(n: int, dev, rows: list[dict], summary: dict) -> None:
    """The k-NN graph of n rows (y = x, D and k of :data:`KNN`) per knn backend and by
    ``torch.cdist`` + ``topk`` on row chunks of :data:`KNN_CHUNK`; a failure is recorded."""
    D, k = KNN["D"], KNN["k"]
    g = torch.Generator(device=dev).manual_seed(2)
    x = torch.randn(1, n, D, generator=g, device=dev)
    flops = 2.0 * n * n * D
    case = f"knn graph N={n} D={D} k={k}"

    def cdist_topk():
        return [torch.cdist(x[0, s:s + KNN_CHUNK], x[0]).topk(k, largest=False)
                for s in range(0, n, KNN_CHUNK)]

    impls = [(b, b, lambda b=b: _impl("knn", b, x=x, y=x, k=k, metric="l2")(
        x=x, y=x, k=k, metric="l2")) for b in _backends("knn")]
    impls.append(("torch.cdist + topk (chunks)", "cdist_topk", cdist_topk))
    for name, key, fn in impls:
        try:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            ms = measure(fn, **GPU_ROUNDS).median * 1e3
            extra = (torch.cuda.max_memory_allocated() - base) / 2**20
            rows.append({"case": case, "impl": name, "ms": ms,
                         "note": f"{flops / ms / 1e9:.1f} TFLOP/s, +{extra:.0f} MB"})
            summary[f"knn_ms_{key}"] = ms
            summary[f"knn_extra_mb_{key}"] = extra
        except Exception as exc:
            _failed(rows, case, name, exc)
    if "knn_ms_triton" in summary and "knn_ms_cdist_topk" in summary:
        summary["knn_triton_vs_cdist_topk"] = summary["knn_ms_cdist_topk"] / summary[
            "knn_ms_triton"]


def smoke_commands(out_dir: Path, gpus: int) -> list[list[str]]:
    """The GPU test suite and short trainer runs on the device: DeepCluster with and without
    bf16 autocast and with PIC clustering, DeeperCluster, and two processes under torchrun
    when two GPUs are present."""
    import importlib.util

    train = ["-m", "fastdc.train", "--device", "cuda", "--epochs", "1", "--subset", "1000",
             "--k", "10"]
    # pytest-xdist, where installed, spreads the tests' Triton compilations over the CPU cores
    spread = ["-n", "8"] if importlib.util.find_spec("xdist") else []
    cmds = [[sys.executable, "-m", "pytest", "-q", "-m", "gpu", str(ROOT / "tests"), "-rfE",
             "-p", "no:cacheprovider", *spread],
            [sys.executable, *train, "--out", str(out_dir / "fp32")],
            [sys.executable, *train, "--amp", "--out", str(out_dir / "amp")],
            [sys.executable, *train, "--clustering", "pic", "--out", str(out_dir / "pic")],
            [sys.executable, *train, "--method", "deepercluster", "--out",
             str(out_dir / "deepercluster")]]
    if gpus >= 2:
        cmds.append([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                     *train[1:], "--out", str(out_dir / "ddp")])
    return cmds


def smoke_runs(out_dir: Path, budget: Deadline, log_dir: Path | None = None) -> list[dict]:
    """Run :func:`smoke_commands` one after the other, each within the time ``budget`` has
    left; exit status, seconds and the output's tail per command (the whole output in
    ``log_dir/smoke_<i>.log`` when given). Commands past the budget are recorded as skipped."""
    import subprocess

    runs = []
    for i, cmd in enumerate(smoke_commands(out_dir, torch.cuda.device_count())):
        label = " ".join(cmd[1:])
        if budget.left() < 10:
            runs.append({"command": label, "returncode": None, "seconds": 0.0,
                         "tail": "skipped: the time budget was spent"})
            continue
        try:
            timing = measure(lambda cmd=cmd: subprocess.run(
                cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget.left()),
                rounds=1, warmup=0)
        except subprocess.TimeoutExpired as exc:
            text = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (
                exc.stdout or "")
            runs.append({"command": label, "returncode": None, "seconds": exc.timeout,
                         "tail": f"timed out after {exc.timeout:.0f} s\n{text[-2000:]}"})
            continue
        proc = timing.result
        output = proc.stdout + proc.stderr
        if log_dir is not None:
            (log_dir / f"smoke_{i}.log").write_text(f"$ {label}\n{output}")
        runs.append({"command": label, "returncode": proc.returncode,
                     "seconds": timing.best, "tail": output[-2000:]})
    return runs


def run(quick: bool = False, budget_s: float | None = None, log_dir: Path | None = None,
        partial: Path | None = None) -> dict:
    """All checks and timings on the current CUDA device; returns the JSON-ready result.

    Stages run in order (accumulation, correctness, assign, kmeans, kmeans_mixture, sobel,
    batched, knn, smoke); one that raises is recorded under "errors" and the next one runs;
    stages that would start after ``budget_s`` seconds are listed under "skipped". After each
    stage the result so far is written to ``partial`` when given, so a killed run still leaves
    its figures."""
    ensure_fastdc_importable()
    from fastdc.ops.registry import available

    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference is fp32 (faiss-gpu stand-in)
    torch.backends.cudnn.allow_tf32 = False
    budget = Deadline(budget_s)
    scale = QUICK_SCALE if quick else 1
    N, D, K = DEEPCLUSTER["N"] // scale, DEEPCLUSTER["D"], DEEPCLUSTER["K"] // (8 if quick else 1)
    sb = SOBEL["B"] // (8 if quick else 1)
    Nb = BATCHED["N"] // scale
    props = torch.cuda.get_device_properties(dev)
    result = {
        "device": props.name,
        "device_memory_gb": props.total_memory / 2**30,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "versions": versions(),
        "sizes": {"deepcluster": {"N": N, "D": D, "K": K}, "batched": {**BATCHED, "N": Nb},
                  "sobel": {**SOBEL, "B": sb}, "knn": {**KNN, "N": KNN["N"] // scale},
                  "quick": quick},
        "x_bytes": N * D * 4,
        "correctness": [], "rows": [], "summary": {}, "targets": TARGETS,
        "backends": {op: available(op) for op in
                     ("assign", "knn", "cluster_sums", "resplit_empty", "sobel")},
        "errors": {}, "skipped": [], "smoke": [],
    }
    rows, summary = result["rows"], result["summary"]
    data = {}

    def deepcluster_data():
        """The random unit rows and initial centroids of the assign and kmeans stages (made
        once, dropped after the kmeans stage)."""
        if not data:
            g = torch.Generator(device=dev).manual_seed(0)
            x = torch.randn(1, N, D, generator=g, device=dev)
            x /= x.norm(dim=2, keepdim=True)  # DeepCluster clusters L2-normalised PCA features
            data["x"] = x
            data["c"] = x[:, torch.randperm(N, generator=g, device=dev)[:K]].contiguous()
        return data["x"], data["c"]

    def batched():
        g = torch.Generator(device=dev).manual_seed(1)
        xb = torch.randn(BATCHED["B"], Nb, BATCHED["D"], generator=g, device=dev)
        cb = torch.randn(BATCHED["B"], BATCHED["K"], BATCHED["D"], generator=g, device=dev)
        _time_batched(xb, cb, rows, summary)

    def accumulation():
        summary["accumulation_error_over_ieee_gamma"] = accumulation_probe(dev)

    stages = [
        ("accumulation", accumulation),
        ("correctness", lambda: result["correctness"].extend(correctness(dev))),
        ("assign", lambda: _time_assign(*deepcluster_data(), rows, summary)),
        ("kmeans", lambda: _time_kmeans(*deepcluster_data(), rows, summary)),
        ("kmeans_mixture", lambda: _time_kmeans_mixture(N, K, dev, rows, summary)),
        ("sobel", lambda: _time_sobel(sb, dev, rows, summary)),
        ("batched", batched),
        ("knn", lambda: _time_knn(KNN["N"] // scale, dev, rows, summary)),
        ("smoke", lambda: result["smoke"].extend(smoke_runs(
            Path(tempfile.mkdtemp(prefix="fastdc_gpu_")), budget, log_dir))),
    ]
    for name, stage in stages:
        if budget.left() <= 0:
            result["skipped"].append(name)
            continue
        try:
            stage()
        except Exception:
            result["errors"][name] = traceback.format_exc()[-4000:]
            print(f"bench_gpu: stage {name} failed:\n{result['errors'][name]}", file=sys.stderr)
        if name == "kmeans":
            data.clear()
            torch.cuda.empty_cache()
        result["autotuned"] = autotuned_configs()
        if partial is not None:
            partial.write_text(json.dumps(result, indent=2, default=str))
        print(f"bench_gpu: stage {name} done, {budget.left():.0f} s of the budget left",
              file=sys.stderr, flush=True)
    return result


def _estimate(path: Path) -> int:
    """``--estimate``: the sm_90 compilations and the H100 model of benchmarks/gpu_estimate.py."""
    ensure_fastdc_importable()
    from benchmarks.gpu_estimate import estimate, print_estimate

    result = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "versions": versions(),
              **estimate()}
    print_estimate(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"written to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    parser.add_argument("--estimate", action="store_true",
                        help="no GPU needed: compile the assign kernels for sm_90, print their "
                        "resources and a modelled H100 time per Lloyd iteration, write "
                        "results/gpu_estimate_h100_model.json")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-clock budget in seconds: stages that would start later are "
                        "skipped and listed, the GPU tests and trainer runs get what is left")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="folder for the whole output of each smoke command (smoke_<i>.log)")
    args = parser.parse_args(argv)
    if args.estimate:
        return _estimate(args.out or RESULTS / "gpu_estimate_h100_model.json")
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device is available; GPU figures can only be taken on a GPU. "
              "Nothing was measured.", file=sys.stderr)
        return 2
    path = args.out or result_path(torch.cuda.get_device_name())
    path.parent.mkdir(parents=True, exist_ok=True)
    if args.log_dir is not None:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(quick=args.quick, budget_s=args.budget_s, log_dir=args.log_dir,
                     partial=path)
    except Exception:
        traceback.print_exc()
        return 1
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"device: {result['device']}  versions: {result['versions']}")
    bad = [c for c in result["correctness"] if not c["ok"]]
    print(f"correctness: {len(result['correctness']) - len(bad)} ok, {len(bad)} failed")
    for c in bad:
        print(f"  FAILED {c['op']} [{c['backend']}]: {c.get('error', c['value'])}")
    print(format_table(result["rows"]))
    for r in result["smoke"]:
        state = {0: "ok", None: "SKIPPED"}.get(r["returncode"], "FAILED")
        print(f"{state:7} {r['seconds']:7.1f} s  {r['command']}")
    for name, trace in result["errors"].items():
        print(f"stage {name} FAILED: {trace.strip().splitlines()[-1]}")
    if result["skipped"]:
        print(f"skipped (budget spent): {', '.join(result['skipped'])}")
    print(f"written to {path}")
    failed = bad or result["errors"] or any(r["returncode"] not in (0, None)
                                            for r in result["smoke"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
