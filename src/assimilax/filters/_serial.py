r"""Serial ensemble filters: observations assimilated one at a time, in two steps
(Anderson 2003, DART's framework), with covariance localisation.

Observations are whitened first, so their errors are independent with unit variance.
The state and the observed values of the observations still to come form an augmented
ensemble (so nonlinear operators are handled by the ensemble regression, as in every
EnKF). For observation $k$, with the augmented members' values $u$ of that observation:

1. **Observation space**: a scalar rule moves $u$ to posterior values $u + \Delta u$
   given the observed value and its unit-variance Gaussian error: the ensemble
   adjustment (square-root) rule for `SerialEnSRF`, the rank histogram rule for
   `RankHistogramFilter`.
2. **Regression**: every augmented column $z$ moves by
   $\rho_{zk}\,\mathrm{cov}(z, u) / \mathrm{var}(u)\, \Delta u$ ($\rho$ the Gaspari–Cohn
   taper between the column's location and the observation's: localisation of $B$, not of
   $R$ as in the `LETKF`).
"""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax import lax
from jax.scipy.special import ndtri

from .._covariance import DenseCovariance
from .._custom_types import Array, Float
from .._ensemble import flatten_members
from ..observations.base import grid_coordinates
from ._enkf import innovation_terms, mean_preserving_rotation, unflatten
from ._inflation import AbstractInflation, as_inflation
from ._localisation import GaspariCohn, periodic_distance
from .base import AbstractEnsembleFilter


def adjustment_increments(u, y):
    r"""The ensemble adjustment rule for one observation with unit error variance: the
    mean moves to the Kalman mean, the anomalies shrink by $(1 + \sigma^2)^{-1/2}$
    ($\sigma^2$ the ensemble variance of `u`). Kalman-exact for Gaussian priors."""
    n = u.shape[0]
    mean = jnp.mean(u)
    var = jnp.sum((u - mean) ** 2) / (n - 1)
    shift = var / (var + 1) * (y - mean)
    return shift + (jnp.sqrt(1 / (var + 1)) - 1) * (u - mean)


def rank_histogram_increments(u, y):
    r"""The rank histogram rule (Anderson 2010) for one observation with unit error
    variance.

    The sorted members split the line into $n + 1$ bins of prior mass $1/(n+1)$ each:
    uniform density between neighbouring members, Gaussian tails outside (the ensemble's
    standard deviation, placed so each tail holds $1/(n+1)$). The likelihood is the mean
    of its values at the bin's edges inside, its value at the outermost member in the
    tails. The posterior members are the posterior's quantiles $i/(n+1)$, $i = 1..n$,
    given to the members in the order of their prior ranks (so each keeps its rank).
    """
    n = u.shape[0]
    order = jnp.argsort(u)
    s = u[order]
    dtype = u.dtype
    sd = jnp.maximum(jnp.std(u, ddof=1), jnp.finfo(dtype).tiny ** 0.25)
    log_lik = -0.5 * (y - s) ** 2
    lik = jnp.exp(log_lik - jnp.max(log_lik))
    masses = jnp.concatenate([lik[:1], 0.5 * (lik[1:] + lik[:-1]), lik[-1:]])
    masses = masses / jnp.sum(masses)  # n + 1 bins: left tail, n - 1 inside, right tail
    edges = jnp.concatenate([jnp.zeros(1, dtype), jnp.cumsum(masses)])  # posterior CDF
    q = jnp.arange(1, n + 1, dtype=dtype) / (n + 1)  # the target quantiles
    # The bin of each target: 0 (left tail), 1..n-1 (inside), n (right tail).
    bins = jnp.clip(jnp.searchsorted(edges, q, side="right") - 1, 0, n)
    tail = ndtri(jnp.asarray(1 / (n + 1), dtype))  # prior tails: Phi((s0 - mu) / sd) = 1/(n+1)
    # Left tail: F(x) = masses[0] (n+1) Phi((x - mu_L)/sd), mu_L = s_0 - sd * tail.
    left_p = jnp.clip(q / ((n + 1) * jnp.maximum(masses[0], 1e-300)), 0, 1 / (n + 1))
    left = s[0] + sd * (ndtri(left_p) - tail)
    # Right tail: 1 - F(x) = masses[n] (n+1) (1 - Phi((x - mu_R)/sd)), mu_R = s_n + sd * tail.
    right_p = jnp.clip((1 - q) / ((n + 1) * jnp.maximum(masses[n], 1e-300)), 0, 1 / (n + 1))
    right = s[-1] - sd * (ndtri(right_p) - tail)
    # Inside: uniform posterior density within each bin.
    i = jnp.clip(bins - 1, 0, n - 2)
    frac = (q - edges[i + 1]) / jnp.maximum(masses[i + 1], 1e-300)
    inside = s[i] + jnp.clip(frac, 0, 1) * (s[i + 1] - s[i])
    posterior = jnp.where(bins == 0, left, jnp.where(bins == n, right, inside))
    return jnp.zeros_like(u).at[order].set(posterior - s)


class AbstractSerialFilter(AbstractEnsembleFilter):
    """Shared by the serial filters (see the module): the scan over observations, the
    regression and the localisation; subclasses give the observation-space rule."""

    inflation: AbstractInflation
    localisation: GaspariCohn | None
    rotate: bool = eqx.field(static=True)
    periodic: bool = eqx.field(static=True)

    def __init__(self, inflation=None, radius=None, *, rotate=False, periodic=True):
        self.inflation = as_inflation(inflation)
        self.localisation = None if radius is None else GaspariCohn(radius)
        self.rotate = bool(rotate)
        self.periodic = bool(periodic)

    @abc.abstractmethod
    def increments(self, u, y):
        """The observation-space rule: posterior minus prior values of one whitened
        observation (unit error variance) for the members' values `u`, observed `y`."""

    def update(self, belief, observation, y, mask=None, *, key):
        terms = innovation_terms(belief, observation, y, mask)
        forecast = flatten_members(belief.members)
        # The augmented members: state anomalies, then whitened observed anomalies (the
        # observed values relative to their forecast mean, where `innovation` is y).
        members = jnp.concatenate([terms.anomalies, terms.obs_anomalies], axis=1)
        members = self.assimilate(members, terms.innovation, mask, observation, belief)
        analysis = terms.mean[None] + self.rotated(members[:, : forecast.shape[1]], key)
        return unflatten(self.inflation(forecast, analysis), belief)

    def assimilate(self, members, values, mask, observation, belief):
        """Every observation in turn into the augmented `members` (n, d + m): the
        observation-space rule on column `d + k` with the observed `values[..., k]`
        (`values`: (m,), or (n, m) for one value per member), then the localised
        regression of every column on it."""
        n, dm = members.shape
        m = values.shape[-1]
        d = dm - m
        observed = jnp.ones(m, bool) if mask is None else mask
        taper = augmented_tapers(
            self.localisation, observation, belief.state_shape, d, m, members.dtype,
            self.periodic, type(self).__name__,
        )  # fmt: skip

        def assimilate_one(members, k):
            u = members[:, d + k]
            du = self.increments(u, values[..., k])
            anomaly = u - jnp.mean(u)
            spread = anomaly @ anomaly
            # cov(z, u) / var(u) for every augmented column z.
            slope = (members - jnp.mean(members, axis=0)[None]).T @ anomaly / spread
            gain = jnp.where(observed[k] & (spread > 0), taper(k) * slope, 0)
            return members + jnp.outer(du, gain), None

        return lax.scan(assimilate_one, members, jnp.arange(m))[0]

    def rotated(self, members, key):
        """`members` with a random mean-preserving rotation of their anomalies, if
        `rotate`."""
        if not self.rotate:
            return members
        n = members.shape[0]
        mean = jnp.mean(members, axis=0)
        rotation = mean_preserving_rotation(n, key=key, dtype=members.dtype)
        return mean[None] + rotation @ (members - mean[None])


def augmented_tapers(localisation, observation, state_shape, d, m, dtype, periodic, name):
    """The function giving the Gaspari–Cohn taper between observation `k` and every
    column of the augmented members (`d` state columns, then `m` observed ones; ones
    where `localisation` is None). `name` is the filter's, for the errors."""
    if localisation is None:
        return lambda k: jnp.ones(d + m, dtype)
    locations = observation.locations()
    if locations is None or locations.shape[-1] != len(state_shape):
        raise TypeError(
            f"{name} with a `radius` needs observation locations with one coordinate "
            f"per state axis; {type(observation).__name__} has none or a different number."
        )
    if isinstance(observation.noise, DenseCovariance):
        raise TypeError(
            f"{name} with a `radius` needs uncorrelated observation errors (a scalar "
            "or diagonal noise); whitening a dense R mixes the observations' locations."
        )
    grid = grid_coordinates(jnp.arange(math.prod(state_shape)), state_shape).astype(dtype)
    points = jnp.concatenate([grid, locations.astype(dtype)])
    domain = state_shape if periodic else None

    def taper(k):
        return localisation(periodic_distance(points, points[d + k][None], domain))

    return taper


_SETTINGS = """
    - `inflation`: as for `ETKF`.
    - `radius`: localisation radius in grid units (`GaspariCohn`, DAPPER's convention);
      None (default): no localisation. Localising needs observation locations and an
      observation noise without correlations between values (whitening a dense `R`
      mixes the locations).
    - `rotate`: a random mean-preserving rotation of the analysis anomalies (DAPPER's
      `rot=True`).
    - `periodic`: whether distances wrap around the domain.

    Cost: $O(m (d + m) n)$ per analysis, memory $O(n (d + m))$, in `m` sequential steps.
"""


class SerialEnSRF(AbstractSerialFilter):
    __doc__ = (
        r"""The serial ensemble square-root filter (Whitaker & Hamill 2002), the ensemble
    adjustment Kalman filter of Anderson (2001, 2003) in DART: the serial framework (see
    the module) with `adjustment_increments`. Without localisation it is Kalman-exact on
    linear-Gaussian problems (serial and batch processing coincide).

    **Arguments:**
"""
        + _SETTINGS
        + """
    References: Whitaker & Hamill (2002), "Ensemble data assimilation without perturbed
    observations", MWR 130; Anderson (2003), "A local least squares framework for
    ensemble filtering", MWR 131.
    """
    )

    def increments(self, u, y):
        return adjustment_increments(u, y)


class RankHistogramFilter(AbstractSerialFilter):
    __doc__ = (
        r"""The rank histogram filter (Anderson 2010): the serial framework (see the
    module) with `rank_histogram_increments`, a non-parametric observation-space update
    that keeps the prior's non-Gaussian shape (skewness, several modes) which the
    Gaussian rule removes; the regression to the state is the EnKF's. DART's default for
    non-Gaussian quantities; with a probit transform of bounded quantities it is the
    quantile-conserving ensemble filter of Anderson (2022).

    **Arguments:**
"""
        + _SETTINGS
        + """
    Reference: Anderson (2010), "A non-Gaussian ensemble filter update for data
    assimilation", MWR 138.
    """
    )

    def increments(self, u, y):
        return rank_histogram_increments(u, y)


class Anamorphosis(eqx.Module):
    r"""The normal-score transform of each column of an ensemble (Gaussian
    anamorphosis): the member of rank $r$ (0-based) among $n$ maps to
    $\Phi^{-1}((r+1)/(n+1))$, other values by linear interpolation between the
    members, extended beyond the extreme members with the column's standard deviation
    (a Gaussian tail)."""

    sorted: Float[Array, "n k"]
    scale: Float[Array, " k"]

    def __init__(self, members: Float[Array, "n k"]):
        self.sorted = jnp.sort(members, axis=0)
        tiny = jnp.finfo(members.dtype).tiny ** 0.25
        self.scale = jnp.maximum(jnp.std(members, axis=0, ddof=1), tiny)

    @property
    def levels(self) -> Float[Array, " n"]:
        n = self.sorted.shape[0]
        return ndtri(jnp.arange(1, n + 1, dtype=self.sorted.dtype) / (n + 1))

    def scores(self, members: Float[Array, "n k"]) -> Float[Array, "n k"]:
        """The normal scores of the members the transform was built from (exact ranks)."""
        ranks = jnp.argsort(jnp.argsort(members, axis=0), axis=0)
        return self.levels[ranks]

    def forward(self, values: Float[Array, "* k"]) -> Float[Array, "* k"]:
        """Normal scores of other values, column by column."""
        return _piecewise(values, self.sorted, self.levels[:, None], 1 / self.scale)

    def inverse(self, scores: Float[Array, "* k"]) -> Float[Array, "* k"]:
        """Values of normal scores, column by column (the inverse of `forward`)."""
        return _piecewise(scores, self.levels[:, None], self.sorted, self.scale)


def _piecewise(x, knots, values, slope):
    """Per column `i`: the piecewise-linear map through (`knots[:, i]`, `values[:, i]`),
    continued with `slope[i]` beyond the end knots."""
    shape = jnp.broadcast_shapes(knots.shape, values.shape)
    knots, values = jnp.broadcast_to(knots, shape), jnp.broadcast_to(values, shape)

    def column(x, k, v, a):
        inside = jnp.interp(x, k, v)
        return jnp.where(
            x < k[0], v[0] + a * (x - k[0]), jnp.where(x > k[-1], v[-1] + a * (x - k[-1]), inside)
        )

    return jax.vmap(column, in_axes=(-1, 1, 1, 0), out_axes=-1)(x, knots, values, slope)


class NormalScoreEnKF(AbstractSerialFilter):
    __doc__ = (
        r"""The normal-score (Gaussian anamorphosis) ensemble Kalman filter (Bertino,
    Evensen & Wackernagel 2003; Zhou et al. 2011), in the joint state–observation form of
    Grooms (2022). Every state variable and every perturbed predicted observation
    $h(x_j) + \varepsilon_j$ ($\varepsilon \sim N(0, R)$, centred) is mapped to normal
    scores by its own `Anamorphosis`; the observed value goes through the anamorphosis
    of its perturbed predictions. The stochastic EnKF then runs in normal-score space in
    the serial framework (see the module; the observation-space rule moves each
    perturbed prediction to the observed value, and the regression spreads it, which is
    the perturbed-observation EnKF), and the state goes back through the inverse
    transforms. Marginally non-Gaussian priors (skewed, bounded, several modes) are
    Gaussianised before the linear update; dependence between variables is still
    linear in the scores.

    **Arguments:**
"""
        + _SETTINGS
        + """
    References: Bertino, Evensen & Wackernagel (2003), "Sequential data assimilation
    techniques in oceanography", Int. Stat. Rev. 71; Zhou, Gómez-Hernández, Hendricks
    Franssen & Li (2011), "An approach to handling non-Gaussianity of parameters and state
    variables in ensemble Kalman filtering", Adv. Water Resour. 34; Grooms (2022), "A
    comparison of nonlinear extensions to the ensemble Kalman filter", Comput. Geosci. 26.
    """
    )

    def increments(self, u, y):
        # `y`: the perturbed observed values in scores, one per member; the perturbed-
        # observation Kalman update with the perturbations' variance as the error's.
        n = u.shape[0]
        var_u = jnp.sum((u - jnp.mean(u)) ** 2) / (n - 1)
        var_y = jnp.sum((y - jnp.mean(y)) ** 2) / (n - 1)
        return var_u / (var_u + var_y) * (y - u)

    def update(self, belief, observation, y, mask=None, *, key):
        forecast = flatten_members(belief.members)
        predicted = jax.vmap(observation.apply)(belief.members)
        perturb_key, rotate_key = jr.split(key)
        noise = observation.noise.sample(key=perturb_key, shape=(forecast.shape[0],))
        perturbed = predicted + (noise - jnp.mean(noise, axis=0, keepdims=True)).astype(y.dtype)
        state, observed = Anamorphosis(forecast), Anamorphosis(perturbed)
        # The predictions and the observation in the scores of the perturbed predictions;
        # the perturbations in scores are what is left.
        predicted_scores = observed.forward(predicted)
        errors = observed.scores(perturbed) - predicted_scores
        y = observed.forward(jnp.where(mask, y, 0)[None] if mask is not None else y[None])
        values = y - (errors - jnp.mean(errors, axis=0, keepdims=True))
        members = jnp.concatenate([state.scores(forecast), predicted_scores], axis=1)
        scores = self.assimilate(members, values, mask, observation, belief)
        analysis = self.rotated(state.inverse(scores[:, : forecast.shape[1]]), rotate_key)
        return unflatten(self.inflation(forecast, analysis), belief)
