r"""Tuning filter settings by gradient, from the observations alone (no truth).

The loss is a proper score of each forecast against the observation it is about to
assimilate, averaged over the cycles of a series:

- `'innovation'`: the negative log-likelihood of the innovation under the forecast's
  Gaussian fit, $-\log N(y;\ \overline{h(x)},\ \operatorname{cov} h(x) + R)$ (in the
  whitened ensemble space: $O(n^2 m + n^3)$ per cycle); the classical target of
  adaptive inflation and of maximum-likelihood tuning;
- `'crps'`: the CRPS of the observed forecast members plus observation noise (drawn
  with fixed keys: the reparametrisation trick), averaged over the observed values.

The gradient runs through the scanned filter in forward mode (`jax.jvp`, one tangent
per setting: a few settings cost a few forward passes, memory does not grow with the
cycles, and the models' integration loops need no fixed length). Through many cycles of
a chaotic model it explodes, so by default (`window=1`) each cycle's loss is
differentiated through the previous analysis and forecast only: the forecast entering
an analysis is held constant (`stop_gradient`) every `window` cycles. With `window` at
least the number of cycles the gradient is exact (what the finite-difference test
checks).
"""

import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jax import lax

from ._assimilate import check_key, check_run_inputs
from ._checks import check_memory
from ._custom_types import RealScalarLike
from ._ensemble import Ensemble, as_ensemble
from ._fit import forward_value_and_grad
from ._streams import ObservationSeries
from .filters import AbstractFilter, log_evidence
from .metrics import crps


LOSSES = ("innovation", "crps")


class TuneResult(NamedTuple):
    """The output of `tune`: the tuned `params` (name -> value), the `filter` built
    with them, and per gradient step the `loss`, the `history` of every setting and the
    `gradient` of the loss in the log of every setting; `seconds` of the whole run."""

    params: dict[str, float]
    filter: AbstractFilter
    loss: np.ndarray
    history: dict[str, np.ndarray]
    gradient: dict[str, np.ndarray]
    seconds: float


def _parameter_leaves(make_filter, initial):
    """The filter at `initial`, its array leaves and treedef, and for each setting the
    indices of the leaves that hold it: the leaves that change, to the new value, when
    that setting alone changes."""
    base = make_filter(**initial)
    arrays, static = eqx.partition(base, eqx.is_array)
    leaves, treedef = jax.tree.flatten(arrays)
    where = {}
    for name, value in initial.items():
        probe_value = 1.25 * value + 0.1
        probe = jax.tree.leaves(
            eqx.filter(make_filter(**{**initial, name: probe_value}), eqx.is_array)
        )
        changed = [
            i
            for i, (a, b) in enumerate(zip(leaves, probe, strict=True))
            if not np.array_equal(a, b)
        ]
        if not changed or any(
            np.shape(probe[i]) != () or not np.isclose(probe[i], probe_value) for i in changed
        ):
            raise ValueError(
                f"Setting {name!r} must be stored in the filter as given (a scalar array "
                "field such as an inflation factor or a localisation radius), so that it "
                "can be differentiated; it is not."
            )
        where[name] = changed
    return base, leaves, treedef, static, where


def _crps_loss(forecast, observation, y, mask, key):
    hx = jax.vmap(observation.apply)(forecast.members)
    noise = observation.noise.sample(key=key, shape=(hx.shape[0],)).astype(hx.dtype)
    members = jnp.where(mask[None], hx + noise, 0)
    observed = jnp.maximum(jnp.sum(mask), 1).astype(hx.dtype)
    value = crps(Ensemble(members, forecast.log_weights), jnp.where(mask, y, 0))
    return value * y.shape[0] / observed


def tune(
    make_filter: Callable[..., AbstractFilter],
    initial: Mapping[str, float],
    dynamics,
    series: ObservationSeries,
    ensemble: Ensemble,
    *,
    key,
    loss: str = "innovation",
    steps: int = 30,
    learning_rate: float = 0.05,
    optimiser: optax.GradientTransformation | None = None,
    window: int = 1,
    t0: RealScalarLike = 0.0,
    burn_in: int = 0,
    progress: bool = False,
) -> TuneResult:
    r"""Tune positive scalar settings of a filter by gradient descent on their logarithms
    on a loss of the forecasts against the observations of `series`; no
    truth is needed (see the module).

    **Arguments:**

    - `make_filter`: builds the filter from the settings, e.g.
      `lambda inflation, radius: LETKF(inflation=inflation, radius=radius)`; each
      setting must be stored as given in a scalar array field (inflation factors,
      localisation radii, RTPS/RTPP coefficients, EnKF-N's hyperprior weight).
    - `initial`: the starting value of each setting (positive).
    - `dynamics`, `series`, `ensemble`: the model, the observations (e.g. read from a
      sensor file) and the initial ensemble at `t0`.
    - `key`: PRNG key: the filter's keys (and the CRPS noise) are fixed across steps.
    - `loss`: 'innovation' (default) or 'crps'.
    - `steps`: loss and gradient evaluations, each over the whole series.
    - `learning_rate`: the first step on the log of the settings (0.05: a 5 % change).
    - `optimiser`: None (default): normalised gradient steps with backtracking (a step
      that raises the loss is undone and halved, an accepted one grows by half): the
      loss of a filter is flat above the best inflation and jumps where the filter
      loses track just below it, which defeats fixed-rate methods (measured: Adam
      from 1.2 on L96 stalled at 1.07 after one visit to the edge). Or any optax
      `GradientTransformation` (e.g. `optax.adam(0.02)`): then the best setting
      evaluated is returned.
    - `window`: cycles the gradient runs back through (default 1; see the module).
    - `burn_in`: cycles left out of the loss (the spin-up from `ensemble`).
    - `progress`: a line per loss evaluation on standard error, with an estimate of the
      time left.

    **Returns:** a `TuneResult`.
    """
    check_key(key)
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {LOSSES}; got {loss!r}.")
    if not isinstance(series, ObservationSeries):
        raise TypeError(f"`series` must be an ObservationSeries; got {type(series).__name__}.")
    if not initial:
        raise ValueError("`initial` must name at least one setting to tune.")
    for name, value in initial.items():
        if not (np.isscalar(value) and np.isfinite(value) and value > 0):
            raise ValueError(f"initial[{name!r}] must be a positive number; got {value!r}.")
    for what, v in (("steps", steps), ("window", window)):
        if int(v) != v or v < 1:
            raise ValueError(f"`{what}` must be a positive integer; got {v!r}.")
    if not 0 <= burn_in < len(series):
        raise ValueError(f"`burn_in` must lie in [0, {len(series)}); got {burn_in}.")
    base, leaves, treedef, static, where = _parameter_leaves(make_filter, dict(initial))
    belief0 = base.init(ensemble, key=key)
    if as_ensemble(belief0) is None:
        raise TypeError("`tune` needs an ensemble filter (its loss reads the forecast members).")
    check_run_inputs(base, dynamics, series.observation, belief0, series.values.dtype)
    names = list(initial)
    # Forward mode carries 2 copies (value, tangent) of the run per setting, at once.
    n, d = as_ensemble(belief0).members.shape[0], math.prod(dynamics.state_shape)
    needed = 8.0 * 2 * len(names) * (30 * n * (d + n) + d * n**2 + 8 * len(series))
    check_memory(needed, f"Tuning {len(names)} setting(s) with {n} members at d={d}")
    build = _builder(names, leaves, treedef, static, where)
    objective = _objective(build, dynamics, series, belief0, key, loss, window, t0, burn_in)

    # Forward mode, one tangent per setting: the model's integration loops have
    # data-dependent lengths (no reverse mode through them), and the memory does not grow
    # with the cycles.
    value_and_grad = eqx.filter_jit(forward_value_and_grad(objective))

    start = time.perf_counter()
    log0 = jnp.log(jnp.asarray([initial[n] for n in names], series.values.dtype))
    log_params, losses, history, gradients = _descend(
        _reporting(value_and_grad, names, steps, start) if progress else value_and_grad,
        log0,
        steps,
        learning_rate,
        optimiser,
    )
    params = {n: float(v) for n, v in zip(names, np.exp(np.asarray(log_params)), strict=True)}
    return TuneResult(
        params=params,
        filter=make_filter(**params),
        loss=np.asarray(losses),
        history={n: np.array([h[j] for h in history]) for j, n in enumerate(names)},
        gradient={n: np.array([g[j] for g in gradients]) for j, n in enumerate(names)},
        seconds=time.perf_counter() - start,
    )


def _builder(names, leaves, treedef, static, where):
    """The filter with the settings `exp(log_params)` put into their leaves."""

    def build(log_params):
        new = list(leaves)
        for name, value in zip(names, jnp.exp(log_params), strict=True):
            for i in where[name]:
                new[i] = value.astype(jnp.result_type(leaves[i]))
        return eqx.combine(jax.tree.unflatten(treedef, new), static)

    return build


def _objective(build, dynamics, series, belief0, key, loss, window, t0, burn_in):
    """The mean loss over the cycles after `burn_in`, a function of the log-settings."""

    def objective(log_params):
        flt = build(log_params)
        k = len(series)
        inputs = (jnp.arange(k), series.times, series.values, series.mask, series.noise_std)

        def cycle(carry, inp):
            belief, t_prev = carry
            i, t, y, mask, noise_std = inp
            observation = series.observation_at(noise_std)  # a record's own error std
            fkey, ukey, lkey = jr.split(jr.fold_in(key, i), 3)
            forecast = flt.forecast(belief, dynamics, t_prev, t, key=fkey)
            if loss == "innovation":
                value = -log_evidence(flt, as_ensemble(forecast), observation, y, mask)
            else:
                value = _crps_loss(as_ensemble(forecast), observation, y, mask, lkey)
            cut = (i % window) == 0
            held = jax.tree.map(
                lambda a: jnp.where(cut, lax.stop_gradient(a), a) if eqx.is_inexact_array(a) else a,
                forecast,
            )
            belief = flt.update(held, observation, y, mask, key=ukey)
            return (belief, t), jnp.where(i >= burn_in, value, 0.0)

        start = (belief0, jnp.asarray(t0, series.values.dtype))
        _, values = lax.scan(cycle, start, inputs)
        return jnp.sum(values) / (k - burn_in)

    return objective


def _reporting(value_and_grad, names, steps, start):
    """`value_and_grad` that prints a line per call (step, loss, settings, time left)."""
    calls = []

    def wrapped(log_params):
        value, grads = value_and_grad(log_params)
        calls.append(1)
        elapsed = time.perf_counter() - start
        settings = ", ".join(
            f"{n}={v:.4g}" for n, v in zip(names, np.exp(np.asarray(log_params)), strict=True)
        )
        print(
            f"tune: step {len(calls)}/{steps}, loss {float(value):.6g} at {settings} "
            f"({elapsed:.0f} s, about {elapsed / len(calls) * (steps - len(calls)):.0f} s left)",
            file=sys.stderr,
            flush=True,
        )
        return value, grads

    return wrapped


def _descend(value_and_grad, log_params, steps, learning_rate, optimiser):
    """`steps` evaluations of the loss and gradient from `log_params`; the settings
    chosen and, per evaluation, the loss, settings and gradient."""
    losses, history, gradients = [], [], []

    def evaluate(log_params):
        value, grads = value_and_grad(log_params)
        losses.append(float(value))
        history.append(np.exp(np.asarray(log_params)))
        gradients.append(np.asarray(grads))
        return losses[-1], jnp.where(jnp.isfinite(grads), grads, 0.0)

    value, grads = evaluate(log_params)
    if optimiser is None:
        # Normalised gradient steps on the log-settings with backtracking: a step that
        # raises the loss (a filter pushed over its stability edge) is undone and the
        # step halved; an accepted one grows the next by half.
        rate = learning_rate
        for _ in range(steps - 1):
            norm = jnp.linalg.norm(grads)
            trial = log_params - rate * grads / jnp.where(norm > 0, norm, 1.0)
            trial_value, trial_grads = evaluate(trial)
            if np.isfinite(trial_value) and trial_value <= value:
                log_params, value, grads, rate = trial, trial_value, trial_grads, 1.5 * rate
            else:
                rate = 0.5 * rate
    else:
        state = optimiser.init(log_params)
        for _ in range(steps - 1):
            updates, state = optimiser.update(grads, state, log_params)
            log_params = optax.apply_updates(log_params, updates)
            value, grads = evaluate(log_params)
        # The best setting evaluated (the loss of a chaotic filter is not smooth).
        log_params = jnp.log(jnp.asarray(history[int(np.nanargmin(losses))]))
    return log_params, losses, history, gradients
