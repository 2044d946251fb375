"""bench/posterior_speed.py runs both calls on a small batch and reports what it measured."""

from __future__ import annotations

import json

import pytest


def test_posterior_speed_reports_both_calls(posterior_speed, tmp_path):
    out = tmp_path / "speed.json"
    result = posterior_speed.main(["--batch", "2", "--dates", "3", "--size", "16", "--samples", "2", "--repeats", "1",
                                   "--output", str(out)])
    assert json.loads(out.read_text()) == result
    secs = result["seconds_per_call"]
    assert secs["now"] > 0 and secs["reference"] > 0
    assert result["speedup"] == pytest.approx(secs["reference"] / secs["now"])
    assert (result["batch"], result["dates"], result["samples"]) == (2, 3, 2)


def test_posterior_speed_refuses_a_single_date_hierarchy(posterior_speed):
    from tests.hierarchy.helpers import SPECS_DIR

    with pytest.raises(SystemExit):
        posterior_speed.main(["--spec", str(SPECS_DIR / "default.yaml"), "--repeats", "1"])
