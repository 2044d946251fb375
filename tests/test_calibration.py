"""Spread recalibration (hvaeseg.calibration): the needed factors against brute-force coverage, the fitted factor's
coverage and minimality, a known miscalibration recovered, the rescaling's moments, and the calibration pairs' rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hvaeseg.calibration import calibration_pairs, fit_spread_factor, needed_factors, rescale
from hvaeseg.metrics import interval_coverage


def _draws(seed: int, K: int = 24, shape=(2, 3, 5, 4), truth_scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    samples = torch.randn(K, *shape, generator=g, dtype=torch.float64)
    truth = truth_scale * torch.randn(*shape, generator=g, dtype=torch.float64)
    mask = torch.rand(shape[0], *shape[-2:], generator=g) < 0.7
    mask[0, 0, 0] = True
    return samples, truth, mask


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), factor=st.floats(0.1, 5.0), level=st.sampled_from([0.5, 0.8, 0.9]))
def test_a_value_is_covered_after_scaling_exactly_when_its_needed_factor_is_reached(seed, factor, level):
    samples, truth, mask = _draws(seed)
    needed = needed_factors(samples, truth, mask, level)
    brute = interval_coverage(rescale(samples, factor), truth, mask, (level,))[level]
    assert brute == pytest.approx(float((needed <= factor).double().mean()), abs=1e-12)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), level=st.sampled_from([0.5, 0.8, 0.9]))
def test_the_fitted_factor_covers_the_level_and_no_smaller_one_does(seed, level):
    samples, truth, mask = _draws(seed, truth_scale=2.0)
    c = fit_spread_factor(needed_factors(samples, truth, mask, level), level)
    assert interval_coverage(rescale(samples, c), truth, mask, (level,))[level] >= level
    assert interval_coverage(rescale(samples, c * (1 - 1e-7)), truth, mask, (level,))[level] < level


@pytest.mark.parametrize("truth_scale", [0.5, 2.0])
def test_a_known_miscalibration_is_undone(truth_scale):
    # samples from N(0, 1), truth from N(0, truth_scale^2): the spread must be scaled by truth_scale
    samples, truth, mask = _draws(3, K=400, shape=(4, 1, 40, 40), truth_scale=truth_scale)
    c = fit_spread_factor(needed_factors(samples, truth, mask, 0.9), 0.9)
    assert c == pytest.approx(truth_scale, rel=0.08)


def test_rescaling_keeps_the_mean_and_scales_the_spread():
    samples, _, _ = _draws(0)
    out = rescale(samples, 1.7)
    torch.testing.assert_close(out.mean(0), samples.mean(0))
    torch.testing.assert_close(out.std(0), 1.7 * samples.std(0))
    same = torch.full((8, 3), 0.25, dtype=torch.float64)  # an observed value: every sample agrees
    assert torch.equal(rescale(same, 3.0), same)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="spread factor > 0"):
            rescale(samples, bad)


def test_needed_factors_at_the_edges():
    # three values of 4 samples each: truth at the mean (0), truth beyond a one-sided spread (inf), a plain one
    samples = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.0, 0.0, 1.0]],
                           dtype=torch.float64).reshape(4, 1, 1, 1, 3)
    truth = torch.tensor([0.0, 0.5, 3.0], dtype=torch.float64).reshape(1, 1, 1, 3)
    mask = torch.ones(1, 1, 3, dtype=torch.bool)
    needed = needed_factors(samples, truth, mask, 0.5)
    # the third value's sorted samples are -1, -1, 1, 1; its 50% interval runs from the quantile at position
    # 0.25 * 5 = 1.25 (between the two -1: -1) to 3.75 (between the two 1: 1), i.e. +-1 about the mean 0, so the
    # truth 3 needs a factor of 3
    assert needed.tolist() == [0.0, math.inf, pytest.approx(3.0)]
    assert fit_spread_factor(needed[[0, 2]], 0.9) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="no spread factor covers"):
        fit_spread_factor(needed, 0.9)


def test_bad_inputs_are_named():
    samples, truth, mask = _draws(0)
    with pytest.raises(ValueError, match="K >= 2"):
        needed_factors(samples[:1], truth, mask)
    with pytest.raises(ValueError, match="mask of shape"):
        needed_factors(samples, truth, mask[:, :2])
    with pytest.raises(ValueError, match="level in"):
        needed_factors(samples, truth, mask, 1.0)
    with pytest.raises(ValueError, match="no calibration value"):
        fit_spread_factor(torch.empty(0), 0.9)


def _valid(shares: list[float], H: int = 10, W: int = 10) -> np.ndarray:
    v = np.zeros((len(shares), H, W), bool)
    for t, s in enumerate(shares):
        v[t].flat[: int(round(s * H * W))] = True
    return v


def test_calibration_pairs_follow_the_rule():
    shares = [1.0, 0.2, 0.6, 0.97, 0.0, 0.5, 1.0]
    v = _valid(shares)
    # targets >= 90% valid by default (0, 3, 6), each with every partly cloudy donor (1, 2, 5)
    assert calibration_pairs(v) == [(t, d) for t in (0, 3, 6) for d in (1, 2, 5)]
    pairs = calibration_pairs(v, min_target=0.5)
    assert [t for t, _ in pairs] == [0] * 3 + [2] * 2 + [3] * 3 + [5] * 2 + [6] * 3
    assert (2, 2) not in pairs and (5, 5) not in pairs  # never its own donor
    assert {t for t, _ in calibration_pairs(v, min_target=0.5, exclude=[0, 3])} == {2, 5, 6}
    assert calibration_pairs(v, donor_range=(0.3, 0.8)) == [(t, d) for t in (0, 3, 6) for d in (2, 5)]
    assert calibration_pairs(_valid([1.0, 1.0, 0.0])) == []  # no partly cloudy date: no donor
    with pytest.raises(ValueError, match=r"\(T, H, W\) bool"):
        calibration_pairs(v.astype(np.uint8))
