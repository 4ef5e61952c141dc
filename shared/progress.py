"""Progress for long stages: a tqdm bar on a terminal, plain periodic lines anywhere else.

A bar redraws itself with carriage returns, which a log file keeps every one of (an 88 KB log for
one example set). When the stream is not a terminal, ``progress`` writes one ordinary line every
``PLAIN_INTERVAL_S`` seconds and one when the stage ends ("optimisation: 600/2000 (30%), 1.4 it/s,
12 s elapsed, about 16 min left, loss=0.41"). Every long loop in the project takes its bar from ``progress_bar``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

PLAIN_INTERVAL_S = 30.0


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class PlainProgress:
    """The part of tqdm's interface the project uses (iterate, ``update``, ``set_postfix``, ``n``,
    ``total``, ``close``, ``with``), written as plain lines at most every ``interval`` seconds."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: float | None = None,
        initial: float = 0,
        desc: str = "",
        unit: str = "it",
        disable: bool = False,
        file: IO[str] | None = None,
        interval: float = PLAIN_INTERVAL_S,
    ):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.initial = total, initial, initial
        self.desc, self.unit, self.disable = desc, unit, disable
        self.file = file
        self.interval = interval
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.closed = False

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this progress has no iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._write()

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.n:g}" + (f"/{self.total:g}" if self.total else f" {self.unit}")]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        if rate >= 100:
            parts.append(f"{rate:,.0f} {self.unit}/s")
        elif rate >= 0.1 or rate == 0:
            parts.append(f"{rate:.3g} {self.unit}/s")
        else:
            parts.append(f"{1 / rate:.3g} s/{self.unit}")
        parts.append(f"{_clock(elapsed)} elapsed")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"about {_clock((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def _write(self) -> None:
        if not self.disable:
            stream = self.file if self.file is not None else sys.stderr
            print(self.line(), file=stream, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write()


def is_terminal(stream: IO[str] | None = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable: Iterable | None = None, **kwargs: Any):
    """A tqdm bar where stderr (or ``file``) is a terminal, a ``PlainProgress`` elsewhere; same arguments."""
    if is_terminal(kwargs.get("file")):
        from tqdm import tqdm

        return tqdm(iterable, **{k: v for k, v in kwargs.items() if k != "interval"})
    return PlainProgress(iterable, **kwargs)
