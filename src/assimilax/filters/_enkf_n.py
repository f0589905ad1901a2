r"""The finite-size ensemble Kalman filter (EnKF-N, Bocquet 2011; Bocquet, Raanes &
Hannart 2015): the ETKF with the prior inflation estimated from the ensemble and the
observations, with no tuning knob.

The forecast members are taken as a sample of a Gaussian whose mean and covariance are
unknown, with Jeffreys' hyperprior on them. Integrating them out gives a Student-like
prior; in its dual form the analysis is the ETKF's with the prior anomalies scaled by
the factor $\lambda$ that minimises (with $S = V \operatorname{diag}(s) U^T$ the whitened
observed anomalies, $\delta$ the whitened innovation, $u = U^T\delta$)

$$ J(\lambda) = \sum_i \frac{u_i^2}{\lambda^2 s_i^2 + n - 1}
   + \frac{\varepsilon_N}{\lambda^2} + c_L \log \lambda^2, $$

$\varepsilon_N = (n+1)/n$ and $c_L = n/(n-1)$, both corrected so that the prior's mode
tends to 1 as the observations become uninformative (Bocquet et al. 2015, eq. 36) and
multiplied by `hyperprior_weight` (DAPPER's `xN`).
"""

import equinox as eqx
import jax.numpy as jnp
from jax import lax

from .._custom_types import Array, Float
from .._ensemble import flatten_members
from ._enkf import innovation_terms, mean_preserving_rotation, transform, unflatten
from ._inflation import AbstractInflation, as_inflation
from .base import AbstractEnsembleFilter


class EnKFN(AbstractEnsembleFilter):
    r"""The finite-size EnKF (EnKF-N) in its dual form: the ETKF with an inflation
    factor estimated each cycle (see the module).

    **Arguments:**

    - `hyperprior_weight`: the confidence in the inflation hyperprior, $x_N$ (DAPPER's
      `xN`): 1 (default) is fully agnostic, suited to chaotic or stochastic models; 2 is
      often better for nearly linear, deterministic ones (Lorenz-96: 0.18 vs 0.21).
    - `rotate`: a random mean-preserving rotation of the analysis anomalies (as the
      `ETKF`'s; DAPPER's `rot=True`).
    - `inflation`: further inflation after the analysis (default none; the EnKF-N
      needs none without model error).
    - `newton_steps`: the most Newton iterations for $\lambda$ from 1 (default 100; they
      stop when $|J'| < 10^{-12}$ or the step is below $10^{-10}\lambda$; DAPPER stops
      at a step of $10^{-4}$, so its factors differ from these by up to ~$10^{-5}$).

    The estimated factor of each analysis is `estimated_inflation(...)`.

    References: Bocquet (2011), "Ensemble Kalman filtering without the intrinsic need
    for inflation", NPG 18; Bocquet, Raanes & Hannart (2015), "Expanding the validity
    of the ensemble Kalman filter without the intrinsic need for inflation", NPG 22.
    """

    hyperprior_weight: Float[Array, ""]
    rotate: bool = eqx.field(static=True)
    inflation: AbstractInflation
    newton_steps: int = eqx.field(static=True)

    def __init__(self, hyperprior_weight=1.0, *, rotate=False, inflation=None, newton_steps=100):
        weight = jnp.asarray(hyperprior_weight, float)
        if not bool(jnp.all(weight > 0)):
            raise ValueError(
                f"`hyperprior_weight` must be positive (DAPPER's xN); got {hyperprior_weight!r}."
            )
        if int(newton_steps) != newton_steps or newton_steps < 1:
            raise ValueError(f"`newton_steps` must be a positive integer; got {newton_steps!r}.")
        self.hyperprior_weight = weight
        self.rotate = bool(rotate)
        self.inflation = as_inflation(inflation)
        self.newton_steps = int(newton_steps)

    def estimated_inflation(self, obs_anomalies, innovation) -> Float[Array, ""]:
        r"""The factor $\lambda$ by which the prior anomalies are scaled, from the whitened
        observed anomalies `(n, m)` and innovation `(m,)` (`innovation_terms`)."""
        n = obs_anomalies.shape[0]
        dtype = obs_anomalies.dtype
        n1 = jnp.asarray(n - 1, dtype)
        _, sv, right = jnp.linalg.svd(obs_anomalies, full_matrices=False)
        u2 = (right @ innovation) ** 2
        s2 = sv**2
        # The hyperprior's constants, with the mode correction towards 1 (the mean of
        # the prior's weight in the Hessian over all n directions).
        e_n, c_l = (n + 1) / n, n / (n - 1)
        prior_weight = (jnp.sum(1 / (s2 + n1)) + (n - s2.size) / n1) / n * n1
        correction = jnp.sqrt((e_n / c_l) ** prior_weight)
        weight = self.hyperprior_weight.astype(dtype)
        e_n, c_l = weight * e_n / correction, weight * c_l * correction

        def derivatives(lam):
            denom = lam**2 * s2 + n1
            d1 = -2 * lam * jnp.sum(s2 * u2 / denom**2) - 2 * e_n / lam**3 + 2 * c_l / lam
            d2 = 8 * lam**2 * jnp.sum(s2**2 * u2 / denom**3) + 6 * e_n / lam**4 - 2 * c_l / lam**2
            return d1, d2

        def step(carry):
            lam, _, k = carry
            d1, d2 = derivatives(lam)
            # Newton on J'(lam) = 0 from lam = 1 (as DAPPER), kept positive.
            new = jnp.maximum(lam - d1 / d2, 0.1 * lam)
            return new, jnp.abs(new - lam) > 1e-10 * lam, k + 1

        def go_on(carry):
            lam, moved, k = carry
            return moved & (jnp.abs(derivatives(lam)[0]) > 1e-12) & (k < self.newton_steps)

        init = (jnp.ones((), dtype), jnp.asarray(True), jnp.asarray(0))
        return lax.while_loop(go_on, step, init)[0]

    def update(self, belief, observation, y, mask=None, *, key):
        terms = innovation_terms(belief, observation, y, mask)
        lam = self.estimated_inflation(terms.obs_anomalies, terms.innovation)
        w, t = transform(lam * terms.obs_anomalies, terms.innovation)
        if self.rotate:
            t = mean_preserving_rotation(belief.size, key=key, dtype=t.dtype) @ t
        forecast = flatten_members(belief.members)
        analysis = terms.mean[None] + (w[None] + t) @ (lam * terms.anomalies)
        return unflatten(self.inflation(forecast, analysis), belief)


class AdaptiveInflation(AbstractEnsembleFilter):
    r"""EnKF-N's prior inflation for any ensemble filter: before `filter`'s update, the
    forecast anomalies are scaled by the factor $\lambda$ that the EnKF-N's dual cost
    picks from this forecast and these observations (`EnKFN.estimated_inflation`; one
    global factor, from all observations). `AdaptiveInflation(ETKF())` is the `EnKFN`.

    **Arguments:**

    - `filter`: an ensemble filter (`LETKF`, `SerialEnSRF`, `StochasticEnKF`, `DEnKF`,
      `HybridScoreFilter`, ...); its own inflation still applies after its update.
    - `hyperprior_weight`: as `EnKFN`'s (DAPPER's `xN`).
    """

    filter: AbstractEnsembleFilter
    estimator: EnKFN

    def __init__(self, filter: AbstractEnsembleFilter, hyperprior_weight=1.0):
        if not isinstance(filter, AbstractEnsembleFilter):
            raise TypeError(
                "`filter` must be an ensemble filter (AbstractEnsembleFilter) whose forecast "
                f"moves every member; got {type(filter).__name__}."
            )
        self.filter = filter
        self.estimator = EnKFN(hyperprior_weight)

    def update(self, belief, observation, y, mask=None, *, key):
        terms = innovation_terms(belief, observation, y, mask)
        lam = self.estimator.estimated_inflation(terms.obs_anomalies, terms.innovation)
        inflated = terms.mean[None] + lam * terms.anomalies
        return self.filter.update(unflatten(inflated, belief), observation, y, mask, key=key)
