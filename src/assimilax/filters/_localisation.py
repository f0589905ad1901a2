"""Distance-based localisation: periodic distances and the Gaspari–Cohn taper."""

import equinox as eqx
import jax.numpy as jnp

from .._checks import check_positive
from .._custom_types import Array, Float


def periodic_distance(
    a: Float[Array, "*#batch ndim"],
    b: Float[Array, "*#batch ndim"],
    domain: tuple[int, ...] | None,
) -> Float[Array, " *batch"]:
    """Euclidean distance between points, periodic with period `domain[i]` along axis `i`
    (no wrapping where `domain` is None)."""
    delta = jnp.abs(a - b)
    if domain is not None:
        period = jnp.broadcast_to(jnp.asarray(domain, delta.dtype), delta.shape)
        delta = jnp.minimum(delta, period - delta)
    return jnp.sqrt(jnp.sum(delta**2, axis=-1))


def gaspari_cohn(z: Array) -> Array:
    r"""The Gaspari & Cohn (1999, eq. 4.10) fifth-order piecewise rational taper.

    A compactly supported correlation function of `z = distance / c`: 1 at `z = 0`,
    decreasing to 0 at `z = 2`, zero beyond.
    """
    z = jnp.abs(z)
    inner = ((((-0.25 * z + 0.5) * z + 0.625) * z - 5.0 / 3.0) * z**2) + 1.0
    outer = (
        ((((z / 12.0 - 0.5) * z + 0.625) * z + 5.0 / 3.0) * z - 5.0) * z
        + 4.0
        - 2.0 / (3.0 * jnp.where(z > 0, z, 1.0))
    )
    taper = jnp.where(z <= 1, inner, jnp.where(z < 2, outer, 0.0))
    # Near z = 2 the outer polynomial cancels to ~1e-7 below zero in float32; the LETKF
    # takes square roots of the taper, so clip.
    return jnp.clip(taper, 0.0, 1.0)


class GaspariCohn(eqx.Module):
    r"""Gaspari–Cohn localisation with a `radius` in grid units.

    Follows DAPPER's convention (`dist2coeff`): the half-width is `c = 1.82 * radius`,
    so the taper is 0.63, close to $e^{-1/2}$, at `distance == radius` (like a Gaussian
    of standard deviation `radius`), and zero beyond `2c`.
    """

    radius: Float[Array, ""]

    def __init__(self, radius):
        self.radius = check_positive(jnp.asarray(radius), "radius", "radii")

    @property
    def half_width(self) -> Array:
        # DAPPER's constant (~ sqrt(10/3)), so its tuned radii carry over exactly.
        return self.radius * 1.82

    def __call__(self, distance: Array) -> Array:
        return gaspari_cohn(distance / self.half_width.astype(distance.dtype))
