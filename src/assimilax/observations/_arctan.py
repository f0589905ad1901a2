"""The arctan observation operator, the nonlinear test of the ensemble score filter."""

import jax.numpy as jnp

from .._covariance import AbstractCovariance
from .base import AbstractObservation


class Arctan(AbstractObservation):
    r"""Wrap an observation and pass its values through arctan: $h(x) = \arctan(h_0(x))$.

    With `Identity` or `Subsample` inside this is the arctan observation of
    Bao, Zhang & Zhang (2024), "An ensemble score filter for tracking high-dimensional
    nonlinear dynamical systems": large values saturate, so the observation carries
    little information about the magnitude of the state.

    **Arguments:**

    - `observation`: the inner observation `h_0`; its noise is the noise of the result.
    """

    observation: AbstractObservation

    @property
    def noise(self) -> AbstractCovariance:
        return self.observation.noise

    def apply(self, x):
        return jnp.arctan(self.observation.apply(x))

    def locations(self):
        return self.observation.locations()
