r"""Expectation–maximisation for linear-Gaussian state-space models (Shumway & Stoffer
1982): the noise covariances of a `DiscreteLinearDynamics` observed through a linear
operator with a diagonal error covariance, estimated by alternating the exact
Rauch–Tung–Striebel smoother (E-step) with closed-form updates (M-step)

$$Q \leftarrow \frac1K \sum_k E[(x_k - A x_{k-1})(x_k - A x_{k-1})^T \mid y_{1:K}],\qquad
r_i \leftarrow \frac1K \sum_k E[(y_{ik} - c_i x_k)^2 \mid y_{1:K}]$$

(a missing $y_{ik}$ contributes the current $r_i$). Every iteration raises the
log-likelihood (tested); near the maximum it creeps (linear convergence), so `fit`'s
Newton steps are the faster route to a tight optimum and EM the robust one from a poor
start. The transition and observation matrices stay fixed."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._belief import GaussianBelief
from ._streams import ObservationSeries


class EMResult(NamedTuple):
    """The output of `fit_em`: the estimated `noise_covariance` (Q, `(d, d)`) and
    `obs_variance` (the diagonal of R, `(m,)`), the log-likelihood before each
    iteration and after the last (`history`), the `iterations` run, and whether the
    relative change fell below the tolerance (`converged`)."""

    noise_covariance: np.ndarray
    obs_variance: np.ndarray
    history: np.ndarray
    iterations: int
    converged: bool


def _check(dynamics, series, prior):
    from .dynamics import DiscreteLinearDynamics

    if not isinstance(dynamics, DiscreteLinearDynamics):
        raise TypeError(
            f"`dynamics` must be a DiscreteLinearDynamics; got {type(dynamics).__name__}."
        )
    if not isinstance(series, ObservationSeries):
        raise TypeError(f"`series` must be an ObservationSeries; got {type(series).__name__}.")
    if not isinstance(prior, GaussianBelief):
        raise TypeError(f"`prior` must be a GaussianBelief; got {type(prior).__name__}.")
    if series.noise_std is not None:
        raise ValueError("`series` must not carry per-value error stds (noise_std): EM "
                         "estimates one variance per observed component.")  # fmt: skip
    if dynamics.noise_covariance is None:
        raise ValueError("`dynamics.noise_covariance` is EM's starting Q and must be given "
                         "(positive definite; EM keeps a zero Q at zero).")  # fmt: skip
    times = np.asarray(series.times, float)
    steps = np.diff(np.concatenate([[times[0] - float(dynamics.interval)], times]))
    if not np.allclose(steps, float(dynamics.interval), rtol=1e-9, atol=0):
        raise ValueError(
            "`series.times` must be one `dynamics.interval` apart (EM here takes one "
            "transition per record)."
        )


@jax.jit
def _e_step(a, q, c, r, y, mask, m0, p0):
    """Log-likelihood, smoothed means `(K+1, d)`, covariances `(K+1, d, d)` and lag-one
    covariances `(K, d, d)` (index 0: the prior's time)."""
    d = m0.shape[0]

    def forward(carry, inputs):
        m, p = carry
        yk, ok = inputs
        mp, pp = a @ m, a @ p @ a.T + q
        h = jnp.where(ok[:, None], c, 0.0)
        s = h @ pp @ h.T + jnp.diag(jnp.where(ok, r, 1.0))
        resid = jnp.where(ok, yk - c @ mp, 0.0)
        chol = jnp.linalg.cholesky(s)
        z = jax.scipy.linalg.solve_triangular(chol, resid, lower=True)
        loglik = (
            -0.5 * (z @ z)
            - jnp.sum(jnp.log(jnp.diag(chol)))
            - 0.5 * jnp.sum(ok.astype(z.dtype)) * jnp.log(2 * jnp.pi)
        )
        gain = jax.scipy.linalg.cho_solve((chol, True), h @ pp).T
        mf = mp + gain @ resid
        pf = (jnp.eye(d) - gain @ h) @ pp
        pf = 0.5 * (pf + pf.T)
        return (mf, pf), (mp, pp, mf, pf, loglik)

    _, (mps, pps, mfs, pfs, logliks) = jax.lax.scan(forward, (m0, p0), (y, mask))
    mfs = jnp.concatenate([m0[None], mfs])
    pfs = jnp.concatenate([p0[None], pfs])

    def backward(carry, inputs):
        ms, ps = carry
        mf, pf, mp, pp = inputs
        j = jnp.linalg.solve(pp, a @ pf).T  # P_f A^T P_p^{-1}
        m = mf + j @ (ms - mp)
        p = pf + j @ (ps - pp) @ j.T
        return (m, 0.5 * (p + p.T)), (m, p, ps @ j.T)

    last = (mfs[-1], pfs[-1])
    _, (msb, psb, lag) = jax.lax.scan(backward, last, (mfs[:-1], pfs[:-1], mps, pps), reverse=True)
    ms = jnp.concatenate([msb, mfs[-1][None]])
    ps = jnp.concatenate([psb, pfs[-1][None]])
    return jnp.sum(logliks), ms, ps, lag


@jax.jit
def _m_step(a, c, r, y, mask, ms, ps, lag):
    """The new Q and diagonal of R from the smoothed moments."""
    k = y.shape[0]
    cur, prev = ms[1:], ms[:-1]
    s11 = jnp.sum(ps[1:], 0) + cur.T @ cur
    s00 = jnp.sum(ps[:-1], 0) + prev.T @ prev
    s10 = jnp.sum(lag, 0) + cur.T @ prev
    q = (s11 - s10 @ a.T - a @ s10.T + a @ s00 @ a.T) / k
    q = 0.5 * (q + q.T)
    fitted = cur @ c.T
    spread = jnp.einsum("id,kde,ie->ki", c, ps[1:], c)
    terms = jnp.where(mask, (y - fitted) ** 2 + spread, r[None])
    return q, jnp.mean(terms, 0)


def fit_em(
    dynamics, series: ObservationSeries, prior: GaussianBelief, *, max_iterations: int = 500,
    tolerance: float = 1e-10,
) -> EMResult:  # fmt: skip
    """EM estimates of the model-noise covariance Q of `dynamics` (a
    `DiscreteLinearDynamics`; its matrix fixed) and the observation-error variances of
    `series` (its operator's matrix fixed, the starting R its noise's diagonal), from
    the prior `prior` one `dynamics.interval` before the first record. Stops when the
    log-likelihood's relative rise falls below `tolerance` or after `max_iterations`."""
    _check(dynamics, series, prior)
    a = jnp.asarray(dynamics.matrix)
    q = dynamics.noise_covariance  # a positive start: EM keeps a zero Q at zero
    c = jnp.asarray(series.observation.matrix())
    r = jnp.asarray(series.observation.noise.diagonal())
    y, mask = jnp.asarray(series.values), jnp.asarray(series.mask)
    m0, p0 = prior.loc, prior.covariance_matrix
    history, converged = [], False
    for _ in range(max_iterations):
        loglik, ms, ps, lag = _e_step(a, q, c, r, y, mask, m0, p0)
        history.append(float(loglik))
        if len(history) > 1 and abs(history[-1] - history[-2]) <= tolerance * abs(history[-1]):
            converged = True
            break
        q, r = _m_step(a, c, r, y, mask, ms, ps, lag)
    if not converged:
        history.append(float(_e_step(a, q, c, r, y, mask, m0, p0)[0]))
    return EMResult(np.asarray(q), np.asarray(r), np.asarray(history), len(history) - 1, converged)
