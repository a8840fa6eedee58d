"""Peak resident memory beyond the input for one k-means run, in a fresh process.

usage: python memory_probe.py {fastdc-cpu|faiss-cpu} N D K   → prints one JSON line.
"""

import json
import resource
import sys
import time

import torch


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def current_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024.0


def main() -> None:
    impl, n, d, k = sys.argv[1], *map(int, sys.argv[2:5])
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    xn = x.numpy()
    if impl == "fastdc-cpu":
        from fastdc.kmeans import kmeans

        kmeans(x[: 20 * k], k, niter=1, backend="cpu")  # load everything before the baseline

        def run():
            kmeans(x, k, niter=1, backend="cpu")

    else:
        import faiss

        faiss.Kmeans(d, k, niter=1).train(xn[: 40 * k])

        def run():
            faiss.Kmeans(d, k, niter=1, max_points_per_centroid=10**9).train(xn)

    base = current_mb()
    t = time.perf_counter()
    run()
    print(json.dumps({"extra_mb": peak_mb() - base, "input_mb": xn.nbytes / 2**20,
                      "time_s": time.perf_counter() - t}))


if __name__ == "__main__":
    main()
