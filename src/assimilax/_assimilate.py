"""The cycle loop: forecast, update, diagnostics, as one `lax.scan`."""

import hashlib
import os
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jax import lax

from ._belief import AbstractBelief
from ._checks import check_finite, check_shape, is_concrete
from ._custom_types import Array, Float, Int, PRNGKeyArray, RealScalarLike
from ._ensemble import Ensemble
from ._io import AppendableNetCDF, fingerprint, load_checkpoint, save_checkpoint
from ._results import RESULTS
from ._streams import ObservationSeries, ObservationStream, batch_records
from .dynamics import AbstractDynamics
from .filters import AbstractFilter
from .metrics import cycle_scores, rmse


class Solution(eqx.Module):
    """The output of `assimilate`: per-cycle diagnostics and the final belief.

    Per-cycle arrays have a leading axis of length `K` (the number of observation
    times):

    - `forecast_mean`, `analysis_mean`, `analysis_std` (per component), and the RMS
      spreads `forecast_spread`, `analysis_spread`;
    - `observed`: the number of values observed (not missing) per cycle;
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
    observed: Int[Array, " K"]
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
        cycle, t, y, mask, noise_std, x_true = inputs
        # Keys are a function of the global cycle index, so chunked and resumed runs
        # give the same numbers as one long run.
        forecast_key, update_key = jr.split(jr.fold_in(key, cycle))
        forecast = filter.forecast(belief, dynamics, t_prev, t, key=forecast_key)
        observation = observations.observation_at(noise_std)
        analysis = filter.update(forecast, observation, y, mask, key=update_key)
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


def _series_chunks(series: ObservationSeries, truth, start: int, size: int):
    """`(first record, chunk, truth chunk)` of a series, from record `start` on."""
    for lo in range(start, len(series), size):
        hi = min(lo + size, len(series))
        yield lo, series[lo:hi], None if truth is None else truth[lo:hi]


def _digest(digest, series: ObservationSeries) -> None:
    """Add the records of `series` to a running hash, record by record (so the hash
    does not depend on how the records were chunked)."""
    fields = [np.asarray(series.times), np.asarray(series.values), np.asarray(series.mask)]
    if series.noise_std is not None:
        fields.append(np.asarray(series.noise_std))
    for i in range(len(series)):
        for field in fields:
            digest.update(np.ascontiguousarray(field[i]).tobytes())


def _skip_records(stream: ObservationStream, records, start: int, digest) -> None:
    """Consume the first `start` records of `records` (assimilated before a resume),
    hashing them into `digest` to check that they are the records the checkpoint saw."""
    skipped = []
    for i in range(start):
        record = next(records, None)
        if record is None:
            raise ValueError(
                f"The stream ended after {i} records, but the checkpoint has assimilated "
                f"{start}: resume with the same stream."
            )
        skipped.append(record)
        if len(skipped) == 1000 or i == start - 1:
            _digest(digest, batch_records(stream.observation, skipped, i + 1 - len(skipped)))
            skipped = []


def _stream_chunks(stream: ObservationStream, records, start: int, size: int):
    """`(first record, chunk, None)` of the rest of a stream, `size` records at a time."""
    lo, buffer = start, []
    for record in records:
        buffer.append(record)
        if len(buffer) == size:
            yield lo, batch_records(stream.observation, buffer, lo), None
            lo, buffer = lo + size, []
    if buffer:
        yield lo, batch_records(stream.observation, buffer, lo), None


_OUTPUT_DOCS = {
    "forecast_mean": "forecast ensemble mean",
    "analysis_mean": "analysis ensemble mean",
    "analysis_std": "analysis standard deviation per component",
    "forecast_spread": "RMS spread of the forecast",
    "analysis_spread": "RMS spread of the analysis",
    "observed": "number of values observed (not missing)",
    "effective_size": "effective sample size of the analysis weights, 1/sum(w^2)",
    "rmse_forecast": "RMSE of the forecast mean against the truth",
    "rmse_analysis": "RMSE of the analysis mean against the truth",
}


def _output_layout(out: dict, state_shape, attrs: dict):
    """The variables, dimensions and coordinates of the output file for outputs `out`
    of one chunk (the first)."""
    sdims = ("x",) if len(state_shape) == 1 else tuple(f"x{i}" for i in range(len(state_shape)))
    variables = {"time": (("time",), np.asarray(out["times"]).dtype, {"units": "model time units"})}
    for name, doc in _OUTPUT_DOCS.items():
        if name in out:
            value = np.asarray(out[name])
            dims = ("time", *sdims) if value.ndim > 1 else ("time",)
            variables[name] = (dims, value.dtype, {"long_name": doc})
    dims = dict(zip(sdims, state_shape, strict=True))
    coords = {d: np.arange(n) for d, n in dims.items()}
    return variables, dims, coords, attrs


def assimilate(
    filter: AbstractFilter,
    dynamics: AbstractDynamics,
    observations: ObservationSeries | ObservationStream,
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
    out: str | os.PathLike | None = None,
    out_attrs: dict | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> Solution:
    r"""Run a filter through a series or a stream of observations.

    For each observation time $t_k$: `forecast` from $t_{k-1}$ to $t_k$ (with
    $t_{-1}$ = `t0`), then `update` with the values observed at $t_k$ (missing values
    masked out; a record's own error standard deviations, if any, replace the
    operator's noise). The cycles run as `jax.lax.scan`s over chunks of records, each
    chunk one compiled call: chunks of the same length compile once.

    **Arguments:**

    - `filter`: any `AbstractFilter`.
    - `dynamics`: the model, an `AbstractDynamics`.
    - `observations`: an `ObservationSeries` (all records known up front, e.g. read
      from a file with `read_observations`) or an `ObservationStream` (records pulled
      one by one from any iterable, e.g. a generator fed by a sensor).
    - `belief0`: the belief at time `t0`, usually `filter.init(ensemble, key=...)`.
    - `key`: a PRNG key. The same key gives the same numbers; cycle `k` uses
      `fold_in(key, k)`, so chunked, streamed and resumed runs give the same numbers.
    - `t0`: the time of `belief0`; must precede the first observation time.
    - `truth`: optional `(K, *state)` true states at the observation times (series
      only); if given, per-cycle RMSEs are returned.
    - `scores`: with a `truth` and an ensemble belief, also compute the probabilistic
      scores of every analysis (CRPS, energy score, coverage, rank counts; see
      `metrics.cycle_scores`). They cost about as much as an EnKF update at small `n`;
      turn them off for timing runs.
    - `save_ensembles`: also return the analysis members of every cycle (memory:
      `K * n * d` numbers).
    - `throw`: raise if the run fails (non-finite forecast or analysis). With
      `throw=False` the failure is returned in `Solution.result` instead, which suits
      runs vmapped over settings.
    - `chunk_size`: records per compiled scan. Default: all of a series at once (100
      with `progress`, `out` or `checkpoint`); 1 for a stream, so every record is
      assimilated as soon as it arrives.
    - `progress`: show a progress bar (over records).
    - `out`: a netCDF file to which the per-cycle diagnostics (`time`, forecast and
      analysis means, analysis std, spreads, number observed, ESS, RMSEs) are
      appended after every chunk. Between appends the file is always complete and
      readable; `out_attrs` are written as its global attributes.
    - `checkpoint`: a file holding the belief, the stream position, the key and the
      run's fingerprint, rewritten atomically every `checkpoint_every` records (at the
      end of the first chunk at or past each multiple) and when the run stops early
      (an exception from the stream, Ctrl-C, SIGTERM once `terminate_as_interrupt` is
      installed as the CLI does): nothing already assimilated is lost.
    - `resume`: continue from `checkpoint` (which must exist and come from the same
      filter, model, observation operator, initial belief structure and key) with the
      same `observations` from their start: the records already assimilated are
      skipped, `out` is cut back to them and appended to. The result is bit-identical
      to an uninterrupted run with the same chunks.

    **Returns:**

    A `Solution` over the records assimilated by this call (after the checkpoint's,
    when resuming).

    **Raises:**

    `ValueError`/`TypeError` for bad input (shapes, NaN in the initial belief, a `t0`
    after the first observation, times that do not increase across a stream, a
    checkpoint from another run); `RuntimeError` (equinox's) for a failed run when
    `throw=True`.
    """
    # Error checking -----------------------------------------------------------------
    if not isinstance(filter, AbstractFilter):
        raise TypeError(f"`filter` must be an AbstractFilter; got {type(filter).__name__}.")
    if not isinstance(dynamics, AbstractDynamics):
        raise TypeError(f"`dynamics` must be an AbstractDynamics; got {type(dynamics).__name__}.")
    is_stream = isinstance(observations, ObservationStream)
    if not (is_stream or isinstance(observations, ObservationSeries)):
        raise TypeError(
            "`observations` must be an ObservationSeries or an ObservationStream; got "
            f"{type(observations).__name__}."
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
    k = None if is_stream else len(observations)
    if truth is not None:
        if is_stream:
            raise ValueError("`truth` needs an ObservationSeries (aligned by index), not a stream.")
        truth = jnp.asarray(truth)
        check_shape(truth, (k, *state_shape), "truth", "(K, *state_shape)")
    t0 = jnp.asarray(t0, jnp.result_type(float))
    if save_ensembles and not isinstance(belief0, Ensemble):
        raise ValueError("`save_ensembles=True` needs an ensemble belief.")
    persistent = out is not None or checkpoint is not None
    if chunk_size is None:
        chunk_size = 1 if is_stream else (100 if progress or persistent else max(k, 1))
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive int; got {chunk_size}.")
    if checkpoint_every is not None and (checkpoint is None or checkpoint_every < 1):
        raise ValueError(
            "`checkpoint_every` needs a `checkpoint` file and must be a positive int; got "
            f"{checkpoint_every!r}."
        )
    if resume and checkpoint is None:
        raise ValueError("`resume=True` needs the `checkpoint` file to resume from.")
    operator = observations.observation
    run_id = dict(fingerprint=fingerprint(filter, dynamics, operator), key=_key_data(key))
    writer = None if out is None else AppendableNetCDF(out)

    concrete = not is_stream and k > 0 and is_concrete(t0) and is_concrete(observations.times)
    if not resume and concrete and not float(t0) < float(observations.times[0]):
        raise ValueError(
            f"`t0` ({float(t0)}) must be earlier than the first observation time "
            f"({float(observations.times[0])})."
        )

    # Where to start: the beginning or a checkpoint --------------------------------------
    # Array-valued from the start (a Python int `start` or a Python-valued result would
    # be static under `filter_jit`, recompiling every chunk).
    result = RESULTS.where(jnp.asarray(False), RESULTS.successful, RESULTS.successful)
    belief, t_start, start = belief0, t0, 0
    if resume:
        (belief, t_start, result), meta = load_checkpoint(checkpoint, (belief0, t0, result))
        changed = (("fingerprint", "filter, model or observation operator"), ("key", "key"))
        for name, what in changed:
            if meta.get(name) != run_id[name]:
                raise ValueError(
                    f"The checkpoint {str(checkpoint)!r} comes from a run with another {what}; "
                    "resume with the same settings (or start afresh without resume)."
                )
        start = int(meta["records"])
        if writer is not None:
            if not writer.path.is_file():
                raise ValueError(f"Cannot resume: the output file {str(out)!r} is missing.")
            written = len(writer)
            if written < start:
                raise ValueError(
                    f"Cannot resume: {str(out)!r} holds {written} records but the checkpoint "
                    f"{start}; was it replaced?"
                )
            if written > start:
                writer.truncate(start)
    elif checkpoint is not None:  # a stale checkpoint must not be resumed by mistake
        Path(checkpoint).unlink(missing_ok=True)
    # A running hash of the records assimilated: a resume must see the same ones.
    digest = hashlib.sha256()
    if is_stream:
        records = iter(observations.records)
        _skip_records(observations, records, start, digest)
        chunks = _stream_chunks(observations, records, start, chunk_size)
    else:
        _digest(digest, observations[:start])
        chunks = _series_chunks(observations, truth, start, chunk_size)
    if resume and digest.hexdigest() != meta.get("records_sha256"):
        raise ValueError(
            f"The first {start} records of `observations` differ from those the checkpoint "
            f"{str(checkpoint)!r} assimilated; resume with the same observations."
        )

    # The loop, chunk by chunk -------------------------------------------------------
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = None if is_stream else k - start
        bar = tqdm(total=total, unit="cycle", desc=type(filter).__name__, leave=False)
    outputs = []
    saved = start

    # Everything a checkpoint needs, replaced in one assignment after each chunk (an
    # interrupt can never see half of it).
    state = (belief, result, t_start, digest, start)

    def save():
        belief, result, t_start, digest, done = state
        meta = dict(run_id, records=done, records_sha256=digest.hexdigest(), out=str(out or ""))
        save_checkpoint(checkpoint, (belief, t_start, result), meta)

    try:
        for lo, chunk, truth_chunk in chunks:
            if is_concrete(t_start) and not float(chunk.times[0]) > float(t_start):
                raise ValueError(
                    f"Observation record {lo} is at time {float(chunk.times[0])!r}, not after "
                    f"the previous time {float(t_start)!r} (times must increase strictly; "
                    "`t0` must precede the first record)."
                )
            new_belief, new_result, chunk_out = _run_cycles(
                filter,
                dynamics,
                chunk,
                belief,
                t_start,
                truth_chunk,
                jnp.asarray(lo, jnp.int32),
                key,
                result,
                save_ensembles,
                scores,
            )
            chunk_out["times"] = chunk.times
            chunk_digest = digest.copy()
            _digest(chunk_digest, chunk)
            if writer is not None:
                chunk_out = jax.device_get(chunk_out)
                if lo == 0:
                    writer.create(*_output_layout(chunk_out, state_shape, dict(out_attrs or {})))
                writer.append(
                    {
                        "time" if n == "times" else n: v
                        for n, v in chunk_out.items()
                        if n == "times" or n in _OUTPUT_DOCS
                    }
                )
            done = lo + len(chunk)
            state = (new_belief, new_result, chunk.times[-1], chunk_digest, done)
            belief, result, t_start, digest, done = state
            outputs.append(chunk_out)
            every = checkpoint_every
            if every is not None and done // every > saved // every:
                save()
                saved = done
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
        if checkpoint is not None and state[-1] > saved:
            save()
    if not outputs:
        if start > 0:
            raise ValueError(
                f"Nothing left to assimilate: the checkpoint already covers all {start} records."
            )
        raise ValueError("`observations` holds no records to assimilate.")
    out = jtu.tree_map(lambda *xs: jnp.concatenate([jnp.asarray(x) for x in xs]), *outputs)
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
        effective_size=out.get("effective_size"),
        rmse_forecast=out.get("rmse_forecast"),
        rmse_analysis=out.get("rmse_analysis"),
        scores=out.get("scores"),
        ensembles=out.get("ensembles"),
        belief=belief,
        result=result,
    )


def _key_data(key) -> list[int]:
    """The key's bits (typed `jr.key` or raw `jr.PRNGKey`), to recognise it on resume."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jr.key_data(key)
    return np.asarray(key).ravel().tolist()
