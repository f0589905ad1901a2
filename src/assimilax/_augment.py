r"""Parameter estimation by state augmentation: the parameters join the state, each
member carrying its own values, and the filter's update moves them through their
ensemble correlation with the observed state (Anderson 2001; Evensen 2009, ch. 7). One
filter run instead of the many of `fit`, with no gradient, at the price of a Gaussian
(linear-regression) update of the parameters and a spread that has to be kept alive.

The augmented state is the flattened model state followed by the parameters, so use it
with a filter without localisation (ETKF, stochastic EnKF, a serial filter without a
radius): a localised filter would place the parameters at a grid point.
"""

import math
from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ._assimilate import assimilate
from ._custom_types import Array, Float
from ._ensemble import Ensemble
from ._streams import ObservationSeries
from .dynamics.base import AbstractDynamics
from .observations.base import AbstractObservation


class AugmentedDynamics(AbstractDynamics):
    """`dynamics` whose scalar parameters `names` ride at the end of the flattened
    state: a step replaces them by the member's values, advances the state and lets the
    parameters take a Gaussian random walk of `drift_std` per square-root unit time
    (0: constant; a small drift keeps the parameters' spread from collapsing)."""

    dynamics: AbstractDynamics
    drift_std: Float[Array, ""]
    names: tuple[str, ...] = eqx.field(static=True)

    def __init__(self, dynamics, names, drift_std=0.0):
        for name in names:
            value = getattr(dynamics, name, None)
            if not (eqx.is_inexact_array(value) and jnp.ndim(value) == 0):
                raise ValueError(
                    f"`names`: {name!r} is not a scalar parameter of {type(dynamics).__name__}."
                )
        if not (np.isfinite(drift_std) and drift_std >= 0):
            raise ValueError(f"`drift_std` must be a finite number >= 0; got {drift_std!r}.")
        self.dynamics = dynamics
        self.names = tuple(names)
        self.drift_std = jnp.asarray(drift_std, float)

    @property
    def state_shape(self):
        return (math.prod(self.dynamics.state_shape) + len(self.names),)

    def step(self, x, t0, t1, *, key):
        d = math.prod(self.dynamics.state_shape)
        state, theta = x[:d].reshape(self.dynamics.state_shape), x[d:]
        dynamics = eqx.tree_at(
            lambda m: [getattr(m, n) for n in self.names], self.dynamics, list(theta)
        )
        state_key, drift_key = jr.split(key)
        state = dynamics.step(state, t0, t1, key=state_key).reshape(-1)
        scale = self.drift_std.astype(x.dtype) * jnp.sqrt(jnp.asarray(t1 - t0, x.dtype))
        theta = theta + scale * jr.normal(drift_key, theta.shape, x.dtype)
        return jnp.concatenate([state, theta])


class StateObservation(AbstractObservation):
    """`observation` of the state part of an augmented state (the first
    `prod(state_shape)` values, reshaped)."""

    observation: AbstractObservation
    noise: object
    state_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, observation, state_shape):
        self.observation = observation
        self.noise = observation.noise
        self.state_shape = tuple(state_shape)

    def apply(self, x):
        return self.observation.apply(x[: math.prod(self.state_shape)].reshape(self.state_shape))

    def locations(self):
        return self.observation.locations()


class AugmentationResult(NamedTuple):
    """The output of `estimate_by_augmentation`: per parameter name, the estimate
    `params` (the analysis mean averaged over the cycles after `burn_in`), the
    `final` analysis mean and `spread` (ensemble std), and the analysis mean at every
    cycle (`trajectory`); the run's `solution` (its means include the parameters)."""

    params: dict
    final: dict
    spread: dict
    trajectory: dict
    solution: object


def estimate_by_augmentation(
    filter, dynamics, series: ObservationSeries, members0, names, prior_std, *, key,
    drift_std=0.0, t0=0.0, burn_in=0,
) -> AugmentationResult:  # fmt: skip
    """Estimate the scalar parameters `names` of `dynamics` jointly with the state.

    Each member starts from its state in `members0` (an `Ensemble` or `(n, *state)`
    array) and parameters drawn from `N(value, prior_std**2)` around the dynamics' own
    values (`prior_std`: a float or one per name); `filter` (one without localisation)
    then runs through `series` on `AugmentedDynamics` (random walk `drift_std`) with
    `StateObservation`. Inflation of the filter acts on the parameters too."""
    members = members0.members if isinstance(members0, Ensemble) else jnp.asarray(members0)
    n = members.shape[0]
    augmented = AugmentedDynamics(dynamics, names, drift_std)
    centre = jnp.stack([jnp.asarray(getattr(dynamics, name), members.dtype) for name in names])
    scale = jnp.broadcast_to(jnp.asarray(prior_std, members.dtype), centre.shape)
    if not bool(jnp.all(scale > 0)):
        raise ValueError(f"`prior_std` must be > 0 for every parameter; got {prior_std!r}.")
    if not 0 <= burn_in < len(series.times):
        raise ValueError(f"`burn_in` must lie in [0, {len(series.times)}); got {burn_in}.")
    theta_key, init_key, run_key = jr.split(key, 3)
    theta = centre[None] + scale[None] * jr.normal(theta_key, (n, len(names)), members.dtype)
    start = Ensemble(jnp.concatenate([members.reshape(n, -1), theta], axis=1))
    observation = StateObservation(series.observation, dynamics.state_shape)
    series = eqx.tree_at(lambda s: s.observation, series, observation)
    solution = assimilate(
        filter, augmented, series, filter.init(start, key=init_key), key=run_key, t0=t0,
        scores=False,
    )  # fmt: skip
    d = math.prod(dynamics.state_shape)
    means, stds = (
        np.asarray(solution.analysis_mean[:, d:]),
        np.asarray(solution.analysis_std[:, d:]),
    )
    return AugmentationResult(
        params={name: float(means[burn_in:, i].mean()) for i, name in enumerate(names)},
        final={name: float(means[-1, i]) for i, name in enumerate(names)},
        spread={name: float(stds[-1, i]) for i, name in enumerate(names)},
        trajectory={name: means[:, i] for i, name in enumerate(names)},
        solution=solution,
    )
