"""The one home of the output schema: the names, meanings and units of every variable
that assimilax writes (the driver's growing analysis files and the twin-experiment
datasets), and the CF conventions they follow.

The models are non-dimensional, so state-valued variables carry the UDUNITS unit
`"1"`. Files are CF-1.8 as `compliance-checker --test=cf:1.8` and `cfchecks` read it
(`to_cf`, applied by every writer; `from_cf` undoes it on reading):

- model time, which CF cannot express, is written as CF time, `hours since 2000-01-01`
  at one model time unit = the `time` variable's `model_time_unit` (Lorenz-96: 5 days,
  after Lorenz 1996; other models 1 day unless said), and kept exactly in the auxiliary
  coordinate `model_time` (units "1"); the record dimension `time` is unlimited;
- string-labelled dimensions (`filter`) become integer indices with the labels in a
  char-array auxiliary coordinate `<dim>_name`; other strings are char arrays;
- integers are 32-bit, coordinates have no fill value, every numeric variable has
  units (`"1"` for counts, flags and indices) and a `long_name`, and `history` says
  which program wrote the file.
"""

import datetime
import math
import sys
from pathlib import Path


CONVENTIONS = "CF-1.8"
CF_EPOCH = "2000-01-01 00:00:00"

# name -> (long_name, units); "1" for dimensionless values, counts and flags; None for text.
VARIABLES: dict[str, tuple[str, str | None]] = {
    "truth": ("true state", "1"),
    "observations": ("synthetic observations (NaN = missing)", "1"),
    "forecast_mean": ("forecast ensemble mean", "1"),
    "analysis_mean": ("analysis ensemble mean", "1"),
    "analysis_std": ("analysis standard deviation per component", "1"),
    "forecast_spread": ("RMS spread of the forecast", "1"),
    "analysis_spread": ("RMS spread of the analysis", "1"),
    "spread_forecast": ("RMS ensemble spread of the forecast", "1"),
    "spread_analysis": ("RMS ensemble spread of the analysis", "1"),
    "observed": ("number of values observed (not missing)", "1"),
    "log_likelihood": (
        "log-likelihood of the cycle's observations given the earlier ones, "
        "log p(y_k | y_1..k-1) (filters.log_evidence)",
        "1",
    ),
    "effective_size": ("effective sample size of the analysis weights, 1/sum(w^2)", "1"),
    "ess_analysis": ("effective sample size of the analysis weights, 1/sum(w^2)", "1"),
    "innovation_ratio": (
        "normalised innovation statistic of the forecast (about 1 when the spread matches "
        "the error; metrics.innovation_ratio)",
        "1",
    ),
    "rmse_forecast": ("RMSE of the forecast mean against the truth", "1"),
    "rmse_analysis": ("RMSE of the analysis mean against the truth", "1"),
    "smoothed_mean": ("smoothed ensemble mean (fixed-lag smoother)", "1"),
    "smoothed_std": ("smoothed standard deviation per component (fixed-lag smoother)", "1"),
    "rmse_smoothed": ("RMSE of the smoothed mean against the truth", "1"),
    "crps_analysis": ("CRPS of the analysis ensemble, mean over components", "1"),
    "energy_score_analysis": ("energy score of the analysis ensemble (NaN: too large)", "1"),
    "coverage_analysis": ("fraction of components inside the central interval", "1"),
    "spectral_error_analysis": (
        "RMS log10 ratio of the analysis mean's power spectrum to the truth's over shells "
        "1..n/3 (metrics.spectral_error)",
        "1",
    ),
    "rank_histogram": ("counts of the truth's rank (PIT bin) after burn-in", "1"),
    "level": ("central interval probability", "1"),
    "failed": ("1 if the run failed (non-finite forecast or analysis)", "1"),
    "diverged": (
        "1 if the filter lost track: RMSE far beyond the spread for a sustained window "
        "(metrics.divergence)",
        "1",
    ),
    "uninformative": (
        "1 if the filter gave up: analysis RMSE above 0.7 of the climatological error for "
        "a sustained window (metrics.uninformative)",
        "1",
    ),
    "filter_description": ("filter configuration", None),
    "wall_seconds": ("wall-clock seconds of the assimilation, compilation included", "s"),
    "compile_seconds": ("seconds of wall_seconds JAX spent tracing and compiling", "s"),
}

# The per-cycle diagnostics a `Solution` carries and the driver appends to its output
# file, in file order.
CYCLE_OUTPUTS = (
    "forecast_mean",
    "analysis_mean",
    "analysis_std",
    "forecast_spread",
    "analysis_spread",
    "observed",
    "log_likelihood",
    "effective_size",
    "innovation_ratio",
    "rmse_forecast",
    "rmse_analysis",
)


def state_dims(state_shape) -> tuple[str, ...]:
    """The dimension names of one state: `x` for flat states, `x0, x1, ...` for fields."""
    shape = tuple(state_shape)
    return ("x",) if len(shape) == 1 else tuple(f"x{i}" for i in range(len(shape)))


def variable_attrs(name: str) -> dict[str, str]:
    """The CF attributes (`long_name`, `units`) of variable `name`."""
    long_name, units = VARIABLES[name]
    return {"long_name": long_name} if units is None else {"long_name": long_name, "units": units}


def state_coordinate_attrs(dim: str) -> dict[str, str]:
    """Attributes of a grid-index coordinate of the state."""
    return {"long_name": f"grid index along {dim}", "units": "1"}


def model_time_attrs(time_unit: str = "1 day") -> dict[str, str]:
    """Attributes of a `time` coordinate in plain (non-dimensional) model time; files
    carry it as CF time at one model time unit = `time_unit` (see `to_cf`)."""
    return {"long_name": "model time (non-dimensional)", "units": "1", "model_time_unit": time_unit}


_SECONDS = {
    "second": 1.0,
    "minute": 60.0,
    "hour": 3600.0,
    "day": 86400.0,
    "week": 604800.0,
}
_ALIASES = {"s": "second", "sec": "second", "min": "minute", "h": "hour", "hr": "hour", "d": "day"}


def duration_seconds(text: str) -> float:
    """Seconds in a duration such as '6 hours', '5 days', 'minutes' (one of them)."""
    parts = str(text).strip().lower().split()
    if len(parts) == 1:
        parts = ["1", parts[0]]
    try:
        count = float(parts[0]) if len(parts) == 2 else math.nan
    except ValueError:
        count = math.nan
    unit = parts[-1].rstrip("s") if parts[-1] not in _ALIASES else _ALIASES[parts[-1]]
    unit = _ALIASES.get(unit, unit)
    if not (0 < count < math.inf) or unit not in _SECONDS:
        raise ValueError(
            f"{text!r} is not a duration: expected '<number> <unit>' (a positive finite number) "
            "with a unit among "
            f"{', '.join(_SECONDS)}, e.g. '6 hours'."
        )
    return count * _SECONDS[unit]


def model_time_hours(times, time_unit: str):
    """Model times as hours since `CF_EPOCH` at one model time unit = `time_unit`."""
    import numpy as np

    return np.asarray(times, np.float64) * (duration_seconds(time_unit) / 3600.0)


def cf_time_attrs(time_unit: str) -> dict[str, str]:
    """Attributes of the CF `time` coordinate that stands for model time (`to_cf`)."""
    return {
        "standard_name": "time",
        "long_name": "time (model time at one unit = model_time_unit)",
        "units": f"hours since {CF_EPOCH}",
        "calendar": "proleptic_gregorian",
        "model_time_unit": time_unit,
    }


def history() -> str:
    """The `history` line of a file written now: date, program and command."""
    from . import __version__

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    command = " ".join(["assimilax", *sys.argv[1:]]) if program == "assimilax" else program
    return f"{now}: {command} (assimilax {__version__})"


def to_cf(ds):
    """`(dataset, encoding, unlimited_dims)`: `ds` in its CF file form (module docs)."""
    import numpy as np

    ds = ds.copy()
    if "time" in ds.dims and "time" in ds.coords and ds["time"].attrs.get("units") == "1":
        attrs = dict(ds["time"].attrs)
        unit = attrs.pop("model_time_unit", "1 day")
        times = ds["time"].values
        ds = ds.drop_vars("time").assign_coords(
            time=("time", model_time_hours(times, unit), cf_time_attrs(unit)),
            model_time=("time", times, {"long_name": "model time (non-dimensional)", **attrs}),
        )
    for dim in list(ds.dims):
        if dim in ds.coords and ds[dim].dtype.kind in "OUS":
            label = (dim, ds[dim].values.astype(str), dict(ds[dim].attrs))
            index = (dim, np.arange(ds.sizes[dim], dtype=np.int32), _index_attrs(dim))
            ds = ds.drop_vars(dim).assign_coords({dim: index, f"{dim}_name": label})
    encoding = {}
    for name, var in ds.variables.items():
        enc = {k: v for k, v in var.encoding.items() if k in ("_FillValue", "dtype")}
        if name in ds.coords:
            enc["_FillValue"] = None
        if var.dtype.kind in "iu" and var.dtype.itemsize > 4 and _fits_int32(var.values):
            enc["dtype"] = "int32"
        if var.dtype.kind in "OUS":
            enc["dtype"] = "S1"
        elif "units" not in var.attrs and "units" not in var.encoding:
            var.attrs["units"] = "1"
        var.attrs.setdefault("long_name", name.replace("_", " "))
        encoding[name] = enc
    previous = ds.attrs.get("history")
    ds.attrs["history"] = history() + (f"\n{previous}" if previous else "")
    return ds, encoding, (["time"] if "time" in ds.dims else [])


def from_cf(ds):
    """`ds` as read from a file written through `to_cf`, back in its in-memory form:
    model time in `time`, string labels as the dimension's coordinate."""
    for dim in list(ds.dims):
        label = f"{dim}_name"
        if label in ds.coords and ds[label].dims == (dim,) and ds[dim].attrs == _index_attrs(dim):
            values, attrs = ds[label].values.astype(str).astype(object), dict(ds[label].attrs)
            ds = ds.drop_vars([dim, label]).assign_coords({dim: (dim, values, attrs)})
    if "model_time" in ds.variables and ds["model_time"].dims == ("time",):
        attrs = dict(ds["model_time"].attrs)
        attrs["model_time_unit"] = ds["time"].attrs.get(
            "model_time_unit", ds["time"].encoding.get("model_time_unit", "1 day")
        )
        values = ds["model_time"].values
        ds = ds.drop_vars(["time", "model_time"]).assign_coords(time=("time", values, attrs))
    return ds


def _index_attrs(dim: str) -> dict[str, str]:
    return {"long_name": f"{dim} number (labels in {dim}_name)", "units": "1"}


def _fits_int32(values) -> bool:
    import numpy as np

    return values.size == 0 or bool(np.abs(values).max() < 2**31)
