"""fastdc.deepcluster.auto: what a folder looks like, the settings each --preset picks for it,
explicit flags winning, and a run on a folder with nothing but --data."""

import json

import numpy as np
import pytest
from PIL import Image

from fastdc.deepcluster import main, parse_config
from fastdc.deepcluster.auto import (
    MNIST,
    PAPER,
    FolderShape,
    apply_choices,
    inspect_folder,
    preset_choices,
)
from fastdc.deepcluster.data import DataError, FolderSource, TensorSource, load_source


def make_folder(root, *, classes=3, per_class=4, side=32, colour=True, seed=0):
    """classes × per_class random images of side × side px (RGB or L) in class folders;
    classes=0: the images directly in root."""
    rng = np.random.default_rng(seed)
    shape = (side, side, 3) if colour else (side, side)
    for c in range(max(classes, 1)):
        folder = root / f"class{c}" if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(
                folder / f"{i}.png")
    return root


def chosen(preset, shape, **kw):
    return {c.key: c.value for c in preset_choices(preset, shape, **kw)}


@pytest.mark.parametrize(("side", "colour", "classes", "want"), [
    (32, True, 10, {"image_size": 32, "grey": False, "flip": True, "k": 20, "batch_size": 64}),
    (8, False, 10, {"image_size": 16, "grey": True, "flip": False}),  # up-sampled to 16
    (90, True, 2, {"image_size": 64, "grey": False, "flip": True, "k": 8}),  # down to 64
    (20, False, 0, {"image_size": 20, "grey": True, "k": 4}),  # no classes, 4 images
])
def test_a_small_folder_of_each_shape_gets_the_small_net_at_its_resolution(
        tmp_path, side, colour, classes, want):
    shape = inspect_folder(make_folder(tmp_path, classes=classes, side=side, colour=colour))
    assert shape == FolderShape(max(classes, 1) * 4, side, colour, classes)
    got = chosen("auto", shape)
    assert got["arch"] == "small" and got["memory"] and not got["sobel"]
    assert got["crop_scale"] == 0.5 and got["pca_dim"] == 32 and got["lr"] == 0.1
    assert {key: got[key] for key in want} == want


def test_k_epochs_and_batch_follow_the_number_of_images():
    few = chosen("auto", FolderShape(200, 32, True, 2))
    some = chosen("auto", FolderShape(2_000, 32, True, 10))
    many = chosen("auto", FolderShape(50_000, 32, True, 10))
    assert (few["k"], few["epochs"], few["batch_size"]) == (10, 30, 64)
    assert (some["k"], some["epochs"], some["batch_size"]) == (80, 24, 128)
    assert (many["k"], many["epochs"], many["batch_size"]) == (2_000, 12, 128)
    assert chosen("auto", FolderShape(4, 32, True, 0))["k"] == 4  # at most one per image


def test_imagenet_like_data_gets_the_papers_settings_and_smaller_data_does_not():
    assert chosen("auto", FolderShape(1_281_167, 400, True, 1000)) == PAPER
    assert chosen("auto", FolderShape(100_000, 128, True, 0)) == PAPER
    assert chosen("auto", FolderShape(99_999, 400, True, 1000))["arch"] == "small"
    assert chosen("auto", FolderShape(500_000, 64, True, 1000))["arch"] == "small"
    assert chosen("paper", FolderShape(300, 32, True, 3)) == PAPER
    assert chosen("auto", None) == MNIST  # the built-in data set
    mnist = chosen("mnist", FolderShape(300, 32, True, 3))
    assert mnist == {**MNIST, "image_size": 28, "memory": True}
    deeper = chosen("auto", FolderShape(1_281_167, 400, True, 1000), method="deepercluster")
    assert (deeper["arch"], deeper["k"], deeper["pca_dim"]) == ("vgg16", 2_500, 4096)
    small = chosen("auto", FolderShape(2_000, 32, True, 10), method="deepercluster")
    assert (small["arch"], small["super_classes"], small["k"]) == ("small", 4, 25)


def test_a_given_architecture_raises_the_image_size_to_what_it_needs():
    got = chosen("auto", FolderShape(2_000, 32, True, 10), arch="alexnet")
    assert got["image_size"] == 63


def test_explicit_flags_win_and_are_marked_given(tmp_path):
    cfg = parse_config(["--data", str(tmp_path), "--k", "7", "--no-flip", "--image-size", "24"])
    apply_choices(cfg, preset_choices("auto", FolderShape(2_000, 32, True, 10)))
    assert (cfg.k, cfg.flip, cfg.image_size, cfg.arch) == (7, False, 24, "small")
    assert cfg.choices["k"] == {"value": 7, "reason": "given on the command line"}
    assert "the small net" in cfg.choices["arch"]["reason"]
    assert cfg.choices["flip"] == {"value": False, "reason": "given on the command line"}


def test_inspect_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        inspect_folder(tmp_path / "none")
    (tmp_path / "a.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="could be read"):
        inspect_folder(tmp_path)


def test_grey_images_saved_as_rgb_count_as_grey(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        grey = rng.integers(0, 256, (16, 16), dtype=np.uint8)
        Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / f"{i}.png")
    assert not inspect_folder(tmp_path).colour


def test_a_small_folder_is_held_in_memory_unless_an_image_is_unreadable(tmp_path):
    data = make_folder(tmp_path / "d", classes=2, per_class=3, side=20)
    Image.fromarray(np.zeros((10, 30, 3), np.uint8)).save(data / "class0" / "wide.png")
    src = load_source(str(data), None, image_size=16, memory=True)
    assert isinstance(src, TensorSource) and src.images.shape == (7, 3, 16, 16)
    assert src.labels.tolist() == [0, 0, 0, 0, 1, 1, 1] and src.classes == ["class0", "class1"]
    streamed = FolderSource(data, image_size=16)
    first = next(iter(streamed.eval_batches(7, src.images.device))).images
    assert first.shape == src.normalised(first.device).shape
    (data / "class1" / "bad.png").write_bytes(b"broken")
    assert isinstance(load_source(str(data), None, image_size=16, memory=True), FolderSource)


def test_data_alone_picks_prints_and_records_the_settings(tmp_path, capsys):
    data = make_folder(tmp_path / "d", classes=2, per_class=10, side=12, colour=False)
    out = tmp_path / "run"
    assert main(["--data", str(data), "--epochs", "2", "--no-plots", "--no-final-eval",
                 "--out", str(out)]) == 0
    console = capsys.readouterr().out
    assert "settings (--preset auto):" in console
    assert "--arch small: 20 grey images of 12 px in 2 classes" in console
    assert "--image-size 16: 12-px images up-sampled to 16 px" in console
    assert "--no-flip: no flips" in console and "--epochs 2: given on the command line" in console
    summary = json.loads((out / "summary.json").read_text())
    cfg = summary["config"]
    assert (cfg["arch"], cfg["image_size"], cfg["grey"], cfg["memory"]) == ("small", 16, True,
                                                                            True)
    assert cfg["choices"]["k"] == {"value": 10, "reason": cfg["choices"]["k"]["reason"]}
    # A resumed run keeps its settings and does not choose again.
    assert main(["--resume", "--out", str(out), "--epochs", "3", "--no-plots",
                 "--no-final-eval"]) == 0
    assert "settings (--preset" not in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["config"]["image_size"] == 16


def test_the_choice_counts_the_subset_and_a_bad_preset_is_refused(tmp_path):
    from fastdc.deepcluster.launch import choose_settings

    data = make_folder(tmp_path / "d", classes=2, per_class=600, side=8, colour=False)
    full = parse_config(["--data", str(data)])
    choose_settings(full)
    part = parse_config(["--data", str(data), "--subset", "300"])
    choose_settings(part)
    assert (full.k, full.batch_size, part.k, part.epochs) == (48, 64, 12, 30)
    with pytest.raises(SystemExit):
        parse_config(["--preset", "imagenet"])
