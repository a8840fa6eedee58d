"""What a run writes and prints (rank 0 only; the other ranks' :class:`Outputs` stay silent).

In ``--out``: ``assignments/epoch_XXX.npy`` (int32 [N] targets, -1 = unreadable image),
``log.jsonl`` (one record per epoch), ``summary.json`` (the config, the data, the records, the
final evaluation, the skipped images, the wall time), ``curves.png`` and ``clusters.png``
(:mod:`fastdc.deepcluster.plots`); ``checkpoint.pt`` is the trainer's. On stdout: the run's
first line, one line per epoch, the final evaluation's table and the wall time.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastdc.deepcluster.config import Config
from fastdc.deepcluster.data import SkipLog, Source
from fastdc.deepcluster.plots import cluster_grid, plot_clusters, plot_curves
from fastdc.evaluation import masked_nmi

COLUMNS = ("trained", "random init", "raw pixels")


def epoch_record(epoch: int, assignment: np.ndarray, previous: np.ndarray | None,
                 labels: np.ndarray | None, skipped: int, clustering_loss: float | None = None,
                 times: tuple[float, float] = (0.0, 0.0)) -> dict[str, Any]:
    """The first entries of epoch ``epoch``'s record (0-based; the record counts from 1).

    assignment: int64 [N] targets; previous: the previous clustering's (None: no NMI with it);
    labels: int64 [N] classes or None; times: seconds for features and for clustering.
    """
    return {
        "epoch": epoch + 1,
        "clustering_loss": clustering_loss,
        "nmi_prev": masked_nmi(assignment, previous),
        "nmi_labels": masked_nmi(assignment, labels),
        "nonempty_clusters": int(len(np.unique(assignment[assignment >= 0]))),
        "skipped_images": skipped,
        "time_features": times[0],
        "time_clustering": times[1],
    }


def flag_text(key: str, value: Any) -> str:
    """A setting as its command-line flag: ('flip', False) -> '--no-flip', ('k', 50) ->
    '--k 50', ('memory', True) -> '--in-memory'."""
    flag = "in-memory" if key == "memory" else key.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {value}"


def _duration(seconds: float) -> str:
    """E.g. 75.2 -> '1m15s', 8.4 -> '8s'."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _fmt(v: float | None) -> str:
    return "  -  " if v is None else f"{v:.3f}"


class Outputs:
    """The files and console lines of a run in ``out``; ``enabled=False`` on ranks > 0."""

    def __init__(self, cfg: Config, out: Path, enabled: bool) -> None:
        self.cfg, self.out, self.enabled = cfg, out, enabled

    def banner(self, source: Source, title: str, details: str, device: torch.device,
               world: int) -> None:
        """The run's first line: data, architecture, method settings, device, folder."""
        if not self.enabled:
            return
        cfg = self.cfg
        arch = cfg.arch + (" + sobel" if cfg.sobel else "")
        procs = f" × {world} processes" if world > 1 else ""
        print(f"fastdc {title}: {source.name} ({len(source)} images, "
              f"{len(source.classes) or 'no'} classes), arch {arch}{details}, {cfg.epochs} "
              f"epochs, batch {cfg.batch_size}, device {device}{procs}, out {self.out}",
              flush=True)

    def choices(self) -> None:
        """One line per setting chosen by --preset (config.choices), with its reason."""
        if not self.enabled or not self.cfg.choices:
            return
        print(f"settings (--preset {self.cfg.preset}):", flush=True)
        for key, c in self.cfg.choices.items():
            print(f"  {flag_text(key, c['value'])}: {c['reason']}", flush=True)

    def say(self, line: str) -> None:
        """A line on stdout."""
        if self.enabled:
            print(line, flush=True)

    def epoch_done(self, record: dict[str, Any], assignment: np.ndarray) -> None:
        """Write the epoch's targets (int32 [N]) and append its record to log.jsonl."""
        if not self.enabled:
            return
        adir = self.out / "assignments"
        adir.mkdir(exist_ok=True)
        np.save(adir / f"epoch_{record['epoch']:03d}.npy", assignment.astype(np.int32))
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def rewrite_log(self, records: list[dict[str, Any]]) -> None:
        """log.jsonl with exactly ``records`` (a resumed run drops lines written after its
        checkpoint)."""
        if self.enabled:
            with open(self.out / "log.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)

    def print_epoch(self, r: dict[str, Any], left: float | None = None) -> None:
        """The epoch's console line; ``left``: the estimated seconds to the last epoch. PIC
        runs show the clusters found instead of a k-means loss; DeeperCluster runs add the two
        loss terms and their top-1 accuracies."""
        pic = self.cfg.clustering == "pic"
        if pic:
            clustering = f"clusters {r['nonempty_clusters']:>5}"
        else:
            c_loss = "  -   " if r["clustering_loss"] is None else f"{r['clustering_loss']:.4f}"
            clustering = f"clust-loss {c_loss}"
        terms = ""
        if "train_loss_super_rot" in r:
            terms = (f" (super×rot {r['train_loss_super_rot']:.3f} acc"
                     f" {r['train_acc_super_rot']:.3f}, sub {r['train_loss_sub']:.3f} acc"
                     f" {r['train_acc_sub']:.3f})")
        deeper = (f"  NMI(super, labels) {_fmt(r['nmi_labels_super'])}"
                  if "nmi_labels_super" in r else "")
        self.say(f"epoch {r['epoch']:>3}/{self.cfg.epochs}  {clustering}"
                 f"  train-loss {r['train_loss']:.4f}{terms}  NMI(prev) {_fmt(r['nmi_prev'])}"
                 f"  NMI(labels) {_fmt(r['nmi_labels'])}{deeper}  time {r['time']:.1f}s"
                 f" (feat {r['time_features']:.1f} + {'PIC' if pic else 'k-means'}"
                 f" {r['time_clustering']:.1f} + train {r['time_train']:.1f})"
                 + ("" if not left else f"  ~{_duration(left)} left"))

    def print_table(self, ev: dict[str, Any]) -> None:
        """The final evaluation's table: one column per feature set."""
        if not self.enabled:
            return
        names = [n for n in COLUMNS if n in ev]
        print(f"\nfinal evaluation ({ev['train'] + ev['test']} images, {ev['classes']} classes;"
              f" linear probe trained on {ev['train']}, tested on {ev['test']} held out)")
        print(f"{'':<28}" + "".join(f"{n:>14}" for n in names))
        print(f"{'k-means NMI (k=' + str(ev['classes']) + ')':<28}"
              + "".join(f"{ev[n]['kmeans_nmi']:>14.3f}" for n in names))
        if "pic_nmi" in ev[names[0]]:
            print(f"{'PIC NMI (clusters found)':<28}"
                  + "".join(f"{ev[n]['pic_nmi']:>8.3f} ({ev[n]['pic_clusters']:>3})"
                            for n in names))
        print(f"{'linear probe accuracy':<28}"
              + "".join(f"{ev[n]['linear_probe_acc']:>14.3f}" for n in names))
        print(f"(evaluation took {ev['time']:.1f}s)")

    def plots(self, records: list[dict[str, Any]], assignment: np.ndarray | None,
              source: Source) -> None:
        """curves.png, and clusters.png (the 10 largest clusters, 12 images each)."""
        if not self.enabled:
            return
        plot_curves(records, self.out / "curves.png")
        if assignment is not None:
            ids, sizes, picks = cluster_grid(assignment, rows=10, per_row=12, seed=self.cfg.seed)
            thumbs = source.thumbnails(np.maximum(picks, 0))
            thumbs[picks < 0] = 0
            plot_clusters(thumbs, ids, sizes, self.out / "clusters.png", per_row=12)

    def write_summary(self, source: Source, device: torch.device, world: int,
                      records: list[dict[str, Any]], ev: dict[str, Any] | None,
                      skips: SkipLog, wall: float) -> dict[str, Any]:
        """The run's summary; written to summary.json, with the closing lines printed."""
        summary = {
            "config": asdict(self.cfg),
            "data": {"name": source.name, "images": len(source), "classes": len(source.classes)},
            "device": str(device),
            "world_size": world,
            "versions": {"torch": torch.__version__, "numpy": np.__version__},
            "epochs": records,
            "final_evaluation": ev,
            "skipped_images": [{"index": i, "path": p, "reason": r}
                               for i, (p, r) in sorted(skips.skipped.items())],
            "wall_time_s": wall,
        }
        if not self.enabled:
            return summary
        with open(self.out / "summary.json", "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        if skips:
            print(f"skipped {len(skips)} unreadable image(s); see summary.json", file=sys.stderr)
        print(f"wall time {wall:.1f}s; outputs in {self.out}")
        return summary
