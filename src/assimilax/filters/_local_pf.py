r"""The local particle filter of Poterjoy (2016), with the tempering of Poterjoy,
Wicker & Buehner (2019)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax import lax

from .._checks import check_value
from .._custom_types import Array, Float
from .._ensemble import Ensemble, flatten_members
from .._resampling import RESAMPLING, keep_in_place, resample
from ._enkf import innovation_terms
from ._inflation import AbstractInflation, as_inflation
from ._localisation import GaspariCohn
from ._serial import augmented_tapers
from .base import AbstractEnsembleFilter


class LocalParticleFilter(AbstractEnsembleFilter):
    r"""The local particle filter (Poterjoy 2016): a bootstrap particle filter whose
    weights are localised, assimilating the observations one at a time.

    Observations are whitened (independent, unit variance) and handled in turn, in the
    augmented state of the serial filters (state and predicted observations, so later
    observations see the members moved by earlier ones). For observation $k$:

    1. **Resampling at the observation**: the likelihoods $p_j$ of the current members,
       scaled to a largest value of 1 and tempered to $p_j^{\beta_k}$ with the largest
       $\beta_k \le 1$ that keeps their effective sample size at `ess_target` times $n$
       (Poterjoy, Wicker & Buehner 2019; bisection), give the weights
       $w_j = \alpha p_j^{\beta_k} + 1 - \alpha$ (Poterjoy's floor: no member is given zero
       weight). Members are drawn by these weights (systematic resampling); a member
       drawn at least once keeps its own slot, extra copies fill the slots of members
       not drawn.
    2. **Localised weights**: at every variable $i$ the weights are products over the
       observations so far, $\omega_{ij} \propto \prod_{k' \le k} [1 + \alpha\rho_{ik'}
       (p_{k'}(x^f_j)^{\beta_{k'}} - 1)]$ with the forecast members $x^f$ and the
       Gaspari–Cohn taper $\rho$; they give the local posterior mean $\bar x_i$ and
       variance $\sigma_i^2$.
    3. **Merge**: $x_{ij} \leftarrow \bar x_i + r_1 (x_{i a_j} - \bar x_i) + r_2
       (x_{ij} - \bar x_i)$, $a_j$ the drawn ancestor, $r_2 = c\,r_1$ with
       $c = n(1 - \alpha\rho_{ik}) / (\alpha\rho_{ik} \sum_j w_j)$, and $r_1$ giving the
       variance $\sigma_i^2$. At the observation ($\rho = 1$) members are the resampled
       ones; where the taper vanishes they are left as they are; in between they blend
       with their own values, so members stay continuous in space.

    Gaussian jitter with standard deviation `jitter` times the local spread then
    separates copies, and `inflation` (e.g. `RTPS`) acts last. The likelihood is
    Gaussian; any operator works (through the augmented members).

    **Arguments:**

    - `radius`: the localisation radius in grid units (`GaspariCohn`, DAPPER's
      convention); None (default): no localisation (the global filter, with any noise
      covariance; localising needs observation locations and uncorrelated errors).
    - `jitter`: the standard deviation of the noise added after the update, in units of
      the local spread (>= 0; default 0).
    - `ess_target`: the smallest effective sample size of each observation's weights,
      as a fraction of `n`, in [0, 1] (default 0.5; 0: no tempering).
    - `inflation`: an `AbstractInflation` or a float, applied after the jitter.
    - `alpha`: the weight floor's complement in (0, 1] (default 0.99; 1: plain
      likelihood weights).
    - `resampling`: 'systematic' (default), 'stratified', 'residual' or 'multinomial'.
    - `periodic`: whether distances wrap around the domain.

    Cost: $O(m (d + m) n)$ per analysis in `m` sequential steps, as the serial EnKFs.

    References: Poterjoy (2016), "A localized particle filter for high-dimensional
    nonlinear systems", MWR 144; Poterjoy, Wicker & Buehner (2019), "Progress toward
    the application of a localized particle filter for numerical weather prediction",
    MWR 147; Penny & Miyoshi (2016), "A local particle filter for high-dimensional
    geophysical systems", NPG 23 (the batch form, one weight vector per grid point).
    """

    localisation: GaspariCohn | None
    jitter: Float[Array, ""]
    ess_target: Float[Array, ""]
    inflation: AbstractInflation
    alpha: Float[Array, ""]
    resampling: str = eqx.field(static=True)
    periodic: bool = eqx.field(static=True)

    def __init__(
        self,
        radius=None,
        jitter=0.0,
        ess_target=0.5,
        inflation=None,
        *,
        alpha=0.99,
        resampling="systematic",
        periodic=True,
    ):
        if resampling not in RESAMPLING:
            raise ValueError(
                f"Unknown `resampling` {resampling!r}; choose one of {', '.join(RESAMPLING)}."
            )
        self.localisation = None if radius is None else GaspariCohn(radius)
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
        self.alpha = check_value(
            jnp.asarray(alpha, float),
            lambda a, xp: ~((a > 0) & (a <= 1)),
            f"`alpha` must lie in (0, 1]; got {alpha!r}.",
        )
        self.inflation = as_inflation(inflation)
        self.resampling = resampling
        self.periodic = bool(periodic)

    def update(self, belief, observation, y, mask=None, *, key):
        terms = innovation_terms(belief, observation, y, mask)
        forecast = flatten_members(belief.members)
        (n, d), m = forecast.shape, terms.innovation.shape[-1]
        dtype = forecast.dtype
        taper = augmented_tapers(
            self.localisation, observation, belief.state_shape, d, m, dtype, self.periodic,
            "LocalParticleFilter",
        )  # fmt: skip
        observed = jnp.ones(m, bool) if mask is None else mask
        # Augmented anomalies (state, then whitened observed values), whose observed
        # value is the innovation.
        prior = jnp.concatenate([terms.anomalies, terms.obs_anomalies], axis=1)
        alpha, target = self.alpha.astype(dtype), self.ess_target.astype(dtype)
        tiny = jnp.finfo(dtype).tiny
        resample_key, jitter_key = jr.split(key)

        def assimilate_one(carry, inputs):
            members, log_omega, pending = carry
            k, step_key = inputs
            rho = taper(k)
            log_lik = -0.5 * (terms.innovation[k] - members[:, d + k]) ** 2
            log_lik = log_lik - jnp.max(log_lik)
            beta = tempering(pending, log_lik, target)
            w = jnp.exp(pending) * (alpha * jnp.exp(beta * log_lik) + 1 - alpha)
            total = jnp.sum(w)
            ancestors = keep_in_place(resample(w / total, self.resampling, key=step_key))
            # Localised weights of the forecast members, products over observations.
            p0 = -0.5 * (terms.innovation[k] - prior[:, d + k]) ** 2
            p0 = jnp.exp(beta * (p0 - jnp.max(p0)))
            factor = jnp.maximum(1 + alpha * rho[None] * (p0[:, None] - 1), tiny)
            log_omega = log_omega + jnp.log(factor)
            merged = merge(members, members[ancestors], prior, log_omega, alpha * rho, total)
            moved = observed[k] & (rho > 1e-6)
            members = jnp.where(moved[None], merged, members)
            log_omega = jnp.where(observed[k], log_omega, carry[1])
            return (members, log_omega, jnp.where(observed[k], 0.0, pending)), None

        # A weighted forecast's weights count once: in the localised weights and in the
        # first observation's resampling.
        start = jax.nn.log_softmax(belief.log_weights.astype(dtype)) + jnp.log(n)
        carry = (prior, jnp.broadcast_to(start[:, None], prior.shape), start)
        inputs = (jnp.arange(m), jr.split(resample_key, m))
        members = lax.scan(assimilate_one, carry, inputs)[0][0][:, :d]
        noise = jr.normal(jitter_key, members.shape, dtype)
        spread = jnp.std(members, axis=0, ddof=1)
        analysis = terms.mean[None] + members + self.jitter.astype(dtype) * spread[None] * noise
        analysis = self.inflation(forecast, analysis)
        return Ensemble(analysis.reshape(belief.members.shape))  # equal weights again


def tempering(log_weights, log_lik, ess_target, iterations=40):
    """The largest `beta` in [0, 1] for which `softmax(log_weights + beta log_lik)` has an
    effective sample size of at least `ess_target` times the members (by bisection; 1
    when that already holds)."""
    n = log_lik.shape[0]

    def enough(beta):
        w = jax.nn.softmax(log_weights + beta * log_lik)
        return 1 / jnp.sum(w**2) >= ess_target * n

    def halve(_, bounds):
        low, high = bounds
        mid = 0.5 * (low + high)
        ok = enough(mid)
        return jnp.where(ok, mid, low), jnp.where(ok, high, mid)

    zero, one = jnp.zeros((), log_lik.dtype), jnp.ones((), log_lik.dtype)
    low, _ = lax.fori_loop(0, iterations, halve, (zero, one))
    return jnp.where(enough(one), one, low)


def merge(members, resampled, prior, log_omega, strength, total):
    r"""Poterjoy's (2016) merge for one observation, every column at once: the members
    $\bar x + r_1 (x^s - \bar x) + r_2 (x - \bar x)$ of the `resampled` members $x^s$
    and the current ones $x$, with $\bar x$ and $\sigma^2$ the mean and variance of the
    `prior` members under the localised weights `exp(log_omega)`, $r_2 = c\,r_1$,
    $c = n (1 - \alpha\rho) / (\alpha\rho W)$ (`strength` $= \alpha\rho$, `total`
    $= W$, the sum of the observation's weights) and $r_1$ giving the variance
    $\sigma^2$."""
    n = members.shape[0]
    omega = jax.nn.softmax(log_omega, axis=0)
    mean = jnp.sum(omega * prior, axis=0)
    variance = jnp.sum(omega * (prior - mean[None]) ** 2, axis=0)
    c = n * (1 - strength) / (jnp.maximum(strength, 1e-12) * total)
    combined = (resampled - mean[None]) + c[None] * (members - mean[None])
    norm = jnp.sum(combined**2, axis=0)
    r1 = jnp.where(norm > 0, jnp.sqrt((n - 1) * variance / jnp.where(norm > 0, norm, 1)), 1.0)
    return mean[None] + r1[None] * combined
