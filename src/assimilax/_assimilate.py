"""The cycle loop: forecast, update, diagnostics, as one `lax.scan`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax import lax
from jax.sharding import Mesh

from ._belief import AbstractBelief, GaussianBelief
from ._checks import check_finite, check_shape, is_concrete
from ._custom_types import Array, Float, Int, PRNGKeyArray, RealScalarLike
from ._ensemble import Ensemble, as_ensemble
from ._results import RESULTS
from ._sharding import constrain, replicate, shard
from ._streams import ObservationSeries
from .dynamics import AbstractDynamics
from .filters import AbstractFilter, AbstractLaggedEnsemble, log_evidence
from .metrics import cycle_scores, innovation_ratio, rmse
from .observations import Identity, Interpolate, Subsample


class Solution(eqx.Module):
    r"""The output of `assimilate`: per-cycle diagnostics and the final belief.

    Per-cycle arrays have a leading axis of length `K` (the number of observation
    times):

    - `forecast_mean`, `analysis_mean`, `analysis_std` (per component), and the RMS
      spreads `forecast_spread`, `analysis_spread`;
    - `observed`: the number of values observed (not missing) per cycle;
    - `log_likelihood`: $\log p(y_k \mid y_{1:k-1})$ from the forecast
      (`filters.log_evidence`: exact for the Kalman filter, the particle filters'
      estimate, the Gaussian approximation from the members for the EnKF family); its
      sum is the log-likelihood of the whole series;
    - `effective_size`: the analysis ensemble's effective sample size `1 / sum w^2`
      (`n` for EnKFs; a particle filter's weight collapse shows here), None for
      non-ensemble beliefs;
    - `innovation_ratio`: the forecast's normalised innovation statistic
      (`metrics.innovation_ratio`: about 1 when the spread matches the error, far
      above when the filter has lost track; `metrics.divergence` reads it), None for
      non-ensemble beliefs;
    - `rmse_forecast`, `rmse_analysis`: None unless a `truth` was given;
    - `scores`: the analysis ensemble's `metrics.cycle_scores` (`crps`,
      `energy_score`, `coverage` (K, L), `rank_counts` (K, bins)), None unless a
      `truth` was given with `scores=True` and the belief is an ensemble;
    - `ensembles`, `forecast_ensembles`: the analysis and forecast members
      `(K, n, *state)`, None unless `save_ensembles=True` (what `filters.rts_smoother`
      needs);
    - `smoothed_mean`, `smoothed_std`: a smoother's (`filters.EnKS`) estimate of each
      time given the observations up to `lag` times later (the last `lag` times: up to
      the end), None for filters.
    """

    times: Float[Array, " K"]
    forecast_mean: Float[Array, " K *state"]
    analysis_mean: Float[Array, " K *state"]
    analysis_std: Float[Array, " K *state"]
    forecast_spread: Float[Array, " K"]
    analysis_spread: Float[Array, " K"]
    observed: Int[Array, " K"]
    log_likelihood: Float[Array, " K"]
    effective_size: Float[Array, " K"] | None
    innovation_ratio: Float[Array, " K"] | None
    rmse_forecast: Float[Array, " K"] | None
    rmse_analysis: Float[Array, " K"] | None
    scores: dict[str, Array] | None
    ensembles: Float[Array, "K n *state"] | None
    forecast_ensembles: Float[Array, "K n *state"] | None
    smoothed_mean: Float[Array, " K *state"] | None
    smoothed_std: Float[Array, " K *state"] | None
    belief: AbstractBelief
    result: RESULTS


@eqx.filter_jit
def run_cycles(
    filter,
    dynamics,
    observations,
    belief,
    t_start,
    truth,
    start,
    key,
    result,
    save_ensembles,
    scores,
    mesh=None,
    over="members",
):
    """Scan over the records of `observations`; cycle `i` is global cycle `start + i`.
    With a `mesh` the belief stays sharded as `over` says and the per-cycle outputs are
    replicated (`_sharding`)."""
    ndim = len(belief.mean().shape)

    def _step(carry, inputs):
        belief, t_prev, result = carry
        cycle, t, y, mask, noise_std, x_true = inputs
        # Keys are a function of the global cycle index, so chunked and resumed runs
        # give the same numbers as one long run.
        forecast_key, update_key = jr.split(jr.fold_in(key, cycle))
        forecast = filter.forecast(belief, dynamics, t_prev, t, key=forecast_key)
        observation = observations.observation_at(noise_std)
        analysis = filter.update(forecast, observation, y, mask, key=update_key)
        analysis = constrain(analysis, mesh, over)
        mean_f, mean_a = forecast.mean(), analysis.mean()
        # Keep the first failure only.
        bad_f = ~jnp.all(jnp.isfinite(mean_f))
        bad_a = ~jnp.all(jnp.isfinite(mean_a))
        ok = result == RESULTS.successful
        result = RESULTS.where(ok & bad_f, RESULTS.forecast_not_finite, result)
        ok = result == RESULTS.successful
        result = RESULTS.where(ok & bad_a, RESULTS.analysis_not_finite, result)
        out = dict(
            forecast_mean=mean_f,
            analysis_mean=mean_a,
            analysis_std=jnp.sqrt(analysis.variance()),
            forecast_spread=forecast.spread(),
            analysis_spread=analysis.spread(),
            observed=jnp.sum(mask, dtype=jnp.int32),
            log_likelihood=log_evidence(filter, forecast, observation, y, mask),
        )
        ens_f, ens_a = as_ensemble(forecast), as_ensemble(analysis)
        if ens_a is not None:
            out["effective_size"] = ens_a.effective_size()
        if ens_f is not None or isinstance(forecast, GaussianBelief):
            ratio_of = forecast if ens_f is None else ens_f
            out["innovation_ratio"] = innovation_ratio(ratio_of, observation, y, mask)
        if x_true is not None:
            out["rmse_forecast"] = rmse(mean_f, x_true, ndim)
            out["rmse_analysis"] = rmse(mean_a, x_true, ndim)
            if scores and ens_a is not None:
                out["scores"] = cycle_scores(ens_a, x_true)
        if save_ensembles:
            out["ensembles"] = ens_a.members
            out["forecast_ensembles"] = ens_f.members
        if isinstance(analysis, AbstractLaggedEnsemble):  # the estimate of `lag` times ago
            smoothed = analysis.smoothed()
            out["smoothed_mean"] = smoothed.mean()
            out["smoothed_std"] = jnp.sqrt(smoothed.variance())
        members = {k: out.pop(k) for k in ("ensembles", "forecast_ensembles") if k in out}
        return (analysis, t, result), {**replicate(out, mesh), **members}

    k = observations.times.shape[0]
    cycles = start + jnp.arange(k, dtype=jnp.int32)
    inputs = (
        cycles,
        observations.times,
        observations.values,
        observations.mask,
        observations.noise_std,
        truth,
    )
    (belief, _, result), out = lax.scan(_step, (belief, t_start, result), inputs)
    return belief, result, out


def initial_result() -> RESULTS:
    """`RESULTS.successful` as an array-valued code (a Python-valued one would be
    static under `filter_jit` and recompile every chunk)."""
    return RESULTS.where(jnp.asarray(False), RESULTS.successful, RESULTS.successful)


def check_key(key) -> None:
    """A PRNG key, typed (`jr.key`) or raw (`jr.PRNGKey`), or a clear TypeError."""
    is_typed = isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    is_raw = (
        isinstance(key, jax.Array | np.ndarray) and key.dtype == np.uint32 and key.shape == (2,)
    )
    if not (is_typed or is_raw):
        raise TypeError(
            f"`key` must be a JAX PRNG key such as `jax.random.key(0)`; got {key!r:.60}."
        )


def check_run_inputs(
    filter, dynamics, observation, belief0, dtype, *, truth=None, records=None, save_ensembles=False
):
    """The checks every run makes before compiling anything; returns `(state_shape,
    truth)` (the truth as an array, or None).

    `observation` is the operator of the records, `dtype` the dtype of their values,
    `records` their number (None for a stream: then no `truth` is allowed)."""
    if not isinstance(filter, AbstractFilter):
        raise TypeError(f"`filter` must be an AbstractFilter; got {type(filter).__name__}.")
    if not isinstance(dynamics, AbstractDynamics):
        raise TypeError(f"`dynamics` must be an AbstractDynamics; got {type(dynamics).__name__}.")
    if not isinstance(belief0, AbstractBelief):
        raise TypeError(
            "`belief0` must be a belief (e.g. `filter.init(ensemble, key=key)`); got "
            f"{type(belief0).__name__}."
        )
    state_shape = tuple(dynamics.state_shape)
    mean0 = belief0.mean()
    if tuple(mean0.shape) != state_shape:
        raise ValueError(
            f"`belief0` has state shape {tuple(mean0.shape)}, but the dynamics' state "
            f"shape is {state_shape}."
        )
    if dtype is not None and jnp.dtype(mean0.dtype) != jnp.dtype(dtype):
        raise TypeError(
            f"`belief0` is {mean0.dtype} but the observations are {jnp.dtype(dtype)}; build "
            "both with one precision (enable float64 with "
            "`jax.config.update('jax_enable_x64', True)` before creating any array)."
        )
    check_finite(mean0, "belief0 (its mean)")
    if as_ensemble(belief0) is not None:
        members = check_finite(as_ensemble(belief0).members, "belief0.members")
        if members.shape[0] > 1 and is_concrete(members) and np.ptp(members, axis=0).max() == 0:
            import warnings

            warnings.warn(
                f"`belief0`'s {members.shape[0]} members are all identical (zero spread): an "
                "ensemble filter learns nothing from the observations unless the dynamics "
                "are stochastic. Start from perturbed members (e.g. climatology).",
                stacklevel=3,
            )
    name = type(observation).__name__
    try:
        out = jax.eval_shape(observation.apply, jax.ShapeDtypeStruct(state_shape, mean0.dtype))
    except Exception as e:
        message = " ".join(str(e).split())[:200]
        raise ValueError(
            f"The observation operator {name} does not accept a state of the dynamics' shape "
            f"{state_shape}: {message}"
        ) from None
    if tuple(out.shape) != (observation.obs_dim,):
        raise ValueError(
            f"The observation operator {name} does not accept a state of the dynamics' shape "
            f"{state_shape}: it maps it to shape {tuple(out.shape)}, but its noise has "
            f"{observation.obs_dim} values (built for another state size?)."
        )
    gridded = isinstance(observation, Identity | Subsample | Interpolate)
    if gridded and tuple(observation.state_shape) != state_shape:
        raise ValueError(
            f"The observation operator {name} does not accept a state of the dynamics' shape "
            f"{state_shape}: it was built for state shape {tuple(observation.state_shape)}."
        )
    if truth is not None:
        if records is None:
            raise ValueError("`truth` needs an ObservationSeries (aligned by index), not a stream.")
        truth = jnp.asarray(truth)
        check_shape(truth, (records, *state_shape), "truth", "(K, *state_shape)")
    if save_ensembles and as_ensemble(belief0) is None:
        raise ValueError("`save_ensembles=True` needs an ensemble belief.")
    return state_shape, truth


def check_t0(t0, times) -> None:
    """`t0` must precede the first observation time (when both are concrete)."""
    if times.shape[0] and is_concrete(t0) and is_concrete(times):
        if not float(t0) < float(times[0]):
            raise ValueError(
                f"`t0` ({float(t0)}) must be earlier than the first observation time "
                f"({float(times[0])})."
            )


def make_solution(out: dict, belief, result, throw: bool) -> Solution:
    """The `Solution` of a run from its per-cycle outputs; raises on failure if `throw`."""
    if throw and is_concrete(result._value) and result != RESULTS.successful:
        raise RuntimeError(RESULTS[result])
    if throw and not is_concrete(result._value):
        belief = result.error_if(belief, result != RESULTS.successful)
    return Solution(
        times=out["times"],
        forecast_mean=out.get("forecast_mean"),
        analysis_mean=out.get("analysis_mean"),
        analysis_std=out.get("analysis_std"),
        forecast_spread=out.get("forecast_spread"),
        analysis_spread=out.get("analysis_spread"),
        observed=out.get("observed"),
        log_likelihood=out.get("log_likelihood"),
        effective_size=out.get("effective_size"),
        innovation_ratio=out.get("innovation_ratio"),
        rmse_forecast=out.get("rmse_forecast"),
        rmse_analysis=out.get("rmse_analysis"),
        scores=out.get("scores"),
        ensembles=out.get("ensembles"),
        forecast_ensembles=out.get("forecast_ensembles"),
        **_smoothed(out, belief),
        belief=belief,
        result=result,
    )


def _smoothed(out: dict, belief) -> dict:
    """A smoother's per-cycle estimates of `lag` times ago, moved to the times they
    belong to; the last `lag` times from the final belief (None for filters)."""
    if "smoothed_mean" not in out or not isinstance(belief, AbstractLaggedEnsemble):
        return dict(smoothed_mean=None, smoothed_std=None)
    lag = min(belief.lag, out["smoothed_mean"].shape[0])
    # The final belief: times K-lag..K-1 are lagged[lag-2], ..., lagged[0], current.
    tail = [Ensemble(m, belief.log_weights) for m in belief.lagged[: lag - 1][::-1]]
    tail.append(belief.ensemble)
    means = jnp.stack([e.mean() for e in tail])
    stds = jnp.stack([jnp.sqrt(e.variance()) for e in tail])
    return dict(
        smoothed_mean=jnp.concatenate([out["smoothed_mean"][belief.lag :], means]),
        smoothed_std=jnp.concatenate([out["smoothed_std"][belief.lag :], stds]),
    )


def assimilate(
    filter: AbstractFilter,
    dynamics: AbstractDynamics,
    series: ObservationSeries,
    belief0: AbstractBelief,
    *,
    key: PRNGKeyArray,
    t0: RealScalarLike = 0.0,
    truth: Float[Array, " K *state"] | None = None,
    save_ensembles: bool = False,
    scores: bool = True,
    throw: bool = True,
    mesh: Mesh | None = None,
    over: str = "members",
) -> Solution:
    r"""Run a filter through a series of observations: one `jax.lax.scan`, pure and
    jit-able (it writes no file and shows no progress; for that, and for live streams,
    checkpoints and resuming, use `assimilate_stream`).

    For each observation time $t_k$: `forecast` from $t_{k-1}$ to $t_k$ (with
    $t_{-1}$ = `t0`), then `update` with the values observed at $t_k$ (missing values
    masked out; a record's own error standard deviations, if any, replace the
    operator's noise).

    **Arguments:**

    - `filter`: any `AbstractFilter`.
    - `dynamics`: the model, an `AbstractDynamics`.
    - `series`: an `ObservationSeries` (e.g. from `simulate` or `read_observations`).
    - `belief0`: the belief at time `t0`, usually `filter.init(ensemble, key=...)`.
    - `key`: a PRNG key. The same key gives the same numbers; cycle `k` uses
      `fold_in(key, k)`, so chunked, streamed and resumed runs give the same numbers.
    - `t0`: the time of `belief0`; must precede the first observation time.
    - `truth`: optional `(K, *state)` true states at the observation times; if given,
      per-cycle RMSEs are returned.
    - `scores`: with a `truth` and an ensemble belief, also compute the probabilistic
      scores of every analysis (CRPS, energy score, coverage, rank counts; see
      `metrics.cycle_scores`). They cost about as much as an EnKF update at small `n`;
      turn them off for timing runs.
    - `save_ensembles`: also return the analysis and forecast members of every cycle
      (memory: `2 K n d` numbers).
    - `throw`: raise if the run fails (non-finite forecast or analysis). With
      `throw=False` the failure is returned in `Solution.result` instead, which suits
      runs vmapped over settings.
    - `mesh`: a device mesh (`assimilax.device_mesh()`) to shard the belief over, its
      members (`over="members"`) or its first state axis (`over="state"`); the numbers
      are those of a one-device run up to the order of floating-point sums. In a
      multi-process run every process calls `assimilate` with the same arguments.

    **Returns:** a `Solution`.

    **Raises:** `ValueError`/`TypeError` for bad input (naming the argument: shapes,
    dtypes, NaN in the initial belief, a `t0` after the first observation, a key that
    is not a key); `RuntimeError` (equinox's) for a failed run when `throw=True`.
    """
    if not isinstance(series, ObservationSeries):
        raise TypeError(
            f"`series` must be an ObservationSeries; got {type(series).__name__} (for a "
            "stream, output files or checkpoints use `assimilate_stream`)."
        )
    check_key(key)
    if len(series) == 0:
        raise ValueError("`series` holds no records to assimilate.")
    _, truth = check_run_inputs(
        filter, dynamics, series.observation, belief0, series.values.dtype,
        truth=truth, records=len(series), save_ensembles=save_ensembles,
    )  # fmt: skip
    t0 = jnp.asarray(t0, series.times.dtype)
    check_t0(t0, series.times)
    first = jnp.asarray(0, jnp.int32)
    belief, result, out = run_cycles(
        filter, dynamics, series, shard(belief0, mesh, over), t0, truth, first, key,
        initial_result(), save_ensembles, scores, mesh, over,
    )  # fmt: skip
    out["times"] = series.times
    return make_solution(out, belief, result, throw)
