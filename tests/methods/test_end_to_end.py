"""Short training runs of both baselines on the ``tiny`` synthetic preset; each must beat chance clearly.

The cube is cut here by a minimal patch cutter (the left half trains, the right half tests), so the test
depends only on the generator, the network and the methods.
"""

import functools
import math

import numpy as np
import pytest
import torch

import hvaeseg.data.schema as schema
import hvaeseg.data.synthetic as synthetic
from hvaeseg.methods import MixMatchConfig, MixMatchMethod, StepBatch, SupervisedConfig, SupervisedMethod
from hvaeseg.metrics import ConfusionMatrix
from tests.methods.standin import PatchBatch

PATCH = 32


@functools.lru_cache(maxsize=2)
def tiny_cube(dates: int):
    """``x (T, C, H, W)`` normalised, ``valid (T, H, W)``, ``labels (H, W)``, number of classes; the
    ``dates`` clearest dates only (fewer dates, faster tests)."""
    cube = synthetic.make_cube("tiny", seed=0)
    clearest = np.sort(np.argsort(-cube["valid"].values.mean((1, 2)), kind="stable")[:dates])
    cube = cube.isel(time=clearest)
    refl = schema.decoded_reflectance(cube).values  # NaN where there is no data
    valid = cube["valid"].values & np.isfinite(refl).all(1)
    per_band = np.moveaxis(refl, 1, 0)[:, valid]  # (C, N valid pixels)
    mean, std = per_band.mean(1), per_band.std(1) + 1e-6
    x = np.nan_to_num((refl - mean[None, :, None, None]) / std[None, :, None, None])
    labels = cube["labels"].values.astype(np.int64)
    K = len(schema.class_names(cube))
    return torch.from_numpy(x).float(), torch.from_numpy(valid), torch.from_numpy(labels), K


class Cutter:
    """Patches of the clearest date (``dates=None``) or stacks of the ``dates`` clearest dates; left half:
    training patches (``n_labelled`` fixed labelled tiles and random unlabelled crops), right half: the test
    region."""

    def __init__(self, n_labelled: int, batch: int, dates: int | None = None, seed: int = 0):
        self.temporal = dates is not None
        self.x, self.valid, self.labels, self.K = tiny_cube(dates or 1)
        if not self.temporal:
            self.x, self.valid = self.x[0], self.valid[0]
        H, W = self.labels.shape
        self.half = W // 2
        self.g = torch.Generator().manual_seed(seed)
        tiles = [(y, x) for y in range(0, H - PATCH + 1, PATCH) for x in range(0, self.half - PATCH + 1, PATCH)]
        pick = torch.randperm(len(tiles), generator=self.g)[:n_labelled].tolist()
        self.labelled = self.cut([tiles[i] for i in pick], with_labels=True)
        self.batch = batch

    def cut(self, corners, with_labels):
        sl = [(slice(y, y + PATCH), slice(x, x + PATCH)) for y, x in corners]
        x = torch.stack([self.x[..., a, b] for a, b in sl])
        valid = torch.stack([self.valid[..., a, b] for a, b in sl])
        labels = torch.stack([self.labels[a, b] if with_labels else torch.full((PATCH, PATCH), -1) for a, b in sl])
        return PatchBatch(x, valid, labels)

    def unlabelled(self):
        H = self.labels.shape[0]
        ys = torch.randint(0, H - PATCH + 1, (self.batch,), generator=self.g).tolist()
        xs = torch.randint(0, self.half - PATCH + 1, (self.batch,), generator=self.g).tolist()
        return self.cut(list(zip(ys, xs)), with_labels=False)

    def test_region(self):
        right = (..., slice(self.half, None))
        return self.x[right][None], self.valid[right][None], self.labels[right][None]


def train_and_score(method, cutter: Cutter, steps: int) -> tuple[float, float]:
    method.train(True)
    for step in range(steps):
        unlabelled = cutter.unlabelled() if "unlabelled" in method.streams else None
        batch = StepBatch(labelled=cutter.labelled, unlabelled=unlabelled)
        losses = method.losses(batch, step)
        assert all(math.isfinite(v.item()) for v in losses.values())
        method.update(losses)
        method.after_update(step)
    method.train(False)
    x, valid, labels = cutter.test_region()
    cm = ConfusionMatrix(cutter.K)
    cm.update(method.predict_proba(x, valid), labels)
    return cm.accuracy(), cm.mean_iou()


def chance(cutter: Cutter) -> float:
    """Accuracy of always predicting the test region's most frequent class."""
    labels = cutter.test_region()[2]
    labels = labels[labels != -1]
    return float(torch.bincount(labels).max()) / labels.numel()


def build(method_cls, config, cutter):
    C = cutter.x.shape[-3]
    return method_cls.build(C, cutter.K, config=config, temporal=cutter.temporal, seed=0)


@pytest.mark.parametrize(
    "method_cls, config, steps",
    [
        (SupervisedMethod, SupervisedConfig(widths=(16, 32), lr=3e-3, day_of_year=False), 50),
        (MixMatchMethod, MixMatchConfig(widths=(16, 32), lr=3e-3, rampup_steps=30, day_of_year=False), 60),
    ],
    ids=["supervised", "mixmatch"],
)
def test_short_run_beats_chance(method_cls, config, steps):
    cutter = Cutter(n_labelled=4, batch=2)
    acc, miou = train_and_score(build(method_cls, config, cutter), cutter, steps)
    assert acc > chance(cutter) + 0.15, (acc, chance(cutter))
    assert miou > 1.5 / cutter.K, miou


@pytest.mark.slow
@pytest.mark.parametrize(
    "method_cls, config",
    [
        (SupervisedMethod, SupervisedConfig(day_of_year=False)),
        (MixMatchMethod, MixMatchConfig(rampup_steps=200, day_of_year=False)),
    ],
    ids=["supervised", "mixmatch"],
)
def test_longer_run_on_stacks_with_the_default_network(method_cls, config):
    cutter = Cutter(n_labelled=4, batch=4, dates=6)
    acc, miou = train_and_score(build(method_cls, config, cutter), cutter, 400)
    assert acc > chance(cutter) + 0.3, (acc, chance(cutter))
    assert miou > 2.5 / cutter.K, miou
