"""Smooth random fields: drawn on a coarse grid by spectral (FFT) filtering, sampled bilinearly per pixel.

Every smooth structure of the synthetic cube (forest and water masks, towns, within-field texture,
clouds, cirrus, snow cover) is a Gaussian random field. Drawing it at full resolution would cost
millions of normals and FFTs of the full image, so it is drawn on a grid ``spacing`` pixels apart (a few
hundred nodes a side) and only *sampled* at full resolution, a block of rows at a time, by bilinear
interpolation: four passes over the output, no matter how large the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["LowResField", "random_field", "coarse_spacing"]


def coarse_spacing(size_px: int, max_nodes: int) -> int:
    """Grid spacing in pixels so that ``size_px`` needs at most about ``max_nodes`` nodes."""
    return max(1, math.ceil(size_px / max_nodes))


def random_field(
    rng: np.random.Generator,
    shape: tuple[int, int],
    spacing: float,
    *,
    corr_px: float,
    smallest_px: float = 0.0,
    slope: float = 0.0,
    anisotropy: float = 1.0,
    angle: float = 0.0,
) -> np.ndarray:
    """A periodic zero-mean, unit-variance Gaussian random field on a grid of ``shape`` nodes.

    The amplitude spectrum is Gaussian, ``exp(-2 pi^2 corr^2 k^2)`` (smooth blobs about ``corr_px``
    across), or, with ``slope > 0``, a power law ``(k^2 + k0^2)^(-slope / 2)`` rolled off below
    ``smallest_px`` (fractal, cloud-like edges; ``k0 = 1 / corr_px`` sets the largest structures).

    :param spacing: distance between grid nodes in pixels; lengths are given in pixels.
    :param anisotropy: > 1 stretches the structures ``anisotropy`` times along ``angle`` (radians).
    :returns: ``shape`` float32.
    """
    h, w = shape
    noise = rng.standard_normal((h, w), dtype=np.float32)
    ky = np.fft.fftfreq(h, d=spacing).astype(np.float32)[:, None]
    kx = np.fft.rfftfreq(w, d=spacing).astype(np.float32)[None, :]
    if anisotropy != 1.0:
        c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
        ka = kx * c + ky * s  # along the stretch direction: shorter wave numbers
        kb = -kx * s + ky * c
        k2 = np.square(ka * np.float32(anisotropy)) + np.square(kb)
    else:
        k2 = np.square(ky) + np.square(kx)
    if slope > 0:
        k0 = np.float32(1.0 / corr_px)
        amp = np.power(k2 + k0 * k0, np.float32(-slope / 2.0))
        if smallest_px > 0:
            amp *= np.exp(np.float32(-2.0 * math.pi**2 * smallest_px**2) * k2)
    else:
        amp = np.exp(np.float32(-2.0 * math.pi**2 * corr_px**2) * k2)
    amp[0, 0] = 0.0
    spectrum = np.fft.rfft2(noise)  # float32 in, complex64 out (numpy >= 2)
    spectrum *= amp
    field = np.fft.irfft2(spectrum, s=(h, w)).astype(np.float32, copy=False)
    std = float(field.std(dtype=np.float64))
    if std > 0:
        field /= np.float32(std)
    return field


@dataclass(frozen=True)
class LowResField:
    """A field on a coarse grid, sampled per pixel by bilinear interpolation.

    Node ``(i, j)`` sits at pixel coordinate ``(origin[0] + i * spacing, origin[1] + j * spacing)``
    (pixel ``(r, c)`` has its centre at ``(r + 0.5, c + 0.5)``).

    :param values: ``(Hl, Wl)`` float32 node values.
    :param spacing: node distance in pixels.
    :param origin: pixel coordinate of node ``(0, 0)``.
    :param wrap: periodic in both axes (fields from :func:`random_field` are); else clamped at the border.
    """

    values: np.ndarray
    spacing: float
    origin: tuple[float, float] = (0.0, 0.0)
    wrap: bool = True

    @classmethod
    def covering(
        cls, rng: np.random.Generator, size: tuple[int, int], spacing: int, margin: tuple[int, int] = (0, 0), **spec
    ) -> LowResField:
        """A random field whose grid covers ``size`` pixels plus ``margin`` pixels after each axis."""
        h = math.ceil((size[0] + margin[0]) / spacing) + 3
        w = math.ceil((size[1] + margin[1]) / spacing) + 3
        values = random_field(rng, (h, w), spacing, **spec)
        return cls(values, float(spacing), (-float(spacing), -float(spacing)), True)

    def _axis(self, centres: np.ndarray, origin: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        q = (centres - origin) / self.spacing
        i0 = np.floor(q)
        w = (q - i0).astype(np.float32)
        i0 = i0.astype(np.int64)
        if self.wrap:
            return i0 % n, (i0 + 1) % n, w
        i0c = np.clip(i0, 0, n - 1)
        i1c = np.clip(i0 + 1, 0, n - 1)
        return i0c, i1c, w

    def rows(self, r0: int, r1: int, width: int, shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
        """The field at pixels ``[r0, r1) x [0, width)``, displaced by ``shift`` pixels.

        ``shift = (dy, dx)`` returns the field value that sits ``(dy, dx)`` pixels *before* each pixel
        (``out[r, c] = field(r - dy, c - dx)``), e.g. a cloud's shadow.

        :returns: ``(r1 - r0, width)`` float32.
        """
        hl, wl = self.values.shape
        y0, y1, wy = self._axis(np.arange(r0, r1) + 0.5 - shift[0], self.origin[0], hl)
        x0, x1, wx = self._axis(np.arange(width) + 0.5 - shift[1], self.origin[1], wl)
        need = np.unique(np.concatenate([y0, y1]))
        sub = self.values[need]  # (n, Wl): the few coarse rows these pixel rows need
        along_x = sub[:, x0]
        along_x += (sub[:, x1] - along_x) * wx
        pos = np.searchsorted(need, y0), np.searchsorted(need, y1)
        out = along_x[pos[0]]
        out += (along_x[pos[1]] - out) * wy[:, None]
        return out

    def at(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """The field at pixel coordinates ``(ys, xs)`` (any equal shapes), bilinear; float32."""
        hl, wl = self.values.shape
        y0, y1, wy = self._axis(np.asarray(ys, dtype=np.float64), self.origin[0], hl)
        x0, x1, wx = self._axis(np.asarray(xs, dtype=np.float64), self.origin[1], wl)
        v = self.values
        top = v[y0, x0] * (1 - wx) + v[y0, x1] * wx
        bottom = v[y1, x0] * (1 - wx) + v[y1, x1] * wx
        return (top * (1 - wy) + bottom * wy).astype(np.float32)

    def node_window(self, size: tuple[int, int]) -> np.ndarray:
        """The node values whose positions fall inside the ``size`` pixel window at the origin."""
        hl, wl = self.values.shape
        ys = np.arange(hl) * self.spacing + self.origin[0]
        xs = np.arange(wl) * self.spacing + self.origin[1]
        # nodes that influence some pixel of the window (one node beyond each side)
        iy = np.flatnonzero((ys > -self.spacing) & (ys < size[0] + self.spacing))
        ix = np.flatnonzero((xs > -self.spacing) & (xs < size[1] + self.spacing))
        if iy.size == 0 or ix.size == 0:
            iy = iy if iy.size else np.array([min(max(int(-self.origin[0] / self.spacing), 0), hl - 1)])
            ix = ix if ix.size else np.array([min(max(int(-self.origin[1] / self.spacing), 0), wl - 1)])
        return self.values[np.ix_(iy, ix)]

    def threshold_for_cover(self, size: tuple[int, int], cover: float) -> float:
        """The level above which about ``cover`` of the window lies (quantile of the window's nodes)."""
        window = self.node_window(size)
        if cover <= 0:
            return float(window.max()) + 1e-3
        if cover >= 1:
            return float(window.min()) - 1e-3
        return float(np.quantile(window, 1.0 - cover))
