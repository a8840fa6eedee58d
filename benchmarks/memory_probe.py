"""Peak resident memory beyond the input for one k-means run, in a fresh process.

usage (from the repository root):
    python -m benchmarks.memory_probe {fastdc-cpu|faiss-cpu} N D K [NITER (default 1)]
→ prints one JSON line.
"""

import json
import sys

import torch

from benchmarks.timing import measure


def status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: peak) in MiB."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024.0


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak counts only what follows:
    creating x may itself have used temporaries larger than x."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main() -> None:
    impl, n, d, k = sys.argv[1], *map(int, sys.argv[2:5])
    niter = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    xn = x.numpy()
    if impl == "fastdc-cpu":
        from fastdc.kmeans import kmeans

        kmeans(x[: 20 * k], k, niter=1, backend="cpu")  # load everything before the baseline

        def run():
            kmeans(x, k, niter=niter, backend="cpu")

    else:
        import faiss

        faiss.Kmeans(d, k, niter=1).train(xn[: 40 * k])

        def run():  # train, then the assignments, as DeepCluster's clustering.py does
            km = faiss.Kmeans(d, k, niter=niter, max_points_per_centroid=10**9)
            km.train(xn)
            km.index.search(xn, 1)

    reset_peak()
    base = status_mb("VmRSS")
    seconds = measure(run, rounds=1, warmup=0).best
    print(json.dumps({"extra_mb": status_mb("VmHWM") - base, "input_mb": xn.nbytes / 2**20,
                      "time_s": seconds}))


if __name__ == "__main__":
    main()
