"""Small helpers the schema's modules share: dtype tests and the pieces of problem messages."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import numpy as np


def _dims_str(dims: Iterable[Hashable]) -> str:
    return "(" + ", ".join(map(str, dims)) + ")"


def _preview(values: Iterable, n: int = 5) -> str:
    values = list(values)
    s = ", ".join(map(str, values[:n]))
    return s + (f", ... ({len(values)} in all)" if len(values) > n else "")


def _is_int(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.integer)
