"""`hvaeseg data ingest --format folder`: a folder of image / label PNG pairs with a class table, to a mosaic cube."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hvaeseg.cli import main
from hvaeseg.data.ingest import IngestError, ingest, ingest_image_folder
from hvaeseg.data.mosaic import MosaicLayout
from hvaeseg.data.schema import class_names, decoded_reflectance, validate_cube
from hvaeseg.data.store import open_cube

TABLE = "code,name\n1,road\n2,tree\n5,water\n"


def make_folder(root, n: int = 5, size=(12, 20), seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` pairs of random shapes: codes 1, 2, 5 (classes) and 9 (not in the table); one grey image and one
    palette label map among them. Returns the drawn label maps by name."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "table.csv").write_text(TABLE)
    drawn = {}
    h, w = size
    for i in range(n):
        lab = np.full((h, w), 1, np.uint8)
        lab[: h // 2, int(rng.integers(2, w - 4)):] = 2
        lab[h // 2:, : int(rng.integers(2, w // 2))] = 5
        lab[0, 0] = 9
        rgb = np.stack([lab * 40, 255 - lab * 20, lab * 10], axis=-1).astype(np.uint8)
        image = Image.fromarray(rgb, "RGB").convert("L") if i == 1 else Image.fromarray(rgb, "RGB")
        image.save(root / "images" / f"img{i}.png")
        label = Image.fromarray(lab, "L")
        if i == 2:
            label = label.convert("P")  # a palette image: its indices are the codes
        label.save(root / "labels" / f"img{i}.png")
        drawn[f"img{i}"] = lab
    return drawn


def test_a_folder_ingests_with_the_table_classes(tmp_path, capsys):
    drawn = make_folder(tmp_path / "set")
    out = tmp_path / "set.zarr"
    assert main(["data", "ingest", "--format", "folder", str(tmp_path / "set"), "--code-table",
                 str(tmp_path / "set" / "table.csv"), str(out)]) == 0
    assert "images: 5" in capsys.readouterr().out
    ds = open_cube(out)
    assert class_names(ds) == ["road", "tree", "water"]
    layout = MosaicLayout.from_cube(ds)
    ids = {1: 0, 2: 1, 5: 2, 9: -1}
    for i, (y0, y1, x0, x1) in enumerate(layout.boxes().tolist()):
        assert str(ds["image_name"].values[i]) == f"img{i}"
        np.testing.assert_array_equal(ds["labels"].values[y0:y1, x0:x1], np.vectorize(ids.get)(drawn[f"img{i}"]))
    assert (ds["labels"].values[ds["image_index"].values < 0] == -1).all()  # 5 images in 3 x 2 cells: one empty
    assert not ds["valid"].values[0][ds["image_index"].values < 0].any()
    assert (ds["image_split"].values == -1).all()  # nothing reserved
    grey = decoded_reflectance(ds).values[0][:, :12, 20:40]  # the grey image: three equal bands
    np.testing.assert_allclose(grey[0], grey[1])
    np.testing.assert_allclose(grey[1], grey[2])
    assert "code 9: 5 px" in ds["labels"].attrs["void_description"]


def test_resizing_and_different_sizes(tmp_path):
    make_folder(tmp_path / "set")
    Image.new("RGB", (30, 10)).save(tmp_path / "set" / "images" / "odd.png")
    Image.new("L", (30, 10), 1).save(tmp_path / "set" / "labels" / "odd.png")
    table = tmp_path / "set" / "table.csv"
    with pytest.raises(IngestError, match="--size H W") as err:
        ingest_image_folder(tmp_path / "set", code_table=table)
    assert "odd.png" in str(err.value)
    ds = ingest_image_folder(tmp_path / "set", code_table=table, size=(6, 10))
    validate_cube(ds)
    assert MosaicLayout.from_cube(ds).image_size == (6, 10)
    assert set(np.unique(ds["labels"].values)) <= {-1, 0, 1, 2}


@pytest.mark.parametrize("problem", ["missing label", "not png", "colour labels", "no table", "no images"])
def test_bad_folders_are_refused_and_nothing_is_written(problem, tmp_path):
    root = tmp_path / "set"
    make_folder(root)
    table = root / "table.csv"
    if problem == "missing label":
        (root / "labels" / "img3.png").unlink()
        words = ["img3.png", "has no label map"]
    elif problem == "not png":
        (root / "images" / "notes.txt").write_text("x")
        words = ["notes.txt", "is not a .png file"]
    elif problem == "colour labels":
        Image.new("RGB", (20, 12)).save(root / "labels" / "img0.png")
        words = ["img0.png", "'RGB'", "one channel"]
    elif problem == "no table":
        table, words = None, ["--code-table"]
    else:
        for p in (root / "images").iterdir():
            p.unlink()
        for p in (root / "labels").iterdir():
            p.unlink()
        words = ["holds no .png images"]
    out = tmp_path / "out.zarr"
    with pytest.raises(IngestError) as err:
        ingest(root, out, format="folder", code_table=table)
    for w in words:
        assert w in str(err.value), (w, str(err.value))
    assert not out.exists()
