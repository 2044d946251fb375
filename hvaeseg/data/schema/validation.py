"""Cube validation: :func:`validate_cube` walks :class:`~hvaeseg.data.schema.CubeSchema`, collects *every* problem
(each with its fix) and raises one :class:`CubeValidationError`. This module holds the walk and the checks of
structure (dims, dtypes, attributes, time / band / spatial axes, mosaic declaration); the checks that read values
are in :mod:`.value_checks`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import xarray as xr

from hvaeseg.data.bands import BAND_NAMES, CAMERA_BANDS, CAMERA_SENSOR, _unknown_message
from hvaeseg.data.mosaic import IMAGE_DIM, MosaicLayout, mosaic_problems
from hvaeseg.data.schema._common import _dims_str, _is_int, _preview
from hvaeseg.data.schema.layout import SCHEMA_VERSION, CubeSchema, VariableSpec
from hvaeseg.data.schema.reflectance import _as_stored
from hvaeseg.data.schema.value_checks import (
    _check_labels,
    _check_nan_dn,
    _check_nodata_valid,
    _check_reflectance_range,
    _check_scl,
    _sample,
    _windows,
)

__all__ = ["CubeValidationError", "validate_cube"]


class CubeValidationError(ValueError):
    """A cube breaks the schema. :attr:`problems` lists every problem found, each with its fix."""

    def __init__(self, problems: Sequence[str]):
        self.problems: list[str] = list(problems)
        n = len(self.problems)
        # one line (the command line reports errors on one line), problems numbered
        listed = " ".join(f"[{i}] {p}" for i, p in enumerate(self.problems, 1)) if n > 1 else "".join(self.problems)
        super().__init__(f"cube is not valid ({n} problem{'s' if n != 1 else ''}): {listed}")


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
