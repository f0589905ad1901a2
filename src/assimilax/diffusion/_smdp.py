r"""Score matching via differentiable physics (SMDP; Holzschuh, Vegetti & Thuerey 2023).

The forward process is a physics step plus noise, $dx = P(x)\,dt + g\,dW$, with $P$
given by any differentiable step function `step(x, dt)` (the state after time `dt` of
the deterministic physics; its increment is $P_{\Delta t}(x) = $ `step(x, dt) - x`). The
learned reverse step runs the physics backwards to first order and adds the learned
score:

- probability flow (training, and the ODE sampler):
  $x_{t-\Delta t} = x_t - P_{\Delta t}(x_t) + \tfrac12 g^2 \Delta t\, s_\theta(x_t, t)$;
- reverse SDE: $x_{t-\Delta t} = x_t - P_{\Delta t}(x_t) + g^2 \Delta t\, s_\theta(x_t, t)
  + g \sqrt{\Delta t}\,\xi$, without noise in the last step.

Training (`smdp_loss`) unrolls `window` probability-flow steps from states of a noisy
forward simulation (on a jittered time grid) and compares them with the simulation's
earlier states: the network learns the score *through* the solver. The metrics of the
paper's heat experiment are `reconstruction_mse` and `spectral_error`, computed as the
authors' code does (see their docstrings).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jax import lax

from .._custom_types import Array, Float, PRNGKeyArray
from ._networks import Conv


Step = Callable[[Array, Array], Array]  # step(x, dt) -> x after dt of the physics


def jittered_times(key: PRNGKeyArray, end: float, steps: int, dtype=None) -> Array:
    """`steps + 1` times from 0 to `end`: the interior points of the uniform grid moved
    uniformly within half a cell each (the authors' `get_rand_times_linear`)."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    grid = jnp.linspace(0.0, end, steps + 1, dtype=dtype)
    cell = end / steps
    shift = jr.uniform(key, (steps - 1,), dtype, -0.5 * cell, 0.5 * cell)
    return grid.at[1:-1].add(shift)


def forward_trajectory(
    step: Step, x0: Array, times: Float[Array, " M1"], noise, *, key: PRNGKeyArray
) -> Array:
    r"""The noisy forward simulation $x_{i+1} = x_i + P_{\Delta t_i}(x_i) + g\sqrt{\Delta
    t_i}\,\xi_i$ at `times`, from `x0`: shape `(M + 1, *x0.shape)`, `x0` first."""
    g = jnp.asarray(noise, x0.dtype)

    def body(x, inputs):
        dt, k = inputs
        x = step(x, dt) + g * jnp.sqrt(dt) * jr.normal(k, x.shape, x.dtype)
        return x, x

    dts = jnp.diff(times).astype(x0.dtype)
    _, xs = lax.scan(body, x0, (dts, jr.split(key, dts.shape[0])))
    return jnp.concatenate([x0[None], xs])


def reverse_step(step: Step, score, x, t, dt, noise, *, sde=False, key=None):
    """One learned reverse step from time `t` to `t - dt` (see the module): the
    probability-flow step, or with `sde=True` the reverse-SDE step (noise from `key`;
    none when `key` is None)."""
    g2 = jnp.asarray(noise, x.dtype) ** 2
    drift = x - (step(x, dt) - x)
    if not sde:
        return drift + 0.5 * g2 * dt * score(x, t)
    out = drift + g2 * dt * score(x, t)
    if key is not None:
        out = out + jnp.sqrt(g2 * dt) * jr.normal(key, x.shape, x.dtype)
    return out


def reverse_trajectory(step: Step, score, x_end, times, noise, *, sde=False, key=None) -> Array:
    """Run the learned reverse process from `x_end` at `times[-1]` back to `times[0]`;
    the states from the end to the start, `(M + 1, *shape)`. The SDE takes no noise in
    its last step (as the authors' sampler)."""
    dts = jnp.diff(times).astype(x_end.dtype)[::-1]
    ts = times[1:][::-1].astype(x_end.dtype)
    m = dts.shape[0]
    keys = jr.split(jr.key(0) if key is None else key, m)

    def body(x, inputs):
        i, t, dt, k = inputs
        if sde and key is not None:
            noisy = reverse_step(step, score, x, t, dt, noise, sde=True, key=k)
            x = jnp.where(i < m - 1, noisy, reverse_step(step, score, x, t, dt, noise, sde=True))
        else:
            x = reverse_step(step, score, x, t, dt, noise, sde=sde)
        return x, x

    _, xs = lax.scan(body, x_end, (jnp.arange(m), ts, dts, keys))
    return jnp.concatenate([x_end[None], xs])


def smdp_loss(score, step: Step, trajectories, times, start, window: int, noise) -> Array:
    """The multi-step loss: from the states at reversed index `start` of each forward
    trajectory `(batch, M + 1, *shape)` (index 0 = time 0), unroll `window`
    probability-flow steps and sum the mean squared differences to the trajectory's
    earlier states (the authors' sliding window, backward direction)."""
    rev = jnp.flip(trajectories, axis=1)  # index 0 = the end time
    ts, dts = times[::-1], -jnp.diff(times[::-1])

    def one(traj):
        def body(x, j):
            i = start + j
            x = reverse_step(step, score, x, ts[i], dts[i].astype(x.dtype), noise)
            return x, jnp.mean((x - traj[i + 1]) ** 2)

        _, errors = lax.scan(body, traj[start], jnp.arange(window))
        return jnp.sum(errors)

    return jnp.mean(jax.vmap(one)(rev))


def reconstruction_mse(step_to_end: Callable[[Array], Array], x0_hat, x0) -> Array:
    r"""The authors' reconstruction error: re-simulate the estimate to the end time and
    take the mean over pixels (and samples) of $(P_T(\hat x_0) - P_T(x_0))^2$: an error
    of the end state, not of $\hat x_0$. `step_to_end` maps one state to its
    noise-free end state; the arrays are `(batch, *shape)`."""
    forward = jax.vmap(step_to_end)
    return jnp.mean((forward(x0_hat) - forward(x0)) ** 2)


def radial_log_amplitude(u: Float[Array, "n n"], bins: int = 10) -> Array:
    """The authors' spectrum: log of the mean, over integer-radius bins about the centre
    of the fft-shifted grid, of |Re(ifft2(u))| (their quirks: `ifft2` not `fft2`, the
    real part before the modulus, so a log-amplitude), for radii 1..`bins`."""
    n = u.shape[0]
    amplitude = jnp.abs(jnp.fft.fftshift(jnp.real(jnp.fft.ifft2(u))))
    yy, xx = jnp.indices(u.shape)
    radius = jnp.sqrt((xx - n // 2) ** 2 + (yy - n // 2) ** 2).astype(jnp.int32)
    sums = jnp.zeros(n * n, amplitude.dtype).at[radius.ravel()].add(amplitude.ravel())
    counts = jnp.zeros(n * n, amplitude.dtype).at[radius.ravel()].add(1.0)
    return jnp.log(sums[1 : bins + 1] / counts[1 : bins + 1])


def spectral_error(x0_hat, x0, bins: int = 10) -> Array:
    """The authors' spectral error: mean over radius bins 1..`bins` of the absolute
    difference of `radial_log_amplitude` of the truth `x0` and the estimate, averaged
    over samples (arrays `(batch, n, n)`)."""
    spec = jax.vmap(lambda u: radial_log_amplitude(u, bins))
    return jnp.mean(jnp.abs(spec(x0) - spec(x0_hat)))


def power_law_fields(
    key: PRNGKeyArray, count: int, size: int, exponent: float = 4.0, dtype=None
) -> Array:
    r"""`count` fields `(size, size)` with power spectrum $\propto k^{-\text{exponent}}$
    as the SMDP data (the FyeldGenerator recipe): complex white noise $a + ib$ on every
    FFT mode times $\sqrt{P(k)}$, $k = |$`fftfreq(size)`$|$, $P(0) = 0$, real part of the
    inverse FFT. Not normalised (the experiment standardises with the training set)."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    freq = jnp.fft.fftfreq(size).astype(dtype)
    k = jnp.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2)
    amp = jnp.where(k > 0, jnp.where(k > 0, k, 1.0) ** (-exponent / 2), 0.0)
    re, im = jr.normal(key, (2, count, size, size), dtype)
    return jnp.real(jnp.fft.ifft2(lax.complex(re * amp[None], im * amp[None])))


class ResNetScore(eqx.Module):
    r"""The SMDP heat experiment's score network, simplified: a stride-1 (no
    down-sampling) residual network on `(n, n)` fields with circular padding and the
    time as an input channel, `blocks` residual blocks of two `kernel`-wide convolutions
    with leaky ReLU between a lifting and a projecting convolution. (The authors' model
    is an encoder–decoder of this kind with 5 + 5 blocks, kernel 4, a skip connection and
    dropout; this one keeps its ingredients at a CPU-sized width.)"""

    lift: Conv
    blocks: tuple[tuple[Conv, Conv], ...]
    project: Conv

    def __init__(self, channels: int = 32, blocks: int = 4, kernel: int = 3, *, key):
        keys = iter(jr.split(key, 2 * blocks + 2))
        conv = lambda a, b: Conv(2, a, b, kernel, padding_mode="CIRCULAR", key=next(keys))
        self.lift = conv(2, channels)
        self.blocks = tuple(
            (conv(channels, channels), conv(channels, channels)) for _ in range(blocks)
        )
        self.project = conv(channels, 1)

    def __call__(self, x, t, cond=None):
        del cond
        h = jnp.stack([x, jnp.full_like(x, t)])
        h = self.lift(h)
        for a, b in self.blocks:
            h = h + b(jax.nn.leaky_relu(a(jax.nn.leaky_relu(h))))
        return self.project(jax.nn.leaky_relu(h))[0]


def _augment(x, key):
    """Random flips and quarter turns of square fields `(batch, n, n)` (the authors'
    training augmentation)."""
    k1, k2, k3 = jr.split(key, 3)
    x = jnp.where(jr.bernoulli(k1, shape=(x.shape[0], 1, 1)), x[:, ::-1], x)
    x = jnp.where(jr.bernoulli(k2, shape=(x.shape[0], 1, 1)), x[:, :, ::-1], x)
    return jnp.where(jr.bernoulli(k3, shape=(x.shape[0], 1, 1)), jnp.swapaxes(x, 1, 2), x)


def fit_smdp(
    network,
    step: Step,
    data: Array,
    *,
    key: PRNGKeyArray,
    noise,
    end_time: float,
    num_steps: int,
    window=6,
    iterations: int = 1000,
    batch_size: int = 4,
    optimiser: optax.GradientTransformation | None = None,
    augment: bool = True,
    callback: Callable | None = None,
):
    """Train a score `network(x, t)` through the physics `step` (SMDP): each iteration
    draws `batch_size` states of `data` `(N, *shape)` (flipped and turned at random if
    `augment`, for square 2-D fields), simulates them forward with noise `g` on a fresh
    jittered grid of `num_steps` steps to `end_time`, and takes one optimiser step on
    `smdp_loss` from a random window start. `window` is an int or a function of the
    iteration (the authors grow it from 6 towards `num_steps`; each distinct length
    compiles once). Default optimiser: the authors' clip(10) then Adam(1e-4).
    `callback(iteration, loss)` is called every iteration (progress, early stopping by
    raising). Returns the trained network and the losses."""
    if augment and (data.ndim != 3 or data.shape[1] != data.shape[2]):
        raise ValueError(
            f"`augment` flips and turns square 2-D fields, `data` (N, n, n); got shape "
            f"{data.shape} (pass augment=False)."
        )
    optimiser = optimiser or optax.chain(optax.clip_by_global_norm(10.0), optax.adam(1e-4))
    params, static = eqx.partition(network, eqx.is_inexact_array)
    state = optimiser.init(params)

    @eqx.filter_jit
    def update(params, state, batch, key, window):
        times = jittered_times(key, end_time, num_steps, batch.dtype)
        keys = jr.split(jr.fold_in(key, 1), batch.shape[0])
        trajs = jax.vmap(lambda x, k: forward_trajectory(step, x, times, noise, key=k))(batch, keys)
        start = jr.randint(jr.fold_in(key, 2), (), 0, num_steps - window + 1)

        def loss(params):
            net = eqx.combine(params, static)
            return smdp_loss(net, step, trajs, times, start, window, noise)

        value, grads = jax.value_and_grad(loss)(params)
        with jax.numpy_dtype_promotion("standard"):  # optax's int32 step counter
            updates, state = optimiser.update(grads, state, params)
        return eqx.apply_updates(params, updates), state, value

    losses = []
    for i in range(iterations):
        key, pick, aug, run = jr.split(key, 4)
        batch = data[jr.randint(pick, (batch_size,), 0, data.shape[0])]
        if augment:
            batch = _augment(batch, aug)
        w = int(window(i) if callable(window) else window)
        if not 1 <= w <= num_steps:
            raise ValueError(f"`window` must lie in [1, num_steps={num_steps}]; got {w}.")
        params, state, value = update(params, state, batch, run, w)
        losses.append(float(value))
        if callback is not None:
            callback(i, losses[-1])
    return eqx.combine(params, static), np.asarray(losses)
