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


def training_pairs(forecast_members, truth, ridge: float = 0.05):
    """`(z, features)` for training from forecast members `(K, n, *state)` and the true
    states `(K, *state)`: the truth in each ensemble's frame, and its features."""
    k = truth.shape[0]
    flat = forecast_members.reshape(k, forecast_members.shape[1], -1)

    def one(members, x):
        mean, chol, features = ensemble_frame(members, ridge)
        z = jax.scipy.linalg.solve_triangular(chol, x.reshape(-1) - mean, lower=True)
        return z, features

    return jax.vmap(one)(flat, truth)


class LearnedPriorFilter(AbstractEnsembleFilter):
    r"""The analysis from a learned conditional prior (see the module): `particles`
    samples of the truth given the forecast members, importance-weighted by the
    likelihood, `n` of them resampled as the analysis members.

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
    """

    network: eqx.Module
    sde: AbstractSDE
    z_scale: Float[Array, " d"]
    feature_mean: Float[Array, " p"]
    feature_std: Float[Array, " p"]
    inflation: AbstractInflation
    particles: int = eqx.field(static=True)
    steps: int = eqx.field(static=True)
    conditioned: bool = eqx.field(static=True)
    ridge: float = eqx.field(static=True)

    def __init__(
        self, network, sde, z_scale, feature_mean, feature_std, particles=1000, steps=100,
        conditioned=True, ridge=0.05, inflation=None,
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

    def prior_samples(self, members: Float[Array, "n d"], *, key) -> Float[Array, "M d"]:
        """`particles` samples of the truth given flat forecast `members`."""
        mean, chol, features = ensemble_frame(members, self.ridge)
        (d,), dtype = mean.shape, members.dtype
        cond = None
        if self.conditioned:
            cond = (features - self.feature_mean.astype(dtype)) / self.feature_std.astype(dtype)
        score = score_function(self.network, self.sde, cond)
        init_key, sample_key = jr.split(key)
        start = self.sde.prior_sample((self.particles, d), key=init_key, dtype=dtype)
        z = euler_maruyama(self.sde, score, start, key=sample_key, steps=self.steps)
        z_scale = jnp.broadcast_to(self.z_scale.astype(dtype), (d,))
        return mean[None] + (z * z_scale[None]) @ chol.T

    def update(self, belief, observation, y, mask=None, *, key):
        forecast = flatten_members(belief.members)
        sample_key, draw_key = jr.split(key)
        samples = self.prior_samples(forecast, key=sample_key)
        shape = belief.state_shape
        log_lik = jax.vmap(lambda x: observation.log_likelihood(y, x.reshape(shape), mask))(samples)
        weights = jax.nn.softmax(log_lik)
        chosen = samples[draw(weights, forecast.shape[0], key=draw_key)]
        # Centred on the posterior mean of all the samples (not of the few drawn).
        analysis = chosen - jnp.mean(chosen, axis=0)[None] + (weights @ samples)[None]
        analysis = self.inflation(forecast, analysis)
        return Ensemble(analysis.reshape(belief.members.shape))
