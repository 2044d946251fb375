"""Day-of-year features: shape, range, periodicity over the year, order of the columns."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hvaeseg.nets.covariates import DOY_FEATURES, DOY_HARMONICS, doy_features


def test_shape_dtype_and_column_order():
    assert DOY_FEATURES == 2 * DOY_HARMONICS == 4
    doy = torch.tensor([[0.0, 365.25 / 4], [365.25 / 2, 1.0]], dtype=torch.float64)
    f = doy_features(doy)
    assert f.shape == (2, 2, 4) and f.dtype == torch.float64
    # sines of harmonics 1, 2, then cosines of harmonics 1, 2
    torch.testing.assert_close(f[0, 0], torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(f[0, 1], torch.tensor([1.0, 0.0, 0.0, -1.0], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(f[1, 0], torch.tensor([0.0, 0.0, -1.0, 1.0], dtype=torch.float64), atol=1e-12, rtol=0)
    assert doy_features(torch.tensor(7.0)).shape == (4,)
    assert doy_features(torch.tensor([1, 2, 3])).dtype == torch.float32  # integer days
    assert doy_features(torch.tensor([1, 2]), torch.float64).dtype == torch.float64


@given(st.lists(st.floats(-1000, 1000, allow_nan=False), min_size=1, max_size=8))
def test_periodic_and_bounded(days):
    doy = torch.tensor(days, dtype=torch.float64)
    f = doy_features(doy)
    assert f.shape == (len(days), 4)
    assert bool((f.abs() <= 1).all())
    torch.testing.assert_close(doy_features(doy + 365.25), f, atol=1e-9, rtol=0)
    torch.testing.assert_close(doy_features(doy - 2 * 365.25), f, atol=1e-9, rtol=0)
    # each harmonic is a point on the unit circle
    torch.testing.assert_close(f[:, :2] ** 2 + f[:, 2:] ** 2, torch.ones(len(days), 2, dtype=torch.float64))


def test_new_year_neighbours_are_close_and_days_are_distinguishable():
    f = doy_features(torch.arange(1, 367, dtype=torch.float64))
    step = (f[1:] - f[:-1]).norm(dim=-1)
    wrap = (f[365] - f[0]).norm()  # day 366 (31 December of a leap year) and day 1
    assert float(wrap) <= 1.01 * float(step.max())  # 31 December and 1 January are neighbours
    year = f[:365]  # 1 .. 365: one day less than the period apart at most
    dist = torch.cdist(year, year) + torch.eye(365, dtype=f.dtype) * 10
    assert float(dist.min()) > 0.9 * 2 * math.pi / 365.25  # no two days of a year share features


def test_non_numeric_days_are_refused():
    with pytest.raises(TypeError, match="numeric"):
        doy_features(torch.tensor([True, False]))
