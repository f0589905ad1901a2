"""Synthetic sensor files: a twin experiment's truth observed the way real sensors
are (irregular times, off-grid positions, per-sensor errors, gaps), in the CF layout
that `read_observations` and `assimilax assimilate` read."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._custom_types import PRNGKeyArray
from .._schema import CONVENTIONS, duration_seconds, state_dims
from ..dynamics import AbstractDynamics
from ..observations import Interpolate
from ._presets import ModelSetup
from ._simulate import climatology_states, domain_lengths, synthetic_observations, truth_run


def make_sensors(
    setup: ModelSetup,
    dynamics: AbstractDynamics,
    *,
    key: PRNGKeyArray,
    cycles: int,
    sensors: int,
    obs_std: float,
    obs_interval: float | None = None,
    missing: float = 0.1,
    jitter: float = 0.3,
    start: str = "2026-01-01 00:00:00",
):
    """A sensor file from a twin experiment, in the layout `read_observations` reads.

    A truth run is observed at `cycles` irregular times (`obs_interval` apart, each
    jittered by up to ±`jitter`/2 intervals) by `sensors` sensors at random positions
    between grid points (linear interpolation), each with its own error std (`obs_std`
    times 0.75–1.25). Every second sensor reports only at every second time, and a
    fraction `missing` of the other values is lost: the file has gaps (`_FillValue`).
    Times are CF (`hours since start`, model time unit `setup.time_unit`); positions in
    model coordinates; the `truth` is included for scoring (filters never read it).
    """
    if cycles < 1 or sensors < 1:
        raise ValueError(f"Need cycles >= 1 and sensors >= 1; got {cycles} and {sensors}.")
    if not 0 <= missing < 1 or not 0 <= jitter < 1:
        raise ValueError(f"Need 0 <= missing < 1 and 0 <= jitter < 1; got {missing}, {jitter}.")
    if not obs_std > 0:
        raise ValueError(f"`obs_std` must be positive; got {obs_std}.")
    import xarray as xr

    interval = setup.obs_interval if obs_interval is None else obs_interval
    shape = tuple(dynamics.state_shape)
    lengths = domain_lengths(dynamics)
    dtype = jnp.result_type(float)
    seed = int(jr.randint(key, (), 0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    positions = rng.uniform(0, 1, (sensors, len(shape))) * np.asarray(lengths)
    std = obs_std * rng.uniform(0.75, 1.25, sensors)
    operator = Interpolate(
        shape, positions * np.asarray(shape) / np.asarray(lengths), noise_std=std
    )
    times = interval * (np.arange(1, cycles + 1) + jitter * rng.uniform(-0.5, 0.5, cycles))
    # The truth: spun up from the model's initial state.
    start_key, truth_key, obs_key = jr.split(jr.fold_in(key, 1), 3)
    x0 = climatology_states(setup, dynamics, 1, key=start_key)[0]
    truth = np.asarray(truth_run(dynamics, x0, jnp.asarray(times, dtype), truth_key))
    values = np.asarray(synthetic_observations(operator, jnp.asarray(truth), obs_key))
    gaps = rng.uniform(size=values.shape) < missing
    gaps[1::2, 1::2] = True  # odd sensors report at even records only
    values = np.where(gaps, np.nan, values)
    hours = times * duration_seconds(setup.time_unit) / 3600.0
    sdims = tuple(f"grid_{d}" for d in state_dims(shape))  # x, y name sensor positions
    ds = xr.Dataset(
        {
            "observations": (("time", "sensor"), values),
            "observations_std": (("time", "sensor"), np.broadcast_to(std, values.shape).copy()),
            "truth": (("time", *sdims), truth),
        },
        coords={"time": hours, "sensor": np.arange(sensors)},
    )
    names = ("x", "y", "z")[: len(shape)]
    for axis, name in enumerate(names):
        ds[name] = ("sensor", positions[:, axis])
        ds[name].attrs.update(units="1", long_name=f"sensor position along axis {axis}")
    ds["time"].attrs.update(
        units=f"hours since {start}",
        calendar="proleptic_gregorian",
        model_time_unit=setup.time_unit,
        standard_name="time",
    )
    ds["observations"].attrs.update(
        long_name=f"{setup.name} state observed by sensors (linear interpolation)",
        units="1",
        ancillary_variables="observations_std",
    )
    ds["observations_std"].attrs.update(long_name="observation error standard deviation", units="1")
    ds["truth"].attrs.update(
        long_name="true state (twin experiment; filters do not read it)", units="1"
    )
    ds["sensor"].attrs.update(long_name="sensor number", units="1")
    ds.attrs.update(
        title=f"assimilax synthetic sensor data: {setup.name}",
        Conventions=CONVENTIONS,
        model=setup.name,
        dim=shape[0],
        source="assimilax make-sensors",
        domain_lengths=list(lengths),
    )
    ds["observations"].encoding["_FillValue"] = -9999.0
    return ds
