r"""The local particle filter (Penny & Miyoshi 2016; Poterjoy 2016's weight
localisation in its batch form)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax import lax

from .._checks import check_value
from .._custom_types import Array, Float
from .._ensemble import Ensemble, flatten_members
from .._resampling import RESAMPLING, resample
from ._enkf import innovation_terms
from ._inflation import AbstractInflation, as_inflation
from ._letkf import local_tapers
from ._localisation import GaspariCohn
from .base import AbstractEnsembleFilter


class LocalParticleFilter(AbstractEnsembleFilter):
    r"""The local particle filter (Penny & Miyoshi 2016): a bootstrap particle filter
    with one weight vector per grid point.

    At grid point $i$ the weights use the observations near it, each log-likelihood
    tapered by its Gaspari–Cohn weight $\rho_{ik}$ (localisation of $R$, as the `LETKF`):
    $\log w_{ij} = \sum_k \rho_{ik} \log p(y_k \mid x_j)$. Each point is then resampled
    on its own with the same uniform draw everywhere (systematic resampling), so
    neighbouring points with similar weights copy the same particles and members stay
    spatially coherent; member $j$ at point $i$ takes the value of particle $a_{ij}$.
    Where the local effective sample size would fall below `ess_target` times $n$, the
    local log-likelihood is tempered, $\log w_{ij} \propto \beta_i \sum_k \rho_{ik}
    \log p(y_k \mid x_j)$ with the largest $\beta_i \le 1$ that keeps it (found by
    bisection): the regularisation of Poterjoy, Wicker & Buehner (2019), which inflates
    the observation errors where the weights would collapse. Gaussian jitter with
    standard deviation `jitter` times the local weighted spread
    then separates the copies (Penny & Miyoshi's additive noise), and `inflation`
    (e.g. `RTPS`) acts last. Observation errors are taken as independent after
    whitening; the likelihood is Gaussian; any operator works.

    **Arguments:**

    - `radius`: the localisation radius in grid units (`GaspariCohn`, DAPPER's
      convention).
    - `jitter`: the standard deviation of the noise added after resampling, in units of
      the local weighted spread (>= 0; default 0.5).
    - `ess_target`: the smallest local effective sample size, as a fraction of `n`, in
      [0, 1] (default 0.5; 0: no tempering, the plain local bootstrap filter).
    - `inflation`: an `AbstractInflation` or a float, applied after the jitter.
    - `resampling`: 'systematic' (default) or 'stratified' (one uniform shared by every
      point either way; 'residual' and 'multinomial' are accepted too).
    - `periodic`: whether distances wrap around the domain.

    Cost: $O(d\,(m + n \log n))$ per analysis, vmapped over grid points; no matrix
    factorisation, so cheaper than the `LETKF` at large `n`.

    References: Penny & Miyoshi (2016), "A local particle filter for high-dimensional
    geophysical systems", Nonlin. Processes Geophys. 23; Poterjoy (2016), "A localized
    particle filter for high-dimensional nonlinear systems", MWR 144; Poterjoy, Wicker &
    Buehner (2019), "Progress toward the application of a localized particle filter for
    numerical weather prediction", MWR 147.
    """

    localisation: GaspariCohn
    jitter: Float[Array, ""]
    ess_target: Float[Array, ""]
    inflation: AbstractInflation
    resampling: str = eqx.field(static=True)
    periodic: bool = eqx.field(static=True)

    def __init__(
        self,
        radius=4.0,
        jitter=0.5,
        ess_target=0.5,
        inflation=None,
        *,
        resampling="systematic",
        periodic=True,
    ):
        if resampling not in RESAMPLING:
            raise ValueError(
                f"Unknown `resampling` {resampling!r}; choose one of {', '.join(RESAMPLING)}."
            )
        self.localisation = GaspariCohn(radius)
        self.jitter = check_value(
            jnp.asarray(jitter, float),
            lambda a, xp: ~((a >= 0) & xp.isfinite(a)),
            f"`jitter` must be a finite number >= 0; got {jitter!r}.",
        )
        self.ess_target = check_value(
            jnp.asarray(ess_target, float),
            lambda a, xp: ~((a >= 0) & (a <= 1)),
            f"`ess_target` must lie in [0, 1] (a fraction of the members); got {ess_target!r}.",
        )
        self.inflation = as_inflation(inflation)
        self.resampling = resampling
        self.periodic = bool(periodic)

    def update(self, belief, observation, y, mask=None, *, key):
        terms = innovation_terms(belief, observation, y, mask)
        forecast = flatten_members(belief.members)
        dtype = forecast.dtype
        grid, taper_at = local_tapers(
            self.localisation, observation, belief.state_shape, self.periodic, dtype
        )
        # log p(y_k | x_j) up to a constant: whitened residuals (masked ones are zero).
        log_lik = -0.5 * (terms.innovation[None] - terms.obs_anomalies) ** 2
        resample_key, jitter_key = jr.split(key)

        def local(point, column):
            taper = taper_at(point)
            w = tempered_weights(
                belief.log_weights.astype(dtype), log_lik @ taper, self.ess_target.astype(dtype)
            )
            resampled = column[resample(w, self.resampling, key=resample_key)]
            return merge(column, resampled, w, jnp.max(taper, initial=0.0))

        analysis = jax.vmap(local, in_axes=(0, 1), out_axes=1)(grid, forecast)
        noise = jr.normal(jitter_key, analysis.shape, dtype)
        spread = jnp.std(analysis, axis=0, ddof=1)
        analysis = analysis + self.jitter.astype(dtype) * spread[None] * noise
        analysis = self.inflation(forecast, analysis)
        return Ensemble(analysis.reshape(belief.members.shape))  # equal weights again


def tempered_weights(log_weights, log_lik, ess_target, iterations=40):
    """Normalised weights `softmax(log_weights + beta log_lik)` with the largest `beta` in
    [0, 1] whose effective sample size is at least `ess_target` times the members (by
    bisection; `beta = 1` when that already holds)."""
    n = log_lik.shape[0]

    def weights(beta):
        return jax.nn.softmax(log_weights + beta * log_lik)

    def enough(beta):
        return 1 / jnp.sum(weights(beta) ** 2) >= ess_target * n

    def halve(_, bounds):
        low, high = bounds
        mid = 0.5 * (low + high)
        ok = enough(mid)
        return jnp.where(ok, mid, low), jnp.where(ok, high, mid)

    zero, one = jnp.zeros((), log_lik.dtype), jnp.ones((), log_lik.dtype)
    low, _ = lax.fori_loop(0, iterations, halve, (zero, one))
    return weights(jnp.where(enough(one), one, low))


def merge(prior, resampled, weights, rho):
    r"""Poterjoy's (2016) merge at one grid point: the analysis members
    $\bar x + r_1 (x^s_j - \bar x) + r_2 (x_j - \bar x)$ of the resampled members $x^s$
    and the prior ones $x$, with $\bar x$ the weighted mean, $r_2 = c\,r_1$,
    $c = (1 - \rho) / \rho$ ($\rho$ the largest taper of an observation at the point:
    prior members where no observation reaches, resampled ones at an observation) and
    $r_1$ giving the weighted variance. Each member keeps part of its own prior values, so
    neighbouring points stay coherent where they resampled different particles."""
    n = prior.shape[0]
    mean = weights @ prior
    variance = weights @ (prior - mean) ** 2
    c = (1 - rho) / jnp.maximum(rho, 1e-12)
    combined = (resampled - mean) + c * (prior - mean)
    norm = jnp.sum(combined**2)
    r1 = jnp.sqrt((n - 1) * variance / jnp.where(norm > 0, norm, 1))
    merged = mean + r1 * combined
    # Far from every observation (rho = 0) the prior members are kept as they are.
    return jnp.where(rho > 1e-6, merged, prior)
