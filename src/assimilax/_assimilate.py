"""The cycle loop: forecast, update, diagnostics, as one `lax.scan`."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
from jax import lax

from ._belief import AbstractBelief
from ._checks import check_finite, check_shape, is_concrete
from ._custom_types import Array, Float, PRNGKeyArray, RealScalarLike
from ._ensemble import Ensemble
from ._results import RESULTS
from ._streams import ObservationSeries
from .dynamics import AbstractDynamics
from .filters import AbstractFilter
from .metrics import cycle_scores, rmse


class Solution(eqx.Module):
    """The output of `assimilate`: per-cycle diagnostics and the final belief.

    Per-cycle arrays have a leading axis of length `K` (the number of observation
    times):

    - `forecast_mean`, `analysis_mean`, `analysis_std` (per component), and the RMS
      spreads `forecast_spread`, `analysis_spread`;
    - `effective_size`: the analysis ensemble's effective sample size `1 / sum w^2`
      (`n` for EnKFs; a particle filter's weight collapse shows here), None for
      non-ensemble beliefs;
    - `rmse_forecast`, `rmse_analysis`: None unless a `truth` was given;
    - `scores`: the analysis ensemble's `metrics.cycle_scores` (`crps`,
      `energy_score`, `coverage` (K, L), `rank_counts` (K, bins)), None unless a
      `truth` was given with `scores=True` and the belief is an ensemble;
    - `ensembles`: the analysis members `(K, n, *state)`, None unless
      `save_ensembles=True`.
    """

    times: Float[Array, " K"]
    forecast_mean: Float[Array, " K *state"]
    analysis_mean: Float[Array, " K *state"]
    analysis_std: Float[Array, " K *state"]
    forecast_spread: Float[Array, " K"]
    analysis_spread: Float[Array, " K"]
    effective_size: Float[Array, " K"] | None
    rmse_forecast: Float[Array, " K"] | None
    rmse_analysis: Float[Array, " K"] | None
    scores: dict[str, Array] | None
    ensembles: Float[Array, "K n *state"] | None
    belief: AbstractBelief
    result: RESULTS


@eqx.filter_jit
def _run_cycles(
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
):
    """Scan over the records of `observations`; cycle `i` is global cycle `start + i`."""
    ndim = len(belief.mean().shape)

    def _step(carry, inputs):
        belief, t_prev, result = carry
        cycle, t, y, mask, x_true = inputs
        # Keys are a function of the global cycle index, so chunked and resumed runs
        # give the same numbers as one long run.
        forecast_key, update_key = jr.split(jr.fold_in(key, cycle))
        forecast = filter.forecast(belief, dynamics, t_prev, t, key=forecast_key)
        analysis = filter.update(forecast, observations.observation, y, mask, key=update_key)
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
        )
        if isinstance(analysis, Ensemble):
            out["effective_size"] = analysis.effective_size()
        if x_true is not None:
            out["rmse_forecast"] = rmse(mean_f, x_true, ndim)
            out["rmse_analysis"] = rmse(mean_a, x_true, ndim)
            if scores and isinstance(analysis, Ensemble):
                out["scores"] = cycle_scores(analysis, x_true)
        if save_ensembles:
            out["ensembles"] = analysis.members
        return (analysis, t, result), out

    k = observations.times.shape[0]
    cycles = start + jnp.arange(k, dtype=jnp.int32)
    inputs = (cycles, observations.times, observations.values, observations.mask, truth)
    (belief, _, result), out = lax.scan(_step, (belief, t_start, result), inputs)
    return belief, result, out


def _chunk(observations: ObservationSeries, lo: int, hi: int) -> ObservationSeries:
    """The records `lo:hi` of a series (same operator)."""
    return eqx.tree_at(
        lambda s: (s.times, s.values, s.mask),
        observations,
        (
            observations.times[lo:hi],
            observations.values[lo:hi],
            observations.mask[lo:hi],
        ),
    )


def assimilate(
    filter: AbstractFilter,
    dynamics: AbstractDynamics,
    observations: ObservationSeries,
    belief0: AbstractBelief,
    *,
    key: PRNGKeyArray,
    t0: RealScalarLike = 0.0,
    truth: Float[Array, " K *state"] | None = None,
    save_ensembles: bool = False,
    scores: bool = True,
    throw: bool = True,
    chunk_size: int | None = None,
    progress: bool = False,
) -> Solution:
    r"""Run a filter through a series of observations.

    For each observation time $t_k$: `forecast` from $t_{k-1}$ to $t_k$ (with
    $t_{-1}$ = `t0`), then `update` with the values observed at $t_k$. The cycles run
    as one `jax.lax.scan` (per chunk), compiled once.

    **Arguments:**

    - `filter`: any `AbstractFilter`.
    - `dynamics`: the model, an `AbstractDynamics`.
    - `observations`: an `ObservationSeries` (operator, times, values, mask).
    - `belief0`: the belief at time `t0`, usually `filter.init(ensemble, key=...)`.
    - `key`: a PRNG key. The same key gives the same numbers.
    - `t0`: the time of `belief0`; must precede the first observation time.
    - `truth`: optional `(K, *state)` true states at the observation times; if given,
      per-cycle RMSEs are returned.
    - `scores`: with a `truth` and an ensemble belief, also compute the probabilistic
      scores of every analysis (CRPS, energy score, coverage, rank counts; see
      `metrics.cycle_scores`). They cost about as much as an EnKF update at small `n`;
      turn them off for timing runs.
    - `save_ensembles`: also return the analysis members of every cycle (memory:
      `K * n * d` numbers).
    - `throw`: raise if the run fails (non-finite forecast or analysis). With
      `throw=False` the failure is returned in `Solution.result` instead, which suits
      runs vmapped over settings.
    - `chunk_size`: run the cycles in chunks of this many (each chunk one compiled
      scan; a remainder chunk compiles once more). Chunked runs give the same numbers.
    - `progress`: show a progress bar over chunks (default chunks of 100 cycles).

    **Returns:**

    A `Solution`.

    **Raises:**

    `ValueError`/`TypeError` for bad input (shapes, NaN in the initial belief, a `t0`
    after the first observation); `RuntimeError` (equinox's) for a failed run when
    `throw=True`.
    """
    # Error checking -----------------------------------------------------------------
    if not isinstance(filter, AbstractFilter):
        raise TypeError(f"`filter` must be an AbstractFilter; got {type(filter).__name__}.")
    if not isinstance(dynamics, AbstractDynamics):
        raise TypeError(f"`dynamics` must be an AbstractDynamics; got {type(dynamics).__name__}.")
    if not isinstance(observations, ObservationSeries):
        raise TypeError(
            f"`observations` must be an ObservationSeries; got {type(observations).__name__}."
        )
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
    check_finite(mean0, "belief0 (its mean)")
    if isinstance(belief0, Ensemble):
        check_finite(belief0.members, "belief0.members")
    k = len(observations)
    if truth is not None:
        truth = jnp.asarray(truth)
        check_shape(truth, (k, *state_shape), "truth", "(K, *state_shape)")
    t0 = jnp.asarray(t0, observations.times.dtype)
    if is_concrete(t0) and is_concrete(observations.times) and k > 0:
        if not float(t0) < float(observations.times[0]):
            raise ValueError(
                f"`t0` ({float(t0)}) must be earlier than the first observation time "
                f"({float(observations.times[0])})."
            )
    if save_ensembles and not isinstance(belief0, Ensemble):
        raise ValueError("`save_ensembles=True` needs an ensemble belief.")
    if chunk_size is None:
        chunk_size = 100 if progress else max(k, 1)
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive int; got {chunk_size}.")

    # The loop, chunk by chunk -------------------------------------------------------
    bounds = list(range(0, k, chunk_size)) + [k]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=k, unit="cycle", desc=type(filter).__name__, leave=False)
    # Array-valued from the start (a Python int `start` or a Python-valued result would
    # be static under `filter_jit`, recompiling every chunk).
    result = RESULTS.where(jnp.asarray(False), RESULTS.successful, RESULTS.successful)
    belief, t_start = belief0, t0
    outputs = []
    try:
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            belief, result, out = _run_cycles(
                filter,
                dynamics,
                _chunk(observations, lo, hi),
                belief,
                t_start,
                None if truth is None else truth[lo:hi],
                jnp.asarray(lo, jnp.int32),
                key,
                result,
                save_ensembles,
                scores,
            )
            t_start = observations.times[hi - 1]
            outputs.append(out)
            if bar is not None:
                bar.update(hi - lo)
    finally:
        if bar is not None:
            bar.close()
    out = jtu.tree_map(lambda *xs: jnp.concatenate(xs), *outputs) if outputs else {}
    if throw and is_concrete(result._value) and result != RESULTS.successful:
        raise RuntimeError(RESULTS[result])
    if throw and not is_concrete(result._value):
        belief = result.error_if(belief, result != RESULTS.successful)
    return Solution(
        times=observations.times,
        forecast_mean=out.get("forecast_mean"),
        analysis_mean=out.get("analysis_mean"),
        analysis_std=out.get("analysis_std"),
        forecast_spread=out.get("forecast_spread"),
        analysis_spread=out.get("analysis_spread"),
        effective_size=out.get("effective_size"),
        rmse_forecast=out.get("rmse_forecast"),
        rmse_analysis=out.get("rmse_analysis"),
        scores=out.get("scores"),
        ensembles=out.get("ensembles"),
        belief=belief,
        result=result,
    )
