"""``python -m fastdc.convert_weights IN OUT [--to reference|fastdc]``: convert network weights
between fastdc's layout and the reference DeepCluster code's (its released AlexNet / VGG16
``checkpoint.pth.tar``).

IN is a fastdc.train checkpoint, a fastdc weight file or a reference checkpoint (the layout is
detected). ``--to`` defaults to the other layout. A fastdc weight file holds ``config`` (the
architecture) and ``model`` (the state dict), and is read by ``--init-from`` and
``eval_linear --checkpoint``; a reference file holds ``epoch``, ``arch`` and ``state_dict`` with
the released key names, and is read by the reference's ``util.load_model``. The key map and what
cannot be converted are in :mod:`fastdc.deepcluster.weights`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fastdc.deepcluster import LAYOUTS, CheckpointError, read_weights, write_weights


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m fastdc.convert_weights`` argument parser."""
    p = argparse.ArgumentParser(prog="python -m fastdc.convert_weights",
                                description=__doc__.split("\n\n")[1])
    p.add_argument("source", metavar="IN", help="fastdc or reference checkpoint")
    p.add_argument("target", metavar="OUT", help="the converted file")
    p.add_argument("--to", choices=LAYOUTS,
                   help="layout of OUT (default: the other one than IN's)")
    p.add_argument("--force", action="store_true", help="overwrite OUT when it exists")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    target = Path(args.target)
    try:
        if target.exists() and not args.force:
            raise CheckpointError(f"{args.target!r} exists: choose another OUT or pass --force")
        weights = read_weights(args.source)
        layout = args.to or next(x for x in LAYOUTS if x != weights.layout)
        write_weights(weights, target, layout)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.source} ({weights.describe()}) -> {args.target} ({layout} layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
