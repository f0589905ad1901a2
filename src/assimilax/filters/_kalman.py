"""The exact Kalman filter for linear-Gaussian models: the reference in tests."""

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from .._belief import GaussianBelief
from .._ensemble import Ensemble
from ..dynamics import AbstractAdditiveNoiseDynamics, DiscreteLinearDynamics, LinearDynamics
from ..observations import AbstractLinearObservation
from .base import AbstractFilter


def _symmetrise(p):
    return 0.5 * (p + p.T)


class KalmanFilter(AbstractFilter[GaussianBelief]):
    r"""The Kalman filter (Kalman 1960): exact for linear models with linear observations.

    Forecast: $m \leftarrow M m$, $P \leftarrow M P M^T + Q_\Delta$, for
    `LinearDynamics` and `DiscreteLinearDynamics` (their exact transitions) and any
    additive-noise model with a flat state that declares `is_linear` (e.g. the 1-D
    `StochasticHeat`; $M$ is then the Jacobian of its `step_mean`, by forward-mode
    autodiff). Update with
    $S = H P H^T + R$, $K = P H^T S^{-1}$ (Cholesky solve, no inverse):
    $m \leftarrow m + K(y - Hm)$ and the Joseph form
    $P \leftarrow (I - KH) P (I - KH)^T + K R K^T$, symmetrised. Masked observations are
    removed exactly (their rows of `H` are zeroed and their noise decoupled).

    `init` takes the initial ensemble's mean and (unbiased) covariance; to start from a
    known Gaussian build a `GaussianBelief` directly.
    """

    def init(self, ensemble: Ensemble, *, key) -> GaussianBelief:
        del key
        return GaussianBelief(ensemble.mean(), ensemble.covariance())

    def forecast(self, belief, dynamics, t0, t1, *, key):
        del key
        flat = len(dynamics.state_shape) == 1
        if isinstance(dynamics, LinearDynamics | DiscreteLinearDynamics):
            m, q = dynamics.transition(t0, t1)
            loc = m @ belief.loc
        elif isinstance(dynamics, AbstractAdditiveNoiseDynamics) and dynamics.is_linear and flat:
            mean_step = lambda x: dynamics.step_mean(x, t0, t1)
            loc, m = mean_step(belief.loc), jax.jacfwd(mean_step)(belief.loc)
            q = dynamics.step_covariance(t0, t1).astype(loc.dtype)
        else:
            raise TypeError(
                "KalmanFilter needs a linear model with a flat state (`LinearDynamics`, or "
                f"an additive-noise model with `is_linear`); got {type(dynamics).__name__} "
                f"with state shape {tuple(dynamics.state_shape)}. Use an ensemble filter."
            )
        p = m @ belief.covariance_matrix @ m.T + q
        return GaussianBelief(loc, _symmetrise(p))

    def update(self, belief, observation, y, mask=None, *, key):
        del key
        h, r, residual = masked_linear_terms(observation, y, belief.loc[None], mask)
        gain, p, _ = kalman_gain(belief.covariance_matrix, h, r)
        return GaussianBelief(belief.loc + gain @ residual[0], p)


def masked_linear_terms(observation, y, states, mask):
    """`H`, `R` and the residuals `y - H x` (n, m) of flat `states` (n, d), with masked
    observations removed exactly: their rows of `H` and residuals zeroed, their noise
    decoupled (`R` = identity there)."""
    if not isinstance(observation, AbstractLinearObservation):
        raise TypeError(
            "This filter needs a linear observation (an AbstractLinearObservation); got "
            f"{type(observation).__name__}."
        )
    h = observation.matrix().astype(states.dtype)
    return _masked_terms(observation, h, y[None] - states @ h.T, mask)


def linearised_terms(observation, y, state, mask):
    """`H` (the Jacobian of the observation at the flat `state`, by forward-mode
    autodiff; the matrix of a linear one), `R` and the residual `y - h(state)` as
    `(1, m)`, masked as `masked_linear_terms`."""
    if isinstance(observation, AbstractLinearObservation):
        return masked_linear_terms(observation, y, state[None], mask)
    h = jax.jacfwd(observation.apply)(state)
    return _masked_terms(observation, h, (y - observation.apply(state))[None], mask)


def _masked_terms(observation, h, residual, mask):
    r = observation.noise.masked_dense(mask).astype(h.dtype)
    if mask is not None:
        h = jnp.where(mask[:, None], h, 0)
        residual = jnp.where(mask[None], residual, 0)
    return h, r, residual


def kalman_gain(p, h, r):
    r"""The gain $K = P H^T S^{-1}$, $S = H P H^T + R$ (Cholesky solve), the posterior
    covariance in Joseph form, $(I - KH) P (I - KH)^T + K R K^T$, symmetrised, and the
    lower Cholesky factor of `S`."""
    s = h @ p @ h.T + r
    chol = jnp.linalg.cholesky(s)
    gain = jsl.cho_solve((chol, True), h @ p).T
    i_kh = jnp.eye(p.shape[0], dtype=p.dtype) - gain @ h
    return gain, _symmetrise(i_kh @ p @ i_kh.T + gain @ r @ gain.T), chol
