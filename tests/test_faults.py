"""Bad input and faults, as a new user meets them: every one gets one line on stderr
and a non-zero exit (or a clear Python error naming the argument), and nothing that
was there before is overwritten or lost."""

import errno
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import assimilax as ax
from assimilax._sinks import PathLock
from assimilax.cli import main
from assimilax.dynamics import Lorenz96
from assimilax.filters import ETKF
from assimilax.observations import Identity


D = 12


def _run(argv, capsys, code=2):
    got = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert got == code, err
    return err


def _one_line(argv, capsys, text, code=2):
    """The run fails with exactly one error line (progress notes may precede it)."""
    lines = _run(argv, capsys, code)
    err = [line for line in lines if "error:" in line]
    assert len(err) == 1 and text in err[0], lines
    assert not any("Traceback" in line for line in lines), lines
    return err[0]


ASSIM = ["assimilate", "--dim", str(D), "--no-progress"]


def test_outputs_never_overwrite_inputs(sensor_file, tmp_path, capsys):
    path, _ = sensor_file
    before = path.read_bytes()
    _one_line([*ASSIM, "--obs", str(path), "--out", str(path)], capsys, "is an input file")
    link = tmp_path / "link.nc"
    link.symlink_to(path)
    _one_line([*ASSIM, "--obs", str(path), "--out", str(link)], capsys, "is an input file")
    out = tmp_path / "out.nc"
    argv = [*ASSIM, "--obs", str(path), "--out", str(out), "--checkpoint", str(path)]
    _one_line(argv, capsys, "is an input file")
    assert path.read_bytes() == before and not out.exists()


def test_a_file_that_is_not_a_checkpoint_is_never_deleted(sensor_file, tmp_path, capsys):
    path, _ = sensor_file
    keep = tmp_path / "keepme.nc"
    keep.write_bytes(b"precious")
    # An output into a missing folder is refused before anything is touched...
    argv = [*ASSIM, "--obs", str(path), "--checkpoint", str(keep), "--checkpoint-every", "5"]
    _one_line([*argv, "--out", str(tmp_path / "adir" / "o.nc")], capsys, "does not exist")
    assert keep.read_bytes() == b"precious"
    # ... and a checkpoint path holding another file is refused, not overwritten.
    _one_line([*argv, "--out", str(tmp_path / "o.nc")], capsys, "not an assimilax checkpoint")
    assert keep.read_bytes() == b"precious"


def test_two_runs_on_one_output_are_refused(sensor_file, tmp_path, capsys):
    path, _ = sensor_file
    out = tmp_path / "busy.nc"
    lock = PathLock(out, "output file")
    lock.acquire()
    try:
        _one_line([*ASSIM, "--obs", str(path), "--out", str(out)], capsys, "in use by another run")
    finally:
        lock.release()
    assert main([*ASSIM, "--obs", str(path), "--out", str(out)]) == 0


def test_disk_full_while_appending_then_resume(sensor_file, tmp_path, capsys, monkeypatch):
    """A failing append (disk full) is one line; the output keeps the records it had and
    --resume continues to the uninterrupted result, and prints the whole file's scores
    (not only the resumed cycles')."""
    path, _ = sensor_file
    whole = tmp_path / "whole.nc"
    assert main([*ASSIM, "--obs", str(path), "--out", str(whole)]) == 0
    summary = capsys.readouterr().out.split("whole file")[1]
    out = tmp_path / "full.nc"
    argv = [*ASSIM, "--obs", str(path), "--out", str(out), "--checkpoint-every", "10"]
    calls = []
    original = ax._sinks.AppendableNetCDF._write

    def failing(self, records):
        calls.append(1)
        if len(calls) == 3:
            original(self, {k: v[:1] for k, v in records.items()})  # half an append
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, records)

    with monkeypatch.context() as m:
        m.setattr(ax._sinks.AppendableNetCDF, "_write", failing)
        _one_line(argv, capsys, "no space left on device")
    assert ax.read_netcdf(out).sizes["time"] == 20
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert capsys.readouterr().out.split("whole file")[1] == summary
    a, b = ax.read_netcdf(out), ax.read_netcdf(whole)
    for name in b.data_vars:
        assert np.array_equal(a[name].values, b[name].values), name


def test_times_that_would_hang_are_refused(sensor_file, tmp_path, capsys):
    path, ds = sensor_file
    far = ds.copy()
    t = far["time"].values.copy()
    t[20:] += 1e9  # one gap of 1e9 hours
    far["time"] = ("time", t, ds["time"].attrs)
    bad = tmp_path / "far.nc"
    ax.write_netcdf(far, bad)
    out = tmp_path / "o.nc"
    _one_line([*ASSIM, "--obs", str(bad), "--out", str(out)], capsys, "--max-gap")
    huge = ds.copy()
    t = huge["time"].values.copy()
    t[5] = 1e15
    t[6:] = 1e15 + np.arange(1, t.size - 5)
    huge["time"] = ("time", t, ds["time"].attrs)
    ax.write_netcdf(huge, tmp_path / "huge.nc")
    _one_line([*ASSIM, "--obs", str(tmp_path / "huge.nc"), "--out", str(out)], capsys, "time")
    _one_line(["twin", "--obs-interval", "inf"], capsys, "--obs-interval")
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, text",
    [
        (["twin", "--members", "99999999999"], "memory"),
        (["twin", "--cycles", "100000000000"], "memory"),
        (["twin", "--seed", "1180591620717411303424"], "--seed"),
        (["twin", "--observe", "every:0"], "--observe"),
        (["twin", "--filters", "pf", "--inflation", "1.1"], "--inflation"),
        (["make-sensors", "--missing", "1", "--out", "x.nc"], "--missing"),
        (["twin", "--out", "/no/such/folder/x.nc"], "does not exist"),
    ],
)
def test_cli_bad_values_are_one_line(argv, text, capsys):
    _one_line(argv, capsys, text)


def test_resume_without_a_checkpoint_starts_afresh(sensor_file, tmp_path, capsys):
    path, _ = sensor_file
    out = tmp_path / "o.nc"
    got = main([*ASSIM, "--obs", str(path), "--out", str(out), "--resume"])
    assert got == 0
    assert "starting from the beginning" in capsys.readouterr().err
    assert ax.read_netcdf(out).sizes["time"] == 40


def test_obs_std_override_is_said(sensor_file, tmp_path, capsys):
    path, _ = sensor_file
    out = tmp_path / "o.nc"
    assert main([*ASSIM, "--obs", str(path), "--out", str(out), "--obs-std", "0.5"]) == 0
    assert "--obs-std 0.5 replaces" in capsys.readouterr().err
    data = ax.read_observations(path, (D,), noise_std=0.5, override_std=True)
    std = np.where(data.series.mask, data.series.error_std(), 0.5)
    assert data.std_source == "argument" and np.allclose(std, 0.5)


def test_divergence_is_flagged_and_exits_nonzero(tmp_path, capsys):
    """Too few members (3, no inflation) lose track: flagged in the table, the summary
    and the exit code, never silently; deflation (inflation < 1) is refused."""
    out = tmp_path / "t.nc"
    argv = ["twin", "--filters", "etkf", "--cycles", "150", "--no-progress", "--out", str(out)]
    _one_line([*argv, "--dim", "8", "--inflation", "0.5"], capsys, "--inflation")
    got = main([*argv, "--members", "3", "--inflation", "1.0"])
    captured = capsys.readouterr()
    assert got == 1 and "DIVERGED" in captured.out and "DIVERGED" in captured.err
    assert ax.summarise(ax.read_netcdf(out))["etkf"]["diverged"]


def test_python_api_names_the_argument(getkey):
    jax.config.update("jax_enable_x64", True)
    dyn, obs = Lorenz96(8), Identity(8, noise_std=1.0)
    times = 0.05 * jnp.arange(1.0, 6.0)
    series = ax.ObservationSeries(obs, times, jnp.zeros((5, 8)))
    ens = ax.Ensemble(jr.normal(getkey(), (6, 8)))
    with pytest.raises(TypeError, match="key"):  # beartype (tests) or our check
        ax.assimilate(ETKF(), dyn, series, ens, key=0)
    with pytest.raises(TypeError, match="`belief0` is float32 but the observations are float64"):
        ax.assimilate(
            ETKF(), dyn, series, ax.Ensemble(ens.members.astype(jnp.float32)), key=getkey()
        )
    wide = ax.ObservationSeries(Identity(9, noise_std=1.0), times, jnp.zeros((5, 9)))
    with pytest.raises(ValueError, match="observation operator Identity does not accept"):
        ax.assimilate(ETKF(), dyn, wide, ens, key=getkey())
    with pytest.raises(ValueError, match="do not apply to filter 'pf'"):
        ax.make_filter("pf", "lorenz96", inflation=1.1)
    records = [
        ax.ObservationRecord(float(t), np.zeros(8), None, np.ones(8)) for t in np.asarray(times)
    ]
    records[3] = records[3]._replace(noise_std=np.zeros(8))
    stream = ax.ObservationStream(obs, records)
    with pytest.raises(ValueError, match="stream record 3: `noise_std`"):
        ax.assimilate_stream(ETKF(), dyn, stream, ens, key=getkey(), chunk_size=2)


def test_light_imports():
    """`import assimilax.filters` loads no netCDF/xarray; `--help` needs no JAX."""
    code = (
        "import sys, assimilax.filters; "
        "print('netCDF4' in sys.modules, 'xarray' in sys.modules); "
        "from assimilax.cli import build_parser; import assimilax; "
        "sys.modules.pop('jax', None); "
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "False"]
    code = "import sys; from assimilax.cli import main; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    help_ = subprocess.run(
        [sys.executable, "-m", "assimilax.cli", "twin", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert help_.returncode == 0 and "(default: 2000)" in help_.stdout


def test_filter_names_are_checked_before_jax_starts():
    """A misspelt filter name is refused by the argument parser, before JAX is imported
    (issue 30: it took 1.7-30 s); the JAX-free list is the registry's."""
    from assimilax._filter_names import FILTER_NAMES
    from assimilax.experiments import FILTERS

    assert tuple(FILTERS) == FILTER_NAMES
    code = (
        "import sys; from assimilax.cli import main\n"
        "for argv in (['twin', '--filters', 'etfk'], ['sweep', '--filter', 'letfk'],\n"
        "             ['assimilate', '--obs', 'x.nc', '--out', 'y.nc', '--filter', 'kalman']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 2\n"
        "print('jax' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
    assert out.stderr.count("Unknown filter") == 3


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(tmp_path):
    """SIGKILL at 20 random moments (during start-up, an append, a checkpoint), each
    time followed by --resume: the final file equals an uninterrupted run's."""
    import random
    import signal
    import time

    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    sensors = tmp_path / "sensors.nc"
    cli = [sys.executable, "-m", "assimilax.cli"]
    subprocess.run(
        [*cli, "make-sensors", "--dim", str(D), "--cycles", "300", "--out", str(sensors)],
        check=True,
        capture_output=True,
        env=env,
    )
    common = [
        *cli,
        "assimilate",
        "--dim",
        str(D),
        "--obs",
        str(sensors),
        "--no-progress",
        "--checkpoint-every",
        "5",
    ]
    whole = tmp_path / "whole.nc"
    subprocess.run([*common, "--out", str(whole)], check=True, capture_output=True, env=env)
    out = tmp_path / "killed.nc"
    rng = random.Random(0)
    for i in range(20):
        proc = subprocess.Popen(
            [*common, "--out", str(out), *(["--resume"] if i else [])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        time.sleep(rng.uniform(0.5, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = subprocess.run([*common, "--out", str(out), "--resume"], capture_output=True, env=env)
    assert final.returncode == 0, final.stderr.decode()
    a, b = ax.read_netcdf(out), ax.read_netcdf(whole)
    for name in b.data_vars:
        assert np.array_equal(a[name].values, b[name].values), name


def _check_cf(ds):
    """The CF attributes assimilax documents: Conventions, a long_name on every variable,
    UDUNITS-parsable units where given, a coordinate variable for every dimension."""
    assert ds.attrs["Conventions"] == "CF-1.8"
    for name, var in ds.variables.items():
        assert "long_name" in var.attrs or "standard_name" in var.attrs, name
        units = var.attrs.get("units", var.encoding.get("units"))
        if units is not None and name != "time":
            assert units in ("1", "s"), (name, units)
    for dim in ds.dims:
        assert dim in ds.coords or dim in ds.variables, dim


def test_outputs_are_cf(sensor_file, tmp_path):
    import xarray as xr

    path, _ = sensor_file
    out = tmp_path / "a.nc"
    assert main([*ASSIM, "--obs", str(path), "--out", str(out)]) == 0
    with xr.open_dataset(out) as ds:  # decodes the CF dates written back
        assert np.issubdtype(ds["time"].dtype, np.datetime64)
        with xr.open_dataset(path) as src:
            assert np.all(np.abs(ds["time"].values - src["time"].values) < np.timedelta64(1, "ms"))
        _check_cf(ds)
    twin = tmp_path / "t.nc"
    argv = ["twin", "--cycles", "30", "--filters", "etkf", "--no-progress", "--out", str(twin)]
    assert main(argv) == 0
    with xr.open_dataset(twin) as ds:
        _check_cf(ds)
        assert "0x" not in str(ds["filter_description"].values)
    # A twin file is a sensor file too.
    again = tmp_path / "again.nc"
    assert main(["assimilate", "--obs", str(twin), "--out", str(again), "--no-progress"]) == 0


def test_resume_of_a_finished_run_says_so(sensor_file, tmp_path, capsys):
    path, _ = sensor_file
    out = tmp_path / "done.nc"
    argv = [*ASSIM, "--obs", str(path), "--out", str(out), "--checkpoint-every", "10"]
    assert main(argv) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert "is complete" in capsys.readouterr().err
    assert out.read_bytes() == before
