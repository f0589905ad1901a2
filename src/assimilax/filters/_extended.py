r"""Gaussian baselines with one state estimate: the extended Kalman filter (tangent-linear
model by `jax.jacfwd`), 3D-Var and optimal interpolation with a static (climatological)
background covariance. Their belief is a `GaussianBelief`: $O(d^2)$ memory, for the
small models they are baselines on."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from .._belief import GaussianBelief
from .._checks import check_finite, check_shape
from .._custom_types import Array, Float
from .._ensemble import Ensemble
from ..dynamics import AbstractAdditiveNoiseDynamics
from ._kalman import _symmetrise, kalman_gain, linearised_terms
from .base import AbstractFilter


def _flat_additive(dynamics, name):
    if not isinstance(dynamics, AbstractAdditiveNoiseDynamics) or len(dynamics.state_shape) != 1:
        raise TypeError(
            f"{name} needs a model with a flat state and additive Gaussian noise (an "
            f"AbstractAdditiveNoiseDynamics: the Lorenz models, LinearDynamics); got "
            f"{type(dynamics).__name__} with state shape {tuple(dynamics.state_shape)}."
        )


class ExtendedKalmanFilter(AbstractFilter[GaussianBelief]):
    r"""The extended Kalman filter.

    Forecast: $m \leftarrow f(m)$, $P \leftarrow \lambda^{\Delta t} M P M^T + Q$, with
    $M = \partial f / \partial x$ at the previous mean by `jax.jacfwd` through the whole
    integration (no hand-written tangent-linear model) and $Q$ the model's noise
    covariance over the step. Update: the Kalman update with $H$ the observation's
    Jacobian at the forecast mean. Exact on linear-Gaussian models.

    **Arguments:**

    - `inflation`: $\lambda$, multiplicative covariance inflation *per unit time*
      (DAPPER's `infl`, which it applies as $\lambda^{\Delta t}$ so that it needs less
      retuning when the interval changes). Default 1: none.

    Needs an `AbstractAdditiveNoiseDynamics` with a flat state; costs $O(d^3)$ and $d$
    tangent-linear integrations per cycle.
    """

    inflation: Float[Array, ""]

    def __init__(self, inflation=1.0):
        lam = jnp.asarray(inflation, float)
        if not bool(jnp.all(lam >= 1)):
            raise ValueError(f"`inflation` must be >= 1 (per unit time); got {inflation!r}.")
        self.inflation = lam

    def init(self, ensemble: Ensemble, *, key) -> GaussianBelief:
        del key
        return GaussianBelief(ensemble.mean(), ensemble.covariance())

    def forecast(self, belief, dynamics, t0, t1, *, key):
        del key
        _flat_additive(dynamics, "ExtendedKalmanFilter")
        step = lambda x: dynamics.step_mean(x, t0, t1)
        loc, m = step(belief.loc), jax.jacfwd(step)(belief.loc)
        dt = jnp.asarray(t1 - t0, loc.dtype)
        q = dynamics.step_covariance(t0, t1).astype(loc.dtype)
        p = self.inflation.astype(loc.dtype) ** dt * (m @ belief.covariance_matrix @ m.T) + q
        return GaussianBelief(loc, _symmetrise(p))

    def update(self, belief, observation, y, mask=None, *, key):
        del key
        h, r, residual = linearised_terms(observation, y, belief.loc, mask)
        gain, p, _ = kalman_gain(belief.covariance_matrix, h, r)
        return GaussianBelief(belief.loc + gain @ residual[0], p)


def _static_analysis(background, covariance, observation, y, mask, iterations):
    r"""The minimiser of $\|x - x_b\|^2_{B^{-1}} + \|y - h(x)\|^2_{R^{-1}}$ by
    `iterations` Gauss–Newton steps from $x_b$ (one is exact for a linear $h$), and the
    analysis covariance $(I - KH)B$ at the last linearisation."""

    def gauss_newton(x, _):
        h, r, residual = linearised_terms(observation, y, x, mask)
        gain, p, _ = kalman_gain(covariance, h, r)
        # Linearised about x: the innovation of the background is y - h(x) - H(x_b - x).
        return background + gain @ (residual[0] - h @ (background - x)), p

    x, ps = lax.scan(gauss_newton, background, None, length=iterations)
    return GaussianBelief(x, ps[-1])


def _check_background(covariance, name, d=None):
    covariance = jnp.asarray(covariance, float)
    d = covariance.shape[0] if d is None and covariance.ndim == 2 else d
    check_shape(covariance, (d, d), name, "(d, d)")
    covariance = check_finite(covariance, name, traced=False)
    if not bool(jnp.all(jnp.diagonal(covariance) >= 0)):
        raise ValueError(f"`{name}` has negative variances on its diagonal.")
    return covariance


class Var3D(AbstractFilter[GaussianBelief]):
    r"""3D-Var: the forecast of the previous analysis (deterministic part of the model) is
    the background, the background covariance is static, `scale` $\cdot B$.

    The analysis minimises $\|x - x_b\|^2_{(sB)^{-1}} + \|y - h(x)\|^2_{R^{-1}}$ by
    `iterations` Gauss–Newton steps (default 1: DAPPER's `Var3D`, exact for linear
    observations). The belief's covariance is $sB$ after the forecast and $(I - KH)sB$
    after the analysis: a static, not a propagated, uncertainty.

    **Arguments:**

    - `covariance`: $B$ `(d, d)`, e.g. the climatological covariance
      (`experiments.climatology_statistics`).
    - `scale`: $s > 0$ (DAPPER's `xB`: Lorenz-63 0.1, Lorenz-96 0.02).
    - `iterations`: Gauss–Newton steps for nonlinear observations.
    """

    covariance: Float[Array, "d d"]
    scale: Float[Array, ""]
    iterations: int = eqx.field(static=True)

    def __init__(self, covariance, scale=1.0, *, iterations: int = 1):
        self.covariance = _check_background(covariance, "covariance")
        s = jnp.asarray(scale, float)
        if not bool(jnp.all(s > 0)):
            raise ValueError(f"`scale` must be positive; got {scale!r}.")
        if int(iterations) != iterations or iterations < 1:
            raise ValueError(f"`iterations` must be a positive integer; got {iterations!r}.")
        self.scale = s
        self.iterations = int(iterations)

    def _b(self, dtype):
        return self.scale.astype(dtype) * self.covariance.astype(dtype)

    def init(self, ensemble: Ensemble, *, key) -> GaussianBelief:
        del key
        loc = ensemble.mean()
        return GaussianBelief(loc, self._b(loc.dtype))

    def forecast(self, belief, dynamics, t0, t1, *, key):
        del key
        _flat_additive(dynamics, "Var3D")
        loc = dynamics.step_mean(belief.loc, t0, t1)
        return GaussianBelief(loc, self._b(loc.dtype))

    def update(self, belief, observation, y, mask=None, *, key):
        del key
        b = self._b(belief.loc.dtype)
        return _static_analysis(belief.loc, b, observation, y, mask, self.iterations)


class OptimalInterpolation(AbstractFilter[GaussianBelief]):
    r"""Optimal interpolation from climatology: every analysis is the Kalman update of the
    climatological mean $\mu_c$ with the climatological covariance $B$; the model is not
    used (DAPPER's `OptInterp`, the baseline every filter must beat). Its covariance is
    $B$ before and $(I - KH)B$ after each analysis.

    **Arguments:**

    - `mean`, `covariance`: $\mu_c$ `(d,)` and $B$ `(d, d)` (`experiments.climatology_statistics`).
    - `iterations`: Gauss–Newton steps for nonlinear observations (as `Var3D`).
    """

    mean: Float[Array, " d"]
    covariance: Float[Array, "d d"]
    iterations: int = eqx.field(static=True)

    def __init__(self, mean, covariance, *, iterations: int = 1):
        mean = check_finite(jnp.asarray(mean, float), "mean", traced=False)
        if mean.ndim != 1:
            raise ValueError(f"`mean` must have shape (d,); got {mean.shape}.")
        self.mean = mean
        self.covariance = _check_background(covariance, "covariance", mean.shape[0])
        if int(iterations) != iterations or iterations < 1:
            raise ValueError(f"`iterations` must be a positive integer; got {iterations!r}.")
        self.iterations = int(iterations)

    def _prior(self, dtype):
        return GaussianBelief(self.mean.astype(dtype), self.covariance.astype(dtype))

    def init(self, ensemble: Ensemble, *, key) -> GaussianBelief:
        del key
        return self._prior(ensemble.members.dtype)

    def forecast(self, belief, dynamics, t0, t1, *, key):
        del dynamics, t0, t1, key
        return self._prior(belief.loc.dtype)

    def update(self, belief, observation, y, mask=None, *, key):
        del key
        loc, b = belief.loc, belief.covariance_matrix
        return _static_analysis(loc, b, observation, y, mask, self.iterations)
