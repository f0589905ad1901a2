"""Score matching via differentiable physics: the reverse process, its loss, the data
and the metrics of the heat experiment."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
from jax import lax

from assimilax.diffusion import (
    ResNetScore,
    forward_trajectory,
    jittered_times,
    power_law_fields,
    radial_log_amplitude,
    reconstruction_mse,
    reverse_step,
    reverse_trajectory,
    smdp_loss,
    spectral_error,
)
from assimilax.dynamics import StochasticHeat


def test_reverse_process_with_the_exact_score_recovers_a_linear_problem(getkey):
    """dx = -a x dt + g dW from N(0, s0^2): x_t ~ N(0, v(t)) with a known variance, so
    the score -x / v(t) is exact. The probability-flow ODE from samples of x_T returns
    the initial variance (first order in dt), the SDE too; one step is the formula."""
    a, g, s0, end, m = 2.0, 0.5, 1.3, 1.0, 2000
    step = lambda x, dt: x * jnp.exp(-a * dt)
    var = lambda t: s0**2 * jnp.exp(-2 * a * t) + g**2 * (1 - jnp.exp(-2 * a * t)) / (2 * a)
    score = lambda x, t: -x / var(t)
    x = jnp.asarray(0.7)
    one = reverse_step(step, score, x, 0.5, 0.01, g)
    assert np.isclose(one, x - (x * np.exp(-a * 0.01) - x) + 0.5 * g**2 * 0.01 * score(x, 0.5))
    times = jnp.linspace(0.0, end, m + 1)
    x_end = jnp.sqrt(var(end)) * jr.normal(getkey(), (20000,))
    for sde in (False, True):
        back = jax.vmap(
            lambda x0, k, sde=sde: reverse_trajectory(step, score, x0, times, g, sde=sde, key=k)
        )
        start = back(x_end, jr.split(getkey(), x_end.shape[0]))[:, -1]
        assert abs(float(jnp.var(start)) / s0**2 - 1) < 0.03, (sde, float(jnp.var(start)))


def test_forward_trajectory_and_jittered_times(getkey):
    times = jittered_times(getkey(), 0.2, 32)
    assert times.shape == (33,) and times[0] == 0 and np.isclose(times[-1], 0.2)
    assert jnp.all(jnp.diff(times) > 0)
    heat = StochasticHeat(16, 2, diffusivity=1.0)
    step = lambda x, dt: heat.step_mean(x, 0.0, dt)
    x0 = jr.normal(getkey(), (16, 16))
    traj = forward_trajectory(step, x0, times, 0.0, key=getkey())
    # Without noise the trajectory is the exact solution at every time.
    assert np.allclose(traj[-1], heat.step_mean(x0, 0.0, 0.2), atol=1e-10)
    assert traj.shape == (33, 16, 16)


def test_metrics_against_hand_computed_values(getkey):
    x0 = jr.normal(getkey(), (3, 32, 32))
    # Doubling a field doubles its amplitude in every bin: log 2 everywhere.
    assert np.isclose(spectral_error(2 * x0, x0), np.log(2.0))
    assert np.isclose(spectral_error(x0, x0), 0.0)
    # A plane wave of integer wavenumber (3, 4) puts its amplitude in radius bin 5 only.
    yy, xx = np.indices((32, 32))
    wave = np.cos(2 * np.pi * (3 * xx + 4 * yy) / 32)
    spec = np.exp(radial_log_amplitude(jnp.asarray(wave)))
    assert np.argmax(spec) == 4 and spec[4] > 1e3 * np.delete(spec, 4).max()
    # The reconstruction error is an error of the end state: identity end map -> plain MSE.
    assert np.isclose(reconstruction_mse(lambda u: u, x0 + 0.1, x0), 0.01)
    heat = StochasticHeat(32, 2, diffusivity=1.0)
    smooth = reconstruction_mse(lambda u: heat.step_mean(u, 0.0, 0.2), x0 + 0.1 * wave[None], x0)
    assert np.isclose(smooth, 0.5 * 0.01 * np.exp(-2 * 25 * 0.2), rtol=1e-6)


def test_data_spectrum_has_slope_minus_four(getkey):
    """Power spectrum ~ k^-4 (amplitude k^-2) over the resolved wavenumbers."""
    fields = power_law_fields(getkey(), 200, 32)
    power = jnp.mean(jnp.abs(jnp.fft.fft2(fields)) ** 2, axis=0)
    k = np.sqrt(np.fft.fftfreq(32)[:, None] ** 2 + np.fft.fftfreq(32)[None, :] ** 2)
    keep = (k > 0) & (k < 0.45)
    slope = np.polyfit(np.log(k[keep]), np.log(np.asarray(power)[keep]), 1)[0]
    assert abs(slope + 4) < 0.15, slope


def test_one_training_step_decreases_the_loss(getkey):
    heat = StochasticHeat(8, 2, diffusivity=1.0)
    step = lambda x, dt: heat.step_mean(x, 0.0, dt)
    fields = power_law_fields(getkey(), 2, 8)
    fields = fields / jnp.std(fields)
    times = jittered_times(getkey(), 0.2, 4)
    keys = jr.split(getkey(), 2)
    trajs = jax.vmap(lambda x, k: forward_trajectory(step, x, times, 0.1, key=k))(fields, keys)
    net = ResNetScore(4, 1, key=getkey())
    loss = lambda net: smdp_loss(net, step, trajs, times, 0, 2, 0.1)
    opt = optax.adam(1e-3)
    state = opt.init(eqx.filter(net, eqx.is_array))
    before, grads = eqx.filter_value_and_grad(loss)(net)
    with jax.numpy_dtype_promotion("standard"):  # optax's int32 step counter
        updates, state = opt.update(grads, state)
    after = loss(eqx.apply_updates(net, updates))
    assert after < before, (before, after)


@pytest.mark.slow
def test_fit_smdp_through_a_nonlinear_solver(getkey):
    """Generality: training through a viscous Burgers step (1-D, nonlinear; spectral
    derivatives, one explicit step: the library's SPDE steppers choose their number of
    substeps from the traced interval, which reverse mode cannot run through) lowers the
    multi-step loss on held-out trajectories."""
    from assimilax.diffusion import UNetScore, fit_smdp

    k = jnp.fft.fftfreq(32, 1 / 32).astype(float)

    ik, k2 = lax.complex(jnp.zeros_like(k), k), lax.complex(-(k**2), jnp.zeros_like(k))

    def step(x, dt):
        u = jnp.fft.fft(x)
        dx, lap = jnp.real(jnp.fft.ifft(ik * u)), jnp.real(jnp.fft.ifft(k2 * u))
        return x + dt * (0.1 * lap - x * dx)

    x = jnp.sin(jnp.linspace(0, 2 * jnp.pi, 32, endpoint=False))
    data = x[None] * jr.uniform(getkey(), (64, 1), minval=0.5, maxval=1.5)
    net = UNetScore(1, channels=(8,), time_dim=8, key=getkey())
    times = jittered_times(getkey(), 0.2, 8)
    keys = jr.split(getkey(), 8)
    held = jax.vmap(lambda x, k: forward_trajectory(step, x, times, 0.1, key=k))(data[:8], keys)
    loss = lambda net: smdp_loss(net, step, held, times, 0, 4, 0.1)
    trained, losses = fit_smdp(
        net, step, data, key=getkey(), noise=0.1, end_time=0.2, num_steps=8, window=4,
        iterations=40, batch_size=8, augment=False,
        optimiser=optax.adam(3e-3),
    )  # fmt: skip
    assert losses.shape == (40,)
    assert loss(trained) < 0.7 * loss(net), (loss(net), loss(trained))
