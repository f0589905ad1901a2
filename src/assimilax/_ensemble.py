"""The ensemble: the state interface shared by every ensemble filter."""

import equinox as eqx
import jax
import jax.numpy as jnp

from ._belief import AbstractBelief
from ._checks import check_finite, check_floating, check_shape, check_value
from ._custom_types import Array, Float


class Ensemble(AbstractBelief):
    r"""A weighted ensemble of `n` members.

    The weights are $w_j = \exp(\ell_j) / \sum_k \exp(\ell_k)$ for the log-weights
    $\ell$; an EnKF ensemble has all log-weights equal (zero by default), a particle
    filter's need not.

    **Arguments:**

    - `members`: array of shape `(n, *state_shape)`; `n >= 2`.
    - `log_weights`: optional array of shape `(n,)`, unnormalised log-weights.
      Defaults to zeros (equal weights).

    **Raises:**

    `ValueError` if the shapes do not match or the members or log-weights contain NaN;
    `TypeError` if the members are not floating point.
    """

    members: Float[Array, " n *state"]
    log_weights: Float[Array, " n"]

    def __init__(self, members, log_weights=None):
        members = jnp.asarray(members)
        check_floating(members, "members")
        if members.ndim < 2:
            raise ValueError(
                "`members` must have shape (n, *state_shape) with a leading member "
                f"axis and at least one state axis; got shape {members.shape}. "
                "For a scalar state use shape (n, 1)."
            )
        n = members.shape[0]
        if n < 2:
            raise ValueError(f"An ensemble needs at least 2 members; got {n}.")
        if log_weights is None:
            log_weights = jnp.zeros((n,), members.dtype)
        log_weights = jnp.asarray(log_weights)
        check_shape(log_weights, (n,), "log_weights", "(n,)")
        # Checked at the boundary only: inside the loop a divergence is a RESULTS code.
        self.members = check_finite(members, "members", traced=False)
        self.log_weights = check_value(
            log_weights,
            lambda v, xp: xp.isnan(v) | (v == xp.inf),
            "`log_weights` must not contain NaN or +inf (-inf marks a zero weight).",
            traced=False,
        )

    # Sizes ------------------------------------------------------------------
    @property
    def size(self) -> int:
        """The number of members `n`."""
        return self.members.shape[0]

    @property
    def state_shape(self) -> tuple[int, ...]:
        return self.members.shape[1:]

    # Moments ----------------------------------------------------------------
    def weights(self) -> Float[Array, " n"]:
        """Normalised weights (softmax of the log-weights)."""
        return jax.nn.softmax(self.log_weights)

    def mean(self):
        return jnp.tensordot(self.weights(), self.members, axes=1)

    def anomalies(self) -> Float[Array, " n *state"]:
        """Members minus the (weighted) mean."""
        mean = self.mean()
        return self.members - mean[None]

    def _bias_correction(self, w):
        # Unbiased for reliability weights: 1 / (1 - sum w^2); n / (n - 1) for equal weights.
        # With all the weight on one member (ESS = 1) the unbiased estimate is 0/0: the
        # plain (biased) one, 0, is reported instead of inf/NaN.
        denom = 1 - jnp.sum(w**2)
        ok = denom > 8 * jnp.finfo(denom.dtype).eps
        return jnp.where(ok, 1 / jnp.where(ok, denom, 1), 1)

    def variance(self):
        w = self.weights()
        return self._bias_correction(w) * jnp.tensordot(w, self.anomalies() ** 2, 1)

    def covariance(self) -> Float[Array, "d d"]:
        """Sample covariance (unbiased, weighted) of a flat state."""
        if len(self.state_shape) != 1:
            raise ValueError(
                "`covariance` needs flat states of shape (n, d); this ensemble has "
                f"state shape {self.state_shape}. Reshape the members first."
            )
        w = self.weights()
        a = self.anomalies()
        return self._bias_correction(w) * (a.T * w[None]) @ a

    def effective_size(self) -> Float[Array, ""]:
        r"""Effective sample size $1 / \sum_j w_j^2$ (equals `n` for equal weights)."""
        return 1 / jnp.sum(self.weights() ** 2)


def flatten_members(members: Float[Array, " n *state"]) -> Float[Array, "n d"]:
    """`(n, *state)` to `(n, d)`."""
    return members.reshape(members.shape[0], -1)


class AbstractEnsembleBelief(AbstractBelief):
    """A belief that holds an `Ensemble` and something more (by composition, never by
    subclassing `Ensemble`): the optimal-proposal particle filter's model-noise
    covariance, the score filter's network weights. Its moments and member views are
    those of `ensemble`; the loop scores and saves `ensemble` (see `as_ensemble`)."""

    ensemble: eqx.AbstractVar[Ensemble]

    @property
    def members(self) -> Float[Array, " n *state"]:
        return self.ensemble.members

    @property
    def log_weights(self) -> Float[Array, " n"]:
        return self.ensemble.log_weights

    @property
    def size(self) -> int:
        return self.ensemble.size

    @property
    def state_shape(self) -> tuple[int, ...]:
        return self.ensemble.state_shape

    def mean(self):
        return self.ensemble.mean()

    def variance(self):
        return self.ensemble.variance()

    def effective_size(self) -> Float[Array, ""]:
        return self.ensemble.effective_size()


def as_ensemble(belief: AbstractBelief) -> Ensemble | None:
    """The `Ensemble` a belief holds (itself, or an `AbstractEnsembleBelief`'s), or
    None for beliefs that are no ensemble (the Kalman filter's `GaussianBelief`)."""
    if isinstance(belief, Ensemble):
        return belief
    if isinstance(belief, AbstractEnsembleBelief):
        return belief.ensemble
    return None
