"""The tutorials run top to bottom in their fast mode, write their figures, and parse as notebooks."""

import runpy
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"

#: tutorial -> files it must write under HVAESEG_TUTORIAL_OUT/<tutorial name>/
EXPECTED = {
    "01_custom_hierarchy": [
        "hierarchy.yaml", "hierarchy_default.png", "hierarchy_custom.png", "prior_untrained.png",
        "prior_trained.png", "losses.png", "layer_rates.png", "prior_predictive.png",
    ],
    "02_elbo_vs_symmetric": ["losses.png", "metrics.png", "maps.png"],
    "03_posterior_inpainting": ["hierarchy.png", "quicklook.png", "inpainting.png", "scores.png", "calibration.png"],
}


def test_every_tutorial_is_listed():
    assert sorted(p.stem for p in TUTORIALS.glob("[0-9][0-9]_*.py")) == sorted(EXPECTED)


@pytest.fixture
def one_thread():
    """Smoke runs on one thread (faster than oversubscribed cores), restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tutorial_runs_in_fast_mode(name, tmp_path, monkeypatch, one_thread):
    import matplotlib.pyplot as plt

    monkeypatch.setenv("HVAESEG_TUTORIAL_FAST", "1")
    monkeypatch.setenv("HVAESEG_TUTORIAL_OUT", str(tmp_path))
    monkeypatch.setenv("HVAESEG_NO_PROGRESS", "1")
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(TUTORIALS / f"{name}.py"), run_name="__main__")
    out = tmp_path / name
    for fname in EXPECTED[name]:
        path = out / fname
        assert path.is_file() and path.stat().st_size > 0, f"{name} did not write {fname}"
    assert plt.get_fignums() == [], f"{name} left figures open"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tutorial_parses_as_notebook(name):
    jupytext = pytest.importorskip("jupytext")
    nb = jupytext.read(TUTORIALS / f"{name}.py")
    kinds = {cell.cell_type for cell in nb.cells}
    assert kinds == {"markdown", "code"}, f"{name}: expected markdown and code cells, got {kinds}"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert len(nb.cells) >= 10
