"""`assimilax report`: valid PNGs with content and a table equal to the dataset's."""

import jax.random as jr
import matplotlib.image
import numpy as np
import pytest

import assimilax as ax
from assimilax._report import report
from assimilax.cli import main


@pytest.fixture(scope="module")
def twin_file(tmp_path_factory):
    setup = ax.MODELS["lorenz63"]
    filters = {"etkf": ax.make_filter("etkf", setup), "pf": ax.make_filter("pf", setup)}
    ds = ax.twin_experiment(
        setup.make_dynamics(3),
        ax.make_observation(3, setup.obs_std),
        filters,
        key=jr.key(0),
        members=30,
        cycles=120,
        obs_interval=setup.obs_interval,
        burn_in=20,
        x0=setup.initial_state(3),
        spinup_time=setup.spinup_time,
        init_std=setup.init_std,
        attrs={"model": "lorenz63"},
    )
    path = tmp_path_factory.mktemp("twin") / "run.nc"
    ax.write_netcdf(ds, path)
    return path


def _table(text):
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return header, {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def test_report_files_and_table(twin_file, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(twin_file), "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    # The particle filter's weights vary, so the ESS plot is there too.
    expected = {"rmse_spread.png", "rank_histograms.png", "state.png", "ess.png"}
    assert expected | {"summary.md"} == names
    for name in expected:
        raw = (out / name).read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 200 and image.shape[1] > 200
        assert image[..., :3].std() > 0.05  # not blank
    header, rows = _table((out / "summary.md").read_text())
    ds = ax.read_netcdf(twin_file)
    burn_in = ds.attrs["burn_in"]
    for name in ("etkf", "pf"):
        sel = ds.sel(filter=name).isel(time=slice(burn_in, None))
        assert np.isclose(
            float(rows[name]["rmse_analysis"]), sel["rmse_analysis"].mean(), rtol=5e-3
        )
        assert np.isclose(
            float(rows[name]["crps_analysis"]), sel["crps_analysis"].mean(), rtol=5e-3
        )
        cov90 = sel["coverage_analysis"].sel(level=0.9).mean()
        assert np.isclose(float(rows[name]["coverage_90"]), cov90, rtol=5e-3)
        assert np.isclose(float(rows[name]["ess_analysis"]), sel["ess_analysis"].mean(), rtol=5e-3)
        assert rows[name]["status"] == "ok"


def test_report_hovmoller_for_long_states(tmp_path):
    setup = ax.MODELS["lorenz96"]
    ds = ax.twin_experiment(
        setup.make_dynamics(12),
        ax.make_observation(12, 1.0, "every:2"),
        {"etkf": ax.make_filter("etkf", setup)},
        key=jr.key(1),
        members=10,
        cycles=50,
        obs_interval=0.05,
        burn_in=5,
        x0=setup.initial_state(12),
    )
    written = report(ds, tmp_path)
    assert "ess.png" not in {p.name for p in written}  # EnKF weights never vary
    assert matplotlib.image.imread(tmp_path / "state.png")[..., :3].std() > 0.05


def test_report_rejects_other_files(tmp_path, capsys):
    bogus = tmp_path / "bogus.nc"
    bogus.write_text("not a netCDF file")
    assert main(["report", str(bogus), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "not a readable netCDF file" in err and len(err.strip().splitlines()) == 1
    import xarray as xr

    other = tmp_path / "other.nc"
    ax.write_netcdf(xr.Dataset({"a": ("t", np.arange(3.0))}), other)
    assert main(["report", str(other)]) == 2
    assert "not an assimilax twin-experiment file" in capsys.readouterr().err


def test_setting_labels_show_the_swept_values():
    from assimilax._report import setting_label

    values = np.linspace(1.0, 1.1, 10)
    labels = [setting_label(v) for v in values]
    assert labels[:2] == ["1", "1.0111"] and labels[5] == "1.0556" and labels[-1] == "1.1"
    assert len(set(labels)) == len(labels)
    assert [setting_label(v) for v in (1.05, 2.0, 0.001, 250.0)] == ["1.05", "2", "0.001", "250"]


def test_sweep_summary_says_what_was_swept(tmp_path):
    import xarray as xr

    from assimilax._report import _sweep_report

    infl, radius = np.linspace(1.0, 1.1, 10), np.array([1.0, 2.0, 4.0])
    rmse = np.add.outer(np.abs(infl - 1.0556), radius / 10)[None, :, :, None] + np.zeros(2)
    dims = ("members", "inflation", "radius", "seed")
    ds = xr.Dataset(
        {"rmse": (dims, rmse), "failed": (dims, 0 * rmse), "diverged": (dims, 0 * rmse)},
        coords={"members": [20], "inflation": infl, "radius": radius, "seed": [0, 1]},
        attrs={"filter_description": "LETKF(radius=1.0, inflation=1.0)", "burn_in": 5,
               "cycles": 50},
    )  # fmt: skip
    _sweep_report(ds, tmp_path)
    text = (tmp_path / "summary.md").read_text()
    assert "Swept: `inflation` 10 values, 1 to 1.1; `radius` 3 values, 1 to 4." in text
    assert "shown at the grid's first cell): `LETKF(radius=1.0, inflation=1.0)`" in text
    assert "- N=20: inflation = 1.0556, radius = 1, rmse = 0.1" in text
