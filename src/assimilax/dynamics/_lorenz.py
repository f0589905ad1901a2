"""Lorenz-63 and Lorenz-96, the standard low-order data-assimilation test beds."""

import abc

import equinox as eqx
import jax.numpy as jnp

from .._checks import check_positive
from .._custom_types import Array, Float
from .base import AbstractAdditiveNoiseDynamics, add_model_noise, rk4_integrate


def _noise_std(noise_std):
    if noise_std is None:
        return None
    return check_positive(jnp.asarray(noise_std), "noise_std", "model noise levels")


class _AbstractLorenz(AbstractAdditiveNoiseDynamics):
    """RK4 at a fixed internal step, then additive noise `noise_std * sqrt(t1 - t0)`."""

    dt: eqx.AbstractVar[float]
    noise_std: eqx.AbstractVar[Float[Array, ""] | None]

    @abc.abstractmethod
    def vector_field(self, x): ...

    def step_mean(self, x, t0, t1):
        return rk4_integrate(self.vector_field, x, t0, t1, self.dt)

    def step_covariance(self, t0, t1):
        (d,) = self.state_shape
        dtype = jnp.result_type(float)
        variance = 0.0 if self.noise_std is None else self.noise_std**2 * (t1 - t0)
        return jnp.asarray(variance, dtype) * jnp.eye(d, dtype=dtype)

    def step(self, x, t0, t1, *, key):
        x = self.step_mean(x, t0, t1)
        if self.noise_std is not None:
            x = add_model_noise(x, self.noise_std, t0, t1, key=key)
        return x


class Lorenz96(_AbstractLorenz):
    r"""The Lorenz-96 model (Lorenz 1996) on a periodic ring of `dim >= 4` variables.

    $$\frac{dx_i}{dt} = (x_{i+1} - x_{i-2})\,x_{i-1} - x_i + F$$

    Integrated with RK4 at internal step `dt` (0.01 by default, as the issue and most
    DA studies use), plus optional additive Gaussian model noise of standard deviation
    `noise_std` per unit time.

    **Arguments:**

    - `dim`: the number of variables (>= 4).
    - `forcing`: `F` (8.0 gives chaos for `dim >= 10`).
    - `dt`: the internal RK4 step.
    - `noise_std`: optional model-noise level; `None` (default) is deterministic.
    """

    dim: int = eqx.field(static=True)
    forcing: Float[Array, ""]
    dt: float = eqx.field(static=True)
    noise_std: Float[Array, ""] | None

    def __init__(self, dim: int = 40, forcing=8.0, dt: float = 0.01, noise_std=None):
        if int(dim) != dim or dim < 4:
            raise ValueError(f"Lorenz96 needs `dim` >= 4 (an int); got {dim!r}.")
        if not dt > 0:
            raise ValueError(f"`dt` must be positive; got {dt!r}.")
        self.dim = int(dim)
        self.forcing = jnp.asarray(forcing)
        self.dt = float(dt)
        self.noise_std = _noise_std(noise_std)

    @property
    def state_shape(self):
        return (self.dim,)

    def vector_field(self, x: Float[Array, " d"]) -> Float[Array, " d"]:
        # A halo of 2 on the left and 1 on the right, then static slices: ~6x faster
        # than `jnp.roll` at d=40 (PERFORMANCE_NOTES.md).
        xp = jnp.concatenate([x[-2:], x, x[:1]])
        forcing = self.forcing.astype(x.dtype)
        return (xp[3:] - xp[:-3]) * xp[1:-2] - x + forcing


class Lorenz63(_AbstractLorenz):
    r"""The Lorenz-63 model (Lorenz 1963).

    $$\dot x = \sigma(y - x),\quad \dot y = x(\rho - z) - y,\quad \dot z = xy - \beta z$$

    with the classical $\sigma = 10$, $\rho = 28$, $\beta = 8/3$, RK4 at step `dt`.
    """

    sigma: Float[Array, ""]
    rho: Float[Array, ""]
    beta: Float[Array, ""]
    dt: float = eqx.field(static=True)
    noise_std: Float[Array, ""] | None

    def __init__(self, sigma=10.0, rho=28.0, beta=8.0 / 3.0, dt: float = 0.01, noise_std=None):
        if not dt > 0:
            raise ValueError(f"`dt` must be positive; got {dt!r}.")
        self.sigma = jnp.asarray(sigma)
        self.rho = jnp.asarray(rho)
        self.beta = jnp.asarray(beta)
        self.dt = float(dt)
        self.noise_std = _noise_std(noise_std)

    @property
    def state_shape(self):
        return (3,)

    def vector_field(self, x: Float[Array, " 3"]) -> Float[Array, " 3"]:
        s, r, b = (p.astype(x.dtype) for p in (self.sigma, self.rho, self.beta))
        return jnp.stack([s * (x[1] - x[0]), x[0] * (r - x[2]) - x[1], x[0] * x[1] - b * x[2]])
