"""The twin-experiment dataset and its time-averaged summary: the schema that
`assimilax report` and the CLI table read (and nothing else)."""

import math
from collections.abc import Mapping, Sequence

import numpy as np

from .. import _schema
from .._assimilate import Solution
from .._results import RESULTS
from ..metrics import (
    COVERAGE_LEVELS,
    climatological_error,
    divergence,
    rank_bins,
    spread_skill_ratio,
    time_average,
    uninformative,
)
from ..observations import AbstractObservation, Identity, Subsample


SUMMARY_COLUMNS = (
    "rmse_analysis",
    "rmse_forecast",
    "spread_analysis",
    "spread_skill",
    "crps_analysis",
    "energy_score_analysis",
    "spectral_error_analysis",
    *(f"coverage_{round(100 * level)}" for level in COVERAGE_LEVELS),
    "ess_analysis",
    "innovation_ratio",
    "log_likelihood",
)


def _sensor_variables(observation: AbstractObservation) -> dict:
    """`grid_index(obs)` and `observations_std(obs)` for a linear sensor operator, so a
    twin file reads back as a sensor file (`read_observations`, `assimilate --obs`)."""
    if isinstance(observation, Identity):
        index = np.arange(observation.obs_dim)
    elif isinstance(observation, Subsample):
        index = np.asarray(observation.indices)
    else:  # nonlinear or general operators: not readable as plain sensors
        return {}
    std = np.sqrt(np.asarray(observation.noise.diagonal()))
    return {
        "grid_index": (
            ("obs",),
            index.astype(np.int32),
            {"long_name": "flat grid index of each sensor", "units": "1"},
        ),
        "observations_std": (
            ("obs",),
            std,
            {"long_name": "observation error standard deviation", "units": "1"},
        ),
    }


def _stack(arrays, shape):
    """One array per filter, NaN of `shape` for a diagnostic its belief does not have (a
    Gaussian belief's ESS and ensemble scores)."""
    return np.stack([np.full(shape, np.nan) if a is None else np.asarray(a) for a in arrays])


def _flags(results, ratio, rmse, truth, burn_in):
    """`failed` (non-finite), `diverged` (lost track) and `uninformative` (gave up) per
    filter, each int8 and exclusive of the ones before it."""
    failed = np.array([int(s.result != RESULTS.successful) for s in results], np.int8)
    diverged = np.array([int(divergence(r, burn_in)) for r in ratio], np.int8)
    reference = climatological_error(truth, burn_in)
    gave_up = np.array([uninformative(e, reference, burn_in) for e in rmse], np.int8)
    return failed, diverged, gave_up * (1 - failed) * (1 - diverged)


def twin_dataset(
    truth,
    series,
    solutions: Mapping[str, Solution],
    descriptions: Mapping[str, str],
    seconds: Sequence[tuple[float, float]],
    *,
    members: int,
    burn_in: int,
    attrs: Mapping[str, object],
):
    """The CF-1.8 dataset of a twin experiment from its truth, observations and the
    `Solution` of each filter (see `twin_experiment` for the variables)."""
    import xarray as xr

    names = list(solutions)
    results = [solutions[n] for n in names]
    state_shape = tuple(np.shape(truth)[1:])
    sdims = _schema.state_dims(state_shape)
    k = len(series.times)
    shapes = {"coverage": (k, len(COVERAGE_LEVELS)), "rank_counts": (k, rank_bins(members))}
    stack = lambda attr: _stack([getattr(s, attr) for s in results], (k,))
    score = lambda name: _stack(
        [None if s.scores is None else s.scores[name] for s in results], shapes.get(name, (k,))
    )
    ratio = stack("innovation_ratio")
    failed, diverged, gave_up = _flags(results, ratio, stack("rmse_analysis"), truth, burn_in)
    obs_values = np.where(np.asarray(series.mask), np.asarray(series.values), np.nan)
    data = {
        "truth": (("time", *sdims), np.asarray(truth)),
        "observations": (("time", "obs"), obs_values),
        "analysis_mean": (("filter", "time", *sdims), stack("analysis_mean")),
        "analysis_std": (("filter", "time", *sdims), stack("analysis_std")),
        "ess_analysis": (("filter", "time"), stack("effective_size")),
        "innovation_ratio": (("filter", "time"), ratio),
        "log_likelihood": (("filter", "time"), stack("log_likelihood")),
        "crps_analysis": (("filter", "time"), score("crps")),
        "energy_score_analysis": (("filter", "time"), score("energy_score")),
        "coverage_analysis": (("filter", "time", "level"), score("coverage")),
        "spectral_error_analysis": (("filter", "time"), score("spectral_error")),
        "rank_histogram": (("filter", "rank_bin"), score("rank_counts")[:, burn_in:].sum(axis=1)),
        "rmse_analysis": (("filter", "time"), stack("rmse_analysis")),
        "rmse_forecast": (("filter", "time"), stack("rmse_forecast")),
        "spread_analysis": (("filter", "time"), stack("analysis_spread")),
        "spread_forecast": (("filter", "time"), stack("forecast_spread")),
        "failed": (("filter",), failed),
        "diverged": (("filter",), diverged),
        "uninformative": (("filter",), gave_up),
        "filter_description": (("filter",), np.array([descriptions[n] for n in names])),
        "wall_seconds": (("filter",), np.asarray(seconds, np.float64)[:, 0]),
        "compile_seconds": (("filter",), np.asarray(seconds, np.float64)[:, 1]),
    }
    if any(s.smoothed_mean is not None for s in results):  # smoothers (filters.EnKS)
        shape = (k, *state_shape)
        smoothed = _stack([s.smoothed_mean for s in results], shape)
        data["smoothed_mean"] = (("filter", "time", *sdims), smoothed)
        data["smoothed_std"] = (
            ("filter", "time", *sdims), _stack([s.smoothed_std for s in results], shape),
        )  # fmt: skip
        error = smoothed - np.asarray(truth)[None]
        data["rmse_smoothed"] = (
            ("filter", "time"), np.sqrt(np.mean(error.reshape(len(results), k, -1) ** 2, -1)),
        )  # fmt: skip
    ds = xr.Dataset(
        data,
        coords={
            "filter": np.array(names),
            "time": np.asarray(series.times),
            # Indices as the file keeps them (`_schema.to_cf`: 32-bit, units "1").
            "obs": np.arange(series.observation.obs_dim, dtype=np.int32),
            "level": np.asarray(COVERAGE_LEVELS),
            "rank_bin": np.arange(rank_bins(members), dtype=np.int32),
            **{d: np.arange(n, dtype=np.int32) for d, n in zip(sdims, state_shape, strict=True)},
        },
    )
    for var in data:
        ds[var].attrs.update(_schema.variable_attrs(var))
    ds["level"].attrs.update(_schema.variable_attrs("level"))
    ds["time"].attrs.update(_schema.model_time_attrs())
    for d in sdims:
        ds[d].attrs.update(_schema.state_coordinate_attrs(d))
    ds["filter"].attrs["long_name"] = "filter name"
    ds["obs"].attrs.update(long_name="observed value index", units="1")
    ds["rank_bin"].attrs.update(long_name="rank of the truth among the members", units="1")
    for name, (dims, values, vattrs) in _sensor_variables(series.observation).items():
        ds[name] = (dims, values, vattrs)
    if "observations_std" in ds:
        ds["observations"].attrs["ancillary_variables"] = "observations_std"
    ds.attrs.update(
        {
            "Conventions": _schema.CONVENTIONS,
            "title": "assimilax twin experiment",
            "source": "assimilax twin_experiment",
            "members": members,
            "burn_in": burn_in,
            "precision": str(np.asarray(truth).dtype),
            **dict(attrs),
        }
    )
    return ds


def summarise(ds) -> dict[str, dict[str, float]]:
    """Time-averaged scores per filter, after the dataset's `burn_in` cycles: the
    `SUMMARY_COLUMNS` (`spread_skill` is mean spread over mean RMSE; `coverage_90` the
    mean fraction of components inside the 90 % interval), `failed` (non-finite) and
    `diverged` (lost track: `metrics.divergence` of the innovation ratio) and
    `uninformative` (gave up: `metrics.uninformative`); `log_likelihood` is the sum of
    the per-cycle log-likelihoods after burn-in (`Solution.log_likelihood`)."""
    if "burn_in" not in ds.attrs or "filter" not in ds.coords:
        raise ValueError(
            "summarise needs a twin-experiment dataset (`twin_experiment`, `assimilax twin "
            "--out`): this one has no `burn_in` attribute or `filter` coordinate."
        )
    burn_in = int(ds.attrs["burn_in"])
    out = {}
    for name in ds["filter"].values.tolist():
        sel = ds.sel(filter=name)
        row = {
            var: float(time_average(sel[var].values, burn_in)) if var in sel else math.nan
            for var in (
                "rmse_analysis",
                "rmse_forecast",
                "spread_analysis",
                "crps_analysis",
                "energy_score_analysis",
                "spectral_error_analysis",  # absent from older files
                "ess_analysis",
                "innovation_ratio",
            )
        }
        ll = sel["log_likelihood"].values[burn_in:] if "log_likelihood" in sel else [math.nan]
        row["log_likelihood"] = float(np.sum(ll))  # absent from older files: NaN
        row["spread_skill"] = float(
            spread_skill_ratio(sel["spread_analysis"].values, sel["rmse_analysis"].values, burn_in)
        )
        coverage = time_average(sel["coverage_analysis"].values, burn_in)
        for level, value in zip(COVERAGE_LEVELS, coverage, strict=True):
            row[f"coverage_{round(100 * level)}"] = float(value)
        out[name] = {col: row[col] for col in SUMMARY_COLUMNS}
        out[name]["failed"] = bool(sel["failed"].values)
        for flag in ("diverged", "uninformative"):  # absent from older files
            out[name][flag] = bool(sel[flag].values) if flag in sel else False
        if "rmse_smoothed" in sel:  # smoothers only; NaN for the filters beside them
            out[name]["rmse_smoothed"] = float(time_average(sel["rmse_smoothed"].values, burn_in))
    return out


def status(row: Mapping[str, object]) -> str:
    """'FAILED' (non-finite), 'DIVERGED' (lost track: innovations far beyond the
    spread), 'UNINFORMATIVE' (gave up: analysis error near the climatological error,
    `metrics.uninformative`) or '' for a summary row."""
    for flag in ("failed", "diverged", "uninformative"):
        if row.get(flag):
            return flag.upper()
    return ""
