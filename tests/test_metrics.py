"""fastdc.evaluation: NMI / ARI / purity against scikit-learn, NMI over readable positions,
the linear probe, the split and the comparison of feature sets."""

import numpy as np
import pytest
import torch

from fastdc.evaluation import (
    ari,
    compare_features,
    contingency,
    kmeans_nmi,
    linear_probe,
    masked_nmi,
    nmi,
    pic_nmi,
    purity,
    split_indices,
)


def _random_labelings(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 7, 500)
    b = np.where(rng.random(500) < 0.6, a, rng.integers(0, 12, 500))
    return a, b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nmi_and_ari_match_sklearn(seed):
    sk = pytest.importorskip("sklearn.metrics")
    a, b = _random_labelings(seed)
    assert nmi(a, b) == pytest.approx(sk.normalized_mutual_info_score(a, b), abs=1e-10)
    assert ari(a, b) == pytest.approx(sk.adjusted_rand_score(a, b), abs=1e-10)


def test_nmi_properties():
    a = np.array([0, 0, 1, 1, 2, 2])
    assert nmi(a, a) == pytest.approx(1.0)
    assert nmi(a, np.array([5, 5, 9, 9, 7, 7])) == pytest.approx(1.0)  # renaming
    assert nmi(np.zeros(6, int), np.zeros(6, int)) == 1.0
    assert nmi(a, np.zeros(6, int)) == 0.0
    rng = np.random.default_rng(0)
    assert nmi(rng.integers(0, 3, 20000), rng.integers(0, 3, 20000)) < 0.01
    assert nmi(torch.tensor(a), torch.tensor(a)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in length"):
        nmi(a, a[:3])


def test_contingency_and_purity():
    clusters = np.array([0, 0, 0, 1, 1, 2])
    labels = np.array([1, 1, 0, 0, 0, 2])
    np.testing.assert_array_equal(contingency(clusters, labels), [[1, 2, 0], [2, 0, 0],
                                                                  [0, 0, 1]])
    assert purity(clusters, labels) == pytest.approx(5 / 6)


def test_linear_probe_separates_separable_classes():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=gen) * 4
    y = torch.randint(0, 4, (400,), generator=gen)
    x = centres[y] + torch.randn(400, 16, generator=gen)
    acc = linear_probe(x[:300], y[:300], x[300:], y[300:])
    assert acc > 0.95
    noise = torch.randn(400, 16, generator=gen)
    assert linear_probe(noise[:300], y[:300], noise[300:], y[300:]) < 0.5


def test_kmeans_nmi_finds_well_separated_clusters():
    gen = torch.Generator().manual_seed(1)
    y = torch.arange(300) % 3
    x = torch.randn(3, 8, generator=gen)[y] * 10 + torch.randn(300, 8, generator=gen)
    score, assignments = kmeans_nmi(x, y.numpy(), 3, pca_dim=8)
    assert score > 0.95
    assert assignments.shape == (300,) and assignments.min() >= 0 and assignments.max() < 3


def test_split_indices():
    tr, te = split_indices(100, 0.2, seed=3)
    assert len(tr) == 80 and len(te) == 20
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(100))
    tr2, te2 = split_indices(100, 0.2, seed=3)
    assert np.array_equal(te, te2)
    with pytest.raises(ValueError):
        split_indices(1, 0.2, seed=0)


def test_masked_nmi_leaves_out_unreadable_images_and_missing_labels():
    a = np.array([0, 0, 1, 1, -1, 2])
    b = np.array([3, 3, 4, 4, 4, -1])
    assert masked_nmi(a, b) == pytest.approx(1.0)  # the first four rows agree
    assert masked_nmi(a, None) is None
    assert masked_nmi(np.array([-1, 0]), np.array([0, -1])) is None
    assert masked_nmi(a, np.array([0, 1, 0, 1, 0, 1])) == nmi(a[[0, 1, 2, 3, 5]], [0, 1, 0, 1, 1])


def test_compare_features_ranks_informative_features_above_noise():
    gen = torch.Generator().manual_seed(2)
    labels = (torch.arange(200) % 4).numpy()
    good = torch.randn(4, 12, generator=gen)[labels] * 8 + torch.randn(200, 12, generator=gen)
    noise = torch.randn(200, 12, generator=gen)
    ok = np.ones(200, dtype=bool)
    ok[[5, 50]] = False
    steps = []
    res = compare_features({"good": good, "noise": noise}, labels, ok, pca_dim=8, seed=0,
                           split_seed=1, on_step=lambda: steps.append(1))
    assert len(steps) == 4
    assert res["classes"] == 4 and res["train"] + res["test"] == 198 and res["test"] == 40
    assert res["good"]["kmeans_nmi"] > 0.9 and res["good"]["linear_probe_acc"] > 0.9
    assert res["noise"]["kmeans_nmi"] < 0.2 and res["noise"]["linear_probe_acc"] < 0.6
    assert list(res) == ["classes", "train", "test", "good", "noise"]


def test_pic_nmi_finds_well_separated_groups_and_compare_features_reports_it():
    gen = torch.Generator().manual_seed(3)
    labels = (torch.arange(240) % 3).numpy()
    blobs = torch.randn(3, 10, generator=gen)[labels] * 6 + 0.3 * torch.randn(240, 10,
                                                                              generator=gen)
    score, found = pic_nmi(blobs, labels, pca_dim=3)
    # PIC picks its own number of clusters (here it splits each blob into several basins of its
    # 5-neighbour graph), so its NMI sits well above noise's but below k-means' with k = 3
    assert found >= 3 and score > 0.4
    noise = torch.randn(240, 10, generator=gen)
    assert pic_nmi(noise, labels, pca_dim=3)[0] < 0.1
    ok = np.ones(240, dtype=bool)
    res = compare_features({"blobs": blobs}, labels, ok, pca_dim=3, seed=0, split_seed=1,
                           pic=True)
    assert res["blobs"]["pic_nmi"] == pytest.approx(score)
    assert res["blobs"]["pic_clusters"] == found
    plain = compare_features({"blobs": blobs}, labels, ok, pca_dim=3, seed=0, split_seed=1)
    assert "pic_nmi" not in plain["blobs"]
