"""Ingestion of real Sentinel-2 L2A products into a cube (``docs/conventions.md``).

Two layouts are read:

* **NetCDF** laid out like the WorldCereal training sites (``../shared/data/worldcereal-be-*``): one file
  per resolution with one variable per band (``B02`` .. ``B12``, ``B8A``, plus ``SCL`` in the 20 m file),
  dims ``(timestamp, y, x)``, uint16 DN with ``scale_factor``; a label file with integer class codes
  (``CT`` crop type, ``LC`` land cover) on the 10 m grid; a CSV code table (``wc2eurocrops_map.csv``)
  that names the codes. See :func:`ingest_netcdf`.
* **GeoTIFF** files read with ``rioxarray`` (``pip install hvaeseg[real]``): one file per band with
  one layer per date, or one single-layer file per band and date (``band_files``, CLI ``NAME=PATH``); or
  multi-band *stacks*, one file per date holding every band as a layer (``stack``, CLI a bare ``PATH``),
  whose layer order comes from ``stack_bands`` (CLI ``--stack-bands``) or else from the file's band
  descriptions (``B02``, ``B2`` or a STAC common name such as ``blue``, ``nir08``, ``swir16``; ``SCL``);
  a stack whose order cannot be established is an error. See :func:`ingest_geotiff`. A GeoTIFF
  without georeference (no geotransform: rasterio reads the identity transform and warns
  ``NotGeoreferencedWarning``) is an error naming the files, unless ``local_grid=True`` (CLI
  ``--local-grid``) puts them on a local pixel grid: 10 m pixels, x from 0 at the left edge, y from 0 at
  the bottom edge and decreasing from the top (north-up layout), no CRS; the cube records
  ``grid = "local"``.

Camera images, besides Sentinel-2 (``format="cityscapes"`` / ``"folder"``, CLI ``--format``): the standard
Cityscapes layout (:mod:`~hvaeseg.data.ingest.cityscapes`: ``leftImg8bit/`` and ``gtFine/``, label ids mapped to the
8 categories) or a folder of image / label PNG pairs with a class table (:mod:`~hvaeseg.data.ingest.image_folder`)
become a *mosaic* cube (:mod:`hvaeseg.data.mosaic`): the images, resized to one size (``--size H W``: area
averaging for images, nearest for labels, :mod:`~hvaeseg.data.ingest.images`), side by side on one date, bands
R, G, B (``sensor = "camera"``), which every method, ``evaluate``, ``predict`` and the label-budget study take
unchanged (the sampler splits a mosaic image by image). The rest of this docstring is about Sentinel-2 products.

Resampling onto the 10 m grid (the grid of the finest band file), by variable:

* **reflectance**: bilinear interpolation in the source pixel grid with pixel *centres* aligned: the
  target pixel centre ``c`` sits at fractional source index ``u = (c - c0) / step`` where ``c0`` is the
  first source pixel centre. For 20 m -> 10 m this puts every 20 m centre half-way between two 10 m
  centres (10 m index ``2j + 0.5``), i.e. ``u = i/2 - 0.25``; targets beyond the outermost source centres
  (a quarter source pixel at each edge) take the edge value. No-data source pixels (DN 0) get weight
  zero and the weights are renormalised; a target whose four neighbours are all no data is no data.
  The result is rounded to the nearest DN and kept >= 1 where data exist. A constant field stays
  exactly constant and a linear ramp stays linear.
* **SCL** (and any class-like layer): nearest, i.e. the source pixel that *contains* the target pixel
  centre (for integer resolution ratios there is never a tie).
* Bands already on the target grid are copied unchanged.

``valid`` = SCL code in :data:`hvaeseg.data.schema.CLEAR_SCL` and no band is no data (DN 0).
The BOA offset comes from the explicit ``boa_add_offset`` (DN, as in the product metadata, e.g. -1000;
CLI ``--boa-offset``), else from the metadata (``BOA_ADD_OFFSET`` attribute or tag, a CF ``add_offset`` on
the band variables, the GDAL scale/offset of a GeoTIFF band, or a ``PROCESSING_BASELINE`` >= 04.00 meaning
-1000). Without any of these a NetCDF product is taken as harmonised (offset 0, like the WorldCereal sample),
while GeoTIFFs, which rarely carry product metadata, are an error naming ``--boa-offset``: the offset is never
silently 0 where nothing says so. The cube's ``add_offset = boa_add_offset * scale_factor`` and the
attribute ``boa_offset_source`` says where it came from. DN are stored unchanged.

Labels: ``void_codes`` (CLI ``--void-codes``) are the label codes that mean "no label"; by default code 0
and the label file's declared no-data value (``_FillValue`` / GeoTIFF nodata); an empty list
(``--void-codes none``) makes every code a possible class, 0 included. The class codes present in the
label map that the code table names (void codes excluded) become ids ``0 .. K-1`` in increasing code order
(or in the order of an explicit ``classes`` list, to give several cubes the same ids; a void code there is
an error, and so are classes of which no pixel occurs); void codes and codes absent from the table or from
``classes`` are void (-1). Label values must be integers (a float map with fractions is an error; NaN is
void) in one layer. The labels carry ``flag_values``/``flag_meanings``/``flag_colors``, ``source_codes``
(the original code of each id), ``void_codes``, ``void_description`` (which codes became void, with pixel
counts) and ``class_names_source``; the command line prints them (:func:`ingest_notes`).
Class names come from the code table (CSV with a header such as ``code,name``, or JSON
``{"code": "name"}``; see :func:`read_code_table`), else ``code_<c>`` (announced), or from an explicit
``class_names`` list, one single-word name per class id (checked before any pixel is read: same count,
non-empty, unique).

Output (:func:`ingest`): checked before anything is read. It may not be one of the inputs (or hold one),
and an existing path is only ever replaced (``overwrite=True``, CLI ``--overwrite``) when it is a cube
store (a Zarr group with ``hvaeseg_schema_version``): never a plain file, such as a label NetCDF taken as
the output when the output argument was forgotten, nor a folder that is not a cube.

Every check runs before anything is written; a bad input raises :class:`IngestError` naming the files
and what differs: CRS or footprints that differ between files, timestamps that differ between the
files of different resolutions, missing bands, a label grid that does not match the 10 m grid. Messages
are one line (several problems are numbered), as the command line prints them.

The code is split by concern: :mod:`~hvaeseg.data.ingest.netcdf` and :mod:`~hvaeseg.data.ingest.geotiff` read the
two layouts, :mod:`~hvaeseg.data.ingest.resample` resamples, :mod:`~hvaeseg.data.ingest.classes` reads code tables
and maps labels, :mod:`~hvaeseg.data.ingest.offsets` finds the BOA offset, :mod:`~hvaeseg.data.ingest.assemble`
checks the layers against each other and builds the cube, :mod:`~hvaeseg.data.ingest.outputs` checks the output,
:mod:`~hvaeseg.data.ingest.write` holds :func:`ingest` and :mod:`~hvaeseg.data.ingest.notes` :func:`ingest_notes`;
:mod:`~hvaeseg.data.ingest.images`, :mod:`~hvaeseg.data.ingest.cityscapes` and :mod:`~hvaeseg.data.ingest.image_folder`
read camera images.
"""

# `NAME as NAME`: public constants re-exported from the submodules (not in __all__)
from hvaeseg.data.ingest._common import LOCAL_GRID_RESOLUTION as LOCAL_GRID_RESOLUTION
from hvaeseg.data.ingest._common import IngestError
from hvaeseg.data.ingest._common import PathType as PathType
from hvaeseg.data.ingest.cityscapes import discover_cityscapes, ingest_cityscapes
from hvaeseg.data.ingest.classes import read_code_table
from hvaeseg.data.ingest.geotiff import ingest_geotiff
from hvaeseg.data.ingest.image_folder import discover_image_folder, ingest_image_folder
from hvaeseg.data.ingest.netcdf import discover_netcdf, ingest_netcdf
from hvaeseg.data.ingest.notes import ingest_notes
from hvaeseg.data.ingest.offsets import BASELINE_04_BOA_OFFSET as BASELINE_04_BOA_OFFSET
from hvaeseg.data.ingest.offsets import L2A_SCALE_FACTOR as L2A_SCALE_FACTOR
from hvaeseg.data.ingest.outputs import check_output
from hvaeseg.data.ingest.resample import resample_to_grid
from hvaeseg.data.ingest.write import ingest

__all__ = [
    "IngestError",
    "ingest",
    "ingest_netcdf",
    "ingest_geotiff",
    "ingest_cityscapes",
    "ingest_image_folder",
    "discover_cityscapes",
    "discover_image_folder",
    "discover_netcdf",
    "read_code_table",
    "resample_to_grid",
    "ingest_notes",
    "check_output",
]
