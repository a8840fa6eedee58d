"""PCA-whitening on the CPU, DeepCluster's shape: D=4096 features → 256 whitened, L2-normalised
dimensions, for N = 600, 5 000 and 20 000 rows.

Contenders, in the same run on the same rows: fastdc's ``preprocess_features`` (the Gram matrix
when N < D, the leading 256 eigenpairs only), fastdc's previous fit (the D×D covariance and all
D eigenpairs with ``torch.linalg.eigh``, written out below), and faiss's ``PCAMatrix(D, 256,
-0.5)`` + ``normalize_L2`` (DeepCluster's original). Reported: seconds (one call after a
warm-up on a small input) and, as the proof that the outputs agree, the largest difference
from fastdc's output after flipping each component's sign to match.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.report import record
from benchmarks.timing import measure
from fastdc.clustering import preprocess_features
from fastdc.pca import l2_normalize_rows

D, DIM = 4096, 256
SIZES = [600, 5_000, 20_000]


def features(n: int) -> np.ndarray:
    """[n, D] float32, like a CNN's fc features: non-negative (ReLU) mixtures of 512 directions
    with decaying strengths, plus a little noise (a realistic, slowly decaying spectrum)."""
    g = torch.Generator().manual_seed(n)
    basis = torch.randn(512, D, generator=g) / torch.arange(1, 513).float()[:, None] ** 0.75
    x = torch.randn(n, 512, generator=g) @ basis + 0.05 * torch.randn(n, D, generator=g)
    return torch.relu(x).numpy()


def previous_fastdc(x: np.ndarray) -> np.ndarray:
    """fastdc's fit before the Gram path: D×D covariance (fp32 products, float64 sum), all D
    eigenpairs (``torch.linalg.eigh``, float64), projection on the leading 256, normalisation."""
    xt = torch.from_numpy(x)
    xc = xt - xt.sum(dim=0, dtype=torch.float64).div(len(xt)).float()
    values, vectors = torch.linalg.eigh((xc.T @ xc).double() / len(xt))
    values, vectors = values.flip(0)[:DIM], vectors.flip(1)[:, :DIM]
    return l2_normalize_rows(xc @ (vectors * values.rsqrt()).float()).numpy()


def faiss_pca(x: np.ndarray) -> np.ndarray:
    faiss = pytest.importorskip("faiss")
    mat = faiss.PCAMatrix(D, DIM, -0.5)
    mat.train(x)
    y = mat.apply_py(x)
    faiss.normalize_L2(y)
    return y


CONTENDERS = {
    "fastdc": lambda x: preprocess_features(x, DIM),
    "fastdc previous (covariance + full eigh)": previous_fastdc,
    "faiss PCAMatrix": faiss_pca,
}


@pytest.fixture(scope="module", autouse=True)
def warm_up() -> None:
    """Thread pools, first touch, SciPy's and faiss's imports: outside the timed calls."""
    x = np.random.default_rng(0).random((300, 512), dtype=np.float32)
    preprocess_features(x, 16)
    torch.linalg.eigh(torch.eye(512, dtype=torch.float64))
    pytest.importorskip("faiss").PCAMatrix(512, 16, -0.5).train(x)


@pytest.fixture(scope="module")
def fastdc_outputs() -> dict:
    """fastdc's output per N, the reference of the agreement column (filled on first use)."""
    return {}


@pytest.mark.parametrize("name", list(CONTENDERS))
@pytest.mark.parametrize("n", SIZES)
def test_pca_whiten(n, name, fastdc_outputs):
    x = features(n)
    run = measure(lambda: CONTENDERS[name](x), rounds=1, warmup=0)
    out = np.asarray(run.result, dtype=np.float64)
    if n not in fastdc_outputs:
        fastdc_outputs[n] = out if name == "fastdc" else preprocess_features(x, DIM)
    ref = fastdc_outputs[n]
    diff = float(np.abs(out * np.sign((out * ref).sum(0)) - ref).max())
    record(
        f"pca_whiten_cpu_{n}_{D}_{DIM}",
        {"name": name, "time_s": run.best, "max_abs_diff_vs_fastdc": diff},
        reference="faiss PCAMatrix",
        note=f"N={n} D={D} -> {DIM}, eigen power -0.5, rows L2-normalised; diff after sign "
        "alignment per component",
    )
    assert out.shape == (n, DIM) and np.isfinite(out).all()
