"""Inflation and relaxation: counter the under-dispersion of small ensembles.

Each is a small Module applied after the analysis, to flattened members `(n, d)`:
`inflation(forecast, analysis) -> analysis`. Tunables are array fields, so trying a
new value does not recompile.
"""

import abc

import equinox as eqx
import jax.numpy as jnp

from .._checks import check_value
from .._custom_types import Array, Float


class AbstractInflation(eqx.Module):
    """Modify the analysis members, given the forecast members."""

    @abc.abstractmethod
    def __call__(
        self, forecast: Float[Array, "n d"], analysis: Float[Array, "n d"]
    ) -> Float[Array, "n d"]:
        """Return the inflated analysis members."""


def _split(members):
    mean = jnp.mean(members, axis=0, keepdims=True)
    return mean, members - mean


class NoInflation(AbstractInflation):
    """Leave the analysis unchanged."""

    def __call__(self, forecast, analysis):
        return analysis


class MultiplicativeInflation(AbstractInflation):
    r"""Scale the analysis anomalies by `factor` (>= 1): $x_j \leftarrow \bar x + \lambda
    (x_j - \bar x)$. Applied after the analysis, as DAPPER's `infl` is, so its tuned
    values carry over."""

    factor: Float[Array, ""]

    def __init__(self, factor):
        self.factor = check_value(
            jnp.asarray(factor),
            lambda f, xp: ~(f > 0) | ~xp.isfinite(f),
            f"`factor` must be a positive finite inflation factor; got {factor!r}.",
        )

    def __call__(self, forecast, analysis):
        mean, anomalies = _split(analysis)
        return mean + self.factor.astype(analysis.dtype) * anomalies


def _check_alpha(alpha):
    return check_value(
        jnp.asarray(alpha),
        lambda a, xp: ~((a >= 0) & (a <= 1)),
        f"`alpha` must lie in [0, 1]; got {alpha!r}.",
    )


class RTPS(AbstractInflation):
    r"""Relaxation to prior spread (Whitaker & Hamill 2012).

    Per state component, the analysis spread is relaxed back towards the forecast's:
    $\sigma_a \leftarrow (1-\alpha)\sigma_a + \alpha\sigma_f$, by scaling the analysis
    anomalies by $1 + \alpha(\sigma_f - \sigma_a)/\sigma_a$.
    """

    alpha: Float[Array, ""]

    def __init__(self, alpha):
        self.alpha = _check_alpha(alpha)

    def __call__(self, forecast, analysis):
        mean, anomalies = _split(analysis)
        sigma_f = jnp.std(forecast, axis=0, keepdims=True)
        sigma_a = jnp.std(analysis, axis=0, keepdims=True)
        alpha = self.alpha.astype(analysis.dtype)
        # Where the analysis has collapsed to zero spread, leave it (no direction to scale).
        safe = jnp.where(sigma_a > 0, sigma_a, 1)
        scale = jnp.where(sigma_a > 0, 1 + alpha * (sigma_f - sigma_a) / safe, 1)
        return mean + scale * anomalies


class RTPP(AbstractInflation):
    r"""Relaxation to prior perturbations (Zhang et al. 2004):
    $x'_a \leftarrow (1-\alpha) x'_a + \alpha x'_f$."""

    alpha: Float[Array, ""]

    def __init__(self, alpha):
        self.alpha = _check_alpha(alpha)

    def __call__(self, forecast, analysis):
        mean, anomalies_a = _split(analysis)
        _, anomalies_f = _split(forecast)
        alpha = self.alpha.astype(analysis.dtype)
        return mean + (1 - alpha) * anomalies_a + alpha * anomalies_f


def as_inflation(inflation) -> AbstractInflation:
    """An inflation Module from a filter's `inflation` argument: None (none), a number
    (multiplicative factor) or an `AbstractInflation`."""
    if inflation is None:
        return NoInflation()
    if isinstance(inflation, AbstractInflation):
        return inflation
    return MultiplicativeInflation(inflation)
