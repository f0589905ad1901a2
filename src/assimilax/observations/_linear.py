"""Linear observation operators: identity, subsampling, a general matrix."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._checks import check_finite, check_ndim, is_concrete
from .._covariance import AbstractCovariance, as_covariance
from .._custom_types import Array, Float, Int
from .base import AbstractLinearObservation, grid_coordinates


def _state_shape(state_shape) -> tuple[int, ...]:
    shape = (state_shape,) if isinstance(state_shape, int) else tuple(state_shape)
    if len(shape) == 0 or any(int(s) < 1 for s in shape):
        raise ValueError(
            "`state_shape` must be a positive int or a tuple of positive ints; "
            f"got {state_shape!r}."
        )
    return tuple(int(s) for s in shape)


class Identity(AbstractLinearObservation):
    """Observe every component of the state: `h(x) = x.ravel()`.

    **Arguments:**

    - `state_shape`: the shape of one member's state (an int for flat states).
    - `noise_std` or `noise_covariance`: the observation noise (see `as_covariance`).
    """

    state_shape: tuple[int, ...] = eqx.field(static=True)
    noise: AbstractCovariance

    def __init__(self, state_shape, *, noise_std=None, noise_covariance=None):
        self.state_shape = _state_shape(state_shape)
        size = int(np.prod(self.state_shape))
        self.noise = as_covariance(size, noise_std, noise_covariance)

    def apply(self, x):
        return x.reshape(-1)

    def matrix(self):
        return jnp.eye(self.obs_dim, dtype=jnp.result_type(float))

    def locations(self):
        return grid_coordinates(jnp.arange(self.obs_dim), self.state_shape)


class Subsample(AbstractLinearObservation):
    """Observe chosen components: `h(x) = x.ravel()[indices]`.

    **Arguments:**

    - `state_shape`: the shape of one member's state (an int for flat states).
    - `indices`: integer array `(m,)` of distinct flat indices into the state.
    - `noise_std` or `noise_covariance`: the observation noise.

    Use `Subsample.every(state_shape, k)` for every `k`-th point along each axis.
    """

    state_shape: tuple[int, ...] = eqx.field(static=True)
    indices: Int[Array, " m"]
    noise: AbstractCovariance

    def __init__(self, state_shape, indices, *, noise_std=None, noise_covariance=None):
        self.state_shape = _state_shape(state_shape)
        size = int(np.prod(self.state_shape))
        indices = jnp.asarray(indices)
        check_ndim(indices, 1, "indices", "(m,)")
        if not jnp.issubdtype(indices.dtype, jnp.integer):
            raise TypeError(f"`indices` must be integers; got dtype {indices.dtype}.")
        if is_concrete(indices):
            idx = np.asarray(indices)
            if idx.size == 0:
                raise ValueError("`indices` must name at least one component.")
            if idx.min() < 0 or idx.max() >= size:
                raise ValueError(
                    f"`indices` must lie in [0, {size}) for a state of shape "
                    f"{self.state_shape}; got values from {idx.min()} to {idx.max()}."
                )
            if np.unique(idx).size != idx.size:
                raise ValueError("`indices` must not repeat a component.")
        self.indices = indices
        self.noise = as_covariance(indices.shape[0], noise_std, noise_covariance)

    @classmethod
    def every(
        cls,
        state_shape,
        k: int,
        offset: int = 0,
        *,
        noise_std=None,
        noise_covariance=None,
    ) -> "Subsample":
        """Observe every `k`-th grid point along each axis, starting at `offset`: a
        regular sensor lattice (for a 1-D state, every `k`-th component)."""
        shape = _state_shape(state_shape)
        if k < 1 or not 0 <= offset < k:
            raise ValueError(f"Need k >= 1 and 0 <= offset < k; got k={k}, offset={offset}.")
        axes = [np.arange(offset, n, k) for n in shape]
        indices = np.ravel_multi_index(np.meshgrid(*axes, indexing="ij"), shape).ravel()
        return cls(shape, indices, noise_std=noise_std, noise_covariance=noise_covariance)

    def apply(self, x):
        return x.reshape(-1)[self.indices]

    def matrix(self):
        size = int(np.prod(self.state_shape))
        return jnp.eye(size, dtype=jnp.result_type(float))[self.indices]

    def locations(self):
        return grid_coordinates(self.indices, self.state_shape)


class LinearObservation(AbstractLinearObservation):
    """A general linear operator `h(x) = H x.ravel()`.

    **Arguments:**

    - `matrix`: the `(m, d)` matrix `H`, `d` the flattened state size.
    - `noise_std` or `noise_covariance`: the observation noise.
    - `locations`: optional `(m, ndim)` coordinates of each observation in grid-index
      units, needed only by localised filters.
    """

    operator: Float[Array, "m d"]
    noise: AbstractCovariance
    observation_locations: Float[Array, "m ndim"] | None

    def __init__(self, matrix, *, noise_std=None, noise_covariance=None, locations=None):
        matrix = jnp.asarray(matrix)
        check_ndim(matrix, 2, "matrix", "(m, d)")
        self.operator = check_finite(matrix, "matrix")
        self.noise = as_covariance(matrix.shape[0], noise_std, noise_covariance)
        if locations is not None:
            locations = jnp.asarray(locations)
            if locations.ndim == 1:
                locations = locations[:, None]
            if locations.ndim != 2 or locations.shape[0] != matrix.shape[0]:
                raise ValueError(
                    f"`locations` must have shape ({matrix.shape[0]}, ndim); got "
                    f"shape {locations.shape}."
                )
        self.observation_locations = locations

    def apply(self, x):
        return self.operator @ x.reshape(-1)

    def matrix(self):
        return self.operator

    def locations(self):
        return self.observation_locations
