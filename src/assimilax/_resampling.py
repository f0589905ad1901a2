"""Resampling: ancestor indices from normalised weights (particle filters and the
sequential Monte Carlo diffusion sampler share it)."""

from typing import Literal

import jax.numpy as jnp
import jax.random as jr

from ._custom_types import Array, Float, Int, PRNGKeyArray


RESAMPLING = ("systematic", "stratified", "residual", "multinomial")
Resampling = Literal["systematic", "stratified", "residual", "multinomial"]


def _inverse_cdf(weights, u):
    """Indices `i` with `cumsum(w)[i-1] <= u < cumsum(w)[i]`; zero weights never drawn."""
    # Also used with integer-valued counts as `weights` (exact comparisons).
    index = jnp.searchsorted(jnp.cumsum(weights), u, side="right").astype(jnp.int32)
    return jnp.minimum(index, weights.shape[0] - 1)


def resample(
    weights: Float[Array, " n"], method: Resampling = "systematic", *, key: PRNGKeyArray
) -> Int[Array, " n"]:
    r"""Draw `n` ancestor indices from normalised `weights`, sorted ascending.

    Every scheme is unbiased: particle `i` is copied `N w_i` times in expectation.

    - `systematic`: one uniform, `u_j = (U + j) / n` (least resampling noise);
    - `stratified`: one uniform per stratum, `u_j = (U_j + j) / n`;
    - `residual`: `floor(n w_i)` copies of each, the rest drawn multinomially from the
      residual weights;
    - `multinomial`: `n` independent draws.

    References: Douc, Cappé & Moulines (2005), "Comparison of resampling schemes for
    particle filtering"; Hol, Schön & Gustafsson (2006).
    """
    if method not in _SCHEMES:
        raise ValueError(f"Unknown resampling {method!r}; choose one of {', '.join(RESAMPLING)}.")
    return _SCHEMES[method](weights, key)


def _uniforms(weights, key, count):
    n, dtype = weights.shape[0], weights.dtype
    return jr.uniform(key, (count,) if count else (), dtype), jnp.arange(n, dtype=dtype), n


def _systematic(weights, key):
    return draw(weights, weights.shape[0], key=key)


def _stratified(weights, key):
    u, steps, n = _uniforms(weights, key, weights.shape[0])
    return _inverse_cdf(weights, (u + steps) / n)


def _multinomial(weights, key):
    u, _, _ = _uniforms(weights, key, weights.shape[0])
    return _inverse_cdf(weights, jnp.sort(u))


def _residual(weights, key):
    u, steps, n = _uniforms(weights, key, weights.shape[0])
    scaled = n * weights
    copies = jnp.floor(scaled)
    n_copies = jnp.sum(copies).astype(jnp.int32)
    fixed = _inverse_cdf(copies, steps)  # integer-valued counts, compared exactly
    residual = scaled - copies
    total = jnp.sum(residual)
    residual = jnp.where(total > 0, residual / jnp.where(total > 0, total, 1), 1 / n)
    # Independent (unsorted) draws: only the last n - n_copies are used.
    drawn = _inverse_cdf(residual, u)
    return jnp.sort(jnp.where(jnp.arange(n, dtype=jnp.int32) < n_copies, fixed, drawn))


# Each scheme by name (a checked literal, looked up, never if/elif).
_SCHEMES = {
    "systematic": _systematic,
    "stratified": _stratified,
    "residual": _residual,
    "multinomial": _multinomial,
}


def keep_in_place(indices: Int[Array, " n"]) -> Int[Array, " n"]:
    """Ancestor `indices` rearranged so that every particle drawn at least once keeps
    its own slot and its extra copies fill the slots of the particles not drawn (the
    same multiset of ancestors): the least movement of members, so that filters which
    resample each grid point or each observation apart keep members coherent."""
    n = indices.shape[0]
    counts = jnp.bincount(indices, length=n)
    extra = jnp.repeat(jnp.arange(n), jnp.maximum(counts - 1, 0), total_repeat_length=n)
    empty = jnp.nonzero(counts == 0, size=n, fill_value=n)[0]
    return jnp.arange(n).at[empty].set(extra, mode="drop")


def draw(weights: Float[Array, " M"], count: int, *, key: PRNGKeyArray) -> Int[Array, " count"]:
    """`count` indices drawn from normalised `weights` by systematic resampling (one
    uniform; `count` may differ from the number of weights), sorted ascending."""
    u = jr.uniform(key, (), weights.dtype)
    return _inverse_cdf(weights, (u + jnp.arange(count, dtype=weights.dtype)) / count)
