"""Run control for long jobs: a progress bar on stderr and a SIGINT/SIGTERM flag that lets the
trainer stop at the next batch boundary and save a checkpoint."""

from __future__ import annotations

import signal
import sys
import time
from typing import Any


class Progress:
    """A one-line progress bar on stderr: ``label |#####-----| 12/40  3.1s``."""

    def __init__(self, label: str, total: int, enabled: bool, width: int = 24) -> None:
        self.label, self.total, self.enabled, self.width = label, max(total, 1), enabled, width
        self.done, self.start, self.last = 0, time.perf_counter(), 0.0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self.last > 0.1 or self.done >= self.total):
            self.last = now
            filled = int(self.width * min(self.done, self.total) / self.total)
            bar = "#" * filled + "-" * (self.width - filled)
            sys.stderr.write(f"\r  {self.label:<10} |{bar}| {self.done}/{self.total}"
                             f"  {now - self.start:5.1f}s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * (self.width + 50) + "\r")
            sys.stderr.flush()


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it at batch boundaries. A second SIGINT aborts."""

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
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: no handlers (tests may call train())
                pass

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class Interrupted(Exception):
    """A stop was requested (SIGINT/SIGTERM); raised out of :func:`train` once the checkpoint
    is saved. ``out``: the run's folder; ``signum``: the signal."""

    def __init__(self, out: str = "", signum: int | None = None) -> None:
        super().__init__(out)
        self.out, self.signum = out, signum


# --------------------------------------------------------------------------- the run
