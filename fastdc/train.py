"""``python -m fastdc.train``: DeepCluster and DeeperCluster end to end.

See :mod:`fastdc.deepcluster` for what a run does and ``--help`` for the flags.
"""

import sys

from fastdc.deepcluster import main, train

__all__ = ["main", "train"]

if __name__ == "__main__":
    sys.exit(main())
