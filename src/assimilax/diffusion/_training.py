r"""Denoising score matching, the training loop, and saving/loading networks.

The loss with the usual weighting $\lambda(t) = \sigma(t)^2$ is the noise-prediction
loss $E_{t, x_0, \varepsilon}\,\|\varepsilon_\theta(\alpha x_0 + \sigma\varepsilon, t) -
\varepsilon\|^2$ (Vincent 2011; Song et al. 2021), with $t \sim U(t_{\min}, t_{\max})$.
"""

import json
import os
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jax import lax

from .._custom_types import Array, Float, PRNGKeyArray
from .._io import atomic_write
from ._networks import LocalScore, MLPScore, UNetScore
from ._sde import AbstractSDE


def dsm_loss(network, sde: AbstractSDE, x0, *, key: PRNGKeyArray, cond=None):
    """Mean denoising score-matching (noise-prediction) loss over a batch `x0`
    `(B, *state)`, with optional conditioning `cond` `(B, p)`."""
    tkey, ekey = jr.split(key)
    batch = x0.shape[0]
    t = jr.uniform(tkey, (batch,), x0.dtype, sde.t_min, sde.t_max)
    xt, eps = jax.vmap(lambda x, s, k: sde.perturb(x, s, key=k))(x0, t, jr.split(ekey, batch))
    if cond is None:
        pred = jax.vmap(lambda x, s: network(x, s))(xt, t)
    else:
        pred = jax.vmap(network)(xt, t, cond)
    return jnp.mean((pred - eps) ** 2)


# Built once, so repeated `fit` calls reuse the compiled training step.
_DEFAULT_OPTIMISER = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))


def train_step(carry, key, data, cond, settings):
    """One optimiser step of denoising score matching on a random mini-batch of
    `data`, with the EMA update. `carry = (params, ema_params, opt_state)`;
    `settings = (static, sde, optimiser, batch_size, ema_decay)`. Returns
    `(carry, loss)`; a `lax.scan` body."""
    params, ema, opt_state = carry
    static, sde, optimiser, batch_size, ema_decay = settings
    bkey, lkey = jr.split(key)
    idx = jr.randint(bkey, (batch_size,), 0, data.shape[0])
    c = None if cond is None else cond[idx]

    def loss_fn(p):
        return dsm_loss(eqx.combine(p, static), sde, data[idx], key=lkey, cond=c)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimiser.update(grads, opt_state, params)
    params = eqx.apply_updates(params, updates)
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params)
    return (params, ema, opt_state), loss


@eqx.filter_jit
def _fit_chunk(carry, keys, data, cond, settings):
    return lax.scan(lambda c, k: train_step(c, k, data, cond, settings), carry, keys)


class FitResult(NamedTuple):
    """`network` (last iterate), `ema_network` (exponential moving average of the
    weights, usually the better sampler) and `losses` (one per step)."""

    network: eqx.Module
    ema_network: eqx.Module
    losses: Float[Array, " steps"]


def fit(
    network: eqx.Module,
    data: Float[Array, " N *state"],
    *,
    sde: AbstractSDE,
    key: PRNGKeyArray,
    steps: int = 1000,
    batch_size: int = 128,
    optimiser: optax.GradientTransformation | None = None,
    ema_decay: float = 0.999,
    cond: Array | None = None,
    chunk_size: int = 100,
    progress: bool = False,
    ema_network: eqx.Module | None = None,
) -> FitResult:
    """Train `network` by denoising score matching on samples `data` (`(N, *state)`;
    with `cond`, `(N, p)` parameters per sample).

    Steps run as a `lax.scan` in compiled chunks of `chunk_size`; a progress bar over
    chunks is shown with `progress=True`. Each step draws a mini-batch of `batch_size`
    samples with replacement. `optimiser` defaults to Adam (learning rate 1e-3) with
    global-norm clipping at 1 (built once: repeated calls with the same optimiser
    object and shapes compile once). Pass the previous `ema_network` to continue an average
    (fine-tuning). Returns a `FitResult`.
    """
    data = jnp.asarray(data)
    if data.ndim < 2 or data.shape[0] < 1:
        raise ValueError(f"`data` must have shape (N, *state_shape); got {data.shape}.")
    if cond is not None:
        cond = jnp.asarray(cond)
        if cond.ndim != 2 or cond.shape[0] != data.shape[0]:
            raise ValueError(
                f"`cond` must have shape (N, p) with N = {data.shape[0]}; got {cond.shape}."
            )
    if steps < 1 or batch_size < 1 or chunk_size < 1:
        raise ValueError("`steps`, `batch_size` and `chunk_size` must be positive.")
    if not 0 <= ema_decay < 1:
        raise ValueError(f"`ema_decay` must lie in [0, 1); got {ema_decay}.")
    optimiser = _DEFAULT_OPTIMISER if optimiser is None else optimiser
    params, static = eqx.partition(network, eqx.is_inexact_array)
    ema = params if ema_network is None else eqx.filter(ema_network, eqx.is_inexact_array)
    opt_state = optimiser.init(params)
    settings = (static, sde, optimiser, batch_size, ema_decay)

    keys = jr.split(key, steps)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, unit="step", desc="fit", leave=False)
    losses = []
    try:
        for lo in range(0, steps, chunk_size):
            chunk = keys[lo : lo + chunk_size]
            # optax mixes Python floats and int32 counters: standard promotion here,
            # whatever the caller's setting.
            with jax.numpy_dtype_promotion("standard"):
                (params, ema, opt_state), loss = _fit_chunk(
                    (params, ema, opt_state), chunk, data, cond, settings
                )
            losses.append(loss)
            if bar is not None:
                bar.update(chunk.shape[0])
                bar.set_postfix(loss=float(loss[-1]))
    finally:
        if bar is not None:
            bar.close()
    return FitResult(eqx.combine(params, static), eqx.combine(ema, static), jnp.concatenate(losses))


_NETWORKS = {"MLPScore": MLPScore, "UNetScore": UNetScore, "LocalScore": LocalScore}


def save_network(path: str | os.PathLike, network: eqx.Module, **metadata) -> Path:
    """Save a score network with its configuration: one JSON header line (class,
    hyperparameters, dtype, and any JSON-serialisable `metadata`, e.g. the SDE), then
    the weights (equinox serialisation). Written atomically."""
    name = type(network).__name__
    if name not in _NETWORKS:
        raise TypeError(f"Can save {', '.join(_NETWORKS)}; got {name}.")
    leaves = [x for x in jax.tree.leaves(network) if eqx.is_inexact_array(x)]
    header = {
        "class": name,
        "hyperparameters": network.hyperparameters(),
        "dtype": str(leaves[0].dtype),
        "metadata": metadata,
    }

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write((json.dumps(header) + "\n").encode())
            eqx.tree_serialise_leaves(f, network)

    return atomic_write(path, write)


def load_network(path: str | os.PathLike) -> tuple[eqx.Module, dict]:
    """Load a network written by `save_network`. Returns `(network, metadata)`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No such file: {str(path)!r}.")
    with open(path, "rb") as f:
        try:
            header = json.loads(f.readline().decode())
            cls = _NETWORKS[header["class"]]
        except (ValueError, KeyError, UnicodeDecodeError):
            raise ValueError(f"{str(path)!r} is not a network saved by save_network.") from None
        skeleton = cls(**header["hyperparameters"], key=jr.key(0))
        dtype = jnp.dtype(header["dtype"])
        skeleton = jax.tree.map(
            lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, skeleton
        )
        network = eqx.tree_deserialise_leaves(f, skeleton)
    return network, header["metadata"]
