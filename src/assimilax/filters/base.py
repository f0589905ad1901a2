"""The filter interface shared by every filter: `init`, `forecast`, `update`."""

import abc
from typing import Generic, TypeVar

import equinox as eqx
import jax
import jax.random as jr

from .._belief import AbstractBelief
from .._custom_types import Array, Bool, Float, PRNGKeyArray, RealScalarLike
from .._ensemble import Ensemble
from ..dynamics import AbstractDynamics
from ..observations import AbstractObservation


_Belief = TypeVar("_Belief", bound=AbstractBelief)


class AbstractFilter(eqx.Module, Generic[_Belief]):
    """A sequential filter. The filter object is configuration and never changes; the
    belief it returns is a new pytree at every step (like diffrax's solver state).

    To add a filter, subclass `AbstractFilter` (or `AbstractEnsembleFilter`) and
    implement `init`, `forecast` and `update`.
    """

    @abc.abstractmethod
    def init(self, ensemble: Ensemble, *, key: PRNGKeyArray) -> _Belief:
        """Build the initial belief from an initial ensemble."""

    @abc.abstractmethod
    def forecast(
        self,
        belief: _Belief,
        dynamics: AbstractDynamics,
        t0: RealScalarLike,
        t1: RealScalarLike,
        *,
        key: PRNGKeyArray,
    ) -> _Belief:
        """Push the belief through the dynamics from `t0` to `t1`."""

    @abc.abstractmethod
    def update(
        self,
        belief: _Belief,
        observation: AbstractObservation,
        y: Float[Array, " m"],
        mask: Bool[Array, " m"] | None = None,
        *,
        key: PRNGKeyArray,
    ) -> _Belief:
        """Condition the belief on observed values `y` (`mask`: True = observed)."""


def check_ensemble(ensemble) -> Ensemble:
    """`ensemble`, if it is an `Ensemble`; else a TypeError (every ensemble filter's
    `init`)."""
    if not isinstance(ensemble, Ensemble):
        raise TypeError(f"`ensemble` must be an assimilax.Ensemble; got {type(ensemble).__name__}.")
    return ensemble


def move_members(
    ensemble: Ensemble, dynamics: AbstractDynamics, t0, t1, *, key: PRNGKeyArray
) -> Ensemble:
    """Every member through the dynamics from `t0` to `t1` (vmapped, one key per
    member), weights unchanged: the forecast of every ensemble filter."""
    keys = jr.split(key, ensemble.size)
    step = lambda x, k: dynamics.step(x, t0, t1, key=k)
    return Ensemble(jax.vmap(step)(ensemble.members, keys), ensemble.log_weights)


class AbstractEnsembleFilter(AbstractFilter[Ensemble]):
    """A filter whose belief is an `Ensemble` and whose forecast moves every member
    through the dynamics (`move_members`); subclasses implement `update` only. Filters
    whose forecast differs (particle filters, the score filter) subclass
    `AbstractFilter` and use `check_ensemble`/`move_members` (equinox's rule: no
    concrete method is overridden)."""

    def init(self, ensemble: Ensemble, *, key: PRNGKeyArray) -> Ensemble:
        del key
        return check_ensemble(ensemble)

    def forecast(self, belief, dynamics, t0, t1, *, key):
        return move_members(belief, dynamics, t0, t1, key=key)
