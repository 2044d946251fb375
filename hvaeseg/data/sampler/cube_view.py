"""What the sampler reads from a cube (:class:`CubeView`: its shape, the ``valid`` planes, the labelled pixels, a
mosaic's layout) and the valid fractions of boxes (:func:`valid_fractions`, by integral images)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any

import numpy as np

from hvaeseg.data.mosaic import MosaicLayout, reserved_splits

__all__ = ["CubeView", "box_sums", "integral", "valid_fractions"]


class CubeView:
    """What the sampler needs from a cube: its shape, per-date ``valid`` planes, the labelled pixels.

    :param cube: an ``xarray.Dataset`` or a store path/URL (opened lazily, not validated).
    """

    def __init__(self, cube: Any, storage_options: Mapping[str, Any] | None = None) -> None:
        import xarray as xr

        if isinstance(cube, (str, PathLike)):
            from hvaeseg.data.store import open_cube

            cube = open_cube(str(cube), storage_options=storage_options, validate=False)
        if not isinstance(cube, xr.Dataset):
            raise TypeError(f"expected a cube (xarray.Dataset) or a store path/URL, got {type(cube).__name__}")
        missing = [d for d in ("time", "y", "x") if d not in cube.sizes]
        if missing:
            raise ValueError(f"expected a cube with dimensions time, y, x; missing {missing}")
        self.ds = cube
        self.shape = {d: int(cube.sizes[d]) for d in ("time", "y", "x")}
        self._valid = cube["valid"].transpose("time", "y", "x") if "valid" in cube else None
        #: the image layout of a mosaic of camera images (None for other cubes), and the splits it reserves
        self.mosaic = MosaicLayout.from_cube(cube)
        self.reserved = reserved_splits(cube) if self.mosaic is not None else None

    @classmethod
    def of(cls, cube: Any, storage_options: Mapping[str, Any] | None = None) -> CubeView:
        """``cube`` itself when it is a view already, else its view."""
        return cube if isinstance(cube, CubeView) else cls(cube, storage_options)

    def valid_plane(self, t: int) -> np.ndarray:
        """``(Y, X)`` bool: the pixels valid on date ``t`` (all, for a cube without ``valid``)."""
        if self._valid is None:
            return np.ones((self.shape["y"], self.shape["x"]), dtype=bool)
        return np.asarray(self._valid[t].values, dtype=bool)

    def labelled_pixels(self) -> np.ndarray | None:
        """``(Y, X)`` bool: the pixels with a class (not void); None for a cube without ``labels``."""
        if "labels" not in self.ds:
            return None
        return np.asarray(self.ds["labels"].transpose("y", "x").values) >= 0


def integral(plane: np.ndarray) -> np.ndarray:
    """The ``(Y + 1, X + 1)`` int64 integral image (summed-area table) of a 2-D plane."""
    s = np.zeros((plane.shape[0] + 1, plane.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(plane, axis=0, dtype=np.int64), axis=1, out=s[1:, 1:])
    return s


def box_sums(s: np.ndarray, y0: np.ndarray, x0: np.ndarray, h: int | np.ndarray, w: int | np.ndarray) -> np.ndarray:
    """The sums over the boxes at ``(y0, x0)`` of size ``h x w``, from the integral image ``s``."""
    y1, x1 = y0 + h, x0 + w
    return s[y1, x1] - s[y0, x1] - s[y1, x0] + s[y0, x0]


def valid_fractions(view: CubeView, boxes: Sequence[tuple[np.ndarray, np.ndarray, int, int]]) -> list[np.ndarray]:
    """For each set of boxes ``(y0, x0, h, w)``, the ``(n, T)`` valid fraction of every date.

    One pass over the dates (one ``valid`` plane in memory at a time), integral images for the box sums.
    """
    T = view.shape["time"]
    out = [np.empty((len(y0), T), dtype=np.float64) for (y0, _, _, _) in boxes]
    if not any(len(b[0]) for b in boxes):
        return out
    for t in range(T):
        s = integral(view.valid_plane(t))
        for o, (y0, x0, h, w) in zip(out, boxes):
            if len(y0):
                o[:, t] = box_sums(s, y0, x0, h, w) / float(h * w)
    return out
