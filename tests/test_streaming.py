"""Streaming: feature stores (RAM / memmap, atomic creation), streamed PCA-whitening and streamed
k-means against the in-memory ones (k-means bit for bit when both read the same chunks), and a
tiny trainer run."""

import json

import numpy as np
import pytest
import torch

from fastdc.deepcluster import main
from fastdc.engine import FeatureStore, kmeans, kmeans_streaming, pca_whiten, pca_whiten_streaming


def blobs(n: int, d: int, centres: int, seed: int = 0) -> torch.Tensor:
    """[n, d] float32: Gaussian blobs around `centres` random centres (well-separated)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centres, d, generator=g) * 4
    return c[torch.randint(centres, (n,), generator=g)] + torch.randn(n, d, generator=g)


def assert_identical(res, ref):
    """Bit-identical k-means results (assignments and dist compared on the CPU)."""
    assert torch.equal(res.centroids, ref.centroids)
    assert torch.equal(res.assignments.cpu(), ref.assignments.cpu())
    assert torch.equal(res.dist.cpu(), ref.dist.cpu())
    for name in ("obj", "nsplit", "imbalance"):
        assert torch.equal(getattr(res, name), getattr(ref, name)), name


def assert_same_kmeans(res, ref):
    assert res.assignments.dtype == torch.int64 and res.assignments.device.type == "cpu"
    torch.testing.assert_close(res.centroids, ref.centroids, atol=1e-5, rtol=0)
    agree = (res.assignments == ref.assignments).float().mean().item()
    assert agree >= 0.999, agree
    torch.testing.assert_close(res.obj, ref.obj, rtol=1e-5, atol=1e-3)
    assert torch.equal(res.nsplit, ref.nsplit)


@pytest.mark.parametrize("chunk", [1000, 333, 64, 7])  # 1000 = N: one chunk; the rest uneven
@pytest.mark.parametrize("spherical", [False, True])
def test_kmeans_streaming_matches_kmeans_bit_for_bit_in_the_same_chunks(chunk, spherical):
    x = blobs(1000, 12, 10)
    if spherical:
        x = x / x.norm(dim=1, keepdim=True)
    ref = kmeans(x, 16, niter=8, seed=5, spherical=spherical)
    res = kmeans_streaming(FeatureStore.from_tensor(x), 16, niter=8, seed=5,
                           spherical=spherical, device="cpu", chunk_rows=chunk)
    assert_same_kmeans(res, ref)
    # read in the same chunks, the in-memory loop gives the same bits
    exact = kmeans(x, 16, niter=8, seed=5, spherical=spherical, chunk_rows=chunk)
    assert_identical(res, exact)
    if chunk >= len(x):  # one chunk: the in-memory default (one block) is that same run
        assert_identical(res, ref)


def test_kmeans_streaming_one_row_chunks_and_empty_cluster_resplits():
    x = blobs(5, 6, 5, seed=1).repeat(30, 1)  # 5 distinct rows, k = 12: empties re-split
    ref = kmeans(x, 12, niter=5, seed=2)
    res = kmeans_streaming(FeatureStore.from_tensor(x), 12, niter=5, seed=2, device="cpu",
                           chunk_rows=1)
    assert_same_kmeans(res, ref)
    assert int(ref.nsplit.sum()) > 0  # the re-split path was exercised
    assert_identical(res, kmeans(x, 12, niter=5, seed=2, chunk_rows=1))


def test_kmeans_streaming_tensor_init_matches_lloyd():
    x = blobs(500, 8, 6, seed=3)
    init = x[:4] + 0.5  # 4 given centroids, the other 2 drawn at random
    ref = kmeans(x, 6, niter=4, seed=9, init=init)
    res = kmeans_streaming(FeatureStore.from_tensor(x), 6, niter=4, seed=9, init=init,
                           device="cpu", chunk_rows=77)
    assert_same_kmeans(res, ref)
    assert_identical(res, kmeans(x, 6, niter=4, seed=9, init=init, chunk_rows=77))
    with pytest.raises(ValueError, match="kmeans\\+\\+"):
        kmeans_streaming(FeatureStore.from_tensor(x), 6, init="kmeans++", device="cpu")


def test_kmeans_streaming_on_fp16_store_matches_lloyd_on_rounded_data():
    x = blobs(900, 10, 8, seed=4)
    store = FeatureStore.from_tensor(x, torch.float16)
    assert store.dtype == torch.float16 and store.data.element_size() == 2
    ref = kmeans(x.half().float(), 8, niter=6, seed=1)
    res = kmeans_streaming(store, 8, niter=6, seed=1, device="cpu", chunk_rows=128)
    assert_same_kmeans(res, ref)
    assert_identical(res, kmeans(x.half().float(), 8, niter=6, seed=1, chunk_rows=128))


def test_kmeans_streaming_rejects_bad_input():
    x = blobs(50, 4, 2)
    with pytest.raises(ValueError, match="fewer than k"):
        kmeans_streaming(FeatureStore.from_tensor(x), 60, device="cpu")
    x[17, 2] = float("nan")
    with pytest.raises(ValueError, match="row 17"):
        kmeans_streaming(FeatureStore.from_tensor(x), 3, device="cpu", chunk_rows=8)


def test_memmap_store_round_trip(tmp_path):
    x = blobs(301, 9, 4)
    store = FeatureStore.create(tmp_path, 301, 9, torch.float16, name="feats")
    assert store.on_disk and store.shape == (301, 9)
    for start in range(0, 301, 100):  # written by row ranges
        store.write(start, x[start : start + 100])
    store.write(torch.tensor([300, 5]), x[[300, 5]])  # and by row indices
    store.finalize()
    opened = FeatureStore.open(tmp_path, "feats")
    assert opened.dtype == torch.float16 and opened.shape == (301, 9)
    assert torch.equal(opened.data, x.half())
    blocks = list(opened.chunks(64))
    assert [len(b) for b in blocks] == [64, 64, 64, 64, 45]
    assert torch.equal(torch.cat(blocks), x.half())
    # the clustering of the memmap equals the clustering of the same rows in RAM
    a = kmeans_streaming(opened, 5, niter=3, seed=0, device="cpu", chunk_rows=50)
    b = kmeans_streaming(FeatureStore.from_tensor(x.half()), 5, niter=3, seed=0, device="cpu")
    assert torch.equal(a.assignments, b.assignments)
    assert_identical(a, kmeans(x.half().float(), 5, niter=3, seed=0, chunk_rows=50))
    # fp32 on disk is exact
    s32 = FeatureStore.create(tmp_path, 301, 9, torch.float32, name="f32")
    s32.write(0, x)
    assert torch.equal(s32.finalize().data, x)
    assert torch.equal(FeatureStore.open(tmp_path, "f32").data, x)


def test_interrupted_write_never_looks_complete(tmp_path):
    x = blobs(40, 3, 2)
    with pytest.raises(FileNotFoundError):
        FeatureStore.open(tmp_path, "features")
    half = FeatureStore.create(tmp_path, 40, 3, torch.float32)
    half.write(0, x[:20])  # "crash" here: never finalized
    del half
    assert list(tmp_path.glob("*.json")) == []  # nothing announces a cache
    with pytest.raises(FileNotFoundError):
        FeatureStore.open(tmp_path, "features")
    # a complete cache, then an interrupted rewrite: the old one stays intact and valid
    done = FeatureStore.create(tmp_path, 40, 3, torch.float32)
    assert not list(tmp_path.glob("features.*.partial"))[1:]  # the stale partial was removed
    done.write(0, x)
    done.finalize()
    redo = FeatureStore.create(tmp_path, 40, 3, torch.float32)
    redo.write(0, torch.zeros(10, 3))
    assert torch.equal(FeatureStore.open(tmp_path).data, x)
    redo.write(0, x * 2)
    redo.finalize()
    assert torch.equal(FeatureStore.open(tmp_path).data, x * 2)
    assert len(list(tmp_path.glob("features.*.bin"))) == 1  # the old data file is gone
    # a truncated data file is refused rather than read
    meta = json.loads((tmp_path / "features.json").read_text())
    data_file = tmp_path / meta["file"]
    data_file.write_bytes(data_file.read_bytes()[:100])
    with pytest.raises(ValueError, match="not"):
        FeatureStore.open(tmp_path)


def _align_signs(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """a with each column's sign flipped to agree with ref's (PCA components have no sign)."""
    return a * torch.sign((a * ref).sum(dim=0))


@pytest.mark.parametrize("chunk", [1, 97, 5000])
def test_pca_whiten_streaming_matches_pca_whiten(chunk):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 12, generator=g) @ torch.randn(12, 12, generator=g) + 3.0
    ref = pca_whiten(x, 6)
    out = pca_whiten_streaming(FeatureStore.from_tensor(x), 6, device="cpu", chunk_rows=chunk)
    assert out.dtype == torch.float32 and out.shape == (400, 6)
    torch.testing.assert_close(_align_signs(out.data, ref), ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.data.norm(dim=1), torch.ones(400), atol=1e-5, rtol=0)


def test_pca_whiten_streaming_fp16_memmap_output(tmp_path):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 10, generator=g) @ torch.randn(10, 10, generator=g)
    store = FeatureStore.from_tensor(x, torch.float16)
    out = pca_whiten_streaming(store, 4, device="cpu", chunk_rows=64, out_dir=tmp_path)
    assert out.on_disk and out.dtype == torch.float16 and out.shape == (300, 4)
    ref = pca_whiten(x.half().float(), 4)
    torch.testing.assert_close(_align_signs(out.data.float(), ref), ref, atol=2e-3, rtol=0)
    assert torch.equal(FeatureStore.open(tmp_path, "whitened").data, out.data)


def test_tiny_train_run_with_fp16_feature_cache(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = ["--subset", "300", "--epochs", "1", "--k", "5", "--batch-size", "64",
            "--pca-dim", "16", "--feature-dtype", "float16", "--feature-cache", str(cache),
            "--kmeans-chunk", "70", "--no-final-eval", "--no-plots", "--out", str(out)]
    assert main(args) == 0
    a = np.load(out / "assignments" / "epoch_001.npy")
    assert a.shape == (300,) and a.min() >= 0 and a.max() < 5
    assert len(np.unique(a)) == 5
    features = FeatureStore.open(cache, "features")
    assert features.dtype == torch.float16 and len(features) == 300
    assert torch.isfinite(features.data.float()).all() and features.data.abs().sum() > 0
    assert FeatureStore.open(cache, "whitened").shape == (300, 16)
    assert list(cache.glob("*.partial")) == []
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert np.isfinite(log[0]["clustering_loss"]) and np.isfinite(log[0]["train_loss"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["feature_dtype"] == "float16"


def _two_rank_worker(group) -> dict:
    from fastdc.engine import collectives as fdist

    g = torch.Generator().manual_seed(0)
    x = torch.randn(601, 8, generator=g) @ torch.randn(8, 8, generator=g)
    a, b = fdist.shard_range(len(x), group)
    white = pca_whiten_streaming(FeatureStore.from_tensor(x[a:b]), 5, device="cpu",
                                 chunk_rows=50, group=group)
    res = kmeans_streaming(white, 7, niter=5, seed=3, device="cpu", chunk_rows=33, group=group)
    return {"white": white.data, "centroids": res.centroids, "obj": res.obj,
            "labels": fdist.gather_rows(res.assignments, group)}


def test_two_gloo_ranks_match_one_process():
    from fastdc.engine import collectives as fdist

    r0, r1 = fdist.spawn(_two_rank_worker, 2, timeout_s=120)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(601, 8, generator=g) @ torch.randn(8, 8, generator=g)
    one = pca_whiten_streaming(FeatureStore.from_tensor(x), 5, device="cpu", chunk_rows=50)
    ref = kmeans_streaming(one, 7, niter=5, seed=3, device="cpu", chunk_rows=33)
    torch.testing.assert_close(torch.cat([r0["white"], r1["white"]]), one.data, atol=1e-5,
                               rtol=0)
    for r in (r0, r1):
        torch.testing.assert_close(r["centroids"], ref.centroids, atol=1e-5, rtol=0)
        torch.testing.assert_close(r["obj"], ref.obj, rtol=1e-6, atol=0)
        assert (r["labels"] == ref.assignments).float().mean() >= 0.999
