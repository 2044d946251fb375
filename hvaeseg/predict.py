"""Whole-cube prediction: a class map and class probabilities with the input's coordinates.

The cube is tiled with ``patch_size`` tiles that cover every pixel (the last row/column of tiles is shifted
back to end at the border, never padded): the plan is the sampler's cover mode (:mod:`hvaeseg.data.sampler`,
``PatchSampler(mode="cover")``). Overlapping tiles are averaged. A single-date model predicts every date of a tile
and the per-pixel probabilities are averaged over the dates weighted by whether the pixel is clear on that date (a
pixel never clear gets the plain average over dates). A temporal model (T-date stacks) sees the T clearest dates of
each tile.

A mosaic of camera images (:mod:`hvaeseg.data.mosaic`) is tiled image by image (every cell of its grid, the
last row / column of tiles shifted back to end at the image border), so that no tile crosses from one image
into another; the prediction keeps the mosaic's attributes, ``image_index`` and per-image coordinates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from hvaeseg._progress import progress
from hvaeseg.data.loader import PatchLoader
from hvaeseg.data.regions import Region
from hvaeseg.data.sampler import PatchPlan, PatchSampler
from hvaeseg.train import predict_batch

PredictFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def _cover_plan(ds: xr.Dataset, patch_size: int, dates: int) -> PatchPlan:
    """The tiles that cover the cube, in prediction order: the sampler's cover mode
    (:class:`~hvaeseg.data.sampler.PatchSampler` ``mode="cover"``): for single dates one row per (tile, date), for
    ``dates``-date stacks each tile's clearest dates."""
    sizes = {"y": patch_size, "x": patch_size, **({"time": dates} if dates > 1 else {})}
    return PatchSampler(sizes, mode="cover").plan(ds)


@torch.no_grad()
def predict_cube(
    predict_proba: PredictFn,
    cube: xr.Dataset | str,
    num_classes: int,
    *,
    patch_size: int,
    dates: int = 1,
    batch_size: int = 8,
    device: str = "cpu",
    class_attrs: Mapping[str, object] | None = None,
    class_ids: Sequence[int] | None = None,
) -> xr.Dataset:
    """Class probabilities and the argmax class map of a whole cube.

    :param predict_proba: ``(x, valid, doy) -> (B, K, H, W)`` probabilities (a trained method's
        ``predict_proba``; ``doy`` the days of the year of the patches' dates).
    :param cube: the cube (Dataset or store path/URL).
    :param class_attrs: the class attributes of ``class_map`` (``flag_values``, ``flag_meanings``, ...): those
        of the run's labels (default: the cube's labels' attributes, right when the cube is the run's own).
    :param class_ids: the id written for each of the K model classes (default ``0..K-1``): to number the
        prediction as a cube with other class ids does (:func:`hvaeseg.experiment.check_cube`).
    :returns: a Dataset with ``class_map (y, x)`` int16 and ``probability (class, y, x)`` float32 on the
        input's ``y``/``x`` coordinates (``class``: the written ids), with the class attributes and the input's CRS.
    """
    from hvaeseg.data.store import open_cube

    ds = cube if isinstance(cube, xr.Dataset) else open_cube(cube, validate=False)
    ids = _class_ids(num_classes, class_ids)
    plan = _cover_plan(ds, patch_size, dates)
    Y, X = ds.sizes["y"], ds.sizes["x"]
    prob = _probabilities(predict_proba, cube, plan, np.arange(len(plan)), (0, Y, 0, X), num_classes,
                          patch_size=patch_size, batch_size=batch_size, device=device, desc="predicting")
    class_map = ids[prob.argmax(0).numpy()].astype(np.int16)
    return _prediction_dataset(ds, class_map, prob.numpy(), ids, class_attrs)


def _class_ids(num_classes: int, class_ids: Sequence[int] | None) -> np.ndarray:
    ids = np.arange(num_classes) if class_ids is None else np.asarray(class_ids, dtype=np.int64)
    if ids.shape != (num_classes,):
        raise ValueError(f"class_ids: expected one id for each of the {num_classes} classes, got {len(ids)}")
    return ids


def _probabilities(predict_proba: PredictFn, cube: xr.Dataset | str, plan: PatchPlan, rows: np.ndarray,
                   box: tuple[int, int, int, int], num_classes: int, *, patch_size: int, batch_size: int,
                   device: str, desc: str | None) -> Tensor:
    """``(K, y1 - y0, x1 - x0)`` float32 class probabilities over ``box = (y0, y1, x0, x1)`` from the plan's
    ``rows`` (tiles inside the box, in the plan's order): overlaps averaged, weighted by clear pixels. A pixel of
    the box gets the value a whole-cube prediction gives it when ``rows`` holds every tile over it: each row is
    predicted in the very batch the whole cube puts it in (whole batches of the plan are read, the rows not in
    ``rows`` are dropped), as a model's output may differ in the last bit with the other patches of its batch."""
    y0, y1, x0, x1 = box
    total = torch.zeros(num_classes, y1 - y0, x1 - x0, dtype=torch.float64)
    weight = torch.zeros(y1 - y0, x1 - x0, dtype=torch.float64)
    plain = torch.zeros(num_classes, y1 - y0, x1 - x0, dtype=torch.float64)
    count = torch.zeros(y1 - y0, x1 - x0, dtype=torch.float64)
    keep = None
    if len(rows) == len(plan):
        sub = plan
    else:  # the whole-cube batches that hold the rows
        load = np.concatenate([np.arange(b * batch_size, min((b + 1) * batch_size, len(plan)))
                               for b in np.unique(np.asarray(rows) // batch_size)])
        keep = np.isin(load, rows)
        sub = plan.take(load)
    loader = PatchLoader(cube, sub, batch_size=batch_size, device=device, workers=1)
    row = 0
    batches = loader.batches(0)
    if desc is not None:
        batches = progress(batches, desc=desc, total=len(loader))
    for batch in batches:
        probs = predict_batch(predict_proba, batch).double().cpu()
        clear = batch.valid.double().cpu()
        if clear.dim() == 4:  # stacks: a pixel counts as clear when clear on any date
            clear = clear.amax(1)
        for i in range(probs.shape[0]):
            if keep is not None and not keep[row]:
                row += 1
                continue
            y, x = int(sub.y[row]) - y0, int(sub.x[row]) - x0
            sl = (slice(y, y + patch_size), slice(x, x + patch_size))
            total[(slice(None), *sl)] += probs[i] * clear[i]
            weight[sl] += clear[i]
            plain[(slice(None), *sl)] += probs[i]
            count[sl] += 1
            row += 1
    prob = torch.where(weight > 0, total / weight.clamp_min(1e-12), plain / count.clamp_min(1))
    return (prob / prob.sum(0, keepdim=True)).float()


def _prediction_dataset(ds: xr.Dataset, class_map: np.ndarray, prob: np.ndarray, ids: np.ndarray,
                        class_attrs: Mapping[str, object] | None) -> xr.Dataset:
    """The prediction Dataset of cube ``ds``: ``class_map (y, x)``, ``probability (class, y, x)``, coordinates,
    attributes (and a mosaic's image coordinates and ``image_index``)."""
    if class_attrs is not None:
        label_attrs = dict(class_attrs)
    else:
        label_attrs = dict(ds["labels"].attrs) if "labels" in ds else {}
    out = xr.Dataset(
        {
            "class_map": (("y", "x"), class_map, label_attrs),
            "probability": (("class", "y", "x"), prob, {"long_name": "class probability"}),
        },
        coords={"y": ds["y"].values, "x": ds["x"].values, "class": ids},
        attrs={k: v for k, v in ds.attrs.items() if k in ("crs",)},
    )
    if "image" in ds.sizes:  # a mosaic: which image each pixel is from, and the images' names
        from hvaeseg.data.mosaic import COLUMNS_ATTR, SIZE_ATTR

        out.attrs.update({k: ds.attrs[k] for k in (SIZE_ATTR, COLUMNS_ATTR, "sensor") if k in ds.attrs})
        out = out.assign_coords({k: v for k, v in ds.coords.items() if v.dims == ("image",)})
        if "image_index" in ds:
            out["image_index"] = ds["image_index"].load()
    return out


def prediction_template(cube: xr.Dataset | str, num_classes: int, *,
                        class_attrs: Mapping[str, object] | None = None,
                        class_ids: Sequence[int] | None = None) -> xr.Dataset:
    """What :func:`predict_cube` returns for ``cube``, with zero-memory placeholders (``np.broadcast_to`` of 0)
    for ``class_map`` and ``probability``: the shape, coordinates and attributes of a prediction, before any
    region is computed (the create step of :class:`hvaeseg.data.region_store.RegionStore`)."""
    from hvaeseg.data.store import open_cube

    ds = cube if isinstance(cube, xr.Dataset) else open_cube(cube, validate=False)
    ids = _class_ids(num_classes, class_ids)
    Y, X = ds.sizes["y"], ds.sizes["x"]
    class_map = np.broadcast_to(np.zeros((), dtype=np.int16), (Y, X))
    prob = np.broadcast_to(np.zeros((), dtype=np.float32), (num_classes, Y, X))
    return _prediction_dataset(ds, class_map, prob, ids, class_attrs)


@torch.no_grad()
def predict_region(
    predict_proba: PredictFn,
    cube: xr.Dataset | str,
    num_classes: int,
    region: Region,
    *,
    patch_size: int,
    dates: int = 1,
    batch_size: int = 8,
    device: str = "cpu",
    class_ids: Sequence[int] | None = None,
    plan: PatchPlan | None = None,
) -> dict[str, np.ndarray]:
    """The prediction of one region (:mod:`hvaeseg.data.regions`), equal to the same pixels of
    :func:`predict_cube`'s: the region is predicted from every tile over it, accumulated in the whole cube's order.

    :param region: the output pixels to predict.
    :param plan: the cube's cover plan (:func:`_cover_plan`), to compute once for many regions.
    :returns: ``{"class_map": (h, w) int16, "probability": (K, h, w) float32}`` (and ``"image_index"`` ``(h, w)``
        for a mosaic), ``h, w`` the region's size.
    """
    from hvaeseg.data.regions import tiles_touching
    from hvaeseg.data.store import open_cube

    ds = cube if isinstance(cube, xr.Dataset) else open_cube(cube, validate=False)
    ids = _class_ids(num_classes, class_ids)
    plan = _cover_plan(ds, patch_size, dates) if plan is None else plan
    rows = np.asarray(tiles_touching(region, list(zip(plan.y.tolist(), plan.x.tolist())), patch_size),
                      dtype=np.int64)
    if rows.size == 0:  # pragma: no cover - the tiles cover the cube
        raise RuntimeError(f"{region}: no tile covers it")
    box = (int(plan.y[rows].min()), int(plan.y[rows].max()) + patch_size,
           int(plan.x[rows].min()), int(plan.x[rows].max()) + patch_size)
    prob = _probabilities(predict_proba, cube, plan, rows, box, num_classes, patch_size=patch_size,
                          batch_size=batch_size, device=device, desc=None)
    cut = (slice(region.y0 - box[0], region.y1 - box[0]), slice(region.x0 - box[2], region.x1 - box[2]))
    prob = prob[(slice(None), *cut)]
    out = {"class_map": ids[prob.argmax(0).numpy()].astype(np.int16), "probability": prob.numpy()}
    if "image" in ds.sizes and "image_index" in ds:
        out["image_index"] = np.asarray(ds["image_index"].isel(region.slices).transpose("y", "x").values)
    return out


def write_prediction(pred: xr.Dataset, path: str, *, overwrite: bool = False,
                     chunks: Mapping[str, int | None] | None = None) -> str:
    """Write a prediction to Zarr atomically (temporary name, then rename).

    :param chunks: chunk sizes by dimension (default :data:`hvaeseg.data.store.DEFAULT_CHUNKS`: 256 x 256 pixels).
    """
    from hvaeseg.data.store import write_dataset

    return write_dataset(pred, path, overwrite=overwrite, chunks=chunks)
