"""PIC: the engine against a dense, loop-by-loop port of the reference algorithm, on blobs
(pure clusters), the k-NN graph without self-loops, singletons, the PIC class and errors."""

import numpy as np
import pytest
import torch

from fastdc.clustering import PIC
from fastdc.engine import knn_graph, pic


def dense_pic(x: torch.Tensor, nnn: int, sigma: float, alpha: float, niter: int,
              distribute: bool) -> np.ndarray:
    """The reference's steps on a dense W, one node at a time (float64, brute-force graph)."""
    x64 = x.double().numpy()
    n = len(x64)
    d2 = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    nbrs = np.argsort(d2, axis=1, kind="stable")[:, :nnn]
    a = np.zeros((n, n))
    for i in range(n):
        a[i, nbrs[i]] = np.exp(-d2[i, nbrs[i]] / sigma**2)
    w = a + a.T
    v = np.full(n, 1.0 / n)
    for _ in range(niter):
        v = alpha * (w.T @ v) + (1 - alpha) / n
        v /= v.sum()
    pointer = list(range(n))
    for i in range(n):
        best = 0.0
        for j in np.flatnonzero(w[i]):
            if w[i, j] * (v[j] - v[i]) > best:
                best, pointer[i] = w[i, j] * (v[j] - v[i]), j
    roots = [i for i in range(n) if pointer[i] == i]
    labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        node = i
        while pointer[node] != node:
            node = pointer[node]
        labels[i] = roots.index(node)
    if distribute:
        sizes = np.bincount(labels)
        moved = labels.copy()
        for s in np.flatnonzero(sizes[labels] == 1):
            big = [j for j in nbrs[s] if sizes[labels[j]] > 1]
            if big:
                moved[s] = labels[big[0]]
        labels = np.unique(moved, return_inverse=True)[1]
    return labels


def blob_data(n: int, centers: int, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(centers, d, generator=g) * 10
    which = torch.arange(n) % centers
    x = mu[which] + torch.randn(n, d, generator=g) * 0.3
    return torch.nn.functional.normalize(x, dim=1), which


@pytest.mark.parametrize("distribute", [True, False])
@pytest.mark.parametrize("seed,n,nnn,sigma", [(0, 60, 5, 0.2), (1, 97, 3, 0.5), (2, 40, 1, 1.0)])
def test_matches_a_dense_port_of_the_reference(seed, n, nnn, sigma, distribute):
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(seed))
    x = torch.nn.functional.normalize(x, dim=1)
    res = pic(x, nnn=nnn, sigma=sigma, distribute_singletons=distribute)
    expected = dense_pic(x, nnn, sigma, 0.001, 200, distribute)
    assert np.array_equal(res.labels.numpy(), expected)
    assert res.n_clusters == expected.max() + 1
    assert res.neighbours.shape == res.dist.shape == (n, nnn)


def test_separated_blobs_give_pure_clusters():
    x, which = blob_data(400, 4)
    res = pic(x)
    assert 4 <= res.n_clusters <= 40
    for c in range(res.n_clusters):
        assert len(torch.unique(which[res.labels == c])) == 1, f"cluster {c} spans blobs"
    assert torch.equal(torch.unique(res.labels), torch.arange(res.n_clusters))


def test_singletons_join_their_nearest_larger_cluster():
    x, _ = blob_data(200, 5, seed=3)
    kept = pic(x, distribute_singletons=False)
    moved = pic(x)
    sizes = torch.bincount(moved.labels)
    single = (sizes[moved.labels] == 1).nonzero().flatten()
    for s in single.tolist():  # a singleton remains only if all its neighbours are singletons
        assert (torch.bincount(kept.labels)[kept.labels[moved.neighbours[s]]] == 1).all()
    assert moved.n_clusters <= kept.n_clusters


def test_graph_leaves_out_the_row_itself_even_with_duplicates():
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [5.0, 6.0]])
    dist, idx = knn_graph(x, 2)
    assert not (idx == torch.arange(5).unsqueeze(1)).any()
    assert idx[2].tolist() == [0, 1] and dist[2].tolist() == [0.0, 0.0]
    assert idx[3].tolist() == [4, 0]


def test_pic_class_fills_images_lists():
    x, which = blob_data(300, 3, d=32, seed=5)
    clus = PIC(pca=8)
    assert clus.cluster(x.numpy()) == 0
    lists = clus.images_lists
    assert sorted(i for c in lists for i in c) == list(range(300))
    assert all(len(c) for c in lists)
    assert all(len(set(which[c].tolist())) == 1 for c in lists)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"nnn": 0}, "nnn must be"),
        ({"nnn": 10}, r"\[1, N - 1\]"),
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
        ({"alpha": 2.0}, "alpha"),
        ({"niter": 0}, "niter"),
    ],
)
def test_bad_parameters_say_what_is_wrong(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pic(torch.randn(10, 3), **kwargs)


def test_nan_rows_are_refused():
    x = torch.randn(10, 3)
    x[4, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        pic(x)


def test_trainer_clusters_with_pic_sizes_the_head_and_resumes(tmp_path, capsys):
    from fastdc.deepcluster import load_checkpoint, main

    out = tmp_path / "run"
    tiny = ["--subset", "300", "--batch-size", "64", "--pca-dim", "16", "--clustering", "pic",
            "--no-final-eval", "--no-plots", "--out", str(out)]
    assert main([*tiny, "--epochs", "1"]) == 0
    state = load_checkpoint(out / "checkpoint.pt")
    found = state["records"][-1]["pic_clusters"]
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("epoch"))
    assert f"clusters {found:>5}" in line and "+ PIC " in line  # no k-means loss to show
    assert "clust-loss" not in line and "k-means" not in line
    assert state["config"]["clustering"] == "pic" and found > 1
    assert state["model"]["top_layer.weight"].shape[0] == found
    assert state["records"][-1]["nonempty_clusters"] == found
    assert main([*tiny, "--epochs", "2", "--resume"]) == 0  # the head is found's size again
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2


def test_trainer_refuses_pic_with_deepercluster(tmp_path, capsys):
    from fastdc.deepcluster import main

    assert main(["--subset", "100", "--epochs", "1", "--method", "deepercluster",
                 "--clustering", "pic", "--out", str(tmp_path / "o")]) == 2
    assert "--clustering pic runs with --method deepcluster" in capsys.readouterr().err
