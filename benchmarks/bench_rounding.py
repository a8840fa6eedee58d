"""The counting passes' rounding, simulated on the CPU: how many rows each re-check takes.

The GPU `assign` scores in bf16 with fp32 accumulation and counts, per row, the centroids
within the proven rounding bound of the best (``candidate_width``); rows with one candidate
keep it, rows with two are re-scored in fp32 on those two, rows with more go to a TF32
counting pass, the rows that one leaves open to a tf32x3 one, and the rest to the full fp32
pass. :func:`fastdc.kernels.assign.candidates_ref` emulates each pass in torch; this benchmark
runs them on DeepCluster-like features (PCA-whitened to 256 dims, L2-normalised) at the first
Lloyd iteration (centroids = random rows) and later ones, and the whole chain on those and on
random unit rows (the worst case), records the fraction of rows with 1, 2 and more
candidates and the fraction each pass takes, and counts wrong assignments against fp32 brute
force (must be 0). Run with ``pytest --benchmark benchmarks/bench_rounding.py``; results in
``benchmarks/results/rounding_*.json``.
"""

from __future__ import annotations

import pytest
import torch
from fastdc.kernels.assign import COUNTING_MODES, candidates_ref

from benchmarks.report import record
from fastdc.pca import pca_whiten

N, D_IN, DIM = 20_000, 512, 256
ITERATIONS = (0, 1, 4)  # Lloyd iterations after which the assignment is simulated


def whitened_mixture(n: int, d_in: int = D_IN, dim: int = DIM, seed: int = 0,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """[n, dim] float32 rows like DeepCluster's input to k-means: non-negative (ReLU) features
    of 64 clusters on a decaying spectrum of 128 directions, PCA-whitened, L2-normalised; made
    on ``device`` with that device's generator (the same seed gives other rows on a GPU)."""
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device)

    scale = torch.arange(1, 129, device=device).float()[:, None] ** 0.75
    basis = randn(128, d_in) / scale
    means = randn(64, 128)
    pick = torch.randint(0, 64, (n,), generator=g, device=device)
    z = means[pick] + 0.7 * randn(n, 128)
    feats = torch.relu(z @ basis + 0.05 * randn(n, d_in))
    return pca_whiten(feats, min(dim, d_in)).contiguous()


def fp32_scores(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """[N, K] float32 |c|² − 2·x·c, the fp32 brute force's scores."""
    return (c * c).sum(dim=1)[None, :] - 2.0 * (x @ c.T)


def lloyd_centroids(x: torch.Tensor, k: int, iterations: int, seed: int) -> torch.Tensor:
    """[k, D] centroids after ``iterations`` fp32 Lloyd steps from k random rows (an empty
    cluster keeps its centroid)."""
    g = torch.Generator().manual_seed(seed)
    c = x[torch.randperm(len(x), generator=g)[:k]].clone()
    for _ in range(iterations):
        idx = fp32_scores(x, c).argmin(dim=1)
        sums = torch.zeros_like(c).index_add_(0, idx, x)
        counts = torch.bincount(idx, minlength=k).float()
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
    return c


def best_of_pair(x: torch.Tensor, c: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
                 scores: torch.Tensor | None = None) -> torch.Tensor:
    """[N] int64: the fp32 re-check's choice between each row's two candidates (ties: the
    smaller index); scores the [N, K] fp32 scores when already at hand."""
    scores = fp32_scores(x, c) if scores is None else scores
    pair = torch.stack([torch.minimum(first, second), torch.maximum(first, second)], dim=1)
    return pair.gather(1, scores.gather(1, pair).argmin(dim=1, keepdim=True))[:, 0]


def simulate(x: torch.Tensor, c: torch.Tensor, dot_mode: str) -> dict:
    """Candidate counts of the simulated pass and its final assignment after the re-check,
    against fp32 brute force: fractions of rows with 1, 2 and more candidates, wrong rows."""
    count, first, second = candidates_ref(x, c, dot_mode)
    scores = fp32_scores(x, c)
    truth = scores.argmin(dim=1)
    final = torch.where(count <= 2, best_of_pair(x, c, first, second, scores), truth)
    n = len(x)
    return {
        "one": float((count == 1).sum()) / n,
        "two": float((count == 2).sum()) / n,
        "more": float((count > 2).sum()) / n,
        "wrong": int((final != truth).sum()),
    }


def chain(x: torch.Tensor, c: torch.Tensor) -> dict:
    """The default mode's passes in turn: the fraction of rows each counting pass takes (the
    bf16 pass all, each later one the rows the one before leaves with more than two
    candidates) and the full fp32 pass, and the wrong rows of the final assignment."""
    truth = fp32_scores(x, c).argmin(dim=1)
    final = truth.clone()
    left = torch.ones(len(x), dtype=torch.bool)
    out = {}
    for mode in COUNTING_MODES:
        out[f"to_{mode}"] = float(left.float().mean())
        count, first, second = candidates_ref(x, c, mode)
        settled = left & (count <= 2)
        final[settled] = best_of_pair(x, c, first, second)[settled]
        left &= count > 2
    out["to_fp32"] = float(left.float().mean())
    out["wrong"] = int((final != truth).sum())
    return out


def unit_rows(n: int, dim: int = DIM, seed: int = 0) -> torch.Tensor:
    """[n, dim] float32 random unit rows: the GPU run's data and the re-check's worst case
    (every centroid nearly as far as the best)."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)


@pytest.mark.parametrize("dot_mode", COUNTING_MODES)
@pytest.mark.parametrize("k", [1_000, 10_000])
def test_rounding(k, dot_mode):
    x = whitened_mixture(N)
    for it in ITERATIONS:
        c = lloyd_centroids(x, k, it, seed=k)
        out = simulate(x, c, dot_mode)
        record(
            f"rounding_{N // 1000}k_{DIM}_{k}",
            {"name": f"{dot_mode} after {it} Lloyd steps", **out},
            note=f"N={N} D={DIM} K={k}: whitened, L2-normalised ReLU mixture; fractions of rows "
            "with 1, 2, >2 candidates within the proven bound; wrong = rows whose final "
            "assignment differs from fp32 brute force",
        )
        assert out["wrong"] == 0


@pytest.mark.parametrize("data", ["whitened", "unit"])
def test_rounding_chain(data):
    """The whole default mode at K = 10 000, the first iteration: centroids = random rows of
    the whitened features, or other random unit rows (at the GPU run's N = 1.28 M the
    centroids are 0.8 % of the rows; here they would be half)."""
    k = 10_000
    if data == "whitened":
        x = whitened_mixture(N)
        c = lloyd_centroids(x, k, 0, seed=k)
    else:
        x, c = unit_rows(N), unit_rows(k, seed=1)
    out = chain(x, c)
    record(
        f"rounding_chain_{N // 1000}k_{DIM}_{k}",
        {"name": f"{data} rows, first iteration", **out},
        note=f"N={N} D={DIM} K={k}, first iteration; to_<pass> = fraction of rows the "
        "pass takes (bf16: all; tf32, tf32x3: those the pass before leaves with more than two "
        "candidates; fp32: the full pass); wrong = rows whose final assignment differs from "
        "fp32 brute force",
    )
    assert out["wrong"] == 0
    assert out["to_fp32"] <= out["to_tf32x3"] <= out["to_tf32"] <= out["to_bf16"] == 1.0
