r"""Pseudo-spectral SPDEs on periodic grids.

Every model here is a semilinear SPDE on the periodic box $[0, L)^{n_d}$,

$$du = (\mathcal{L} u + \mathcal{N}(u))\,dt + Q^{1/2} dW,$$

with a real diagonal (in Fourier space) linear part $\hat{\mathcal{L}}_k = \lambda_k$,
a nonlinear part evaluated pseudo-spectrally with the 2/3 dealiasing rule, and additive
noise that is white in time and homogeneous in space with spectrum $q_k$ (`SpatialSpectrum`).

Time stepping, per internal step $h \le$ `dt`:

1. the deterministic part with ETDRK4 (Cox & Matthews 2002), its $\varphi$-function
   coefficients computed by contour integrals (Kassam & Trefethen 2005) for the actual
   step size, so any observation interval works;
2. the noise as the exact stochastic convolution of the linear part,
   $\int_0^h e^{\lambda_k (h - s)} \sqrt{q_k}\, d\hat W_k(s)$, a Gaussian of variance
   $q_k (e^{2\lambda_k h} - 1) / (2\lambda_k)$ per mode (the "exponential Euler" noise
   treatment of Jentzen & Kloeden; exact for the linear heat equation).

States are real fields of shape `(dim,) * ndim` in physical space; the spectral
coefficients live only inside `step`. Wavenumbers and coefficients are computed inside
`step` in the state's dtype (float32 or float64): they do not depend on the member, so
under `vmap` they are computed once per step.
"""

import abc
import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax import lax

from .._checks import check_positive
from .._custom_types import Array, Float, PRNGKeyArray
from .base import AbstractAdditiveNoiseDynamics, AbstractDynamics, substeps


def _complex_dtype(dtype):
    return jnp.complex128 if jnp.dtype(dtype) == jnp.float64 else jnp.complex64


class PeriodicGrid(eqx.Module):
    """`dim` points per axis on the periodic box `[0, length)^ndim` (the right end excluded).

    Wavenumbers live on the `rfftn` grid: the last axis holds `dim // 2 + 1` non-negative
    wavenumbers, the others all `dim`.
    """

    dim: int = eqx.field(static=True)
    ndim: int = eqx.field(static=True)
    length: float = eqx.field(static=True)

    def __init__(self, dim: int, ndim: int, length: float):
        if int(dim) != dim or dim < 4 or dim % 2:
            raise ValueError(f"`dim` must be an even integer >= 4 (grid points); got {dim!r}.")
        if ndim not in (1, 2):
            raise ValueError(f"`ndim` must be 1 or 2; got {ndim!r}.")
        if not (np.isfinite(length) and length > 0):
            raise ValueError(f"`length` (the domain size) must be positive; got {length!r}.")
        self.dim, self.ndim, self.length = int(dim), int(ndim), float(length)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.dim,) * self.ndim

    def coordinates(self, dtype) -> tuple[Array, ...]:
        """Grid coordinates per axis, shaped to broadcast against a field."""
        x = jnp.arange(self.dim, dtype=dtype) * (self.length / self.dim)
        return tuple(
            x.reshape([-1 if i == a else 1 for i in range(self.ndim)]) for a in range(self.ndim)
        )

    def _integer_wavenumbers(self) -> tuple[np.ndarray, ...]:
        """Integer wavenumbers per axis on the `rfftn` grid (the last axis non-negative),
        shaped to broadcast."""
        out = []
        for a in range(self.ndim):
            freq = np.fft.rfftfreq if a == self.ndim - 1 else np.fft.fftfreq
            shape = [-1 if i == a else 1 for i in range(self.ndim)]
            out.append(freq(self.dim, 1 / self.dim).reshape(shape))
        return tuple(out)

    def wavenumbers(self, dtype) -> tuple[Array, ...]:
        """Angular wavenumbers per axis on the `rfftn` grid, shaped to broadcast."""
        scale = 2 * math.pi / self.length
        return tuple(jnp.asarray(scale * n, dtype) for n in self._integer_wavenumbers())

    def wavenumber_squared(self, dtype) -> Array:
        return sum(k**2 for k in self.wavenumbers(dtype))

    def dealias_mask(self) -> np.ndarray:
        """The 2/3 rule: keep modes with integer wavenumber `|n| < dim / 3` on every axis."""
        keep = True
        for n in self._integer_wavenumbers():
            keep = keep & (np.abs(n) < self.dim / 3)
        return keep

    def multiplicity(self) -> np.ndarray:
        """How many full-grid modes each `rfftn` mode stands for (1 or 2)."""
        w = np.full(self.dim // 2 + 1, 2.0)
        w[0] = w[-1] = 1.0
        return w.reshape([1] * (self.ndim - 1) + [-1])

    def fft(self, u: Array) -> Array:
        return jnp.fft.rfftn(u, axes=tuple(range(-self.ndim, 0)))

    def ifft(self, u_hat: Array) -> Array:
        return jnp.fft.irfftn(u_hat, s=self.shape, axes=tuple(range(-self.ndim, 0)))


class SpatialSpectrum(eqx.Module):
    r"""A homogeneous, isotropic, zero-mean Gaussian field through its spectrum,

    $$q_k \propto (1 + \ell^2 |k|^2)^{-p}, \qquad q_0 = 0,$$

    white for $\ell = 0$, Matérn-like (smooth at scales below $\ell$) for $\ell > 0$,
    scaled so that the variance at each grid point is `std**2`. As SPDE noise
    $Q^{1/2} dW$ that is the variance per unit time; as an initial condition
    (`gaussian_random_field`) the field's variance. The mean (k = 0) mode is left out, so
    the noise never changes the spatial mean (conserved by Burgers, KS and Navier–Stokes).

    **Arguments:**

    - `std`: pointwise standard deviation (per square root of unit time for noise).
    - `length_scale`: the correlation length `ℓ` (0: white in space).
    - `exponent`: the decay `p` of the spectrum beyond `1/ℓ`.
    """

    std: Float[Array, ""]
    length_scale: float = eqx.field(static=True)
    exponent: float = eqx.field(static=True)

    def __init__(self, std, length_scale: float = 0.0, exponent: float = 2.0):
        if not (np.isfinite(length_scale) and length_scale >= 0):
            raise ValueError(f"`length_scale` must be >= 0; got {length_scale!r}.")
        if not (np.isfinite(exponent) and exponent >= 0):
            raise ValueError(f"`exponent` must be >= 0; got {exponent!r}.")
        self.std = check_positive(jnp.asarray(std), "std", "standard deviations")
        self.length_scale = float(length_scale)
        self.exponent = float(exponent)

    def variances(self, grid: PeriodicGrid, dtype) -> Array:
        """`q_k` on the `rfftn` grid, normalised so that `mean over the full grid = std^2`."""
        k2 = grid.wavenumber_squared(dtype)
        shape = (1 + self.length_scale**2 * k2) ** (-self.exponent)
        shape = jnp.where(k2 == 0, jnp.zeros((), dtype), shape)
        total = jnp.sum(shape * jnp.asarray(grid.multiplicity(), dtype))
        return self.std.astype(dtype) ** 2 * math.prod(grid.shape) * shape / total


def _white_noise_hat(grid: PeriodicGrid, dtype, key) -> Array:
    """The `rfftn` of iid N(0, 1) grid values: every real field's law, in Fourier space."""
    return grid.fft(jr.normal(key, grid.shape, dtype))


def gaussian_random_field(
    spectrum: SpatialSpectrum, grid: PeriodicGrid, *, key: PRNGKeyArray, dtype=None
) -> Array:
    """One draw of the zero-mean Gaussian field with `spectrum` on `grid`."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    q = spectrum.variances(grid, dtype)
    return grid.ifft(jnp.sqrt(q).astype(_complex_dtype(dtype)) * _white_noise_hat(grid, dtype, key))


def _phi1(z: Array) -> Array:
    """`(e^z - 1) / z`, with its limit 1 at 0."""
    small = jnp.abs(z) < 1e-8
    return jnp.where(small, 1 + z / 2, jnp.expm1(z) / jnp.where(small, 1, z))


def convolution_variance(q: Array, lam: Array, h: Array) -> Array:
    r"""Variance of $\int_0^h e^{\lambda (h - s)} \sqrt{q}\, dW(s)$: $q h \varphi_1(2\lambda h)$."""
    return q * h * _phi1(2 * lam * h)


def etdrk4_coefficients(lam: Array, h: Array, num_points: int = 16) -> tuple[Array, ...]:
    """ETDRK4 coefficients `(E, E2, Q, f1, f2, f3)` of Kassam & Trefethen (2005, eq. 2.5)
    for real `lam` and step `h`, by the mean over `num_points` points on the upper half
    of a unit circle around each `lam * h` (real part; the functions are real on the real
    axis), accurate where the direct formulas cancel catastrophically."""
    dtype = lam.dtype
    cdtype = _complex_dtype(dtype)
    c = lam * h
    roots = np.exp(1j * np.pi * (np.arange(num_points) + 0.5) / num_points)
    z = c.astype(cdtype)[..., None] + jnp.asarray(roots, cdtype).reshape((1,) * c.ndim + (-1,))
    ez = jnp.exp(z)
    mean = lambda f: h * jnp.mean(f, axis=-1).real
    q = mean((jnp.exp(z / 2) - 1) / z)
    f1 = mean((-4 - z + ez * (4 - 3 * z + z**2)) / z**3)
    f2 = mean((2 + z + ez * (z - 2)) / z**3)
    f3 = mean((-4 - 3 * z - z**2 + ez * (4 - z)) / z**3)
    coefficients = (jnp.exp(c), jnp.exp(c / 2), q, f1, f2, f3)
    return tuple(a.astype(cdtype) for a in coefficients)


def etdrk4_step(nonlinear, u_hat: Array, coefficients: tuple[Array, ...]) -> Array:
    """One ETDRK4 step of `du/dt = lam u + N(u)` in Fourier space (Cox & Matthews 2002)."""
    e, e2, q, f1, f2, f3 = coefficients
    nu = nonlinear(u_hat)
    a = e2 * u_hat + q * nu
    na = nonlinear(a)
    b = e2 * u_hat + q * na
    nb = nonlinear(b)
    c = e2 * a + q * (2 * nb - nu)
    nc = nonlinear(c)
    return e * u_hat + f1 * nu + 2 * f2 * (na + nb) + f3 * nc


class AbstractSpectralSPDE(AbstractDynamics):
    """A semilinear SPDE on a periodic grid with a diagonal linear part (see the module)."""

    grid: eqx.AbstractVar[PeriodicGrid]
    noise: eqx.AbstractVar[SpatialSpectrum | None]

    @property
    def state_shape(self):
        return self.grid.shape

    @abc.abstractmethod
    def linear(self, dtype) -> Array:
        """The real Fourier multiplier `lam_k` of the linear part on the `rfftn` grid."""

    def noise_variance(self, h, dtype) -> Array:
        """Per-mode variance (in `rfftn` units) of the noise added over a step `h`."""
        q = self.noise.variances(self.grid, dtype)
        return convolution_variance(q, self.linear(dtype), jnp.asarray(h, dtype))

    def _add_noise(self, u_hat: Array, h, dtype, key) -> Array:
        if self.noise is None:
            return u_hat
        std = jnp.sqrt(self.noise_variance(h, dtype)).astype(u_hat.dtype)
        return u_hat + std * _white_noise_hat(self.grid, dtype, key)


class AbstractSemilinearSPDE(AbstractSpectralSPDE):
    """A spectral SPDE with a nonlinear part, stepped with ETDRK4 at internal step `dt`
    plus the exact stochastic convolution of the linear part (see the module)."""

    dt: eqx.AbstractVar[Float[Array, ""]]

    @abc.abstractmethod
    def nonlinear(self, u_hat: Array) -> Array:
        """`N(u)` in Fourier space, from dealiased `u_hat`, dealiased again on output."""

    def step(self, x, t0, t1, *, key):
        dtype = x.dtype
        n, h = substeps(t0, t1, self.dt)
        h = jnp.asarray(h, dtype)
        coefficients = etdrk4_coefficients(self.linear(dtype), h)

        def body(i, u_hat):
            u_hat = etdrk4_step(self.nonlinear, u_hat, coefficients)
            return self._add_noise(u_hat, h, dtype, jr.fold_in(key, i))

        return self.grid.ifft(lax.fori_loop(0, n, body, self.grid.fft(x)))

    def _dealias(self, u_hat: Array) -> Array:
        return jnp.where(jnp.asarray(self.grid.dealias_mask()), u_hat, jnp.zeros((), u_hat.dtype))

    def _advection_1d(self, u_hat: Array) -> Array:
        """`-u u_x = -(u^2 / 2)_x` in conservation form (Burgers, KS)."""
        dtype = jnp.real(u_hat).dtype
        u = self.grid.ifft(self._dealias(u_hat))
        return self._dealias(-0.5 * self._derivative_factor(0, dtype) * self.grid.fft(u * u))

    def _derivative_factor(self, axis: int, dtype) -> Array:
        """`i k` along `axis`, complex, on the `rfftn` grid."""
        k = self.grid.wavenumbers(dtype)[axis]
        return 1j * k.astype(_complex_dtype(dtype))


def _grid_and_noise(dim, ndim, length, noise):
    if noise is not None and not isinstance(noise, SpatialSpectrum):
        raise TypeError(f"`noise` must be a SpatialSpectrum or None; got {type(noise).__name__}.")
    return PeriodicGrid(dim, ndim, length), noise


def _parameter(value, name: str, *, allow_zero: bool = False):
    value = jnp.asarray(value)
    if allow_zero:
        if not (np.all(np.isfinite(value)) and np.all(np.asarray(value) >= 0)):
            raise ValueError(f"`{name}` must be a finite number >= 0; got {value!r}.")
        return value
    return check_positive(value, name, "values")


def _check_dt(dt):
    # An array leaf, not a static field: a new step size does not recompile.
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"`dt` must be positive; got {dt!r}.")
    return jnp.asarray(float(dt))


class StochasticHeat(AbstractSpectralSPDE, AbstractAdditiveNoiseDynamics):
    r"""The stochastic heat equation $du = \alpha \Delta u\,dt + Q^{1/2} dW$ in 1-D or 2-D.

    Linear, so solved exactly in Fourier space for any step: each mode is an
    Ornstein–Uhlenbeck process with rate $\alpha |k|^2$ and stationary variance
    $q_k / (2 \alpha |k|^2)$ (mean mode conserved). Also an additive-noise model with a
    dense `step_covariance`, for filters that need it.

    **Arguments:**

    - `dim`: grid points per axis (even, >= 4).
    - `ndim`: 1 or 2.
    - `length`: the domain size `L` (default 2π).
    - `diffusivity`: `α > 0`.
    - `noise`: a `SpatialSpectrum`, or None for the deterministic heat equation.
    """

    grid: PeriodicGrid
    noise: SpatialSpectrum | None
    diffusivity: Float[Array, ""]
    is_linear: ClassVar[bool] = True

    def __init__(
        self,
        dim: int = 32,
        ndim: int = 2,
        length: float = 2 * math.pi,
        diffusivity=1.0,
        noise: SpatialSpectrum | None = None,
    ):
        self.grid, self.noise = _grid_and_noise(dim, ndim, length, noise)
        self.diffusivity = _parameter(diffusivity, "diffusivity")

    def linear(self, dtype):
        return -self.diffusivity.astype(dtype) * self.grid.wavenumber_squared(dtype)

    def _mean_hat(self, x, t0, t1):
        decay = jnp.exp(self.linear(x.dtype) * jnp.asarray(t1 - t0, x.dtype))
        return decay.astype(_complex_dtype(x.dtype)) * self.grid.fft(x)

    def step_mean(self, x, t0, t1):
        return self.grid.ifft(self._mean_hat(x, t0, t1))

    def step(self, x, t0, t1, *, key):
        u_hat = self._add_noise(self._mean_hat(x, t0, t1), t1 - t0, x.dtype, key)
        return self.grid.ifft(u_hat)

    def step_covariance(self, t0, t1):
        dtype = jnp.result_type(float)
        d = math.prod(self.state_shape)
        if self.noise is None:
            return jnp.zeros((d, d), dtype)
        std = jnp.sqrt(self.noise_variance(t1 - t0, dtype)).astype(_complex_dtype(dtype))
        basis = jnp.eye(d, dtype=dtype).reshape(d, *self.state_shape)
        # Row j is the noise map applied to e_j, i.e. column j of the (symmetric) map.
        rows = jax.vmap(lambda e: self.grid.ifft(std * self.grid.fft(e)))(basis).reshape(d, d)
        return rows.T @ rows


class Burgers(AbstractSemilinearSPDE):
    r"""Viscous Burgers' equation, 1-D, optionally stochastically forced:
    $du = (\nu u_{xx} - u u_x)\,dt + Q^{1/2} dW$.

    Without noise its energy $\tfrac12 \int u^2$ decays monotonically; with large-scale
    noise it settles to a statistically steady state of travelling shocks.

    **Arguments:** `dim` (grid points), `length` (2π), `viscosity` ν, `dt` (ETDRK4
    step), `noise` (a `SpatialSpectrum` or None).
    """

    grid: PeriodicGrid
    noise: SpatialSpectrum | None
    viscosity: Float[Array, ""]
    dt: Float[Array, ""]

    def __init__(
        self,
        dim: int = 128,
        length: float = 2 * math.pi,
        viscosity=0.05,
        dt: float = 0.01,
        noise: SpatialSpectrum | None = None,
    ):
        self.grid, self.noise = _grid_and_noise(dim, 1, length, noise)
        self.viscosity = _parameter(viscosity, "viscosity")
        self.dt = _check_dt(dt)

    def linear(self, dtype):
        return -self.viscosity.astype(dtype) * self.grid.wavenumber_squared(dtype)

    def nonlinear(self, u_hat):
        return self._advection_1d(u_hat)


class KuramotoSivashinsky(AbstractSemilinearSPDE):
    r"""The Kuramoto–Sivashinsky equation, 1-D, optionally with additive noise:
    $du = -(u_{xx} + u_{xxxx} + u u_x)\,dt + Q^{1/2} dW$.

    Chaotic on long enough domains; the standard test beds are L = 22 (64 points, leading
    Lyapunov exponent 0.048, Cvitanović, Davidchack & Siminos 2010; measured here:
    0.047-0.048) and L = 32π (128 points; Kassam & Trefethen 2005, the data-assimilation
    setting of Bocquet et al. 2019 and DAPPER's `mods.KS`).

    **Arguments:** `dim` (grid points), `length` (22.0), `dt` (0.25, ETDRK4 step),
    `noise` (a `SpatialSpectrum` or None).
    """

    grid: PeriodicGrid
    noise: SpatialSpectrum | None
    dt: Float[Array, ""]

    def __init__(
        self,
        dim: int = 64,
        length: float = 22.0,
        dt: float = 0.25,
        noise: SpatialSpectrum | None = None,
    ):
        self.grid, self.noise = _grid_and_noise(dim, 1, length, noise)
        self.dt = _check_dt(dt)

    def linear(self, dtype):
        k2 = self.grid.wavenumber_squared(dtype)
        return k2 - k2**2

    def nonlinear(self, u_hat):
        return self._advection_1d(u_hat)


class NavierStokes2D(AbstractSemilinearSPDE):
    r"""2-D incompressible Navier–Stokes in vorticity form on $[0, L)^2$ with Kolmogorov
    forcing and linear drag, optionally with additive stochastic forcing:

    $$d\omega = \big(\nu \Delta\omega - \mu\omega - \mathbf{u}\cdot\nabla\omega
    + f\big)\,dt + Q^{1/2} dW, \quad f = -A\, n \cos(n y),$$

    the curl of the body force $A \sin(n y)\,\hat{x}$ (Chandler & Kerswell 2013;
    Kochkov et al. 2021). The velocity comes from the stream function, $\Delta\psi =
    -\omega$, $\mathbf{u} = (\partial_y \psi, -\partial_x \psi)$. Axis 0 is x, axis 1 is y.
    The mean vorticity is conserved (0 for zero-mean initial states).

    **Arguments:** `dim` (grid points per axis), `length` (2π), `viscosity` ν (0.01),
    `drag` μ (0.1), `forcing_wavenumber` n (4), `forcing_amplitude` A (1.0), `dt`
    (ETDRK4 step, 0.02: the explicit advection needs a CFL number below ~1.5 at the
    default forcing), `noise` (a `SpatialSpectrum` or None).
    """

    grid: PeriodicGrid
    noise: SpatialSpectrum | None
    viscosity: Float[Array, ""]
    drag: Float[Array, ""]
    forcing_amplitude: Float[Array, ""]
    forcing_wavenumber: int = eqx.field(static=True)
    dt: Float[Array, ""]

    def __init__(
        self,
        dim: int = 64,
        length: float = 2 * math.pi,
        viscosity=0.01,
        drag=0.1,
        forcing_wavenumber: int = 4,
        forcing_amplitude=1.0,
        dt: float = 0.02,
        noise: SpatialSpectrum | None = None,
    ):
        self.grid, self.noise = _grid_and_noise(dim, 2, length, noise)
        self.viscosity = _parameter(viscosity, "viscosity")
        self.drag = _parameter(drag, "drag", allow_zero=True)
        self.forcing_amplitude = _parameter(forcing_amplitude, "forcing_amplitude", allow_zero=True)
        if int(forcing_wavenumber) != forcing_wavenumber or not 0 < forcing_wavenumber < dim / 3:
            raise ValueError(
                "`forcing_wavenumber` must be an integer in (0, dim/3); "
                f"got {forcing_wavenumber!r}."
            )
        self.forcing_wavenumber = int(forcing_wavenumber)
        self.dt = _check_dt(dt)

    def linear(self, dtype):
        k2 = self.grid.wavenumber_squared(dtype)
        return -self.viscosity.astype(dtype) * k2 - self.drag.astype(dtype)

    def forcing(self, dtype) -> Array:
        """The vorticity forcing `f = -A n cos(n y)` on the grid."""
        _, y = self.grid.coordinates(dtype)
        n = self.forcing_wavenumber * 2 * math.pi / self.grid.length
        f = -self.forcing_amplitude.astype(dtype) * n * jnp.cos(n * y)
        return jnp.broadcast_to(f, self.grid.shape)

    def _forcing_hat(self, dtype) -> Array:
        # `rfftn` of the single mode -A n cos(n y): -A n N^2 / 2 at (kx, ky) = (0, n).
        n_f = self.forcing_wavenumber
        n = n_f * 2 * math.pi / self.grid.length
        value = -self.forcing_amplitude.astype(dtype) * n * self.grid.dim**2 / 2
        index = np.zeros((self.grid.dim, self.grid.dim // 2 + 1), bool)
        index[0, n_f] = True
        return jnp.where(jnp.asarray(index), value, jnp.zeros((), dtype)).astype(
            _complex_dtype(dtype)
        )

    def _stream_function_hat(self, omega_hat, dtype):
        k2 = self.grid.wavenumber_squared(dtype)
        inv = jnp.where(k2 == 0, jnp.zeros((), dtype), 1 / jnp.where(k2 == 0, 1, k2))
        return omega_hat * inv.astype(omega_hat.dtype)

    def velocity(self, omega: Float[Array, "n n"]) -> tuple[Array, Array]:
        """The velocity `(u, v) = (psi_y, -psi_x)` of the vorticity field `omega`."""
        dtype = omega.dtype
        psi_hat = self._stream_function_hat(self.grid.fft(omega), dtype)
        dx, dy = self._derivative_factor(0, dtype), self._derivative_factor(1, dtype)
        return self.grid.ifft(dy * psi_hat), self.grid.ifft(-dx * psi_hat)

    def nonlinear(self, omega_hat):
        dtype = jnp.real(omega_hat).dtype
        omega_hat = self._dealias(omega_hat)
        psi_hat = self._stream_function_hat(omega_hat, dtype)
        dx, dy = self._derivative_factor(0, dtype), self._derivative_factor(1, dtype)
        # One batched inverse FFT for u, v, omega_x, omega_y.
        u, v, wx, wy = self.grid.ifft(
            jnp.stack([dy * psi_hat, -dx * psi_hat, dx * omega_hat, dy * omega_hat])
        )
        advection = self.grid.fft(u * wx + v * wy)
        return self._dealias(self._forcing_hat(dtype) - advection)

    def energy_spectrum(self, omega: Float[Array, "n n"]) -> tuple[Array, Array]:
        r"""The shell-summed kinetic energy spectrum $E(k)$, $k = 1, \dots, n/2$, in units
        of the fundamental wavenumber, normalised so $\sum_k E(k)$ is the mean energy
        $\langle |\mathbf{u}|^2 \rangle / 2$ (up to the modes beyond $n/2$)."""
        dtype = omega.dtype
        omega_hat = self.grid.fft(omega)
        k2 = self.grid.wavenumber_squared(dtype)
        inv = jnp.where(k2 == 0, jnp.zeros((), dtype), 1 / jnp.where(k2 == 0, 1, k2))
        n_total = math.prod(self.grid.shape)
        energy = 0.5 * jnp.abs(omega_hat) ** 2 * inv * jnp.asarray(self.grid.multiplicity(), dtype)
        energy = energy / n_total**2
        shell = jnp.round(jnp.sqrt(k2) * self.grid.length / (2 * math.pi)).astype(jnp.int32)
        bins = self.grid.dim // 2 + 1
        spectrum = jnp.zeros(bins, dtype).at[shell].add(energy, mode="drop")
        return jnp.arange(1, bins), spectrum[1:]
