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
from ..filters import (
    ETKF,
    LETKF,
    RTPP,
    RTPS,
    LearnedPriorFilter,
    MultiplicativeInflation,
    NoInflation,
    training_pairs,
)
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


def _pairs(regime, flt, seeds, cycles, members, local, burn_in=50, lost=50.0):
    """Training pairs from `flt`'s runs on `seeds`, after `burn_in` cycles; pairs with a
    component of |z| > `lost` (a run that lost track) or non-finite are left out."""
    zs, fs = [], []
    for seed in seeds:
        sol, truth = regime_run(regime, flt, seed, cycles, members, save_ensembles=True)
        z, f = training_pairs(sol.forecast_ensembles[burn_in:], truth[burn_in:], local=local)
        zn = np.asarray(z)
        keep = np.all(np.isfinite(zn), axis=1) & (np.abs(zn).max(axis=1) < lost)
        zs.append(z[keep])
        fs.append(f[keep])
    return jnp.concatenate(zs), jnp.concatenate(fs)


def _constants(z, f, local):
    """`(z_scale, feature_mean, feature_std)` of the training pairs: per component, or
    with `local` per channel (one value for every site: translation invariance)."""
    if not local:
        return z.std(0), f.mean(0), f.std(0)
    d = z.shape[1]
    channels = f.reshape(f.shape[0], -1, d)
    repeat = lambda c: jnp.repeat(c, d)
    return jnp.full(d, z.std()), repeat(channels.mean((0, 2))), repeat(channels.std((0, 2)))


def train_learned_prior(
    regime: Regime, members: int, *, teacher=None, train_seeds=range(2000, 2020),
    train_cycles=2000, steps=5000, rounds=2, conditioned=True, width=None, depth=None,
    particles=None, sampler_steps=None, inflation=None, local=None, analysis=None, key=None,
    progress=False, training_regime=None,
) -> LearnedPriorFilter:  # fmt: skip
    """Train a `LearnedPriorFilter` for `regime` at `members` members.

    Pairs (forecast members, truth) come from the `teacher` filter's twin runs (default
    the ETKF, inflation 1.05, rotation; on grids the regime's tuned LETKF, else inflation
    1.02 and radius 4) on
    `train_seeds` (never the scoring seeds 1, 2, ... nor the tuning seeds 1000, ...),
    each truth in its ensemble's frame; a score network (VP SDE) learns their law by
    denoising score matching (`steps` a round), conditioned on the ensemble's features
    unless `conditioned` is False: an `MLPScore` (`width` 128, `depth` 3; `particles`
    300 samples of `sampler_steps` 30 steps, importance-weighted), or on a ring of sites
    (`local`, default for states over 10 values) a `LocalScore` (`width` 16, `depth` 3;
    100 samples of 10 steps updated by `analysis`, default the LETKF with radius 4 as
    Lorenz-96's: the variant that tracked on a tuning seed; width 32, depth 4 and 20
    steps lost track on every scoring seed, see the results page). Each further
    round (`rounds - 1`) adds pairs from the learned filter's own runs on the first four
    training seeds (500 cycles) and trains on. `training_regime` (default `regime`)
    makes the pairs, e.g. another model (a model-error experiment). Progress bars with
    `progress`."""
    local = regime.dim > 10 if local is None else bool(local)
    if teacher is None and local:  # the regime's tuned LETKF, else Lorenz-96's
        teacher = LETKF(**regime.filter_settings.get("letkf", {"radius": 4.0, "inflation": 1.02}))
    elif teacher is None:
        teacher = ETKF(1.05, rotate=True)
    if local and analysis is None:
        analysis = LETKF(radius=4.0)
    particles = particles or _SAMPLER[local][0]
    sampler_steps = sampler_steps or _SAMPLER[local][1]
    source = regime if training_regime is None else training_regime
    key = jr.key(0) if key is None else key
    init_key, *round_keys = jr.split(key, rounds + 1)
    z, f = _pairs(source, teacher, train_seeds, train_cycles, members, local)
    z_scale, f_mean, f_std = _constants(z, f, local)
    sde = diffusion.VPSDE()
    if local:
        network = diffusion.LocalScore(
            z.shape[1], width=width or 16, depth=depth or 3,
            cond_channels=f.shape[1] // z.shape[1] if conditioned else 0, key=init_key,
        )  # fmt: skip
    else:
        network = diffusion.MLPScore(
            z.shape[1], width=width or 128, depth=depth or 3,
            cond_dim=f.shape[1] if conditioned else 0, key=init_key,
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
            conditioned=conditioned, inflation=inflation, local=local, analysis=analysis,
        )  # fmt: skip
        if i + 1 < rounds:
            more = _pairs(source, learned, list(train_seeds)[:4], 500, members, local)
            z, f = jnp.concatenate([z, more[0]]), jnp.concatenate([f, more[1]])
    return learned


# The default samples and sampler steps of an analysis, by `local`.
_SAMPLER = {False: (300, 30), True: (100, 10)}


def _analysis_settings(analysis) -> dict | None:
    """The JSON form of a learned prior's `analysis` filter (none, an ETKF or an LETKF,
    without inflation)."""
    if analysis is None:
        return None
    if type(analysis) is ETKF:
        return {"filter": "etkf"}
    if type(analysis) is LETKF:
        return {"filter": "letkf", "radius": float(analysis.localisation.radius)}
    raise ValueError(
        f"save_learned_prior keeps an ETKF or LETKF `analysis`; got {type(analysis).__name__} "
        "(save without it and pass it to load_learned_prior)."
    )


def _analysis_filter(settings: dict | None):
    if settings is None:
        return None
    if settings["filter"] == "letkf":
        return LETKF(radius=settings["radius"])
    return ETKF()


def _inflation_settings(inflation) -> dict | None:
    """The JSON form of a learned prior's `inflation` (none, multiplicative, RTPS, RTPP)."""
    if isinstance(inflation, NoInflation):
        return None
    for kind, cls, field in _INFLATIONS:
        if type(inflation) is cls:
            return {"kind": kind, "value": float(getattr(inflation, field))}
    raise ValueError(
        "save_learned_prior keeps no, multiplicative, RTPS or RTPP inflation; got "
        f"{type(inflation).__name__} (save without it and pass it to load_learned_prior)."
    )


_INFLATIONS = (
    ("multiplicative", MultiplicativeInflation, "factor"),
    ("rtps", RTPS, "alpha"),
    ("rtpp", RTPP, "alpha"),
)


def _inflation_filter(settings: dict | None):
    if settings is None:
        return None
    for kind, cls, _ in _INFLATIONS:
        if kind == settings.get("kind"):
            return cls(settings["value"])
    raise ValueError(f"unknown inflation {settings!r} in a saved learned prior.")


def save_learned_prior(path: str | os.PathLike, flt: LearnedPriorFilter) -> Path:
    """Write `flt`'s network, training constants and analysis settings (samples, sampler
    steps, analysis filter, inflation, coupling; `diffusion.save_network`, atomically);
    `load_learned_prior` reads them back: the same filter."""
    return diffusion.save_network(
        path, flt.network, z_scale=np.asarray(flt.z_scale).tolist(),
        feature_mean=np.asarray(flt.feature_mean).tolist(),
        feature_std=np.asarray(flt.feature_std).tolist(), conditioned=flt.conditioned,
        ridge=flt.ridge, local=flt.local, analysis=_analysis_settings(flt.analysis),
        particles=flt.particles, steps=flt.steps, coupling=flt.coupling,
        inflation=_inflation_settings(flt.inflation),
    )  # fmt: skip


def load_learned_prior(path: str | os.PathLike, **settings) -> LearnedPriorFilter:
    """The `LearnedPriorFilter` saved at `path` (VP SDE), with `settings` (`particles`,
    `steps`, `inflation`, `analysis`, `coupling`: default the saved ones) for its
    analysis."""
    network, meta = diffusion.load_network(path)
    names = ("z_scale", "feature_mean", "feature_std")
    if not set(names) <= set(meta):
        raise ValueError(f"{str(path)!r} is a network without a learned prior's constants.")
    dtype = next(x.dtype for x in jax.tree.leaves(network) if eqx.is_inexact_array(x))
    constants = (jnp.asarray(meta[name], dtype) for name in names)
    local = bool(meta.get("local", False))
    settings.setdefault("analysis", _analysis_filter(meta.get("analysis")))
    settings.setdefault("inflation", _inflation_filter(meta.get("inflation")))
    settings.setdefault("coupling", meta.get("coupling", "draw"))
    # Files from before these were saved: `train_learned_prior`'s defaults.
    settings.setdefault("particles", meta.get("particles", _SAMPLER[local][0]))
    settings.setdefault("steps", meta.get("steps", _SAMPLER[local][1]))
    return LearnedPriorFilter(
        network,
        diffusion.VPSDE(),
        *constants,
        conditioned=meta.get("conditioned", True),
        ridge=meta.get("ridge", 0.05),
        local=local,
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
    """
    path = cache_path(regime, members)
    if path.is_file():
        return load_learned_prior(path, **settings), f"learned prior loaded from {path}"
    start = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_learned_prior(path, train_learned_prior(regime, members, progress=progress))
    seconds = time.perf_counter() - start
    note = f"learned prior trained in {seconds:.0f} s and saved to {path}"
    return load_learned_prior(path, **settings), note
