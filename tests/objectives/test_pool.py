"""Label pool (never the labels of unlabelled images), dihedral transforms, nearest-label void filling."""

from __future__ import annotations

import pytest
import torch

from hvaeseg.objectives import LabelLeakError, LabelPool, dihedral_transforms, fill_void_nearest


# ------------------------------------------------------------------------------------------ void filling
def test_fill_void_nearest_follows_the_stated_rule():
    s = torch.tensor(
        [
            [-1, -1, -1, -1],
            [-1, 2, -1, -1],
            [-1, -1, -1, 5],
        ]
    )
    filled = fill_void_nearest(s)
    # squared distances to the labelled pixels (1,1)=2 and (2,3)=5: (0,3): 5 vs 4 -> 5; (0,2): 2 vs 5 -> 2;
    # (1,2): 1 vs 2 -> 2; (1,3): 4 vs 1 -> 5; (2,2): 2 vs 1 -> 5; (2,1): 1 vs 4 -> 2
    expected = torch.tensor(
        [
            [2, 2, 2, 5],
            [2, 2, 2, 5],
            [2, 2, 5, 5],
        ]
    )
    assert torch.equal(filled, expected)
    # ties go to the first labelled pixel in row-major order
    tie = torch.tensor([[1, -1, 3]])
    assert torch.equal(fill_void_nearest(tie), torch.tensor([[1, 1, 3]]))
    tie2 = torch.tensor([[-1, 4], [7, -1]])  # both voids equidistant from (0,1) and (1,0): (0,1) first
    assert torch.equal(fill_void_nearest(tie2), torch.tensor([[4, 4], [7, 4]]))


def test_fill_void_nearest_batches_keeps_labels_and_rejects_all_void():
    g = torch.Generator().manual_seed(0)
    maps = torch.randint(0, 4, (5, 9, 7), generator=g)
    maps[torch.rand(maps.shape, generator=g) < 0.7] = -1
    maps[:, 0, 0] = 1  # at least one label per map
    filled = fill_void_nearest(maps)
    assert filled.min() >= 0
    lab = maps >= 0
    assert torch.equal(filled[lab], maps[lab])
    # brute force check of the rule on one map
    m, f = maps[3], filled[3]
    lab_idx = lab[3].nonzero()
    for y, x in (~lab[3]).nonzero().tolist():
        d2 = ((lab_idx - torch.tensor([y, x])) ** 2).sum(1)
        assert f[y, x] == m[tuple(lab_idx[int(d2.argmin())])]
    with pytest.raises(ValueError, match="all-void"):
        fill_void_nearest(torch.full((2, 3, 3), -1))


# --------------------------------------------------------------------------------------------- dihedral
def test_dihedral_transforms_square_and_rectangular():
    sq = torch.arange(9).reshape(3, 3)
    ts = dihedral_transforms(sq)
    assert len(ts) == 8 and torch.equal(ts[0], sq)
    assert len({tuple(t.flatten().tolist()) for t in ts}) == 8
    rect = torch.arange(6).reshape(2, 3)
    tr = dihedral_transforms(rect)
    assert len(tr) == 4 and all(t.shape == (2, 3) for t in tr)
    assert len({tuple(t.flatten().tolist()) for t in tr}) == 4


# ------------------------------------------------------------------------------------------------- pool
def _scene(seed=0, n=40, size=6, classes=5):
    """A 'dataset' of n label maps (ground truth of n patches); the first 10 are labelled, the rest unlabelled."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.randint(0, classes, (n, size, size), generator=g)
    labelled = truth[:10].clone()
    labelled[torch.rand(labelled.shape, generator=g) < 0.3] = -1  # sparse annotations
    return truth, labelled, truth[10:]


def test_pool_samples_are_transforms_of_labelled_or_extra_maps_never_of_unlabelled():
    truth, labelled, unlabelled = _scene()
    extra = torch.randint(0, 5, (3, 6, 6), generator=torch.Generator().manual_seed(9))
    pool = LabelPool(labelled, extra_maps=extra, seed=1, unlabelled=unlabelled)
    assert len(pool) == 13 * 8
    allowed = {tuple(t.flatten().tolist()) for m in torch.cat([labelled, extra]) for t in dihedral_transforms(m)}
    forbidden = {tuple(t.flatten().tolist()) for m in unlabelled for t in dihedral_transforms(m)}
    drawn = pool.sample(500)
    assert drawn.shape == (500, 6, 6) and drawn.dtype == torch.int64
    keys = {tuple(d.flatten().tolist()) for d in drawn}
    assert keys <= allowed
    assert not keys & forbidden
    assert len(keys) > 80  # the transforms really are used
    # and no drawn map agrees with an unlabelled image's truth on all its labelled pixels
    for d in drawn[:50]:
        lab = d >= 0
        assert not ((unlabelled == d) | ~lab).flatten(1).all(1).any()


def test_pool_sampling_is_reproducible_by_seed_and_generator():
    _, labelled, _ = _scene()
    a = LabelPool(labelled, seed=3).sample(20)
    b = LabelPool(labelled, seed=3).sample(20)
    assert torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    pool = LabelPool(labelled, dihedral=False)
    assert torch.equal(pool.sample(10, g1), pool.sample(10, g2))
    assert len(pool) == 10


@pytest.mark.parametrize(
    "leak",
    [
        "view",  # a slice of the very tensor holding the unlabelled images' labels
        "copy",  # an exact copy
        "rotated",  # a dihedral transform of a copy
        "voided",  # a copy with most pixels set to void
    ],
)
def test_pool_catches_labels_of_unlabelled_images(leak):
    truth, labelled, unlabelled = _scene()
    if leak == "view":
        bad = unlabelled[3]
    elif leak == "copy":
        bad = unlabelled[3].clone()
    elif leak == "rotated":
        bad = torch.rot90(unlabelled[3].clone(), 1).flip(0)
    else:
        bad = unlabelled[3].clone()
        bad[torch.rand(bad.shape, generator=torch.Generator().manual_seed(1)) < 0.8] = -1
    maps = list(labelled) + [bad]
    with pytest.raises(LabelLeakError, match="unlabelled"):
        LabelPool(maps, unlabelled=unlabelled)
    with pytest.raises(LabelLeakError):
        LabelPool(labelled, extra_maps=[bad], unlabelled=unlabelled)


def test_pool_leak_check_has_no_false_alarm_on_disjoint_crops_or_uniform_maps():
    # crops of one label array: labelled and unlabelled patches share storage but not pixels
    scene = torch.randint(0, 4, (12, 24), generator=torch.Generator().manual_seed(2))
    labelled = [scene[:, :12]]
    unlabelled = [scene[:, 12:]]
    LabelPool(labelled, unlabelled=unlabelled)
    # overlapping crops do share pixels: caught by memory
    with pytest.raises(LabelLeakError, match="memory"):
        LabelPool([scene[:, 6:18]], unlabelled=unlabelled)
    # an all-water labelled patch is not a leak of another all-water unlabelled patch
    water = torch.full((1, 6, 6), 2)
    LabelPool(water, unlabelled=water.clone())


def test_pool_validates_its_input():
    with pytest.raises(ValueError, match="one size"):
        LabelPool(torch.zeros(2, 4, 4, dtype=torch.long), extra_maps=torch.zeros(1, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        LabelPool(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="only all-void"):
        LabelPool(torch.full((2, 4, 4), -1))
    with pytest.raises(ValueError, match="below -1"):
        LabelPool(torch.full((2, 4, 4), -3))
    pool = LabelPool(torch.cat([torch.full((1, 4, 4), -1), torch.ones(1, 4, 4, dtype=torch.long)]))
    assert len(pool) == 8  # the all-void map is dropped
    with pytest.raises(ValueError, match="n >= 1"):
        pool.sample(0)
