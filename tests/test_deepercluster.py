"""DeeperCluster's pieces (fastdc.deepcluster.deepercluster) and ``python -m fastdc.train --method
deepercluster`` on tiny data: rotations, target decoding, the masked sub-class loss, the
hierarchy targets the trainer builds, and a short end-to-end run."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastdc import eval_linear
from fastdc.deepcluster import Trainer, load_mnist, main, parse_config, resolve_defaults
from fastdc.deepcluster import deepercluster as dc
from fastdc.deepcluster.distribution import Distribution
from fastdc.deepcluster.methods import DeepCluster, DeeperCluster, make_method
from fastdc.deepcluster.seeds import STREAM_KMEANS, derive_seed
from fastdc.engine import pca_whiten, two_level_kmeans

TINY = ["--method", "deepercluster", "--subset", "300", "--k", "5", "--super-classes", "3",
        "--batch-size", "64", "--pca-dim", "16"]


def blobs(n=300, d=32, centres=12, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = 6.0 * torch.randn(centres, d, generator=g)
    return c[torch.randint(centres, (n,), generator=g)] + torch.randn(n, d, generator=g)


def test_rotate_turns_each_image_by_its_own_quarter_turns():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(9, 2, 7, 7, generator=g)
    rot = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0, 1])
    out = dc.rotate(images, rot)
    for i in range(9):
        torch.testing.assert_close(out[i], torch.rot90(images[i], int(rot[i]), dims=(-2, -1)),
                                   rtol=0, atol=0)
    # four quarter turns give the image back; the input is not modified
    back = images
    for _ in range(4):
        back = dc.rotate(back, torch.ones(9, dtype=torch.int64))
    assert torch.equal(back, images)
    assert not torch.equal(out, images)
    draws = dc.draw_rotations(4000, 4, torch.Generator().manual_seed(1))
    assert draws.min() == 0 and draws.max() == 3
    assert np.all(np.abs(np.bincount(draws.numpy()) / 4000 - 0.25) < 0.03)
    assert torch.equal(dc.draw_rotations(5, 1, g), torch.zeros(5, dtype=torch.int64))


def test_loss_is_super_rotation_ce_plus_ce_inside_own_super_class():
    s, k, r, b = 3, 4, 4, 10
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(b, dc.head_size(s, k, r), generator=g)
    sup = torch.randint(s, (b,), generator=g)
    sub = torch.randint(2, (b,), generator=g)  # sub-classes 2, 3 of super-class 0 are empty
    rot = torch.randint(r, (b,), generator=g)
    present = torch.ones(s * k, dtype=torch.bool)
    present[[2, 3]] = False
    parts = dc.deepercluster_loss(logits, sup * k + sub, rot, present, s, k, r)
    want_super = F.cross_entropy(logits[:, : s * r], sup * r + rot)
    want_sub = []
    for i in range(b):
        row = logits[i, s * r + sup[i] * k: s * r + (sup[i] + 1) * k]
        if sup[i] == 0:
            row = row[:2]  # the empty sub-classes take no probability mass
        want_sub.append(F.cross_entropy(row[None], sub[i][None]))
    torch.testing.assert_close(parts.super_rot, want_super)
    torch.testing.assert_close(parts.sub, torch.stack(want_sub).mean())
    torch.testing.assert_close(parts.total, want_super + torch.stack(want_sub).mean())
    # top-1 accuracies of each term, the sub-class one over the own super-class's columns
    pred_super = logits[:, : s * r].argmax(dim=1)
    want_acc = (pred_super == sup * r + rot).float().mean()
    sub_pred = torch.stack([logits[i, s * r + sup[i] * k: s * r + sup[i] * k + (2 if sup[i] == 0
                                                                                else k)].argmax()
                            for i in range(b)])
    torch.testing.assert_close(parts.super_rot_acc, want_acc)
    torch.testing.assert_close(parts.sub_acc, (sub_pred == sub).float().mean())
    s_dec, k_dec = dc.split_targets(sup * k + sub, k)
    assert torch.equal(s_dec, sup) and torch.equal(k_dec, sub)


def test_trainer_targets_decode_to_a_super_class_and_a_sub_class_inside_it(tmp_path):
    src = load_mnist(300)
    cfg = resolve_defaults(parse_config([*TINY, "--out", str(tmp_path)]), src)
    trainer = Trainer(cfg, src, tmp_path)
    assert trainer.method.n_targets == 15 and trainer.method.head_outputs == 3 * 4 + 3 * 5
    assert trainer.model.top_layer.out_features == 27
    feats = blobs()
    ok = np.ones(300, dtype=bool)
    ok[[4, 77]] = False  # unreadable images get no target
    targets, clusters = trainer.pseudo_labels.assign(feats, ok, epoch=0)
    loss, extra = clusters.loss, clusters.extra
    assert targets.shape == (300,) and np.all(targets[[4, 77]] == -1)
    assert loss >= 0 and extra["clustering_loss_super"] >= loss
    valid = targets >= 0
    sup, sub = targets[valid] // 5, targets[valid] % 5
    # the same hierarchy as two_level_kmeans on the same whitened rows
    x = pca_whiten(feats[torch.from_numpy(ok)], dim=16)
    h = two_level_kmeans(x, 3, 5, niter=cfg.kmeans_iters,
                         seed=derive_seed(cfg.seed, STREAM_KMEANS, 0) % 2**31)
    np.testing.assert_array_equal(sup, h.super_labels.numpy())
    np.testing.assert_array_equal(sub, h.sub_labels.numpy())
    for s in range(3):
        inside = sub[sup == s]
        assert len(inside) and inside.min() >= 0 and inside.max() < int(h.k_eff[s])
    # sampling: uniform over the non-empty targets only, never an unreadable image
    order = trainer.pseudo_labels.sample_order(targets, epoch=0)
    counts = np.bincount(targets[order], minlength=15)
    present = dc.present_targets(targets, 15)
    assert np.all(counts[~present] == 0) and np.all(counts[present] > 0)
    assert counts[present].max() - counts[present].min() <= len(order) // present.sum() + 1
    assert np.all(ok[order])


def test_small_super_classes_leave_empty_sub_classes_that_are_never_drawn(tmp_path):
    src = load_mnist(300)
    cfg = resolve_defaults(parse_config([*TINY, "--k", "150", "--out", str(tmp_path)]), src)
    trainer = Trainer(cfg, src, tmp_path)
    targets, _ = trainer.pseudo_labels.assign(blobs(), np.ones(300, dtype=bool), epoch=0)
    sizes = np.bincount(targets // 150, minlength=3)
    present = dc.present_targets(targets, 450).reshape(3, 150)
    for s in range(3):  # k_eff = min(k, size): exactly that many usable sub-classes
        assert present[s].sum() == min(150, sizes[s])
    order = trainer.pseudo_labels.sample_order(targets, epoch=0)
    assert np.all(present.reshape(-1)[targets[order]])


def test_deepercluster_end_to_end_with_reclustering_every_two_epochs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--epochs", "3", "--reassign-every", "2", "--no-final-eval",
                 "--no-plots", "--out", str(out)]) == 0
    console = capsys.readouterr().out
    assert "DeeperCluster" in console and "4 rotations" in console and "epoch   3/3" in console
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["reclustered"] for r in log] == [True, False, True]
    assert log[1]["clustering_loss"] is None and log[2]["clustering_loss"] is not None
    assert all(np.isfinite(r["train_loss"]) and 0 <= r["nmi_labels"] <= 1 for r in log)
    assert all(0 <= r["nmi_labels_super"] <= 1 for r in log)
    # the two loss terms and their top-1 accuracies, logged apart
    for r in log:
        assert r["train_loss_super_rot"] + r["train_loss_sub"] == pytest.approx(r["train_loss"],
                                                                                 rel=1e-5)
        assert 0 <= r["train_acc_super_rot"] <= 1 and 0 <= r["train_acc_sub"] <= 1
    assert "super×rot" in console and "sub " in console
    a = [np.load(out / "assignments" / f"epoch_{e:03d}.npy") for e in (1, 2, 3)]
    np.testing.assert_array_equal(a[0], a[1])  # no re-clustering in epoch 2
    assert all(x.min() >= 0 and x.max() < 15 for x in a)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["config"]["method"] == "deepercluster"
    assert ckpt["model"]["top_layer.weight"].shape[0] == 27
    # the linear probes read a DeeperCluster checkpoint (its head is S·R + S·k wide)
    result = tmp_path / "probes.json"
    assert eval_linear.main(["--checkpoint", str(out / "checkpoint.pt"), "--max-iter", "5",
                             "--json", str(result)]) == 0
    probes = json.loads(result.read_text())
    assert [r["layer"] for r in probes["layers"]] == ["conv1", "conv2", "conv3"]
    assert all(0 <= r["trained"] <= 1 for r in probes["layers"])
    # --no-rotation: a head of S + S·k outputs
    out2 = tmp_path / "norot"
    assert main([*TINY, "--epochs", "1", "--no-rotation", "--no-final-eval", "--no-plots",
                 "--out", str(out2)]) == 0
    ckpt = torch.load(out2 / "checkpoint.pt", weights_only=False)
    assert ckpt["model"]["top_layer.weight"].shape[0] == 3 + 15


def test_method_objects_give_each_method_its_targets_head_inputs_and_loss():
    src, dist = load_mnist(300), Distribution(None, torch.device("cpu"))
    deep = make_method(resolve_defaults(parse_config(["--subset", "300", "--k", "7"]), src), dist)
    deeper = make_method(resolve_defaults(parse_config(TINY), src), dist)
    assert isinstance(deep, DeepCluster) and isinstance(deeper, DeeperCluster)
    assert (deep.n_targets, deep.head_outputs, deep.min_rows) == (7, 7, 7)
    assert (deeper.n_targets, deeper.head_outputs, deeper.min_rows) == (15, 27, 3)
    assert deep.describe() == ", k 7"
    assert deeper.describe() == ", 3 super-classes × k 5 sub-classes, 4 rotations"
    g = torch.Generator().manual_seed(4)
    images = torch.randn(6, 1, 8, 8, generator=g)
    keep = torch.tensor([True, True, False, True, True, True])
    # DeepCluster: the images as they are, cross-entropy on the cluster ids
    x, aux = deep.inputs(images, keep, 3, 1, 2)
    assert x is images and aux is None
    logits, targets = torch.randn(5, 7, generator=g), torch.randint(7, (5,), generator=g)
    torch.testing.assert_close(deep.loss(logits, targets, aux), F.cross_entropy(logits, targets))
    assert deep.metrics(np.arange(6), np.arange(6)) == {}
    # DeeperCluster: each image rotated by its batch's own draw; the rotation × super-class
    # and sub-class loss over the targets present in the epoch
    x, rot = deeper.inputs(images, keep, 3, 1, 2)
    x2, rot2 = deeper.inputs(images, keep, 3, 1, 2)
    assert torch.equal(x, x2) and torch.equal(rot, rot2) and rot.shape == (5,)
    for i, r in zip(np.flatnonzero(keep.numpy()), rot.tolist(), strict=True):
        assert torch.equal(x[i], torch.rot90(images[i], r, dims=(-2, -1)))
    assignment = np.repeat(np.arange(15), 20)
    assignment[assignment == 4] = -1  # an empty sub-class
    deeper.begin_epoch(assignment)
    logits, targets = torch.randn(5, 27, generator=g), torch.tensor([0, 3, 7, 11, 14])
    present = torch.from_numpy(dc.present_targets(assignment, 15))
    want = dc.deepercluster_loss(logits, targets, rot, present, 3, 5, 4)
    torch.testing.assert_close(deeper.loss(logits, targets, rot), want.total)
    total, stats = deeper.loss_and_stats(logits, targets, rot)
    torch.testing.assert_close(total, want.total)
    assert deeper.step_stats == ("loss_super_rot", "loss_sub", "acc_super_rot", "acc_sub")
    torch.testing.assert_close(stats, torch.stack([want.super_rot, want.sub, want.super_rot_acc,
                                                   want.sub_acc]))
    assert deep.loss_and_stats(logits[:, :7], targets % 7, None)[1].numel() == 0
    metrics = deeper.metrics(assignment, assignment // 5)
    assert metrics == {"nmi_labels_super": 1.0, "nonempty_super_classes": 3}


def _folder(root, n=4):
    from PIL import Image

    (root / "a").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((40, 40, 3), 40 * i, dtype=np.uint8)).save(root / "a" / f"{i}.png")
    return root


def test_folder_runs_of_deepercluster_take_the_reference_settings(tmp_path):
    from fastdc.deepcluster import load_source

    src = load_source(str(_folder(tmp_path / "d")), None, image_size=32)
    cfg = resolve_defaults(parse_config(["--method", "deepercluster", "--data", str(tmp_path),
                                         "--super-classes", "2", "--k", "1",
                                         "--image-size", "32"]), src)
    assert (cfg.arch, cfg.lr, cfg.batch_size, cfg.reassign_every, cfg.pca_dim,
            cfg.kmeans_iters, cfg.sync_bn, cfg.head_momentum, cfg.head_init) == (
        "vgg16", 0.1, 48, 3, 4096, 10, True, 0.9, "default")
    own = resolve_defaults(parse_config(["--method", "deepercluster", "--data", str(tmp_path),
                                         "--super-classes", "2", "--k", "1", "--image-size",
                                         "32", "--no-sync-bn", "--kmeans-iters", "7"]), src)
    assert (own.sync_bn, own.kmeans_iters) == (False, 7)
    plain = resolve_defaults(parse_config(["--data", str(tmp_path), "--k", "2",
                                           "--image-size", "32", "--arch", "small"]), src)
    assert (plain.reassign_every, plain.kmeans_iters, plain.sync_bn, plain.head_momentum,
            plain.head_init) == (1, 20, False, 0.0, "normal")


def test_the_builtin_deepercluster_run_keeps_its_own_settings():
    cfg = resolve_defaults(parse_config(["--method", "deepercluster"]), load_mnist(300))
    assert (cfg.arch, cfg.kmeans_iters, cfg.reassign_every, cfg.head_init) == (
        "small", 20, 1, "normal")


def test_help_documents_the_reference_flags(capsys, monkeypatch):
    import pytest

    monkeypatch.setenv("COLUMNS", "1000")  # no line breaks inside a flag
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--super_classes 16 --k 10000 is --super-classes 4 --k 2500" in text
    assert "--head-momentum 0.9" in text and "--reassign-every 3" in text


def test_a_default_init_head_differs_from_the_normal_one():
    from fastdc.deepcluster import build_model

    model = build_model("small", 3, 1)
    normal = model.reset_head(5, torch.Generator().manual_seed(0)).weight.detach().clone()
    default = model.reset_head(5, torch.Generator().manual_seed(0), normal=False)
    bound = 1 / model.feature_dim ** 0.5
    assert normal.abs().max() < 0.06 and default.bias.abs().max() > 0
    assert default.weight.abs().max() <= bound and default.weight.std() > 0.3 * bound
