"""The local ensemble transform Kalman filter (LETKF)."""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

# Imported for its start-up effect: with at least as many virtual CPU devices as cores,
# XLA:CPU's thread pool gets spare threads for the batched LAPACK calls of the local
# analyses below, which hang sharded runs otherwise (`_sharding.reserve_cpu_threads`).
from .. import _sharding  # noqa: F401
from .._custom_types import Array, Float
from .._ensemble import flatten_members
from ..observations.base import grid_coordinates
from ._enkf import innovation_terms, transform, unflatten
from ._inflation import AbstractInflation, as_inflation
from ._localisation import GaspariCohn, periodic_distance
from .base import AbstractEnsembleFilter


class LETKF(AbstractEnsembleFilter):
    r"""The local ensemble transform Kalman filter (Hunt, Kostelich & Szunyogh 2007).

    One ETKF analysis per grid point, each using the observations near that point with
    their inverse noise variances tapered by Gaspari–Cohn weights $\rho(r)$ (localisation
    of $R$): the whitened observation anomalies and innovations of observation $k$ are
    multiplied by $\sqrt{\rho(r_{ik})}$. The local analyses are `vmap`ped over grid
    points; distances are measured between grid indices and `observation.locations()`,
    periodic in each axis of the state by default.

    **Arguments:**

    - `radius`: the localisation radius in grid units (DAPPER's `loc_rad` convention,
      see `GaspariCohn`).
    - `inflation`: an `AbstractInflation` or a float (multiplicative), applied after the
      analysis.
    - `max_local_observations`: if given, each local analysis uses only the this many
      observations with the largest taper (chosen with `lax.top_k`), making the cost
      $O(d\,k\,n^2)$ instead of $O(d\,m\,n^2)$. Exact whenever no point has more than
      this many observations inside the taper's support.
    - `periodic`: whether the domain wraps around (True for Lorenz-96 and the spectral
      models).
    """

    localisation: GaspariCohn
    inflation: AbstractInflation
    max_local_observations: int | None = eqx.field(static=True)
    periodic: bool = eqx.field(static=True)

    def __init__(
        self,
        radius=4.0,
        inflation=None,
        *,
        max_local_observations: int | None = None,
        periodic: bool = True,
    ):
        self.localisation = GaspariCohn(radius)
        self.inflation = as_inflation(inflation)
        if max_local_observations is not None and max_local_observations < 1:
            raise ValueError(
                "`max_local_observations` must be a positive int or None; got "
                f"{max_local_observations!r}."
            )
        self.max_local_observations = max_local_observations
        self.periodic = periodic

    def update(self, belief, observation, y, mask=None, *, key):
        del key
        terms = innovation_terms(belief, observation, y, mask)
        dtype = terms.mean.dtype
        grid, taper_at = local_tapers(
            self.localisation, observation, belief.state_shape, self.periodic, dtype
        )
        k = self.max_local_observations
        if k is not None:
            k = min(k, observation.obs_dim)
        window = None
        if k is not None and len(belief.state_shape) == 1 and k < observation.obs_dim:
            window = nearest_window(observation.locations()[:, 0].astype(dtype), k)

        def local_analysis(point, anomalies):
            if k is None:
                taper = taper_at(point)
                s, innovation = terms.obs_anomalies, terms.innovation
            else:
                if window is None:  # the k largest tapers among all observations
                    taper, nearest = lax.top_k(taper_at(point), k)
                else:  # the k nearest on a line: O(k) per point, not O(m)
                    nearest = window(point[0])
                    taper = taper_at(point, nearest)
                s = terms.obs_anomalies[:, nearest]
                innovation = terms.innovation[nearest]
            root = taper_root(taper)
            w, t = transform(s * root[None], innovation * root)
            return (w[None] + t) @ anomalies

        # Large grids go in batches of grid points: memory O(batch (m + n) n), not O(d n^2).
        if grid.shape[0] <= LOCAL_BATCH:
            increments = jax.vmap(local_analysis, in_axes=(0, 1), out_axes=1)(grid, terms.anomalies)
        else:
            increments = lax.map(
                lambda args: local_analysis(*args),
                (grid, terms.anomalies.T),
                batch_size=LOCAL_BATCH,
            ).T
        analysis = terms.mean[None] + increments
        forecast = flatten_members(belief.members)
        return unflatten(self.inflation(forecast, analysis), belief)


# Grid points whose local analyses run together (one vmap); larger grids loop over batches.
LOCAL_BATCH = 4096


def nearest_window(locations: Float[Array, " m"], k: int) -> Callable:
    """For observations at positions `locations` on a line: the function giving, for a
    position `x`, the indices of the `k` observations nearest to it in sorted order
    (`k // 2` on each side, wrapping around), by a binary search: the same set as the
    `k` largest tapers whenever at most `k // 2` observations on either side of `x`
    lie within the taper's support."""
    order = jnp.argsort(locations)
    ordered = locations[order]
    offsets = jnp.arange(k, dtype=jnp.int32) - k // 2
    m = locations.shape[0]

    def window(x: Float[Array, ""]) -> Array:
        centre = jnp.searchsorted(ordered, x).astype(jnp.int32)
        return order[(centre + offsets) % m]

    return window


def taper_root(taper: Array) -> Array:
    """`sqrt(taper)`, with a zero derivative (not NaN) where the taper is zero, so
    localisation radii can be tuned by gradient (`assimilax.tune`)."""
    positive = taper > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, taper, 1)), 0)


def local_tapers(
    localisation: GaspariCohn, observation, state_shape: tuple[int, ...], periodic: bool, dtype
) -> tuple[Float[Array, "d ndim"], Callable]:
    """The grid points' coordinates (rows: flattened grid points) and the function giving
    the taper of every observation (or of those at `index`) at one of them, from the
    distances between grid indices and `observation.locations()` (periodic in each axis
    if `periodic`)."""
    locations = observation.locations()
    if locations is None:
        raise TypeError(
            f"Local analyses need observation locations, but {type(observation).__name__} "
            "has none. Use Identity/Subsample, or pass `locations=` to LinearObservation."
        )
    if locations.shape[-1] != len(state_shape):
        raise ValueError(
            f"Observation locations have {locations.shape[-1]} coordinate(s), but "
            f"the state has {len(state_shape)} axes {state_shape}; they must match."
        )
    grid = grid_coordinates(jnp.arange(math.prod(state_shape)), state_shape).astype(dtype)
    locations = locations.astype(dtype)
    domain = state_shape if periodic else None

    def taper_at(point: Float[Array, " ndim"], index=None) -> Float[Array, " m"]:
        near = locations if index is None else locations[index]
        return localisation(periodic_distance(point[None], near, domain))

    return grid, taper_at
