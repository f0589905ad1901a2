"""Gaussian noise covariances, represented by their structure.

A covariance `R` is held as a scalar variance, a diagonal or a dense matrix, as DAPPER's
`CovMat` does, so that whitening costs O(m) where it can. Every operation accepts an
optional boolean `mask` of observed components: masked-out components are decoupled
from the rest (their rows and columns of `R` are replaced by those of the identity) and
their whitened values are set to zero, so they carry no information. For a dense `R`
this is exactly conditioning on the observed sub-vector.
"""

import abc
import math

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl

from ._checks import check_finite, check_ndim, check_positive, check_value
from ._custom_types import Array, Bool, Float, PRNGKeyArray


class AbstractCovariance(eqx.Module):
    """A symmetric positive-definite covariance matrix `R` of size `(m, m)`."""

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """The size `m`."""

    @abc.abstractmethod
    def dense(self) -> Float[Array, "m m"]:
        """`R` as a dense matrix."""

    @abc.abstractmethod
    def diagonal(self) -> Float[Array, " m"]:
        """The variances, `diag(R)`."""

    @abc.abstractmethod
    def whiten(
        self, v: Float[Array, "*batch m"], mask: Bool[Array, " m"] | None = None
    ) -> Float[Array, "*batch m"]:
        """Return `L^{-1} v` for `R = L L^T` (lower Cholesky), with masked entries zero."""

    @abc.abstractmethod
    def log_det(self, mask: Bool[Array, " m"] | None = None) -> Float[Array, ""]:
        """`log det R` of the observed block."""

    @abc.abstractmethod
    def sample(self, *, key: PRNGKeyArray, shape: tuple[int, ...] = ()) -> Array:
        """Draw `(*shape, m)` samples of `N(0, R)`."""

    def masked_dense(self, mask: Bool[Array, " m"] | None = None) -> Float[Array, "m m"]:
        """`R` with masked-out components decoupled: `R` on the observed block, `I` elsewhere."""
        r = self.dense()
        if mask is None:
            return r
        both = mask[:, None] & mask[None, :]
        return jnp.where(both, r, jnp.eye(self.dim, dtype=r.dtype))

    def log_density(
        self, residual: Float[Array, " m"], mask: Bool[Array, " m"] | None = None
    ) -> Float[Array, ""]:
        r"""Gaussian log-density of `residual` over its observed components.

        $\log N(r; 0, R) = -\tfrac12 r^T R^{-1} r - \tfrac12 \log\det R
        - \tfrac{m_o}{2}\log 2\pi$, with $m_o$ the number of observed components.
        """
        z = self.whiten(residual, mask)
        m_obs = self.dim if mask is None else jnp.sum(mask).astype(z.dtype)
        log_2pi = jnp.asarray(math.log(2 * math.pi), z.dtype)
        return -0.5 * (jnp.sum(z**2) + self.log_det(mask) + m_obs * log_2pi)


def _masked(v, mask):
    return v if mask is None else jnp.where(jnp.broadcast_to(mask, v.shape), v, 0)


class ScalarCovariance(AbstractCovariance):
    """`R = variance * I_m`."""

    variance: Float[Array, ""]
    size: int = eqx.field(static=True)

    def __init__(self, variance, size: int):
        variance = jnp.asarray(variance)
        check_ndim(variance, 0, "variance", "()")
        self.variance = check_positive(variance, "variance", "noise variances")
        if size < 1:
            raise ValueError(f"`size` must be a positive integer; got {size}.")
        self.size = size

    @property
    def dim(self) -> int:
        return self.size

    def dense(self):
        return self.variance * jnp.eye(self.size, dtype=self.variance.dtype)

    def diagonal(self):
        return jnp.full((self.size,), self.variance)

    def whiten(self, v, mask=None):
        return _masked(v / jnp.sqrt(self.variance.astype(v.dtype)), mask)

    def log_det(self, mask=None):
        log_var = jnp.log(self.variance)
        m_obs = self.size if mask is None else jnp.sum(mask).astype(log_var.dtype)
        return m_obs * log_var

    def sample(self, *, key, shape=()):
        z = jr.normal(key, (*shape, self.size), self.variance.dtype)
        return jnp.sqrt(self.variance) * z


class DiagonalCovariance(AbstractCovariance):
    """`R = diag(variances)`."""

    variances: Float[Array, " m"]

    def __init__(self, variances):
        variances = jnp.asarray(variances)
        check_ndim(variances, 1, "variances", "(m,)")
        self.variances = check_positive(variances, "variances", "noise variances")

    @property
    def dim(self) -> int:
        return self.variances.shape[0]

    def dense(self):
        return jnp.diag(self.variances)

    def diagonal(self):
        return self.variances

    def whiten(self, v, mask=None):
        std = jnp.broadcast_to(jnp.sqrt(self.variances.astype(v.dtype)), v.shape)
        return _masked(v / std, mask)

    def log_det(self, mask=None):
        return jnp.sum(_masked(jnp.log(self.variances), mask))

    def sample(self, *, key, shape=()):
        z = jr.normal(key, (*shape, self.dim), self.variances.dtype)
        return jnp.broadcast_to(jnp.sqrt(self.variances), z.shape) * z


class DenseCovariance(AbstractCovariance):
    """A full symmetric positive-definite `R`, held with its Cholesky factor."""

    matrix: Float[Array, "m m"]
    cholesky: Float[Array, "m m"]

    def __init__(self, matrix):
        matrix = jnp.asarray(matrix)
        check_ndim(matrix, 2, "matrix", "(m, m)")
        if matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"`matrix` must be square (m, m); got shape {matrix.shape}.")
        matrix = check_finite(matrix, "matrix")
        matrix = check_value(
            matrix,
            lambda a, xp: xp.abs(a - a.T) > 1e-8 * (1 + xp.abs(a)),
            "`matrix` must be symmetric.",
        )
        self.matrix = matrix
        self.cholesky = check_value(
            jnp.linalg.cholesky(matrix),
            lambda c, xp: ~xp.isfinite(c),
            "`matrix` must be positive definite (its Cholesky factorisation failed).",
        )

    @property
    def dim(self) -> int:
        return self.matrix.shape[0]

    def dense(self):
        return self.matrix

    def diagonal(self):
        return jnp.diagonal(self.matrix)

    def _factor(self, mask):
        if mask is None:
            return self.cholesky
        return jnp.linalg.cholesky(self.masked_dense(mask))

    def whiten(self, v, mask=None):
        chol = self._factor(mask).astype(v.dtype)
        z = jsl.solve_triangular(chol, jnp.moveaxis(v, -1, 0), lower=True)
        return _masked(jnp.moveaxis(z, 0, -1), mask)

    def log_det(self, mask=None):
        return 2 * jnp.sum(jnp.log(jnp.diagonal(self._factor(mask))))

    def sample(self, *, key, shape=()):
        z = jr.normal(key, (*shape, self.dim), self.matrix.dtype)
        return z @ self.cholesky.T


def as_covariance(size: int, noise_std=None, noise_covariance=None) -> AbstractCovariance:
    """Build a covariance from exactly one of `noise_std` or `noise_covariance`.

    - `noise_std`: a scalar standard deviation (`R = std^2 I`) or a vector of `m`
      standard deviations (`R = diag(std^2)`).
    - `noise_covariance`: an `AbstractCovariance`, or a dense `(m, m)` matrix.
    """
    if (noise_std is None) == (noise_covariance is None):
        raise ValueError(
            "Pass exactly one of `noise_std` (a scalar or a vector of standard "
            "deviations) or `noise_covariance` (a matrix or an AbstractCovariance)."
        )
    if noise_covariance is not None:
        cov = noise_covariance
        if not isinstance(cov, AbstractCovariance):
            cov = DenseCovariance(cov)
    else:
        std = jnp.asarray(noise_std)
        std = check_positive(std, "noise_std", "standard deviations")
        if std.ndim == 0:
            cov = ScalarCovariance(std**2, size)
        elif std.ndim == 1:
            cov = DiagonalCovariance(std**2)
        else:
            raise ValueError(
                f"`noise_std` must be a scalar or a vector of shape ({size},); "
                f"got shape {std.shape}."
            )
    if cov.dim != size:
        raise ValueError(
            f"The noise covariance has size {cov.dim}, but the observation operator "
            f"returns {size} values; they must match."
        )
    return cov
