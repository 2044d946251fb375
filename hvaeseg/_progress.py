"""Progress for long work (one place, so every command looks the same): a bar on a terminal, and otherwise
(logs, batch jobs, pipes) one line at a steady interval with the count, the speed and the time left."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

#: seconds between progress lines when stderr is not a terminal (``HVAESEG_PROGRESS_INTERVAL`` overrides)
LOG_INTERVAL_S = 30.0


def _duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(desc: str, done: int, total: int | None, elapsed: float, status: str = "") -> str:
    """One progress line: ``DESC: DONE/TOTAL (P%), R it/s, elapsed E, ETA T[, STATUS]``."""
    rate = done / elapsed if elapsed > 0 else math.inf
    parts = [f"{desc}: {done}/{total} ({100 * done / total:.0f}%)" if total else f"{desc}: {done}"]
    parts.append(f"{rate:.2f} it/s" if math.isfinite(rate) else "- it/s")
    parts.append(f"elapsed {_duration(elapsed)}")
    if total and math.isfinite(rate) and rate > 0:
        parts.append(f"ETA {_duration((total - done) / rate)}")
    if status:
        parts.append(status)
    return ", ".join(parts)


def _lines(iterable: Iterable[T], desc: str, total: int | None, interval: float, status: Callable[[], str] | None,
           stream: TextIO, clock: Callable[[], float]) -> Iterator[T]:
    start = last = clock()
    done = 0
    for item in iterable:
        yield item
        done += 1
        now = clock()
        if now - last >= interval:
            print(progress_line(desc, done, total, now - start, status() if status else ""), file=stream, flush=True)
            last = now


def progress(
    iterable: Iterable[T],
    desc: str,
    total: int | None = None,
    enabled: bool | None = None,
    *,
    status: Callable[[], str] | None = None,
    interval: float | None = None,
    stream: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[T]:
    """Wrap ``iterable`` so that its progress shows on stderr.

    On a terminal: a tqdm bar. Otherwise: a line every ``interval`` seconds (default :data:`LOG_INTERVAL_S`, or
    ``HVAESEG_PROGRESS_INTERVAL``) with the count, speed, elapsed time, ETA and ``status()``
    (e.g. the last loss); work shorter than one interval prints nothing.

    :param desc: what is being done, e.g. ``"generating dates"``.
    :param total: number of items when ``iterable`` has no ``len``.
    :param enabled: force progress on or off; by default on, silenced by ``HVAESEG_NO_PROGRESS=1``.
    :param status: returns a short text for the log lines (not the bar).
    :param stream: where to write (default ``sys.stderr``); ``clock``: seconds, for tests.
    """
    stream = sys.stderr if stream is None else stream
    if enabled is None:
        enabled = not os.environ.get("HVAESEG_NO_PROGRESS")
    if not enabled:
        return iter(iterable)
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if getattr(stream, "isatty", lambda: False)():
        return iter(tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, file=stream))
    if interval is None:
        interval = float(os.environ.get("HVAESEG_PROGRESS_INTERVAL", LOG_INTERVAL_S))
    return _lines(iterable, desc, total, interval, status, stream, clock)
