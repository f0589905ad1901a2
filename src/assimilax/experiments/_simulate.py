"""Truth runs and synthetic observations: what a twin experiment observes, and what a
user needs to try a filter on a model of their own."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax import lax

from .._checks import is_concrete
from .._custom_types import Array, Float, PRNGKeyArray
from .._streams import ObservationSeries
from ..dynamics import (
    AbstractDynamics,
    AbstractSpectralSPDE,
    SpatialSpectrum,
    gaussian_random_field,
)
from ..observations import AbstractObservation
from ._presets import ModelSetup


def truth_run(dynamics, x0, times, key):
    """States at `times` (K,) starting from `x0` at time 0 (one `lax.scan`).

    **Raises:** `ValueError` if the run blows up (non-finite states), outside `jit`."""
    states = _truth_run(dynamics, x0, times, key)
    if is_concrete(states):
        bad = np.nonzero(~np.isfinite(np.asarray(states)).reshape(len(times), -1).all(axis=1))[0]
        if bad.size:
            raise ValueError(
                f"The truth run of {type(dynamics).__name__} blew up: non-finite states from "
                f"time {float(times[bad[0]]):.6g} (cycle {int(bad[0])}) on. The model is "
                "unstable at these settings: try another dimension, a shorter time step or "
                "a smaller initial perturbation."
            )
    return states


@eqx.filter_jit
def _truth_run(dynamics, x0, times, key):

    def _step(carry, inputs):
        x, t_prev = carry
        t, k = inputs
        x = dynamics.step(x, t_prev, t, key=k)
        return (x, t), x

    keys = jr.split(key, times.shape[0])
    t_start = jnp.zeros((), times.dtype)
    _, states = lax.scan(_step, (x0, t_start), (times, keys))
    return states


@eqx.filter_jit
def synthetic_observations(observation, truth, key):
    """`h(x_k) + noise` for every state of `truth` (K, *state)."""
    keys = jr.split(key, truth.shape[0])
    return jax.vmap(lambda x, k: observation.sample(x, key=k))(truth, keys)


def simulate(
    dynamics: AbstractDynamics,
    observation: AbstractObservation,
    x0,
    times,
    *,
    key: PRNGKeyArray,
) -> tuple[Float[Array, " K *state"], ObservationSeries]:
    """A truth run and its synthetic observations.

    **Arguments:**

    - `dynamics`: the model (`AbstractDynamics`).
    - `observation`: the observation operator and noise (`AbstractObservation`).
    - `x0`: the state at time 0, of the model's `state_shape`.
    - `times`: `(K,)` strictly increasing observation times after 0.
    - `key`: a PRNG key (model noise and observation noise).

    **Returns:** `(truth, series)`: the true states `(K, *state)` at `times` and the
    `ObservationSeries` of `h(truth_k) + noise` at those times.
    """
    state_shape = tuple(dynamics.state_shape)
    dtype = jnp.result_type(float)
    x0 = jnp.asarray(x0, dtype)
    if x0.shape != state_shape:
        raise ValueError(f"`x0` must have the model's state shape {state_shape}; got {x0.shape}.")
    times = jnp.asarray(times, dtype)
    if times.ndim != 1 or times.shape[0] < 1:
        raise ValueError(f"`times` must be a non-empty 1-D array; got shape {times.shape}.")
    if not bool(jnp.all(jnp.isfinite(times))) or float(times[0]) <= 0:
        raise ValueError("`times` must be finite and start after 0 (the time of `x0`).")
    truth_key, obs_key = jr.split(key)
    truth = truth_run(dynamics, x0, times, truth_key)
    y = synthetic_observations(observation, truth, obs_key)
    return truth, ObservationSeries(observation, times, y)


def perturbations(
    dynamics: AbstractDynamics,
    std: float,
    length_scale: float | None,
    n: int,
    *,
    key: PRNGKeyArray,
) -> Float[Array, " n *state"]:
    """`n` zero-mean perturbations of a state: white noise of std `std`, or, with a
    `length_scale` (spectral SPDEs), smooth random fields `SpatialSpectrum(std,
    length_scale)` that keep the conserved spatial mean of Burgers, KS, Navier–Stokes."""
    state_shape = tuple(dynamics.state_shape)
    dtype = jnp.result_type(float)
    if length_scale is None:
        return std * jr.normal(key, (n, *state_shape), dtype)
    if not isinstance(dynamics, AbstractSpectralSPDE):
        raise ValueError("`init_length_scale` needs a spectral SPDE model (it has a grid).")
    spectrum = SpatialSpectrum(std, length_scale)
    draw = lambda k: gaussian_random_field(spectrum, dynamics.grid, key=k, dtype=dtype)
    return jax.vmap(draw)(jr.split(key, n))


def domain_lengths(dynamics: AbstractDynamics) -> tuple[float, ...]:
    """The domain length along each axis in model coordinates: the spectral grid's
    length, or one unit per grid point (Lorenz-96: sites 0..d-1)."""
    shape = tuple(dynamics.state_shape)
    if isinstance(dynamics, AbstractSpectralSPDE):
        return (float(dynamics.grid.length),) * len(shape)
    return tuple(float(n) for n in shape)


def climatology_states(
    setup: ModelSetup, dynamics: AbstractDynamics, n: int, *, key: PRNGKeyArray
) -> jax.Array:
    """`(n, *state)` states that know nothing of any observation: drawn around the
    model's initial state and each run for the spin-up time plus one, so they are
    independent draws from the model's climate (the initial ensemble when no truth is
    known)."""
    dim = tuple(dynamics.state_shape)[0]
    x0 = jnp.asarray(setup.initial_state(dim), jnp.result_type(float))
    pkey, rkey = jr.split(key)
    starts = x0[None] + perturbations(
        dynamics, setup.init_std, setup.init_length_scale, n, key=pkey
    )
    run = eqx.filter_jit(
        jax.vmap(lambda x, k: dynamics.step(x, 0.0, setup.spinup_time + 1.0, key=k))
    )
    return run(starts, jr.split(rkey, n))


def climatology_statistics(
    setup: ModelSetup, dynamics: AbstractDynamics, n: int = 2000, *, key: PRNGKeyArray
) -> tuple[jax.Array, jax.Array]:
    """The climatological mean `(d,)` and covariance `(d, d)` of a flat-state model,
    from `n` independent `climatology_states`: the background of `OptimalInterpolation`
    and `Var3D`."""
    x = climatology_states(setup, dynamics, n, key=key).reshape(n, -1)
    return jnp.mean(x, axis=0), jnp.cov(x, rowvar=False)
