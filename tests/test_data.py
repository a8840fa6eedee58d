"""fastdc.deepcluster.data: the MNIST subset, batched augmentation, folders with unreadable
images."""

import numpy as np
import pytest
import torch
from PIL import Image

from fastdc.deepcluster.data import (
    DataError,
    FolderSource,
    load_mnist,
    load_source,
    mnist_arrays,
    random_resized_crop,
    scan_folder,
    subset_indices,
)
from fastdc.deepcluster.seeds import derive_seed

CPU = torch.device("cpu")


def write_folder(root, per_class=4, size=20, corrupt=True):
    """Two class folders of small RGB PNGs, plus (corrupt=True) a truncated PNG and a text
    file with a .png name. Returns the paths of the bad files."""
    rng = np.random.default_rng(0)
    for cname in ("cats", "dogs"):
        (root / cname).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cname / f"{i:02d}.png")
    bad = []
    if corrupt:
        good = (root / "cats" / "00.png").read_bytes()
        (root / "cats" / "zz_truncated.png").write_bytes(good[: len(good) // 2])
        (root / "dogs" / "zz_not_an_image.png").write_text("hello")
        bad = [str(root / "cats" / "zz_truncated.png"), str(root / "dogs" / "zz_not_an_image.png")]
    (root / "dogs" / "notes.txt").write_text("ignored: not an image extension")
    return bad


def test_mnist_subset():
    src = load_mnist(subset=300)
    assert len(src) == 300 and src.images.dtype == torch.uint8
    assert src.images.shape == (300, 1, 28, 28) and src.labels.shape == (300,)
    assert len(np.unique(src.labels)) == 10  # the subset keeps every digit
    batch = next(src.eval_batches(64, CPU))
    assert batch.images.shape == (64, 1, 28, 28) and batch.images.dtype == torch.float32
    assert abs(float(batch.images.mean())) < 1.0 and bool(batch.ok.all())
    # the raw-pixel rows of the final evaluation: the eval batches' images, flattened
    pixels = src.pixels(CPU)
    assert pixels.shape == (300, 784) and pixels.dtype == torch.float32
    torch.testing.assert_close(pixels[:64], batch.images.flatten(1), rtol=0, atol=0)


def test_derive_seed_is_deterministic_and_distinct():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    seeds = {derive_seed(s, e, b) for s in range(3) for e in range(3) for b in range(3)}
    assert len(seeds) == 27
    assert 0 <= derive_seed(123, 4) < 2**63


def test_random_resized_crop():
    x = torch.randn(5, 2, 12, 10)
    same = random_resized_crop(x, torch.Generator().manual_seed(0), scale=(1.0, 1.0),
                               ratio=(1.0, 1.0), flip=False)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=1e-5)  # whole image: identity
    a = random_resized_crop(x, torch.Generator().manual_seed(1))
    b = random_resized_crop(x, torch.Generator().manual_seed(1))
    c = random_resized_crop(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)


def test_train_batches_resume_mid_epoch_gives_the_same_batches():
    src = load_mnist(subset=200)
    order = np.random.default_rng(0).integers(0, 200, 150)
    full = list(src.train_batches(order, 32, seed=5, epoch=3, device=CPU))
    tail = list(src.train_batches(order, 32, seed=5, epoch=3, device=CPU, start_batch=2))
    assert len(full) == 5 and len(tail) == 3
    for f, t in zip(full[2:], tail, strict=True):
        assert torch.equal(f.images, t.images) and torch.equal(f.index, t.index)


def test_scan_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_folder(tmp_path / "missing")
    (tmp_path / "empty" / "class_a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        scan_folder(tmp_path / "empty")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError, match="is a file"):
        scan_folder(tmp_path / "file.png")
    with pytest.raises(DataError, match="unknown --dataset"):
        load_source(None, "imagenet")


def test_flat_folder_has_no_labels(tmp_path):
    for i in range(3):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"{i}.jpg")
    src = FolderSource(tmp_path, image_size=8)
    assert len(src) == 3 and src.labels is None and src.classes == []
    assert src.pixels(CPU) is None  # folders are read batch by batch, never held whole


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_images_are_skipped_and_reported(tmp_path, workers):
    bad = write_folder(tmp_path)
    src = FolderSource(tmp_path, image_size=16)
    assert len(src) == 10 and src.classes == ["cats", "dogs"]
    batches = list(src.eval_batches(4, CPU, workers=workers))
    ok = torch.cat([b.ok for b in batches])
    errors = {i: e for b in batches for i, e in b.errors.items()}
    assert int((~ok).sum()) == 2
    assert sorted(src.path(i) for i in errors) == sorted(bad)
    assert all(e for e in errors.values())  # every skip carries its reason
    images = torch.cat([b.images for b in batches])
    assert images.shape == (10, 3, 16, 16) and bool(torch.all(images[~ok] == 0))
    # The training pass skips them the same way and its crops depend only on the seed.
    order = np.arange(10)[::-1].copy()
    run1 = list(src.train_batches(order, 4, seed=1, epoch=0, device=CPU, workers=workers))
    run2 = list(src.train_batches(order, 4, seed=1, epoch=0, device=CPU))
    assert sum(int((~b.ok).sum()) for b in run1) == 2
    for a, b in zip(run1, run2, strict=True):
        assert torch.equal(a.images, b.images)


def test_subset_draws_across_classes_in_proportion_and_by_seed():
    labels = np.repeat([0, 1, 2], [50, 30, 20])  # sorted: the first 10 are all class 0
    keep = subset_indices(labels, 100, 10, seed=0)
    assert keep.dtype == np.int64 and len(keep) == 10 and np.all(np.diff(keep) > 0)
    assert np.bincount(labels[keep]).tolist() == [5, 3, 2]
    np.testing.assert_array_equal(keep, subset_indices(labels, 100, 10, seed=0))
    assert not np.array_equal(keep, subset_indices(labels, 100, 10, seed=1))
    # shares 3.5, 2.1, 1.4: 3 + 2 + 1, and the image left over to the largest remainder
    assert np.bincount(labels[subset_indices(labels, 100, 7, seed=0)]).tolist() == [4, 2, 1]
    few = subset_indices(np.repeat([0, 1, 2, 3], 5), 20, 3, seed=0)
    assert len(np.unique(few // 5)) == 3  # fewer images than classes: one class each
    uniform = subset_indices(None, 100, 10, seed=0)  # no classes: a seeded uniform draw
    assert len(np.unique(uniform)) == 10 and not np.array_equal(uniform, np.arange(10))
    np.testing.assert_array_equal(subset_indices(labels, 100, 500, seed=0), np.arange(100))
    with pytest.raises(DataError, match="--subset must be >= 1"):
        subset_indices(labels, 100, 0, seed=0)


def test_subset_of_a_folder_and_of_mnist_keeps_every_class(tmp_path):
    write_folder(tmp_path, per_class=4, corrupt=False)
    src = load_source(str(tmp_path), None, subset=4, seed=0, image_size=16)
    assert len(src) == 4 and np.bincount(src.labels).tolist() == [2, 2]
    assert [src.path(i).split("/")[-2] for i in range(4)] == ["cats", "cats", "dogs", "dogs"]
    digits = load_mnist(subset=300, seed=0)
    assert np.bincount(digits.labels).tolist() == [30] * 10
    other = load_mnist(subset=300, seed=1)
    assert not torch.equal(digits.images, other.images)
    # Without --subset (the default run) the data is all of it, in its order.
    np.testing.assert_array_equal(load_source(None, None).labels, mnist_arrays()[1])
