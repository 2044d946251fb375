"""The cube layout as data: :data:`SCHEMA_VERSION`, :class:`VariableSpec` and :class:`CubeSchema` (the variables,
their dims, dtypes and attributes; the dataset attributes). Walked by :func:`~hvaeseg.data.schema.validate_cube`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hvaeseg.data.bands import CAMERA_SENSOR

__all__ = ["SCHEMA_VERSION", "CubeSchema", "VariableSpec"]


#: version of the on-disk layout, written as the dataset attribute ``hvaeseg_schema_version``
SCHEMA_VERSION = 1


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
