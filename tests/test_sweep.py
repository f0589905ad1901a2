"""Sweeps: a grid of settings x seeds in one vmapped run equals the twin experiments."""

import jax.random as jr
import numpy as np
import pytest

import assimilax as ax
from assimilax.cli import main
from assimilax.experiments import stack_filters
from assimilax.filters import ETKF, LETKF, BootstrapFilter


SETUP = ax.MODELS["lorenz96"]
DYN = SETUP.make_dynamics(12)
OBS = ax.make_observation(12, 1.0, "every:2")
RUN = dict(cycles=40, obs_interval=0.05, burn_in=5, **SETUP.start(12))


def test_sweep_cells_are_the_twin_experiments(capsys):
    """Every cell is the twin experiment of its setting and seed; progress shows a line
    per seed with the time left (issue 30: a sweep printed nothing for 23 minutes)."""
    grid = {"inflation": [1.0, 1.05], "radius": [2.0, 4.0]}
    make = lambda inflation, radius: LETKF(inflation=inflation, radius=radius)
    ds = ax.sweep(make, grid, DYN, OBS, seeds=[0, 3], members=[6, 8], progress=True, **RUN)
    lines = capsys.readouterr().err.strip().split("\n")
    assert len(lines) == 4 and all("s left)" in line for line in lines)
    assert lines[-1].startswith("sweep: members 8, seed 2/2 of 4 settings")
    assert ds["rmse"].dims == ("members", "inflation", "radius", "seed")
    assert ds["rmse_analysis"].shape == (2, 2, 2, 2, 40)
    for n, i, r, s in ((6, 1.05, 2.0, 3), (8, 1.0, 4.0, 0)):
        twin = ax.twin_experiment(DYN, OBS, {"f": make(i, r)}, key=jr.key(s), members=n, **RUN)
        cell = ds.sel(members=n, inflation=i, radius=r, seed=s)
        assert np.allclose(cell["rmse_analysis"], twin["rmse_analysis"].sel(filter="f"), atol=1e-10)
        assert np.isclose(cell["rmse"], ax.summarise(twin)["f"]["rmse_analysis"], atol=1e-10)
    best = ax.best_setting(ds)
    for n in (6, 8):
        mean = ds["rmse"].sel(members=n).mean("seed")
        assert np.isclose(best[n]["rmse"], float(mean.min()))
        assert np.isclose(
            float(mean.sel(inflation=best[n]["inflation"], radius=best[n]["radius"])),
            best[n]["rmse"],
        )


@pytest.mark.slow
def test_sweep_particle_filter_and_failures_are_flagged():
    """A grid of particle filters (weights, resampling) runs too; a setting that loses
    track is flagged and never chosen."""
    grid = {"regularisation": [0.0, 1.0]}
    make = lambda regularisation: BootstrapFilter(threshold=0.5, regularisation=regularisation)
    ds = ax.sweep(make, grid, DYN, OBS, seeds=[1], members=8, **RUN)
    assert ds["rmse"].shape == (1, 2, 1)
    best = ax.best_setting(ds)[8]
    ok = (ds["diverged"] == 0) & (ds["failed"] == 0)
    assert best is None or bool(ok.sel(members=8, regularisation=best["regularisation"]).all())


def test_sweep_rejects_structural_settings():
    with pytest.raises(ValueError, match="structure"):
        stack_filters([ETKF(rotate=False), ETKF(rotate=True)])
    with pytest.raises(ValueError, match="structure"):
        stack_filters([ETKF(inflation=None), ETKF(inflation=1.02)])
    make = lambda inflation: ETKF(inflation=inflation)
    with pytest.raises(ValueError, match="grid"):
        ax.sweep(make, {}, DYN, OBS, members=8, **RUN)
    with pytest.raises(ValueError, match="1-D"):
        ax.sweep(make, {"inflation": [[1.0]]}, DYN, OBS, members=8, **RUN)
    with pytest.raises(ValueError, match="seed"):
        ax.sweep(make, {"inflation": [1.0]}, DYN, OBS, seeds=[], members=8, **RUN)


def test_sweep_cli_and_report(tmp_path, capsys):
    out = tmp_path / "sweep.nc"
    argv = "sweep --dim 12 --filter etkf --grid inflation=1:1.1:3 --seeds 2 --members 6,8"
    assert main([*argv.split(), "--cycles", "30", "--observe", "every:2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "members 6: inflation=" in text and "members 8: inflation=" in text
    ds = ax.read_netcdf(out)
    assert ds["rmse"].shape == (2, 3, 2)
    assert np.allclose(ds["inflation"], [1.0, 1.05, 1.1])
    written = ax.report(out, tmp_path / "rep")
    assert sorted(p.name for p in written) == ["summary.md", "sweep.png"]
    assert "N=6: inflation =" in (tmp_path / "rep" / "summary.md").read_text()
    assert main(["sweep", "--filter", "etkf", "--grid", "radius=1,2"]) == 2
    assert "etkf has no setting 'radius'" in capsys.readouterr().err
