"""``python -m fastdc.visualize``: filter images by gradient ascent and the top images of each
filter, written as PNG grids from a checkpoint of the built-in run's net."""

import numpy as np
import pytest
import torch
from PIL import Image

from fastdc import visualize
from fastdc.deepcluster import Weights, build_model, load_net, top_images, write_weights
from fastdc.deepcluster.visualization import gaussian_blur


@pytest.fixture(scope="module")
def mnist_ckpt(tmp_path_factory):
    """A fastdc weight file of a freshly built net of the built-in run (small, MNIST)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "small.pt"
    write_weights(Weights("small", False, 1, build_model("small", 10, 1).state_dict(), "fastdc",
                          config={"dataset": "mnist"}), path, "fastdc")
    return path


def png(path):
    with Image.open(path) as img:
        return np.asarray(img)


def test_filters_writes_one_tile_per_filter(tmp_path, mnist_ckpt, capsys):
    out = tmp_path / "f.png"
    assert visualize.main(["filters", "--checkpoint", str(mnist_ckpt), "--conv", "2",
                           "--filters", "0-9", "--iterations", "6", "--quiet",
                           "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    img = png(out)
    # 10 filters in rows of 8: 2 rows × 8 columns of 28 px tiles enlarged ×3, 2 px gaps.
    assert img.shape == (2 * 86 + 2, 8 * 86 + 2)
    tile = img[2:86, 2:86]
    assert tile.std() > 0 and abs(float(tile.mean()) - 127.5) < 30


def test_top_images_rows_are_the_most_activating_images(tmp_path, mnist_ckpt, capsys):
    out = tmp_path / "t.png"
    assert visualize.main(["top-images", "--checkpoint", str(mnist_ckpt), "--conv", "3",
                           "--filters", "0,5", "--count", "4", "--subset", "300",
                           "--quiet",
                           "--out", str(out)]) == 0
    assert png(out).shape == (2 * 86 + 2, 4 * 86 + 2)


def test_top_images_match_a_brute_force_ranking():
    from fastdc.deepcluster import load_mnist

    torch.manual_seed(0)
    model = build_model("small", 10, 1).eval()
    src = load_mnist(200)
    index, act = top_images(model, src, 2, [1, 4], 3, torch.device("cpu"), batch_size=64)
    with torch.no_grad():
        full = model.conv_output(src.normalised(torch.device("cpu")), 2).amax((2, 3))
    for row, f in enumerate([1, 4]):
        expect = full[:, f].topk(3)
        assert np.allclose(act[row], expect.values.numpy())
        assert set(index[row]) == set(expect.indices.numpy())


def test_load_net_reads_back_the_weights(mnist_ckpt):
    model = load_net(mnist_ckpt)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_gaussian_blur_keeps_the_mean_and_smooths():
    x = torch.zeros(1, 1, 21, 21)
    x[0, 0, 10, 10] = 1.0
    y = gaussian_blur(x, 1.0)
    assert torch.isclose(y.sum(), torch.tensor(1.0)) and y[0, 0, 10, 10] < 0.2


@pytest.mark.parametrize("argv, message", [
    (["filters", "--conv", "4"], "choose 1 to 3"),
    (["filters", "--filters", "0,99"], "filters 0 to 15"),
    (["filters", "--filters", "a-b"], "--filters expects numbers"),
    (["top-images", "--count", "0"], "--count must be >= 1"),
])
def test_bad_input_is_a_clear_error(mnist_ckpt, capsys, argv, message):
    assert visualize.main([*argv, "--checkpoint", str(mnist_ckpt), "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_an_empty_folder_and_an_unknown_checkpoint_are_clear_errors(tmp_path, mnist_ckpt,
                                                                    capsys):
    (tmp_path / "empty").mkdir()
    assert visualize.main(["top-images", "--checkpoint", str(mnist_ckpt), "--data",
                           str(tmp_path / "empty"), "--quiet"]) == 2
    assert "no images found" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    torch.save({"something": torch.zeros(2)}, junk)
    assert visualize.main(["filters", "--checkpoint", str(junk), "--quiet"]) == 2
    assert "error:" in capsys.readouterr().err
