r"""The iterative ensemble Kalman filter/smoother with a data-assimilation window of one
cycle (iEnKS with lag 1, the IEnKF of Sakov, Oliver & Bertino 2012; Bocquet & Sakov
2014), square-root form, by Gauss–Newton iterations or multiple data assimilation.

The window runs from the previous analysis time $t_0$ to the observation time $t_1$.
The control vector $w$ moves the ensemble at $t_0$, $E = \bar x_0 + (w + T) X_0$
($X_0$ the anomalies at $t_0$); each iteration runs the members through the model to
$t_1$, observes them, and takes a Gauss–Newton step on the cost
$\tfrac12 (n-1)\|w\|^2 + \tfrac12 \|y - h(M(E))\|^2_{R^{-1}}$, with the observed
anomalies "de-conditioned" by the current transform. The smoothed ensemble at $t_0$ is
$\bar x_0 + (w + T) X_0$; run to $t_1$ it is the analysis. With one iteration and a
linear model it is the ETKF.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from .._custom_types import Array, Float
from .._ensemble import AbstractEnsembleBelief, Ensemble, flatten_members
from ..dynamics import AbstractDynamics
from ._enkf import mean_preserving_rotation
from ._inflation import AbstractInflation, as_inflation
from .base import AbstractFilter, check_ensemble, move_members


class WindowEnsemble(AbstractEnsembleBelief):
    """The iEnKS forecast: the members at the observation time (`ensemble`, what
    diagnostics read) and what the update iterates on: the members at the window's
    start, its times, the model and the forecast key."""

    ensemble: Ensemble
    start: Ensemble
    t0: Float[Array, ""]
    t1: Float[Array, ""]
    dynamics: AbstractDynamics
    key: Array


def _transform(y0, za, power):
    r"""$V (S^2 + z_a)^{-p} V^T$ over all `n` directions, from the thin SVD of `y0` (the
    directions outside its span have eigenvalue $z_a^{-p}$)."""
    v, s, _ = jnp.linalg.svd(y0, full_matrices=False)
    n = y0.shape[0]
    diag = (s**2 + za) ** -power - za**-power
    return (v * diag[None]) @ v.T + za**-power * jnp.eye(n, dtype=y0.dtype)


class IEnKS(AbstractFilter):
    r"""The iterative ensemble Kalman smoother with a window of one cycle (the iterative
    EnKF; DAPPER's `iEnKS('Sqrt', Lag=1)`), see the module.

    **Arguments:**

    - `iterations`: Gauss–Newton iterations (or MDA steps) per cycle (default 10,
      DAPPER's `nIter`; always all of them, DAPPER's `wtol=0`). Each costs one ensemble
      run of the model over the window, plus one more for the analysis.
    - `mda`: multiple data assimilation (Emerick & Reynolds 2012) instead of
      Gauss–Newton: `iterations` partial updates with the observation error covariance
      inflated by `iterations` (annealing; exact after all steps for linear models).
    - `inflation`: applied to the smoothed ensemble at the window's start, before it is
      run to the observation time (as DAPPER's `infl`).
    - `rotate`: a random mean-preserving rotation there (DAPPER's `rot=True`).

    Assumes a deterministic model: every iteration runs the members with the forecast's
    key (common random numbers), which for a stochastic model conditions on that noise.
    The smoothers of longer windows (lag L > 1) are not built yet.

    References: Sakov, Oliver & Bertino (2012), "An iterative EnKF for strongly nonlinear
    systems", MWR 140; Bocquet & Sakov (2014), "An iterative ensemble Kalman smoother",
    QJRMS 140.
    """

    iterations: int = eqx.field(static=True)
    mda: bool = eqx.field(static=True)
    inflation: AbstractInflation
    rotate: bool = eqx.field(static=True)

    def __init__(self, iterations: int = 10, *, mda=False, inflation=None, rotate=False):
        if int(iterations) != iterations or iterations < 1:
            raise ValueError(f"`iterations` must be a positive integer; got {iterations!r}.")
        self.iterations = int(iterations)
        self.mda = bool(mda)
        self.inflation = as_inflation(inflation)
        self.rotate = bool(rotate)

    def init(self, ensemble: Ensemble, *, key) -> Ensemble:
        del key
        return check_ensemble(ensemble)

    def forecast(self, belief, dynamics, t0, t1, *, key):
        dtype = belief.members.dtype
        moved = move_members(belief, dynamics, t0, t1, key=key)
        times = jnp.asarray(t0, dtype), jnp.asarray(t1, dtype)
        return WindowEnsemble(moved, belief, *times, dynamics, key)

    def update(self, belief, observation, y, mask=None, *, key):
        if not isinstance(belief, WindowEnsemble):
            raise TypeError(
                "IEnKS.update needs the belief returned by its own `forecast` (a "
                f"WindowEnsemble); got {type(belief).__name__}."
            )
        start = belief.start
        e0 = flatten_members(start.members)
        n = e0.shape[0]
        dtype = e0.dtype
        x0 = jnp.mean(e0, axis=0)
        a0 = e0 - x0[None]
        n1 = jnp.asarray(n - 1, dtype)
        za = n1 * self.iterations if self.mda else n1
        eye = jnp.eye(n, dtype=dtype)

        def advance(members):
            """Flat members at t0, run to t1 (an `Ensemble`)."""
            ensemble = Ensemble(members.reshape(start.members.shape), start.log_weights)
            return move_members(ensemble, belief.dynamics, belief.t0, belief.t1, key=belief.key)

        def iterate(carry, _):
            w, t, t_inv = carry
            observed = jax.vmap(observation.apply)(advance(x0[None] + (w[None] + t) @ a0).members)
            mean = jnp.mean(observed, axis=0)
            stacked = jnp.concatenate([observed - mean[None], (y - mean)[None]])
            whitened = observation.noise.whiten(stacked, mask)
            anomalies, innovation = whitened[:-1], whitened[-1]
            if self.mda:
                # Annealing: R inflated by `iterations`, the anomalies not de-conditioned.
                cow = _transform(anomalies, za, 1.0) @ t
                dw = cow.T @ (anomalies @ innovation)
                t = jnp.sqrt(za) * _transform(anomalies, za, 0.5) @ t
            else:
                y0 = t_inv @ anomalies  # de-conditioned by the current transform
                dw = _transform(y0, za, 1.0) @ (y0 @ innovation - za * w)
                t = jnp.sqrt(n1) * _transform(y0, za, 0.5)
                t_inv = _transform(y0, za, -0.5) / jnp.sqrt(n1)
            return (w + dw, t, t_inv), None

        init = (jnp.zeros(n, dtype), eye, eye)
        (w, t, _), _ = lax.scan(iterate, init, None, length=self.iterations)
        if self.rotate:
            t = mean_preserving_rotation(n, key=key, dtype=dtype) @ t
        smoothed = x0[None] + (w[None] + t) @ a0
        return advance(self.inflation(e0, smoothed))
