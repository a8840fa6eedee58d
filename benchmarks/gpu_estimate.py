"""``python benchmarks/bench_gpu.py --estimate``: compiled resources of the assign kernels for
sm_90 and a model of the time per Lloyd iteration on an H100, without a GPU.

Each kernel is compiled by Triton for sm_90 (``triton.compile`` with
``GPUTarget("cuda", 90, 32)``) and its cubin read by Triton's ``cuobjdump``: registers, stack
(spills), shared memory, and the SASS of the main loop (the innermost loop holding HGMMA). The
model then takes, per tile of BLOCK_N × BLOCK_K scores, the largest of four costs in SM clock
cycles (each stated in :data:`ASSUMPTIONS`) and scales to DeepCluster's shape.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import tempfile
from pathlib import Path

SHAPE = {"N": 1_281_167, "D": 256, "K": 10_000}

# NVIDIA H100 Tensor Core GPU datasheet (H100 SXM, 2023): BF16 1 979 TFLOPS and TF32 989
# TFLOPS with sparsity, i.e. 989.4 and 494.7 dense; FP32 66.9 TFLOPS; HBM3 3.35 TB/s; 132 SMs
# (H100 whitepaper), 228 KB of shared memory per SM, 50 MB of L2. The clock is the one that
# makes the dense BF16 figure 4 096 flop per clock per SM.
H100 = {"sms": 132, "bf16_flops": 989.4e12, "tf32_flops": 494.7e12, "fp32_flops": 66.9e12,
        "hbm_bytes_s": 3.35e12, "l2_bytes_s": 5.5e12, "smem_bytes_clk_sm": 128,
        "issue_warp_instr_clk_sm": 4}
H100["clock_hz"] = H100["bf16_flops"] / (H100["sms"] * 4096)

ASSUMPTIONS = [
    "H100 SXM, datasheet dense peaks: BF16 989.4 TFLOPS, TF32 494.7, FP32 66.9; HBM 3.35 TB/s;"
    " 132 SMs; clock = BF16 peak / (132 SMs x 4096 flop/clk) = 1.83 GHz",
    "L2 -> SM bandwidth 5.5 TB/s in all (not in the datasheet: a microbenchmark figure), shared"
    " by the 132 SMs; shared memory 128 B/clk per SM; 4 warp-instructions issued per clk per SM",
    "per tile: tensor = 2*BN*BK*D / per-SM peak; L2 = the centroid tile's bytes (BK*D*2); smem ="
    " the bytes wgmma reads, (BN+BK)*D*2; issue = SASS instructions of the main loop x warps / 4",
    "two or more pipeline stages: the next centroid tile's copy overlaps this tile's work; one"
    " CTA per SM: tile time = tensor + issue (the epilogue waits for the wgmma), or the memory"
    " terms where larger; two CTAs per SM (registers and shared memory allow) overlap one's"
    " epilogue with the other's wgmma: the largest of the four",
    "one stage: nothing is prefetched, so each tile also waits for its own L2 copy: one CTA:"
    " L2 + tensor + issue; two CTAs: half of that, or the largest term where larger",
    "x is read once from HBM per pass (fp32); the TF32 counting pass runs on the rows the bf16"
    " pass leaves with more than two candidates at the best TF32 tile's rate, the tf32x3 one on"
    " the rows TF32 leaves so at the best tf32x3 tile's rate (three TF32 products each), the"
    " full fp32 pass on the rest at the rate the H200 run measured (fractions from"
    " bench_rounding's simulation); the two-candidate re-score reads x and two centroid rows"
    " per row",
    "no launch overheads, no tail effect beyond rounding the tile count up to whole waves",
]


def _cuobjdump() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")


def compile_sm90(fn, signature: dict, constexprs: dict, aligned=(), **options):
    """The kernel compiled by Triton for sm_90 (no GPU needed; Triton's own ptxas). Pointer
    arguments and the integers named in ``aligned`` are declared divisible by 16, as Triton's
    launcher specialises them at run time (torch allocations are 16-byte aligned)."""
    import triton
    from triton.backends.compiler import GPUTarget

    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]]
             for name, t in signature.items() if t.startswith("*") or name in aligned}
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs,
                                    attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def resources(kernel) -> dict:
    """Registers, stack bytes, shared memory and the main loop's SASS instruction count (the
    innermost backward branch whose body holds HGMMA; 0 without one) of a compiled kernel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        res = subprocess.run([_cuobjdump(), "-res-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
        sass = subprocess.run([_cuobjdump(), "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
    return {
        "registers": int(re.search(r"REG:(\d+)", res).group(1)),
        "stack_bytes": int(re.search(r"STACK:(\d+)", res).group(1)),
        "shared_bytes": kernel.metadata.shared,
        "loop_instructions": main_loop_length(sass),
        "wgmma": "wgmma" in kernel.asm["ptx"],
    }


def main_loop_length(sass: str) -> int:
    """Instructions in the innermost loop of a SASS listing that holds an HGMMA (0: none):
    the span from a backward branch's target to the branch."""
    instr = [(int(m.group(1), 16), m.group(2)) for m in
             re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    best = 0
    for addr, text in instr:
        m = re.search(r"\bBRA\s+(0x[0-9a-f]+)", text)
        if not m or int(m.group(1), 16) >= addr:
            continue
        body = [t for a, t in instr if int(m.group(1), 16) <= a <= addr]
        if any("HGMMA" in t for t in body) and (not best or len(body) < best):
            best = len(body)
    return best


def tile_cycles(res: dict, bn: int, bk: int, d: int, warps: int, stages: int, flops: float
                ) -> dict:
    """Clock cycles per BLOCK_N × BLOCK_K tile on one SM, per cost and in all (see the
    assumptions): ``flops`` the tensor peak of the pass's operand type."""
    clk, sms = H100["clock_hz"], H100["sms"]
    elt = 2 if flops == H100["bf16_flops"] else 4
    cost = {
        "tensor": 2 * bn * bk * d / (flops / sms / clk),
        "l2": bk * d * elt / (H100["l2_bytes_s"] / sms / clk),
        "smem": (bn + bk) * d * elt / H100["smem_bytes_clk_sm"],
        "issue": res["loop_instructions"] * warps / H100["issue_warp_instr_clk_sm"],
    }
    two = res["shared_bytes"] * 2 <= 228 * 1024 and res["registers"] * warps * 32 * 2 <= 65536
    mem = max(cost["l2"], cost["smem"])
    chain = cost["tensor"] + cost["issue"] + (cost["l2"] if stages == 1 else 0.0)
    cost["total"] = max(*cost.values(), chain / 2) if two else max(chain, mem)
    cost["ctas_per_sm"] = 2 if two else 1
    return cost


def pass_seconds(cost: dict, bn: int, bk: int, n: int, k: int) -> float:
    """Seconds of a pass over n rows and k centroids with BLOCK_N × BLOCK_K tiles: whole waves
    of programs (each scanning every centroid tile) over the SMs."""
    programs = math.ceil(n / bn)
    waves = math.ceil(programs / (H100["sms"] * cost["ctas_per_sm"])) * cost["ctas_per_sm"]
    return waves * math.ceil(k / bk) * cost["total"] / H100["clock_hz"]


PASS_FRACTIONS = {
    "whitened, first iteration": {"tf32": 0.0149, "tf32x3": 0.00155, "fp32": 0.0001},
    "whitened, later iterations": {"tf32": 0.00135, "tf32x3": 0.0001, "fp32": 0.0},
    "unit rows, first iteration": {"tf32": 0.1426, "tf32x3": 0.01425, "fp32": 0.00055},
}
"""Fractions of the rows each re-check pass takes in the CPU simulation of the default mode
(``pytest --benchmark benchmarks/bench_rounding.py``, AMD EPYC Zen 3; N = 20 000, D = 256): the
first Lloyd iteration at K = 10 000 on the whitened mixture (rounding_chain_20k_256_10000.json),
later ones at K = 1 000 after four steps (rounding_20k_256_1000.json: 20 rows per centroid; at
K = 10 000 the simulation's 2 rows per centroid make later iterations trivially settled), and
random unit rows against other random unit rows, the GPU run's data and the worst case."""

FP32_PASS_S = 0.160 / 0.17
"""Seconds of the full fp32 pass (CUDA cores, gathered rows) per whole N = 1.28 M rows at
K = 10 000, D = 256, as measured on the H200 (2026-12-04): about 160 ms for 17 % of the rows.
The H100 SXM has the same SMs and clocks; the FP32 peak would say 98 ms."""


def _assign_signature(c_type: str) -> dict:
    p = "*"
    sig = dict(x_ptr=p + "fp32", c_ptr=p + c_type, pad_ptr=p + "fp32", coef_ptr=p + "fp32",
               rows_ptr=p + "i32", nrows_ptr=p + "i64", dist_ptr=p + "fp32",
               idx_ptr=p + "i64", cand_ptr=p + "i64", N="i32", K="i32", KP="i32", N_LIST="i32")
    sig.update({k: "constexpr" for k in ("D", "IS_L2", "DOT_MODE", "COUNT_SHIFT", "GATHER",
                                         "UPCAST_BF16", "BLOCK_N", "BLOCK_K", "BLOCK_D")})
    return sig


def assign_passes(mode: str) -> list[dict]:
    """Every autotune tile of the assign kernel in ``mode`` compiled at D = 256, with its
    modelled time over all N rows: "bf16" the default mode's main pass, "tf32" the one-pass
    mode (the counting TF32 pass is modelled at its rate), "tf32x3" the counting pass on
    gathered rows."""
    from fastdc.kernels import assign as A

    d, n, k = SHAPE["D"], SHAPE["N"], SHAPE["K"]
    flops = {"bf16": H100["bf16_flops"], "tf32": H100["tf32_flops"],
             "tf32x3": H100["tf32_flops"] / 3}[mode]
    shift = A.count_shift(k) if mode != "tf32" else 0
    gather = mode == "tf32x3"
    out = []
    for cfg in A._prune_assign_configs(A.assign_configs(), dict(N=n, K=k), D=d,
                                       DOT_MODE=mode, COUNT_SHIFT=shift):
        kw = dict(cfg.kwargs)
        kw["BLOCK_D"] = A._resolve_block_d(dict(kw, D=d))
        const = dict(D=d, IS_L2=True, DOT_MODE=mode, COUNT_SHIFT=shift, GATHER=gather,
                     UPCAST_BF16=False, **kw)
        kern = compile_sm90(A._assign_kernel, _assign_signature(
            "bf16" if mode == "bf16" else "fp32"), const, aligned=("KP",), num_warps=cfg.num_warps,
            num_stages=cfg.num_stages)
        res = resources(kern)
        bn, bk = kw["BLOCK_N"], kw["BLOCK_K"]
        cost = tile_cycles(res, bn, bk, d, cfg.num_warps, cfg.num_stages, flops)
        out.append({"kernel": f"assign {mode}", "tile": f"{bn}x{bk}x{kw['BLOCK_D']}",
                    "warps": cfg.num_warps, "stages": cfg.num_stages, **res,
                    "cycles_per_tile": {c: round(v) for c, v in cost.items()},
                    "ms": 1e3 * pass_seconds(cost, bn, bk, n, k)})
    return out


def recheck_resources() -> dict:
    """The full fp32 pass over gathered rows (CUDA cores, its one tile) for sm_90."""
    from fastdc.kernels import assign as A

    (cfg,) = A._prune_assign_configs(A.assign_configs(), dict(N=SHAPE["N"], K=SHAPE["K"]),
                                     D=SHAPE["D"], DOT_MODE="ieee", COUNT_SHIFT=0)
    kw = dict(cfg.kwargs, BLOCK_D=A._resolve_block_d(dict(cfg.kwargs, D=SHAPE["D"])))
    const = dict(D=SHAPE["D"], IS_L2=True, DOT_MODE="ieee", COUNT_SHIFT=0, GATHER=True,
                 UPCAST_BF16=False, **kw)
    kern = compile_sm90(A._assign_kernel, _assign_signature("fp32"), const, aligned=("KP",),
                        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return {"kernel": "assign fp32 (re-check rows)",
            "tile": f"{kw['BLOCK_N']}x{kw['BLOCK_K']}x{kw['BLOCK_D']}", "warps": cfg.num_warps,
            "stages": cfg.num_stages, **resources(kern)}


def rescore_resources() -> dict:
    """The two-candidate fp32 re-score kernel compiled for sm_90 (32 rows × 64 features)."""
    from fastdc.kernels import assign as A

    sig = dict(x_ptr="*fp32", c_ptr="*fp32", pad_ptr="*fp32", second_ptr="*i64",
               idx_ptr="*i64", dist_ptr="*fp32", N="i32", K="i32", KP="i32", D="constexpr",
               IS_L2="constexpr", BLOCK_N="constexpr", BLOCK_D="constexpr")
    kern = compile_sm90(A._rescore_kernel, sig, dict(D=SHAPE["D"], IS_L2=True, BLOCK_N=32,
                                                      BLOCK_D=64), num_warps=4)
    return {"kernel": "rescore (fp32, 2 candidates)", "tile": "32x-x64", "warps": 4,
            **resources(kern)}


def estimate() -> dict:
    """Resources of every assign kernel, the modelled ms per Lloyd iteration of the default
    mode (each case of :data:`PASS_FRACTIONS`) and of one TF32 pass, and the newest measured
    figures."""
    n, d = SHAPE["N"], SHAPE["D"]
    bf16, tf32, x3 = assign_passes("bf16"), assign_passes("tf32"), assign_passes("tf32x3")
    x_read = 4 * n * d / H100["hbm_bytes_s"]
    rescore = max(x_read, 2 * 4 * n * d / H100["l2_bytes_s"])
    main = min(r["ms"] for r in bf16) / 1e3
    tf32_pass = min(r["ms"] for r in tf32) / 1e3
    per_row_pass = {"tf32": tf32_pass, "tf32x3": min(r["ms"] for r in x3) / 1e3,
                    "fp32": FP32_PASS_S}
    recheck = {it: {p: per_row_pass[p] * f for p, f in fr.items()}
               for it, fr in PASS_FRACTIONS.items()}
    iteration = {it: 1e3 * (main + x_read + sum(parts.values()) + rescore)
                 for it, parts in recheck.items()}
    seen = measured()
    tf32_ms = 1e3 * (tf32_pass + x_read)
    # the one pass both the model and a GPU run have: how far the model undershoots
    factor = seen["assign_ms_triton_tf32"] / tf32_ms if seen and (
        "assign_ms_triton_tf32" in seen) else None
    return {
        "shape": SHAPE, "assumptions": ASSUMPTIONS,
        "kernels": bf16 + tf32 + x3 + [recheck_resources(), rescore_resources()],
        "default_ms_per_iteration": iteration,
        "default_parts_ms": {"main pass (best tile)": 1e3 * main, "x from HBM": 1e3 * x_read,
                             "rescore": 1e3 * rescore,
                             **{f"{p} pass, {it}": 1e3 * v for it, parts in recheck.items()
                                for p, v in parts.items()}},
        "tf32_one_pass_ms": tf32_ms,
        "goal_ms_per_iteration": 25.0,
        "measured": seen,
        "measured_over_model_tf32": factor,
        "default_ms_per_iteration_scaled": None if factor is None else {
            it: v * factor for it, v in iteration.items()},
    }


def measured() -> dict | None:
    """The newest GPU run's figures for the same shape (benchmarks/results/gpu_*.json from
    ``bench_gpu.py``), to set the model beside: None when there is none."""
    runs = sorted(p for p in (Path(__file__).parent / "results").glob("gpu_*.json")
                  if "estimate" not in p.name)
    if not runs:
        return None
    r = json.loads(runs[-1].read_text())
    keys = ("assign_ms_triton_default", "assign_ms_triton_tf32", "assign_ms_triton_bf16",
            "assign_ms_triton_main_pass", "kmeans_20_iters_s_triton",
            "recheck_fractions_triton_default")
    return {"file": runs[-1].name, "device": r.get("device"), "date": r.get("date"),
            **{k: r["summary"][k] for k in keys if k in r.get("summary", {})}}


def print_estimate(est: dict) -> None:
    """The estimate as tables, assumptions first."""
    print(f"assign at N={est['shape']['N']}, D={est['shape']['D']}, K={est['shape']['K']} on "
          "one H100 SXM, modelled from sm_90 compilations (no GPU used). Assumptions:")
    for a in est["assumptions"]:
        print(f"  - {a}")
    head = f"{'kernel':30} {'tile':11} {'w':>2} {'st':>2} {'regs':>4} {'stack':>5} " \
           f"{'smem KB':>7} {'loop':>5} {'wgmma':>5} {'CTA/SM':>6} {'ms/pass':>8}"
    print(head)
    for r in est["kernels"]:
        cyc = r.get("cycles_per_tile", {})
        ms = f"{r['ms']:8.2f}" if "ms" in r else f"{'-':>8}"
        print(f"{r['kernel']:30} {r['tile']:11} {r['warps']:>2} {r.get('stages', '-'):>2} "
              f"{r['registers']:>4} {r['stack_bytes']:>5} {r['shared_bytes'] / 1024:>7.1f} "
              f"{r['loop_instructions']:>5} {str(r['wgmma']):>5} "
              f"{cyc.get('ctas_per_sm', '-'):>6} {ms}")
    for part, v in est["default_parts_ms"].items():
        print(f"  {part:42} {v:8.2f} ms")
    for it, v in est["default_ms_per_iteration"].items():
        print(f"default mode, {it}: {v:.2f} ms per iteration "
              f"(goal {est['goal_ms_per_iteration']:.0f} ms)")
    print(f"one TF32 pass (precision='tf32', no re-check): {est['tf32_one_pass_ms']:.2f} ms")
    if est.get("measured"):
        m = est["measured"]
        print(f"measured ({m['device']}, {m['date']}, {m['file']}; random unit rows, the same "
              "shape):")
        for key, value in m.items():
            if key not in ("file", "device", "date"):
                print(f"  {key:34} {value}")
    if est.get("measured_over_model_tf32"):
        print(f"the one TF32 pass took {est['measured_over_model_tf32']:.2f}x the model's time "
              "there (a run of older code); the default mode scaled by the same factor, if the "
              "bf16 pass is modelled as well as the TF32 one:")
        for it, v in est["default_ms_per_iteration_scaled"].items():
            print(f"  {it}: {v:.2f} ms")
