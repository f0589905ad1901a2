"""Training a `filters.LearnedPriorFilter` on a regime's own twin experiments, and
saving/loading it (issue 28)."""

import os
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .. import diffusion
from .._assimilate import assimilate
from ..filters import ETKF, LearnedPriorFilter, training_pairs
from ._presets import get_model
from ._regimes import Regime
from ._registry import make_observation
from ._twin import twin_inputs


def regime_run(regime: Regime, flt, seed, cycles, members, *, save_ensembles=False):
    """`(solution, truth)` of `flt` on `regime`'s twin experiment with seed `seed`."""
    setup, dyn = get_model(regime.model), regime.make_dynamics()
    obs = make_observation(dyn.state_shape, regime.obs_std, regime.observe, regime.operator)
    truth, series, members0, key = twin_inputs(
        dyn, obs, key=jr.key(seed), members=members, cycles=cycles,
        obs_interval=regime.obs_interval, truth_dynamics=regime.make_truth_dynamics(),
        **setup.start(regime.dim),
    )  # fmt: skip
    sol = assimilate(
        flt, dyn, series, flt.init(members0, key=key), key=key, truth=truth,
        save_ensembles=save_ensembles, scores=False, throw=False,
    )  # fmt: skip
    return sol, truth


def _pairs(regime, flt, seeds, cycles, members, burn_in=50, lost=50.0):
    """Training pairs from `flt`'s runs on `seeds`, after `burn_in` cycles; pairs with a
    component of |z| > `lost` (a run that lost track) or non-finite are left out."""
    zs, fs = [], []
    for seed in seeds:
        sol, truth = regime_run(regime, flt, seed, cycles, members, save_ensembles=True)
        z, f = training_pairs(sol.forecast_ensembles[burn_in:], truth[burn_in:])
        zn = np.asarray(z)
        keep = np.all(np.isfinite(zn), axis=1) & (np.abs(zn).max(axis=1) < lost)
        zs.append(z[keep])
        fs.append(f[keep])
    return jnp.concatenate(zs), jnp.concatenate(fs)


def train_learned_prior(
    regime: Regime, members: int, *, teacher=None, train_seeds=range(2000, 2020),
    train_cycles=2000, steps=5000, rounds=2, conditioned=True, width=128, depth=3,
    particles=300, sampler_steps=30, inflation=None, key=None, progress=False,
) -> LearnedPriorFilter:  # fmt: skip
    """Train a `LearnedPriorFilter` for `regime` at `members` members.

    Pairs (forecast members, truth) come from the `teacher` filter's twin runs (default
    the ETKF, inflation 1.05, rotation) on `train_seeds` (never the scoring seeds
    1, 2, ... nor the tuning seeds 1000, ...), each truth in its ensemble's frame; an
    `MLPScore` (`width`, `depth`, VP SDE) learns their law by denoising score matching
    (`steps` a round), conditioned on the ensemble's features unless `conditioned` is
    False; each further round (`rounds - 1`) adds pairs from the learned filter's own
    runs on the first four training seeds (500 cycles) and trains on. Progress bars with
    `progress`."""
    teacher = ETKF(1.05, rotate=True) if teacher is None else teacher
    key = jr.key(0) if key is None else key
    init_key, *round_keys = jr.split(key, rounds + 1)
    z, f = _pairs(regime, teacher, train_seeds, train_cycles, members)
    z_scale, f_mean, f_std = z.std(0), f.mean(0), f.std(0)
    sde = diffusion.VPSDE()
    network = diffusion.MLPScore(
        z.shape[1], width=width, depth=depth, cond_dim=f.shape[1] if conditioned else 0,
        key=init_key,
    )  # fmt: skip
    ema = None
    for i, round_key in enumerate(round_keys):
        result = diffusion.fit(
            network, z / z_scale[None], sde=sde, key=round_key, steps=steps, batch_size=256,
            cond=(f - f_mean[None]) / f_std[None] if conditioned else None, chunk_size=500,
            ema_network=ema, progress=progress,
        )  # fmt: skip
        network, ema = result.network, result.ema_network
        learned = LearnedPriorFilter(
            ema, sde, z_scale, f_mean, f_std, particles=particles, steps=sampler_steps,
            conditioned=conditioned, inflation=inflation,
        )  # fmt: skip
        if i + 1 < rounds:
            more_z, more_f = _pairs(regime, learned, list(train_seeds)[:4], 500, members)
            z, f = jnp.concatenate([z, more_z]), jnp.concatenate([f, more_f])
    return learned


def save_learned_prior(path: str | os.PathLike, flt: LearnedPriorFilter) -> Path:
    """Write `flt`'s network and training constants (`diffusion.save_network`,
    atomically); `load_learned_prior` reads them back."""
    return diffusion.save_network(
        path, flt.network, z_scale=np.asarray(flt.z_scale).tolist(),
        feature_mean=np.asarray(flt.feature_mean).tolist(),
        feature_std=np.asarray(flt.feature_std).tolist(), conditioned=flt.conditioned,
        ridge=flt.ridge,
    )  # fmt: skip


def load_learned_prior(path: str | os.PathLike, **settings) -> LearnedPriorFilter:
    """The `LearnedPriorFilter` saved at `path` (VP SDE), with `settings` (`particles`,
    `steps`, `inflation`) for its analysis."""
    network, meta = diffusion.load_network(path)
    names = ("z_scale", "feature_mean", "feature_std")
    if not set(names) <= set(meta):
        raise ValueError(f"{str(path)!r} is a network without a learned prior's constants.")
    dtype = next(x.dtype for x in jax.tree.leaves(network) if eqx.is_inexact_array(x))
    constants = (jnp.asarray(meta[name], dtype) for name in names)
    return LearnedPriorFilter(
        network,
        diffusion.VPSDE(),
        *constants,
        conditioned=meta.get("conditioned", True),
        ridge=meta.get("ridge", 0.05),
        **settings,
    )


def cache_path(regime: Regime, members: int) -> Path:
    """Where `learned_prior` keeps the prior of `regime` at `members` members:
    `$ASSIMILAX_CACHE` (default `~/.cache/assimilax`)`/learned/REGIME-nN-v1.eqx`."""
    root = os.environ.get("ASSIMILAX_CACHE") or Path.home() / ".cache" / "assimilax"
    return Path(root) / "learned" / f"{regime.name}-n{members}-v1.eqx"


def learned_prior(regime: Regime, members: int, *, progress=False, **settings):
    """`(filter, note)`: the learned prior of `regime` at `members` members, loaded from
    `cache_path` or trained with `train_learned_prior`'s defaults and saved there (the
    `note` says which, with the seconds of training); `settings` as `load_learned_prior`.
    For states of at most 10 values (the network is not local: a grid needs a local,
    translation-invariant one, not built yet)."""
    if regime.dim > 10:
        raise ValueError(
            f"The learned prior is built for states of at most 10 values; {regime.name} has "
            f"{regime.dim} (a local network for grids is not built yet)."
        )
    path = cache_path(regime, members)
    if path.is_file():
        return load_learned_prior(path, **settings), f"learned prior loaded from {path}"
    start = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_learned_prior(path, train_learned_prior(regime, members, progress=progress))
    seconds = time.perf_counter() - start
    note = f"learned prior trained in {seconds:.0f} s and saved to {path}"
    return load_learned_prior(path, **settings), note
