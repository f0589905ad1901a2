"""Random multiplicative shocks: a model error that a filter's own model does not know
(the EnSF paper's headline experiment applies them to the truth only)."""

import jax.numpy as jnp
import jax.random as jr

from .._custom_types import Array, Float
from .base import AbstractDynamics


class Shocked(AbstractDynamics):
    r"""`dynamics` plus random multiplicative shocks: after each step from $t_0$ to
    $t_1$, each shock kind $i$ strikes with probability $1 - e^{-\lambda_i (t_1 - t_0)}$
    and then moves the whole state by $x \leftarrow x + s_i\,|x| \odot \xi$,
    $\xi \sim N(0, I)$ (Bao, Zhang & Zhang 2024, code: $s \in \{0.5, 0.2, 0.05\}$ with
    probabilities $\{0.005, 0.01, 0.02\}$ per model step of 0.01, i.e. rates
    $\{0.5, 1, 2\}$ per time unit).

    **Arguments:** `dynamics`; `rates` $\lambda_i$ (per model time unit) and `scales`
    $s_i$, of equal length.
    """

    dynamics: AbstractDynamics
    rates: Float[Array, " k"]
    scales: Float[Array, " k"]

    def __init__(self, dynamics: AbstractDynamics, rates, scales):
        if not isinstance(dynamics, AbstractDynamics):
            raise TypeError(
                f"`dynamics` must be an AbstractDynamics; got {type(dynamics).__name__}."
            )
        rates, scales = jnp.atleast_1d(jnp.asarray(rates)), jnp.atleast_1d(jnp.asarray(scales))
        if rates.shape != scales.shape or rates.ndim != 1:
            raise ValueError(
                f"`rates` and `scales` must be 1-D of one length; got {rates.shape} and "
                f"{scales.shape}."
            )
        if not (bool(jnp.all(rates >= 0)) and bool(jnp.all(scales >= 0))):
            raise ValueError("`rates` and `scales` must be >= 0.")
        self.dynamics, self.rates, self.scales = dynamics, rates, scales

    @property
    def state_shape(self):
        return self.dynamics.state_shape

    def step(self, x, t0, t1, *, key):
        step_key, hit_key, noise_key = jr.split(key, 3)
        x = self.dynamics.step(x, t0, t1, key=step_key)
        span = jnp.asarray(t1 - t0, x.dtype)
        strike = jr.uniform(hit_key, self.rates.shape, x.dtype) < 1 - jnp.exp(
            -self.rates.astype(x.dtype) * span
        )
        size = jnp.sum(jnp.where(strike, self.scales.astype(x.dtype), 0))
        return x + size * jnp.abs(x) * jr.normal(noise_key, x.shape, x.dtype)
