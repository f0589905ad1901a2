"""Particle filters: the bootstrap filter and the optimal proposal, with resampling
triggered by the effective sample size and optional regularisation."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax import lax

from .._checks import check_value
from .._custom_types import Array, Float, PRNGKeyArray
from .._ensemble import AbstractEnsembleBelief, Ensemble, flatten_members
from .._resampling import RESAMPLING, resample
from ..dynamics import AbstractAdditiveNoiseDynamics
from ._kalman import kalman_gain, masked_linear_terms
from .base import AbstractFilter, check_ensemble, move_members


def _regularise(x, weights, ancestors, scale, duplicates_only, *, key):
    r"""Resampled members `x[ancestors]` plus Gaussian jitter with covariance
    `scale^2 C`, `C` the weighted covariance of `x` (DAPPER's `regularize`). With
    `duplicates_only`, particles drawn once keep their value."""
    n = x.shape[0]
    # Degenerate weights give C = 0: fall back to the unweighted covariance, as DAPPER.
    degenerate = jnp.max(weights) > 1 - 1e-10
    w = jnp.where(degenerate, jnp.full_like(weights, 1 / n), weights)
    anomalies = x - (w @ x)[None]
    root = jnp.sqrt(w / (1 - jnp.sum(w**2)))[:, None] * anomalies  # C = root^T root
    d = x.shape[1]
    if d < n:
        # Cheaper through the (d, d) covariance: O(n d^2 + d^3) instead of O(n^2 d).
        eigvals, eigvecs = jnp.linalg.eigh(root.T @ root)
        root = (eigvecs * jnp.sqrt(jnp.clip(eigvals, 0))[None]).T
    jitter = scale * (jr.normal(key, (n, root.shape[0]), x.dtype) @ root)
    resampled = x[ancestors]
    if duplicates_only:
        # `ancestors` is sorted, so copies of one particle are neighbours.
        dup = (ancestors == jnp.roll(ancestors, 1)) | (ancestors == jnp.roll(ancestors, -1))
        jitter = jnp.where(dup[:, None], jitter, 0)
    return resampled + jitter


class AbstractParticleFilter(AbstractFilter):
    """Shared by the particle filters: resampling, triggered by the effective sample
    size, happens at the start of the forecast, so the analysis belief is the weighted
    ensemble. Its mean is the importance-weighted estimate and its `effective_size()`
    (the ESS reported per cycle by `assimilate`) shows weight collapse."""

    resampling: str = eqx.field(static=True)
    threshold: Float[Array, ""]
    regularisation: Float[Array, ""]
    jitter_duplicates_only: bool = eqx.field(static=True)

    def __init__(
        self,
        resampling: str = "systematic",
        threshold=0.5,
        regularisation=0.0,
        jitter_duplicates_only: bool = True,
    ):
        if resampling not in RESAMPLING:
            raise ValueError(
                f"Unknown `resampling` {resampling!r}; choose one of {', '.join(RESAMPLING)}."
            )
        self.resampling = resampling
        self.threshold = check_value(
            jnp.asarray(threshold, float),
            lambda a, xp: ~((a >= 0) & (a <= 1)),
            f"`threshold` must lie in [0, 1] (a fraction of the ensemble size); got {threshold!r}.",
        )
        self.regularisation = check_value(
            jnp.asarray(regularisation, float),
            lambda a, xp: ~((a >= 0) & xp.isfinite(a)),
            f"`regularisation` must be a finite number >= 0; got {regularisation!r}.",
        )
        self.jitter_duplicates_only = bool(jitter_duplicates_only)

    def init(self, ensemble: Ensemble, *, key: PRNGKeyArray) -> Ensemble:
        del key
        return check_ensemble(ensemble)

    def resample_if_degenerate(self, belief: Ensemble, *, key: PRNGKeyArray) -> Ensemble:
        """Resample (and jitter) when `ESS <= threshold * n`; otherwise return `belief`."""
        n = belief.size
        weights = belief.weights()
        resample_key, jitter_key = jr.split(key)

        def _resample(_):
            x = flatten_members(belief.members)
            ancestors = resample(weights, self.resampling, key=resample_key)
            d = x.shape[1]
            # Scott's rule bandwidth n^(-1/(d+4)) times the `regularisation` factor.
            scale = self.regularisation.astype(x.dtype) * n ** (-1 / (d + 4))
            x = _regularise(
                x, weights, ancestors, scale, self.jitter_duplicates_only, key=jitter_key
            )
            return x.reshape(belief.members.shape), jnp.zeros_like(belief.log_weights)

        keep = lambda _: (belief.members, belief.log_weights)
        do = belief.effective_size() <= self.threshold.astype(weights.dtype) * n
        members, log_weights = lax.cond(do, _resample, keep, None)
        return Ensemble(members, log_weights)


def _reweight(log_weights, log_likelihood):
    """Bayes' rule in log space, normalised so the log-weights stay bounded."""
    log_weights = log_weights + log_likelihood
    return log_weights - jax.nn.logsumexp(log_weights)


class BootstrapFilter(AbstractParticleFilter):
    r"""The bootstrap particle filter (sequential importance resampling).

    Forecast: resample if $\mathrm{ESS} = 1/\sum_j w_j^2 \le$ `threshold`$\cdot n$
    (with optional jitter), then move every particle through the stochastic dynamics.
    Update: $\log w_j \mathrel{+}= \log p(y \mid x_j)$, normalised in log space. Any
    observation operator (linear or not) works; masked values are ignored.

    **Arguments:**

    - `resampling`: 'systematic' (default), 'stratified', 'residual' or 'multinomial'.
    - `threshold`: resample when the ESS falls to `threshold * n` or below (DAPPER's
      `NER`); 1 resamples every cycle, 0 never (unless fully degenerate).
    - `regularisation`: jitter factor (DAPPER's `reg`): after resampling, add
      $N(0, (\text{reg}\; n^{-1/(d+4)})^2 C)$ noise, `C` the weighted ensemble covariance
      (Scott's rule bandwidth). Needed for deterministic models, whose copies would
      otherwise never separate. 0 (default) disables it.
    - `jitter_duplicates_only`: jitter only the particles drawn more than once
      (default, as DAPPER's `nuj`).

    References: Gordon, Salmond & Smith (1993); Doucet, de Freitas & Gordon (2001),
    ch. 12 (regularisation); van Leeuwen (2009).
    """

    def forecast(self, belief, dynamics, t0, t1, *, key):
        resample_key, move_key = jr.split(key)
        belief = self.resample_if_degenerate(belief, key=resample_key)
        return move_members(belief, dynamics, t0, t1, key=move_key)

    def update(self, belief, observation, y, mask=None, *, key):
        del key
        log_lik = jax.vmap(lambda x: observation.log_likelihood(y, x, mask))(belief.members)
        return Ensemble(belief.members, _reweight(belief.log_weights, log_lik))


class ProposalEnsemble(AbstractEnsembleBelief):
    """Forecast of the optimal-proposal filter: the noise-free particle positions
    `f(x_j)` (an `Ensemble`) plus the covariance `Q` of the model noise still to be
    added in the update. Its moments are those of the centres (the spread omits `Q`)."""

    ensemble: Ensemble
    noise_covariance: Float[Array, "d d"]

    def __init__(self, members, log_weights, noise_covariance):
        self.ensemble = Ensemble(members, log_weights)
        self.noise_covariance = noise_covariance


class OptimalProposalFilter(AbstractParticleFilter):
    r"""The particle filter with the optimal proposal for additive Gaussian model noise
    and linear-Gaussian observations (Doucet, Godsill & Andrieu 2000).

    With the model step $x_k = f(x_{k-1}) + w$, $w \sim N(0, Q)$ and $y = Hx + v$,
    $v \sim N(0, R)$, each particle is drawn from $p(x_k \mid x_{k-1}, y_k) =
    N(f + K(y - Hf),\, (I - KH)Q)$, $K = QH^T S^{-1}$, $S = HQH^T + R$, and weighted by
    $p(y_k \mid x_{k-1}) = N(y; Hf, S)$. The weights then depend on the previous state
    only, which keeps them far better balanced than the bootstrap filter's.

    Needs an `AbstractAdditiveNoiseDynamics` (Lorenz models, `LinearDynamics`) and an
    `AbstractLinearObservation`. Dense in the state: $O(d^3 + n d^2)$ per update.
    Settings as `BootstrapFilter`.
    """

    def forecast(self, belief, dynamics, t0, t1, *, key):
        if not isinstance(dynamics, AbstractAdditiveNoiseDynamics):
            raise TypeError(
                "OptimalProposalFilter needs dynamics with additive Gaussian noise (an "
                f"AbstractAdditiveNoiseDynamics); got {type(dynamics).__name__}."
            )
        belief = self.resample_if_degenerate(belief, key=key)
        members = jax.vmap(lambda x: dynamics.step_mean(x, t0, t1))(belief.members)
        q = dynamics.step_covariance(t0, t1).astype(members.dtype)
        return ProposalEnsemble(members, belief.log_weights, q)

    def update(self, belief, observation, y, mask=None, *, key):
        if not isinstance(belief, ProposalEnsemble):
            raise TypeError(
                "OptimalProposalFilter.update needs the belief returned by its own "
                f"`forecast` (a ProposalEnsemble); got {type(belief).__name__}."
            )
        centres = flatten_members(belief.members)
        h, r, residual = masked_linear_terms(observation, y, centres, mask)
        gain, covariance, chol_s = kalman_gain(belief.noise_covariance, h, r)
        whitened = jax.scipy.linalg.solve_triangular(chol_s, residual.T, lower=True)
        log_lik = -0.5 * jnp.sum(whitened**2, axis=0)
        # eigh, not Cholesky: (I - KH) Q is singular where the model noise is.
        eigvals, eigvecs = jnp.linalg.eigh(covariance)
        root = eigvecs * jnp.sqrt(jnp.clip(eigvals, 0))[None]
        noise = jr.normal(key, centres.shape, centres.dtype) @ root.T
        members = centres + residual @ gain.T + noise
        return Ensemble(
            members.reshape(belief.members.shape), _reweight(belief.log_weights, log_lik)
        )
