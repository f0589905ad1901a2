"""Beliefs: what a filter knows about the state at one time."""

import abc

import equinox as eqx
import jax.numpy as jnp

from ._checks import check_finite, check_ndim, check_shape
from ._custom_types import Array, Float


class AbstractBelief(eqx.Module):
    """A probability distribution over the state, as held by a filter.

    Every belief reports a mean and marginal variances, which is all the assimilation
    loop needs for its diagnostics. Ensemble beliefs are `Ensemble`s (or hold one).
    """

    @abc.abstractmethod
    def mean(self) -> Float[Array, " *state"]:
        """The mean state."""

    @abc.abstractmethod
    def variance(self) -> Float[Array, " *state"]:
        """The marginal variance of each state component."""

    def spread(self) -> Float[Array, ""]:
        r"""Root-mean-square spread $\sqrt{\overline{\operatorname{var}}}$ over components.

        This is the quantity DAPPER reports as `spread` and compares with the RMSE.
        """
        return jnp.sqrt(jnp.mean(self.variance()))


class GaussianBelief(AbstractBelief):
    """A Gaussian belief `N(loc, covariance_matrix)` over a flat state (the Kalman filter's)."""

    loc: Float[Array, " d"]
    covariance_matrix: Float[Array, "d d"]

    def __init__(self, loc, covariance_matrix):
        loc = jnp.asarray(loc)
        covariance_matrix = jnp.asarray(covariance_matrix)
        check_ndim(loc, 1, "loc", "(d,)")
        d = loc.shape[0]
        check_shape(covariance_matrix, (d, d), "covariance_matrix", "(d, d)")
        self.loc = check_finite(loc, "loc", traced=False)
        self.covariance_matrix = check_finite(covariance_matrix, "covariance_matrix", traced=False)

    def mean(self):
        return self.loc

    def variance(self):
        return jnp.diagonal(self.covariance_matrix)

    def covariance(self) -> Float[Array, "d d"]:
        return self.covariance_matrix
