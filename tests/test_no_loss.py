"""Never hang, never lose a file (issue 26): outputs that are not plain files, locks on
every writer, resume and checkpoint refusals, a full disk (real: a file-size limit)
again during the resume, signals during long compiled calls, and data that would give
silently wrong numbers."""

import os
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import assimilax as ax
from assimilax._io import PathLock
from assimilax.cli import main
from assimilax.dynamics import Lorenz96
from assimilax.filters import ETKF
from assimilax.observations import Identity

from .test_faults import ASSIM, _one_line


def _writers(out, obs):
    """Every command that writes a file, writing to `out`."""
    return [
        ["make-sensors", "--dim", "8", "--cycles", "5", "--out", out],
        ["twin", "--dim", "8", "--cycles", "5", "--filters", "etkf", "--out", out],
        ["sweep", "--dim", "8", "--cycles", "5", "--filter", "etkf", "--seeds", "1",
         "--grid", "inflation=1.0,1.1", "--out", out],
        [*ASSIM, "--obs", obs, "--out", out],
    ]  # fmt: skip


def test_outputs_that_are_not_regular_files_are_refused(sensor_file, tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for argv in _writers(str(fifo), str(sensor_file[0])):
        _one_line(argv, capsys, "not a regular file")
        assert fifo.is_fifo()
    with pytest.raises(ValueError, match="not a regular file"):
        ax.write_netcdf(ax.read_netcdf(sensor_file[0]), fifo)
    assert fifo.is_fifo()


def test_every_writer_takes_the_lock_and_removes_it(sensor_file, tmp_path, capsys):
    out = tmp_path / "busy.nc"
    with PathLock(out, "output file"):
        for argv in _writers(str(out), str(sensor_file[0])):
            _one_line(argv, capsys, "in use by another run")
    assert not out.exists()
    assert main(_writers(str(out), "")[0]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy.nc"]  # no lock file left


def test_a_254_byte_file_name_is_written(tmp_path, capsys):
    out = tmp_path / ("s" * 251 + ".nc")
    assert main(["make-sensors", "--dim", "8", "--cycles", "5", "--out", str(out)]) == 0
    assert ax.read_netcdf(out).sizes["time"] == 5


def test_resume_without_a_checkpoint_never_overwrites(sensor_file, tmp_path, capsys):
    out = tmp_path / "other.nc"
    out.write_bytes(b"someone else's results")
    argv = [*ASSIM, "--obs", str(sensor_file[0]), "--out", str(out), "--resume"]
    _one_line(argv, capsys, "would overwrite the existing")
    assert out.read_bytes() == b"someone else's results"


def test_an_earlier_checkpoint_is_kept_unless_resumed(sensor_file, tmp_path, capsys):
    out, ckpt = tmp_path / "o.nc", tmp_path / "o.ckpt"
    argv = [*ASSIM, "--obs", str(sensor_file[0]), "--out", str(out), "--checkpoint", str(ckpt)]
    argv += ["--checkpoint-every", "10"]
    assert main(argv) == 0
    before = ckpt.read_bytes()
    _one_line(argv, capsys, "--resume")
    assert ckpt.read_bytes() == before
    assert main([*argv, "--overwrite-checkpoint"]) == 0


def test_a_checkpoint_resumes_only_on_its_device_layout(getkey, tmp_path):
    dyn, obs = Lorenz96(8), Identity(8, noise_std=1.0)
    series = ax.ObservationSeries(obs, 0.05 * jnp.arange(1.0, 11.0), jnp.zeros((10, 8)))
    ens = ax.Ensemble(jr.normal(getkey(), (6, 8)))
    run = dict(key=jr.key(0), chunk_size=5)
    ckpt = tmp_path / "c.ckpt"
    ax.assimilate_stream(ETKF(), dyn, series[:5], ens, sinks=[ax.Checkpoint(ckpt)], **run)
    sinks = [ax.Checkpoint(ckpt)]
    with pytest.raises(ValueError, match="device layout"):
        ax.assimilate_stream(
            ETKF(), dyn, series, ens, sinks=sinks, resume=True, mesh=ax.device_mesh(1), **run
        )


def _cli(argv, limit=None, timeout=300):
    """`assimilax ARGV` in a child process whose files are limited to `limit` bytes (what
    a full disk does to a writer: EFBIG at the limit)."""
    code = (
        "import resource, sys; limit = int(sys.argv[1]); "
        "limit > 0 and resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
        "from assimilax.cli import main; sys.exit(main(sys.argv[2:]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(limit or 0), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _same(a, b) -> None:
    a, b = ax.read_netcdf(a), ax.read_netcdf(b)
    assert a.sizes == b.sizes
    for name in b.data_vars:
        assert np.array_equal(a[name].values, b[name].values, equal_nan=True), name


def _disk_full_twice(path, tmp_path, limits):
    whole, out = tmp_path / "whole.nc", tmp_path / "out.nc"
    base = [*ASSIM, "--obs", str(path), "--checkpoint-every", "5"]
    assert _cli([*base, "--out", str(whole)]).returncode == 0
    argv = [*base, "--out", str(out)]
    kept = 0
    for i, limit in enumerate(limits):
        proc = _cli([*argv, *(["--resume"] if i else [])], limit=limit)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and "no space left" in err[-1], proc.stderr
        assert "Traceback" not in proc.stderr
        n = ax.read_netcdf(out).sizes["time"]  # readable after every failure
        assert n >= kept
        kept = n
    assert 0 < kept < 40
    proc = _cli([*argv, "--resume"])
    assert proc.returncode == 0, proc.stderr
    _same(out, whole)


def test_disk_full_then_full_again_during_the_resume(sensor_file, tmp_path):
    _disk_full_twice(sensor_file[0], tmp_path, [9_000, 13_000])


@pytest.mark.slow
@pytest.mark.parametrize("limits", [[5_500, 7_500], [7_000, 7_000, 11_000], [16_000, 17_000]])
def test_disk_full_at_several_sizes(sensor_file, tmp_path, limits):
    _disk_full_twice(sensor_file[0], tmp_path, limits)


@pytest.mark.parametrize(
    "argv",
    [
        ["twin", "--cycles", "200000", "--filters", "etkf,letkf", "--no-progress"],
        ["sweep", "--cycles", "20000", "--filter", "letkf", "--grid", "inflation=1:1.1:20"],
    ],
)
def test_a_signal_ends_a_long_run_at_once(argv, tmp_path):
    """SIGTERM and SIGINT end a run in a long compiled call within a second or two."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        env = dict(os.environ, ASSIMILAX_NO_CACHE="1")
        code = "import sys; from assimilax.cli import main; sys.exit(main(sys.argv[1:]))"
        with subprocess.Popen(
            [sys.executable, "-c", code, *argv, "--out", str(tmp_path / "o.nc")],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
        ) as proc:
            proc.stderr.readline()  # the run's first line: it has started
            time.sleep(3.0)
            assert proc.poll() is None
            sent = time.perf_counter()
            proc.send_signal(sig)
            proc.wait(timeout=30)
            assert time.perf_counter() - sent < 3.0
        assert proc.returncode != 0 and not (tmp_path / "o.nc").exists()
        assert not list(tmp_path.glob("*.tmp"))  # no temporary file either


def _sensor_variant(ds, tmp_path, name, **changes):
    bad = ds.copy()
    for var, value in changes.items():
        bad[var] = value(bad)
    path = tmp_path / f"{name}.nc"
    ax.write_netcdf(bad, path)
    return str(path)


@pytest.mark.parametrize(
    "name, change, text",
    [
        ("missing", {"observations": lambda d: d["observations"] * np.nan}, "every value"),
        ("text", {"observations": lambda d: d["observations"].astype(str)}, "must hold numbers"),
        ("textstd", {"observations_std": lambda d: d["observations_std"].astype(str)}, "numbers"),
        ("nantruth", {"truth": lambda d: d["truth"].where(d.time != d.time[3])}, "`truth`"),
        ("inf", {"observations": lambda d: d["observations"].where(d.sensor != 1, np.inf)}, "inf"),
        ("x100", {"observations": lambda d: d["observations"] * 100}, "standard deviations"),
        ("huge", {"observations": lambda d: d["observations"] * 1e300}, "standard deviations"),
    ],
)
def test_sensor_files_that_would_give_wrong_numbers(sensor_file, tmp_path, capsys, name, change,
                                                    text):  # fmt: skip
    path = _sensor_variant(sensor_file[1], tmp_path, name, **change)
    out = tmp_path / "o.nc"
    _one_line([*ASSIM, "--obs", path, "--out", str(out)], capsys, text)
    assert not out.exists()


def test_bad_files_and_units_are_named(sensor_file, tmp_path, capsys):
    path, ds = sensor_file
    empty = tmp_path / "empty.nc"
    ax.write_netcdf(ds.isel(time=slice(0, 0)), empty)
    out = str(tmp_path / "o.nc")
    _one_line([*ASSIM, "--obs", str(empty), "--out", out], capsys, "holds no records")
    argv = [*ASSIM, "--obs", str(path), "--out", out, "--time-unit", "inf days"]
    _one_line(argv, capsys, "positive finite number")
    argv = ["make-sensors", "--model", "ks", "--dim", "16", "--cycles", "20", "--out", out]
    _one_line(argv, capsys, "blew up")
    assert not os.path.exists(out)


def test_python_api_refusals(getkey, sensor_file):
    with pytest.raises(ValueError, match="twin-experiment dataset"):
        ax.summarise(sensor_file[1])
    with pytest.raises(TypeError, match="'inflation' of filter 'etkf' must be a number"):
        ax.make_filter("etkf", "lorenz96", inflation="1.05")
    dyn, obs = Lorenz96(8), Identity(8, noise_std=1.0)
    series = ax.ObservationSeries(obs, 0.05 * jnp.arange(1.0, 4.0), jnp.zeros((3, 8)))
    same = ax.Ensemble(jnp.ones((5, 8)))
    with pytest.warns(UserWarning, match="all identical"):
        ax.assimilate(ETKF(), dyn, series, same, key=getkey())


def test_report_of_a_diverged_run(tmp_path):
    """A run whose RMSE went to inf/NaN still gets its plots (linear axes where needed)."""
    ds = ax.twin_experiment(
        Lorenz96(8), Identity(8, noise_std=1.0), {"etkf": ETKF()}, key=jr.key(0), members=5,
        cycles=12, obs_interval=0.05, burn_in=2, x0=8.0 * jnp.ones(8),
    )  # fmt: skip
    for name in ("rmse_analysis", "spread_analysis", "rmse_forecast"):
        ds[name] = ds[name] * np.nan
    path = ax.write_netcdf(ds, tmp_path / "bad.nc")
    assert main(["report", str(path), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "summary.md").exists()
