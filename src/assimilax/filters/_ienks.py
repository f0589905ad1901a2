r"""The iterative ensemble Kalman smoother (iEnKS; Bocquet & Sakov 2014), square-root
form, by Gauss–Newton iterations or multiple data assimilation, with a data-assimilation
window of `lag` cycles shifted by one cycle (DAPPER's `iEnKS('Sqrt', Lag=L)`; lag 1 is
the iterative EnKF of Sakov, Oliver & Bertino 2012).

The window runs from the observation time $t_{k-L}$ to the new one $t_k$. The control
vector $w$ moves the ensemble at $t_{k-L}$, $E = \bar x_0 + (w + T) X_0$ ($X_0$ its
anomalies); each iteration runs the members through the model over the $L$ cycles to
$t_k$, observes them, and takes a Gauss–Newton step on the cost
$\tfrac12 (n-1)\|w\|^2 + \tfrac12 \|y_k - h(M(E))\|^2_{R^{-1}}$, with the observed
anomalies "de-conditioned" by the current transform. Each observation is assimilated
once (single data assimilation, as DAPPER): the observations inside the window are
already in the prior at its start. The smoothed ensemble at $t_{k-L}$, run through the
window, gives the smoothed members at $t_{k-L+1}, \dots$ and the analysis at $t_k$. With
one iteration and a linear model it is the ETKF (and its smoothed means the EnKS's).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax import lax

from .._custom_types import Array, Float
from .._ensemble import AbstractEnsembleBelief, Ensemble, flatten_members
from ..dynamics import AbstractDynamics
from ._enkf import mean_preserving_rotation
from ._inflation import AbstractInflation, as_inflation
from ._smoother import AbstractLaggedEnsemble
from .base import AbstractFilter, check_ensemble, move_members


class WindowAnalysis(AbstractLaggedEnsemble):
    """The iEnKS analysis: the members at the observation time (`ensemble`), the smoothed
    members at the previous `lag` observation times, newest first (`lagged`), the
    window's times from its next start (`times`, `(lag,)`; NaN before the first cycle)
    and the forecast keys of its cycles after that (`keys`, `(lag - 1,)`)."""

    ensemble: Ensemble
    lagged: Float[Array, "lag n *state"]
    times: Float[Array, " lag"]
    keys: Array


class WindowEnsemble(AbstractEnsembleBelief):
    """The iEnKS forecast: the members at the new observation time (`ensemble`, what
    diagnostics read) and what the update iterates on: the members at the window's
    start, its `lag + 1` times, the forecast keys of its `lag` cycles and the model."""

    ensemble: Ensemble
    start: Ensemble
    times: Float[Array, " window"]
    keys: Array
    dynamics: AbstractDynamics


def _transform(y0, za, power):
    r"""$V (S^2 + z_a)^{-p} V^T$ over all `n` directions, from the thin SVD of `y0` (the
    directions outside its span have eigenvalue $z_a^{-p}$)."""
    v, s, _ = jnp.linalg.svd(y0, full_matrices=False)
    n = y0.shape[0]
    diag = (s**2 + za) ** -power - za**-power
    return (v * diag[None]) @ v.T + za**-power * jnp.eye(n, dtype=y0.dtype)


class IEnKS(AbstractFilter):
    r"""The iterative ensemble Kalman smoother, see the module.

    **Arguments:**

    - `iterations`: Gauss–Newton iterations (or MDA steps) per cycle (default 10,
      DAPPER's `nIter`; always all of them, DAPPER's `wtol=0`). Each costs one ensemble
      run of the model over the window, plus one more for the analysis.
    - `lag`: the window's length in cycles (DAPPER's `Lag`; default 1, the iterative
      EnKF). `assimilate` reports the smoothed estimate `lag` cycles back as
      `Solution.smoothed_mean`/`smoothed_std`. The first windows start at the initial
      time (zero-length cycles there).
    - `mda`: multiple data assimilation (Emerick & Reynolds 2012) instead of
      Gauss–Newton: `iterations` partial updates with the observation error covariance
      inflated by `iterations` (annealing; exact after all steps for linear models).
    - `inflation`: applied to the smoothed ensemble at the window's start, before it is
      run through the window (as DAPPER's `infl`).
    - `rotate`: a random mean-preserving rotation there (DAPPER's `rot=True`).

    Assumes a deterministic model: every iteration runs the members with the forecast
    keys of the window's cycles (common random numbers), which for a stochastic model
    conditions on that noise.

    References: Sakov, Oliver & Bertino (2012), "An iterative EnKF for strongly nonlinear
    systems", MWR 140; Bocquet & Sakov (2014), "An iterative ensemble Kalman smoother",
    QJRMS 140.
    """

    iterations: int = eqx.field(static=True)
    lag: int = eqx.field(static=True)
    mda: bool = eqx.field(static=True)
    inflation: AbstractInflation
    rotate: bool = eqx.field(static=True)

    def __init__(
        self, iterations: int = 10, *, lag: int = 1, mda=False, inflation=None, rotate=False
    ):
        for name, value in (("iterations", iterations), ("lag", lag)):
            if int(value) != value or value < 1:
                raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
        self.iterations = int(iterations)
        self.lag = int(lag)
        self.mda = bool(mda)
        self.inflation = as_inflation(inflation)
        self.rotate = bool(rotate)

    def init(self, ensemble: Ensemble, *, key) -> WindowAnalysis:
        ensemble = check_ensemble(ensemble)
        dtype = ensemble.members.dtype
        lagged = jnp.broadcast_to(ensemble.members, (self.lag, *ensemble.members.shape))
        times = jnp.full(self.lag, jnp.nan, dtype)
        return WindowAnalysis(ensemble, lagged, times, jr.split(key, self.lag)[1:])

    def forecast(self, belief, dynamics, t0, t1, *, key):
        if not isinstance(belief, WindowAnalysis):
            raise TypeError(
                "IEnKS.forecast needs the belief of its own `init` or `update` (a "
                f"WindowAnalysis); got {type(belief).__name__}."
            )
        dtype = belief.members.dtype
        moved = move_members(belief.ensemble, dynamics, t0, t1, key=key)
        # Before the first cycle the window's times are unknown: they start at t0.
        times = jnp.where(jnp.isnan(belief.times), jnp.asarray(t0, dtype), belief.times)
        times = jnp.concatenate([times, jnp.asarray(t1, dtype)[None]])
        keys = jnp.concatenate([belief.keys, key[None]])
        history = jnp.concatenate([belief.members[None], belief.lagged])
        start = Ensemble(history[self.lag - 1], belief.log_weights)
        return WindowEnsemble(moved, start, times, keys, dynamics)

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

        def run(members):
            """Flat members at the window's start, run through its cycles: the members
            at each later time of the window, `(lag, n, *state)`."""

            def cycle(members, inputs):
                t0, t1, key = inputs
                ensemble = Ensemble(members, start.log_weights)
                moved = move_members(ensemble, belief.dynamics, t0, t1, key=key).members
                return moved, moved

            segments = (belief.times[:-1], belief.times[1:], belief.keys)
            _, path = lax.scan(cycle, members.reshape(start.members.shape), segments)
            return path

        def iterate(carry, _):
            w, t, t_inv = carry
            final = run(x0[None] + (w[None] + t) @ a0)[-1]
            observed = jax.vmap(observation.apply)(final)
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
        smoothed = self.inflation(e0, x0[None] + (w[None] + t) @ a0)
        smoothed = smoothed.reshape(start.members.shape)
        path = run(smoothed)
        lagged = jnp.concatenate([path[:-1][::-1], smoothed[None]])
        analysis = Ensemble(path[-1], start.log_weights)
        return WindowAnalysis(analysis, lagged, belief.times[1:], belief.keys[1:])
