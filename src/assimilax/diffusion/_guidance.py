r"""Likelihood guidance: the posterior score is the prior score plus an approximation of
$\nabla_{x_t} \log p(y \mid x_t)$.

- `DampedGuidance`: $h(t)\,\nabla_x \log p(y \mid x)$ at $x = x_t$ (the score-based filter
  and the ensemble score filter; $h(t) = 1 - t$ by default).
- `DPSGuidance`: $\nabla_{x_t} \log p(y \mid \hat x_0(x_t))$ through Tweedie's denoiser
  (Chung et al. 2023, diffusion posterior sampling).
- `GaussianGuidance`: $\nabla_{x_t} \log N(y \mid h(\hat x_0), R + V_t)$ with
  $V_t = \gamma\,\sigma^2/\alpha^2 I$ (SDA, Rozet & Louppe 2023) or the second-order
  Tweedie covariance $V_t = J_h \mathrm{Cov}[x_0 \mid x_t] J_h^T$,
  $\mathrm{Cov}[x_0 \mid x_t] = \tfrac{\sigma^2}{\alpha}\,\partial \hat x_0 / \partial x_t$
  (Boys et al. 2023). With a Gaussian prior and a linear-Gaussian observation the
  Tweedie variant is exact, so guided sampling then draws from the exact posterior.
"""

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from .._custom_types import Array, Bool, Float
from ..observations import AbstractObservation
from ._sde import AbstractSDE


class AbstractGuidance(eqx.Module):
    """An approximation of the likelihood score for observed values `y`."""

    observation: eqx.AbstractVar[AbstractObservation]
    y: eqx.AbstractVar[Float[Array, " m"]]
    mask: eqx.AbstractVar[Bool[Array, " m"] | None]

    @abc.abstractmethod
    def __call__(self, x, t, sde: AbstractSDE, prior_score: Callable) -> Array:
        """The guidance term at `(x, t)` (same shape as `x`)."""


def posterior_score(sde: AbstractSDE, prior_score: Callable, guidance: AbstractGuidance):
    """`score(x, t) = prior_score(x, t) + guidance(x, t)`, for any sampler."""
    return lambda x, t: prior_score(x, t) + guidance(x, t, sde, prior_score)


def _damping_one_minus_t(t):
    return 1 - t


class DampedGuidance(AbstractGuidance):
    r"""$h(t)\,\nabla_x \log p(y \mid x)\big|_{x = x_t}$: the likelihood of the noised
    state itself, damped towards `t_max` where `x_t` is mostly noise. Cost: one
    gradient of the observation log-likelihood, $O(d)$ for local operators.

    **Arguments:** `observation`, `y`, `mask` (True = observed), and `damping`, a
    function `h(t)` (default `1 - t`, as the ensemble score filter).
    """

    observation: AbstractObservation
    y: Float[Array, " m"]
    mask: Bool[Array, " m"] | None = None
    damping: Callable = eqx.field(static=True, default=_damping_one_minus_t)

    def __call__(self, x, t, sde, prior_score):
        grad = jax.grad(lambda z: self.observation.log_likelihood(self.y, z, self.mask))(x)
        return jnp.asarray(self.damping(t), x.dtype) * grad


class DPSGuidance(AbstractGuidance):
    r"""Diffusion posterior sampling: `scale` times
    $\nabla_{x_t} \log p(y \mid \hat x_0(x_t))$, differentiating through the prior
    score in Tweedie's denoiser. Ignores the uncertainty of $\hat x_0$, so it
    over-weights the observation at large `t`."""

    observation: AbstractObservation
    y: Float[Array, " m"]
    mask: Bool[Array, " m"] | None = None
    scale: float = 1.0

    def __call__(self, x, t, sde, prior_score):
        def log_lik(z):
            x0 = sde.denoise(z, t, prior_score(z, t))
            return self.observation.log_likelihood(self.y, x0, self.mask)

        return self.scale * jax.grad(log_lik)(x)


def _masked_gaussian_log_density(residual, covariance, mask):
    """log N(residual; 0, covariance) over the observed entries (masked ones decoupled)."""
    if mask is not None:
        both = mask[:, None] & mask[None, :]
        covariance = jnp.where(both, covariance, jnp.eye(residual.shape[0], dtype=residual.dtype))
        residual = jnp.where(mask, residual, 0)
    chol = jnp.linalg.cholesky(covariance)
    z = jsl.solve_triangular(chol, residual, lower=True)
    return -0.5 * jnp.sum(z**2) - jnp.sum(jnp.log(jnp.diagonal(chol)))


class GaussianGuidance(AbstractGuidance):
    r"""$\nabla_{x_t} \log N(y \mid h(\hat x_0(x_t)),\, R + V_t)$, with $V_t$ held fixed.

    - `covariance='sda'` (default): $V_t = \gamma\,\sigma(t)^2/\alpha(t)^2\, I$ (SDA).
    - `covariance='tweedie'`: $V_t = J_h\,\tfrac{\sigma^2}{\alpha}\,\tfrac{\partial \hat
      x_0}{\partial x_t}\,J_h^T$, exact for a Gaussian prior and a linear `h`; costs a
      `(d, d)` Jacobian per evaluation, for small states.

    Dense in the observation space: $O(m^3)$ per evaluation.
    """

    observation: AbstractObservation
    y: Float[Array, " m"]
    mask: Bool[Array, " m"] | None = None
    gamma: float = 1.0
    covariance: str = eqx.field(static=True, default="sda")

    def __check_init__(self):
        if self.covariance not in ("sda", "tweedie"):
            raise ValueError(f"`covariance` must be 'sda' or 'tweedie'; got {self.covariance!r}.")

    def __call__(self, x, t, sde, prior_score):
        a, s = sde.alpha(t).astype(x.dtype), sde.sigma(t).astype(x.dtype)
        denoise = lambda z: sde.denoise(z, t, prior_score(z, t))
        r = self.observation.noise.dense().astype(x.dtype)
        x0 = denoise(x)
        if self.covariance == "sda":
            extra = self.gamma * (s / a) ** 2 * jnp.eye(r.shape[0], dtype=x.dtype)
        else:
            shape = x.shape
            flat = lambda f: lambda v: jnp.ravel(f(v.reshape(shape)))
            jac_denoise = jax.jacfwd(flat(denoise))(jnp.ravel(x))
            jac_h = jax.jacfwd(flat(self.observation.apply))(jnp.ravel(x0))
            cov_x0 = (s**2 / a) * jac_denoise
            extra = jac_h @ (0.5 * (cov_x0 + cov_x0.T)) @ jac_h.T
        cov = jax.lax.stop_gradient(r + extra)

        def log_lik(z):
            return _masked_gaussian_log_density(
                self.y - self.observation.apply(denoise(z)), cov, self.mask
            )

        return jax.grad(log_lik)(x)
