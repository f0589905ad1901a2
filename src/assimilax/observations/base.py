"""The observation interface: an operator `h` plus Gaussian noise."""

import abc

import equinox as eqx
import jax.numpy as jnp

from .._covariance import AbstractCovariance
from .._custom_types import Array, Bool, Float, PRNGKeyArray


class AbstractObservation(eqx.Module):
    r"""An observation model $y = h(x) + \varepsilon$, $\varepsilon \sim N(0, R)$.

    `x` is one member's state, of any shape; `y` is flat, of shape `(m,)`. Missing values
    are a boolean `mask` of shape `(m,)` (True = observed), never NaN arithmetic.

    Subclasses provide `noise` (an `AbstractCovariance`), `apply` (the operator `h`)
    and `locations` (where each observation sits, for localisation).
    """

    noise: eqx.AbstractVar[AbstractCovariance]

    @abc.abstractmethod
    def apply(self, x: Float[Array, " *state"]) -> Float[Array, " m"]:
        """The observation operator `h(x)` for one member."""

    @abc.abstractmethod
    def locations(self) -> Float[Array, "m ndim"] | None:
        """Coordinates of each observation in grid-index units of the state, or None.

        Used by localised filters (LETKF). `None` means the operator has no natural
        location (e.g. a general matrix), and localised filters refuse it.
        """

    @property
    def obs_dim(self) -> int:
        """The number of observed values `m`."""
        return self.noise.dim

    def log_likelihood(
        self,
        y: Float[Array, " m"],
        x: Float[Array, " *state"],
        mask: Bool[Array, " m"] | None = None,
    ) -> Float[Array, ""]:
        r"""$\log p(y \mid x)$ over the observed components."""
        return self.noise.log_density(y - self.apply(x), mask)

    def sample(self, x: Float[Array, " *state"], *, key: PRNGKeyArray) -> Array:
        """Draw a synthetic observation `h(x) + noise` for one member."""
        return self.apply(x) + self.noise.sample(key=key).astype(x.dtype)


class AbstractLinearObservation(AbstractObservation):
    """An observation whose operator is linear, `h(x) = H x.ravel()`."""

    @abc.abstractmethod
    def matrix(self) -> Float[Array, "m d"]:
        """The matrix `H` acting on the flattened state."""


def grid_coordinates(flat_indices: Array, state_shape: tuple[int, ...]) -> Float[Array, "m ndim"]:
    """Grid-index coordinates of flat indices into a state of shape `state_shape`."""
    coords = jnp.unravel_index(flat_indices, state_shape)
    return jnp.stack(coords, axis=-1).astype(jnp.result_type(float))
