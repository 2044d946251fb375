"""The Sentinel-2 cube schema: variables, dimensions, dtypes and attributes, and their validation.

A cube is an :class:`xarray.Dataset` (see ``docs/conventions.md``):

=====================  ======================  ==========================  =====================================
variable               dims                    dtype                       notes
=====================  ======================  ==========================  =====================================
``reflectance``        (time, band, y, x)      uint16 DN or float32        ``scale_factor``/``add_offset`` on DN;
                                                                           DN 0 = no data; float32 is
                                                                           reflectance, NaN = no data
``valid``              (time, y, x)            bool                        observed and clear; False wherever
                                                                           a band has no data
``scl``                (time, y, x)            uint8                       optional, SCL codes 0..11
``labels``             (y, x)                  int16                       -1 = void; CF ``flag_values``,
                                                                           ``flag_meanings``, ``flag_colors``
``clean_reflectance``  (time, band, y, x)      as ``reflectance``          synthetic cubes: truth under clouds
=====================  ======================  ==========================  =====================================

:class:`CubeSchema` holds these specs as data; :func:`validate_cube` walks them, collects *every* problem
and raises one :class:`CubeValidationError` whose message lists each problem with its fix. Value checks
that would read a whole big cube (reflectance range, no data under ``valid``, SCL codes) look at a fixed
sample of it.

Reflectance comes in two forms, both read by the loader:

* **uint16 DN** (what Sentinel-2 L2A products store): reflectance = ``DN * scale_factor + add_offset``
  (``scale_factor=1e-4``; ``add_offset=-0.1`` from processing baseline 04.00, else 0.0), DN 0 = no data.
* **float32 reflectance** in physical units, NaN = no data, no ``scale_factor``. The loader reads it at the
  1e-4 step of L2A products (the precision of the source data), as the DN of ``add_offset=-0.1``.

Other float dtypes are refused with the conversion (to float32, or to DN with ``add_offset``, so that
negative reflectance does not wrap around in uint16). A pixel with no data (DN 0 or NaN) in any band
must not be ``valid``: the loader would train on it. A cube opened with plain ``xarray.open_zarr(path)``
(CF decoding: float64 reflectance, ``scale_factor``/``add_offset`` moved to ``encoding``) validates as the
stored cube: such variables are checked as the DN they decode from (:func:`validate_cube`).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from hvaeseg.data.bands import BAND_NAMES, CAMERA_BANDS, CAMERA_SENSOR, _unknown_message
from hvaeseg.data.mosaic import IMAGE_DIM, MosaicLayout, mosaic_problems

__all__ = [
    "SCHEMA_VERSION",
    "SCL_CODES",
    "CLEAR_SCL",
    "DEFAULT_CLASS_COLORS",
    "VariableSpec",
    "CubeSchema",
    "CubeValidationError",
    "validate_cube",
    "valid_from_scl",
    "class_attrs",
    "class_names",
    "class_colors",
    "decoded_reflectance",
]

#: version of the on-disk layout, written as the dataset attribute ``hvaeseg_schema_version``
SCHEMA_VERSION = 1

#: Sentinel-2 L2A scene classification (SCL) codes
SCL_CODES: dict[int, str] = {
    0: "no_data",
    1: "saturated_or_defective",
    2: "dark_area",
    3: "cloud_shadow",
    4: "vegetation",
    5: "not_vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud_medium_probability",
    9: "cloud_high_probability",
    10: "thin_cirrus",
    11: "snow",
}

#: SCL codes counted as a clear observation: dark area, vegetation, not vegetated, water, unclassified
CLEAR_SCL: tuple[int, ...] = (2, 4, 5, 6, 7)

#: class colours used when a label map carries no ``flag_colors`` (matplotlib tab20 order, then grey)
DEFAULT_CLASS_COLORS: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
    "#dbdb8d", "#9edae5",
)  # fmt: skip

_COLOR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")
_NAME_RE = re.compile(r"^\S+$")


@dataclass(frozen=True)
class VariableSpec:
    """What one cube variable must look like.

    :param name: variable name in the Dataset.
    :param dims: required dimension names, in order.
    :param dtypes: allowed dtypes (numpy names); the first is the preferred one, used in fixes.
    :param attrs: attributes required whatever the dtype.
    :param integer_attrs: attributes required when the dtype is an integer type (e.g. DN scaling).
    :param description: one line for docs and messages.
    """

    name: str
    dims: tuple[str, ...]
    dtypes: tuple[str, ...]
    attrs: tuple[str, ...] = ()
    integer_attrs: tuple[str, ...] = ()
    description: str = ""


class CubeSchema:
    """The cube layout as data (like torchgeo datasets declaring bands and classes as class attributes).

    :func:`validate_cube` walks :attr:`variables`; readers may use :attr:`spatial_dims` etc. instead of
    spelling the names.
    """

    version: ClassVar[int] = SCHEMA_VERSION
    spatial_dims: ClassVar[tuple[str, str]] = ("y", "x")
    variables: ClassVar[dict[str, VariableSpec]] = {
        spec.name: spec
        for spec in (
            VariableSpec(
                "reflectance",
                ("time", "band", "y", "x"),
                ("uint16", "float32"),
                integer_attrs=("scale_factor", "add_offset"),
                description="surface reflectance; uint16 DN (0 = no data) or float32 reflectance",
            ),
            VariableSpec("valid", ("time", "y", "x"), ("bool",), description="pixel observed and clear"),
            VariableSpec("scl", ("time", "y", "x"), ("uint8",), description="Sentinel-2 SCL codes 0..11"),
            VariableSpec(
                "labels",
                ("y", "x"),
                ("int16",),
                attrs=("flag_values", "flag_meanings"),
                description="class ids 0..K-1, -1 = void",
            ),
            VariableSpec(
                "clean_reflectance",
                ("time", "band", "y", "x"),
                ("uint16", "float32"),
                integer_attrs=("scale_factor", "add_offset"),
                description="synthetic cubes: reflectance without clouds",
            ),
            VariableSpec(
                "image_index",
                ("y", "x"),
                ("int32",),
                description="image mosaics: the image of every pixel, -1 = empty cell",
            ),
            VariableSpec(
                "image_split",
                ("image",),
                ("int8",),
                description="image mosaics: the split an image is reserved for (0 train, 1 val, 2 test; -1 free)",
            ),
        )
    }
    #: dataset attributes: name -> description (optional, checked when present)
    dataset_attrs: ClassVar[dict[str, str]] = {
        "crs": "coordinate reference system, e.g. 'EPSG:32631'",
        "hvaeseg_schema_version": f"layout version, {SCHEMA_VERSION} for this hvaeseg",
        "sensor": f"'{CAMERA_SENSOR}' for camera images (bands R, G, B); absent for Sentinel-2",
        "mosaic_image_size": "image mosaics: [H, W] of every image (hvaeseg.data.mosaic)",
        "mosaic_columns": "image mosaics: images per row",
    }
    #: decoded reflectance outside this range (DN 0 / NaN excluded) is not physical
    reflectance_range: ClassVar[tuple[float, float]] = (-0.1, 2.0)
    #: arrays with more elements than this are value-checked on a sample (see ``_sample``)
    sample_limit: ClassVar[int] = 1 << 24


class CubeValidationError(ValueError):
    """A cube breaks the schema. :attr:`problems` lists every problem found, each with its fix."""

    def __init__(self, problems: Sequence[str]):
        self.problems: list[str] = list(problems)
        n = len(self.problems)
        # one line (the command line reports errors on one line), problems numbered
        listed = " ".join(f"[{i}] {p}" for i, p in enumerate(self.problems, 1)) if n > 1 else "".join(self.problems)
        super().__init__(f"cube is not valid ({n} problem{'s' if n != 1 else ''}): {listed}")


# --------------------------------------------------------------------------------------------- helpers


def _dims_str(dims: Iterable[Hashable]) -> str:
    return "(" + ", ".join(map(str, dims)) + ")"


def _preview(values: Iterable, n: int = 5) -> str:
    values = list(values)
    s = ", ".join(map(str, values[:n]))
    return s + (f", ... ({len(values)} in all)" if len(values) > n else "")


def _sample(da: xr.DataArray) -> np.ndarray:
    """All of ``da`` when small, else a fixed sample that reads few chunks.

    The sample is up to 4 evenly spaced dates (all bands) in two 256 x 256 windows (top-left corner and
    centre): a cheap look at a cube of any size. Each window is cut in one indexing step, so a lazy or
    zero-stride (broadcast) array never materialises more than the sample.
    """
    windows = _windows(da)
    if windows == [{}]:
        return np.asarray(da.values)
    return np.concatenate([np.asarray(da.isel(win).values).ravel() for win in windows])


def _windows(da: xr.DataArray) -> list[dict[Hashable, Any]]:
    """The ``isel`` indexers of :func:`_sample` (``[{}]``: all of ``da``); by dimension name, so variables
    with the same time/y/x sizes are sampled at the same pixels."""
    if da.size <= CubeSchema.sample_limit:
        return [{}]
    index: dict[Hashable, Any] = {}
    if "time" in da.dims and da.sizes["time"] > 4:
        index["time"] = np.unique(np.linspace(0, da.sizes["time"] - 1, 4).round().astype(int))
    windows = []
    for corner in ((0.0, 0.0), (0.5, 0.5)):
        win = dict(index)
        for dim, frac in zip(CubeSchema.spatial_dims, corner):
            if dim in da.dims:
                n = da.sizes[dim]
                start = min(int(n * frac), max(n - 256, 0))
                win[dim] = slice(start, start + 256)
        windows.append(win)
    return windows


def _is_int(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.integer)


def _fix_dtype(name: str, spec: VariableSpec, dtype: np.dtype) -> str:
    want = spec.dtypes[0]
    if name in ("reflectance", "clean_reflectance"):
        if np.issubdtype(dtype, np.floating):
            # DN with the offset: negative reflectance (water, shadow) must not wrap around in uint16
            return (
                f"ds['{name}'] = ds['{name}'].astype('float32') (reflectance units, NaN = no data), or store L2A "
                f"DN: ds['{name}'] = ((ds['{name}'] + 0.1) / 1e-4).round().clip(1, 65535).fillna(0)"
                ".astype('uint16').assign_attrs(scale_factor=1e-4, add_offset=-0.1)"
            )
        return f"ds['{name}'] = ds['{name}'].astype('uint16') (DN) with scale_factor/add_offset attrs"
    if name == "valid":
        if np.issubdtype(dtype, np.floating):
            return "ds['valid'] = ds['valid'].fillna(0).astype(bool) (NaN = not observed)"
        return "ds['valid'] = ds['valid'].astype(bool)"
    if name == "scl" and np.issubdtype(dtype, np.floating):
        return "ds['scl'] = ds['scl'].fillna(0).astype('uint8') (0 = no data)"
    if name == "labels":
        return "ds['labels'] = ds['labels'].fillna(-1).astype('int16') (void = -1)"
    return f"ds['{name}'] = ds['{name}'].astype('{want}')"


# --------------------------------------------------------------------------------------------- CF-decoded DN


def _cf_decoded(da: xr.DataArray) -> tuple[float, float, np.dtype, float] | None:
    """``(scale_factor, add_offset, stored dtype, fill)`` of DN that xarray decoded to float (CF
    ``mask_and_scale``: the scaling moved from ``attrs`` to ``encoding``), else None."""
    enc = da.encoding
    stored = enc.get("dtype")
    if (
        not np.issubdtype(da.dtype, np.floating)
        or "scale_factor" in da.attrs
        or not ("scale_factor" in enc or "add_offset" in enc)
        or stored is None
        or not _is_int(np.dtype(stored))
    ):
        return None
    fill = enc.get("_FillValue", 0)
    return float(enc.get("scale_factor", 1.0)), float(enc.get("add_offset", 0.0)), np.dtype(stored), fill


class _StoredDN(BackendArray):
    """A CF-decoded DN variable seen as its stored integer DN, lazily: only what is indexed is read."""

    def __init__(self, var: xr.Variable, scale: float, offset: float, dtype: np.dtype, fill: float) -> None:
        self.var, self.scale, self.offset, self.fill = var, scale, offset, fill
        self.shape, self.dtype = var.shape, np.dtype(dtype)

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.OUTER, self._read)

    def _read(self, key: tuple) -> np.ndarray:
        v = (np.asarray(self.var[key].values, dtype=np.float64) - self.offset) / self.scale
        masked = np.isnan(v)  # _FillValue decoded to NaN
        info = np.iinfo(self.dtype)
        v = np.clip(np.rint(np.where(masked, self.fill, v)), info.min, info.max)
        return v.astype(self.dtype)


def _as_stored(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with CF-decoded DN reflectance back as the stored DN (lazily; scaling back in ``attrs``)."""
    decoded = {name: cf for name in ("reflectance", "clean_reflectance")
               if name in ds.data_vars and (cf := _cf_decoded(ds[name])) is not None}
    if not decoded:
        return ds
    out = ds.copy(deep=False)
    for name, (scale, offset, dtype, fill) in decoded.items():
        var = ds[name].variable
        data = indexing.LazilyIndexedArray(_StoredDN(var, scale, offset, dtype, fill))
        attrs = {**var.attrs, "scale_factor": scale, "add_offset": offset}
        out[name] = xr.Variable(var.dims, data, attrs)
    return out


# --------------------------------------------------------------------------------------------- checks


def _check_variable(ds: xr.Dataset, spec: VariableSpec, grid: tuple[tuple[str, int], ...] | None) -> list[str]:
    """Dims, dtype and attributes of one variable."""
    problems: list[str] = []
    da = ds[spec.name]
    if tuple(da.dims) != spec.dims:
        have, want = tuple(map(str, da.dims)), spec.dims
        spatial_have = have[-2:] if len(have) >= 2 else ()
        other_have, other_want = have[:-2], want[:-2]
        if set(have) == set(want):
            problems.append(
                f"`{spec.name}` has dims {_dims_str(have)}, expected {_dims_str(want)}. "
                f"Fix: ds['{spec.name}'] = ds['{spec.name}'].transpose{tuple(want)}"
            )
        elif (
            grid is not None
            and other_have == other_want
            and spatial_have != CubeSchema.spatial_dims
            and tuple(da.sizes[d] for d in spatial_have) == tuple(n for _, n in grid)
        ):
            rename = ", ".join(f"{a}='{b}'" for a, b in zip(spatial_have, CubeSchema.spatial_dims) if a != b)
            problems.append(
                f"`{spec.name}` has spatial dims {_dims_str(spatial_have)}, expected (y, x). "
                f"Fix: ds = ds.rename({rename})"
            )
        elif grid is not None and other_have == other_want and spatial_have != CubeSchema.spatial_dims:
            sizes = ", ".join(f"{d}={da.sizes[d]}" for d in spatial_have)
            ref = ", ".join(f"{d}={n}" for d, n in grid)
            problems.append(
                f"grids do not match: `{spec.name}` is on ({sizes}) while the cube grid is ({ref}). "
                f"Fix: resample `{spec.name}` onto the cube grid (e.g. .interp(y=ds.y, x=ds.x, method='nearest') "
                f"after naming its dims y, x); all variables share one 10 m grid"
            )
        elif len(have) == len(want) and all(a == b or b not in have for a, b in zip(have, want)):
            rename = ", ".join(f"{a!r}: {b!r}" for a, b in zip(have, want) if a != b)
            problems.append(
                f"`{spec.name}` has dims {_dims_str(have)}, expected {_dims_str(want)}. "
                f"Fix: ds = ds.rename({{{rename}}})"
            )
        else:
            problems.append(
                f"`{spec.name}` has dims {_dims_str(have)}, expected {_dims_str(want)}. "
                f"Fix: rename (ds.rename({{...}})) or reshape it to {_dims_str(want)}"
            )
    dtype = da.dtype
    if dtype.name not in spec.dtypes:
        extra = ""
        if np.issubdtype(dtype, np.floating) and all(not d.startswith("float") for d in spec.dtypes):
            n_nan = int(np.isnan(_sample(da)).sum())
            if n_nan:
                extra = f"; it holds {n_nan} NaN values, which an integer store cannot represent"
        problems.append(
            f"`{spec.name}` has dtype {dtype}, expected {' or '.join(spec.dtypes)}{extra}. "
            f"Fix: {_fix_dtype(spec.name, spec, dtype)}"
        )
    missing = [a for a in spec.attrs if a not in da.attrs]
    if _is_int(dtype):
        missing += [a for a in spec.integer_attrs if a not in da.attrs]
    if missing:
        if spec.name == "labels":
            fix = "ds['labels'].attrs.update(class_attrs(['name0', 'name1', ...]))  (hvaeseg.data.schema.class_attrs)"
        elif set(missing) & {"scale_factor", "add_offset"}:
            fix = (
                f"ds['{spec.name}'].attrs.update(scale_factor=1e-4, add_offset=-0.1)  "
                "(L2A processing baseline >= 04.00; add_offset=0.0 for older or harmonized products)"
            )
        else:
            fix = f"set ds['{spec.name}'].attrs[...]"
        problems.append(f"`{spec.name}` lacks attribute(s) {', '.join(missing)}. Fix: {fix}")
    return problems


def _check_nan_dn(ds: xr.Dataset, name: str) -> list[str]:
    """Float reflectance meant as DN (has scale_factor) must hold whole DN: no NaN (it cannot be stored as
    uint16), no fractions (reflectance that kept the DN attributes through arithmetic: it would read as DN 0)."""
    da = ds[name]
    if not np.issubdtype(da.dtype, np.floating) or "scale_factor" not in da.attrs:
        return []
    values = _sample(da)
    n_nan = int(np.isnan(values).sum())
    problems = []
    if n_nan:
        problems.append(
            f"`{name}` is float DN (has scale_factor) and holds {n_nan} NaN values; DN stores are uint16 where "
            f"0 = no data. Fix: ds['{name}'] = ds['{name}'].fillna(0).round().clip(0, 65535).astype('uint16')"
        )
    finite = values[np.isfinite(values)]
    fractional = finite[finite != np.round(finite)]
    if fractional.size:
        problems.append(
            f"`{name}` is float with scale_factor, so it is read as DN, but {fractional.size} of its values are "
            f"not whole numbers (e.g. {_preview(np.unique(fractional)[:3].tolist(), 3)}): reflectance that kept "
            f"the DN attributes? Fix: ds['{name}'].attrs.pop('scale_factor'); ds['{name}'].attrs.pop('add_offset', "
            f"None) (float32 reflectance carries no scaling)"
        )
    return problems


def _check_time(ds: xr.Dataset) -> list[str]:
    if "time" not in ds.dims and "time" not in ds.coords:
        return []
    if "time" not in ds.coords:
        return ["no `time` coordinate. Fix: ds = ds.assign_coords(time=np.array([...], dtype='datetime64[ns]'))"]
    t = ds["time"]
    if t.size == 0:
        return ["the time axis is empty: a cube needs at least one date. Fix: build the cube from >= 1 date"]
    if t.ndim != 1:
        return [f"`time` must be 1-D, got dims {_dims_str(t.dims)}"]
    if not np.issubdtype(t.dtype, np.datetime64):
        return [
            f"`time` has dtype {t.dtype}, expected datetime64[ns]. "
            "Fix: ds = ds.assign_coords(time=pd.to_datetime(ds.time.values))"
        ]
    values = t.values
    problems = []
    if np.isnat(values).any():
        problems.append(
            f"`time` holds {int(np.isnat(values).sum())} NaT values. Fix: drop those dates (ds.isel(time=...))"
        )
        values = values[~np.isnat(values)]
    step = np.diff(values.astype("datetime64[ns]").astype(np.int64))
    if (step <= 0).any():
        i = int(np.argmax(step <= 0))
        a, b = np.datetime_as_string(values[i], unit="s"), np.datetime_as_string(values[i + 1], unit="s")
        what = "repeats" if step[i] == 0 else "goes backwards"
        problems.append(
            f"`time` is not strictly increasing: it {what} at index {i + 1} ({b} after {a}). "
            "Fix: ds = ds.sortby('time').drop_duplicates('time')"
        )
    return problems


def _check_band(ds: xr.Dataset) -> list[str]:
    if "band" not in ds.dims:
        return []
    if "band" not in ds.coords:
        return [
            "no `band` coordinate naming the Sentinel-2 bands. "
            "Fix: ds = ds.assign_coords(band_coords(['B02', 'B03', ...]))  (hvaeseg.data.bands.band_coords)"
        ]
    names = [str(n) for n in ds["band"].values]
    sensor = ds.attrs.get("sensor")
    if sensor is not None and sensor != CAMERA_SENSOR:
        return [f"dataset attribute sensor={sensor!r} is unknown: '{CAMERA_SENSOR}' (camera images, bands "
                f"{', '.join(CAMERA_BANDS)}) or no attribute (Sentinel-2). Fix: del ds.attrs['sensor']"]
    if sensor == CAMERA_SENSOR:
        return _check_camera_bands(names)
    problems = []
    unknown = [n for n in names if n not in BAND_NAMES]
    if unknown and set(names) <= set(CAMERA_BANDS):
        return [f"bands {', '.join(names)} are camera bands, but the cube does not say it holds camera images. "
                f"Fix: ds.attrs['sensor'] = '{CAMERA_SENSOR}'"]
    for n in unknown:
        problems.append(f"{_unknown_message(n)}. Fix: rename the band coordinate to Sentinel-2 names")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        problems.append(f"band names repeat: {', '.join(dup)}. Fix: keep each band once (ds.drop_duplicates('band'))")
    missing = [c for c in ("wavelength", "resolution") if c not in ds.coords]
    if missing and not unknown:
        problems.append(
            f"band coordinate(s) {', '.join(missing)} missing. "
            "Fix: ds = ds.assign_coords(band_coords(ds.band.values))  (hvaeseg.data.bands.band_coords)"
        )
    return problems


def _check_camera_bands(names: list[str]) -> list[str]:
    """Bands of a camera cube (``sensor = "camera"``): among R, G, B, each once."""
    problems = []
    unknown = [n for n in names if n not in CAMERA_BANDS]
    if unknown:
        problems.append(f"bands {', '.join(unknown)} are not camera bands ({', '.join(CAMERA_BANDS)}) of a cube with "
                        f"sensor='{CAMERA_SENSOR}'. Fix: name the bands {', '.join(CAMERA_BANDS)}, or drop the "
                        "sensor attribute for Sentinel-2 bands")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        problems.append(f"band names repeat: {', '.join(dup)}. Fix: keep each band once (ds.drop_duplicates('band'))")
    return problems


def _check_mosaic(ds: xr.Dataset) -> list[str]:
    """The mosaic declaration (attributes, sizes), ``image_index`` against it (on the sample windows) and the
    codes of ``image_split``."""
    problems = mosaic_problems(ds)
    if problems:
        return problems
    if IMAGE_DIM not in ds.sizes:
        if "image_index" in ds.data_vars:
            return ["`image_index` says which image each pixel is from, but the cube declares no image mosaic. Fix: "
                    "ds.attrs.update(MosaicLayout.for_images(N, (H, W)).attrs()) (hvaeseg.data.mosaic)"]
        return []
    layout = MosaicLayout.from_cube(ds)
    assert layout is not None  # the cube has the image dimension (and no mosaic problems)
    if "image_split" in ds.data_vars and _is_int(ds["image_split"].dtype):
        codes = np.asarray(ds["image_split"].values)
        bad = np.unique(codes[(codes < -1) | (codes > 2)])
        if bad.size:
            problems.append(f"`image_split` holds codes {{{_preview(bad.tolist())}}}; expected -1 (free), 0 train, "
                            "1 val or 2 test. Fix: ds['image_split'] = ds['image_split'].where(ds['image_split'] "
                            "<= 2, -1)")
    index = ds.get("image_index")
    if index is not None and tuple(index.dims) == ("y", "x") and _is_int(index.dtype):
        for win in _windows(index):
            have = np.asarray(index.isel(win).values)
            ys, xs = (np.arange(ds.sizes[d])[win.get(d, slice(None))] for d in ("y", "x"))
            if not np.array_equal(have, layout.image_index(ys, xs)):
                problems.append(
                    f"`image_index` does not match the mosaic layout ({layout.n_images} images of "
                    f"{layout.image_size[0]}x{layout.image_size[1]} in {layout.columns} columns, image i at row i // "
                    "columns, column i % columns). Fix: ds['image_index'] = (('y', 'x'), "
                    "MosaicLayout.from_cube(ds).image_index())"
                )
                break
    return problems


def _check_axis(ds: xr.Dataset, dim: str, decreasing: bool) -> list[str]:
    if dim not in ds.dims:
        return []
    if dim not in ds.coords:
        return [
            f"no `{dim}` coordinate (pixel-centre {'northing' if dim == 'y' else 'easting'} in metres). "
            f"Fix: ds = ds.assign_coords({dim}=...)"
        ]
    c = ds[dim]
    if not np.issubdtype(c.dtype, np.number):
        return [f"`{dim}` has dtype {c.dtype}, expected float64 metres. Fix: assign numeric coordinates"]
    v = np.asarray(c.values, dtype=np.float64)
    if np.isnan(v).any():
        return [f"`{dim}` holds NaN coordinates: the grids do not match. Fix: resample every variable onto one grid"]
    if v.size < 2:
        return []
    d = np.diff(v)
    problems = []
    if not ((d > 0).all() or (d < 0).all()):
        return [
            f"`{dim}` is not monotonic (repeated or shuffled coordinates): the grids do not match. "
            "Fix: resample every variable onto one regular grid"
        ]
    if decreasing and (d > 0).all():
        problems.append(
            "`y` increases; the convention is y decreasing (north up). Fix: ds = ds.isel(y=slice(None, None, -1))"
        )
    elif not decreasing and (d < 0).all():
        problems.append("`x` decreases; the convention is x increasing. Fix: ds = ds.isel(x=slice(None, None, -1))")
    if not np.allclose(d, d[0], rtol=1e-6, atol=1e-6 * abs(d[0])):
        problems.append(
            f"`{dim}` spacing is irregular (steps from {np.abs(d).min():g} to {np.abs(d).max():g}): the variables "
            "come from grids that do not match (e.g. an outer-join merge). Fix: resample onto one regular grid"
        )
    return problems


def _flag_count(labels: xr.DataArray) -> tuple[int | None, list[str]]:
    """Number of classes K from the CF flag attributes, and problems with those attributes."""
    attrs = labels.attrs
    if "flag_values" not in attrs or "flag_meanings" not in attrs:
        return None, []  # reported as missing attributes
    problems = []
    values = np.atleast_1d(np.asarray(attrs["flag_values"]))
    meanings = str(attrs["flag_meanings"]).split()
    k = len(values)
    fix = "Fix: ds['labels'].attrs.update(class_attrs(names))"
    if not np.issubdtype(values.dtype, np.integer) or not np.array_equal(values, np.arange(k)):
        problems.append(f"`labels` flag_values must be 0..K-1, got [{_preview(values.tolist())}]. {fix}")
    if len(meanings) != k:
        problems.append(f"`labels` has {k} flag_values but {len(meanings)} flag_meanings. {fix}")
    if "flag_colors" in attrs:
        colors = str(attrs["flag_colors"]).split()
        bad = [c for c in colors if not _COLOR_RE.match(c)]
        if len(colors) != k or bad:
            problems.append(
                f"`labels` flag_colors must be {k} '#rrggbb' colours, got {len(colors)}"
                + (f" (bad: {_preview(bad)})" if bad else "")
                + f". {fix}"
            )
    return k, problems


def _check_labels(ds: xr.Dataset) -> list[str]:
    lab = ds["labels"]
    k, problems = _flag_count(lab)
    values = np.asarray(lab.values)
    if np.issubdtype(values.dtype, np.floating):
        finite = values[np.isfinite(values)]
        if (finite != np.round(finite)).any():
            problems.append("`labels` holds non-integer values. Fix: labels are class ids; round or remap them")
        values = finite
    hi = k - 1 if k is not None else None
    bad = values < -1 if hi is None else (values < -1) | (values > hi)
    n_bad = int(np.count_nonzero(bad))
    if n_bad:
        found = np.unique(values[bad])
        allowed = "-1 = void" + (f" or 0..{hi} for the {k} classes of flag_values" if hi is not None else " or >= 0")
        problems.append(
            f"`labels` out of range: {n_bad} pixels with values {{{_preview(found.astype(np.int64).tolist())}}}; "
            f"allowed {allowed}. Fix: set unknown classes to -1 (ds['labels'] = ds['labels'].where("
            f"ds['labels'] <= {hi if hi is not None else 'K-1'}, -1)) or add them to flag_values/flag_meanings"
        )
    return problems


def _check_reflectance_range(ds: xr.Dataset, name: str) -> list[str]:
    da = ds[name]
    raw = _sample(da)
    if _is_int(raw.dtype):
        scale = float(da.attrs.get("scale_factor", 1.0))
        offset = float(da.attrs.get("add_offset", 0.0))
        raw = raw[raw != 0]
        refl = raw.astype(np.float64) * scale + offset
    else:
        refl = raw[np.isfinite(raw)].astype(np.float64)
        if "scale_factor" in da.attrs:
            refl = refl[refl != 0] * float(da.attrs["scale_factor"]) + float(da.attrs.get("add_offset", 0.0))
    if refl.size == 0:
        return []
    lo, hi = CubeSchema.reflectance_range
    out = (refl < lo - 1e-6) | (refl > hi + 1e-6)
    n_out = int(np.count_nonzero(out))
    if not n_out:
        return []
    share = n_out / refl.size
    fix = (
        "Fix: check the DN scaling (L2A: scale_factor=1e-4, add_offset=-0.1 for baseline >= 04.00, else 0.0)"
        if _is_int(da.dtype) or "scale_factor" in da.attrs
        else "Fix: float reflectance must be in reflectance units (DN * 1e-4 + offset), not DN"
    )
    if not _is_int(da.dtype) and "scale_factor" not in da.attrs and np.nanmax(refl) > 100:
        fix += "; these values look like DN: divide by 10000 or store uint16 with scale_factor/add_offset"
    return [
        f"`{name}` out of physical range: {share:.1%} of the checked values lie outside [{lo}, {hi}] "
        f"(min {refl.min():.4g}, max {refl.max():.4g}). {fix}"
    ]


def _check_nodata_valid(ds: xr.Dataset) -> list[str]:
    """No data (DN 0 / NaN) in any band where ``valid`` says observed: the loader would train on it."""
    refl, valid = ds["reflectance"], ds["valid"]
    if (
        tuple(refl.dims) != CubeSchema.variables["reflectance"].dims
        or tuple(valid.dims) != CubeSchema.variables["valid"].dims
        or valid.dtype != np.bool_
        or not np.issubdtype(refl.dtype, np.number)
        or any(refl.sizes[d] != valid.sizes[d] for d in valid.dims)
    ):
        return []  # reported above
    dn = _is_int(refl.dtype) or "scale_factor" in refl.attrs
    shape = tuple(valid.sizes[d] for d in valid.dims)
    found = []  # flat (time, y, x) indices of the bad pixels: the sample's windows may overlap
    for win in _windows(refl):
        r = np.asarray(refl.isel(win).values)
        observed = np.asarray(valid.isel(win).values)
        nodata = ((r == 0) | np.isnan(r) if not _is_int(r.dtype) else r == 0) if dn else np.isnan(r)
        t, y, x = np.nonzero(nodata.any(axis=1) & observed)
        index = [np.arange(n)[win.get(d, slice(None))] for d, n in zip(valid.dims, shape)]
        found.append(np.ravel_multi_index((index[0][t], index[1][y], index[2][x]), shape))
    bad = np.unique(np.concatenate(found))
    if not bad.size:
        return []
    n_bad, dates = bad.size, np.unique(np.unravel_index(bad, shape)[0])
    what, present = ("DN 0", "(ds['reflectance'] != 0)") if dn else ("NaN", "ds['reflectance'].notnull()")
    return [
        f"`reflectance` has no data ({what}) in {n_bad} pixels that `valid` marks observed (dates "
        f"{_preview(dates.tolist())}): training would use them. Fix: ds['valid'] = ds['valid'] & "
        f"{present}.all('band')"
    ]


def _check_scl(ds: xr.Dataset) -> list[str]:
    values = _sample(ds["scl"])
    bad = values > max(SCL_CODES)
    if not bad.any():
        return []
    return [
        f"`scl` holds codes outside 0..11: {{{_preview(np.unique(values[bad]).tolist())}}}. "
        "Fix: map them to SCL codes (0 no data ... 11 snow) or drop `scl`"
    ]


def _check_attrs(ds: xr.Dataset) -> list[str]:
    problems = []
    version = ds.attrs.get("hvaeseg_schema_version")
    if version is not None:
        try:
            v = int(version)
        except (TypeError, ValueError):
            v = None
        if v is None or v < 1:
            problems.append(
                f"dataset attribute hvaeseg_schema_version={version!r} is not a positive integer. "
                f"Fix: ds.attrs['hvaeseg_schema_version'] = {SCHEMA_VERSION}"
            )
        elif v > SCHEMA_VERSION:
            problems.append(
                f"cube has schema version {v}, newer than this hvaeseg understands ({SCHEMA_VERSION}). "
                "Fix: upgrade hvaeseg"
            )
    crs = ds.attrs.get("crs")
    if crs is not None and not isinstance(crs, str):
        problems.append(f"dataset attribute crs={crs!r} is not a string. Fix: ds.attrs['crs'] = 'EPSG:<code>'")
    return problems


def validate_cube(ds: xr.Dataset, *, require: Iterable[str] = ("reflectance", "valid")) -> None:
    """Check ``ds`` against :class:`CubeSchema`; raise once, listing every problem with its fix.

    Checked: required variables present; dims (names and order) and dtype of every schema variable that
    is present; Sentinel-2 band names (no unknown, no repeats) and their wavelength/resolution
    coordinates; the time axis (non-empty, datetime64, strictly increasing); one regular spatial grid
    (y decreasing, x increasing, evenly spaced, same y/x dims for every variable); labels in
    -1..K-1 with K = ``len(flag_values)``, and their CF flag attributes; NaN where an integer store is
    meant (float DN reflectance, float labels/masks); decoded reflectance inside [-0.1, 2.0]
    (DN 0 = no data ignored; big cubes are checked on a sample); no pixel with no data (DN 0 / NaN) in a
    band where ``valid`` is True (sampled too); scale_factor/add_offset on DN reflectance; SCL codes 0..11.

    Reflectance decoded by xarray's CF conventions (``xarray.open_zarr(path)`` without
    ``mask_and_scale=False``: float64 values, ``scale_factor``/``add_offset`` and the integer dtype in
    ``.encoding``) is checked as the DN it decodes from, lazily: such a Dataset gives exactly the problems
    of the store opened raw (:func:`~hvaeseg.data.store.open_cube`).

    :param ds: the cube.
    :param require: variables that must be present (others are checked only when present).
    :raises CubeValidationError: listing every problem; ``.problems`` holds them as a list.
    :raises TypeError: ``ds`` is not a Dataset.
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"expected an xarray.Dataset, got {type(ds).__name__}")
    ds = _as_stored(ds)
    require = tuple(require)
    unknown = [r for r in require if r not in CubeSchema.variables]
    if unknown:
        raise ValueError(f"require names unknown variable(s) {unknown}; schema variables: {list(CubeSchema.variables)}")

    problems: list[str] = []
    for name in require:
        if name not in ds.data_vars:
            spec = CubeSchema.variables[name]
            problems.append(
                f"missing variable `{name}` {_dims_str(spec.dims)} {'/'.join(spec.dtypes)} ({spec.description}). "
                + (
                    "Fix: derive it from SCL: ds['valid'] = valid_from_scl(ds['scl'], ds['reflectance'])"
                    if name == "valid" and "scl" in ds.data_vars
                    else f"Fix: add ds['{name}']"
                )
            )

    # the reference grid: the spatial dims of the first present 4-D/3-D variable with y, x dims
    grid = None
    for spec in CubeSchema.variables.values():
        if spec.name in ds.data_vars and tuple(ds[spec.name].dims[-2:]) == CubeSchema.spatial_dims:
            grid = tuple((d, ds.sizes[d]) for d in CubeSchema.spatial_dims)
            break

    for spec in CubeSchema.variables.values():
        if spec.name in ds.data_vars:
            problems += _check_variable(ds, spec, grid)

    if "reflectance" in ds.data_vars and "clean_reflectance" in ds.data_vars:
        a, b = ds["reflectance"].dtype, ds["clean_reflectance"].dtype
        if a != b:
            problems.append(
                f"`clean_reflectance` has dtype {b} but `reflectance` {a}; they must match. "
                f"Fix: ds['clean_reflectance'] = ds['clean_reflectance'].astype('{a}') (same scaling attrs)"
            )

    problems += _check_time(ds)
    problems += _check_band(ds)
    problems += _check_axis(ds, "y", decreasing=True)
    problems += _check_axis(ds, "x", decreasing=False)
    problems += _check_attrs(ds)
    problems += _check_mosaic(ds)

    for name in ("reflectance", "clean_reflectance"):
        if name in ds.data_vars:
            problems += _check_nan_dn(ds, name)
            da = ds[name]
            unscaled = _is_int(da.dtype) and "scale_factor" not in da.attrs  # reported above; range meaningless
            if np.issubdtype(da.dtype, np.number) and not unscaled:
                problems += _check_reflectance_range(ds, name)
    if "reflectance" in ds.data_vars and "valid" in ds.data_vars:
        problems += _check_nodata_valid(ds)
    if "labels" in ds.data_vars and np.issubdtype(ds["labels"].dtype, np.number):
        problems += _check_labels(ds)
    if "scl" in ds.data_vars and _is_int(ds["scl"].dtype):
        problems += _check_scl(ds)

    if problems:
        raise CubeValidationError(problems)


# --------------------------------------------------------------------------------------------- masks


def valid_from_scl(scl, reflectance=None):
    """``valid`` from SCL codes: clear where the code is in :data:`CLEAR_SCL`.

    :param scl: ``(time, y, x)`` uint8 codes, a DataArray or an array.
    :param reflectance: optional ``(time, band, y, x)``; pixels where any band is no data (DN 0 for
        integer DN, NaN for float) are invalid too. Arrays use axis -3 as the band axis.
    :returns: bool, a DataArray named ``valid`` when ``scl`` is one, else a numpy array.
    """
    clear = np.array(CLEAR_SCL, dtype=np.uint8)
    if isinstance(scl, xr.DataArray):
        valid = scl.isin(clear)
        if reflectance is not None:
            refl = (reflectance if isinstance(reflectance, xr.DataArray)
                    else xr.DataArray(reflectance, dims=("time", "band", "y", "x")))
            present = (refl != 0) if _is_int(refl.dtype) else refl.notnull()
            valid = valid & present.all("band")
        valid = valid.rename("valid")
        valid.attrs = {"long_name": "observed and clear"}  # not the inputs' (scale_factor would make it float)
        return valid
    mask = np.isin(np.asarray(scl), clear)
    if reflectance is not None:
        values = np.asarray(reflectance)
        mask &= ((values != 0) if _is_int(values.dtype) else ~np.isnan(values)).all(axis=-3)
    return mask


# --------------------------------------------------------------------------------------------- classes


def class_attrs(names: Sequence[str], colors: Sequence[str] | None = None) -> dict:
    """CF flag attributes for a label map with classes ``names`` (ids 0..K-1 in that order).

    :param names: one word per class (no spaces), e.g. ``["water", "forest", "crop"]``.
    :param colors: ``#rrggbb`` per class; default :data:`DEFAULT_CLASS_COLORS`.
    :returns: ``{"flag_values": [0..K-1], "flag_meanings": "water forest crop", "flag_colors": "#.. #.."}``
    """
    names = [str(n) for n in names]
    if not names:
        raise ValueError("class_attrs needs at least one class name")
    bad = [n for n in names if not _NAME_RE.match(n)]
    if bad:
        raise ValueError(f"class names must be single words (flag_meanings is space-separated), got {bad}; use '_'")
    if len(set(names)) != len(names):
        raise ValueError(f"class names repeat: {names}")
    if colors is None:
        colors = [DEFAULT_CLASS_COLORS[i % len(DEFAULT_CLASS_COLORS)] for i in range(len(names))]
    colors = [str(c) for c in colors]
    if len(colors) != len(names):
        raise ValueError(f"expected {len(names)} colours (one per class), got {len(colors)}")
    badc = [c for c in colors if not _COLOR_RE.match(c)]
    if badc:
        raise ValueError(f"colours must be '#rrggbb', got {badc}")
    return {
        "flag_values": list(range(len(names))),
        "flag_meanings": " ".join(names),
        "flag_colors": " ".join(colors),
    }


def _labels_attrs(obj: xr.Dataset | xr.DataArray | Mapping) -> Mapping:
    if isinstance(obj, xr.Dataset):
        if "labels" not in obj:
            raise ValueError("the cube has no `labels` variable")
        return obj["labels"].attrs
    if isinstance(obj, xr.DataArray):
        return obj.attrs
    return obj


def class_names(ds: xr.Dataset | xr.DataArray) -> list[str]:
    """Class names (``flag_meanings``) of a cube's labels, or of a labels DataArray; index = class id."""
    attrs = _labels_attrs(ds)
    if "flag_meanings" not in attrs:
        raise ValueError("labels lack the `flag_meanings` attribute. Fix: labels.attrs.update(class_attrs(names))")
    return str(attrs["flag_meanings"]).split()


def class_colors(ds: xr.Dataset | xr.DataArray) -> list[str]:
    """``#rrggbb`` per class (``flag_colors``, else :data:`DEFAULT_CLASS_COLORS`); index = class id."""
    attrs = _labels_attrs(ds)
    k = len(class_names(ds))
    if "flag_colors" in attrs:
        colors = str(attrs["flag_colors"]).split()
        if len(colors) == k and all(_COLOR_RE.match(c) for c in colors):
            return colors
    return [DEFAULT_CLASS_COLORS[i % len(DEFAULT_CLASS_COLORS)] for i in range(k)]


# --------------------------------------------------------------------------------------------- decoding


def decoded_reflectance(ds: xr.Dataset, var: str = "reflectance") -> xr.DataArray:
    """Reflectance in physical units as float32: ``DN * scale_factor + add_offset``, no data -> NaN.

    Integer DN 0 is no data. Float variables are taken as reflectance already unless they carry
    ``scale_factor`` (float DN), which is then applied the same way. Lazy inputs stay lazy until used.
    """
    da = ds[var]
    attrs = {k: v for k, v in da.attrs.items() if k not in ("scale_factor", "add_offset")}
    if _is_int(da.dtype) or "scale_factor" in da.attrs:
        scale = np.float32(da.attrs.get("scale_factor", 1.0))
        offset = np.float32(da.attrs.get("add_offset", 0.0))
        out = da.astype(np.float32) * scale + offset
        out = out.where(da != 0)
    else:
        out = da.astype(np.float32)
    out = out.astype(np.float32).rename(var)
    out.attrs = attrs
    return out
