"""``eval_linear --protocol paper``: the reference's linear evaluation of one frozen conv layer
(SGD on crops, ten-crop top-1 / top-5, the best epoch, a log), end to end on a tiny folder."""

import json

import pytest
import torch

from fastdc import eval_linear
from fastdc.deepcluster import Weights, build_model, write_weights
from fastdc.evaluation import ten_crops, topk_correct
from tests.test_weights import rgb_folder


def image_folder(root, per_class=4):
    """root/<class>/<i>.png: two classes of 32×32 RGB noise."""
    rgb_folder(root, per_class=per_class, size=32)
    return root


@pytest.fixture(scope="module")
def small_rgb(tmp_path_factory):
    """A fastdc weight file of a freshly built small RGB net that reads 32×32 images."""
    torch.manual_seed(0)
    model = build_model("small", 4, 3)
    path = tmp_path_factory.mktemp("w") / "small.pt"
    write_weights(Weights("small", False, 3, model.state_dict(), "fastdc",
                          config={"image_size": 32}), path, "fastdc")
    return path


def test_paper_protocol_runs_end_to_end_on_a_small_folder(tmp_path, small_rgb, capsys):
    data = image_folder(tmp_path / "data")
    log, res_file = tmp_path / "log.jsonl", tmp_path / "res.json"
    assert eval_linear.main(["--protocol", "paper", "--conv", "3", "--epochs", "2",
                             "--checkpoint", str(small_rgb), "--data", str(data),
                             "--batch-size", "4", "--test-fraction", "0.25", "--quiet",
                             "--log", str(log), "--json", str(res_file)]) == 0
    out = capsys.readouterr().out
    assert "linear classifier on conv3 of small" in out and "best: epoch" in out
    res = json.loads(res_file.read_text())
    assert res["crops"] == "ten" and res["conv"] == 3
    assert res["train_images"] == 6 and res["val_images"] == 2
    assert [r["epoch"] for r in res["epochs"]] == [1, 2]
    assert all(0 <= r["top1"] <= r["top5"] <= 1 for r in res["epochs"])
    assert res["best"]["top1"] == max(r["top1"] for r in res["epochs"])
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2]


def test_paper_protocol_uses_train_and_val_folders_and_centre_crops(tmp_path, small_rgb, capsys):
    image_folder(tmp_path / "data" / "train", per_class=3)
    image_folder(tmp_path / "data" / "val", per_class=2)
    res_file = tmp_path / "res.json"
    assert eval_linear.main(["--protocol", "paper", "--conv", "1", "--epochs", "1",
                             "--checkpoint", str(small_rgb), "--data", str(tmp_path / "data"),
                             "--centre-crop", "--quiet", "--json", str(res_file)]) == 0
    res = json.loads(res_file.read_text())
    assert (res["train_images"], res["val_images"], res["crops"]) == (6, 4, "centre")


@pytest.mark.parametrize("conv", ["0", "4"])
def test_conv_out_of_range_lists_the_valid_layers(tmp_path, small_rgb, capsys, conv):
    data = image_folder(tmp_path / "data", per_class=2)
    assert eval_linear.main(["--protocol", "paper", "--conv", conv, "--checkpoint",
                             str(small_rgb), "--data", str(data), "--quiet"]) == 2
    assert "choose 1 to 3" in capsys.readouterr().err


def test_an_empty_folder_is_a_clear_error(tmp_path, small_rgb, capsys):
    (tmp_path / "empty").mkdir()
    assert eval_linear.main(["--protocol", "paper", "--checkpoint", str(small_rgb),
                             "--data", str(tmp_path / "empty")]) == 2
    assert "no images found" in capsys.readouterr().err


def test_ten_crops_are_the_corners_the_centre_and_their_mirrors():
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    crops = ten_crops(x, fraction=1.0)
    assert crops.shape == (20, 1, 8, 8)
    assert torch.equal(crops[:2], x) and torch.equal(crops[10:12], x.flip(-1))


def test_topk_counts_labels_among_the_best_scores():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.0, 0.1, 0.2]])
    assert topk_correct(logits, torch.tensor([1, 2, 0]), (1, 2, 5)) == [1, 2, 3]
