r"""The hybrid score filter: the exact analysis of a kernel-mixture score prior held in
ensemble coordinates, with Kalman (Tweedie) likelihood terms per kernel.

The forecast members $x_j$ define ensemble coordinates $x = \bar x + U^T w$, $U = A /
\sqrt{n-1}$ ($A$ the anomalies), in which the Gaussian fit of the forecast is $N(0, I)$
and member $j$ sits at $\omega_j = \sqrt{n-1}\, e_j$. The prior is the shrunk kernel
mixture (West 1993)

$$ p(w) = \frac1n \sum_j N(w;\ a\,\omega_j,\ h^2 I), \qquad a^2 + h^2 = 1, $$

which keeps the forecast mean and covariance for every bandwidth $h \in (0, 1]$: $h = 1$
is the Gaussian (Kalman) prior, small $h$ the members' own non-Gaussian shape. It is the
EnSF's Monte-Carlo score prior, put in coordinates where the forward diffusion's terminal
law $N(0, I)$ is the forecast's own scale.

Each kernel's likelihood is Gaussian in $w$: the observation is linearised about the
kernel (`linearise='ensemble'`: the ensemble regression, exact for linear operators, as
every EnKF; `'kernel'`: the Jacobian at each kernel centre by `jax.linearize`, which keeps
a sign-ambiguous operator such as $x^2$ bimodal). With a Gaussian likelihood per kernel,
the guided reverse diffusion with the exact Tweedie guidance
$\nabla \log \sum_j r_j(w_t)\, N(y;\ \cdot,\ R + H \Sigma_{0|t} H^T)$ samples the posterior
mixture exactly, and that posterior has a closed form: weights
$\pi_j \propto N(\delta_j; 0, I + h^2 B_j^T B_j)$, kernels $N(a\omega_j + h^2 G_j^{-1}
B_j \delta_j,\ h^2 G_j^{-1})$, $G_j = I + h^2 B_j B_j^T$ ($B_j$, $\delta_j$ the whitened
linearised operator and innovation of kernel $j$). The filter draws from it directly,
so no pseudo-time discretisation error enters.

Analysis member $i$ takes a kernel by systematic draws of the posterior weights
(globally), or, in local analyses, the kernel at its own prior rank: kernels are ordered
by their value at the grid point and member $i$ (of rank $r_i$ there) takes the kernel
where the weights' cumulative sum crosses $(r_i + \frac12)/n$ (its own kernel when the
observations say nothing; a one-dimensional optimal transport otherwise). It then takes
that kernel's posterior mean plus kernel noise $h\,G_j^{-1/2} z_i$, $z_i$ centred,
unit-covariance and shared across grid points (see `fresh_noise`). With `radius`, each
grid point has its own analysis with Gaspari–Cohn tapered observation precisions (as the
`LETKF`), so kernel weights are local and do not degenerate as the dimension grows; the
shared $z_i$ and the rank rule keep members coherent in space.

At $h = 1$ all kernels coincide, every $\pi_j$ is equal and the analysis has the ETKF's
mean and covariance exactly (its members, with `fresh_noise=False`).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax import lax

from .._custom_types import Array, Float
from .._ensemble import flatten_members
from ._enkf import innovation_terms, mean_preserving_rotation, unflatten
from ._inflation import AbstractInflation, as_inflation
from ._letkf import local_tapers, taper_root
from ._localisation import GaspariCohn
from .base import AbstractEnsembleFilter


LINEARISE = ("ensemble", "kernel")
# The adaptive bandwidth's candidates: geomspace(lowest, 1, count).
BANDWIDTHS = (0.05, 1.0, 16)


class HybridScoreFilter(AbstractEnsembleFilter):
    r"""The hybrid score filter: the exact posterior of a kernel-mixture score prior in
    ensemble coordinates (see the module), optionally localised.

    **Arguments:**

    - `bandwidth`: the kernel width $h \in (0, 1]$ in units of the forecast spread (1:
      Gaussian, Kalman-exact on linear-Gaussian problems). None (default): chosen in
      each (local) analysis as the smallest of `geomspace(0.05, 1, 16)` whose kernel
      weights keep an effective sample size of at least `ess_target` times the members
      (after the adaptive Gaussian mixture filter, Stordal et al. 2011).
    - `ess_target`: see `bandwidth` (default 0.9). Lower targets let the weights
      concentrate more: Lorenz-63 (3 observations, N=100) is best at 0.5; with many
      informative observations (arctan Lorenz-96) targets below ~0.8 collapse the
      ensemble, as a fixed small bandwidth does.
    - `radius`: localisation radius in grid units (`GaspariCohn`, as the `LETKF`);
      None: one global analysis.
    - `linearise`: 'ensemble' (the ensemble regression of the observation; exact for
      linear operators) or 'kernel' (the Jacobian of the operator at each kernel centre;
      $n$ Jacobian-vector products per kernel, for nonlinear operators).
    - `inflation`: applied to the analysis anomalies (as the other ensemble filters).
    - `fresh_noise`: every member takes fresh kernel noise (default: exact samples of
      the posterior mixture, which re-draws the kernels' part of the spread each
      cycle); if False, a member that keeps its own kernel keeps its own offset from
      the kernel's centre, so the update is the identity where nothing is observed and
      the ETKF's symmetric square root at `bandwidth=1`, but members that stay lose the
      kernel part of their spread (measured on Lorenz-63 at h = 0.2: diverges, where
      fresh noise gives 0.44).
    - `max_local_observations`: with `radius`, each local analysis uses only this many
      observations with the largest taper (as the `LETKF`'s), so a local analysis costs
      $O(n^2 k)$ whatever the number of observations; exact when no point has more
      inside the taper's support.
    - `periodic`: whether distances wrap around the domain (with `radius`).
    - `batch_size`: local analyses computed at once (memory $O(\text{batch}\, n^3)$ with
      `linearise='kernel'`).

    Cost per analysis: $O(n^3)$ ('ensemble') or $O(n^4 + n^3 m)$ ('kernel') per local
    domain (one global domain without `radius`), plus $O(n d)$; memory $O(n d)$.
    """

    bandwidth: Float[Array, ""] | None
    ess_target: Float[Array, ""]
    localisation: GaspariCohn | None
    linearise: str = eqx.field(static=True)
    inflation: AbstractInflation
    fresh_noise: bool = eqx.field(static=True)
    max_local_observations: int | None = eqx.field(static=True)
    periodic: bool = eqx.field(static=True)
    batch_size: int = eqx.field(static=True)

    def __init__(
        self,
        bandwidth=None,
        radius=None,
        *,
        ess_target=0.9,
        linearise: str = "ensemble",
        inflation=None,
        fresh_noise: bool = True,
        max_local_observations: int | None = None,
        periodic: bool = True,
        batch_size: int = 256,
    ):
        h = None if bandwidth is None else jnp.asarray(bandwidth)
        if h is not None and not bool(jnp.all((h > 0) & (h <= 1))):
            raise ValueError(f"`bandwidth` must be in (0, 1] or None; got {bandwidth!r}.")
        target = jnp.asarray(ess_target)
        if not bool(jnp.all((target > 0) & (target <= 1))):
            raise ValueError(f"`ess_target` must be in (0, 1]; got {ess_target!r}.")
        if linearise not in LINEARISE:
            raise ValueError(f"`linearise` must be one of {LINEARISE}; got {linearise!r}.")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer; got {batch_size!r}.")
        self.bandwidth = h
        self.ess_target = target
        self.localisation = None if radius is None else GaspariCohn(radius)
        self.linearise = linearise
        self.inflation = as_inflation(inflation)
        self.fresh_noise = bool(fresh_noise)
        if max_local_observations is not None and (
            int(max_local_observations) != max_local_observations or max_local_observations < 1
        ):
            raise ValueError(
                "`max_local_observations` must be a positive integer or None; got "
                f"{max_local_observations!r}."
            )
        self.max_local_observations = max_local_observations
        self.periodic = bool(periodic)
        self.batch_size = int(batch_size)

    def update(self, belief, observation, y, mask=None, *, key):
        forecast = flatten_members(belief.members)
        n, d = forecast.shape
        dtype = forecast.dtype
        terms = innovation_terms(belief, observation, y, mask)
        mean = terms.mean
        root = jnp.sqrt(jnp.asarray(n - 1, dtype))
        u = terms.anomalies / root
        if self.linearise == "ensemble":  # the ensemble regression, shared by all kernels
            b = terms.obs_anomalies / root
            delta = terms.innovation[None] - terms.obs_anomalies  # L^{-1}(y - h(x_j))
        else:
            delta, b = _linearised(observation, belief.state_shape, y, mask, forecast, u)
        own = b if b.ndim == 2 else jnp.diagonal(b, axis1=0, axis2=1).T  # B_j's row j
        # Noise for members that move to another kernel: centred, with unit sample
        # covariance in ensemble space.
        rotate_key, level_key = jr.split(key)
        z = mean_preserving_rotation(n, key=rotate_key, dtype=dtype) * root
        z = z - jnp.mean(z, axis=0, keepdims=True)
        grid = jnp.geomspace(*BANDWIDTHS).astype(dtype)

        def analysis(r, order, levels, smooth, columns=None):
            """Member weights of one analysis whose observations (those of `columns`, if
            given) are tapered by `r`; `smooth`: the coupling of `_transport`."""
            pick = (lambda v: v) if columns is None else (lambda v: v[..., columns])
            delta_r, own_r = pick(delta) * r[None], root * pick(own) * r[None]
            b_r = pick(b) * r.reshape((1,) * (b.ndim - 1) + (-1,))
            if self.bandwidth is None:
                target = self.ess_target.astype(dtype)
                h = _adaptive_bandwidth(delta_r, b_r, own_r, grid, target)
            else:
                h = self.bandwidth.astype(dtype)
            args = (order, levels, z, self.fresh_noise, smooth)
            return _mixture_weights(_shrunk(delta_r, own_r, h), b_r, h, *args)

        if self.localisation is None:
            # One analysis: kernels in member order, member i at level (i + u) / n
            # (systematic draws; u = 1/2 without fresh noise, so members keep their
            # own kernels when the weights are equal).
            order = jnp.arange(n)
            offset = jr.uniform(level_key, (), dtype) if self.fresh_noise else 0.5
            levels = (order.astype(dtype) + offset) / n
            w = analysis(jnp.ones(delta.shape[-1], dtype), order, levels, False)
            increments = w @ u
        else:
            points, taper_at = local_tapers(
                self.localisation, observation, belief.state_shape, self.periodic, dtype
            )

            k = self.max_local_observations
            k = None if k is None else min(k, delta.shape[-1])

            def local(args):
                point, column = args
                order = jnp.argsort(column)  # kernels by value; members keep their rank
                levels = (jnp.argsort(order).astype(dtype) + 0.5) / n
                taper, nearest = taper_at(point), None
                if k is not None:
                    taper, nearest = lax.top_k(taper, k)
                return analysis(taper_root(taper), order, levels, True, nearest) @ column

            batch = min(self.batch_size, d)
            increments = lax.map(local, (points, u.T), batch_size=batch).T
        return unflatten(self.inflation(forecast, mean[None] + increments), belief)


def _linearised(observation, state_shape, y, mask, members, u):
    """Whitened innovations `delta` (n, m) of each member and the operator's Jacobian at
    each member in the ensemble directions, whitened, `B` (n, n, m)."""
    observe = lambda x: observation.apply(x.reshape(state_shape))

    def linearise(member):
        predicted, tangent = jax.linearize(observe, member)
        return predicted, jax.vmap(tangent)(u)

    predicted, jacobians = jax.vmap(linearise)(members)
    whiten = lambda v: observation.noise.whiten(v, mask)
    flat = whiten(jacobians.reshape(-1, jacobians.shape[-1]))  # whiten takes (k, m)
    return whiten(y[None] - predicted), flat.reshape(jacobians.shape)


def _kernel_posterior(delta, b, h):
    r"""Each kernel's posterior in ensemble space, from the thin SVD $B_j = P_j S_j Q_j^T$:
    $G_j = I + h^2 B_j B_j^T$ has eigenvalues `lam` $= 1 + h^2 s^2$ on the columns of
    $P_j$ (`basis`, `(n, k)`; shared by the kernels when `b` is `(n, m)`, else stacked)
    and 1 elsewhere; `proj` $= P_j^T B_j \delta_j$ `(n, k)`; and the log evidence
    $\log N(\delta_j; 0, I + h^2 B_j^T B_j)$ up to a constant (Woodbury and the
    determinant lemma). Cost $O(n m \min(n, m))$ per distinct $B_j$."""
    basis, sv, right = jnp.linalg.svd(b, full_matrices=False)
    if b.ndim == 3:
        proj = sv * jnp.einsum("jkm,jm->jk", right, delta)
    else:
        sv = sv[None]
        proj = sv * (delta @ right.T)
    lam = 1 + h**2 * sv**2
    quad = jnp.sum(delta**2, axis=-1) - h**2 * jnp.sum(proj**2 / lam, axis=-1)
    return basis, lam, proj, -0.5 * (quad + jnp.sum(jnp.log(lam), axis=-1))


def _shrunk(delta, own, h):
    r"""The innovations of the shrunk kernels (centres $a x_j + (1 - a)\bar x$), to first
    order about the members' `delta`; `own` is $\sqrt{n-1}$ times member $j$'s row of
    $B_j$ (exact for the ensemble regression)."""
    return delta + (1 - jnp.sqrt(1 - h**2)) * own


def _adaptive_bandwidth(delta, b, own, grid, ess_target):
    """The smallest bandwidth of `grid` (ascending, ending at 1) whose kernel weights keep
    an effective sample size of at least `ess_target` times the kernels."""
    n = delta.shape[0]

    def ess(h):
        weights = jax.nn.softmax(_kernel_posterior(_shrunk(delta, own, h), b, h)[-1])
        return 1 / jnp.sum(weights**2)

    ok = jax.vmap(ess)(grid) >= ess_target * n
    return grid[jnp.argmax(ok.at[-1].set(True))]


def _transport(weights, order, levels, smooth):
    """The coupling `T` (n members, n kernels), rows summing to 1: kernels are laid out
    on [0, 1] in `order` with lengths `weights`; member `i` takes the kernel at
    `levels[i]` (`smooth=False`: a draw) or, if `smooth`, the kernels overlapping its
    interval [levels[i] - 1/(2n), levels[i] + 1/(2n)] in proportion (the monotone, or
    north-west corner, coupling: continuous in the weights, so neighbouring local
    analyses give neighbouring members)."""
    n = weights.shape[0]
    upper = jnp.cumsum(weights[order])
    if not smooth:
        chosen = order[jnp.clip(jnp.searchsorted(upper, levels), 0, n - 1)]
        return jax.nn.one_hot(chosen, n, dtype=weights.dtype)
    lower = upper - weights[order]
    half = 0.5 / n
    start, end = levels[:, None] - half, levels[:, None] + half
    overlap = jnp.maximum(jnp.minimum(end, upper[None]) - jnp.maximum(start, lower[None]), 0)
    return jnp.zeros((n, n), weights.dtype).at[:, order].set(n * overlap)


def _mixture_weights(delta, b, h, order, levels, z, fresh, smooth):
    """Ensemble weights `w` (n, n) of the analysis members: member `i` takes the kernels
    of row `i` of `_transport`, their posterior means and its noise through the kernels'
    square roots (`z[i]`, or, unless `fresh`, its own offset from its own kernel in
    proportion to the weight it keeps there)."""
    n = delta.shape[0]
    a = jnp.sqrt(1 - h**2)  # the kernels' shrinkage
    basis, lam, proj, log_pi = _kernel_posterior(delta, b, h)
    coupling = _transport(jax.nn.softmax(log_pi), order, levels, smooth)
    eye = jnp.eye(n, dtype=delta.dtype)
    root = jnp.sqrt(jnp.asarray(n - 1, delta.dtype))
    # Kernel j's posterior: a omega_j + h^2 G_j^{-1} B_j delta_j + h G_j^{-1/2} noise,
    # computed in the span of P_j. Unless `fresh`, a member keeps its own offset from
    # its own kernel's centre, ((1 - a) / h) omega_i, in the share it keeps there (the
    # update is the identity where nothing is observed, the ETKF at h = 1).
    if not fresh:
        keep = jnp.diagonal(coupling)[:, None]
        z = keep * (1 - a) / h * root * eye + (1 - keep) * z
    shrink = lam**-0.5 - 1
    if b.ndim == 3:
        means = jnp.einsum("jkl,jl->jk", basis, proj / lam)
        coords = jnp.einsum("jlk,il->ijk", basis, z) * shrink[None]
        noise = z + jnp.einsum("ij,jlk,ijk->il", coupling, basis, coords)
    else:
        means = (proj / lam) @ basis.T
        noise = z + ((z @ basis) * shrink) @ basis.T
    return coupling @ (a * root * eye + h**2 * means) + h * noise
