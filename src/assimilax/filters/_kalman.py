"""The exact Kalman filter for linear-Gaussian models: the reference in tests."""

import jax.numpy as jnp
import jax.scipy.linalg as jsl

from .._belief import GaussianBelief
from .._ensemble import Ensemble
from ..dynamics import LinearDynamics
from ..observations import AbstractLinearObservation
from .base import AbstractFilter


def _symmetrise(p):
    return 0.5 * (p + p.T)


class KalmanFilter(AbstractFilter[GaussianBelief]):
    r"""The Kalman filter (Kalman 1960): exact for `LinearDynamics` with linear observations.

    Forecast: $m \leftarrow M m$, $P \leftarrow M P M^T + Q_\Delta$. Update with
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
        if not isinstance(dynamics, LinearDynamics):
            raise TypeError(
                "KalmanFilter needs `LinearDynamics`; got "
                f"{type(dynamics).__name__}. Use an ensemble filter for nonlinear models."
            )
        m, q = dynamics.transition(t0, t1)
        p = m @ belief.covariance_matrix @ m.T + q
        return GaussianBelief(m @ belief.loc, _symmetrise(p))

    def update(self, belief, observation, y, mask=None, *, key):
        del key
        if not isinstance(observation, AbstractLinearObservation):
            raise TypeError(
                "KalmanFilter needs a linear observation (an AbstractLinearObservation);"
                f" got {type(observation).__name__}."
            )
        h = observation.matrix().astype(belief.loc.dtype)
        r = observation.noise.masked_dense(mask).astype(belief.loc.dtype)
        residual = y - h @ belief.loc
        if mask is not None:
            h = jnp.where(mask[:, None], h, 0)
            residual = jnp.where(mask, residual, 0)
        p = belief.covariance_matrix
        s = h @ p @ h.T + r
        chol = jnp.linalg.cholesky(s)
        gain = jsl.cho_solve((chol, True), h @ p).T
        loc = belief.loc + gain @ residual
        i_kh = jnp.eye(p.shape[0], dtype=p.dtype) - gain @ h
        p = i_kh @ p @ i_kh.T + gain @ r @ gain.T
        return GaussianBelief(loc, _symmetrise(p))
