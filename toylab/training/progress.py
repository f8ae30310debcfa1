"""A small progress bar for long loops (training, benchmarks).

On a terminal it redraws one line; elsewhere (a log file, CI, a notebook
whose output is checked) it prints a line at 0%, every ``log_every`` fraction
and at the end, so stored outputs stay short and readable.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO


class Progress:
    """``with Progress(total, "training") as bar: bar.update(1, loss=2.3)``"""

    def __init__(self, total: int, desc: str = "", *, enabled: bool = True, stream: TextIO | None = None,
                 log_every: float = 0.25, width: int = 24):
        self.total, self.desc, self.enabled = max(int(total), 1), desc, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.width, self.log_every = width, log_every
        self.n = 0
        self.info: dict[str, float] = {}
        self.start = time.perf_counter()
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_draw = 0.0
        self._next_log = 0.0

    def update(self, n: int = 1, **info: float) -> None:
        self.n = min(self.n + n, self.total)
        self.info.update(info)
        if not self.enabled:
            return
        now = time.perf_counter()
        frac = self.n / self.total
        if self._tty:
            if now - self._last_draw > 0.1 or self.n == self.total:
                self._last_draw = now
                self.stream.write("\r" + self._line(now))
                self.stream.flush()
        elif frac >= self._next_log:
            # log lines at 0%, every log_every, and once at 100%
            step = self.log_every
            self._next_log = math.inf if self.n == self.total else min((math.floor(frac / step) + 1) * step, 1.0)
            self.stream.write(self._line(now) + "\n")
            self.stream.flush()

    def _line(self, now: float) -> str:
        frac = self.n / self.total
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        extra = " ".join(f"{k}={v:.3f}" for k, v in self.info.items())
        return f"{self.desc} [{bar}] {self.n}/{self.total} {now - self.start:.1f}s {extra}".rstrip()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()
