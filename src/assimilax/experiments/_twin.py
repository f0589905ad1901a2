"""Twin experiments: a truth run, synthetic observations, several filters, metrics."""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import jax.random as jr

from .._custom_types import PRNGKeyArray
from .._driver import assimilate_stream, progress_sinks
from .._ensemble import Ensemble
from .._io import describe
from .._streams import ObservationSeries
from .._timing import Stopwatch
from ..dynamics import AbstractDynamics
from ..filters import AbstractFilter
from ..observations import AbstractObservation
from ._dataset import twin_dataset
from ._simulate import perturbations, synthetic_observations, truth_run


# Cycles per compiled call of a twin run: short enough that Ctrl-C or SIGTERM (seen
# between calls) stops it within seconds, long enough that the calls cost nothing.
TWIN_CHUNK = 100


def twin_experiment(
    dynamics: AbstractDynamics,
    observation: AbstractObservation,
    filters: Mapping[str, AbstractFilter],
    *,
    key: PRNGKeyArray,
    members: int,
    cycles: int,
    obs_interval: float,
    burn_in: int,
    x0,
    spinup_time: float = 0.0,
    init_std: float = 1.0,
    init_length_scale: float | None = None,
    progress: bool | None = False,
    attrs: Mapping[str, object] | None = None,
    truth_dynamics: AbstractDynamics | None = None,
    mesh=None,
    over: str = "members",
):
    r"""Run a twin experiment and return its results as an `xarray.Dataset`.

    1. Spin-up: draw the initial truth from `N(x0, init_std^2)` and integrate it for
       `spinup_time` to reach the attractor.
    2. Truth and synthetic observations `y_k = h(x_k) + noise` at times
       `obs_interval * (1..cycles)` (as `simulate`).
    3. One initial ensemble of `members` states, truth plus `N(0, init_std^2)`, and
       one key, shared by every filter, so the comparison is like for like.
    4. Each filter assimilates the same observations.

    With `init_length_scale` (spectral SPDE models only) the perturbations of steps 1
    and 3 are smooth zero-mean random fields (`SpatialSpectrum(init_std,
    init_length_scale)`) instead of white noise, so they keep the conserved spatial
    mean of Burgers, KS and Navier–Stokes.

    The dataset (CF-1.8) has a `filter` coordinate and `truth(time, x)`,
    `observations(time, obs)` (with `grid_index(obs)` and `observations_std(obs)` for
    linear sensors, so the file reads back as a sensor file),
    `analysis_mean`/`analysis_std(filter, time, x)`,
    `rmse_analysis`/`rmse_forecast`/`spread_analysis`/`spread_forecast(filter, time)`,
    the probabilistic scores `crps_analysis`/`energy_score_analysis`/`ess_analysis`
    `(filter, time)`, `coverage_analysis(filter, time, level)`,
    `rank_histogram(filter, rank_bin)` (summed after burn-in), `innovation_ratio(filter,
    time)`, `failed(filter)` (non-finite), `diverged(filter)` (lost track,
    `metrics.divergence`), `wall_seconds(filter)` and `compile_seconds(filter)` (the
    part of it JAX spent compiling; these two are the only variables that differ
    between runs with equal seeds). Settings, including `burn_in` (in cycles), are
    attributes. Time-averaged scores: `summarise(ds)`. `progress`: show progress bars
    (None: when interactive). `truth_dynamics` (default `dynamics`) runs the truth only,
    e.g. `dynamics.Shocked(...)`: a model error the filters do not know. `mesh`, `over`:
    shard every filter's belief over devices (as `assimilate`; in a multi-process run
    every process calls this and gets the same dataset).
    """
    _check_inputs(filters, members, cycles, burn_in, obs_interval, init_std)
    truth, series, ensemble, run_key = twin_inputs(
        dynamics, observation, key=key, members=members, cycles=cycles,
        obs_interval=obs_interval, x0=x0, spinup_time=spinup_time, init_std=init_std,
        init_length_scale=init_length_scale, truth_dynamics=truth_dynamics,
    )  # fmt: skip
    solutions, seconds = _run_filters(
        filters, dynamics, series, ensemble, truth, run_key, progress, dict(mesh=mesh, over=over)
    )
    settings = {
        "cycles": cycles,
        "obs_interval": obs_interval,
        "spinup_time": spinup_time,
        "init_std": init_std,
        "init_length_scale": "white" if init_length_scale is None else init_length_scale,
        "dynamics": describe(dynamics),
        "observation_operator": describe(observation),
        **dict(attrs or {}),
    }
    descriptions = {name: describe(flt) for name, flt in filters.items()}
    return twin_dataset(
        truth,
        series,
        solutions,
        descriptions,
        seconds,
        members=members,
        burn_in=burn_in,
        attrs=settings,
    )


def twin_inputs(
    dynamics, observation, *, key, members, cycles, obs_interval, x0, spinup_time, init_std,
    init_length_scale, truth_dynamics,
):  # fmt: skip
    """Steps 1-3 of `twin_experiment`: the truth `(K, *state)`, the `ObservationSeries`,
    the initial `Ensemble` and the key of the filters' runs."""
    state_shape = tuple(dynamics.state_shape)
    dtype = jnp.result_type(float)
    x0 = jnp.asarray(x0, dtype)
    if x0.shape != state_shape:
        raise ValueError(f"`x0` must have shape {state_shape}; got {x0.shape}.")
    if truth_dynamics is not None and tuple(truth_dynamics.state_shape) != state_shape:
        raise ValueError("`truth_dynamics` must have the state shape of `dynamics`.")
    start_key, spin_key, truth_key, obs_key, ens_key, run_key = jr.split(key, 6)
    # The truth starts from a random draw around `x0` (DAPPER's X0), so seeds differ
    # even for deterministic dynamics.
    x0 = x0 + perturbations(dynamics, init_std, init_length_scale, 1, key=start_key)[0]
    if spinup_time > 0:
        x0 = dynamics.step(x0, 0.0, spinup_time, key=spin_key)
    times = obs_interval * jnp.arange(1, cycles + 1, dtype=dtype)
    # As `simulate(dynamics, observation, x0, times)`, with the keys of earlier versions.
    truth = truth_run(dynamics if truth_dynamics is None else truth_dynamics, x0, times, truth_key)
    y = synthetic_observations(observation, truth, obs_key)
    series = ObservationSeries(observation, times, y)
    ensemble = Ensemble(
        x0[None] + perturbations(dynamics, init_std, init_length_scale, members, key=ens_key)
    )
    return truth, series, ensemble, run_key


def _check_inputs(filters, members, cycles, burn_in, obs_interval, init_std) -> None:
    if not filters:
        raise ValueError("`filters` must name at least one filter.")
    for name, flt in filters.items():
        if not isinstance(flt, AbstractFilter):
            raise TypeError(f"filters[{name!r}] is not an AbstractFilter.")
    if members < 2:
        raise ValueError(f"`members` must be at least 2; got {members}.")
    if cycles < 1:
        raise ValueError(f"`cycles` must be positive; got {cycles}.")
    if not 0 <= burn_in < cycles:
        raise ValueError(f"`burn_in` must lie in [0, cycles={cycles}); got {burn_in}.")
    if not 0 < obs_interval < float("inf"):
        raise ValueError(f"`obs_interval` must be positive and finite; got {obs_interval}.")
    if not 0 < init_std < float("inf"):
        raise ValueError(f"`init_std` must be positive and finite; got {init_std}.")


def _run_filters(filters, dynamics, series, ensemble, truth, key, progress, layout):
    """Each filter's `Solution` on the same observations, initial ensemble and key,
    and its `(wall-clock seconds, of which compiling)`."""
    solutions, seconds = {}, []
    for name, flt in filters.items():
        with Stopwatch() as watch:
            belief0 = flt.init(ensemble, key=key)
            # In chunks, as with a progress bar: a signal is honoured between chunks.
            sol = assimilate_stream(
                flt, dynamics, series, belief0, key=key, truth=truth, throw=False,
                sinks=progress_sinks(progress, name), chunk_size=TWIN_CHUNK, **layout,
            )  # fmt: skip
            jax.block_until_ready(sol.analysis_mean)
        seconds.append((watch.seconds, watch.compile_seconds))
        solutions[name] = sol
    return solutions, seconds
