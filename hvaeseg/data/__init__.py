"""Sentinel-2 cubes: schema and validation, band table, Zarr storage, summaries.

A cube is an :class:`xarray.Dataset` with ``reflectance (time, band, y, x)`` (uint16 DN or float32),
``valid (time, y, x)`` bool, optional ``scl``, ``labels (y, x)`` int16 (-1 = void) and, for synthetic
cubes, ``clean_reflectance``; see :class:`~hvaeseg.data.schema.CubeSchema` and ``docs/conventions.md``. Camera
images (Cityscapes, folders of PNG pairs) are a mosaic cube of the same layout (:mod:`~hvaeseg.data.mosaic`).

Submodules: :mod:`~hvaeseg.data.bands` (band table), :mod:`~hvaeseg.data.schema` (layout, validation,
class attributes), :mod:`~hvaeseg.data.store` (Zarr I/O, atomic writes, streaming writer),
:mod:`~hvaeseg.data.summary` (``hvaeseg data info`` / ``quicklook``), ``synthetic`` (generator),
``ingest``, ``sampler``, ``loader``.
"""

from hvaeseg.data.bands import BANDS, L2A_BANDS, RGB, Band, band, band_coords
from hvaeseg.data.mosaic import MosaicLayout
from hvaeseg.data.schema import (
    CLEAR_SCL,
    SCHEMA_VERSION,
    SCL_CODES,
    CubeSchema,
    CubeValidationError,
    class_attrs,
    class_colors,
    class_names,
    decoded_reflectance,
    valid_from_scl,
    validate_cube,
)
from hvaeseg.data.store import DEFAULT_CHUNKS, CubeWriter, open_cube, template_from_block, write_cube
from hvaeseg.data.summary import format_summary, quicklook, summarise

__all__ = [
    "BANDS",
    "L2A_BANDS",
    "RGB",
    "Band",
    "band",
    "band_coords",
    "MosaicLayout",
    "CLEAR_SCL",
    "SCHEMA_VERSION",
    "SCL_CODES",
    "CubeSchema",
    "CubeValidationError",
    "class_attrs",
    "class_colors",
    "class_names",
    "decoded_reflectance",
    "valid_from_scl",
    "validate_cube",
    "DEFAULT_CHUNKS",
    "CubeWriter",
    "open_cube",
    "template_from_block",
    "write_cube",
    "format_summary",
    "quicklook",
    "summarise",
]
