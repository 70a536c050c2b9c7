"""Progress for people and for logs: a tqdm bar on a terminal, a few plain lines anywhere else.

When stderr is not a terminal (CI logs, ``nohup``, ``make demo > log``, a board's serial
console) every bar redraw would become a line; :func:`progress_bar` then returns a
:class:`LineProgress`, which prints one line when the phase ends (count, time, rate) and at most
one interim line per ``interval_s`` (count, rate, ETA). Both offer the part of tqdm's interface
the pipeline uses: iteration, ``update``, ``n``, ``set_postfix``, ``set_postfix_str``, ``write``,
``close`` and ``format_dict["elapsed"]``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

INTERIM_INTERVAL_S = 60.0  # plain-line mode: at most one interim line per minute per phase


def is_terminal(stream: TextIO | None = None) -> bool:
    """True when `stream` (default stderr) is an interactive terminal."""
    stream = stream or sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class LineProgress:
    """A progress reporter for non-terminal streams: one line per phase (plus rare interim lines)."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, stream: TextIO | None = None,
                 interval_s: float = INTERIM_INTERVAL_S, leave: bool = True) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total = total
        self.desc, self.unit, self.n = desc, unit, initial
        self.initial = initial
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self.postfix = ""
        self._start = self._last = time.perf_counter()
        self._closed = False

    @property
    def format_dict(self) -> dict[str, Any]:
        """What tqdm's format_dict offers that callers read: elapsed seconds."""
        return {"elapsed": time.perf_counter() - self._start, "n": self.n, "total": self.total}

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            return
        for item in self.iterable:
            yield item
            self.update(1)

    def _rate(self) -> float:
        elapsed = time.perf_counter() - self._start
        return (self.n - self.initial) / elapsed if elapsed > 0 else 0.0

    def _line(self, final: bool) -> str:
        elapsed = time.perf_counter() - self._start
        rate = self._rate()
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        parts = [f"{self.desc}: {count} {self.unit}", f"{_duration(elapsed)}", f"{rate:.3g} {self.unit}/s"]
        if not final and self.total is not None and rate > 0:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def update(self, n: int = 1) -> None:
        """Count `n` more; print an interim line when the interval has passed."""
        self.n += n
        now = time.perf_counter()
        if now - self._last >= self.interval_s and not self._closed:
            self._last = now
            print(self._line(final=False), file=self.stream, flush=True)

    def set_postfix(self, **kwargs: Any) -> None:
        """Extra fields shown on the next line (``loss=0.12``)."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def set_postfix_str(self, text: str) -> None:
        """Extra text shown on the next line."""
        self.postfix = text

    def write(self, text: str, file: TextIO | None = None) -> None:
        """Print a line of the caller's own."""
        print(text, file=file or self.stream, flush=True)

    def close(self) -> None:
        """The phase ended: print its one summary line (once)."""
        if not self._closed:
            self._closed = True
            print(self._line(final=True), file=self.stream, flush=True)


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, leave: bool = False, disable: bool = False, **tqdm_kwargs: Any) -> Any:
    """A tqdm bar on stderr when it is a terminal, else a :class:`LineProgress`; None-like when `disable`."""
    if disable:
        from tqdm import tqdm

        return tqdm(iterable, total=total, disable=True)
    if not is_terminal():
        return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial)
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=sys.stderr,
                dynamic_ncols=True, **tqdm_kwargs)
