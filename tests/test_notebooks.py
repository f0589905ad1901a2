"""Every notebook in notebooks/ runs as a script (jupytext percent format), at a small
size, so the walk-throughs cannot go stale."""

import os
import runpy
from pathlib import Path

import pytest


NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.py"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv("ASSIMILAX_NOTEBOOK_CYCLES", "80")
    monkeypatch.setenv("ASSIMILAX_NOTEBOOK_TRAIN_STEPS", "300")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = runpy.run_path(os.fspath(path), run_name="__main__")
    assert namespace["scores"]  # the notebook's own assertions ran


def test_there_is_a_notebook():
    assert NOTEBOOKS
