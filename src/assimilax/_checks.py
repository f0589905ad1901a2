"""Input checks at the boundary.

Concrete values (the usual case: arrays built by the user outside `jit`) are checked
eagerly and raise `ValueError` with a message naming the argument. Traced values (the
same code called under `jit`/`vmap`) are checked with `equinox.error_if`, whose return
value must be used for the check to survive dead-code elimination.
"""

import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """True if `x` holds a value now (not a tracer inside `jit`, `vmap`, `grad`)."""
    return not isinstance(x, jax.core.Tracer)


def check_value(x, bad, message: str, *, traced: bool = True):
    """Raise `ValueError(message)` where `bad(x)` is true.

    `bad(v, xp)` maps an array to a boolean array, with `xp` the array module
    (`numpy` for concrete values, `jax.numpy` for traced ones). Returns `x`, which
    callers must use: under `jit` the check is attached to it with `equinox.error_if`,
    unless `traced=False`, which checks concrete values only. Use that for containers
    rebuilt inside the filter loop (ensembles, beliefs): there a failure is reported
    as a `RESULTS` code, not raised mid-run.
    """
    if is_concrete(x):
        if np.any(bad(np.asarray(x), np)):
            raise ValueError(message)
        return x
    if not traced:
        return x
    return eqx.error_if(x, jnp.any(bad(x, jnp)), message)


def check_finite(x, name: str, *, traced: bool = True):
    """Check that `x` holds no NaN or infinite values."""
    return check_value(
        x,
        lambda v, xp: ~xp.isfinite(v),
        f"`{name}` contains NaN or infinite values; every entry must be finite.",
        traced=traced,
    )


def check_positive(x, name: str, what: str = "values"):
    """Check that every entry of `x` is finite and strictly positive."""
    return check_value(
        x,
        lambda v, xp: ~(v > 0) | ~xp.isfinite(v),
        f"`{name}` must hold strictly positive, finite {what}; got {_preview(x)}.",
    )


def _preview(x) -> str:
    if is_concrete(x):
        arr = np.asarray(x)
        if arr.size <= 6:
            return repr(arr.tolist())
        return f"an array with min {arr.min()!r} and max {arr.max()!r}"
    return "a traced value"


def check_ndim(x, ndim: int, name: str, shape_doc: str):
    """Raise `ValueError` unless `x.ndim == ndim`."""
    if jnp.ndim(x) != ndim:
        raise ValueError(
            f"`{name}` must have shape {shape_doc} ({ndim} dimension(s)); got shape {jnp.shape(x)}."
        )


def check_shape(x, shape: tuple[int, ...], name: str, shape_doc: str | None = None):
    """Raise `ValueError` unless `x.shape == shape`."""
    if tuple(jnp.shape(x)) != tuple(shape):
        doc = f" {shape_doc}" if shape_doc else ""
        raise ValueError(f"`{name}` must have shape {tuple(shape)}{doc}; got shape {jnp.shape(x)}.")


def check_floating(x, name: str):
    """Raise `TypeError` unless `x` has a floating dtype."""
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(
            f"`{name}` must have a floating dtype (float32 or float64); got "
            f"{jnp.result_type(x)}. Convert it with `.astype(jnp.float32)` or similar."
        )


def check_memory(needed_bytes: float, what: str) -> None:
    """Refuse (`ValueError` naming `what` and the number) a run whose arrays alone would
    not fit in 80 % of this machine's memory, before anything is compiled."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if needed_bytes > 0.8 * total:
        raise ValueError(
            f"{what} needs about {needed_bytes / 2**30:.3g} GiB of memory, more than this "
            f"machine's {total / 2**30:.3g} GiB allows; use fewer cycles, members or a smaller "
            "--dim."
        )
