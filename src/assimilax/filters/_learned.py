r"""A learned prior of the forecast law given the forecast members (issue 28): a
conditional score network trained offline on the model's own twin experiments, sampled
many times per analysis and updated exactly by importance weights.

**Coordinates.** With the forecast members' mean $m$ and the Cholesky factor $L$ of
their covariance (plus a small ridge), the truth is written $x = m + L z$: the network
learns the law of $z$ (how far, in units of the ensemble's own spread and correlations,
the truth lies from the ensemble) conditioned on features of the ensemble ($m$ and
$\log\operatorname{diag} L$, the off-diagonal of $L$ over its diagonal), standardised
by training-set constants. A calibrated Gaussian ensemble gives $z \sim N(0, I)$
whatever $m$; the network learns where the members under- or over-state the spread and
where the law is skewed (near the saddle of Lorenz-63, say).

**Analysis.** `particles` samples $z$ from the learned law (reverse-time SDE,
`steps` Euler–Maruyama steps), mapped to $x$, weighted by the observation likelihood
$p(y \mid x)$ (exact Bayes on the learned prior), and `n` members drawn from them by
systematic resampling.

**Grids** (`local=True`): on a ring of sites the frame is the members' mean and spread
at each site, $x_i = m_i + s_i z_i$, the features are fields (mean, log spread, the
correlation of each site with its two right neighbours), and the network is local and
translation-invariant (`diffusion.LocalScore`). Importance weights over tens of
observed sites degenerate whatever the number of samples, so there an ensemble filter
updates the samples (`analysis`, e.g. the ETKF with the `particles` samples as its
members; the update is Gaussian but its covariance is the learned prior's, resolved by
hundreds of samples, not the rank-(n - 1) one of the members).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._custom_types import Array, Float
from .._ensemble import Ensemble, flatten_members
from .._resampling import draw
from ..diffusion import AbstractSDE, euler_maruyama, score_function
from ._inflation import AbstractInflation, as_inflation
from .base import AbstractEnsembleFilter


def ensemble_frame(members: Float[Array, "n d"], ridge: float = 0.05):
    """`(m, L, features)` of flat forecast members: their mean, the Cholesky factor of
    their covariance plus `ridge` times its mean variance, and the raw conditioning
    features (m, log diag L, strict lower triangle of L over the diagonal of its row)."""
    n, d = members.shape
    mean = jnp.mean(members, axis=0)
    anomalies = members - mean[None]
    cov = anomalies.T @ anomalies / (n - 1)
    floor = ridge * jnp.trace(cov) / d + jnp.finfo(cov.dtype).eps ** 0.5
    cov = cov + floor * jnp.eye(d, dtype=cov.dtype)
    chol = jnp.linalg.cholesky(cov)
    diag = jnp.diag(chol)
    rows, cols = jnp.tril_indices(d, -1)
    features = jnp.concatenate([mean, jnp.log(diag), chol[rows, cols] / diag[rows]])
    return mean, chol, features


def local_frame(members: Float[Array, "n d"], ridge: float = 0.05):
    """`(m, s, features)` of flat forecast members on a ring of sites: their mean and
    spread at each site (variance plus `ridge` times its mean), and the features as
    `(4 d,)` channel-major fields: m, log s, and the correlation of each site with the
    next and the one after (periodic)."""
    n = members.shape[0]
    mean = jnp.mean(members, axis=0)
    anomalies = members - mean[None]
    var = jnp.sum(anomalies**2, axis=0) / (n - 1)
    std = jnp.sqrt(var + ridge * jnp.mean(var) + jnp.finfo(var.dtype).eps ** 0.5)
    u = anomalies / std[None]
    lag = lambda k: jnp.sum(u * jnp.roll(u, -k, axis=1), axis=0) / (n - 1)
    return mean, std, jnp.concatenate([mean, jnp.log(std), lag(1), lag(2)])


def _frame(members, ridge, local):
    """`(mean, to_state, to_z, features)` of the members' frame (full or local)."""
    if local:
        mean, std, features = local_frame(members, ridge)
        return mean, lambda z: z * std[None], lambda e: e / std, features
    mean, chol, features = ensemble_frame(members, ridge)
    to_z = lambda e: jax.scipy.linalg.solve_triangular(chol, e, lower=True)
    return mean, lambda z: z @ chol.T, to_z, features


def training_pairs(forecast_members, truth, ridge: float = 0.05, local: bool = False):
    """`(z, features)` for training from forecast members `(K, n, *state)` and the true
    states `(K, *state)`: the truth in each ensemble's frame (`local_frame` on a ring
    of sites with `local`, else `ensemble_frame`), and its features."""
    k = truth.shape[0]
    flat = forecast_members.reshape(k, forecast_members.shape[1], -1)

    def one(members, x):
        mean, _, to_z, features = _frame(members, ridge, local)
        return to_z(x.reshape(-1) - mean), features

    return jax.vmap(one)(flat, truth)


class LearnedPriorFilter(AbstractEnsembleFilter):
    r"""The analysis from a learned conditional prior (see the module): `particles`
    samples of the truth given the forecast members, importance-weighted by the
    likelihood (or updated by an ensemble filter, `analysis`), and `n` analysis members
    made from them (`coupling`).

    **Arguments:**

    - `network`: a noise predictor `network(z, t, cond)` trained by denoising score
      matching on `z / z_scale` with condition `(features - feature_mean) /
      feature_std` (`training_pairs`; e.g. `diffusion.MLPScore(d, cond_dim=p)`), or
      without condition (`conditioned=False`: the law of `z` alone).
    - `sde`: the forward SDE it was trained with.
    - `z_scale`, `feature_mean`, `feature_std`: the training set's constants.
    - `particles`: samples per analysis (default 1000).
    - `steps`: reverse-time steps per sample (default 100).
    - `conditioned`: whether the network takes the ensemble features.
    - `ridge`: added to the members' covariance, times its mean variance, before the
      Cholesky factor (as in training; default 0.05).
    - `inflation`: an `AbstractInflation` or a float, applied to the analysis members.
    - `local`: the frame and features of a ring of sites (`local_frame`; a
      `diffusion.LocalScore` network) rather than the full covariance's.
    - `analysis`: an ensemble filter that updates the samples as its members (e.g.
      `ETKF()`), the analysis members being `n` of them; default (None): importance
      weights and resampling.
    - `coupling`: how the `n` analysis members are made from the posterior samples:
      `"draw"` (default) `n` of them (resampled by weight); `"rescale"` the forecast
      members, their anomalies scaled site by site to the posterior samples' spread
      (keeps each member the model's own state, as the relaxation to prior spread does).
      Either way they are centred on the posterior samples' mean.
    """

    network: eqx.Module
    sde: AbstractSDE
    z_scale: Float[Array, " d"]
    feature_mean: Float[Array, " p"]
    feature_std: Float[Array, " p"]
    inflation: AbstractInflation
    analysis: AbstractEnsembleFilter | None
    coupling: str = eqx.field(static=True)
    particles: int = eqx.field(static=True)
    steps: int = eqx.field(static=True)
    conditioned: bool = eqx.field(static=True)
    ridge: float = eqx.field(static=True)
    local: bool = eqx.field(static=True)

    def __init__(
        self, network, sde, z_scale, feature_mean, feature_std, particles=1000, steps=100,
        conditioned=True, ridge=0.05, inflation=None, local=False, analysis=None,
        coupling="draw",
    ):  # fmt: skip
        if particles < 1 or steps < 1:
            raise ValueError(f"`particles` and `steps` must be >= 1; got {particles}, {steps}.")
        self.network, self.sde = network, sde
        self.z_scale = jnp.asarray(z_scale)
        self.feature_mean = jnp.asarray(feature_mean)
        self.feature_std = jnp.asarray(feature_std)
        self.particles, self.steps = int(particles), int(steps)
        self.conditioned = bool(conditioned)
        self.ridge = float(ridge)
        self.inflation = as_inflation(inflation)
        self.local = bool(local)
        if analysis is not None and not isinstance(analysis, AbstractEnsembleFilter):
            raise TypeError(f"`analysis` must be an ensemble filter or None; got {analysis!r}.")
        self.analysis = analysis
        if coupling not in ("draw", "rescale"):
            raise ValueError(f"`coupling` must be 'draw' or 'rescale'; got {coupling!r}.")
        self.coupling = coupling

    def prior_samples(self, members: Float[Array, "n d"], *, key) -> Float[Array, "M d"]:
        """`particles` samples of the truth given flat forecast `members`."""
        mean, to_state, _, features = _frame(members, self.ridge, self.local)
        (d,), dtype = mean.shape, members.dtype
        cond = None
        if self.conditioned:
            cond = (features - self.feature_mean.astype(dtype)) / self.feature_std.astype(dtype)
        score = score_function(self.network, self.sde, cond)
        init_key, sample_key = jr.split(key)
        start = self.sde.prior_sample((self.particles, d), key=init_key, dtype=dtype)
        z = euler_maruyama(self.sde, score, start, key=sample_key, steps=self.steps)
        z_scale = jnp.broadcast_to(self.z_scale.astype(dtype), (d,))
        return mean[None] + to_state(z * z_scale[None])

    def update(self, belief, observation, y, mask=None, *, key):
        forecast = flatten_members(belief.members)
        sample_key, draw_key = jr.split(key)
        samples = self.prior_samples(forecast, key=sample_key)
        shape = belief.state_shape
        n = forecast.shape[0]
        if self.analysis is not None:
            ensemble = Ensemble(samples.reshape(-1, *shape))
            state = self.analysis.update(
                self.analysis.init(ensemble, key=draw_key), observation, y, mask, key=draw_key
            )  # fmt: skip
            posterior = flatten_members(state.members)
            weights = jnp.full(posterior.shape[0], 1.0 / posterior.shape[0], posterior.dtype)
            chosen = posterior[:n]
        else:
            log_lik = jax.vmap(lambda x: observation.log_likelihood(y, x.reshape(shape), mask))(
                samples
            )
            weights, posterior = jax.nn.softmax(log_lik), samples
            chosen = samples[draw(weights, n, key=draw_key)]
        centre = weights @ posterior
        if self.coupling == "rescale":
            # The forecast members moved: their anomalies scaled, site by site, to the
            # posterior samples' spread (members stay what the model made of them).
            spread = jnp.sqrt(weights @ (posterior - centre[None]) ** 2)
            anomalies = forecast - jnp.mean(forecast, axis=0)[None]
            own = jnp.sqrt(jnp.sum(anomalies**2, axis=0) / (n - 1))
            chosen = anomalies * (spread / jnp.maximum(own, jnp.finfo(own.dtype).tiny))[None]
        # Centred on the posterior mean of all the samples (not of the few drawn).
        analysis = chosen - jnp.mean(chosen, axis=0)[None] + centre[None]
        analysis = self.inflation(forecast, analysis)
        return Ensemble(analysis.reshape(belief.members.shape))
