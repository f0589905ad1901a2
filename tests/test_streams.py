"""Sensor streams: interpolating operators, reading CF files, the streaming driver,
per-value error std, output files, checkpoint and resume, and the CLI around them."""

import os
import signal
import subprocess
import sys
import time

import cftime
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import xarray as xr

import assimilax as ax
from assimilax import read_observations, write_netcdf
from assimilax._sinks import AppendableNetCDF
from assimilax.cli import main
from assimilax.dynamics import Lorenz96
from assimilax.experiments import get_model, make_sensors
from assimilax.filters import ETKF, LETKF
from assimilax.observations import DiagonalCovariance, Interpolate

from .helpers import tree_allclose


def drive(
    flt, dyn, observations, belief0, *, out=None, checkpoint=None, checkpoint_every=None, **kwargs
):
    """`assimilate_stream` with the output and checkpoint sinks named by paths."""
    sinks = [] if out is None else [ax.NetCDFOutput(out)]
    if checkpoint is not None:
        sinks.append(ax.Checkpoint(checkpoint, checkpoint_every))
    return ax.assimilate_stream(flt, dyn, observations, belief0, sinks=sinks, **kwargs)


D, N, K = 12, 8, 30


# The interpolating operator ---------------------------------------------------------


def test_interpolate_is_linear_interpolation_on_the_periodic_grid(getkey):
    x = jr.normal(getkey(), (D,))
    on_grid = Interpolate(D, jnp.array([0.0, 3.0, 7.0]), noise_std=1.0)
    assert np.array_equal(on_grid.apply(x), x[jnp.array([0, 3, 7])])
    obs = Interpolate(D, jnp.array([2.25, D - 0.5, 0.75]), noise_std=1.0)
    expected = [0.75 * x[2] + 0.25 * x[3], 0.5 * x[D - 1] + 0.5 * x[0], 0.25 * x[0] + 0.75 * x[1]]
    assert np.allclose(obs.apply(x), expected, rtol=1e-12)
    assert np.allclose(obs.matrix() @ x, obs.apply(x), rtol=1e-12)
    assert np.allclose(obs.matrix().sum(axis=1), 1.0)
    assert np.array_equal(obs.locations()[:, 0], jnp.array([2.25, D - 0.5, 0.75]))
    # 2-D: bilinear, exact for a field linear in each coordinate away from the seam.
    i, j = jnp.meshgrid(jnp.arange(6.0), jnp.arange(8.0), indexing="ij")
    field = 2.0 * i - 3.0 * j + 0.5 * i * j
    pos = jnp.array([[1.5, 2.25], [4.0, 6.75], [0.1, 0.9]])
    obs2 = Interpolate((6, 8), pos, noise_std=0.5)
    exact = 2.0 * pos[:, 0] - 3.0 * pos[:, 1] + 0.5 * pos[:, 0] * pos[:, 1]
    assert np.allclose(obs2.apply(field), exact, rtol=1e-12)
    assert np.allclose(obs2.matrix() @ field.ravel(), exact, rtol=1e-12)
    # The sensors' positions localise the LETKF, and it runs through `jit`/`vmap`.
    xs = jr.normal(getkey(), (5, 6, 8))
    assert jax.jit(jax.vmap(obs2.apply))(xs).shape == (5, 3)


@pytest.mark.parametrize(
    "positions, match",
    [
        (jnp.array([1.0, 12.0]), "inside the domain.*sensor 1"),
        (jnp.array([-0.1]), "inside the domain"),
        (jnp.array([[1.0, 2.0]]), r"shape \(m, 1\)"),
        (jnp.array([1.0, jnp.nan]), "NaN"),
    ],
)
def test_interpolate_bad_positions(positions, match):
    with pytest.raises(ValueError, match=match):
        Interpolate(D, positions, noise_std=1.0)


# Streams equal series; per-value error std -------------------------------------------


@pytest.fixture
def sensors(getkey):
    """A Lorenz-96 problem with off-grid sensors, irregular times, gaps and a noise
    std per value."""
    rng = np.random.default_rng(0)
    m = 8
    obs = Interpolate(D, np.sort(rng.uniform(0, D, m)), noise_std=1.0)
    times = 0.05 * (np.arange(1, K + 1) + rng.uniform(-0.3, 0.3, K))
    values = 8 + 3 * rng.standard_normal((K, m))
    values[rng.uniform(size=(K, m)) < 0.2] = np.nan
    std = rng.uniform(0.5, 1.5, (K, m))
    series = ax.ObservationSeries(obs, times, values, noise_std=std)
    ens = ax.Ensemble(8 + 2 * jr.normal(getkey(), (N, D)))
    return Lorenz96(D), series, ens


def test_per_value_noise_std_replaces_the_operator_noise(sensors, getkey):
    dyn, series, ens = sensors
    flt, key = ETKF(), getkey()
    sol = ax.assimilate(flt, dyn, series[:3], ens, key=key)
    b, t = ens, 0.0
    for k in range(3):
        fkey, ukey = jr.split(jr.fold_in(key, k))
        b = flt.forecast(b, dyn, t, series.times[k], key=fkey)
        std = jnp.where(series.mask[k], series.noise_std[k], 1.0)
        obs = eqx.tree_at(lambda o: o.noise, series.observation, DiagonalCovariance(std**2))
        b = flt.update(b, obs, series.values[k], series.mask[k], key=ukey)
        t = series.times[k]
    assert np.allclose(sol.analysis_mean[-1], b.mean(), rtol=1e-12)
    assert np.array_equal(sol.observed, series.mask[:3].sum(axis=1))
    # ... and it matters: the operator's own noise gives another analysis.
    plain = ax.ObservationSeries(series.observation, series.times, series.values, series.mask)
    other = ax.assimilate(flt, dyn, plain[:3], ens, key=key)
    assert not np.allclose(other.analysis_mean[-1], b.mean())


class _CountingETKF(ETKF):
    """An ETKF that counts how often its update is traced (compiled)."""

    def update(self, belief, observation, y, mask=None, *, key):
        _TRACES.append(1)
        return super().update(belief, observation, y, mask, key=key)


_TRACES = []


def test_stream_equals_batch(sensors, getkey):
    dyn, series, ens = sensors
    flt, key = LETKF(radius=3.0), getkey()
    belief0 = flt.init(ens, key=key)
    batch = ax.assimilate(flt, dyn, series, belief0, key=key)
    stream = ax.ObservationStream(series.observation, series.records())
    streamed = drive(flt, dyn, stream, belief0, key=key)
    assert tree_allclose(batch.analysis_mean, streamed.analysis_mean, rtol=1e-12, atol=1e-12)
    assert tree_allclose(batch.belief, streamed.belief, rtol=1e-12, atol=1e-12)
    stream = ax.ObservationStream(series.observation, series.records())
    chunked = drive(flt, dyn, stream, belief0, key=key, chunk_size=7)
    assert tree_allclose(batch.analysis_mean, chunked.analysis_mean, rtol=1e-12, atol=1e-12)


def test_stream_of_records_compiles_once(sensors, getkey):
    dyn, series, ens = sensors
    _TRACES.clear()
    records = (tuple(r) for r in series.records())  # plain tuples are records too
    drive(
        _CountingETKF(), dyn, ax.ObservationStream(series.observation, records), ens, key=getkey()
    )
    assert len(_TRACES) == 1


def test_bad_stream_records_are_named(sensors, getkey):
    dyn, series, ens = sensors
    records = list(series.records())
    late = records[:5] + [records[3]] + records[6:]
    stream = ax.ObservationStream(series.observation, iter(late))
    with pytest.raises(ValueError, match="record 5 is at time .* not after"):
        drive(ETKF(), dyn, stream, ens, key=getkey())
    short = records[:2] + [ax.ObservationRecord(1.0, np.zeros(3))]
    with pytest.raises(ValueError, match=r"stream record 2: `values` must have shape \(8,\)"):
        drive(ETKF(), dyn, ax.ObservationStream(series.observation, short), ens, key=getkey())
    with pytest.raises(ValueError, match="`truth` needs an ObservationSeries"):
        drive(
            ETKF(),
            dyn,
            ax.ObservationStream(series.observation, records),
            ens,
            key=getkey(),
            truth=jnp.zeros((K, D)),
        )
    bad_std = ax.ObservationRecord(1.0, np.ones(8), None, -np.ones(8))
    with pytest.raises(ValueError, match="noise_std.*positive"):
        drive(ETKF(), dyn, ax.ObservationStream(series.observation, [bad_std]), ens, key=getkey())


# Output files, checkpoints, resume ----------------------------------------------------


def _interrupted(records, after):
    for i, record in enumerate(records):
        if i == after:
            raise ConnectionError("the sensor feed dropped")
        yield record


def test_kill_and_resume_is_bit_identical(sensors, getkey, tmp_path):
    dyn, series, ens = sensors
    flt, key = LETKF(radius=3.0), getkey()
    belief0 = flt.init(ens, key=key)
    stream = lambda records: ax.ObservationStream(series.observation, records)
    full = drive(flt, dyn, stream(series.records()), belief0, key=key, out=tmp_path / "full.nc")
    out, ckpt = tmp_path / "run.nc", tmp_path / "run.ckpt"
    run = dict(key=key, out=out, checkpoint=ckpt, checkpoint_every=10)
    with pytest.raises(ConnectionError):
        drive(flt, dyn, stream(_interrupted(series.records(), 17)), belief0, **run)
    # The file is valid and holds the 17 finished cycles; the checkpoint matches it.
    partial = ax.read_netcdf(out)
    assert partial.sizes["time"] == 17
    assert np.array_equal(partial["analysis_mean"].values, full.analysis_mean[:17])
    resumed = drive(flt, dyn, stream(series.records()), belief0, resume=True, **run)
    assert len(resumed.times) == K - 17
    a, b = ax.read_netcdf(out), ax.read_netcdf(tmp_path / "full.nc")
    for name in b.data_vars:
        assert np.array_equal(a[name].values, b[name].values), name
    assert np.array_equal(a["time"].values, np.asarray(series.times))
    assert tree_allclose(resumed.belief, full.belief, rtol=0, atol=0)


def test_resume_cuts_output_back_to_the_checkpoint(sensors, getkey, tmp_path):
    """A series in chunks: output beyond the last checkpoint (a hard kill between an
    append and a checkpoint) is cut back on resume; the result is still identical."""
    dyn, series, ens = sensors
    key = getkey()
    out, ckpt = tmp_path / "out.nc", tmp_path / "out.ckpt"
    run = dict(key=key, out=out, checkpoint=ckpt, checkpoint_every=10, chunk_size=5)
    full = drive(ETKF(), dyn, series, ens, **run)
    expected = ax.read_netcdf(out)
    # Simulate a kill after 25 records had been written but only 20 checkpointed.
    ckpt.unlink()  # (a fresh run: an existing checkpoint is only overwritten by a resume)
    drive(ETKF(), dyn, series[:20], ens, **run)
    AppendableNetCDF(out).append(
        {
            "time": np.asarray(series.times[20:25]),
            **{n: expected[n].values[20:25] for n in expected.data_vars},
        }
    )
    assert ax.read_netcdf(out).sizes["time"] == 25
    resumed = drive(ETKF(), dyn, series, ens, resume=True, **run)
    assert np.array_equal(resumed.analysis_mean, full.analysis_mean[20:])
    got = ax.read_netcdf(out)
    for name in expected.data_vars:
        assert np.array_equal(got[name].values, expected[name].values), name


def test_resume_refuses_another_run(sensors, getkey, tmp_path):
    dyn, series, ens = sensors
    key = getkey()
    ckpt = tmp_path / "c.ckpt"
    drive(ETKF(), dyn, series[:10], ens, key=key, checkpoint=ckpt, checkpoint_every=5)
    with pytest.raises(ValueError, match="another key"):
        drive(ETKF(), dyn, series, ens, key=getkey(), checkpoint=ckpt, resume=True)
    with pytest.raises(ValueError, match="another filter"):
        drive(ETKF(inflation=1.1), dyn, series, ens, key=key, checkpoint=ckpt, resume=True)
    with pytest.raises(ValueError, match="does not match this run's belief"):
        small = ax.Ensemble(ens.members[:4])
        drive(ETKF(), dyn, series, small, key=key, checkpoint=ckpt, resume=True)
    (tmp_path / "junk").write_bytes(b"hello")
    with pytest.raises(ValueError, match="not an assimilax checkpoint"):
        drive(ETKF(), dyn, series, ens, key=key, checkpoint=tmp_path / "junk", resume=True)


# Reading sensor files ------------------------------------------------------------------


@pytest.fixture(scope="module")
def sensor_file(tmp_path_factory):
    jax.config.update("jax_enable_x64", True)
    setup = get_model("lorenz96")
    dyn = setup.make_dynamics(D)
    ds = make_sensors(setup, dyn, key=jr.key(0), cycles=40, sensors=10, obs_std=1.0)
    path = tmp_path_factory.mktemp("sensors") / "sensors.nc"
    write_netcdf(ds, path)
    return path, ds


def test_sensor_file_round_trip(sensor_file):
    path, ds = sensor_file
    data = read_observations(path, D, lengths=D, units="1")
    series = data.series
    # Gaps were written as _FillValue and come back as the mask.
    with xr.open_dataset(path, mask_and_scale=False) as raw:
        assert raw["observations"].attrs["_FillValue"] == -9999.0
        assert np.array_equal(raw["observations"].values == -9999.0, ~np.asarray(series.mask))
    values = ds["observations"].values
    assert np.array_equal(np.isnan(values), ~np.asarray(series.mask))
    assert np.array_equal(np.asarray(series.values)[series.mask], values[~np.isnan(values)])
    assert np.array_equal(
        np.asarray(series.error_std())[series.mask],
        ds["observations_std"].values[~np.isnan(values)],
    )
    # CF hours -> model time (1 model unit = 5 days): the times the truth was run at.
    assert np.allclose(np.asarray(series.times), ds["time"].values / 120.0, rtol=1e-12)
    assert np.all(np.diff(np.asarray(series.times)) > 0)
    assert np.allclose(series.observation.locations()[:, 0], ds["x"].values)
    # The values are the interpolated truth plus noise of the stated size.
    z = values - np.asarray(jax.vmap(series.observation.apply)(jnp.asarray(data.truth)))
    z = z / ds["observations_std"].values
    assert abs(np.nanstd(z) - 1) < 0.15 and abs(np.nanmean(z)) < 0.15
    assert data.time_encoding["model_time_unit"] == "5 days"


@pytest.mark.parametrize("calendar", ["noleap", "360_day", "julian"])
def test_cf_times_in_other_calendars(calendar):
    dates = [
        cftime.datetime(2001, 2, 27, 12, calendar=calendar),
        cftime.datetime(2001, 2, 28, 18, calendar=calendar),
        cftime.datetime(2001, 3, 1, 0, calendar=calendar),
    ]
    units = "hours since 2001-01-01"
    ds = xr.Dataset(
        {"temperature": (("time", "sensor"), np.ones((3, 2))), "x": ("sensor", [1.5, 4.0])},
        coords={
            "time": (
                "time",
                cftime.date2num(dates, units, calendar),
                {"units": units, "calendar": calendar},
            )
        },
    )
    data = read_observations(ds, 6, noise_std=0.5, time_unit="6 hours")
    assert data.variable == "temperature"  # the only candidate, recorded
    series = data.series
    # Calendar arithmetic by cftime's own datetime subtraction: Mar 1 is day 59 of
    # 2001 with 365 days, day 60 with 360 days.
    origin = cftime.datetime(2001, 1, 1, calendar=calendar)
    expected = np.array([(d - origin).total_seconds() / 21600 for d in dates])
    assert expected[-1] == {"noleap": 236, "360_day": 240, "julian": 236}[calendar]
    assert np.allclose(np.asarray(series.times), expected)
    assert np.all(series.error_std() == 0.5)


@pytest.mark.parametrize(
    "change, kwargs, match",
    [
        (lambda ds: ds, dict(variable="pressure"), "no variable 'pressure'"),
        (
            lambda ds: ds.rename(observations="temperature").assign(pressure=ds.observations),
            {},
            r"several variables that could be the observations \(pressure, temperature\)",
        ),
        (lambda ds: ds.drop_vars("time"), {}, "no `time` coordinate"),
        (
            lambda ds: ds.assign_coords(time=ds.time.values[::-1]),
            {},
            "times must increase strictly; record 1 has a decreasing time",
        ),
        (
            lambda ds: ds.assign_coords(time=np.r_[ds.time.values[:3], ds.time.values[2:-1]]),
            {},
            "record 3 has a duplicate time",
        ),
        (lambda ds: ds.assign(x=ds.x.where(ds.sensor != 4, 12.5)), {}, "sensor 4 is outside"),
        (lambda ds: ds.assign(observations_std=-ds.observations_std), {}, "must be positive"),
        (lambda ds: ds.drop_vars("observations_std"), {}, "no error standard deviation"),
        (lambda ds: ds.drop_vars("x"), {}, "no sensor positions"),
        (lambda ds: ds, dict(units="K"), "in units '1', but the model's state is in 'K'"),
        (lambda ds: ds.assign(x=ds.x.assign_attrs(units="km")), {}, "units 'km'"),
        (
            lambda ds: ds.assign_coords(time=ds.time.assign_attrs(units="fortnights")),
            {},
            "not CF time units|expected CF time units",
        ),
        (lambda ds: ds, dict(time_unit="5 parsecs"), "not a duration"),
    ],
)
def test_bad_sensor_files(sensor_file, change, kwargs, match):
    _, ds = sensor_file
    bad = change(ds.copy(deep=True))
    with pytest.raises(ValueError, match=match):
        read_observations(bad, D, **kwargs)


def test_unreadable_files(tmp_path, sensor_file):
    path, _ = sensor_file
    truncated = tmp_path / "truncated.nc"
    truncated.write_bytes(path.read_bytes()[:2000])
    text = tmp_path / "notes.nc"
    text.write_text("time,value\n1,2\n")
    for bad in (truncated, text):
        with pytest.raises(ValueError, match="not a readable netCDF file"):
            read_observations(bad, D)
    with pytest.raises(ValueError, match="No such file"):
        read_observations(tmp_path / "missing.nc", D)
    with pytest.raises(ValueError, match="truth.*another model"):
        read_observations(path, D + 1, noise_std=1.0)


# The CLI ----------------------------------------------------------------------------------


def test_cli_make_sensors_and_assimilate(tmp_path, capsys):
    sensors, out = tmp_path / "sensors.nc", tmp_path / "analysis.nc"
    assert (
        main(
            ["make-sensors", "--dim", "40", "--cycles", "300", "--seed", "1", "--out", str(sensors)]
        )
        == 0
    )
    assert (
        main(
            [
                "assimilate",
                "--obs",
                str(sensors),
                "--out",
                str(out),
                "--filter",
                "letkf",
                "--members",
                "20",
                "--no-progress",
            ]
        )
        == 0
    )
    ds = ax.read_netcdf(out)
    assert ds.sizes["time"] == 300 and ds.attrs["model"] == "lorenz96"
    # LETKF from a climatological start, 40 off-grid sensors, ~70 % of values present,
    # error std 0.75-1.25: measured 0.38 on the default file. The climatological
    # spread is ~3.6, the observation error ~1.
    rmse = float(ds["rmse_analysis"].values[50:].mean())
    assert rmse < 0.6, rmse
    assert "RMSE vs the file's truth" in capsys.readouterr().out
    # The output's times are the input's own numbers, exactly (issue 30: 500 ns off).
    raw = lambda path: ax.read_netcdf(path, decode_times=False)["time"].values
    assert np.array_equal(raw(out), raw(sensors))
    assert ds.attrs["source_variable"] == "observations"


def test_cli_assimilate_bad_input_writes_nothing(tmp_path, sensor_file, capsys):
    path, ds = sensor_file
    out = tmp_path / "never.nc"
    bad = tmp_path / "bad.nc"
    write_netcdf(ds.assign(x=ds.x.where(ds.sensor != 2, 99.0)), bad)
    for args, match in [
        (["--obs", str(bad), "--dim", str(D)], "sensor 2 is outside the domain"),
        (["--obs", str(path), "--dim", str(D), "--variable", "wind"], "no variable 'wind'"),
        (["--obs", str(path), "--dim", str(D), "--model", "lorenz99"], "Unknown model"),
        (["--obs", str(path), "--dim", str(D), "--filter", "kalman"], "Unknown filter"),
    ]:
        assert main(["assimilate", *args, "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert match in err and "Traceback" not in err, err
        assert not out.exists()


@pytest.mark.slow
def test_cli_sigterm_then_resume(tmp_path, sensor_file):
    """A run killed with SIGTERM leaves a valid file and checkpoint; --resume then
    gives the same file as a run that was never stopped."""
    path, _ = sensor_file
    long = tmp_path / "long.nc"
    assert (
        main(
            [
                "make-sensors",
                "--dim",
                str(D),
                "--cycles",
                "1000",
                "--sensors",
                "6",
                "--out",
                str(long),
            ]
        )
        == 0
    )
    common = [
        "assimilate",
        "--obs",
        str(long),
        "--dim",
        str(D),
        "--filter",
        "etkf",
        "--checkpoint-every",
        "10",
        "--no-progress",
    ]
    out, ckpt = tmp_path / "killed.nc", tmp_path / "killed.nc.checkpoint"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(
        [sys.executable, "-m", "assimilax.cli", *common, "--out", str(out)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be interrupted")
    assert proc.returncode == 130, err
    assert "interrupted (continue with --resume)" in err
    done = ax.read_netcdf(out).sizes["time"]
    assert 0 < done < 1000
    assert main([*common, "--out", str(out), "--resume"]) == 0
    assert main([*common, "--out", str(tmp_path / "whole.nc")]) == 0
    a, b = ax.read_netcdf(out), ax.read_netcdf(tmp_path / "whole.nc")
    assert a.sizes["time"] == 1000
    for name in b.data_vars:
        assert np.array_equal(a[name].values, b[name].values), name


def test_resume_refuses_other_observations(sensors, getkey, tmp_path):
    dyn, series, ens = sensors
    key, ckpt = getkey(), tmp_path / "c.ckpt"
    run = dict(key=key, checkpoint=ckpt, checkpoint_every=5)
    drive(ETKF(), dyn, series[:10], ens, **run)
    changed = ax.ObservationSeries(
        series.observation,
        series.times,
        series.values.at[3, 0].add(0.5),
        series.mask,
        series.noise_std,
    )
    with pytest.raises(ValueError, match="first 10 records of `observations` differ"):
        drive(ETKF(), dyn, changed, ens, resume=True, **run)
    stream = ax.ObservationStream(changed.observation, changed.records())
    with pytest.raises(ValueError, match="differ"):
        drive(ETKF(), dyn, stream, ens, resume=True, **run)
    # The same records, as a stream this time: accepted, and equal to the series run.
    stream = ax.ObservationStream(series.observation, series.records())
    resumed = drive(ETKF(), dyn, stream, ens, resume=True, **run)
    whole = ax.assimilate(ETKF(), dyn, series, ens, key=key)
    assert np.allclose(resumed.analysis_mean, whole.analysis_mean[10:], rtol=1e-12, atol=1e-12)
