"""Linear stochastic dynamics with an exact transition: the Kalman filter's model."""

import abc
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
from jax import lax

from .._checks import check_finite, check_ndim, check_shape
from .._custom_types import Array, Float
from .base import AbstractAdditiveNoiseDynamics


class _ExactLinearDynamics(AbstractAdditiveNoiseDynamics):
    """Shared by the linear models: stepping from the exact `transition(t0, t1)`, the
    matrix `M` and noise covariance `Q_Delta` of the interval."""

    noise_covariance: eqx.AbstractVar[Float[Array, "d d"] | None]
    is_linear: ClassVar[bool] = True

    @abc.abstractmethod
    def transition(self, t0, t1) -> tuple[Float[Array, "d d"], Float[Array, "d d"]]:
        """The transition matrix and noise covariance over `[t0, t1]`."""

    def step_mean(self, x, t0, t1):
        m, _ = self.transition(t0, t1)
        return m.astype(x.dtype) @ x

    def step_covariance(self, t0, t1):
        _, q = self.transition(t0, t1)
        return q

    def step(self, x, t0, t1, *, key):
        m, q = self.transition(t0, t1)
        x1 = m.astype(x.dtype) @ x
        if self.noise_covariance is None:
            return x1
        # eigh rather than Cholesky: Q_Delta may be singular (noise in few directions).
        eigvals, eigvecs = jnp.linalg.eigh(q)
        root = eigvecs * jnp.sqrt(jnp.clip(eigvals, 0))[None]
        return x1 + (root @ jr.normal(key, x.shape, q.dtype)).astype(x.dtype)


class LinearDynamics(_ExactLinearDynamics):
    r"""The linear SDE $dx = A x\,dt + dW$, $\operatorname{Cov}(dW) = Q\,dt$, solved exactly.

    Over a step $\Delta = t_1 - t_0$ the transition is $x_1 = M x_0 + w$,
    $M = e^{A\Delta}$, $w \sim N(0, Q_\Delta)$, $Q_\Delta = \int_0^\Delta e^{As} Q
    e^{A^T s} ds$, computed with Van Loan's block-matrix exponential. Exact for any
    step, so filters on this model can be compared with the Kalman filter.

    **Arguments:**

    - `drift`: the `(d, d)` matrix `A`.
    - `noise_covariance`: the `(d, d)` diffusion covariance `Q` per unit time, or None
      for deterministic dynamics.
    """

    drift: Float[Array, "d d"]
    noise_covariance: Float[Array, "d d"] | None

    def __init__(self, drift, noise_covariance=None):
        drift = jnp.asarray(drift)
        check_ndim(drift, 2, "drift", "(d, d)")
        d = drift.shape[0]
        check_shape(drift, (d, d), "drift", "(d, d)")
        self.drift = check_finite(drift, "drift")
        if noise_covariance is not None:
            noise_covariance = jnp.asarray(noise_covariance)
            check_shape(noise_covariance, (d, d), "noise_covariance", "(d, d)")
            noise_covariance = check_finite(noise_covariance, "noise_covariance")
        self.noise_covariance = noise_covariance

    @property
    def state_shape(self):
        return (self.drift.shape[0],)

    def transition(self, t0, t1) -> tuple[Float[Array, "d d"], Float[Array, "d d"]]:
        """The exact transition matrix `M` and noise covariance `Q_Delta` over `[t0, t1]`."""
        d = self.drift.shape[0]
        delta = t1 - t0
        if self.noise_covariance is None:
            return jsl.expm(self.drift * delta), jnp.zeros((d, d), self.drift.dtype)
        # Van Loan (1978): expm([[-A, Q], [0, A^T]] Δ) = [[., G], [0, M^T]], Q_Δ = M G.
        block = jnp.block(
            [
                [-self.drift, self.noise_covariance],
                [jnp.zeros_like(self.drift), self.drift.T],
            ]
        )
        e = jsl.expm(block * delta)
        m = e[d:, d:].T
        q = m @ e[:d, d:]
        return m, 0.5 * (q + q.T)


class DiscreteLinearDynamics(_ExactLinearDynamics):
    r"""The discrete-time linear-Gaussian model $x_{j+1} = F x_j + w_j$,
    $w_j \sim N(0, Q)$, one step every `interval` time units: the state equation of
    statsmodels' and dynamax's linear state-space models (ARMA, local level, trends,
    seasonals).

    Over $[t_0, t_1]$ it takes $s = \mathrm{round}((t_1 - t_0) / \text{interval})$ steps
    (several where observations are missing): $M = F^s$,
    $Q_s = \sum_{i<s} F^i Q F^{iT}$.

    **Arguments:**

    - `matrix`: the `(d, d)` transition matrix `F`.
    - `noise_covariance`: the `(d, d)` covariance `Q` of one step's noise, or None.
    - `interval`: the time between steps (default 1).
    """

    matrix: Float[Array, "d d"]
    noise_covariance: Float[Array, "d d"] | None
    interval: float

    def __init__(self, matrix, noise_covariance=None, interval: float = 1.0):
        matrix = jnp.asarray(matrix)
        check_ndim(matrix, 2, "matrix", "(d, d)")
        d = matrix.shape[0]
        check_shape(matrix, (d, d), "matrix", "(d, d)")
        self.matrix = check_finite(matrix, "matrix")
        if noise_covariance is not None:
            noise_covariance = jnp.asarray(noise_covariance)
            check_shape(noise_covariance, (d, d), "noise_covariance", "(d, d)")
            noise_covariance = check_finite(noise_covariance, "noise_covariance")
        self.noise_covariance = noise_covariance
        if not (isinstance(interval, int | float) and interval > 0):
            raise ValueError(f"`interval` must be a positive number; got {interval!r}.")
        self.interval = float(interval)

    @property
    def state_shape(self):
        return (self.matrix.shape[0],)

    def transition(self, t0, t1) -> tuple[Float[Array, "d d"], Float[Array, "d d"]]:
        """The transition matrix `M = F^s` and noise covariance `Q_s` over `[t0, t1]`."""
        steps = jnp.round((t1 - t0) / self.interval).astype(jnp.int32)
        d = self.matrix.shape[0]
        q = self.noise_covariance
        if q is None:
            q = jnp.zeros((d, d), self.matrix.dtype)

        def one(_, carry):
            m, cov = carry
            return self.matrix @ m, self.matrix @ cov @ self.matrix.T + q

        eye = jnp.eye(d, dtype=self.matrix.dtype)
        m, cov = lax.fori_loop(0, steps, one, (eye, jnp.zeros_like(eye)))
        return m, 0.5 * (cov + cov.T)
