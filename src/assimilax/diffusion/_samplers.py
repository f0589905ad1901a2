r"""Reverse-time samplers for any score function `score(x, t) -> array like x`.

Each takes a batch `x_init` of samples of the reference distribution at `t_max`
(`sde.prior_sample`), `vmap`s over it, and returns samples at `t_min`.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.random as jr
from jax import lax

from .._custom_types import Array, Float, PRNGKeyArray
from ._sde import AbstractSDE


ScoreFn = Callable[[Array, Array], Array]


def _reverse_drift(sde, score, x, t, weight):
    """`f x - weight * g^2 * score` (weight 1: reverse SDE, 1/2: probability flow)."""
    g2 = sde.diffusion(t) ** 2
    return sde.drift(x, t) - weight * g2.astype(x.dtype) * score(x, t)


def reverse_em_step(sde, score, x, t, t_next, key, last):
    """One reverse Euler–Maruyama step of `x` from `t` down to `t_next` with the score
    `score(x, t)` (noise-free if `last`): the step every reverse-SDE sampler and the
    score filters share."""
    dt = (t - t_next).astype(x.dtype)
    mean = x - _reverse_drift(sde, score, x, t, 1.0) * dt
    noise = sde.diffusion(t).astype(x.dtype) * jnp.sqrt(dt) * jr.normal(key, x.shape, x.dtype)
    return jnp.where(last, mean, mean + noise)


def _check_batch(x_init):
    x_init = jnp.asarray(x_init)
    if x_init.ndim < 2:
        raise ValueError(
            "`x_init` must be a batch of samples, shape (num_samples, *state_shape); got "
            f"shape {x_init.shape}."
        )
    return x_init


def euler_maruyama(
    sde: AbstractSDE,
    score: ScoreFn,
    x_init: Float[Array, " num *state"],
    *,
    key: PRNGKeyArray,
    steps: int = 500,
) -> Float[Array, " num *state"]:
    r"""Euler–Maruyama on the reverse SDE $dx = [f x - g^2 s(x, t)]\,dt + g\,d\bar W$
    from `t_max` to `t_min` in `steps` uniform steps; the last step is noise-free."""
    x_init = _check_batch(x_init)
    times = sde.time_grid(steps)

    def one(x, key):
        def body(x, inputs):
            i, t, t_next, k = inputs
            return reverse_em_step(sde, score, x, t, t_next, k, i == steps - 1), None

        keys = jr.split(key, steps)
        inputs = (jnp.arange(steps), times[:-1], times[1:], keys)
        return lax.scan(body, x, inputs)[0]

    return jax.vmap(one)(x_init, jr.split(key, x_init.shape[0]))


def predictor_corrector(
    sde: AbstractSDE,
    score: ScoreFn,
    x_init: Float[Array, " num *state"],
    *,
    key: PRNGKeyArray,
    steps: int = 500,
    corrector_steps: int = 1,
    snr: float = 0.16,
) -> Float[Array, " num *state"]:
    r"""Predictor–corrector sampling (Song et al. 2021): at each time, `corrector_steps`
    Langevin steps $x \leftarrow x + \epsilon s + \sqrt{2\epsilon} z$, then one
    Euler–Maruyama predictor step. The Langevin step is
    $\epsilon = 2 (\text{snr}\,\overline{\|z\|} / \overline{\|s\|})^2$ with norms
    averaged over the batch (per-sample norms make it unstable in low dimension)."""
    x_init = _check_batch(x_init)
    times = sde.time_grid(steps)
    num = x_init.shape[0]
    batch_score = jax.vmap(score, in_axes=(0, None))
    norms = lambda v: jnp.mean(jnp.sqrt(jnp.sum(v.reshape(num, -1) ** 2, axis=1)))

    def langevin(x, t, key):
        def body(x, k):
            grad = batch_score(x, t)
            z = jr.normal(k, x.shape, x.dtype)
            eps = 2 * (snr * norms(z) / jnp.maximum(norms(grad), 1e-12)) ** 2
            return x + eps * grad + jnp.sqrt(2 * eps) * z, None

        return lax.scan(body, x, jr.split(key, corrector_steps))[0]

    def body(x, inputs):
        i, t, t_next, k = inputs
        kc, kp = jr.split(k)
        x = langevin(x, t, kc)
        step = lambda x, k: reverse_em_step(sde, score, x, t, t_next, k, i == steps - 1)
        return jax.vmap(step)(x, jr.split(kp, num)), None

    inputs = (jnp.arange(steps), times[:-1], times[1:], jr.split(key, steps))
    return lax.scan(body, x_init, inputs)[0]


def probability_flow(
    sde: AbstractSDE,
    score: ScoreFn,
    x_init: Float[Array, " num *state"],
    *,
    solver=None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
) -> Float[Array, " num *state"]:
    r"""Integrate the probability-flow ODE $\dot x = f x - \tfrac12 g^2 s(x, t)$ from
    `t_max` to `t_min` with diffrax (adaptive `Tsit5` by default): a deterministic
    map from reference samples to data samples."""
    x_init = _check_batch(x_init)
    import diffrax  # on first use: importing it costs ~0.25 s of every start-up

    solver = diffrax.Tsit5() if solver is None else solver
    term = diffrax.ODETerm(lambda t, x, args: _reverse_drift(sde, score, x, t, 0.5))
    controller = diffrax.PIDController(rtol=rtol, atol=atol)
    dt0 = -(sde.t_max - sde.t_min) / 50

    def one(x):
        sol = diffrax.diffeqsolve(
            term,
            solver,
            t0=sde.t_max,
            t1=sde.t_min,
            dt0=dt0,
            y0=x,
            stepsize_controller=controller,
            max_steps=max_steps,
        )
        return sol.ys[-1]

    return jax.vmap(one)(x_init)
