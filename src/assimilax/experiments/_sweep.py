"""Sweeps: a grid of filter settings x seeds in one compiled, vmapped run."""

import itertools
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._assimilate import assimilate
from .._checks import check_memory
from .._ensemble import Ensemble
from .._io import describe
from .._results import RESULTS
from .._schema import model_time_attrs
from .._streams import ObservationSeries
from .._timing import Stopwatch
from ..dynamics import AbstractDynamics
from ..filters import AbstractFilter
from ..metrics import divergence, time_average
from ..observations import AbstractObservation
from ._twin import _check_inputs, twin_inputs


# Per-cycle diagnostics kept for every cell (scalars per cycle: memory O(grid x seeds x K)).
PER_CYCLE = ("rmse_analysis", "rmse_forecast", "spread_analysis", "innovation_ratio")


def stack_filters(filters: Sequence[AbstractFilter]) -> AbstractFilter:
    """One filter whose array fields have a leading grid axis, from filters that differ
    only in array values (e.g. `LETKF(inflation=i, radius=r)` over a grid): what
    `equinox.filter_vmap` maps over. A setting that changes a filter's structure (a
    static field such as `rotate`, or `inflation=None` beside a number) is an error."""
    arrays, static = zip(*(eqx.partition(f, eqx.is_array) for f in filters), strict=True)
    structure = jax.tree.structure(arrays[0])
    for i, (a, s) in enumerate(zip(arrays, static, strict=True)):
        if jax.tree.structure(a) != structure or not eqx.tree_equal(s, static[0]):
            raise ValueError(
                f"Grid point {i} builds a filter of another structure than point 0 "
                f"({describe(filters[i])} vs {describe(filters[0])}): only array-valued "
                "settings can be swept in one run; loop over the others."
            )
        for leaf, first in zip(jax.tree.leaves(a), jax.tree.leaves(arrays[0]), strict=True):
            if jnp.shape(leaf) != jnp.shape(first):
                raise ValueError(f"Grid point {i} changes the shape of a filter array.")
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *arrays)
    return eqx.combine(stacked, static[0])


def _check_grid(grid) -> dict[str, np.ndarray]:
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError("`grid` must map at least one setting name to its values.")
    out = {}
    for name, values in grid.items():
        v = np.asarray(values)
        if v.ndim != 1 or v.size == 0:
            raise ValueError(f"grid[{name!r}] must be a non-empty 1-D sequence; got {values!r}.")
        if name in ("seed", "members", "time"):
            raise ValueError(f"grid[{name!r}]: {name!r} is a dimension of the sweep itself.")
        out[name] = v
    return out


# Cells (grid points x seeds) of one sweep at most: each point builds a filter in Python.
MAX_CELLS = 1_000_000


def check_sweep_size(grid, seeds: int, members: int, state_size: int, cycles: int) -> None:
    """Refuse, before any filter is built or compiled, a sweep of more than `MAX_CELLS`
    cells or whose vmapped run would not fit in memory: every cell holds an ensemble
    and its analysis' working arrays (~30 ensemble copies, `members^2` per local
    analysis) and its per-cycle diagnostics at once."""
    points = math.prod(len(np.atleast_1d(v)) for v in grid.values())
    cells = points * seeds
    if cells > MAX_CELLS:
        raise ValueError(
            f"`grid` x `seeds` makes {cells:,} cells ({points:,} points x {seeds} seeds), "
            f"more than the {MAX_CELLS:,} a sweep takes; use fewer values."
        )
    per_cell = (
        8.0 * (30 * members * (state_size + members) + state_size * members**2 + 8 * cycles)
        + 16.0 * cycles * state_size / points
    )
    check_memory(
        cells * per_cell, f"A sweep of {cells:,} cells ({points:,} points x {seeds} seeds)"
    )


def sweep(
    make_filter: Callable[..., AbstractFilter],
    grid: Mapping[str, Sequence],
    dynamics: AbstractDynamics,
    observation: AbstractObservation,
    *,
    seeds: Sequence[int] = (0,),
    members: int | Sequence[int],
    cycles: int,
    obs_interval: float,
    burn_in: int,
    x0,
    spinup_time: float = 0.0,
    init_std: float = 1.0,
    init_length_scale: float | None = None,
    truth_dynamics: AbstractDynamics | None = None,
    progress: bool = False,
):
    r"""Run every setting of `grid` x every seed as twin experiments, the grid vmapped
    in one compiled call per seed (one compilation per ensemble size), and return an
    `xarray.Dataset`; with `progress`, a line per seed on standard error with the time
    taken and an estimate of the time left.

    `make_filter(**point)` builds the filter of each point of the Cartesian product of
    `grid` (e.g. `grid={"inflation": [1.0, 1.02, 1.05], "radius": [2.0, 4.0]}` with
    `make_filter=lambda inflation, radius: LETKF(inflation=inflation, radius=radius)`).
    The settings must be array-valued fields of the filter (see `stack_filters`), so
    that one compilation serves the whole grid. Seed `s` is the twin experiment
    `twin_experiment(..., key=jax.random.key(s))` of the same arguments: the same truth,
    observations, initial ensemble and filter key, so a cell's numbers are those of
    that twin experiment (to rounding: vmapped arithmetic may differ in the last bits).
    `members` may be a sequence: ensemble sizes change array shapes, so they are an
    outer loop, one compilation each.

    The dataset has dimensions `members`, the grid's names, `seed` and `time`:
    per-cycle `rmse_analysis`, `rmse_forecast`, `spread_analysis` and
    `innovation_ratio`; time averages after `burn_in` `rmse` and `spread`; `failed`
    (non-finite) and `diverged` (`metrics.divergence`); `wall_seconds(members)`
    (compilation included) and `compile_seconds(members)`. `best_setting(ds)` reads the best cell.
    """
    import xarray as xr

    values = _check_grid(grid)
    sizes = [members] if isinstance(members, int) else list(members)
    if not sizes:
        raise ValueError("`members` must be an ensemble size or a non-empty sequence of them.")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("`seeds` must hold at least one seed.")
    check_sweep_size(values, len(seeds), max(sizes), math.prod(dynamics.state_shape), cycles)
    points = [dict(zip(values, p, strict=True)) for p in itertools.product(*values.values())]
    filters = [make_filter(**{k: v.item() for k, v in p.items()}) for p in points]
    _check_inputs({"grid": filters[0]}, min(sizes), cycles, burn_in, obs_interval, init_std)
    stacked = stack_filters(filters)
    setup = dict(
        cycles=cycles, obs_interval=obs_interval, x0=x0, spinup_time=spinup_time,
        init_std=init_std, init_length_scale=init_length_scale, truth_dynamics=truth_dynamics,
    )  # fmt: skip
    per_size, seconds = _run_sizes(stacked, dynamics, observation, sizes, seeds, setup, progress)

    shape = (len(sizes), *(v.size for v in values.values()), len(seeds), cycles)
    dims = ("members", *values, "seed", "time")
    data = {
        name: (dims, np.stack([o[name] for o in per_size]).reshape(shape)) for name in PER_CYCLE
    }
    cells = dims[:-1]
    rmse = time_average(np.moveaxis(data["rmse_analysis"][1], -1, 0), burn_in)
    spread = time_average(np.moveaxis(data["spread_analysis"][1], -1, 0), burn_in)
    ratio = data["innovation_ratio"][1].reshape(-1, cycles)
    diverged = np.array([divergence(r, burn_in) for r in ratio]).reshape(shape[:-1])
    failed = np.stack([o["failed"] for o in per_size]).reshape(shape[:-1])
    data.update(
        rmse=(cells, rmse, {"long_name": "time-averaged analysis RMSE after burn-in"}),
        spread=(cells, spread, {"long_name": "time-averaged analysis spread after burn-in"}),
        failed=(cells, failed.astype(np.int8), {"long_name": "non-finite forecast or analysis"}),
        diverged=(cells, diverged.astype(np.int8), {"long_name": "lost track"}),
        wall_seconds=(("members",), np.asarray(seconds)[:, 0], {"units": "s"}),
        compile_seconds=(("members",), np.asarray(seconds)[:, 1], {"units": "s"}),
    )
    times = obs_interval * np.arange(1, cycles + 1)
    coords = {"members": sizes, **values, "seed": seeds, "time": times}
    attrs = {
        "title": "assimilax sweep",
        "filter_description": describe(filters[0]),
        "burn_in": burn_in,
        "cycles": cycles,
        "obs_interval": obs_interval,
        "dynamics": describe(dynamics),
        "observation_operator": describe(observation),
    }
    ds = xr.Dataset(data, coords=coords, attrs=attrs)
    ds["time"].attrs.update(model_time_attrs())
    return ds


def _run_sizes(stacked, dynamics, observation, sizes, seeds, setup, progress):
    """The per-cycle outputs `(grid, seed, K)` per ensemble size, one compiled call per
    seed, and the seconds each size took; a progress line per seed if `progress`."""
    settings = jax.tree.leaves(eqx.filter(stacked, eqx.is_array))[0].shape[0]
    per_size, seconds = [], []
    for i, n in enumerate(sizes):
        start = time.perf_counter()
        with Stopwatch() as watch:  # and the compile seconds of this size
            parts = []
            for j, s in enumerate(seeds):
                truth, series, members0, key = twin_inputs(
                    dynamics, observation, key=jr.key(s), members=n, **setup
                )
                out = _run_grid(
                    stacked, dynamics, series, members0.members[None], series.values[None],
                    truth[None], key[None],
                )  # fmt: skip
                parts.append(jax.tree.map(np.asarray, out))
                if progress:
                    done = i * len(seeds) + j + 1
                    elapsed = time.perf_counter() - start + sum(w for w, _ in seconds)
                    left = elapsed / done * (len(sizes) * len(seeds) - done)
                    print(
                        f"sweep: members {n}, seed {j + 1}/{len(seeds)} of {settings} settings "
                        f"({elapsed:.0f} s, about {left:.0f} s left)",
                        file=sys.stderr,
                        flush=True,
                    )
            # Seeds along the axis after the grid's (as one vmapped call over seeds gave).
            per_size.append(jax.tree.map(lambda *a: np.concatenate(a, axis=1), *parts))
        seconds.append((watch.seconds, watch.compile_seconds))
    return per_size, seconds


@eqx.filter_jit
def _run_grid(filters, dynamics, series, members0, y, truth, keys):
    """Per-cycle diagnostics `(grid, seed, K)` of the stacked `filters` (grid axis) on
    each seed's observations `y`, truth and initial members (seed axis)."""

    def one(flt, members, values, x_true, key):
        run = ObservationSeries(series.observation, series.times, values)
        belief0 = flt.init(Ensemble(members), key=key)
        sol = assimilate(
            flt, dynamics, run, belief0, key=key, truth=x_true, scores=False, throw=False
        )
        names = dict(
            zip(
                PER_CYCLE,
                ("rmse_analysis", "rmse_forecast", "analysis_spread", "innovation_ratio"),
                strict=True,
            )
        )
        out = {name: getattr(sol, attr) for name, attr in names.items()}
        ratio = out["innovation_ratio"]
        if ratio is None:  # beliefs without an innovation statistic
            out["innovation_ratio"] = jnp.full_like(sol.rmse_analysis, jnp.nan)
        out["failed"] = sol.result != RESULTS.successful
        return out

    over_seeds = jax.vmap(one, in_axes=(None, 0, 0, 0, 0))
    return eqx.filter_vmap(over_seeds, in_axes=(eqx.if_array(0), None, None, None, None))(
        filters, members0, y, truth, keys
    )


def best_setting(ds) -> dict:
    """The best cell of a `sweep` dataset per ensemble size: the grid point with the
    lowest RMSE averaged over seeds among those that neither failed nor diverged on
    any seed; `{members: {setting: value, ..., 'rmse': ...}}` (None where every point
    failed)."""
    grid = [d for d in ds["rmse"].dims if d not in ("members", "seed")]
    ok = (ds["failed"].max("seed") == 0) & (ds["diverged"].max("seed") == 0)
    score = ds["rmse"].mean("seed").where(ok)
    out = {}
    for n in ds["members"].values.tolist():
        cell = score.sel(members=n)
        if not bool(np.isfinite(cell).any()):
            out[n] = None
            continue
        index = np.unravel_index(int(np.nanargmin(cell.values)), cell.shape)
        point = {d: cell[d].values[i].item() for d, i in zip(grid, index, strict=True)}
        out[n] = {**point, "rmse": float(cell.values[index])}
    return out
