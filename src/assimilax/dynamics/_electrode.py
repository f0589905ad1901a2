r"""A porous battery electrode with random porosity (the system of Vandecasteele,
"Score-based generative models for uncertain PDE solutions"; details in
`shared/ORIGIN_SYSTEMS.md` §2, read from the original code, which wins where it and the
write-up differ).

On $x \in [0, L]$, cell-centred finite volumes with harmonic-mean face coefficients:

- potential: $-(k_\mathrm{eff}\,\phi')' = a_s k_{rn} (\phi_s - \phi - U_0)$,
  $\phi'(0) = 0$, $k_\mathrm{eff}\,\phi'(L) = F_\mathrm{right}$ (the code's sign: it adds
  $-\Delta x F_\mathrm{right}$ to the last row; the write-up has $-k_\mathrm{eff}\phi'(L)$),
  then $\phi \leftarrow \phi - \phi_0$ (first cell);
- electrolyte concentration: $\varepsilon c_t = (D_\mathrm{eff} c')' + \frac{1 -
  t_+}{F} a_s j$, $j = k_{rn} (\phi_s - \phi - U_0)$ with the shifted $\phi$,
  $c'(0) = 0$ and $c = c_\mathrm{right}$ imposed on the last cell's value;
- $k_\mathrm{eff} = \kappa_0 \varepsilon^{1.5}$, $D_\mathrm{eff} = D_0 \varepsilon^{1.5}$,
  $a_s = a_0 (1 - \varepsilon)$, $\phi_s(x) = -1000\,x$.

$\phi$ does not depend on $c$; `electrode_solution` gives the steady state by one
linear solve (what the write-up means) or the original recipe's implicit-Euler state at
`time` (its data: $t = 100$ s, about 40 % of the way to steady). `ElectrodeDynamics`
is the transient concentration as `dynamics` for the filters.

Solve in float64 (`jax.config.update("jax_enable_x64", True)`): the potential's system is
diffusion with a reaction $10^{-7}$ times weaker, nearly singular, and float32 loses
$\phi$ entirely (errors of 2 mV against a spread of 0.3 mV); `electrode_dataset`
refuses to run without float64.

Porosity: $\varepsilon = 0.2 + 0.3\,\mathrm{sigmoid}(g)$, $g$ a Gaussian process on the
cell centres with kernel $\exp(-\Delta x^2 / 2\ell^2) + 10^{-4}\delta$
(`porosity_fields`).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax import lax

from .._custom_types import Array, Float, PRNGKeyArray
from .base import AbstractDynamics, substeps


class ElectrodeParameters(eqx.Module):
    """The physical constants of the electrode (SI units), the original's values by
    default; `cells` finite volumes."""

    length: float = 1e-4
    kappa0: float = 1.0
    diffusivity0: float = 3e-11
    bruggeman: float = 1.5
    surface_area: float = 5e5
    rate: float = 0.1
    transference: float = 0.4
    faraday: float = 96485.33212
    c_right: float = 1000.0
    solid_slope: float = -1000.0
    cells: int = eqx.field(static=True, default=100)

    @property
    def dx(self) -> float:
        return self.length / self.cells

    def centres(self) -> Float[Array, " cells"]:
        return (jnp.arange(self.cells, dtype=float) + 0.5) * self.dx


def _faces(coefficient):
    """Harmonic means of cell coefficients on the interior faces, `(cells - 1,)`."""
    a, b = coefficient[:-1], coefficient[1:]
    return 2 * a * b / (a + b)


def diffusion_operator(coefficient, *, dirichlet_last=False):
    r"""The tridiagonal `(lower, diagonal, upper)` of $-(a u')'$ over cell-centred
    finite volumes (times $\Delta x^2$; harmonic faces), with no flux through the left
    face and the right face's flux left to the right-hand side; with `dirichlet_last`
    the last row is the identity (the value of the last cell is imposed)."""
    faces = _faces(coefficient)
    zero = jnp.zeros(1, coefficient.dtype)
    left = jnp.concatenate([zero, faces])  # face i - 1/2 of cell i
    right = jnp.concatenate([faces, zero])  # face i + 1/2 of cell i
    lower, diagonal, upper = -left, left + right, -right
    if dirichlet_last:
        lower = lower.at[-1].set(0.0)
        diagonal = diagonal.at[-1].set(1.0)
    return lower, diagonal, upper


def tridiagonal_solve(lower, diagonal, upper, rhs):
    """Solve the tridiagonal system (`lower[0]` and `upper[-1]` ignored)."""
    lower = lower.at[0].set(0.0)
    upper = upper.at[-1].set(0.0)
    return lax.linalg.tridiagonal_solve(lower, diagonal, upper, rhs[:, None])[:, 0]


def _coefficients(eps, params):
    k_eff = params.kappa0 * eps**params.bruggeman
    d_eff = params.diffusivity0 * eps**params.bruggeman
    a_s = params.surface_area * (1 - eps)
    return k_eff, d_eff, a_s


def electrode_potential(eps, u0, f_right, params: ElectrodeParameters, *, shift=True):
    """The electrolyte potential `(cells,)`, shifted to 0 in the first cell (unless
    `shift=False`: the solution of the equation as written)."""
    k_eff, _, a_s = _coefficients(eps, params)
    dx = params.dx
    lower, diagonal, upper = diffusion_operator(k_eff)
    reaction = a_s * params.rate * dx**2
    solid = params.solid_slope * params.centres().astype(eps.dtype)
    rhs = reaction * (solid - u0)
    rhs = rhs.at[-1].add(dx * f_right)
    phi = tridiagonal_solve(lower, diagonal + reaction, upper, rhs)
    return phi - phi[0] if shift else phi


def electrode_source(eps, phi, u0, params: ElectrodeParameters):
    r"""The concentration source $\frac{1 - t_+}{F} a_s k_{rn} (\phi_s - \phi - U_0)$."""
    _, _, a_s = _coefficients(eps, params)
    solid = params.solid_slope * params.centres().astype(eps.dtype)
    j = params.rate * (solid - phi - u0)
    return (1 - params.transference) / params.faraday * a_s * j


def steady_concentration(eps, source, params: ElectrodeParameters):
    """The steady concentration: one linear solve of the same discretisation (for the
    deviation from `c_right`, which keeps float32 accurate)."""
    _, d_eff, _ = _coefficients(eps, params)
    lower, diagonal, upper = diffusion_operator(d_eff, dirichlet_last=True)
    rhs = (source * params.dx**2).at[-1].set(0.0)
    return params.c_right + tridiagonal_solve(lower, diagonal, upper, rhs)


def implicit_euler(c, eps, source, params: ElectrodeParameters, dt, steps):
    """`steps` implicit-Euler steps of size `dt` of the concentration (explicit source,
    as the original; `steps` may be traced)."""
    _, d_eff, _ = _coefficients(eps, params)
    lower, diagonal, upper = diffusion_operator(d_eff, dirichlet_last=True)
    scale = params.dx**2 / dt
    mass = jnp.concatenate([eps[:-1] * scale, jnp.zeros(1, eps.dtype)])

    def step(_, dev):  # the deviation from c_right (float32 keeps its digits)
        rhs = (mass * dev + source * params.dx**2).at[-1].set(0.0)
        return tridiagonal_solve(lower, diagonal + mass, upper, rhs)

    return params.c_right + lax.fori_loop(0, steps, step, c - params.c_right)


def electrode_solution(
    eps: Float[Array, " cells"],
    u0,
    f_right,
    params: ElectrodeParameters | None = None,
    *,
    time: float | None = None,
    dt: float = 0.1,
) -> Float[Array, "2 cells"]:
    """`[c, phi]` for one porosity field and operating point `(u0, f_right)`: the steady
    state (`time=None`), or the original recipe's state at `time` seconds (implicit
    Euler with step `dt` from the uniform `c_right`). Vmap it over fields and
    conditions."""
    params = ElectrodeParameters() if params is None else params
    eps = jnp.asarray(eps)
    if eps.shape != (params.cells,):
        raise ValueError(f"`eps` must have shape ({params.cells},); got {eps.shape}.")
    phi = electrode_potential(eps, u0, f_right, params)
    source = electrode_source(eps, phi, u0, params)
    if time is None:
        c = steady_concentration(eps, source, params)
    else:
        c0 = jnp.full(params.cells, params.c_right, eps.dtype)
        c = implicit_euler(c0, eps, source, params, dt, int(round(time / dt)))
    return jnp.stack([c, phi])


def gp_covariance(length_scale, params: ElectrodeParameters | None = None, nugget=1e-4):
    """The squared-exponential covariance of the porosity's GP on the cell centres."""
    params = ElectrodeParameters() if params is None else params
    x = params.centres()
    dist = x[:, None] - x[None, :]
    return jnp.exp(-(dist**2) / (2 * length_scale**2)) + nugget * jnp.eye(params.cells)


def porosity_fields(
    key: PRNGKeyArray, length_scale, num: int, params: ElectrodeParameters | None = None
) -> Float[Array, "num cells"]:
    """`num` porosity fields $0.2 + 0.3\\,\\mathrm{sigmoid}(g)$, $g$ the GP of length
    `length_scale` (metres) drawn through a Cholesky factor."""
    params = ElectrodeParameters() if params is None else params
    chol = jnp.linalg.cholesky(gp_covariance(length_scale, params))
    g = jr.normal(key, (num, params.cells), chol.dtype) @ chol.T
    return 0.2 + 0.3 * jax.nn.sigmoid(g)


def sample_conditions(key: PRNGKeyArray, num: int, params: ElectrodeParameters | None = None):
    """`(num, 3)` operating points `(length_scale, u0, f_right)`: the length log-uniform
    in `[L/50, L/5]`, `u0` uniform in `[-0.2, 0.2]`, `f_right` uniform in `[0, 50]`."""
    params = ElectrodeParameters() if params is None else params
    k1, k2, k3 = jr.split(key, 3)
    low, high = jnp.log(params.length / 50), jnp.log(params.length / 5)
    ell = jnp.exp(jr.uniform(k1, (num,), minval=low, maxval=high))
    u0 = jr.uniform(k2, (num,), minval=-0.2, maxval=0.2)
    f_right = jr.uniform(k3, (num,), minval=0.0, maxval=50.0)
    return jnp.stack([ell, u0, f_right], axis=1)


class ElectrodeDynamics(AbstractDynamics):
    """The transient concentration of one electrode (porosity `eps`, operating point
    `u0`, `f_right`) as filter dynamics: the state is `c` (`(cells,)`), advanced by
    implicit Euler in steps of at most `dt` seconds (deterministic; `key` unused)."""

    eps: Float[Array, " cells"]
    u0: Float[Array, ""]
    f_right: Float[Array, ""]
    params: ElectrodeParameters
    dt: float = eqx.field(static=True)

    def __init__(self, eps, u0, f_right, params=None, dt=0.1):
        self.params = ElectrodeParameters() if params is None else params
        self.eps = jnp.asarray(eps)
        if self.eps.shape != (self.params.cells,):
            raise ValueError(f"`eps` must have shape ({self.params.cells},); got {self.eps.shape}.")
        self.u0 = jnp.asarray(u0, self.eps.dtype)
        self.f_right = jnp.asarray(f_right, self.eps.dtype)
        if not dt > 0:
            raise ValueError(f"`dt` must be positive; got {dt!r}.")
        self.dt = float(dt)

    @property
    def state_shape(self):
        return (self.params.cells,)

    def step(self, x, t0, t1, *, key=None):
        phi = electrode_potential(self.eps, self.u0, self.f_right, self.params)
        source = electrode_source(self.eps, phi, self.u0, self.params)
        n, h = substeps(jnp.asarray(t0, x.dtype), jnp.asarray(t1, x.dtype), self.dt)
        return implicit_euler(x, self.eps, source, self.params, h, n)
