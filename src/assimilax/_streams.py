"""Observation data: times, values, masks of missing values and per-value error
standard deviations, with their operator; as a whole series or as a stream of records."""

import dataclasses
import math
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._checks import check_floating, check_ndim, check_shape, check_value, is_concrete
from ._custom_types import Array, Bool, Float
from ._schema import duration_seconds
from .observations import AbstractObservation, DiagonalCovariance


class ObservationSeries(eqx.Module):
    """A time series of observations through one observation operator.

    **Arguments:**

    - `observation`: the `AbstractObservation` (operator and noise) of every record.
    - `times`: `(K,)` observation times, strictly increasing.
    - `values`: `(K, m)` observed values; NaN marks a missing value (it is masked out
      and replaced by 0, so no NaN enters the arithmetic).
    - `mask`: optional `(K, m)` booleans, True where a value was observed. Combined
      with the NaN mask.
    - `noise_std`: optional `(K, m)` error standard deviation of each value (sensor
      files often carry one per value). It replaces the operator's noise in the update
      of that record, as `R = diag(noise_std^2)`. Entries of missing values are
      ignored (may be NaN).

    **Raises:**

    `ValueError` if the shapes disagree with each other or with `observation.obs_dim`,
    if the times are not finite and strictly increasing, or if a `noise_std` of an
    observed value is not positive and finite.
    """

    observation: AbstractObservation
    times: Float[Array, " K"]
    values: Float[Array, "K m"]
    mask: Bool[Array, "K m"]
    noise_std: Float[Array, "K m"] | None

    def __init__(self, observation, times, values, mask=None, noise_std=None):
        if not isinstance(observation, AbstractObservation):
            raise TypeError(
                f"`observation` must be an AbstractObservation; got {type(observation).__name__}."
            )
        times = jnp.asarray(times)
        values = jnp.asarray(values)
        check_ndim(times, 1, "times", "(K,)")
        check_floating(times, "times")
        check_floating(values, "values")
        k, m = times.shape[0], observation.obs_dim
        check_shape(values, (k, m), "values", "(K, m): one row per time, m = obs_dim")
        nan = jnp.isnan(values)
        if mask is None:
            mask = ~nan
        else:
            mask = jnp.asarray(mask)
            check_shape(mask, (k, m), "mask", "(K, m)")
            if mask.dtype != jnp.bool_:
                raise TypeError(f"`mask` must be boolean; got dtype {mask.dtype}.")
            mask = mask & ~nan
        values = check_value(
            values, lambda v, xp: xp.isinf(v), "`values` must not contain infinities."
        )
        times = check_value(times, lambda t, xp: ~xp.isfinite(t), "`times` must be finite.")
        if k > 1:
            times = check_value(
                times,
                lambda t, xp: xp.diff(t) <= 0,
                "`times` must be strictly increasing" + _first_bad(times) + ".",
            )
        if noise_std is not None:
            noise_std = jnp.asarray(noise_std)
            check_floating(noise_std, "noise_std")
            check_shape(noise_std, (k, m), "noise_std", "(K, m), one per value")
            noise_std = check_value(
                jnp.where(mask, noise_std, 1),
                lambda s, xp: ~(s > 0) | ~xp.isfinite(s),
                "`noise_std` must be positive and finite for every observed value"
                + _first_bad_std(noise_std, mask)
                + ".",
            )
        self.observation = observation
        self.times = times
        self.values = jnp.where(mask, values, 0)
        self.mask = mask
        self.noise_std = noise_std

    def __len__(self) -> int:
        return self.times.shape[0]

    def observation_at(self, noise_std: Float[Array, " m"] | None) -> AbstractObservation:
        """The operator of one record: `observation` with its noise replaced by
        `diag(noise_std^2)` when the record carries error standard deviations."""
        if noise_std is None:
            return self.observation
        return eqx.tree_at(lambda o: o.noise, self.observation, DiagonalCovariance(noise_std**2))

    def error_std(self) -> Float[Array, "K m"]:
        """The error standard deviation of every value: the record's own (`noise_std`)
        where given, else the operator's (the square root of its noise variances)."""
        if self.noise_std is not None:
            return self.noise_std
        std = jnp.sqrt(self.observation.noise.diagonal())
        return jnp.broadcast_to(std[None], self.values.shape)

    def __getitem__(self, index: slice) -> "ObservationSeries":
        """The records `index` (a slice), with the same operator."""
        if not isinstance(index, slice):
            raise TypeError("Index an ObservationSeries with a slice, e.g. `series[10:20]`.")
        fields = (self.times, self.values, self.mask, self.noise_std)
        sliced = tuple(None if f is None else f[index] for f in fields)
        return eqx.tree_at(
            lambda s: (s.times, s.values, s.mask, s.noise_std),
            self,
            sliced,
            is_leaf=lambda x: x is None,
        )

    def records(self) -> Iterator["ObservationRecord"]:
        """The series as a stream of records (NumPy arrays), e.g. to feed
        `ObservationStream` in tests."""
        times, values, mask = (np.asarray(a) for a in (self.times, self.values, self.mask))
        std = None if self.noise_std is None else np.asarray(self.noise_std)
        for i in range(len(self)):
            yield ObservationRecord(times[i], values[i], mask[i], None if std is None else std[i])


class ObservationRecord(NamedTuple):
    """One observation time of a stream: `time` (model time), `values` `(m,)` (NaN
    = missing), optional `mask` `(m,)` (True = observed) and optional per-value
    error standard deviations `noise_std` `(m,)`."""

    time: float
    values: np.ndarray
    mask: np.ndarray | None = None
    noise_std: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class ObservationStream:
    """Observations that arrive one record at a time, e.g. from a generator fed by a
    sensor, all through the same operator.

    `assimilate` pulls the records incrementally, `chunk_size` at a time: records of
    the same shape compile once. Times must increase strictly across the whole
    stream; a record that breaks this stops the run with a `ValueError` naming it,
    after everything before it has been assimilated (and written).

    **Arguments:**

    - `observation`: the `AbstractObservation` of every record.
    - `records`: an iterable of `ObservationRecord`s (or tuples `(time, values[,
      mask[, noise_std]])`).
    """

    observation: AbstractObservation
    records: Iterable

    def __post_init__(self):
        if not isinstance(self.observation, AbstractObservation):
            raise TypeError(
                "`observation` must be an AbstractObservation; got "
                f"{type(self.observation).__name__}."
            )


def batch_records(observation: AbstractObservation, records: list, first: int) -> ObservationSeries:
    """Stack stream records `first, first + 1, ...` into an `ObservationSeries`,
    naming the offending record if one is malformed."""
    m = observation.obs_dim
    rows = []
    for i, record in enumerate(records):
        where = f"stream record {first + i}"
        try:
            record = ObservationRecord(*record)
        except TypeError:
            raise TypeError(
                f"{where}: expected an ObservationRecord or a tuple (time, values[, mask[, "
                f"noise_std]]); got {type(record).__name__}."
            ) from None
        values = np.asarray(record.values)
        if values.shape != (m,):
            raise ValueError(f"{where}: `values` must have shape ({m},); got {values.shape}.")
        mask = np.ones(m, bool) if record.mask is None else np.asarray(record.mask)
        if mask.shape != (m,) or mask.dtype != np.bool_:
            raise ValueError(f"{where}: `mask` must be a boolean array of shape ({m},).")
        std = record.noise_std
        if std is not None:
            std = np.asarray(std, np.float64)
            if std.shape != (m,):
                raise ValueError(f"{where}: `noise_std` must have shape ({m},); got {std.shape}.")
            bad = mask & ~np.isnan(values) & ~((std > 0) & np.isfinite(std))
            if bad.any():
                j = int(np.nonzero(bad)[0][0])
                raise ValueError(
                    f"{where}: `noise_std` must be positive and finite for every observed "
                    f"value; got {std[j]!r} at value {j}."
                )
        time = float(record.time)
        if not np.isfinite(time):
            raise ValueError(f"{where}: `time` must be finite; got {time!r}.")
        rows.append((time, values, mask, std))
    has_std = {r[3] is not None for r in rows}
    if len(has_std) > 1:
        raise ValueError(
            f"stream records {first}..{first + len(rows) - 1}: either every record carries "
            "`noise_std` or none does."
        )
    times, values, mask, std = zip(*rows, strict=True)
    times = np.asarray(times)
    if len(times) > 1 and np.any(np.diff(times) <= 0):
        i = int(np.nonzero(np.diff(times) <= 0)[0][0]) + 1
        raise ValueError(
            f"stream record {first + i}: times must increase strictly; got time "
            f"{times[i]!r} after {times[i - 1]!r}."
        )
    dtype = jnp.result_type(float)
    return ObservationSeries(
        observation,
        jnp.asarray(times, dtype),
        jnp.asarray(np.stack(values), dtype),
        jnp.asarray(np.stack(mask)),
        None if std[0] is None else jnp.asarray(np.stack(std), dtype),
    )


def _first_bad(times) -> str:
    if not is_concrete(times):
        return ""
    t = np.asarray(times)
    bad = np.nonzero(np.diff(t) <= 0)[0]
    if bad.size == 0:
        return ""
    i = int(bad[0])
    return f"; got times[{i + 1}] = {t[i + 1]!r} after times[{i}] = {t[i]!r}"


def _first_bad_std(noise_std, mask) -> str:
    if not (is_concrete(noise_std) and is_concrete(mask)):
        return ""
    s, m = np.asarray(noise_std), np.asarray(mask)
    bad = np.argwhere(m & (~(s > 0) | ~np.isfinite(s)))
    if bad.size == 0:
        return ""
    k, j = (int(v) for v in bad[0])
    return f"; got {s[k, j]!r} at record {k}, value {j}"


# Reading sensor files ---------------------------------------------------------------

_MODEL_TIME = ("", "1", "model time units", "model_time_units")


@dataclasses.dataclass(frozen=True)
class SensorData:
    """What `read_observations` found in a sensor file.

    - `series`: the `ObservationSeries` (times in model time, values, mask, per-value
      error standard deviations, the interpolating or subsampling operator);
    - `truth`: `(K, *state)` true states if the file has a `truth` variable (files
      made by `assimilax make-sensors` for twin experiments), else None;
    - `time_encoding`: how the file's times map to model time (`units`, `calendar`,
      `origin`, `model_time_unit`; `file_times` and `model_times`, the file's numbers
      and their model times), so output files repeat the input's times exactly;
    - `attrs`: the file's global attributes;
    - `std_source`: 'file' or 'argument': where the error std came from;
      `file_has_std`: whether the file carries one;
    - `variable`: the name of the variable read as the observations.
    """

    series: ObservationSeries
    truth: np.ndarray | None
    time_encoding: dict
    attrs: dict
    std_source: str = "file"
    file_has_std: bool = True
    variable: str = "observations"


def _model_times(time, time_unit, origin, source) -> tuple[np.ndarray, dict]:
    """Model times of the `time` variable (raw numbers and CF attributes)."""
    import cftime

    raw = np.asarray(time.values)
    if np.issubdtype(raw.dtype, np.number) and not np.all(np.isfinite(raw)):
        i = int(np.nonzero(~np.isfinite(raw))[0][0])
        raise ValueError(f"{source}: `time` must be finite; record {i} is {raw[i]!r}.")
    units = str(time.attrs.get("units", "")).strip()
    if not np.issubdtype(raw.dtype, np.number):
        raise ValueError(f"{source}: `time` must be numeric (CF encoded); got dtype {raw.dtype}.")
    if units.lower() in _MODEL_TIME:
        model = raw.astype(np.float64)
        return model, {"units": "model time units", "file_times": raw, "model_times": model}
    if " since " not in units:
        raise ValueError(
            f"{source}: `time` has units {units!r}; expected CF time units '<unit> since "
            "<date>' (e.g. 'hours since 2026-01-01') or model time units ('1')."
        )
    calendar = str(time.attrs.get("calendar", "standard"))
    step, reference = units.split(" since ", 1)
    unit = time_unit or time.attrs.get("model_time_unit") or step
    origin = reference if origin is None else origin
    try:
        dates = cftime.num2date(raw, units, calendar=calendar)
        seconds = cftime.date2num(dates, f"seconds since {origin}", calendar=calendar)
        # Where the origin lies in the file's units (to write model times back as dates).
        offset = float(
            cftime.date2num(
                cftime.num2date(0, f"seconds since {origin}", calendar=calendar),
                units,
                calendar=calendar,
            )
        )
    except (ValueError, TypeError, OverflowError) as e:
        raise ValueError(f"{source}: cannot decode `time` ({units!r}, {calendar!r}): {e}") from None
    model = np.asarray(seconds, np.float64) / duration_seconds(unit)
    encoding = {
        "units": units,
        "calendar": calendar,
        "origin": origin,
        "model_time_unit": unit,
        "offset": offset,
        # The file's own numbers, so outputs repeat them exactly (joins on time work).
        "file_times": raw,
        "model_times": model,
    }
    return model, encoding


def read_observations(
    source,
    state_shape,
    *,
    variable: str | None = None,
    lengths=None,
    positions: tuple[str, ...] | None = None,
    noise_std: float | None = None,
    override_std: bool = False,
    units: str | None = None,
    coordinate_units: str = "1",
    time_unit: str | None = None,
    origin: str | None = None,
) -> SensorData:
    """Read sensor observations from a netCDF file (path) or an `xarray.Dataset`.

    The layout follows the CF conventions:

    - a `time` coordinate: CF time units (`'<unit> since <date>'`, any calendar
      `cftime` supports) or plain model time (units '1' or none). Times may be
      irregular but must increase strictly;
    - the observed variable `(time, sensor)` (default: `observations`, or the only
      variable with those dimensions); missing values are NaN or the `_FillValue`
      and become the mask. Sensors that report at different times are rows with NaN
      for the sensors that did not report;
    - where each sensor sits, on the `sensor` dimension: either `grid_index`
      (integer flat index into the model grid: a `Subsample` operator) or positions
      in model coordinates, `x` (1-D grids) or `x`, `y` (2-D grids; `positions` to
      rename), with `units` equal to `coordinate_units` (or 'grid_index' for positions
      in grid units): an `Interpolate` operator (linear interpolation on the periodic
      grid). `lengths` is the domain length per axis (default: the number of grid
      points, i.e. a grid spacing of 1);
    - error standard deviations: the variable named by the observed variable's
      `ancillary_variables` attribute, else `<variable>_std`, of dims `(time,
      sensor)`, `(sensor,)` or scalar; else the `noise_std` argument. With
      `override_std=True` the `noise_std` argument replaces the file's own (the CLI's
      `--obs-std` does this, and says so); `SensorData.std_source` tells which was used.

    `units`, if given, must equal the observed variable's `units` attribute (when it
    has one). Model time is `(date - origin) / model_time_unit`, with `origin`
    defaulting to the date in the time units and `model_time_unit` to the `time`
    variable's `model_time_unit` attribute, else the unit of the time units.

    **Raises:** `ValueError` naming the problem for a missing or unreadable file,
    an unknown variable, a missing `time`, non-monotonic or duplicate times, sensors
    outside the domain, negative or zero error std, and units that do not match.
    """
    import xarray as xr

    from ._io import read_netcdf

    if isinstance(source, xr.Dataset):
        ds, where = source, "the dataset"
    else:
        ds, where = read_netcdf(source, decode_times=False), repr(str(source))
    shape = (int(state_shape),) if np.ndim(state_shape) == 0 else tuple(state_shape)
    if "time" not in ds.variables:
        raise ValueError(f"{where} has no `time` coordinate (variables: {_names(ds)}).")
    obs, variable = _observed_variable(ds, variable, units, where)
    if obs.shape[0] == 0:
        raise ValueError(f"{where}: {variable!r} holds no records (its time axis is empty).")
    times, encoding = _model_times(ds["time"], time_unit, origin, where)
    if times.ndim != 1 or times.shape[0] != obs.shape[0]:
        raise ValueError(f"{where}: `time` must be 1-D along the observed variable's time axis.")
    if times.size > 1 and np.any(np.diff(times) <= 0):
        i = int(np.nonzero(np.diff(times) <= 0)[0][0]) + 1
        kind = "duplicate" if times[i] == times[i - 1] else "decreasing"
        raise ValueError(
            f"{where}: times must increase strictly; record {i} has a {kind} time "
            f"({ds['time'].values[i]!r} after {ds['time'].values[i - 1]!r})."
        )
    values, observed = _checked_values(obs, variable, where)
    std, std_source, has_std = _error_std(ds, obs, variable, noise_std, override_std, where)
    # One source for the error std: the operator's noise when it is fixed per sensor
    # (the usual case), else per value in the series (which then replaces it).
    per_sensor = np.where(observed, std, np.nan)
    varies = np.any(np.nanmax(per_sensor, axis=0) != np.nanmin(per_sensor, axis=0))
    sensor_std = np.nanmax(np.where(observed, std, -np.inf), axis=0)
    sensor_std = np.where(np.isfinite(sensor_std), sensor_std, 1.0)
    operator = _sensor_operator(ds, shape, lengths, positions, coordinate_units, sensor_std, where)
    if operator.obs_dim != obs.shape[1]:
        raise ValueError(
            f"{where}: {obs.shape[1]} sensors in {variable!r} but {operator.obs_dim} positions."
        )
    dtype = jnp.result_type(float)
    series = ObservationSeries(
        operator,
        jnp.asarray(times, dtype),
        jnp.asarray(values, dtype),
        noise_std=jnp.asarray(np.where(observed, std, 1.0), dtype) if varies else None,
    )
    truth = _truth(ds, (len(times), *shape), where)
    return SensorData(series, truth, encoding, dict(ds.attrs), std_source, has_std, variable)


def _truth(ds, shape, where):
    """The file's `truth` variable `(K, *state)` (checked: numbers, shape, finite), or
    None if it has none."""
    if "truth" not in ds.data_vars:
        return None
    truth = np.asarray(_numeric(ds["truth"], "truth", where).values)
    if truth.shape != shape:
        raise ValueError(
            f"{where}: `truth` must have shape {shape} for this model; got "
            f"{truth.shape} (another model or dimension?)."
        )
    if not np.isfinite(truth).all():
        k = int(np.argwhere(~np.isfinite(truth))[0][0])
        raise ValueError(
            f"{where}: `truth` must be finite (it is what the analyses are scored "
            f"against); record {k} holds NaN or infinite values."
        )
    return truth


def _checked_values(obs, variable, where):
    """The observed values as float64 and where they are present (not NaN), refusing a
    variable with none present or with infinite values."""
    values = np.asarray(obs.values, np.float64)
    observed = ~np.isnan(values)
    if not observed.any():
        raise ValueError(
            f"{where}: every value of {variable!r} is missing (NaN or _FillValue); there is "
            "nothing to assimilate."
        )
    if np.isinf(values).any():
        k, j = (int(i) for i in np.argwhere(np.isinf(values))[0])
        raise ValueError(
            f"{where}: {variable!r} must be finite or missing; it is {values[k, j]!r} at "
            f"record {k}, sensor {j}."
        )
    return values, observed


def _numeric(var, name: str, where: str):
    """`var`, if its values are numbers (text such as '1.5' is refused, not parsed)."""
    if not (np.issubdtype(var.dtype, np.number) and not np.issubdtype(var.dtype, np.bool_)):
        raise ValueError(f"{where}: {name!r} must hold numbers; it has dtype {var.dtype}.")
    return var


def _names(ds) -> str:
    return ", ".join(sorted(map(str, ds.variables))) or "none"


def _observed_variable(ds, variable, units, where):
    """The observed variable `(time, sensor)` (named, `observations`, or the only
    candidate) and its name, its units checked."""
    if variable is None:
        candidates = [
            str(n)
            for n, v in ds.data_vars.items()
            if v.ndim == 2
            and "time" in v.dims
            and str(n) != "truth"
            and not str(n).endswith("_std")
        ]
        if "observations" in candidates or not candidates:
            variable = "observations"
        elif len(candidates) == 1:
            variable = candidates[0]
        else:
            raise ValueError(
                f"{where} has several variables that could be the observations "
                f"({', '.join(sorted(candidates))}) and none called 'observations': name one "
                "(--variable / `variable=`)."
            )
    if variable not in ds.data_vars:
        raise ValueError(f"{where} has no variable {variable!r}; it has: {_names(ds)}.")
    obs = _numeric(ds[variable], variable, where)
    if obs.ndim != 2 or "time" not in obs.dims:
        raise ValueError(
            f"{where}: {variable!r} must have dimensions (time, sensor); got {obs.dims}."
        )
    obs = obs.transpose("time", next(d for d in obs.dims if d != "time"))
    if units is not None and "units" in obs.attrs and str(obs.attrs["units"]) != units:
        raise ValueError(
            f"{where}: {variable!r} is in units {obs.attrs['units']!r}, but the model's state "
            f"is in {units!r}; convert the values first."
        )
    return obs, variable


def _error_std(ds, obs, variable, noise_std, override_std, where):
    """`(std per value (K, m), 'file' | 'argument', whether the file has one)`; the one
    place the error std of a sensor file is read and checked."""
    std_name = str(obs.attrs.get("ancillary_variables", "")).split()
    std_name = std_name[0] if std_name else f"{variable}_std"
    has_std = std_name in ds.variables
    if noise_std is not None and not noise_std > 0:
        raise ValueError(f"`noise_std` must be positive; got {noise_std!r}.")
    if noise_std is not None and (override_std or not has_std):
        return np.full(obs.shape, float(noise_std)), "argument", has_std
    if not has_std:
        raise ValueError(
            f"{where} has no error standard deviation for {variable!r} (no {std_name!r}); "
            "give one (`noise_std`, CLI --obs-std)."
        )
    std = _numeric(ds[std_name], std_name, where)
    std = std.transpose(*[d for d in obs.dims if d in std.dims])
    std = np.broadcast_to(np.asarray(std.values, np.float64), obs.shape)
    bad = ~np.isnan(np.asarray(obs.values, np.float64)) & ~((std > 0) & np.isfinite(std))
    if bad.any():
        k, j = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{where}: error standard deviations must be positive; {std_name!r} is "
            f"{std[k, j]!r} at record {k}, sensor {j}."
        )
    return std, "file", has_std


def _sensor_operator(ds, shape, lengths, positions, coordinate_units, sensor_std, where):
    """`Subsample` from `grid_index`, or `Interpolate` from positions in model units."""
    from .observations import Interpolate, Subsample

    if "grid_index" in ds.variables:
        index = np.asarray(ds["grid_index"].values)
        size = math.prod(shape)
        if not np.issubdtype(index.dtype, np.integer) or index.min() < 0 or index.max() >= size:
            raise ValueError(
                f"{where}: `grid_index` must hold integer indices in [0, {size}) (sensors "
                f"inside the domain); got values from {index.min()} to {index.max()}."
            )
        return Subsample(shape, index, noise_std=sensor_std)
    names = positions or (("x",) if len(shape) == 1 else ("x", "y", "z")[: len(shape)])
    missing = [n for n in names if n not in ds.variables]
    if missing:
        raise ValueError(
            f"{where}: no sensor positions: expected `grid_index` or "
            f"{', '.join(map(repr, names))} on the sensor dimension (variables: {_names(ds)})."
        )
    lengths = shape if lengths is None else tuple(np.broadcast_to(lengths, (len(shape),)))
    columns = []
    for axis, name in enumerate(names):
        pos = ds[name]
        pos_units = str(pos.attrs.get("units", coordinate_units))
        values_axis = np.asarray(pos.values, np.float64)
        if pos_units != "grid_index" and pos_units != coordinate_units:
            raise ValueError(
                f"{where}: sensor positions {name!r} are in units {pos_units!r}, but the "
                f"model's coordinates are in {coordinate_units!r} (or use 'grid_index')."
            )
        if pos_units != "grid_index":
            outside = (values_axis < 0) | (values_axis >= lengths[axis])
            if outside.any():
                j = int(np.nonzero(outside)[0][0])
                raise ValueError(
                    f"{where}: sensor {j} is outside the domain: {name} = "
                    f"{values_axis[j]!r}, domain [0, {lengths[axis]!r})."
                )
            values_axis = values_axis * shape[axis] / lengths[axis]
        columns.append(values_axis)
    return Interpolate(shape, np.stack(columns, axis=1), noise_std=sensor_std)
