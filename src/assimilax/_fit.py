r"""Maximum-likelihood estimation of model, observation and filter parameters.

The log-likelihood of a series, $\sum_k \log p(y_k \mid y_{1:k-1})$, is one more
per-cycle output of the filter's scan (`Solution.log_likelihood`,
`filters.log_evidence`): exact for the Kalman filter, the Gaussian approximation from
the forecast members for the ensemble Kalman filters (Mitchell & Houtekamer 2000's
innovation likelihood), the particle filters' estimate. `fit` maximises it over any
array parameters that the `build` function turns into the filter, the dynamics, the
observations and the initial belief, by a damped (Levenberg–Marquardt) Newton method on
the parameters (their logarithms for positive ones), with the gradient and the Hessian
by forward-mode differentiation through the scanned filter (one tangent per parameter,
memory independent of the number of cycles; the models' integration loops need no
fixed length). Standard errors come from the observed information, the inverse Hessian
at the maximum (the delta method for log-parametrised ones, exact at a maximum).
"""

import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._assimilate import check_key, initial_result, run_cycles
from ._streams import ObservationSeries


class FitResult(NamedTuple):
    """The output of `fit`: the estimates `params` and their `std_errors` (name ->
    float, or array for array parameters), the maximised `log_likelihood`, the
    `iterations` taken, whether it `converged` and a one-line `message`, the
    log-likelihood after each accepted step (`history`), and the `seconds` taken."""

    params: dict
    std_errors: dict
    log_likelihood: float
    iterations: int
    converged: bool
    message: str
    history: np.ndarray
    seconds: float


def log_likelihood(filter, dynamics, series, belief0, *, key, t0=0.0, burn_in: int = 0):
    r"""$\sum_{k \ge \text{burn\_in}} \log p(y_k \mid y_{1:k-1})$ of `series` under
    `filter` and `dynamics` from `belief0` at `t0`: a JAX scalar, differentiable in
    forward mode with respect to any array inside the arguments."""
    if not isinstance(series, ObservationSeries):
        raise TypeError(f"`series` must be an ObservationSeries; got {type(series).__name__}.")
    t0 = jnp.asarray(t0, series.values.dtype)
    _, _, out = run_cycles(
        filter, dynamics, series, belief0, t0, None, 0, key, initial_result(), False, False
    )
    cycles = jnp.arange(out["log_likelihood"].shape[0])
    return jnp.sum(jnp.where(cycles >= burn_in, out["log_likelihood"], 0.0))


def forward_value_and_grad(objective: Callable) -> Callable:
    """`objective(theta)` and its gradient, by forward mode: one `jax.jvp` per
    component of `theta`, vmapped (what `fit` and `tune` differentiate with)."""

    def value_and_grad(theta):
        basis = jnp.eye(theta.shape[0], dtype=theta.dtype)
        values, grads = jax.vmap(lambda v: jax.jvp(objective, (theta,), (v,)))(basis)
        return values[0], grads

    return value_and_grad


def fit(
    build: Callable[..., tuple],
    initial: Mapping[str, float | np.ndarray],
    *,
    key,
    positive: tuple[str, ...] | None = None,
    t0=0.0,
    burn_in: int = 0,
    max_steps: int = 50,
    tolerance: float = 1e-7,
    progress: bool = False,
) -> FitResult:
    r"""Maximum-likelihood estimates of the parameters named in `initial` (see the
    module).

    **Arguments:**

    - `build`: `build(**params) -> (filter, dynamics, series, belief0)`, a JAX-traceable
      function of the parameters (scalars or arrays); e.g. for a local level model
      `lambda level_var, obs_var: (KalmanFilter(), LinearDynamics(0 * I, sqrt(level_var)
      * I), ObservationSeries(LinearObservation(I, noise_std=sqrt(obs_var)), times, y,
      mask), GaussianBelief(m0, P0))`.
    - `initial`: the starting value of each parameter.
    - `key`: the filter's PRNG key, fixed across evaluations (common random numbers:
      the likelihood of a stochastic filter is then a smooth function of the
      parameters).
    - `positive`: the parameters estimated on the log scale (kept positive); default:
      every one whose initial values are all positive.
    - `t0`, `burn_in`: the initial time, and cycles left out of the likelihood.
    - `max_steps`, `tolerance`: Newton steps at most; stop when the Newton decrement
      $g^T H^{-1} g$ falls below `tolerance` (1 + |log-likelihood|).
    - `progress`: a line per step on standard error.

    **Returns:** a `FitResult`. Not converged (`max_steps` reached, or no step uphill
    found) is reported in it, not raised.
    """
    check_key(key)
    if not initial:
        raise ValueError("`initial` must name at least one parameter to estimate.")
    values = {}
    for name, value in initial.items():
        array = np.asarray(value, float)
        if not np.all(np.isfinite(array)):
            raise ValueError(f"initial[{name!r}] must be finite; got {value!r}.")
        values[name] = array
    if positive is None:
        positive = tuple(n for n, v in values.items() if np.all(v > 0))
    for name in positive:
        if name not in values or not np.all(values[name] > 0):
            raise ValueError(f"`positive` parameter {name!r} needs a positive initial value.")
    unpack, theta0 = _packing(values, positive)

    def objective(theta):
        filter, dynamics, series, belief0 = build(**unpack(theta))
        return -log_likelihood(filter, dynamics, series, belief0, key=key, t0=t0, burn_in=burn_in)

    value = eqx.filter_jit(objective)
    value_and_grad = forward_value_and_grad(objective)

    @eqx.filter_jit
    def value_grad_hessian(theta):
        basis = jnp.eye(theta.shape[0], dtype=theta.dtype)
        (f, g), (_, h) = jax.vmap(lambda v: jax.jvp(value_and_grad, (theta,), (v,)))(basis)
        return f[0], g[0], 0.5 * (h + h.T)

    start = time.perf_counter()
    theta, f, g, h, steps, converged, message, history = _newton(
        value, value_grad_hessian, jnp.asarray(theta0), max_steps, tolerance, progress
    )
    params = unpack(theta)
    covariance = np.linalg.pinv(np.asarray(h))
    errors = np.sqrt(np.clip(np.diagonal(covariance), 0, None))
    std_errors, i = {}, 0
    for name, v in values.items():
        size = v.size
        e = errors[i : i + size].reshape(v.shape)
        if name in positive:
            e = e * np.asarray(params[name])
        std_errors[name] = e if v.shape else float(e)
        i += size
    return FitResult(
        params={k: (np.asarray(p) if values[k].shape else float(p)) for k, p in params.items()},
        std_errors=std_errors,
        log_likelihood=-float(f),
        iterations=steps,
        converged=converged,
        message=message,
        history=np.asarray(history),
        seconds=time.perf_counter() - start,
    )


def _packing(values, positive):
    """The function from the flat vector of (log-)parameters to the parameter dict,
    and the initial vector."""
    shapes = {k: v.shape for k, v in values.items()}
    flat = [np.log(v).ravel() if k in positive else v.ravel() for k, v in values.items()]

    def unpack(theta):
        out, i = {}, 0
        for name, shape in shapes.items():
            size = math.prod(shape)
            part = theta[i : i + size].reshape(shape)
            out[name] = jnp.exp(part) if name in positive else part
            i += size
        return out

    return unpack, np.concatenate(flat)


def _newton(value, value_grad_hessian, theta, max_steps, tolerance, progress):
    """Levenberg–Marquardt-damped Newton minimisation of `value`."""
    f, g, h = value_grad_hessian(theta)
    if not np.isfinite(float(f)):
        raise ValueError(
            "The log-likelihood at the initial parameters is not finite: the filter failed "
            "on this series at these values; start closer."
        )
    damping, history = 1e-3, [-float(f)]
    eye = jnp.eye(theta.shape[0], dtype=theta.dtype)
    for step in range(1, max_steps + 1):
        scale = jnp.maximum(jnp.abs(jnp.diagonal(h)), 1e-12)
        accepted = False
        for _ in range(30):
            matrix = h + damping * jnp.diag(scale)
            move = -jnp.linalg.solve(matrix, g)
            decrement = float(-(g @ move))
            if not (np.isfinite(decrement) and decrement > 0):
                damping *= 10
                continue
            trial = value(theta + move)
            if np.isfinite(float(trial)) and float(trial) <= float(f):
                accepted = True
                break
            damping *= 4
        if not accepted:
            return theta, f, g, h, step, False, "no step raised the likelihood", history
        theta = theta + move
        f, g, h = value_grad_hessian(theta)
        damping = max(damping / 3, 1e-9)
        history.append(-float(f))
        newton = float(g @ jnp.linalg.lstsq(h + 1e-12 * eye, g)[0])
        if progress:
            print(
                f"fit: step {step}, log-likelihood {-float(f):.8g}, Newton decrement {newton:.2e}",
                file=sys.stderr,
                flush=True,
            )
        if abs(newton) < tolerance * (1 + abs(float(f))):
            return theta, f, g, h, step, True, f"converged in {step} steps", history
    return theta, f, g, h, max_steps, False, f"not converged in {max_steps} steps", history
