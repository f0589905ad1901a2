"""Power-law observation operators: y = x^2 (sign lost: a bimodal likelihood) and
y = x^3 (invertible but strongly nonlinear), the non-Gaussian regimes' operators."""

import equinox as eqx
import jax.numpy as jnp

from .._covariance import AbstractCovariance
from .base import AbstractObservation


class Power(AbstractObservation):
    r"""Wrap an observation and raise its values to an integer power: $h(x) = h_0(x)^p$.

    With `p = 2` the sign of every observed component is lost, so the likelihood of a
    component is bimodal ($\pm\sqrt{y}$): no Gaussian (EnKF) update can represent it.
    With `p = 3` it is invertible but its slope spans orders of magnitude (DAPPER's
    `mods.Lorenz63.mandel2016` observes Lorenz-63 this way).

    **Arguments:**

    - `observation`: the inner observation `h_0`; its noise is the noise of the result.
    - `exponent`: the integer power `p >= 1`.
    """

    observation: AbstractObservation
    exponent: int = eqx.field(static=True)

    def __init__(self, observation: AbstractObservation, exponent: int):
        if not isinstance(observation, AbstractObservation):
            raise TypeError(
                f"`observation` must be an AbstractObservation; got {type(observation).__name__}."
            )
        if int(exponent) != exponent or exponent < 1:
            raise ValueError(f"`exponent` must be an integer >= 1; got {exponent!r}.")
        self.observation = observation
        self.exponent = int(exponent)

    @property
    def noise(self) -> AbstractCovariance:
        return self.observation.noise

    def apply(self, x):
        return jnp.power(self.observation.apply(x), self.exponent)

    def locations(self):
        return self.observation.locations()
