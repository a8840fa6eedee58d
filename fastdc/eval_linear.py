"""``python -m fastdc.eval_linear --checkpoint RUN/checkpoint.pt [--data DIR]``: linear probes.

For every conv layer of a trained DeepCluster net (and of the same net at its random init, the
baseline), the frozen ReLU outputs are average-pooled to about 9–10k dims and a multinomial
logistic regression is fitted on a training split and scored on a held-out split. The pooling
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
    read_weights,
)
from fastdc.evaluation import linear_probe, split_indices

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


def evaluate(args: argparse.Namespace) -> dict:
    """Run the probes; returns {"layers": [{"layer", "dims", "trained", "random_init"}], ...}.
    Raises DataError for unlabelled data and CheckpointError for a checkpoint that does not
    fit the data."""
    weights = read_weights(args.checkpoint)
    cfg = weights.config
    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    train_src, val_src = _splits(args, cfg)
    if train_src.labels is None:
        raise DataError("linear probes need labelled data (class sub-folders)")
    if train_src.in_channels != weights.in_channels:
        raise CheckpointError(f"the checkpoint expects {weights.in_channels}-channel images, "
                              f"the data has {train_src.in_channels}")
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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    try:
        res = evaluate(args)
    except (DataError, CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_table(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
