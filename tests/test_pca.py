"""fastdc.engine.pca: PCA whitening against NumPy float64 and faiss's PCAMatrix."""

import numpy as np
import pytest
import torch

from fastdc.engine import PCA, pca_whiten


def correlated(n=3000, d=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g)
    return (torch.randn(n, d, generator=g) @ mix + 3.0).float()


def test_whitened_components_have_unit_variance():
    x = correlated()
    z = PCA(16).fit(x).transform(x).double()
    cov = (z - z.mean(0)).T @ (z - z.mean(0)) / z.shape[0]
    torch.testing.assert_close(cov, torch.eye(16, dtype=torch.float64), atol=2e-3, rtol=0)


def test_matches_numpy_float64_up_to_sign():
    x = correlated(d=12, seed=1)
    z = PCA(5).fit(x).transform(x).double().numpy()
    xn = x.double().numpy()
    xc = xn - xn.mean(0)
    val, vec = np.linalg.eigh(xc.T @ xc / len(xn))
    order = np.argsort(val)[::-1][:5]
    expected = xc @ vec[:, order] / np.sqrt(val[order])
    signs = np.sign((z * expected).sum(0))
    np.testing.assert_allclose(z * signs, expected, rtol=1e-3, atol=1e-3)


def test_matches_faiss_pca_matrix_up_to_sign():
    faiss = pytest.importorskip("faiss")
    x = correlated(d=24, seed=2)
    mat = faiss.PCAMatrix(24, 8, -0.5)
    mat.train(x.numpy())
    expected = mat.apply_py(x.numpy())
    z = PCA(8).fit(x).transform(x).numpy() / np.sqrt(len(x))  # faiss skips the 1/n
    signs = np.sign((z * expected).sum(0))
    np.testing.assert_allclose(z * signs, expected, rtol=1e-3, atol=1e-4)


def test_pca_whiten_normalises_rows_and_clamps_dim():
    x = correlated(d=10)
    z = pca_whiten(x, dim=256)
    assert z.shape == (3000, 10) and z.dtype == torch.float32
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3000))


def test_rank_deficient_input_warns_and_stays_finite():
    x = correlated(n=6, d=20)
    with pytest.warns(UserWarning, match="zero variance"):
        z = pca_whiten(x, dim=16)
    assert bool(torch.isfinite(z).all())


def test_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        pca_whiten(torch.randn(5))
    x = torch.randn(10, 3)
    x[4, 1] = float("nan")
    with pytest.raises(ValueError, match="row: 4"):
        pca_whiten(x)
    with pytest.raises(RuntimeError, match="before fit"):
        PCA(2).transform(torch.randn(3, 3))
