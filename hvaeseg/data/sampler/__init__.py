"""Patch sampling and spatial splits: *what* to read, kept apart from the reading (:mod:`hvaeseg.data.loader`).

A :class:`PatchSampler` turns a cube into a :class:`PatchPlan`: for every patch its top-left pixel, its
date(s), its split and whether its labels may be used. The plan is plain data; it serialises to JSON
exactly (``PatchPlan.from_json(plan.to_json()) == plan``), so a run can be repeated patch for patch.

Sizes are given per named dimension, ``{"y": 64, "x": 64}``; adding ``"time": T`` asks for T-date stacks
(the loader then yields ``(B, T, C, H, W)``), leaving it out gives single-date patches ``(B, C, H, W)``.

Rules
-----
**Splits.** :class:`SpatialSplit` cuts the ``(y, x)`` plane into blocks (a regular grid from the cube's
top-left pixel; the last row / column of blocks may be smaller) and gives every block to exactly one of
``train`` / ``val`` / ``test`` by a seeded permutation, in the proportions asked for.

**Edges.** A patch never crosses the cube border nor a block border, so no pixel of a patch belongs to
another split and the loader never pads. A block smaller than the patch along a dimension holds no patch.
In grid mode each block is tiled from its top-left corner with stride = patch size; the remainder along
each dimension (block extent not a multiple of the patch size) is **dropped** by default
(``grid_remainder="drop"``), or covered by one extra patch shifted back to end at the block edge, so
overlapping its neighbour (``grid_remainder="shift"``). Nothing is ever padded.

**Cover mode** plans whole-cube prediction (:func:`hvaeseg.predict.predict_cube`): it tiles the whole cube as
grid mode tiles a block with ``grid_remainder="shift"`` (:func:`hvaeseg.data.tiles.tile_starts`), so every pixel
is covered; a mosaic is tiled cell by cell, the empty cells of its last row included. It takes no split and no
labelled locations: every patch is in ``train`` and unlabelled, one group per patch. Single-date patches: one
patch per (tile, date), every date of the cube, tile by tile; T-date stacks: one patch per tile, its T
*clearest* dates (below).

**Dates and invalid patches.** The valid fraction of a date over a box is the share of ``valid`` pixels.
A date *qualifies* for a patch when its valid fraction is ``>= min_valid`` and ``> 0``
(:func:`~hvaeseg.data.sampler.dates.qualifying`, the one place this rule is written). The patch's
dates are drawn uniformly (by seed, without replacement, sorted) from its qualifying dates.
In random mode a draw with fewer qualifying dates than it needs is rejected and drawn again, so a random
patch never contains a date without a valid pixel. Grid tiles and labelled locations are kept whatever
their data (coverage must not depend on the weather): when fewer dates qualify than needed they take
their *clearest* dates: those with the highest valid fraction (earliest first on ties,
:func:`~hvaeseg.data.sampler.dates.clearest_dates`), which may have no valid pixel; the
loader returns such patches with ``valid`` all False, and every loss masks invalid pixels.

**Chunk-friendly random sampling.** With ``window={"y": 512, "x": 512}`` and ``per_window=k``, random
mode tiles the cube into super-tiles of that size from the cube origin (choose a multiple of the
store's chunk size, so each super-tile covers whole chunks); a super-tile is eligible for a split when
it lies entirely inside one block of that split. Each draw picks an eligible super-tile uniformly,
picks its dates from the dates that qualify over the whole super-tile, then draws ``k`` patch positions
uniformly inside it; a position whose dates do not all qualify over the patch itself is redrawn (up to
``4 k`` candidates per super-tile; the first ``k`` that qualify stay; a super-tile that cannot give ``k``
is dropped and another drawn, so every group has ``k`` patches, batches of a multiple of ``k`` patches
read whole super-tiles, and only the last group may be cut short by ``n_patches``). The ``k``
patches share a ``group`` id and the loader keeps a group together in a batch, so one decode of the
super-tile's chunks serves ``k`` patches. Without ``window`` every patch is drawn independently,
uniformly over all positions of its split.

**Labelled subset.** ``n_labelled`` training locations are drawn (by seed) among the non-overlapping
patch-size tiles of the training blocks that hold at least one labelled pixel. They depend only on the
cube's grid and labels, the split, the patch size, the seed and ``n_labelled`` -- not on the mode, the
dates or the number of random patches -- so every method trained with the same settings sees the same
labelled locations. Only patches flagged ``labelled`` carry labels through the loader; the random
(unlabelled) training patches get all-void labels even where they overlap a labelled location.
Validation and test patches are always flagged ``labelled`` (they are for evaluation).
A labelled location gives one patch, its dates drawn as above (``labelled_dates="draw"``), placed after the
split's random or grid patches; or, for single-date patches, one patch per qualifying date (in date order; its
clearest date alone when none qualifies) with ``labelled_dates="every"``, placed before them (labels are
time-invariant: every clear date of a labelled location is a labelled example). Either way a location's patches
share a group, numbered after the split's other groups.

**Image mosaics.** A cube of camera images laid out as a mosaic (:mod:`hvaeseg.data.mosaic`: dataset attributes
``mosaic_image_size`` and ``mosaic_columns``) is split image by image: the blocks are the images, each given to
one split by :func:`hvaeseg.data.mosaic.assign_splits` (the images the cube reserves for a split in
``image_split`` keep it, the others are shared by the split's ``fractions`` and ``seed``; the split's ``block`` is
not used). A labelled location is then a whole training image with a labelled pixel: ``n_labelled`` counts images,
:meth:`PatchSampler.labelled_candidates` returns one row per candidate image (its top-left pixel) and
:meth:`PatchSampler.labelled_locations` every patch tile covering the drawn images (the last row / column of
tiles shifted back to end at the image border). Everything else (grid and random modes, dates) is as above
with images for blocks, so no patch crosses an image border.

Modules
-------
This package re-exports the public names of its modules:

- :mod:`.split`: :class:`SpatialSplit`, the blocks of each split;
- :mod:`.plan`: :class:`PatchPlan`, the plan as data, and its exact JSON;
- :mod:`.cube_view`: what the sampler reads from a cube, and the valid fractions of boxes;
- :mod:`.dates`: the date rules (qualifying dates, clearest dates, the seeded draw);
- :mod:`.grid`: grid and cover modes (tiles of boxes);
- :mod:`.random_draws`: random mode (uniform and windowed draws);
- :mod:`.labelled`: the labelled subset (candidates, locations, their dates);
- :mod:`.patch_sampler`: :class:`PatchSampler`, its settings, and the plan put together split by split.
"""

from hvaeseg.data.sampler._common import SPLITS
from hvaeseg.data.sampler.patch_sampler import PatchSampler
from hvaeseg.data.sampler.plan import PLAN_VERSION, PatchPlan
from hvaeseg.data.sampler.split import SpatialSplit

__all__ = ["SPLITS", "SpatialSplit", "PatchSampler", "PatchPlan", "PLAN_VERSION"]
