"""Progress bars for long work (one place, so every command looks the same)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, total: int | None = None, enabled: bool | None = None) -> Iterator[T]:
    """Wrap ``iterable`` in a progress bar on stderr.

    :param desc: what is being done, e.g. ``"generating dates"``.
    :param total: number of items when ``iterable`` has no ``len``.
    :param enabled: force the bar on or off; by default it shows on a terminal and is silenced by
        ``HVAESEG_NO_PROGRESS=1``.
    """
    if enabled is None:
        enabled = sys.stderr.isatty() and not os.environ.get("HVAESEG_NO_PROGRESS")
    return iter(tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=False, dynamic_ncols=True))
