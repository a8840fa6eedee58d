"""fastdc.train end to end on tiny data: outputs, exact resume after a signal, the sampler,
folders with unreadable images, and the error messages for bad input."""

import json
import re
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from fastdc.deepcluster import (
    Interrupted,
    Trainer,
    UsageError,
    load_checkpoint,
    load_mnist,
    main,
    parse_config,
    resolve_defaults,
    train,
)

# A few hundred digits, 2 epochs, tiny k: about a second per epoch on the 2-core CPU.
TINY = ["--subset", "300", "--epochs", "2", "--k", "8", "--batch-size", "64", "--pca-dim", "16"]


def read_log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_tiny_end_to_end_run_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--out", str(out)]) == 0
    console = capsys.readouterr().out
    assert "epoch   2/2" in console and "final evaluation" in console
    for name in ("checkpoint.pt", "log.jsonl", "summary.json", "curves.png", "clusters.png"):
        assert (out / name).is_file(), name
    for epoch in (1, 2):
        a = np.load(out / "assignments" / f"epoch_{epoch:03d}.npy")
        assert a.dtype == np.int32 and a.shape == (300,)
        assert a.min() >= 0 and a.max() < 8
    log = read_log(out)
    assert [r["epoch"] for r in log] == [1, 2]
    assert log[0]["nmi_prev"] is None and 0.0 <= log[1]["nmi_prev"] <= 1.0
    assert all(0.0 <= r["nmi_labels"] <= 1.0 and np.isfinite(r["train_loss"]) for r in log)
    summary = json.loads((out / "summary.json").read_text())
    ev = summary["final_evaluation"]
    assert ev["classes"] == 10 and ev["train"] + ev["test"] == 300
    for column in ("trained", "random init", "raw pixels"):
        assert 0.0 <= ev[column]["kmeans_nmi"] <= 1.0
        assert 0.0 <= ev[column]["linear_probe_acc"] <= 1.0
    assert summary["config"]["k"] == 8 and summary["wall_time_s"] > 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["partial"] is None
    np.testing.assert_array_equal(ckpt["assignment"], np.load(out / "assignments" /
                                                              "epoch_002.npy"))


def _stop_at(epoch, batch, signum=signal.SIGINT):
    """An on_batch hook that sends ``signum`` to this process after the given batch."""

    def hook(e, b):
        if (e, b) == (epoch, batch):
            signal.raise_signal(signum)

    return hook


QUIET = [*TINY, "--no-final-eval", "--no-plots"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The folder of an uninterrupted tiny run (shared by the resume tests)."""
    ref = tmp_path_factory.mktemp("uninterrupted")
    train(parse_config([*QUIET, "--out", str(ref)]))
    return ref


@pytest.mark.parametrize("stop", [(1, 2, signal.SIGINT), (0, 4, signal.SIGTERM)])
def test_resume_after_a_signal_equals_an_uninterrupted_run(tmp_path, uninterrupted, stop):
    args, ref = QUIET, uninterrupted
    out = tmp_path / "stopped"
    # The handlers in place before the run (SIG_IGN for SIGINT in a process started in the
    # background or under nohup) are the ones the run must leave behind.
    found = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(Interrupted) as info:
        train(parse_config([*args, "--out", str(out)]), on_batch=_stop_at(*stop))
    assert info.value.signum == stop[2]
    saved = torch.load(out / "checkpoint.pt", weights_only=False)
    assert saved["epoch"] == stop[0] and saved["partial"]["batch"] == stop[1]
    assert {sig: signal.getsignal(sig) for sig in found} == found  # handlers restored

    train(parse_config(["--resume", "--out", str(out)]))
    a = torch.load(ref / "checkpoint.pt", weights_only=False)
    b = torch.load(out / "checkpoint.pt", weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    np.testing.assert_array_equal(a["assignment"], b["assignment"])
    for ra, rb in zip(read_log(ref), read_log(out), strict=True):
        for key in ("clustering_loss", "train_loss", "nmi_prev", "nmi_labels"):
            assert ra[key] == rb[key], key
    for epoch in (1, 2):
        name = f"assignments/epoch_{epoch:03d}.npy"
        np.testing.assert_array_equal(np.load(ref / name), np.load(out / name))


def test_sampler_draws_uniformly_over_non_empty_clusters(tmp_path):
    cfg = resolve_defaults(parse_config([*TINY, "--out", str(tmp_path)]), load_mnist(300))
    cfg.reassign = 2.0
    trainer = Trainer(cfg, load_mnist(300), tmp_path)
    assignment = np.repeat(np.arange(8), [100, 60, 40, 40, 30, 20, 9, 1])
    assignment[[5, 7]] = 7
    assignment[assignment == 6] = -1  # unreadable images: never sampled, cluster 6 empty
    order = trainer.pseudo_labels.sample_order(assignment, epoch=0)
    valid = int((assignment >= 0).sum())
    assert order.dtype == np.int64 and len(order) == 2 * valid
    assert np.all(assignment[order] >= 0)
    counts = np.bincount(assignment[order], minlength=8)
    assert counts[6] == 0
    nonempty = counts[counts > 0]
    per_cluster = len(order) // 7 + 1  # drawn per cluster, then cut to len(order)
    assert len(nonempty) == 7 and nonempty.max() <= per_cluster
    assert nonempty.min() >= per_cluster - 7
    np.testing.assert_array_equal(order, trainer.pseudo_labels.sample_order(assignment, epoch=0))
    assert not np.array_equal(order, trainer.pseudo_labels.sample_order(assignment, epoch=1))


def test_folder_with_unreadable_images_trains_and_reports_them(tmp_path, capsys):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for c in range(2):
        (data / f"class{c}").mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
                data / f"class{c}" / f"{i}.png")
    good = (data / "class0" / "0.png").read_bytes()
    (data / "class1" / "truncated.png").write_bytes(good[: len(good) // 3])
    out = tmp_path / "run"
    code = main(["--data", str(data), "--arch", "small", "--image-size", "28", "--k", "3",
                 "--epochs", "2", "--batch-size", "8", "--pca-dim", "8", "--out", str(out)])
    assert code == 0
    err = capsys.readouterr().err
    assert err.count("skipping unreadable image") == 1 and "truncated.png" in err
    summary = json.loads((out / "summary.json").read_text())
    assert [s["path"].endswith("truncated.png") for s in summary["skipped_images"]] == [True]
    assignment = np.load(out / "assignments" / "epoch_002.npy")
    bad = sorted(str(p) for p in data.rglob("*.png")).index(str(data / "class1" /
                                                                "truncated.png"))
    assert assignment[bad] == -1 and (np.delete(assignment, bad) >= 0).all()


def test_bad_input_gives_clear_messages(tmp_path, capsys):
    def error(argv):
        assert main(argv) == 2
        return capsys.readouterr().err

    assert "does not exist" in error(["--data", str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    assert "no images found" in error(["--data", str(tmp_path / "empty")])
    msg = error(["--subset", "50", "--k", "100", "--out", str(tmp_path / "o")])
    assert "--k 100 is larger than the number of images (50)" in msg
    out = tmp_path / "run"
    assert main([*TINY, "--epochs", "1", "--no-final-eval", "--no-plots", "--out",
                 str(out)]) == 0
    capsys.readouterr()
    assert "already holds a run" in error([*TINY, "--out", str(out)])
    assert "different architecture" in error(["--resume", "--arch", "alexnet", "--out",
                                               str(out)])
    assert "--resume needs --out" in error(["--resume"])
    msg = error([*TINY, "--lr", "0.5", "--seed", "3", "--resume", "--out", str(out)])
    assert "--lr 0.5 (the run has " in msg and "--seed 3 (the run has 0)" in msg
    assert "another --out" in msg


def test_resume_without_a_checkpoint_starts_the_run(tmp_path, capsys):
    out = tmp_path / "requeued"
    out.mkdir()
    (out / "log.jsonl").write_text('{"epoch": 1, "left": "by a run killed before saving"}\n')
    assert main([*TINY, "--epochs", "1", "--no-final-eval", "--no-plots", "--resume",
                 "--out", str(out)]) == 0
    assert "no checkpoint in" in capsys.readouterr().out
    assert [r["epoch"] for r in read_log(out)] == [1] and "left" not in read_log(out)[0]
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1


def test_eval_linear_probes_every_conv_layer(tmp_path, capsys):
    from fastdc import eval_linear

    out = tmp_path / "run"
    assert main([*QUIET, "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    result = tmp_path / "probes.json"
    assert eval_linear.main(["--checkpoint", str(out / "checkpoint.pt"), "--max-iter", "10",
                             "--json", str(result)]) == 0
    table = capsys.readouterr().out
    assert "random init" in table and "conv3" in table
    res = json.loads(result.read_text())
    assert [r["layer"] for r in res["layers"]] == ["conv1", "conv2", "conv3"]
    # Pooled to about 9-10k dims where the map is large enough (conv1: 16 ch × 24 × 24).
    assert res["layers"][0]["dims"] == 16 * 24 * 24
    assert all(0 <= r["trained"] <= 1 and 0 <= r["random_init"] <= 1 for r in res["layers"])
    assert res["train_images"] + res["test_images"] == 300
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    assert eval_linear.main(["--checkpoint", str(bad)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_save_every_keeps_snapshots_and_a_resumed_run_keeps_the_setting(tmp_path,
                                                                        uninterrupted):
    out = tmp_path / "run"
    assert main([*QUIET, "--epochs", "3", "--save-every", "2", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir() if p.name.startswith(("checkpoint", ".")))
    assert names == ["checkpoint.pt", "checkpoint_epoch002.pt"]  # no temp file left
    snap = load_checkpoint(out / "checkpoint_epoch002.pt")
    assert snap["epoch"] == 2 and snap["partial"] is None and snap["config"]["save_every"] == 2
    assert [r["epoch"] for r in snap["records"]] == [1, 2]
    # The snapshot is the state after epoch 2: that of a 2-epoch run with the same settings.
    two = torch.load(uninterrupted / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(two["model"][k], snap["model"][k]) for k in two["model"])
    assert main(["--resume", "--epochs", "4", "--no-final-eval", "--no-plots", "--out",
                 str(out)]) == 0
    assert (out / "checkpoint_epoch004.pt").is_file()
    assert not (out / "checkpoint_epoch003.pt").exists()
    assert load_checkpoint(out / "checkpoint_epoch004.pt")["epoch"] == 4


def test_tensorboard_logs_steps_and_epochs_and_hides_a_stale_run(tmp_path):
    pytest.importorskip("tensorboard", reason="--tensorboard needs the tensorboard package")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    out = tmp_path / "run"
    stale = SummaryWriter(str(out / "tensorboard"))  # a run killed before its first checkpoint
    for step in range(1, 30):
        stale.add_scalar("train/loss", 99.0, step)
    stale.close()
    assert main([*QUIET, "--resume", "--tensorboard", "--out", str(out)]) == 0
    events = EventAccumulator(str(out / "tensorboard"), {"scalars": 0, "histograms": 0})
    events.Reload()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, 11))  # 2 epochs × 5 batches of 64 of 300
    assert all(np.isfinite(e.value) and e.value != 99.0 for e in loss)
    nmi = events.Scalars("epoch/nmi_labels")
    assert [e.step for e in nmi] == [5, 10]
    assert [e.value for e in nmi] == pytest.approx([r["nmi_labels"] for r in read_log(out)])
    sizes = events.Histograms("clusters/size")
    assert [h.step for h in sizes] == [5, 10]
    assert sizes[-1].histogram_value.num == 8 and sizes[-1].histogram_value.sum == 300


NOT_WORKING = [
    (["--arch", "vgg16"], "--arch vgg16 needs images of at least 32×32 pixels"),
    (["--arch", "alexnet"], "but the built-in images are 28×28: use --arch small"),
    (["--data", "DIR", "--arch", "alexnet", "--image-size", "32"],
     "pass --image-size 63 or more, or --arch small"),
    (["--wd", "-5"], "for 10^-5 pass --wd 1e-5"),
    (["--wd", "-0.5"], "--wd must be >= 0"),
    (["--lr", "-0.1"], "--lr must be > 0, got -0.1"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--k", "0"], "--k must be >= 1, got 0"),
    (["--momentum", "-0.5"], "--momentum must be in [0, 1)"),
    (["--reassign", "0"], "--reassign must be > 0"),
    (["--subset", "0"], "--subset must be >= 1"),
    (["--save-every", "0"], "--save-every must be >= 1"),
    (["--crop-scale", "1.5"], "--crop-scale must be in (0, 1]"),
]


@pytest.mark.parametrize("argv,message", NOT_WORKING)
def test_settings_that_cannot_work_are_refused_at_parse_time(tmp_path, capsys, argv, message):
    argv = [a.replace("DIR", str(tmp_path / "never-read")) for a in argv]
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_config(argv)
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_the_paper_architecture_too_big_for_the_images_is_refused_before_training(tmp_path,
                                                                                capsys):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(data / f"{i}.png")
    assert main(["--data", str(data), "--preset", "paper", "--image-size", "28", "--k", "2",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--arch alexnet needs images of at least 63×63 pixels" in err
    assert "pass --image-size 63 or more, or --arch small" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
