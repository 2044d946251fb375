"""The augmentations (:mod:`hvaeseg.methods.augment`): exact inverses, per-sample elements, shifts, spectral
jitter, date dropout, one draw for bands, masks and labels (the group laws of D4 itself: ``tests/test_dihedral.py``)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hvaeseg.methods.augment import (
    ELEMENTS,
    IDENTITY,
    Augmentation,
    DihedralElement,
    apply,
    drop_dates,
    invert,
    random_elements,
    spectral_jitter,
    translate,
)

elements = st.sampled_from(ELEMENTS)


@st.composite
def patches(draw, square=False):
    """A random patch triple: bands (B, [T,] C, H, W), mask (B, [T,] H, W), label map (B, H, W) with voids."""
    B, C = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    H = draw(st.integers(1, 7))
    W = H if square else draw(st.integers(1, 7))
    T = draw(st.sampled_from([None, 2]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    lead = (B,) if T is None else (B, T)
    x = torch.randn(*lead, C, H, W, generator=g)
    valid = torch.rand(*lead, H, W, generator=g) < 0.7
    labels = torch.randint(-1, 5, (B, H, W), generator=g)
    return x, valid, labels


@given(patches(), elements)
def test_inverse_undoes_every_element_exactly(patch, g):
    for t in patch:  # bands, masks and label maps
        out = apply(t, g)
        assert out.dtype == t.dtype
        assert torch.equal(invert(out, g), t)
        assert torch.equal(apply(out, g.inverse()), t)


@given(patches(square=True), st.integers(0, 2**31 - 1))
def test_per_sample_elements_are_inverted_exactly(patch, seed):
    B = patch[0].shape[0]
    gs = random_elements(B, torch.Generator().manual_seed(seed))
    for t in patch:
        out = apply(t, gs)
        for b in range(B):  # each sample got its own element
            assert torch.equal(out[b], gs[b](t[b]))
        assert torch.equal(invert(out, gs), t)


def test_random_elements_are_seeded_cover_the_group_and_respect_shape():
    a = random_elements(200, torch.Generator().manual_seed(3))
    b = random_elements(200, torch.Generator().manual_seed(3))
    assert a == b and set(a) == set(ELEMENTS)
    keep = random_elements(100, torch.Generator().manual_seed(3), shape_preserving=True)
    assert all(g.preserves_shape for g in keep) and len(set(keep)) == 4
    x = torch.randn(2, 1, 3, 5)
    with pytest.raises(ValueError, match="square"):
        apply(x, [DihedralElement(1), IDENTITY])


def test_translate_moves_content_and_marks_shifted_in_pixels():
    t = torch.arange(1, 26, dtype=torch.float32).reshape(1, 1, 5, 5).repeat(2, 1, 1, 1)
    shifts = torch.tensor([[1, -2], [0, 0]])
    out = translate(t, shifts, fill=-7.0)
    assert torch.equal(out[1], t[1])
    assert torch.equal(out[0, 0, 1:, :3], t[0, 0, :4, 2:])  # moved down 1, left 2
    assert (out[0, 0, 0, :] == -7).all() and (out[0, 0, :, 3:] == -7).all()
    valid = translate(torch.ones(2, 5, 5, dtype=torch.bool), shifts, fill=False)
    assert valid[0].sum() == 4 * 3 and valid[1].all()
    labels = translate(torch.zeros(2, 5, 5, dtype=torch.long), shifts, fill=-1)
    assert torch.equal(labels == -1, ~valid)
    # shifting back restores every pixel that was not lost
    back = translate(out, -shifts, fill=0.0)
    assert torch.equal(back[0, 0, :4, 2:], t[0, 0, :4, 2:])


@given(patches(), st.integers(0, 2**31 - 1))
def test_augmentation_is_consistent_across_bands_masks_and_labels(patch, seed):
    x, valid, _ = patch
    # labels derived from the bands, so a consistent transform keeps them derivable
    labels = (x.reshape(x.shape[0], -1, *x.shape[-2:])[:, 0] > 0).long()
    aug = Augmentation(dihedral=True, max_shift=2, jitter=0.0)
    g = torch.Generator().manual_seed(seed)
    draw = aug.draw(x, g)
    xa, va, la = aug.apply_draw(draw, x, valid, labels)
    inside = la != -1
    derived = (xa.reshape(xa.shape[0], -1, *xa.shape[-2:])[:, 0] > 0).long()
    assert torch.equal(derived[inside], la[inside])
    # pixels shifted in: invalid on every date, void, zero reflectance; never made up
    vt = va if va.dim() == 3 else va.any(1)
    assert not vt[~inside].any()
    assert (xa.reshape(xa.shape[0], -1, *xa.shape[-2:]).abs().sum(1)[~inside] == 0).all()


def test_spectral_jitter_touches_bands_only_and_is_reversible():
    x = torch.randn(3, 2, 4, 6, 6)  # (B, T, C, H, W)
    valid = torch.rand(3, 2, 6, 6) < 0.5
    labels = torch.randint(-1, 3, (3, 6, 6))
    aug = Augmentation(dihedral=False, jitter=0.2)
    draw = aug.draw(x, torch.Generator().manual_seed(0))
    xa, va, la = aug.apply_draw(draw, x, valid, labels)
    assert torch.equal(va, valid) and torch.equal(la, labels)
    assert not torch.allclose(xa, x)
    torch.testing.assert_close(spectral_jitter(xa, 1 / draw.gains), x)
    # one gain per sample and band, shared by all dates and pixels
    ratio = xa / x
    torch.testing.assert_close(ratio, draw.gains[:, None, :, None, None].expand_as(ratio))


def test_augmentation_config_is_validated():
    with pytest.raises(ValueError, match="max_shift"):
        Augmentation(max_shift=-1)
    with pytest.raises(ValueError, match="jitter"):
        Augmentation(jitter=-0.1)


@given(st.integers(1, 6), st.integers(1, 6), st.floats(0.01, 0.999), st.integers(0, 2**31 - 1))
def test_date_dropout_hides_whole_dates_and_keeps_one_per_stack(B, T, p, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 3, 4, 4, generator=g) + 5.0  # never 0: a hidden value is one set to 0
    valid = torch.rand(B, T, 4, 4, generator=g) < 0.8
    labels = torch.randint(-1, 3, (B, 4, 4), generator=g)
    aug = Augmentation(dihedral=False, date_dropout=p)
    draw = aug.draw(x, torch.Generator().manual_seed(seed))
    assert draw.dropped is not None and draw.dropped.shape == (B, T) and draw.dropped.dtype == torch.bool
    assert (~draw.dropped).any(dim=1).all()  # every stack keeps a date
    xa, va, la = aug.apply_draw(draw, x, valid, labels)
    assert torch.equal(la, labels)  # labels are time-invariant
    for b in range(B):
        for t in range(T):
            if draw.dropped[b, t]:
                assert (xa[b, t] == 0).all() and not va[b, t].any()
            else:
                assert torch.equal(xa[b, t], x[b, t]) and torch.equal(va[b, t], valid[b, t])


def test_date_dropout_rate_and_single_dates():
    aug = Augmentation(dihedral=False, date_dropout=0.3)
    x = torch.zeros(4000, 6, 1, 2, 2)
    dropped = aug.draw(x, torch.Generator().manual_seed(0)).dropped
    # each date is dropped with probability 0.3, except the stack's largest draw (P(all 6 dropped) = 0.3^6)
    assert dropped.float().mean().item() == pytest.approx(0.3 - 0.3**6 / 6, abs=0.01)
    assert aug.draw(torch.zeros(3, 1, 2, 2)).dropped is None  # single dates: nothing to drop
    assert Augmentation(dihedral=False).draw(x).dropped is None
    with pytest.raises(ValueError, match="date_dropout"):
        Augmentation(date_dropout=1.0)
    with pytest.raises(ValueError, match="date_dropout"):
        Augmentation(date_dropout=-0.1)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        drop_dates(torch.zeros(2, 3, 1, 2, 2), torch.ones(2, 3, 2, 2, dtype=torch.bool), torch.zeros(2, 2))
