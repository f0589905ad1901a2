"""Every notebook in notebooks/ runs as a script (jupytext percent format), at a small
size, so the walk-throughs cannot go stale; the shipped `.ipynb` files are in sync with
their `.py` sources (regenerate with `jupytext --to ipynb notebooks/*.py`)."""

import json
import os
import runpy
from pathlib import Path

import pytest


NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.py"))
# The long walk-throughs run in the slow suite.
SLOW = {"battery_sgm", "gbm_diffusion", "score_filters_vs_enkf", "smdp_heat"}


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.slow) if p.stem in SLOW else p for p in NOTEBOOKS],
    ids=lambda p: p.stem,
)
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv("ASSIMILAX_NOTEBOOK_CYCLES", "80")
    monkeypatch.setenv("ASSIMILAX_NOTEBOOK_TRAIN_STEPS", "300")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import jax

    x64 = jax.config.jax_enable_x64
    try:  # a notebook sets its own precision; the tests after it keep theirs
        namespace = runpy.run_path(os.fspath(path), run_name="__main__")
    finally:
        jax.config.update("jax_enable_x64", x64)
    assert namespace["scores"]  # the notebook's own assertions ran
    if "workdir" in namespace:  # its files went to a temporary folder, removed at the end
        assert not Path(namespace["workdir"].name).exists()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_ipynb_is_in_sync_with_its_source(path):
    import jupytext

    shipped = path.with_suffix(".ipynb")
    assert shipped.is_file(), f"run `jupytext --to ipynb {path.name}` in notebooks/"
    source = jupytext.read(path)
    cells = json.loads(shipped.read_text())["cells"]
    want = [(c.cell_type, c.source.strip()) for c in source.cells]
    got = [(c["cell_type"], "".join(c["source"]).strip()) for c in cells]
    assert got == want, f"{shipped.name} is stale: run `jupytext --to ipynb notebooks/*.py`"


def test_there_is_a_notebook():
    assert NOTEBOOKS
