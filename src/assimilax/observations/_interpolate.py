"""Sensors between grid points: (bi)linear interpolation on the periodic model grid."""

import itertools
import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._checks import check_finite, check_value, is_concrete
from .._covariance import AbstractCovariance, as_covariance
from .._custom_types import Array, Float, Int
from ._linear import _state_shape
from .base import AbstractLinearObservation


class Interpolate(AbstractLinearObservation):
    r"""Observe the state at sensor positions between grid points, by linear
    interpolation on the periodic grid (bilinear on 2-D grids).

    Positions are in grid-index units: grid point `i` along an axis sits at `i`, and an
    axis of `n` points spans `[0, n)` (the point `n` is point `0` again). A sensor at
    `2.25` reads `0.75 x[2] + 0.25 x[3]`; one at `n - 0.5` reads the mean of `x[n-1]`
    and `x[0]`. Sensors exactly on grid points read those points, so `Interpolate`
    reduces to `Subsample` there. To place sensors in model coordinates `s` on a domain
    of length `L` with `n` points, pass `s * n / L`.

    **Arguments:**

    - `state_shape`: the shape of one member's state (an int for flat states).
    - `positions`: `(m,)` positions on a 1-D grid or `(m, ndim)` positions, each in
      `[0, n)` along its axis.
    - `noise_std` or `noise_covariance`: the observation noise (see `as_covariance`).

    `locations()` returns the positions, so localised filters (LETKF) use the sensors'
    true places.
    """

    state_shape: tuple[int, ...] = eqx.field(static=True)
    positions: Float[Array, "m ndim"]
    neighbours: Int[Array, "m corners"]
    weights: Float[Array, "m corners"]
    noise: AbstractCovariance

    def __init__(self, state_shape, positions, *, noise_std=None, noise_covariance=None):
        self.state_shape = shape = _state_shape(state_shape)
        positions = jnp.asarray(positions)
        if not jnp.issubdtype(positions.dtype, jnp.floating):
            positions = positions.astype(jnp.result_type(float))
        if positions.ndim == 1 and len(shape) == 1:
            positions = positions[:, None]
        if positions.ndim != 2 or positions.shape[1] != len(shape) or positions.shape[0] < 1:
            raise ValueError(
                f"`positions` must have shape (m, {len(shape)}) (or (m,) for a 1-D grid) with "
                f"m >= 1 for a state of shape {shape}; got shape {positions.shape}."
            )
        positions = check_finite(positions, "positions")
        upper = np.asarray(shape, dtype=np.float64)
        self.positions = check_value(
            positions,
            lambda p, xp: (p < 0) | (p >= xp.asarray(upper, p.dtype)),
            f"`positions` must lie inside the domain: [0, n) grid units along each axis "
            f"of a grid of shape {shape}" + _outside(positions, upper) + ".",
        )
        # Each sensor reads the 2^ndim grid points around it.
        lower = jnp.floor(positions)
        frac = positions - lower
        lower = lower.astype(jnp.int32)
        sizes = jnp.asarray(shape, jnp.int32)
        neighbours, weights = [], []
        for corner in itertools.product((0, 1), repeat=len(shape)):
            offset = jnp.asarray(corner, jnp.int32)[None]
            index = jnp.mod(lower + offset, sizes[None])
            neighbours.append(jnp.ravel_multi_index(tuple(index.T), shape, mode="wrap"))
            weights.append(jnp.prod(jnp.where(offset == 1, frac, 1 - frac), axis=1))
        self.neighbours = jnp.stack(neighbours, axis=1)
        self.weights = jnp.stack(weights, axis=1)
        self.noise = as_covariance(positions.shape[0], noise_std, noise_covariance)

    def apply(self, x):
        values = x.reshape(-1)[self.neighbours]
        return jnp.sum(self.weights.astype(values.dtype) * values, axis=1)

    def matrix(self):
        size = math.prod(self.state_shape)
        m = self.positions.shape[0]
        rows = jnp.broadcast_to(jnp.arange(m)[:, None], self.neighbours.shape)
        h = jnp.zeros((m, size), self.weights.dtype)
        return h.at[rows, self.neighbours].add(self.weights)

    def locations(self):
        return self.positions


def _outside(positions, upper) -> str:
    """Name the first sensor outside the domain (concrete positions only)."""
    if not is_concrete(positions):
        return ""
    p = np.asarray(positions)
    bad = np.nonzero(np.any((p < 0) | (p >= upper), axis=1))[0]
    return f"; sensor {int(bad[0])} is at {p[bad[0]].tolist()}" if bad.size else ""
