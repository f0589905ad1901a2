"""The one home of the output schema: the names, meanings and units of every variable
that assimilax writes (the driver's growing analysis files and the twin-experiment
datasets), and the CF conventions they follow.

The models are non-dimensional, so state-valued variables carry the UDUNITS unit
`"1"`; model time is written as CF time (`"<unit> since <date>"`) where the input had
dates, else as a plain number with units `"1"` and `long_name` "model time".
"""

CONVENTIONS = "CF-1.8"

# name -> (long_name, units); units None: dimensionless counts or flags (no units).
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
    "observed": ("number of values observed (not missing)", None),
    "log_likelihood": (
        "log-likelihood of the cycle's observations given the earlier ones, "
        "log p(y_k | y_1..k-1) (filters.log_evidence)",
        "1",
    ),
    "effective_size": ("effective sample size of the analysis weights, 1/sum(w^2)", None),
    "ess_analysis": ("effective sample size of the analysis weights, 1/sum(w^2)", None),
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
    "rank_histogram": ("counts of the truth's rank (PIT bin) after burn-in", None),
    "level": ("central interval probability", "1"),
    "failed": ("1 if the run failed (non-finite forecast or analysis)", None),
    "diverged": (
        "1 if the filter lost track: RMSE far beyond the spread for a sustained window "
        "(metrics.divergence)",
        None,
    ),
    "uninformative": (
        "1 if the filter gave up: analysis RMSE above 0.7 of the climatological error for "
        "a sustained window (metrics.uninformative)",
        None,
    ),
    "filter_description": ("filter configuration", None),
    "wall_seconds": ("wall-clock seconds of the assimilation, compilation included", "s"),
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


def model_time_attrs() -> dict[str, str]:
    """Attributes of a `time` coordinate in plain (non-dimensional) model time."""
    return {"long_name": "model time (non-dimensional)", "units": "1"}
