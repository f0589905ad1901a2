import subprocess
import sys

import numpy as np

import assimilax as ax
from assimilax.cli import main


def test_twin_writes_file_and_table(tmp_path, capsys):
    out = tmp_path / "run.nc"
    code = main(
        [
            "twin",
            "--model",
            "lorenz96",
            "--dim",
            "12",
            "--filters",
            "etkf,letkf",
            "--members",
            "8",
            "--cycles",
            "40",
            "--burn-in",
            "5",
            "--observe",
            "every:2",
            "--seed",
            "3",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    ds = ax.read_netcdf(out)
    assert list(ds["filter"].values) == ["etkf", "letkf"]
    assert ds.attrs["burn_in"] == 5 and ds.attrs["model"] == "lorenz96" and ds.attrs["seed"] == 3
    assert ds["observations"].shape == (40, 6)
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("etkf"))
    expected = float(ds["rmse_analysis"].sel(filter="etkf")[5:].mean())
    assert np.isclose(float(row.split()[1]), expected, atol=6e-5)


def test_arctan_and_lorenz63(tmp_path, capsys):
    out = tmp_path / "l63.nc"
    argv = "twin --model lorenz63 --cycles 30 --filters etkf,hybrid --bandwidth 1 --no-progress"
    assert main([*argv.split(), "--out", str(out)]) == 0
    # --bandwidth reaches the hybrid (and only it): its description records it.
    ds = ax.read_netcdf(out)
    descriptions = dict(zip(ds["filter"].values, ds["filter_description"].values, strict=True))
    assert descriptions["hybrid"].startswith("HybridScoreFilter(bandwidth=1.")
    assert (
        main(
            [
                "twin",
                "--dim",
                "10",
                "--cycles",
                "20",
                "--filters",
                "etkf",
                "--observation",
                "arctan",
                "--obs-std",
                "0.1",
                "--no-progress",
                "--precision",
                "float64",
            ]
        )
        == 0
    )


def test_errors_are_one_line(capsys):
    for argv, text in [
        (["twin", "--model", "navier"], "Unknown model 'navier'"),
        (["twin", "--filters", "etkf,magic"], "Unknown filter 'magic'"),
        (["twin", "--model", "lorenz63", "--dim", "5"], "--dim"),
        (["twin", "--cycles", "10", "--burn-in", "10"], "--burn-in"),
        (["twin", "--observe", "every:0"], "--observe"),
        (["twin", "--filters", "hybrid", "--bandwidth", "0"], "--bandwidth"),
        (["twin", "--filters", "etkf", "--bandwidth", "0.5"], "--bandwidth"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and text in err[0], err
        assert "Traceback" not in err[0]


def test_console_script_has_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "assimilax.cli", "twin", "--model", "nope"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "Unknown model 'nope'" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "assimilax.cli", "twin", "--members", "-3"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "--members" in proc.stderr


def test_help_is_complete():
    """Every flag with a default shows it (0 included); the observation layouts are all
    named."""
    import argparse

    from assimilax.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subs.choices.items():
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            shown = action.default not in (None, False, argparse.SUPPRESS) or action.default == 0
            if action.option_strings and shown and action.default is not False:
                assert f"(default: {action.default})" in text, (name, action.dest)
    twin = " ".join(subs.choices["twin"].format_help().split())
    assert "indices:I,J,..." in twin and "--seed SEED random seed (default: 0)" in twin
