r"""Maximum-likelihood estimation of model, observation and filter parameters.

The log-likelihood of a series, $\sum_k \log p(y_k \mid y_{1:k-1})$, is one more
per-cycle output of the filter's scan (`Solution.log_likelihood`,
`filters.log_evidence`): exact for the Kalman filter, the Gaussian approximation from
the forecast members for the ensemble Kalman filters (Mitchell & Houtekamer 2000's
innovation likelihood), the particle filters' estimate. `fit` maximises it over any
array parameters that the `build` function turns into the filter, the dynamics, the
observations and the initial belief, by a damped (Levenberg–Marquardt) Newton method on
the parameters (their logarithms for positive ones), with the gradient by forward-mode
differentiation through the scanned filter (one tangent per parameter, memory
independent of the number of cycles; the models' integration loops need no fixed
length) and the Hessian by central differences of that gradient. Standard errors come
from the observed information, the inverse Hessian at the maximum (the delta method for
log-parametrised ones, exact at a maximum).

An ensemble filter's likelihood over a long chaotic run is smooth at the scale of the
statistics but rough at small scales: its pathwise derivative grows with the run's
Lyapunov exponents (on Lorenz-96, 500 cycles, d/d obs_std = +72,500 where the trend is
-5,000). `fit` checks the forward-mode gradient against central differences over
`smoothing` (0.05: 5 % for log-parameters) at the start and, where they disagree, first
moves each parameter to the best of a coarse scan (factors e^-1 to e), then takes
gradient and Hessian from central differences over `smoothing` (`FitResult.derivatives`
says which were used). Standard errors from that curvature can understate the
uncertainty where the likelihood is rough even at the smoothing scale (Lorenz-96's
forcing over 1000 cycles: jumps of thousands of log-likelihood units within 1 % of F,
where the filter briefly loses track); fit separate segments of the series (or from
other initial ensembles) to see the spread of the estimates.
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
    log-likelihood after each accepted step (`history`), the `seconds` taken, and the
    `derivatives` used: "exact" (forward mode) or "smoothed" (differences over the
    `smoothing` scale, where the exact gradient was dominated by small-scale roughness)."""

    params: dict
    std_errors: dict
    log_likelihood: float
    iterations: int
    converged: bool
    message: str
    history: np.ndarray
    seconds: float
    derivatives: str = "exact"


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
    derivatives: str = "auto",
    smoothing: float = 0.05,
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
    - `derivatives`: "exact" (forward mode), "smoothed" (central differences over
      `smoothing` in the (log-)parameters) or "auto": exact unless its gradient at the
      start differs from the smoothed one by more than 20 % (a rough likelihood). With
      smoothed derivatives the fit also stops once the Newton decrement is below 1e-3
      (0.03 standard errors), or below 2 where no shorter step gains (the roughness
      allows no finer answer).
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
    value_and_grad = eqx.filter_jit(forward_value_and_grad(objective))

    if derivatives not in ("auto", "exact", "smoothed"):
        raise ValueError(
            f"`derivatives` must be 'auto', 'exact' or 'smoothed'; got {derivatives!r}."
        )
    if not 0 < smoothing < 1:
        raise ValueError(f"`smoothing` must lie in (0, 1); got {smoothing!r}.")
    start = time.perf_counter()
    theta0 = jnp.asarray(theta0)
    value_grad_hessian, derivatives = _choose_derivatives(
        value, value_and_grad, theta0, derivatives, smoothing
    )
    if derivatives == "smoothed":
        theta0 = _scan(value, theta0)
    theta, f, g, h, steps, converged, message, history = _newton(
        value, value_grad_hessian, theta0, max_steps, tolerance, progress,
        enough=1e-3 if derivatives == "smoothed" else 0.0,
    )  # fmt: skip
    params = unpack(theta)
    std_errors = _standard_errors(h, values, params, positive)
    return FitResult(
        params={k: (np.asarray(p) if values[k].shape else float(p)) for k, p in params.items()},
        std_errors=std_errors,
        log_likelihood=-float(f),
        iterations=steps,
        converged=converged,
        message=message,
        history=np.asarray(history),
        seconds=time.perf_counter() - start,
        derivatives=derivatives,
    )


def _exact_derivatives(value_and_grad):
    """`value_grad_hessian` from the forward-mode gradient: the Hessian by central
    differences of the exact gradient (second derivatives through eigendecompositions,
    as the ETKF's transform, are not reliable where eigenvalues repeat); 2p gradients,
    each p forward passes."""

    def value_grad_hessian(theta):
        f, g = value_and_grad(theta)
        step = 1e-4 * jnp.maximum(1.0, jnp.abs(theta))
        rows = []
        for i in range(theta.shape[0]):
            e = jnp.zeros_like(theta).at[i].set(step[i])
            rows.append(
                (value_and_grad(theta + e)[1] - value_and_grad(theta - e)[1]) / (2 * step[i])
            )
        h = jnp.stack(rows)
        return f, g, 0.5 * (h + h.T)

    return value_grad_hessian


def _standard_errors(h, values, params, positive) -> dict:
    """Standard errors from the observed information `h` (Hessian of minus the
    log-likelihood in the (log-)parameters), by the delta method for log-parametrised
    ones; NaN unless the curvature is positive in every direction."""
    covariance = np.linalg.pinv(np.asarray(h))
    definite = bool(np.all(np.linalg.eigvalsh(np.asarray(h)) > 0))
    errors = np.sqrt(np.diagonal(covariance)) if definite else np.full(len(h), np.nan)
    std_errors, i = {}, 0
    for name, v in values.items():
        e = errors[i : i + v.size].reshape(v.shape)
        if name in positive:
            e = e * np.asarray(params[name])
        std_errors[name] = e if v.shape else float(e)
        i += v.size
    return std_errors


def _choose_derivatives(value, value_and_grad, theta0, derivatives, smoothing):
    """`(value_grad_hessian, name)`: `exact` (forward mode) unless `derivatives` is
    "smoothed", or "auto" and the exact gradient at `theta0` differs from the smoothed
    one by more than 20 % (or is not finite): then central differences over
    `smoothing`."""
    steps = jnp.full(theta0.shape, smoothing, theta0.dtype)
    if derivatives == "auto":
        grad = np.asarray(value_and_grad(theta0)[1])
        smooth = np.asarray(_smoothed(value, theta0, steps, hessian=False)[1])
        rough = np.linalg.norm(grad - smooth) > 0.2 * np.linalg.norm(smooth) + 1e-8
        derivatives = "smoothed" if rough or not np.all(np.isfinite(grad)) else "exact"
    if derivatives == "exact":
        return _exact_derivatives(value_and_grad), derivatives
    return (lambda theta: _smoothed(value, theta, steps)), derivatives


SCAN = np.linspace(-1.0, 1.0, 9)  # `_scan`'s offsets: factors e^-1..e for log-parameters


def _scan(value, theta):
    """`theta` moved, one coordinate after another, to the best of `SCAN` offsets
    (coarse steps see the likelihood's trend through its small-scale roughness, where
    a rough gradient can point the wrong way: Lorenz-96's model-error std from 0.2)."""
    theta = np.asarray(theta, float)
    best = float(value(jnp.asarray(theta)))
    for i in range(theta.shape[0]):
        for offset in SCAN:
            trial = theta.copy()
            trial[i] += offset
            try:
                f = float(value(jnp.asarray(trial)))
            except eqx.EquinoxRuntimeError:
                continue
            if np.isfinite(f) and f < best:
                best, theta = f, trial
    return jnp.asarray(theta)


def _smoothed(value, theta, h, hessian=True):
    """`value`, its gradient and (if `hessian`) Hessian at `theta` by central
    differences with steps `h` (one per coordinate; 1 + 2p + 2p(p - 1) evaluations)."""
    p = theta.shape[0]
    f = value(theta)
    e = jnp.diag(h)
    plus = jnp.stack([value(theta + e[i]) for i in range(p)])
    minus = jnp.stack([value(theta - e[i]) for i in range(p)])
    g = (plus - minus) / (2 * h)
    if not hessian:
        return f, g, None
    rows = [[None] * p for _ in range(p)]
    for i in range(p):
        rows[i][i] = (plus[i] - 2 * f + minus[i]) / h[i] ** 2
        for j in range(i):
            pp, mm = value(theta + e[i] + e[j]), value(theta - e[i] - e[j])
            pm, mp = value(theta + e[i] - e[j]), value(theta - e[i] + e[j])
            rows[i][j] = rows[j][i] = (pp + mm - pm - mp) / (4 * h[i] * h[j])
    return f, g, jnp.array(rows)


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


def _newton(value, value_grad_hessian, theta, max_steps, tolerance, progress, enough=0.0):
    r"""Damped saddle-free Newton minimisation of `value`: steps
    $-V (|\Lambda| + \mu)^{-1} V^T g$ from the eigendecomposition of the Hessian (negative
    curvature turned into descent, Dauphin et al. 2014), the damping $\mu$ grown until
    the step lowers `value` and shrunk after it does (Levenberg–Marquardt). Converged:
    a Newton decrement below `tolerance` (1 + |value|) or below `enough`, at positive
    curvature."""
    f, g, h = value_grad_hessian(theta)
    if not np.isfinite(float(f)):
        raise ValueError(
            "The log-likelihood at the initial parameters is not finite: the filter failed "
            "on this series at these values; start closer."
        )
    damping, history = 0.0, [-float(f)]
    for step in range(1, max_steps + 1):
        if not (np.all(np.isfinite(np.asarray(g))) and np.all(np.isfinite(np.asarray(h)))):
            return theta, f, g, h, step, False, "the gradient or Hessian is not finite", history
        eigvals, eigvecs = jnp.linalg.eigh(h)
        size = jnp.maximum(jnp.abs(eigvals), 1e-10 * jnp.max(jnp.abs(eigvals)) + 1e-300)
        along = eigvecs.T @ g
        decrement = float(jnp.sum(along**2 / size))
        if decrement < max(tolerance * (1 + abs(float(f))), enough):
            if bool(jnp.all(eigvals > 0)):
                return theta, f, g, h, step - 1, True, f"converged in {step - 1} steps", history
        accepted = False
        for _ in range(40):
            move = -eigvecs @ (along / (size + damping * jnp.max(size)))
            # A trust region of 1 per coordinate (a factor e for log-parameters).
            move = move / jnp.maximum(1.0, jnp.max(jnp.abs(move)))
            if _evaluates_below(value, theta + move, f):
                accepted = True
                break
            damping = max(4 * damping, 1e-4)
        if not accepted and enough and decrement < 2.0 and bool(jnp.all(eigvals > 0)):
            # Smoothed derivatives: the Newton step is shorter than the likelihood's
            # small-scale roughness (an expected gain of about one log-likelihood unit).
            message = f"converged to the likelihood's roughness in {step - 1} steps"
            return theta, f, g, h, step - 1, True, message, history
        if not accepted:
            return theta, f, g, h, step, False, "no step raised the likelihood further", history
        theta = theta + move
        f, g, h = value_grad_hessian(theta)
        damping /= 4
        history.append(-float(f))
        if progress:
            print(
                f"fit: step {step}, log-likelihood {-float(f):.8g}, Newton decrement "
                f"{decrement:.2e}",
                file=sys.stderr,
                flush=True,
            )
    return theta, f, g, h, max_steps, False, f"not converged in {max_steps} steps", history


def _evaluates_below(value, theta, f) -> bool:
    """Whether `value(theta)` is finite and below `f`; parameters the model refuses
    (a run-time check failing inside the compiled filter) count as not."""
    try:
        trial = float(value(theta))
    except eqx.EquinoxRuntimeError:
        return False
    return np.isfinite(trial) and trial < float(f)


# Names `fit_named` knows besides the dynamics' own scalar parameters (e.g. `forcing`).
NAMED = {
    "obs_std": "the observation error std of every value (replaces the series' own)",
    "model_noise": "the dynamics' model-noise std per unit time (`noise_std`)",
}


def with_parameters(params: Mapping, dynamics, series: ObservationSeries):
    """`dynamics` and `series` with the named parameters replaced (see `fit_named`)."""
    for name, value in params.items():
        value = jnp.asarray(value, series.values.dtype)
        if name == "obs_std":
            std = jnp.broadcast_to(value, series.values.shape)
            series = eqx.tree_at(lambda s: s.noise_std, series, std, is_leaf=lambda x: x is None)
        elif name == "model_noise":
            dynamics = eqx.tree_at(
                lambda d: d.noise_std, dynamics, value, is_leaf=lambda x: x is None
            )
        else:
            dynamics = eqx.tree_at(lambda d, name=name: getattr(d, name), dynamics, value)
    return dynamics, series


def _scalar_fields(dynamics) -> list[str]:
    """The dynamics' scalar floating-point parameters, by field name."""
    return sorted(
        f
        for f, v in vars(dynamics).items()
        if eqx.is_inexact_array(v) and jnp.ndim(v) == 0 and f != "noise_std"
    )


def fit_named(
    names, filter, dynamics, series, belief0, *, key, t0=0.0, burn_in=0, progress=False
) -> FitResult:
    """`fit` of the parameters called `names`: 'obs_std', 'model_noise' (`NAMED`) or a
    scalar parameter of the dynamics by its field name (Lorenz-96's `forcing`,
    Lorenz-63's `rho`, ...), with the filter and initial belief fixed; what
    `assimilax assimilate --fit` runs. Starting values: the series' mean error std, the
    dynamics' noise std (0.1 if it has none) and the dynamics' own values."""
    initial = {}
    for name in names:
        if name == "obs_std":
            std = series.noise_std
            if std is None:
                std = jnp.sqrt(series.observation.noise.diagonal())
            initial[name] = float(jnp.mean(jnp.asarray(std)))
        elif name == "model_noise":
            if not hasattr(dynamics, "noise_std"):
                raise ValueError(
                    f"--fit model_noise: {type(dynamics).__name__} has no `noise_std` to fit."
                )
            initial[name] = 0.1 if dynamics.noise_std is None else float(dynamics.noise_std)
        elif name in _scalar_fields(dynamics):
            initial[name] = float(getattr(dynamics, name))
        else:
            choices = ", ".join([*NAMED, *_scalar_fields(dynamics)])
            raise ValueError(f"--fit {name}: not a parameter to fit; choose from {choices}.")

    def build(**params):
        return filter, *with_parameters(params, dynamics, series), belief0

    positive = tuple(n for n, v in initial.items() if v > 0)
    return fit(
        build, initial, key=key, positive=positive, t0=t0, burn_in=burn_in, progress=progress
    )
