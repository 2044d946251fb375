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

Modules
-------
This package re-exports the public names of its modules:

- :mod:`.layout`: :data:`SCHEMA_VERSION`, :class:`VariableSpec`, :class:`CubeSchema` (the table above, as data);
- :mod:`.validation`: :func:`validate_cube`, :class:`CubeValidationError` and the checks of structure;
- :mod:`.value_checks`: the checks that read values (on a fixed sample of a big cube);
- :mod:`.reflectance`: :func:`decoded_reflectance`; CF-decoded DN seen as stored;
- :mod:`.scl`: :data:`SCL_CODES`, :data:`CLEAR_SCL`, :func:`valid_from_scl`;
- :mod:`.classes`: :data:`DEFAULT_CLASS_COLORS`, :func:`class_attrs`, :func:`class_names`, :func:`class_colors`.
"""

from hvaeseg.data.schema.classes import DEFAULT_CLASS_COLORS, class_attrs, class_colors, class_names
from hvaeseg.data.schema.layout import SCHEMA_VERSION, CubeSchema, VariableSpec
from hvaeseg.data.schema.reflectance import decoded_reflectance
from hvaeseg.data.schema.scl import CLEAR_SCL, SCL_CODES, valid_from_scl
from hvaeseg.data.schema.validation import CubeValidationError, validate_cube

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
