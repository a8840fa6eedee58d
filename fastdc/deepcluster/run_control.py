"""Run control for long jobs: progress bars on stderr (tqdm) and a SIGINT/SIGTERM flag that
lets the trainer stop at the next batch boundary and save a checkpoint."""

from __future__ import annotations

import signal
import sys
from typing import Any

from tqdm import tqdm

# ``  features   |########----------------| 12/40    3.1s  eta 00:07``
BAR_FORMAT = "  {desc:<10} |{bar:24}| {n_fmt}/{total_fmt}  {elapsed_s:5.1f}s  eta {remaining}"


def progress_bar(label: str, total: int, enabled: bool, initial: int = 0) -> tqdm:
    """A one-line progress bar on stderr, ``total`` steps of which ``initial`` are done
    already; cleared when closed. ``enabled=False`` gives a bar that draws nothing."""
    return tqdm(total=max(total, 1), initial=initial, desc=label, file=sys.stderr,
                disable=not enabled, leave=False, ascii="-#", bar_format=BAR_FORMAT,
                mininterval=0.1, dynamic_ncols=False)


def note(message: str) -> None:
    """Print a line on stderr without breaking an active progress bar."""
    tqdm.write(message, file=sys.stderr)


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it at batch boundaries. A second SIGINT aborts.

    :meth:`install` replaces the handlers of both signals and :meth:`uninstall` puts back
    exactly the handlers it found (``SIG_IGN`` included, as in a process started with nohup).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __bool__(self) -> bool:
        return self.signum is not None

    def _handler(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: saving a checkpoint at the next "
              "batch boundary (press Ctrl-C again to abort without saving)", file=sys.stderr)

    def install(self) -> None:
        """Handle SIGINT and SIGTERM (a no-op outside the main thread, where Python allows no
        handlers: tests may call the trainer from a thread)."""
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:
                pass

    def uninstall(self) -> None:
        """Restore the handlers found by :meth:`install`. A handler installed from C (which
        Python reports as None and cannot reinstall) is left as the default instead."""
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()


class Interrupted(Exception):
    """A stop was requested (SIGINT/SIGTERM); raised out of the trainer once the checkpoint
    is saved. ``out``: the run's folder; ``signum``: the signal."""

    def __init__(self, out: str = "", signum: int | None = None) -> None:
        super().__init__(out)
        self.out, self.signum = out, signum
