r"""Forward SDEs with closed-form marginals $x_t = \alpha(t) x_0 + \sigma(t)\varepsilon$.

Every SDE here is linear, $dx = f(t) x\,dt + g(t)\,dW$, and is defined by its two
schedules $\alpha(t)$, $\sigma(t)$; the drift and diffusion follow from them:
$f = \tfrac{d}{dt}\log\alpha$ and $g^2 = \tfrac{d\sigma^2}{dt} - 2 f \sigma^2$
(computed by automatic differentiation, so a new schedule is two formulas).
"""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .._custom_types import Array, Float, PRNGKeyArray


class AbstractSDE(eqx.Module):
    """A linear forward (noising) SDE on pseudo-time `[t_min, t_max]`."""

    t_min: eqx.AbstractVar[float]
    t_max: eqx.AbstractVar[float]

    @abc.abstractmethod
    def alpha(self, t: Float[Array, ""]) -> Float[Array, ""]:
        """The signal scale `alpha(t)`."""

    @abc.abstractmethod
    def sigma(self, t: Float[Array, ""]) -> Float[Array, ""]:
        """The noise scale `sigma(t)`."""

    def drift_coefficient(self, t):
        """`f(t) = d log alpha / dt`, the drift being `f(t) x`."""
        return jax.grad(lambda s: jnp.log(self.alpha(s)))(jnp.asarray(t, float))

    def diffusion(self, t):
        """`g(t)`, with `g^2 = d sigma^2/dt - 2 f sigma^2`."""
        t = jnp.asarray(t, float)
        dvar = jax.grad(lambda s: self.sigma(s) ** 2)(t)
        g2 = dvar - 2 * self.drift_coefficient(t) * self.sigma(t) ** 2
        return jnp.sqrt(jnp.maximum(g2, 0))

    def drift(self, x, t):
        return self.drift_coefficient(t).astype(x.dtype) * x

    def marginal(self, x0, t):
        """Mean `alpha(t) x0` and standard deviation `sigma(t)` of `x_t | x_0`."""
        return self.alpha(t) * x0, self.sigma(t)

    def perturb(self, x0, t, *, key: PRNGKeyArray):
        """Draw `x_t = alpha x0 + sigma eps`; returns `(x_t, eps)`."""
        eps = jr.normal(key, x0.shape, x0.dtype)
        a, s = self.alpha(t).astype(x0.dtype), self.sigma(t).astype(x0.dtype)
        return a * x0 + s * eps, eps

    def prior_sample(self, shape, *, key: PRNGKeyArray, dtype=None):
        """Samples of the reference distribution at `t_max`: `N(0, sigma(t_max)^2 I)`."""
        dtype = jnp.result_type(float) if dtype is None else dtype
        return self.sigma(jnp.asarray(self.t_max)).astype(dtype) * jr.normal(key, shape, dtype)

    def time_grid(self, steps: int) -> Float[Array, " K"]:
        """`steps + 1` decreasing times from `t_max` to `t_min` (uniform)."""
        return jnp.linspace(self.t_max, self.t_min, steps + 1)

    def denoise(self, x, t, score):
        r"""Tweedie's estimate $E[x_0 \mid x_t] = (x_t + \sigma^2 s)/\alpha$."""
        a, s = self.alpha(t).astype(x.dtype), self.sigma(t).astype(x.dtype)
        return (x + s**2 * score) / a


def _check_times(t_min, t_max):
    if not 0 < t_min < t_max:
        raise ValueError(f"Need 0 < t_min < t_max; got t_min={t_min}, t_max={t_max}.")
    return float(t_min), float(t_max)


class VPSDE(AbstractSDE):
    r"""Variance preserving (Ho et al. 2020; Song et al. 2021), linear schedule
    $\beta(t) = \beta_0 + t(\beta_1 - \beta_0)$: $\alpha = e^{-\frac12\int_0^t\beta}$,
    $\sigma^2 = 1 - \alpha^2$."""

    beta_min: float = eqx.field(static=True)
    beta_max: float = eqx.field(static=True)
    t_min: float = eqx.field(static=True)
    t_max: float = eqx.field(static=True)

    def __init__(self, beta_min=0.1, beta_max=20.0, t_min=1e-3, t_max=1.0):
        if not 0 < beta_min < beta_max:
            raise ValueError(f"Need 0 < beta_min < beta_max; got {beta_min}, {beta_max}.")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.t_min, self.t_max = _check_times(t_min, t_max)

    def alpha(self, t):
        integral = self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2
        return jnp.exp(-0.5 * integral)

    def sigma(self, t):
        return jnp.sqrt(
            -jnp.expm1(-(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2))
        )


class CosineVPSDE(AbstractSDE):
    r"""Variance preserving with the cosine schedule (Nichol & Dhariwal 2021):
    $\alpha(t) = \cos(\tfrac{t + s}{1 + s}\tfrac\pi2) / \cos(\tfrac{s}{1+s}\tfrac\pi2)$,
    $\sigma^2 = 1 - \alpha^2$; `t_max < 1` keeps the drift finite."""

    offset: float = eqx.field(static=True)
    t_min: float = eqx.field(static=True)
    t_max: float = eqx.field(static=True)

    def __init__(self, offset=0.008, t_min=1e-3, t_max=0.995):
        self.offset = float(offset)
        self.t_min, self.t_max = _check_times(t_min, t_max)

    def alpha(self, t):
        s = self.offset
        angle = lambda u: (u + s) / (1 + s) * (math.pi / 2)
        return jnp.cos(angle(t)) / math.cos(angle(0.0))

    def sigma(self, t):
        return jnp.sqrt(1 - self.alpha(t) ** 2)


class VESDE(AbstractSDE):
    r"""Variance exploding (Song & Ermon 2019): $\alpha = 1$,
    $\sigma(t) = \sigma_{\min} (\sigma_{\max}/\sigma_{\min})^t$."""

    sigma_min: float = eqx.field(static=True)
    sigma_max: float = eqx.field(static=True)
    t_min: float = eqx.field(static=True)
    t_max: float = eqx.field(static=True)

    def __init__(self, sigma_min=0.01, sigma_max=50.0, t_min=1e-3, t_max=1.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"Need 0 < sigma_min < sigma_max; got {sigma_min}, {sigma_max}.")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.t_min, self.t_max = _check_times(t_min, t_max)

    def alpha(self, t):
        return jnp.ones_like(t)

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t


class SubVPSDE(VPSDE):
    r"""Sub-variance preserving (Song et al. 2021): the VP $\alpha$ with
    $\sigma = 1 - \alpha^2$ (variance $(1 - \alpha^2)^2$, below the VP's)."""

    def sigma(self, t):
        return 1 - self.alpha(t) ** 2


class EnSFSDE(AbstractSDE):
    r"""The linear schedule of the ensemble score filter (Bao, Zhang & Zhang 2024):
    $\alpha(t) = 1 - t(1 - \epsilon_\alpha)$, $\sigma(t)^2 = t$."""

    eps_alpha: float = eqx.field(static=True)
    t_min: float = eqx.field(static=True)
    t_max: float = eqx.field(static=True)

    def __init__(self, eps_alpha=0.05, t_min=1e-3, t_max=1.0):
        if not 0 < eps_alpha < 1:
            raise ValueError(f"`eps_alpha` must lie in (0, 1); got {eps_alpha}.")
        self.eps_alpha = float(eps_alpha)
        self.t_min, self.t_max = _check_times(t_min, t_max)

    def alpha(self, t):
        return 1 - t * (1 - self.eps_alpha)

    def sigma(self, t):
        return jnp.sqrt(t)


_SCHEDULES = ("exponential", "linear", "cosine")


class ScheduledVESDE(AbstractSDE):
    r"""Variance exploding with a chosen *volatility* schedule $\sigma_t$ (Kim, Choi &
    Kim 2025): $dx = \sigma_t\,dW$, so $\alpha = 1$ and the marginal variance is
    $V(t) = \int_0^t \sigma_s^2\,ds$ in closed form. With $r = \sigma_{\max}/\sigma_{\min}$:

    - `"exponential"`: $\sigma_t = \sigma_{\min} r^t$, $V = \sigma_{\min}^2 (r^{2t} - 1)/(2\ln r)$;
    - `"linear"` (linear in variance): $\sigma_t^2 = \sigma_{\min}^2 + (\sigma_{\max}^2 -
      \sigma_{\min}^2) t$;
    - `"cosine"`: $\sigma_t = a - b\cos\pi t$ with $a, b = (\sigma_{\max} \pm
      \sigma_{\min})/2$.

    The reference distribution at `t_max` is $N(0, V(t_{\max}) I)$."""

    schedule: str = eqx.field(static=True)
    sigma_min: float = eqx.field(static=True)
    sigma_max: float = eqx.field(static=True)
    t_min: float = eqx.field(static=True)
    t_max: float = eqx.field(static=True)

    def __init__(
        self, schedule="exponential", sigma_min=0.01, sigma_max=1.0, t_min=1e-3, t_max=1.0
    ):
        if schedule not in _SCHEDULES:
            raise ValueError(f"`schedule` must be one of {_SCHEDULES}; got {schedule!r}.")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"Need 0 < sigma_min < sigma_max; got {sigma_min}, {sigma_max}.")
        self.schedule = schedule
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.t_min, self.t_max = _check_times(t_min, t_max)

    def volatility(self, t):
        r"""The schedule $\sigma_t$ itself (the diffusion coefficient $g(t)$)."""
        lo, hi = self.sigma_min, self.sigma_max
        if self.schedule == "exponential":
            return lo * (hi / lo) ** t
        if self.schedule == "linear":
            return jnp.sqrt(lo**2 + (hi**2 - lo**2) * t)
        return lo + (hi - lo) * (1 - jnp.cos(math.pi * t)) / 2

    def variance(self, t):
        r"""$V(t) = \int_0^t \sigma_s^2\,ds$."""
        lo, hi = self.sigma_min, self.sigma_max
        if self.schedule == "exponential":
            log_r = math.log(hi / lo)
            return lo**2 * jnp.expm1(2 * log_r * t) / (2 * log_r)
        if self.schedule == "linear":
            return lo**2 * t + 0.5 * (hi**2 - lo**2) * t**2
        a, b, w = (hi + lo) / 2, (hi - lo) / 2, math.pi * t
        return (
            (a**2 + b**2 / 2) * t
            - 2 * a * b * jnp.sin(w) / math.pi
            + b**2 * jnp.sin(2 * w) / (4 * math.pi)
        )

    def alpha(self, t):
        return jnp.ones_like(t)

    def sigma(self, t):
        return jnp.sqrt(self.variance(t))


class GBMSDE(ScheduledVESDE):
    r"""Geometric Brownian motion as the forward process of positive series (Kim, Choi &
    Kim 2025): $dS = \mu_t S\,dt + \sigma_t S\,dW$ with $\mu_t = \tfrac12\sigma_t^2$. By
    Itô, $x = \log S$ obeys $dx = \sigma_t\,dW$: the `ScheduledVESDE` on log-prices, which
    is what the score network sees (`LogTransform("price")` maps prices to its state).
    The price-space transition is log-normal; its density and score are here for
    checking and for users who guide in price space."""

    def price_drift(self, s, t):
        r"""$\mu_t S = \tfrac12\sigma_t^2 S$."""
        return 0.5 * self.volatility(t) ** 2 * s

    def price_diffusion(self, s, t):
        r"""$\sigma_t S$."""
        return self.volatility(t) * s

    def price_log_density(self, s, s0, t):
        r"""$\log p(S_t = s \mid S_0 = s_0)$ per component: log-normal with
        $\log S_t \sim N(\log s_0, V(t))$."""
        v = self.variance(t)
        z = jnp.log(s) - jnp.log(s0)
        return -0.5 * z**2 / v - 0.5 * jnp.log(2 * math.pi * v) - jnp.log(s)

    def price_score(self, s, s0, t):
        r"""$\partial_s \log p(S_t = s \mid S_0 = s_0) = -(1 + (\log s - \log s_0)/V)/s$."""
        return -(1 + (jnp.log(s) - jnp.log(s0)) / self.variance(t)) / s


def gaussian_score(sde: AbstractSDE, mean, covariance):
    r"""The exact score of the noised Gaussian `N(mean, covariance)`:
    $p_t = N(\alpha m, \alpha^2 C + \sigma^2 I)$, so
    $s(x, t) = -(\alpha^2 C + \sigma^2 I)^{-1}(x - \alpha m)$. For tests and references."""
    mean, covariance = jnp.asarray(mean), jnp.asarray(covariance)
    eye = jnp.eye(mean.shape[0], dtype=mean.dtype)

    def score(x, t):
        a, s = sde.alpha(t), sde.sigma(t)
        return -jnp.linalg.solve(a**2 * covariance + s**2 * eye, x - a * mean)

    return score
