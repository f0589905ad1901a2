r"""The serial ensemble square-root filter (Whitaker & Hamill 2002) with covariance
localisation.

Observations are assimilated one at a time (after whitening, so their errors are
independent with unit variance). The state anomalies and the observed anomalies of the
observations still to come are updated together (the observations are part of an
augmented state, so nonlinear operators are handled by the ensemble regression, as in
every EnKF). For observation $k$ with observed anomalies $s$ (a column, $n$ members) and
variance $\sigma^2 = s^T s / (n-1)$, every column $z$ of the augmented anomalies gets the
gain $K_z = \rho_{zk}\, z^T s / ((n-1)(\sigma^2 + 1))$ ($\rho$ the Gaspari–Cohn taper
between the column's location and the observation's: localisation of $B$, not of $R$
as in the `LETKF`); the mean moves by $K \delta_k$ and the anomalies by
$-\alpha K s^T$, $\alpha = 1 / (1 + \sqrt{1 / (\sigma^2 + 1)})$. Without localisation it
is Kalman-exact on linear-Gaussian problems (serial and batch processing coincide).
"""

import math

import equinox as eqx
import jax.numpy as jnp
from jax import lax

from .._covariance import DenseCovariance
from .._ensemble import flatten_members
from ..observations.base import grid_coordinates
from ._enkf import innovation_terms, mean_preserving_rotation, unflatten
from ._inflation import AbstractInflation, as_inflation
from ._localisation import GaspariCohn, periodic_distance
from .base import AbstractEnsembleFilter


class SerialEnSRF(AbstractEnsembleFilter):
    r"""The serial ensemble square-root filter (Whitaker & Hamill 2002), see the module.

    **Arguments:**

    - `inflation`: as for `ETKF`.
    - `radius`: localisation radius in grid units (`GaspariCohn`, DAPPER's convention);
      None (default): no localisation. Localising needs observation locations and an
      observation noise without correlations between values (whitening a dense `R`
      mixes the locations).
    - `rotate`: a random mean-preserving rotation of the analysis anomalies (DAPPER's
      `rot=True`).
    - `periodic`: whether distances wrap around the domain.

    Cost: $O(m (d + m) n)$ per analysis, memory $O(n (d + m))$, in `m` sequential steps.

    Reference: Whitaker & Hamill (2002), "Ensemble data assimilation without perturbed
    observations", MWR 130.
    """

    inflation: AbstractInflation
    localisation: GaspariCohn | None
    rotate: bool = eqx.field(static=True)
    periodic: bool = eqx.field(static=True)

    def __init__(self, inflation=None, radius=None, *, rotate=False, periodic=True):
        self.inflation = as_inflation(inflation)
        self.localisation = None if radius is None else GaspariCohn(radius)
        self.rotate = bool(rotate)
        self.periodic = bool(periodic)

    def update(self, belief, observation, y, mask=None, *, key):
        terms = innovation_terms(belief, observation, y, mask)
        forecast = flatten_members(belief.members)
        n, d = forecast.shape
        m = terms.innovation.shape[0]
        dtype = forecast.dtype
        observed = jnp.ones(m, bool) if mask is None else mask
        # The augmented anomalies and means: state columns, then observed columns.
        anomalies = jnp.concatenate([terms.anomalies, terms.obs_anomalies], axis=1)
        means = jnp.concatenate([terms.mean, jnp.zeros(m, dtype)])  # obs: innovation offset
        taper = self._tapers(observation, belief.state_shape, d, m, dtype)
        n1 = jnp.asarray(n - 1, dtype)

        def assimilate_one(carry, k):
            means, anomalies = carry
            s = anomalies[:, d + k]
            total = s @ s / n1 + 1
            gain = taper(k) * (anomalies.T @ s) / (n1 * total)
            gain = jnp.where(observed[k], gain, 0)
            innovation = terms.innovation[k] - means[d + k]
            alpha = 1 / (1 + jnp.sqrt(1 / total))
            return (means + gain * innovation, anomalies - alpha * jnp.outer(s, gain)), None

        (means, anomalies), _ = lax.scan(assimilate_one, (means, anomalies), jnp.arange(m))
        analysis_anomalies = anomalies[:, :d]
        if self.rotate:
            rotation = mean_preserving_rotation(n, key=key, dtype=dtype)
            analysis_anomalies = rotation @ analysis_anomalies
        analysis = means[None, :d] + analysis_anomalies
        return unflatten(self.inflation(forecast, analysis), belief)

    def _tapers(self, observation, state_shape, d, m, dtype):
        """The function giving the taper between observation `k` and every augmented
        column (ones without localisation)."""
        if self.localisation is None:
            return lambda k: jnp.ones(d + m, dtype)
        locations = observation.locations()
        if locations is None or locations.shape[-1] != len(state_shape):
            raise TypeError(
                "SerialEnSRF with a `radius` needs observation locations with one coordinate "
                f"per state axis; {type(observation).__name__} has none or a different number."
            )
        if isinstance(observation.noise, DenseCovariance):
            raise TypeError(
                "SerialEnSRF with a `radius` needs uncorrelated observation errors (a scalar "
                "or diagonal noise); whitening a dense R mixes the observations' locations."
            )
        grid = grid_coordinates(jnp.arange(math.prod(state_shape)), state_shape).astype(dtype)
        points = jnp.concatenate([grid, locations.astype(dtype)])
        domain = state_shape if self.periodic else None

        def taper(k):
            return self.localisation(periodic_distance(points, points[d + k][None], domain))

        return taper
