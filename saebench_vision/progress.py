"""Progress for long loops: a tqdm bar on a terminal, and plain lines in a log file.

A bar redrawn with carriage returns is useless in a log (``saebench run ... 2> run.log``, a
batch job, CI), and no output at all during a 15-minute extraction is worse. ``mode="log"``
prints one line each time another ``percent`` of the work is done or ``seconds`` have passed,
whichever comes first, with the rate and the estimated time left::

    extract lite0/train: 4500/12000 item (38%), 61.2 item/s, 1m14s elapsed, ETA 2m03s
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, Literal, TextIO

ProgressMode = bool | Literal["bar", "log", "off"]


def resolve_mode(mode: ProgressMode) -> str:
    """``True`` is a bar, ``False`` nothing; strings are taken as they are."""
    if mode is True:
        return "bar"
    if mode is False:
        return "off"
    return str(mode)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class LogProgress:
    """The tqdm subset the loops use (``update``, ``set_postfix``, ``close``), as log lines."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str,
        *,
        initial: int = 0,
        file: TextIO | None = None,
        percent: float = 10.0,
        seconds: float = 60.0,
        clock: Any = time.monotonic,
    ) -> None:
        self.total, self.desc, self.unit = max(0, int(total)), desc, unit
        self.n = self.start = int(initial)
        self.file = file
        self.step = max(1, int(self.total * percent / 100)) if self.total else 1
        self.seconds = seconds
        self.clock = clock
        self.t0 = self.last_time = clock()
        self.next_n = self.n + self.step
        self.postfix = ""
        self.postfix_source: Callable[[], dict[str, Any]] | None = None
        """Called as each line is printed, so the line shows the values of that moment (a
        training loop's loss is read then, not at some earlier step)."""
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if self.n >= self.next_n or now - self.last_time >= self.seconds:
            if self.n < self.total:
                self._line(now)
            self.next_n = (self.n // self.step + 1) * self.step
            self.last_time = now

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n > self.start:
                self._line(self.clock(), done=True)

    def _line(self, now: float, *, done: bool = False) -> None:
        if self.postfix_source is not None:
            self.set_postfix(**self.postfix_source())
        elapsed = now - self.t0
        rate = (self.n - self.start) / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit}{share}"]
        parts.append(f"{rate:.3g} {self.unit}/s" if rate < 1000 else f"{rate:.0f} {self.unit}/s")
        parts.append(f"{_duration(elapsed)} elapsed")
        if done:
            parts.append("done")
        elif rate > 0 and self.total:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        print(", ".join(parts), file=self.file or sys.stderr, flush=True)


def make_progress(
    total: int,
    desc: str,
    unit: str,
    mode: ProgressMode,
    *,
    initial: int = 0,
    file: TextIO | None = None,
    leave: bool = True,
) -> Any:
    """A progress reporter with ``update`` / ``set_postfix`` / ``close``, or None for
    ``mode`` off: a tqdm bar (``bar`` or True) or :class:`LogProgress` lines (``log``)."""
    resolved = resolve_mode(mode)
    if resolved == "off":
        return None
    if resolved == "log":
        return LogProgress(total, desc, unit, initial=initial, file=file)
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        dynamic_ncols=True,
        leave=leave,
        file=file,
    )
