"""Released weights: the reference DeepCluster code's checkpoints (facebookresearch/deepcluster,
models/alexnet.py and models/vgg16.py) read through --init-from, eval_linear and
fastdc.convert_weights, and fastdc's weights written back in the reference's layout.

No file can be downloaded here: the reference state dicts are built in the tests, with the key
names and shapes of the reference code, from the reference's own layer lists (not from fastdc's
key map)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fastdc import convert_weights, eval_linear
from fastdc.deepcluster import (
    CheckpointError,
    Weights,
    build_model,
    main,
    parse_config,
    prepare,
    read_weights,
    write_weights,
)
from fastdc.deepcluster.weights import from_reference, to_reference

# The reference's feature layers: models/alexnet.py CFG['2012'] ((filters, kernel, stride, pad)
# or 'M') and models/vgg16.py make_layers' list. make_layers* append conv, BatchNorm2d, ReLU
# for a conv entry and one MaxPool2d for 'M', so these lists fix the features.<i> indices.
REFERENCE_LAYOUTS = {
    "alexnet": [(96, 11, 4, 2), "M", (256, 5, 1, 2), "M", (384, 3, 1, 1), (384, 3, 1, 1),
                (256, 3, 1, 1), "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
}
# The reference's classifier Sequentials: AlexNet (Dropout, Linear, ReLU, Dropout, Linear,
# ReLU), VGG16 (Linear, ReLU, Dropout, Linear, ReLU): where their two Linear layers sit.
REFERENCE_LINEARS = {"alexnet": (1, 4), "vgg16": (0, 3)}
# The reference's Sobel front: sobel.0 = Conv2d(3, 1, 1) filled with 1/3, sobel.1 =
# Conv2d(1, 2, 3, padding=1) with these two filters; zero biases.
REFERENCE_SOBEL = [[[1, 0, -1], [2, 0, -2], [1, 0, -1]], [[1, 2, 1], [0, 0, 0], [-1, -2, -1]]]


def reference_conv_indices(arch):
    """(conv index, BatchNorm index) in the reference's ``features`` for each conv layer."""
    i, pairs = 0, []
    for entry in REFERENCE_LAYOUTS[arch]:
        if entry == "M":
            i += 1
        else:
            pairs.append((i, i + 1))
            i += 3
    return pairs


def as_reference(model, arch):
    """``model``'s weights under the reference's key names, as a released checkpoint holds them
    (features inside DataParallel, no num_batches_tracked as in files of PyTorch < 0.4.1)."""
    convs = [m for m in model.body if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.body if isinstance(m, nn.BatchNorm2d)]
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    state = {}
    for (ci, bi), conv, bn in zip(reference_conv_indices(arch), convs, bns, strict=True):
        state[f"features.module.{ci}.weight"] = conv.weight
        state[f"features.module.{ci}.bias"] = conv.bias
        for name in ("weight", "bias", "running_mean", "running_var"):
            state[f"features.module.{bi}.{name}"] = getattr(bn, name)
    named = [(f"classifier.{i}", m) for i, m in zip(REFERENCE_LINEARS[arch], linears, strict=True)]
    for prefix, linear in [*named, ("top_layer", model.top_layer)]:
        state[f"{prefix}.weight"], state[f"{prefix}.bias"] = linear.weight, linear.bias
    if model.sobel is not None:
        state["sobel.0.weight"] = torch.full((1, 3, 1, 1), 1.0 / 3.0)
        state["sobel.0.bias"] = torch.zeros(1)
        state["sobel.1.weight"] = torch.tensor(REFERENCE_SOBEL, dtype=torch.float32)[:, None]
        state["sobel.1.bias"] = torch.zeros(2)
    return {k: v.detach().clone() for k, v in state.items()}


def randomise_batchnorm(model, seed=0):
    """Give every BatchNorm non-trivial weights and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t in (m.weight, m.bias, m.running_mean):
                    t.copy_(torch.randn(t.shape, generator=g) * 0.1 + (t is m.weight))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def rgb_folder(root, classes=2, per_class=8, size=64):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A reference-layout AlexNet + Sobel checkpoint (head 10), the fastdc model it holds and a
    folder of 64-px RGB images."""
    root = tmp_path_factory.mktemp("released")
    torch.manual_seed(0)
    model = randomise_batchnorm(build_model("alexnet", 10, 3, sobel=True)).eval()
    path = root / "checkpoint.pth.tar"
    torch.save({"epoch": 500, "arch": "alexnet", "state_dict": as_reference(model, "alexnet"),
                "optimizer": {"state": {}}}, path)
    return model, path, rgb_folder(root / "data")


def test_reference_alexnet_through_init_from_gives_the_native_features(tmp_path, released,
                                                                         capsys):
    model, path, data = released
    args = ["--data", str(data), "--image-size", "64", "--k", "3", "--epochs", "1"]
    trainer = prepare(parse_config([*args, "--init-from", str(path), "--out", str(tmp_path / "a")]))
    assert (trainer.cfg.arch, trainer.cfg.sobel) == ("alexnet", True)  # the weights' own
    assert trainer.cfg.init_from == str(path)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = trainer.model.eval().features(x), model.features(x)
    assert torch.equal(got, want)
    assert trainer.model.top_layer.weight.shape == (3, 4096)  # head dropped: k 3, not 10
    assert "initialised from" in capsys.readouterr().out
    # The same weights in fastdc's layout start the same model.
    native = write_weights(read_weights(path), tmp_path / "native.pt", "fastdc")
    again = prepare(parse_config([*args, "--init-from", str(native), "--out", str(tmp_path / "b")]))
    a, b = trainer.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("top_layer."))


def test_eval_linear_reads_a_reference_checkpoint(tmp_path, released, capsys):
    _, path, data = released
    result = tmp_path / "probes.json"
    assert eval_linear.main(["--checkpoint", str(path), "--data", str(data), "--max-iter", "3",
                             "--json", str(result)]) == 0
    assert "after 500 epochs" in capsys.readouterr().out
    res = json.loads(result.read_text())
    assert res["layout"] == "reference" and res["arch"] == "alexnet" and res["epoch"] == 500
    assert [r["layer"] for r in res["layers"]] == [f"conv{i}" for i in range(1, 6)]
    assert all(0 <= r["trained"] <= 1 for r in res["layers"])


def test_convert_weights_round_trip_both_ways(tmp_path, released, capsys):
    model, path, _ = released
    ours, back = tmp_path / "fastdc.pt", tmp_path / "reference.pth.tar"
    assert convert_weights.main([str(path), str(ours)]) == 0  # default: the other layout
    assert convert_weights.main([str(ours), str(back)]) == 0
    assert "fastdc layout" in capsys.readouterr().out
    native = torch.load(ours, weights_only=False)
    assert native["config"]["arch"] == "alexnet" and native["epoch"] == 500
    again = build_model("alexnet", 10, 3, sobel=True)
    again.load_state_dict(native["model"])  # strict: every fastdc key, nothing else
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in again.state_dict().items()
               if not k.endswith("num_batches_tracked"))
    original = torch.load(path, weights_only=False)["state_dict"]
    written = torch.load(back, weights_only=False)
    assert written["arch"] == "alexnet" and written["epoch"] == 500
    extra = set(written["state_dict"]) - set(original)
    assert extra and all(k.endswith("num_batches_tracked") for k in extra)
    assert all(torch.equal(written["state_dict"][k], v) for k, v in original.items())
    assert convert_weights.main([str(ours), str(back)]) == 2  # OUT exists
    assert "--force" in capsys.readouterr().err
    assert convert_weights.main([str(ours), str(back), "--to", "fastdc", "--force"]) == 0


def test_vgg16_key_map_both_ways():
    with torch.device("meta"):
        model = build_model("vgg16", 7, 3)
    state = as_reference(model, "vgg16")
    weights = from_reference(state)  # the arch is told by its 13 conv layers
    assert (weights.arch, weights.sobel, weights.head) == ("vgg16", False, 7)
    assert set(weights.state) == set(model.state_dict())
    assert weights.state["body.40.weight"].shape == (512, 512, 3, 3)  # conv13 = features.40
    back = to_reference(weights)["state_dict"]
    assert {k for k in back if not k.endswith("num_batches_tracked")} == set(state)


def _mutated(state, change):
    state = dict(state)
    change(state)
    return state


MUTATIONS = {
    "without BatchNorm": lambda s: [s.pop(k) for k in list(s) if "running" in k],
    "not DeepCluster's fixed": lambda s: s.update({"sobel.1.weight": -s["sobel.1.weight"]}),
    "features.module.0.weight has shape (64, 2, 3, 3), expected (96, 2, 11, 11)":
        lambda s: s.update({"features.module.0.weight": torch.zeros(64, 2, 3, 3)}),
    "classifier.4.bias missing": lambda s: s.pop("classifier.4.bias"),
    "'projection.weight' has no place": lambda s: s.update({"projection.weight": torch.ones(1)}),
}


@pytest.mark.parametrize("message", list(MUTATIONS))
def test_reference_weights_that_cannot_convert_are_refused(released, message):
    _, path, _ = released
    state = torch.load(path, weights_only=False)["state_dict"]
    with pytest.raises(CheckpointError) as info:
        from_reference(_mutated(state, MUTATIONS[message]), where="ckpt")
    assert message in str(info.value)


def test_foreign_files_and_nets_without_a_reference_counterpart(tmp_path):
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="neither a fastdc checkpoint nor a reference"):
        read_weights(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_weights(tmp_path / "missing.pt")
    small = Weights("small", False, 1, build_model("small", 5, 1).state_dict(), "fastdc")
    with pytest.raises(CheckpointError, match="no 'small' net"):
        to_reference(small)
    with torch.device("meta"):
        grey = build_model("alexnet", 5, 1, sobel=True).state_dict()
    with pytest.raises(CheckpointError, match="read RGB images"):
        to_reference(Weights("alexnet", True, 1, grey, "fastdc"))


@pytest.fixture
def small_weights(tmp_path):
    """A fastdc weight file of the small net for 1-channel images, and its model."""
    torch.manual_seed(3)
    model = randomise_batchnorm(build_model("small", 5, 1))
    path = write_weights(Weights("small", False, 1, model.state_dict(), "fastdc", 4),
                         tmp_path / "small.pt", "fastdc")
    return model, path


def test_init_from_a_fastdc_checkpoint_keeps_everything_but_the_head(tmp_path, small_weights):
    model, path = small_weights
    args = ["--subset", "100", "--k", "4", "--epochs", "1", "--init-from", str(path)]
    trainer = prepare(parse_config([*args, "--out", str(tmp_path / "run")]))
    got, want = trainer.model.state_dict(), model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want if not k.startswith("top_layer."))
    assert got["top_layer.weight"].shape == (4, 128) and want["top_layer.weight"].shape == (5, 128)
    out = tmp_path / "cli"
    assert main([*args, "--no-final-eval", "--no-plots", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["init_from"] == str(path) and summary["config"]["arch"] == "small"
    # A checkpoint of that run starts another one the same way.
    assert main([*args[:-1], str(out / "checkpoint.pt"), "--out", str(tmp_path / "next"),
                 "--no-final-eval", "--no-plots"]) == 0


def test_init_from_errors(tmp_path, small_weights, released, capsys):
    _, small = small_weights
    _, alexnet, data = released
    (tmp_path / "junk.pt").write_bytes(b"junk")
    cases = [
        (["--init-from", str(alexnet), "--data", str(data), "--arch", "vgg16"],
         "holds alexnet weights, but --arch vgg16 was asked: drop --arch"),
        (["--init-from", str(small), "--sobel"], "without a Sobel front, but --sobel"),
        (["--init-from", str(small), "--data", str(data), "--image-size", "32"],
         "weights for 1-channel images, but the data has 3 channel(s): pass --grey"),
        (["--init-from", str(tmp_path / "junk.pt")], "--init-from: cannot read checkpoint"),
        (["--init-from", str(tmp_path / "nope.pt")], "--init-from: checkpoint"),
    ]
    for argv, message in cases:
        assert main([*argv, "--k", "2", "--out", str(tmp_path / "never")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "never").exists()
