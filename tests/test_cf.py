"""Every kind of file assimilax writes is CF-1.8 with no errors and no warnings, as the
IOOS `compliance-checker` reads it (it ships the standard-name table, so it runs
offline) and as `cfchecks` reads it where the UDUNITS-2 library is installed; and what
is written reads back as it was (model time exactly, filter names as strings)."""

import json
from pathlib import Path

import jax.random as jr
import numpy as np
import pytest
import xarray as xr

import assimilax as ax
from assimilax.cli import main


def _compliance_issues(path: Path, tmp_path: Path) -> list[str]:
    """Every message of `compliance-checker --test=cf:1.8` (errors and warnings)."""
    pytest.importorskip("compliance_checker")
    from compliance_checker.runner import CheckSuite, ComplianceChecker

    CheckSuite.load_all_available_checkers()
    report = tmp_path / f"{path.stem}.json"
    ComplianceChecker.run_checker(
        str(path), ["cf:1.8"], 0, "normal", output_filename=str(report), output_format="json"
    )
    result = json.loads(report.read_text())["cf:1.8"]
    return [
        f"{item['name']}: {msg}"
        for level in ("high_priorities", "medium_priorities", "low_priorities")
        for item in result.get(level, [])
        for msg in item.get("msgs", [])
    ]


def _cfchecks_counts(path: Path, tmp_path: Path) -> tuple[int, int]:
    """(errors, warnings) of `cfchecks` (cfchecker), tables from compliance-checker's
    standard-name table and empty area-type/region tables (the files use neither)."""
    try:
        from cfchecker.cfchecks import CFChecker
    except Exception as e:  # cfunits raises FileNotFoundError without libudunits2
        pytest.skip(f"cfchecks unavailable here: {e}")
    import compliance_checker

    table = Path(compliance_checker.__file__).parent / "data" / "cf-standard-name-table.xml"
    area, region = tmp_path / "area.xml", tmp_path / "region.xml"
    area.write_text(
        "<area_type_table><version_number>0</version_number><date>-</date></area_type_table>"
    )
    region.write_text(
        "<standardized_region_list><version_number>0</version_number><date>-</date></standardized_region_list>"
    )
    checker = CFChecker(
        cfStandardNamesXML=str(table),
        cfAreaTypesXML=str(area),
        cfRegionNamesXML=str(region),
        silent=True,
    )
    checker.checker(str(path))
    counts = checker.get_total_counts()
    return counts["ERROR"] + counts["FATAL"], counts["WARN"]


@pytest.fixture(scope="module")
def files(sensor_file, tmp_path_factory):
    """`files(kind)`: `(path, dataset written or None)` of a twin output (two filters),
    the sensor file, an assimilate output of it, or one of a sensor file in plain model
    time; each made on first use."""
    folder = tmp_path_factory.mktemp("cf")
    made = {}

    def twin():
        dynamics, observation = ax.dynamics.Lorenz96(), ax.observations.Identity(40, noise_std=1.0)
        filters = {"etkf": ax.filters.ETKF(), "enkf": ax.filters.StochasticEnKF()}
        ds = ax.experiments.twin_experiment(
            dynamics, observation, filters, key=jr.key(0), members=10, cycles=12,
            obs_interval=0.05, burn_in=2, progress=False, x0=8.0 + jr.normal(jr.key(1), (40,)),
        )  # fmt: skip
        ds["time"].attrs["model_time_unit"] = "5 days"
        ax.write_netcdf(ds, folder / "twin.nc")
        return folder / "twin.nc", ds

    def assimilated(source, name):
        out = folder / name
        argv = ["assimilate", "--obs", str(source), "--dim", "12", "--no-progress"]
        assert main([*argv, "--out", str(out)]) == 0
        return out

    def model_time():
        plain = sensor_file[1].copy()
        plain["time"] = ("time", np.arange(1, plain.sizes["time"] + 1) * 0.05, {"units": "1"})
        plain.to_netcdf(folder / "plain.nc")  # model time, not CF: a user's own file
        return assimilated(folder / "plain.nc", "plain_assimilated.nc"), plain

    makers = {
        "twin": twin,
        "sensors": lambda: sensor_file,
        "assimilate": lambda: (assimilated(sensor_file[0], "assimilated.nc"), None),
        "assimilate_model_time": model_time,
    }

    def get(kind):
        if kind not in made:
            made[kind] = makers[kind]()
        return made[kind]

    return get


KINDS = [
    "twin",
    "sensors",
    "assimilate",
    pytest.param("assimilate_model_time", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("kind", KINDS)
def test_compliance_checker_finds_nothing(files, kind, tmp_path):
    path, _ = files(kind)
    assert _compliance_issues(path, tmp_path) == []


@pytest.mark.slow  # needs libudunits2 (skipped without it)
@pytest.mark.parametrize("kind", KINDS)
def test_cfchecks_finds_nothing(files, kind, tmp_path):
    path, _ = files(kind)
    assert _cfchecks_counts(path, tmp_path) == (0, 0)


def test_twin_file_reads_back_as_written(files):
    path, twin = files("twin")
    back = ax.read_netcdf(path)
    xr.testing.assert_equal(back.drop_attrs(), twin.drop_attrs())
    np.testing.assert_array_equal(back["time"].values, twin["time"].values)  # exactly
    assert list(back["filter"].values) == ["etkf", "enkf"]
    assert back["time"].attrs["model_time_unit"] == "5 days"
    assert "assimilax" in back.attrs["history"]


@pytest.mark.slow
def test_model_time_output_keeps_the_input_times(files):
    path, plain = files("assimilate_model_time")
    back = ax.read_netcdf(path)
    np.testing.assert_array_equal(back["time"].values, plain["time"].values)
