"""The dynamics interface: advance ONE member from `t0` to `t1`."""

import abc
from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jax import lax

from .._custom_types import Array, Float, PRNGKeyArray, RealScalarLike


class AbstractDynamics(eqx.Module):
    """A (possibly stochastic) model that advances one member's state.

    Filters `vmap` `step` over their members; a model never knows which filter drives it.
    """

    @property
    @abc.abstractmethod
    def state_shape(self) -> tuple[int, ...]:
        """The shape of one member's state."""

    @abc.abstractmethod
    def step(
        self,
        x: Float[Array, " *state"],
        t0: RealScalarLike,
        t1: RealScalarLike,
        *,
        key: PRNGKeyArray,
    ) -> Float[Array, " *state"]:
        """Advance `x` from time `t0` to time `t1 >= t0`."""


class AbstractAdditiveNoiseDynamics(AbstractDynamics):
    r"""A model whose step is a deterministic map plus additive Gaussian noise:
    $x_1 = f(x_0) + w$, $w \sim N(0, Q_{t_0 \to t_1})$.

    Filters that use the split explicitly (the optimal-proposal particle filter)
    need `step_mean` and `step_covariance`; `step` must draw from the same law.
    Models whose `step_mean` is linear in `x` set `is_linear = True`; the Kalman filter
    is exact on them.
    """

    is_linear: ClassVar[bool] = False

    @abc.abstractmethod
    def step_mean(
        self, x: Float[Array, " *state"], t0: RealScalarLike, t1: RealScalarLike
    ) -> Float[Array, " *state"]:
        """The deterministic part `f(x)` of a step from `t0` to `t1`."""

    @abc.abstractmethod
    def step_covariance(self, t0: RealScalarLike, t1: RealScalarLike) -> Float[Array, "d d"]:
        """The covariance `Q` (dense, over the flattened state) of the step's noise;
        zeros for a deterministic model."""


def substeps(t0, t1, dt) -> tuple[Array, Array]:
    """Split `[t0, t1]` into `n = ceil((t1 - t0) / dt)` equal steps of size `h <= dt`.

    Returns `(n, h)`. A relative slack of 1e-6 keeps `0.05 / 0.01` at 5 steps despite
    rounding; an empty interval gives `n = 0`.
    """
    span = jnp.asarray(t1 - t0)
    n = jnp.maximum(jnp.ceil(span / dt - 1e-6).astype(jnp.int32), 0)
    h = span / jnp.maximum(n, 1).astype(span.dtype)
    return n, h


def rk4_integrate(vector_field: Callable[[Array], Array], x: Array, t0, t1, dt) -> Array:
    """Integrate the autonomous ODE `dx/dt = f(x)` with classical RK4.

    Fixed steps of size at most `dt` (see `substeps`), looped with `lax.fori_loop` so the
    compiled program does not grow with the number of steps.
    """
    n, h = substeps(t0, t1, dt)
    h = jnp.asarray(h, x.dtype)

    def body(_, y):
        k1 = vector_field(y)
        k2 = vector_field(y + 0.5 * h * k1)
        k3 = vector_field(y + 0.5 * h * k2)
        k4 = vector_field(y + h * k3)
        return y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)

    return lax.fori_loop(0, n, body, x)


def add_model_noise(x: Array, noise_std, t0, t1, *, key: PRNGKeyArray) -> Array:
    r"""Add the integrated additive noise of $dx = \dots\,dt + \sigma\,dW$ over `[t0, t1]`.

    The increment is $\sigma \sqrt{t_1 - t_0}\,\xi$, $\xi \sim N(0, I)$.
    """
    scale = jnp.asarray(noise_std, x.dtype) * jnp.sqrt(jnp.asarray(t1 - t0, x.dtype))
    return x + scale * jr.normal(key, x.shape, x.dtype)
