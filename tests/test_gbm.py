"""The GBM forward process for positive series (issue 18): schedules, transition kernel
and score against closed forms, the log transform, the stylized-fact metrics against
series with known answers, and the bundled market data."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy import integrate

from assimilax import stylized
from assimilax.diffusion import GBMSDE, LogTransform, ScheduledVESDE
from assimilax.experiments import market_prices, price_windows


SCHEDULES = ("exponential", "linear", "cosine")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_variance_is_the_integral_of_the_squared_volatility(schedule):
    sde = ScheduledVESDE(schedule)
    for t in (0.1, 0.5, 1.0):
        exact = integrate.quad(lambda s: float(sde.volatility(s)) ** 2, 0, t, epsabs=1e-14)[0]
        assert float(sde.variance(jnp.asarray(t))) == pytest.approx(exact, rel=1e-10)
        # g(t) from the generic autodiff of sigma(t)^2 is the schedule itself
        assert float(sde.diffusion(t)) == pytest.approx(float(sde.volatility(t)), rel=1e-8)
    assert float(sde.volatility(0.0)) == pytest.approx(0.01)
    assert float(sde.volatility(1.0)) == pytest.approx(1.0)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_price_sde_has_the_lognormal_kernel(schedule):
    """Euler-Maruyama on dS = sigma^2/2 S dt + sigma S dW (fine steps) gives log S_t with
    mean log S_0 and variance V(t); E[S_t] = S_0 exp(V/2)."""
    sde, s0, t, steps, n = GBMSDE(schedule), 2.0, 1.0, 2000, 20000
    dt = t / steps

    def step(s, inputs):
        time, z = inputs
        return s + sde.price_drift(s, time) * dt + sde.price_diffusion(s, time) * jnp.sqrt(
            dt
        ) * z, None

    noise = jr.normal(jr.key(0), (steps, n))
    times = jnp.arange(steps, dtype=float) * dt
    s = jax.lax.scan(step, jnp.full(n, s0), (times, noise))[0]
    assert bool(jnp.all(s > 0))
    v = float(sde.variance(jnp.asarray(t)))
    logs = np.log(np.asarray(s))
    assert logs.mean() == pytest.approx(np.log(s0), abs=4 * np.sqrt(v / n) + 5e-3 * v)
    assert logs.var() == pytest.approx(v, rel=4 * np.sqrt(2 / n) + 0.01)
    assert np.asarray(s).mean() == pytest.approx(s0 * np.exp(v / 2), rel=0.02)


def test_price_score_is_the_gradient_of_the_lognormal_density():
    sde, s0, t = GBMSDE("cosine"), 1.5, jnp.asarray(0.7)
    for s in (0.5, 1.5, 3.0):
        grad = jax.grad(lambda x: sde.price_log_density(x, s0, t))(jnp.asarray(s))
        assert float(sde.price_score(jnp.asarray(s), s0, t)) == pytest.approx(
            float(grad), rel=1e-12
        )
    # the density integrates to one
    total = integrate.quad(lambda x: float(jnp.exp(sde.price_log_density(x, s0, t))), 0, 200)[0]
    assert total == pytest.approx(1.0, abs=1e-8)
    # and the log-space score (what the network learns) is the VE one: -(x - x0)/V
    x0, x = 0.3, 0.9
    score = jax.grad(lambda y: -0.5 * (y - x0) ** 2 / sde.variance(t))(jnp.asarray(x))
    assert float(score) == pytest.approx(-(x - x0) / float(sde.sigma(t)) ** 2, rel=1e-12)


def test_bad_schedule_and_prices_are_refused():
    with pytest.raises(ValueError, match="schedule"):
        GBMSDE("quadratic")
    with pytest.raises(ValueError, match="strictly positive"):
        LogTransform.fit("price", np.array([[1.0, -2.0, 3.0]]))
    with pytest.raises(ValueError, match="kind"):
        LogTransform("level")


@pytest.mark.parametrize("kind", ["price", "return"])
def test_log_transform_round_trip_and_positivity(kind):
    prices = np.exp(np.cumsum(0.02 * np.random.default_rng(1).standard_normal((6, 50)), 1)) * 40
    transform = LogTransform.fit(kind, prices)
    states = transform(prices)
    assert states.mean() == pytest.approx(0, abs=1e-12) and states.std() == pytest.approx(1)
    np.testing.assert_allclose(transform.inverse(states, prices[:, 0]), prices, rtol=1e-12)
    np.testing.assert_allclose(
        transform.log_returns(states), np.diff(np.log(prices), axis=1), atol=1e-12
    )
    wild = 30 * np.random.default_rng(2).standard_normal(states.shape)  # any sampler output
    assert np.all(transform.inverse(wild) > 0)


def test_tail_exponent_recovers_a_pareto_and_a_student_t():
    rng = np.random.default_rng(3)
    pareto = (1 - rng.uniform(size=20000)) ** (-1 / 2.5)  # density exponent 3.5
    alpha, xmin, _ = stylized.tail_exponent(pareto)
    assert alpha == pytest.approx(3.5, abs=0.15) and xmin < 1.5
    t3 = rng.standard_t(3, size=50000)  # |r| density tail ~ x^-4
    assert stylized.tail_exponent(t3)[0] == pytest.approx(4.0, abs=0.4)


def test_acf_leverage_and_asymmetry_on_series_with_known_answers():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((40, 500))
    lags = np.arange(1, 6)
    np.testing.assert_allclose(stylized.autocorrelation(z, lags), 0, atol=0.02)
    ar = np.zeros_like(z)  # AR(1) with phi = 0.6: ACF(k) = 0.6^k
    for i in range(1, z.shape[1]):
        ar[:, i] = 0.6 * ar[:, i - 1] + z[:, i]
    np.testing.assert_allclose(stylized.autocorrelation(ar[:, 50:], lags), 0.6**lags, atol=0.03)
    assert stylized.decay_exponent(2.0 * lags**-0.3, lags) == pytest.approx(0.3)
    # leverage: volatility that rises after a fall (sigma_{t+1} larger when r_t < 0)
    r = np.zeros_like(z)
    for i in range(1, z.shape[1]):
        r[:, i] = np.where(r[:, i - 1] < 0, 1.5, 0.7) * z[:, i]
    assert np.all(stylized.leverage(r, [1]) < -0.2)
    assert abs(stylized.leverage(z, [1])[0]) < 0.1
    # gain/loss: a negative drift makes losses come sooner
    drift = stylized.gain_loss_asymmetry(0.01 * z - 0.002, theta=0.05, horizon=100)
    assert drift["loss_mode"] < drift["gain_mode"]
    assert drift["gain"].shape == (100,) and drift["loss"].sum() == pytest.approx(1)


def test_bootstrap_band_covers_the_statistic():
    z = np.random.default_rng(5).standard_normal((60, 200))
    acf = lambda w: stylized.autocorrelation(w, [1, 2])
    lo, hi = stylized.bootstrap_band(acf, z)
    assert np.all(lo < acf(z)) and np.all(acf(z) < hi)
    # white noise: the ACF's standard error is 1/sqrt(n L), the 95 % band 3.92 of them
    np.testing.assert_allclose(hi - lo, 3.92 / np.sqrt(z.size), rtol=0.25)


def test_bundled_sp500_has_the_stylized_facts():
    dates, close = market_prices("sp500")
    assert dates.size == close.size == 5031 and np.all(close > 0)
    r = np.diff(np.log(close))
    assert 3.0 < stylized.tail_exponent(r)[0] < 5.0  # heavy tails
    lags = np.arange(1, 51)
    acf_abs = stylized.autocorrelation(r, lags, absolute=True)
    assert np.all(acf_abs > 0.1)  # volatility clustering
    assert np.all(np.abs(stylized.autocorrelation(r, lags)) < 0.1)  # no linear memory
    lev = stylized.leverage(r, np.arange(1, 11))
    assert np.all(lev[:5] < 0) and lev.mean() < 0  # leverage
    windows = price_windows(close, 256, 64)
    assert windows.shape == ((5031 - 256) // 64 + 1, 256)
    with pytest.raises(ValueError, match="Unknown market"):
        market_prices("ftse")
