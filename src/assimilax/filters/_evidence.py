r"""The log-likelihood of each observation given the past ones, $\log p(y_k \mid
y_{1:k-1})$, from a filter's forecast: what `assimilate` records per cycle
(`Solution.log_likelihood`) and what `assimilax.fit` maximises."""

import math

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from .._belief import GaussianBelief
from .._ensemble import as_ensemble
from ._enkf import innovation_terms
from ._kalman import linearised_terms, masked_linear_terms
from ._particle import AbstractParticleFilter, ProposalEnsemble


def log_evidence(filter, forecast, observation, y, mask=None):
    r"""$\log p(y \mid y_{1:k-1})$ given the `forecast` belief of `filter`.

    - A `GaussianBelief` (Kalman filters): exact, $N(y; H m, H P H^T + R)$ with $H$ the
      operator's Jacobian at the mean (the extended Kalman filter's approximation when
      the operator is nonlinear).
    - A particle filter's weighted ensemble: $\log \sum_j w_j\, p(y \mid x_j)$, the
      particle filter's estimate (unbiased for the likelihood itself, $e^{\log}$); the
      optimal-proposal filter's $\log \sum_j w_j\, N(y; H f(x_j), H Q H^T + R)$.
    - Any other ensemble (the EnKF family, the score filters): the Gaussian
      approximation $N(y; \overline{h(x)}, \mathrm{cov}\,h(x) + R)$ from the forecast
      members, in observation space when there are fewer observations than members,
      else through the matrix determinant lemma in ensemble space (cost
      $O(\min(n, m)^2 \max(n, m) + \min(n, m)^3)$).

    Masked observations do not count; a cycle with none observed gives 0.
    """
    if isinstance(forecast, ProposalEnsemble):
        return _proposal_evidence(forecast, observation, y, mask)
    if isinstance(forecast, GaussianBelief):
        return _gaussian_evidence(forecast, observation, y, mask)
    ensemble = as_ensemble(forecast)
    if ensemble is None:
        raise TypeError(f"No log-likelihood for a {type(forecast).__name__} belief.")
    if isinstance(filter, AbstractParticleFilter):
        log_lik = jax.vmap(lambda x: observation.log_likelihood(y, x, mask))(ensemble.members)
        log_w = jax.nn.log_softmax(ensemble.log_weights.astype(log_lik.dtype))
        return jax.nn.logsumexp(log_w + log_lik)
    return _ensemble_evidence(ensemble, observation, y, mask)


def _observed(observation, y, mask):
    return observation.obs_dim if mask is None else jnp.sum(mask).astype(y.dtype)


def _gaussian_log_density(chol, residual, m_obs):
    """`log N(residual; 0, S)` from the lower Cholesky factor of `S`."""
    z = jsl.solve_triangular(chol, residual, lower=True)
    log_det = 2 * jnp.sum(jnp.log(jnp.diagonal(chol)))
    return -0.5 * (z @ z + log_det + m_obs * math.log(2 * math.pi))


def _gaussian_evidence(belief, observation, y, mask):
    h, r, residual = linearised_terms(observation, y, belief.loc, mask)
    chol = jnp.linalg.cholesky(h @ belief.covariance_matrix @ h.T + r)
    return _gaussian_log_density(chol, residual[0], _observed(observation, y, mask))


def _proposal_evidence(belief, observation, y, mask):
    members = belief.ensemble.members.reshape(belief.ensemble.size, -1)
    h, r, residuals = masked_linear_terms(observation, y, members, mask)
    chol = jnp.linalg.cholesky(h @ belief.noise_covariance @ h.T + r)
    m_obs = _observed(observation, y, mask)
    log_lik = jax.vmap(lambda e: _gaussian_log_density(chol, e, m_obs))(residuals)
    log_w = jax.nn.log_softmax(belief.ensemble.log_weights.astype(log_lik.dtype))
    return jax.nn.logsumexp(log_w + log_lik)


def _ensemble_evidence(ensemble, observation, y, mask):
    terms = innovation_terms(ensemble, observation, y, mask)
    n, m = terms.obs_anomalies.shape
    s = terms.obs_anomalies / jnp.sqrt(jnp.asarray(n - 1, y.dtype))  # whitened: s^T s + I
    delta = terms.innovation
    m_obs = _observed(observation, y, mask)
    if m <= n:  # the whitened innovation covariance I + s^T s itself: O(n m^2 + m^3)
        chol = jnp.linalg.cholesky(jnp.eye(m, dtype=s.dtype) + s.T @ s)
        z = jsl.solve_triangular(chol, delta, lower=True)
        log_det = observation.noise.log_det(mask) + 2 * jnp.sum(jnp.log(jnp.diagonal(chol)))
        return -0.5 * (z @ z + log_det + m_obs * math.log(2 * math.pi))
    # Through the n x n matrix I + s s^T (determinant lemma, Woodbury): O(n^2 m + n^3).
    chol = jnp.linalg.cholesky(jnp.eye(n, dtype=s.dtype) + s @ s.T)
    v = jsl.solve_triangular(chol, s @ delta, lower=True)
    log_det = observation.noise.log_det(mask) + 2 * jnp.sum(jnp.log(jnp.diagonal(chol)))
    return -0.5 * (delta @ delta - v @ v + log_det + m_obs * math.log(2 * math.pi))
