"""Cityscapes to a mosaic cube (`hvaeseg data ingest --format cityscapes`), on the seeded miniature of
``tests/data/cityscapes_mini.py``: the label table, the drawn counts, resizing, the split protocol, bad inputs, and
every method trained and evaluated on the ingested cube."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hvaeseg.cli import main
from hvaeseg.data.ingest import IngestError, ingest, ingest_cityscapes
from hvaeseg.data.ingest.cityscapes import CATEGORIES, LABELS, category_of, class_ids
from hvaeseg.data.ingest.images import area_resize, nearest_resize
from hvaeseg.data.mosaic import MosaicLayout, assign_splits
from hvaeseg.data.sampler import SPLITS, PatchSampler, SpatialSplit
from hvaeseg.data.schema import CubeValidationError, class_names, decoded_reflectance, validate_cube
from hvaeseg.data.store import open_cube
from tests.data.cityscapes_mini import CATEGORY_OF, make_cityscapes

SMALL = (16, 32)  # the miniature's 32 x 64 images halved: whole ratios


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return make_cityscapes(tmp_path_factory.mktemp("cityscapes") / "root")


@pytest.fixture(scope="module")
def native(mini):
    return ingest_cityscapes(mini.root)


@pytest.fixture(scope="module")
def small_store(mini, tmp_path_factory):
    """The miniature at 16 x 32 in a store, through the command line."""
    out = tmp_path_factory.mktemp("cubes") / "cs.zarr"
    assert main(["data", "ingest", "--format", "cityscapes", str(mini.root), str(out), "--size", *map(str, SMALL)]) == 0
    return out


# ---------------------------------------------------------------------------------------------- the label table


def test_every_official_label_id_maps_to_its_category():
    assert {label.id for label in LABELS} == set(range(-1, 34))
    for label in LABELS:
        assert category_of(label.id) == CATEGORY_OF[255 if label.id == -1 else label.id], label
    assert category_of(-1) == "void"  # license plate: void, as the issue asks (labels.py says vehicle)
    assert class_ids("class")[7] == CATEGORIES.index("flat") and class_ids("ignore")[0] == -1


@given(st.integers(-1, 33), st.sampled_from(["class", "ignore"]))
def test_the_id_map_is_total_over_the_official_ids(label_id, void):
    cls = class_ids(void)[label_id]
    names = CATEGORIES if void == "class" else CATEGORIES[1:]
    assert -1 <= cls < len(names)
    assert (cls == -1) == (void == "ignore" and category_of(label_id) == "void")
    if cls >= 0:
        assert names[cls] == category_of(label_id)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.int16, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
                  elements=st.sampled_from([-1, 0, 3, 7, 23, 33])),
       st.integers(1, 20), st.integers(1, 20))
def test_resizing_labels_never_invents_ids(labels, h, w):
    out = nearest_resize(labels, (h, w))
    assert out.shape == (h, w) and set(np.unique(out)) <= set(np.unique(labels))


def test_area_averaging_by_hand():
    img = np.array([[0.0, 3.0, 6.0], [3.0, 6.0, 9.0]])
    # 2 x 3 -> 1 x 2: each output pixel covers 1.5 input columns of both rows
    left = (0 + 3 + 0.5 * (3 + 6)) / 3.0  # columns 0 and half of 1, both rows, over an area of 2 x 1.5
    right = (0.5 * (3 + 6) + 6 + 9) / 3.0
    np.testing.assert_allclose(area_resize(img, (1, 2)), [[left, right]])
    np.testing.assert_allclose(area_resize(img[..., None].repeat(3, -1), (1, 1))[..., 0], [[4.5]])  # the mean
    np.testing.assert_allclose(area_resize(np.arange(16.0).reshape(4, 4), (2, 2)), [[2.5, 4.5], [10.5, 12.5]])
    np.testing.assert_allclose(area_resize(np.array([[1.0, 5.0]]), (1, 4)), [[1, 1, 5, 5]])  # enlarging repeats


# ---------------------------------------------------------------------------------------------- the cube


def test_the_miniature_ingests_with_the_drawn_counts(mini, native):
    validate_cube(native)
    assert class_names(native) == list(CATEGORIES)
    counts = np.bincount(native["labels"].values[native["labels"].values >= 0], minlength=8)
    assert dict(zip(CATEGORIES, counts.tolist())) == mini.category_counts()
    assert not (native["labels"].values < 0).any()  # 8 images, 2 columns: no empty cell; void is a class
    layout = MosaicLayout.from_cube(native)
    assert layout.image_size == (32, 64) and layout.n_images == 8
    refl = decoded_reflectance(native).values[0]  # (3, Y, X)
    for i, (y0, y1, x0, x1) in enumerate(layout.boxes().tolist()):
        assert str(native["image_name"].values[i]) == mini.names[i]
        assert str(native["image_city"].values[i]) == mini.cities[i]
        want = np.vectorize(lambda v: CATEGORIES.index(CATEGORY_OF[int(v)]))(mini.labels[i])
        np.testing.assert_array_equal(native["labels"].values[y0:y1, x0:x1], want)
        np.testing.assert_allclose(refl[:, y0:y1, x0:x1], np.moveaxis(mini.images[i], -1, 0) / 255.0, atol=1e-6)
        assert (native["image_index"].values[y0:y1, x0:x1] == i).all()
    # the official val images are reserved for test, the train images free
    np.testing.assert_array_equal(native["image_split"].values, [2 if s == "val" else -1 for s in mini.splits])
    assert native.attrs["sensor"] == "camera" and [str(b) for b in native["band"].values] == ["R", "G", "B"]
    assert native["valid"].values.all()


def test_void_ignore_leaves_void_pixels_unlabelled(mini):
    ds = ingest_cityscapes(mini.root, void="ignore", split="train")
    assert class_names(ds) == list(CATEGORIES[1:])
    drawn = mini.category_counts(("train",))
    assert int((ds["labels"].values == -1).sum()) == drawn["void"]
    counts = np.bincount(ds["labels"].values[ds["labels"].values >= 0], minlength=7)
    assert dict(zip(CATEGORIES[1:], counts.tolist())) == {c: n for c, n in drawn.items() if c != "void"}
    assert (ds["image_split"].values == -1).all() and ds.sizes["image"] == 6  # no val images: nothing reserved


def test_size_resizes_images_by_area_and_labels_by_nearest(mini, small_store, capsys):
    ds = open_cube(small_store)
    layout = MosaicLayout.from_cube(ds)
    assert layout.image_size == SMALL and ds.sizes["y"] == 4 * 16 and ds.sizes["x"] == 2 * 32
    value = decoded_reflectance(ds).values[0] * 255.0
    for i, (y0, y1, x0, x1) in enumerate(layout.boxes().tolist()):
        rgb = np.moveaxis(mini.images[i].astype(np.float64), -1, 0)
        blocks = rgb.reshape(3, 16, 2, 32, 2).mean(axis=(2, 4))
        assert np.abs(value[:, y0:y1, x0:x1] - blocks).max() <= 0.5 / 256 + 1e-9  # DN keeps 1/256 of a step
        want = np.vectorize(lambda v: CATEGORIES.index(CATEGORY_OF[int(v)]))(mini.labels[i][1::2, 1::2])
        np.testing.assert_array_equal(ds["labels"].values[y0:y1, x0:x1], want)  # the pixel holding the centre


def test_the_command_line_prints_what_it_did(mini, tmp_path, capsys):
    out = tmp_path / "c.zarr"
    assert main(["data", "ingest", "--format", "cityscapes", str(mini.root), str(out), "--split", "val",
                 "--size", "8", "16", "--void", "ignore"]) == 0
    text = capsys.readouterr().out
    assert "images: 2 (2 val), 8x16 pixels" in text and "7 classes" in text and "no split reserved" in text
    assert main(["data", "ingest", "--format", "cityscapes", str(mini.root), str(tmp_path / "x.zarr"),
                 "--bands", "B02"]) == 2
    assert "--bands" in capsys.readouterr().err and not (tmp_path / "x.zarr").exists()
    assert main(["data", "ingest", "--format", "cityscapes", str(mini.root), str(tmp_path / "x.zarr"),
                 "--split", "test"]) == 2
    assert "no public labels" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- bad inputs


def _copy(mini, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(mini.root, root)
    return root


def _refused(root, tmp_path, *words, **options):
    out = tmp_path / "out.zarr"
    with pytest.raises(IngestError) as err:
        ingest(root, out, format="cityscapes", **options)
    for w in words:
        assert str(w) in str(err.value), (w, str(err.value))
    assert not out.exists() and not any(p.name.startswith("out.zarr") for p in tmp_path.iterdir())
    return str(err.value)


def test_an_image_without_its_label_map_is_refused(mini, tmp_path):
    root = _copy(mini, tmp_path)
    label = root / "gtFine" / "train" / "bochum" / f"{mini.names[4]}_gtFine_labelIds.png"
    label.unlink()
    _refused(root, tmp_path, label, f"{mini.names[4]}_leftImg8bit.png", "gtFine_trainvaltest.zip")


def test_a_file_with_a_wrong_suffix_is_refused(mini, tmp_path):
    root = _copy(mini, tmp_path)
    wrong = root / "leftImg8bit" / "train" / "aachen" / "aachen_000099_000099.png"
    shutil.copy(root / "leftImg8bit" / "train" / "aachen" / f"{mini.names[0]}_leftImg8bit.png", wrong)
    _refused(root, tmp_path, wrong, "_leftImg8bit.png", "rename it or remove it")


def test_an_empty_split_is_refused(mini, tmp_path):
    root = _copy(mini, tmp_path)
    shutil.rmtree(root / "leftImg8bit" / "val" / "frankfurt")
    shutil.rmtree(root / "gtFine" / "val")
    _refused(root, tmp_path, "'val' is empty", root / "leftImg8bit" / "val", "splits with images: train",
             "--split")
    _refused(tmp_path / "nowhere", tmp_path, "no such folder")
    (tmp_path / "bare").mkdir()
    _refused(tmp_path / "bare", tmp_path, "not a Cityscapes root", "leftImg8bit/", "gtFine/")


def test_a_label_map_with_foreign_values_is_refused(mini, tmp_path):
    from PIL import Image

    root = _copy(mini, tmp_path)
    label = root / "gtFine" / "val" / "frankfurt" / f"{mini.names[7]}_gtFine_labelIds.png"
    lab = mini.labels[7].copy()
    lab[0, :3] = 40
    Image.fromarray(lab, "L").save(label)
    _refused(root, tmp_path, label, "{40}", "not Cityscapes label ids")


# ---------------------------------------------------------------------------------------------- the split


def test_the_sampler_splits_a_mosaic_image_by_image(native):
    layout = MosaicLayout.from_cube(native)
    split = SpatialSplit(block={"y": 16, "x": 16}, seed=3)
    codes = assign_splits(native["image_split"].values, split.fractions, split.seed)
    assert (codes[6:] == SPLITS.index("test")).all()  # the official val images
    assert sorted(codes[:6].tolist()) == [0, 0, 0, 0, 0, 1]  # train 0.7 : val 0.15 of the six others
    plan = PatchSampler({"y": 16, "x": 16}, mode="grid", split=split, seed=3).plan(native)
    index = native["image_index"].values
    for y, x, s in zip(plan.y, plan.x, plan.split):
        image = index[y:y + 16, x:x + 16]
        assert (image == image[0, 0]).all() and codes[image[0, 0]] == s  # a tile in one image, of its split
    assert len(plan.select(split="test")) == 2 * 2 * 4  # every pixel of the two test images: 2 x 4 tiles each
    sampler = PatchSampler({"y": 16, "x": 16}, split=split, n_labelled=2, splits=("train",), n_patches=8, seed=3)
    assert len(sampler.labelled_candidates(native)) == 5  # the budget counts images
    locations = sampler.labelled_locations(native)
    assert len(locations) == 2 * 8 and len({int(index[y, x]) for y, x in locations}) == 2
    assert layout.rows == 4


def test_camera_bands_need_the_sensor_attribute(native):
    ds = native.copy()
    del ds.attrs["sensor"]
    with pytest.raises(CubeValidationError, match="sensor"):
        validate_cube(ds)
    ds = native.copy()
    ds["image_split"] = ds["image_split"].copy(data=np.full(8, 5, dtype=np.int8))
    with pytest.raises(CubeValidationError, match="image_split"):
        validate_cube(ds)
    ds = native.assign_attrs(mosaic_columns=3)
    with pytest.raises(CubeValidationError, match="mosaic"):
        validate_cube(ds)


# ---------------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("method", ["symmetric", "elbo", "supervised", "mixmatch"])
def test_each_method_trains_and_evaluates_on_the_miniature(method, small_store, tmp_path):
    from hvaeseg.experiment import RunConfig, evaluate_run, train_run

    config = RunConfig(method=method, data=str(small_store), labels=2, steps=2, patch_size=16, block=16,
                       unlabelled_patches=8, batch_size=4, val_every=2, checkpoint_every=2)
    trainer = train_run(config, tmp_path / "run")
    assert trainer.step == 2
    if method in ("symmetric", "elbo"):  # a 3-band hierarchy
        assert trainer.method.hvae.spec.image.bands == 3
    result = evaluate_run(tmp_path / "run", "test", iwae_samples=1)
    assert result["pixels"] == 2 * 16 * 32 and len(result["confusion_matrix"]) == 8  # the two official val images
    assert 0 <= result["accuracy"] <= 1
    if method == "supervised":  # and a prediction of the whole mosaic, image by image
        assert main(["predict", str(tmp_path / "run"), "--out", str(tmp_path / "pred.zarr")]) == 0
        pred = open_cube(tmp_path / "pred.zarr", validate=False)
        assert pred["class_map"].shape == (64, 64) and "image_index" in pred and pred.sizes["image"] == 8
