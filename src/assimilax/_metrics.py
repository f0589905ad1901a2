"""Verification metrics of an estimate against the truth."""

import jax.numpy as jnp

from ._custom_types import Array, Float


def rmse(
    estimate: Float[Array, "..."], truth: Float[Array, "..."], ndim: int
) -> Float[Array, "..."]:
    r"""Root-mean-square error over the last `ndim` (state) axes:
    $\sqrt{\tfrac1d \sum_i (\hat x_i - x_i)^2}$."""
    axes = tuple(range(-ndim, 0))
    return jnp.sqrt(jnp.mean((estimate - truth) ** 2, axis=axes))


def time_average(series, burn_in: int):
    """Mean over the leading (time) axis of the cycles after the first `burn_in`."""
    if not 0 <= burn_in < series.shape[0]:
        raise ValueError(f"`burn_in` must lie in [0, {series.shape[0]}) cycles; got {burn_in}.")
    return series[burn_in:].mean(axis=0)
