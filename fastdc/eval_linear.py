"""``python -m fastdc.eval_linear --checkpoint RUN/checkpoint.pt [--data DIR]``: linear probes.

Two protocols. ``--protocol probe`` (the default, for small data): for every conv layer of a
trained DeepCluster net (and of the same net at its random init, the baseline), the frozen ReLU
outputs are average-pooled to about 9–10k dims and a multinomial logistic regression is fitted
on a training split and scored on a held-out split. The pooling
for AlexNet is the reference's (DeepCluster ``eval_linear.py``): conv1 AvgPool(6, 6, pad 3)
-> 9600, conv2 AvgPool(4, 4) -> 9216, conv3/conv4 AvgPool(3, 3, pad 1) -> 9600, conv5
AvgPool(2, 2) -> 9216 dims. Other nets use an adaptive average pool to s×s with
s = round(sqrt(9600 / channels)) (capped at the map size).

Data: ``--data DIR`` (with ``train/`` and ``val/`` sub-folders they are the two splits, else a
fixed random ``--test-fraction`` of DIR is held out) or the run's built-in data set. Features
are held in memory and the probes are fitted by full-batch L-BFGS: meant for data sets up to
some 10^5 images, not ImageNet (whose reference protocol trains the probes with SGD on crops).

The checkpoint is a fastdc.train checkpoint, a fastdc weight file, or a reference DeepCluster
checkpoint (the released AlexNet / VGG16 ``checkpoint.pth.tar``), converted on reading
(:mod:`fastdc.deepcluster.weights`).

``--protocol paper`` (the reference's ``eval_linear.py``, behind the paper's conv1-conv5 table):
the frozen network, a linear classifier on one conv layer (``--conv N``, pooled as above), SGD
(lr 0.01, momentum 0.9, weight decay 1e-4, lr_t = lr / sqrt(1 + lr·wd·t)) on random-resized
crops with flips for ``--epochs`` epochs, validation on ten crops (``--centre-crop``: one),
top-1 and top-5 per epoch, the best epoch, and a log (``--log FILE``, one JSON line per epoch).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastdc.deepcluster import (
    STREAM_INIT,
    CheckpointError,
    DataError,
    DeepClusterNet,
    Source,
    Weights,
    build_model,
    derive_seed,
    initial_model,
    load_into,
    load_source,
    progress_bar,
    read_weights,
)
from fastdc.evaluation import SGDSettings, linear_probe, split_indices, train_linear_protocol

TARGET_DIMS = 9600
# DeepCluster eval_linear.py: (kernel, stride, padding) of the AvgPool2d after each AlexNet conv.
ALEXNET_POOLS = [(6, 6, 3), (4, 4, 0), (3, 3, 1), (3, 3, 1), (2, 2, 0)]


def pool_layer(x: torch.Tensor, layer: int, arch: str, target: int = TARGET_DIMS) -> torch.Tensor:
    """Pool one conv layer's output float [B, C, H, W] -> flat float [B, ~target]."""
    if arch == "alexnet" and layer < len(ALEXNET_POOLS):
        k, s, p = ALEXNET_POOLS[layer]
        return F.avg_pool2d(x, k, s, p).flatten(1)
    side = max(1, min(x.shape[-1], round((target / x.shape[1]) ** 0.5)))
    return F.adaptive_avg_pool2d(x, side).flatten(1)


@torch.no_grad()
def layer_features(model: DeepClusterNet, source: Source, device: torch.device,
                   batch_size: int = 128, workers: int = 0
                   ) -> tuple[list[torch.Tensor], np.ndarray]:
    """Pooled features of every conv layer for every image (eval mode, centre crops).

    Returns ([float32 [N, D_l] on the CPU per layer], ok bool [N]).
    """
    model.eval()
    n = len(source)
    feats: list[torch.Tensor] | None = None
    ok = np.zeros(n, dtype=bool)
    for batch in source.eval_batches(batch_size, device, workers):
        pooled = [pool_layer(t, i, model.arch).float().cpu()
                  for i, t in enumerate(model.conv_layers(batch.images))]
        if feats is None:
            feats = [torch.zeros(n, p.shape[1]) for p in pooled]
        for f, p in zip(feats, pooled, strict=True):
            f[batch.index] = p
        ok[batch.index.numpy()] = batch.ok.numpy()
    assert feats is not None
    return feats, ok


def _splits(args: argparse.Namespace, cfg: dict) -> tuple[Source, Source | None]:
    """(train source, val source or None) for the command line and the run's config."""
    data = args.data or cfg.get("data")
    if data and (Path(data) / "train").is_dir() and (Path(data) / "val").is_dir():
        kw = {"image_size": cfg.get("image_size", 224), "grey": cfg.get("grey", False)}
        return (load_source(str(Path(data) / "train"), None, **kw),
                load_source(str(Path(data) / "val"), None, **kw))
    dataset = None if data else (args.dataset or cfg.get("dataset"))
    return load_source(data, dataset, subset=args.subset or cfg.get("subset"),
                       seed=cfg.get("seed", 0), image_size=cfg.get("image_size", 224),
                       grey=cfg.get("grey", False)), None


def _models(weights: Weights, where: str) -> dict[str, DeepClusterNet]:
    """{"trained": the checkpoint's net, "random_init": the same net at the run's random init}.
    The head is as wide as the checkpoint's (k for DeepCluster, S·R + S·k for DeeperCluster).
    Raises CheckpointError when the weights do not fit the architecture."""
    arch, channels, sobel = weights.arch, weights.in_channels, weights.sobel
    head = weights.head or weights.config.get("k", 1)
    trained = build_model(arch, head, channels, sobel=sobel)
    load_into(trained, weights, head=weights.head is not None, where=where)
    init = initial_model(arch, head, channels, sobel,
                         derive_seed(weights.config.get("seed", 0), STREAM_INIT))
    return {"trained": trained, "random_init": init}


def _probe_layers(name: str, model: DeepClusterNet, train_src: Source, val_src: Source | None,
                  args: argparse.Namespace, device: torch.device
                  ) -> tuple[list[tuple[float, int]], int, int]:
    """Linear probes of every conv layer of ``model``: ([(accuracy, dims)] per layer, train
    images, test images); each accuracy is also printed on stderr."""
    tr_feats, tr_ok = layer_features(model, train_src, device, args.batch_size, args.workers)
    if val_src is None:
        keep = np.flatnonzero(tr_ok)
        tr, te = split_indices(len(keep), args.test_fraction, args.seed)
        tr_idx, te_idx = keep[tr], keep[te]
        te_feats, te_labels = tr_feats, train_src.labels
    else:
        te_feats, te_ok = layer_features(model, val_src, device, args.batch_size, args.workers)
        tr_idx, te_idx = np.flatnonzero(tr_ok), np.flatnonzero(te_ok)
        te_labels = val_src.labels
    ytr = torch.from_numpy(train_src.labels[tr_idx]).to(device)
    yte = torch.from_numpy(te_labels[te_idx]).to(device)
    accs = []
    for layer, (ftr, fte) in enumerate(zip(tr_feats, te_feats, strict=True)):
        acc = linear_probe(ftr[tr_idx].to(device), ytr, fte[te_idx].to(device), yte,
                           max_iter=args.max_iter, seed=args.seed)
        accs.append((acc, ftr.shape[1]))
        print(f"  {name:<12} conv{layer + 1}: {acc:.3f}", file=sys.stderr, flush=True)
    return accs, len(tr_idx), len(te_idx)


def _inputs(args: argparse.Namespace) -> tuple[Weights, torch.device, Source, Source | None]:
    """(weights, device, train source, val source or None) for the command line. Raises
    DataError for unlabelled data and CheckpointError for a checkpoint that does not fit it."""
    weights = read_weights(args.checkpoint)
    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    train_src, val_src = _splits(args, weights.config)
    if train_src.labels is None:
        raise DataError("linear probes need labelled data (class sub-folders)")
    if train_src.in_channels != weights.in_channels:
        raise CheckpointError(f"the checkpoint expects {weights.in_channels}-channel images, "
                              f"the data has {train_src.in_channels}")
    return weights, device, train_src, val_src


def evaluate(args: argparse.Namespace) -> dict:
    """Run the probes; returns {"layers": [{"layer", "dims", "trained", "random_init"}], ...}.
    Raises DataError for unlabelled data and CheckpointError for a checkpoint that does not
    fit the data."""
    weights, device, train_src, val_src = _inputs(args)
    columns = {}
    for name, model in _models(weights, str(args.checkpoint)).items():
        model.to(device)
        columns[name], n_train, n_test = _probe_layers(name, model, train_src, val_src, args,
                                                       device)
        model.cpu()
    results = [{"layer": f"conv{layer + 1}", "dims": dims, "trained": acc,
                "random_init": columns["random_init"][layer][0]}
               for layer, (acc, dims) in enumerate(columns["trained"])]
    return {"checkpoint": str(args.checkpoint), "layout": weights.layout, "arch": weights.arch,
            "epoch": weights.epoch, "train_images": n_train, "test_images": n_test,
            "layers": results}


def _labelled(batches, labels: np.ndarray, keep: np.ndarray | None = None):
    """(images, int64 labels) of the readable images of ``batches`` (only rows in ``keep``
    when given)."""
    for batch in batches:
        mask = batch.ok.clone()
        if keep is not None:
            mask &= torch.from_numpy(np.isin(batch.index.numpy(), keep))
        if mask.any():
            idx = batch.index[mask].numpy()
            yield (batch.images[mask.to(batch.images.device)],
                   torch.from_numpy(labels[idx]).to(batch.images.device))


def paper_protocol(args: argparse.Namespace) -> dict:
    """The reference's linear evaluation of conv layer ``args.conv``; returns {"conv", "dims",
    "epochs": [{"epoch", "loss", "top1", "top5", "lr"}], "best": {...}, ...}. Raises
    ValueError for a --conv out of range, DataError / CheckpointError for unusable inputs."""
    weights, device, train_src, val_src = _inputs(args)
    model = _models(weights, str(args.checkpoint))["trained"].to(device).eval()
    if not 1 <= args.conv <= model.conv_count:
        raise ValueError(f"--conv {args.conv} is out of range for {weights.arch}: choose 1 to "
                         f"{model.conv_count}")
    for p in model.parameters():
        p.requires_grad_(False)
    train_idx = np.arange(len(train_src))
    val_keep = None
    if val_src is None:
        train_idx, val_keep = split_indices(len(train_src), args.test_fraction, args.seed)
    val_of = val_src or train_src

    def embed(x: torch.Tensor) -> torch.Tensor:
        return pool_layer(model.conv_output(x, args.conv), args.conv - 1, weights.arch)

    side = train_src.side
    with torch.no_grad():
        dims = embed(torch.zeros(1, train_src.in_channels, side, side, device=device)).shape[1]
    batches = -(-len(train_idx) // args.batch_size)
    bar = progress_bar("linear", args.epochs * batches, enabled=not args.quiet)

    def train(epoch: int):
        order = np.random.default_rng([args.seed, epoch]).permutation(train_idx)
        return _labelled(train_src.train_batches(order, args.batch_size, args.seed, epoch,
                                                 device, args.workers), train_src.labels)

    def val():
        return _labelled(val_of.eval_batches(args.batch_size, device, args.workers),
                         val_of.labels, val_keep)

    log = Path(args.log).open("w") if args.log else None
    try:
        result = train_linear_protocol(
            embed, dims, int(max(train_src.labels.max(), val_of.labels.max())) + 1, train, val,
            sgd=SGDSettings(args.epochs, args.lr, args.momentum, args.weight_decay),
            tencrop=not args.centre_crop, device=device, seed=args.seed,
            on_epoch=lambda r: _log_epoch(r, log), on_batch=lambda: bar.update())
    finally:
        bar.close()
        if log is not None:
            log.close()
    return {"checkpoint": str(args.checkpoint), "arch": weights.arch, "conv": args.conv,
            "dims": dims, "train_images": len(train_idx),
            "val_images": len(val_of) if val_keep is None else len(val_keep),
            "crops": "centre" if args.centre_crop else "ten", "epochs": result.epochs,
            "best": result.best}


def _log_epoch(record: dict, log) -> None:
    """One epoch's line on stderr and, with --log, in the log file (JSON)."""
    print(f"  epoch {record['epoch']:>3}  loss {record['loss']:.4f}  top-1 {record['top1']:.3f}"
          f"  top-5 {record['top5']:.3f}", file=sys.stderr, flush=True)
    if log is not None:
        log.write(json.dumps(record) + "\n")
        log.flush()


def print_paper(res: dict) -> None:
    """Print the result of :func:`paper_protocol`: one row per epoch and the best epoch."""
    print(f"linear classifier on conv{res['conv']} of {res['arch']} ({res['dims']} dims; "
          f"{res['train_images']} train / {res['val_images']} val images, {res['crops']} crops)")
    print(f"{'epoch':>5}{'loss':>9}{'top-1':>8}{'top-5':>8}")
    for r in res["epochs"]:
        print(f"{r['epoch']:>5}{r['loss']:>9.4f}{r['top1']:>8.3f}{r['top5']:>8.3f}")
    b = res["best"]
    print(f"best: epoch {b['epoch']}, top-1 {b['top1']:.3f}, top-5 {b['top5']:.3f}")


def print_table(res: dict) -> None:
    """Print the result of :func:`evaluate`: one row per conv layer, trained vs random init."""
    trained = "" if res["epoch"] is None else f" after {res['epoch']} epochs"
    print(f"linear probes: {res['arch']}{trained} "
          f"({res['train_images']} train / {res['test_images']} held-out images)")
    print(f"{'layer':<8}{'dims':>8}{'trained':>10}{'random init':>13}")
    for r in res["layers"]:
        print(f"{r['layer']:<8}{r['dims']:>8}{r['trained']:>10.3f}{r['random_init']:>13.3f}")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m fastdc.eval_linear`` argument parser."""
    p = argparse.ArgumentParser(prog="python -m fastdc.eval_linear",
                                description=__doc__.split("\n\n")[1])
    p.add_argument("--protocol", choices=("probe", "paper"), default="probe",
                   help="probe (default): every conv layer, features in memory, full-batch "
                        "L-BFGS, for small data; paper: the reference's protocol on one layer "
                        "(--conv), SGD on random-resized crops for --epochs, ten-crop top-1/5")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint.pt of a fastdc.train run, a fastdc weight file, or a "
                        "reference DeepCluster checkpoint (checkpoint.pth.tar, converted)")
    p.add_argument("--data", help="ImageFolder (train/ + val/, or one folder to split)")
    p.add_argument("--dataset", help="built-in data set (default: the run's)")
    p.add_argument("--subset", type=int)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-iter", type=int, default=50, help="L-BFGS iterations per probe")
    p.add_argument("--json", help="also write the results to this file")
    paper = p.add_argument_group("--protocol paper")
    paper.add_argument("--conv", type=int, default=5, metavar="N",
                       help="the conv layer to classify from (1-based, default 5)")
    paper.add_argument("--epochs", type=int, default=90, help="SGD epochs (default 90)")
    paper.add_argument("--lr", type=float, default=0.01, help="initial learning rate")
    paper.add_argument("--momentum", type=float, default=0.9)
    paper.add_argument("--weight-decay", type=float, default=1e-4)
    paper.add_argument("--centre-crop", action="store_true",
                       help="validate on one centre crop instead of ten crops")
    paper.add_argument("--log", metavar="FILE", help="one JSON line per epoch")
    paper.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    try:
        res = paper_protocol(args) if args.protocol == "paper" else evaluate(args)
    except (DataError, CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    (print_paper if args.protocol == "paper" else print_table)(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
