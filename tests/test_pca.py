"""fastdc.engine.pca: PCA whitening against NumPy float64 and faiss's PCAMatrix."""

import importlib
import warnings

import numpy as np
import pytest
import torch

from fastdc.engine import PCA, FeatureStore, pca_whiten, pca_whiten_streaming


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


# ---- the Gram-matrix fit (N < D), the leading-eigenpairs solver, the fallbacks ---------------

pca_module = importlib.import_module("fastdc.engine.pca")


def decaying(n, d, seed, rank=None) -> torch.Tensor:
    """[n, d] float32 rows with a decaying spectrum (distinct leading eigenvalues), rotated and
    shifted; with ``rank`` the centred rows span only that many directions."""
    g = torch.Generator().manual_seed(seed)
    r = d if rank is None else rank
    latent = torch.randn(n, r, generator=g, dtype=torch.float64) / torch.arange(1, r + 1) ** 0.7
    basis, _ = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))
    return (latent @ basis.T + 2.0).float()


def numpy_whitened(x: torch.Tensor, dim: int) -> np.ndarray:
    """The whitening of today's definition in float64: full covariance, full eigh."""
    xn = x.double().numpy()
    xc = xn - xn.mean(0)
    val, vec = np.linalg.eigh(xc.T @ xc / len(xn))
    order = np.argsort(val)[::-1][:dim]
    return xc @ vec[:, order] / np.sqrt(val[order])


def aligned(z: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return z * np.sign((z * ref).sum(0))


# (N, D, dim): N < D (Gram), N > D (covariance), dim = D, dim >= N (no Gram: too few rows)
SHAPES = [(60, 200, 16), (90, 90 * 3, 40), (300, 40, 8), (100, 30, 30), (40, 100, 50)]


@pytest.mark.parametrize("n,d,dim", SHAPES)
def test_every_shape_matches_the_full_covariance_up_to_sign(n, d, dim, monkeypatch):
    x = decaying(n, d, seed=n + d)
    sizes = []
    solver = pca_module._leading_eigh
    monkeypatch.setattr(pca_module, "_leading_eigh",
                        lambda sym, keep: sizes.append(sym.shape[0]) or solver(sym, keep))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dim >= N: components past rank N-1 may be zeroed
        z = PCA(dim).fit(x).transform(x).double().numpy()
    gram = min(dim, d) < n < d
    assert sizes == [n if gram else d]  # the N×N Gram matrix exactly when N < D
    keep = min(dim, d, n - 1)  # the rest have no variance: rounding noise, whitened or zeroed
    ref = numpy_whitened(x, keep)
    np.testing.assert_allclose(aligned(z[:, :keep], ref), ref, rtol=0, atol=2e-3)


def test_rank_deficient_rows_fall_back_from_the_gram_matrix(monkeypatch):
    x = decaying(3, 200, seed=3).repeat(20, 1)  # N = 60 < D, 3 distinct rows: rank 2
    sizes = []
    solver = pca_module._leading_eigh
    monkeypatch.setattr(pca_module, "_leading_eigh",
                        lambda sym, keep: sizes.append(sym.shape[0]) or solver(sym, keep))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # components 3.. have no variance
        z = pca_whiten(x, 16).double().numpy()
        assert sizes == [60, 200]  # the Gram matrix had exact zero eigenvalues: the covariance
        zc = PCA(16).fit(x).transform(x).double().numpy()[:, :2]
    assert np.isfinite(z).all()
    ref = numpy_whitened(x, 2)
    np.testing.assert_allclose(aligned(zc, ref), ref, rtol=0, atol=2e-3)


@pytest.mark.parametrize("n,d,dim", [(80, 150, 12), (500, 30, 7)])  # Gram, covariance
def test_the_eigen_solvers_agree(n, d, dim, monkeypatch):
    x = decaying(n, d, seed=n)
    threads = torch.get_num_threads()
    one_thread = pca_whiten(x, dim).numpy()  # a small matrix: torch.linalg.eigh, one thread
    assert torch.get_num_threads() == threads  # restored
    scipy_eigh, calls = pca_module._subset_eigh(), []
    monkeypatch.setattr(pca_module, "_ONE_THREAD_EIGH", 0)
    monkeypatch.setattr(pca_module, "_subset_eigh",
                        lambda: lambda *a, **kw: calls.append(kw) or scipy_eigh(*a, **kw))
    subset = pca_whiten(x, dim).numpy()  # LAPACK's subset solver through SciPy
    assert [c["driver"] for c in calls] == ["evr"]
    monkeypatch.setattr(pca_module, "_subset_eigh", lambda: None)
    full = pca_whiten(x, dim).numpy()  # no SciPy: the full decomposition on every thread
    for z in (subset, full):
        np.testing.assert_allclose(aligned(z, one_thread), one_thread, rtol=0, atol=1e-4)


def test_rotation_without_whitening_is_orthonormal_and_invertible():
    x = decaying(50, 120, seed=6)
    pca = PCA(120, eigen_power=0.0).fit(x)  # all D components: more than the Gram matrix has
    c = pca.components.double()
    torch.testing.assert_close(c.T @ c, torch.eye(120, dtype=torch.float64), atol=1e-5, rtol=0)
    back = pca.transform(x) @ pca.components.T + pca.mean
    torch.testing.assert_close(back, x, atol=1e-4, rtol=0)


@pytest.mark.parametrize("chunk", [7, 1000])
def test_streamed_gram_fit_matches_the_in_memory_one(chunk):
    x = decaying(70, 150, seed=7)
    ref = pca_whiten(x, 10)
    out = pca_whiten_streaming(FeatureStore.from_tensor(x), 10, device="cpu", chunk_rows=chunk)
    torch.testing.assert_close(out.data, ref, rtol=0, atol=1e-6)  # the same rows, the same fit
