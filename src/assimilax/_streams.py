"""Observation data: times, values and masks of missing values, with their operator."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._checks import check_floating, check_ndim, check_shape, check_value, is_concrete
from ._custom_types import Array, Bool, Float
from .observations import AbstractObservation


class ObservationSeries(eqx.Module):
    """A time series of observations through one observation operator.

    **Arguments:**

    - `observation`: the `AbstractObservation` (operator and noise) of every record.
    - `times`: `(K,)` observation times, strictly increasing.
    - `values`: `(K, m)` observed values; NaN marks a missing value (it is masked out
      and replaced by 0, so no NaN enters the arithmetic).
    - `mask`: optional `(K, m)` booleans, True where a value was observed. Combined
      with the NaN mask.

    **Raises:**

    `ValueError` if the shapes disagree with each other or with `observation.obs_dim`,
    or if the times are not finite and strictly increasing.
    """

    observation: AbstractObservation
    times: Float[Array, " K"]
    values: Float[Array, "K m"]
    mask: Bool[Array, "K m"]

    def __init__(self, observation, times, values, mask=None):
        if not isinstance(observation, AbstractObservation):
            raise TypeError(
                f"`observation` must be an AbstractObservation; got {type(observation).__name__}."
            )
        times = jnp.asarray(times)
        values = jnp.asarray(values)
        check_ndim(times, 1, "times", "(K,)")
        check_floating(times, "times")
        check_floating(values, "values")
        k, m = times.shape[0], observation.obs_dim
        check_shape(values, (k, m), "values", "(K, m): one row per time, m = obs_dim")
        nan = jnp.isnan(values)
        if mask is None:
            mask = ~nan
        else:
            mask = jnp.asarray(mask)
            check_shape(mask, (k, m), "mask", "(K, m)")
            if mask.dtype != jnp.bool_:
                raise TypeError(f"`mask` must be boolean; got dtype {mask.dtype}.")
            mask = mask & ~nan
        values = check_value(
            values, lambda v, xp: xp.isinf(v), "`values` must not contain infinities."
        )
        times = check_value(times, lambda t, xp: ~xp.isfinite(t), "`times` must be finite.")
        if k > 1:
            times = check_value(
                times,
                lambda t, xp: xp.diff(t) <= 0,
                "`times` must be strictly increasing" + _first_bad(times) + ".",
            )
        self.observation = observation
        self.times = times
        self.values = jnp.where(mask, values, 0)
        self.mask = mask

    def __len__(self) -> int:
        return self.times.shape[0]


def _first_bad(times) -> str:
    if not is_concrete(times):
        return ""
    t = np.asarray(times)
    bad = np.nonzero(np.diff(t) <= 0)[0]
    if bad.size == 0:
        return ""
    i = int(bad[0])
    return f"; got times[{i + 1}] = {t[i + 1]!r} after times[{i}] = {t[i]!r}"
