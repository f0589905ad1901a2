"""The score filters next to the EnKF family: Lorenz-96 accuracy, an SPDE table, scaling.

    python benchmarks/score_filters.py [--twin] [--spde] [--local [--local-model ks]] [--scaling]
                                       [--dims 1000,...]

`--twin`: d=40, N=20, 500 cycles (burn-in 100), float64, one seed: linear observations
(all, unit noise, every 0.05) and arctan observations (all, noise 0.05, every 0.05), for
ETKF, LETKF and EnSF (defaults, and with likelihood_scale=10, t_min=0.01).
`--spde`: Kuramoto–Sivashinsky (L=32π, 128 points), every 4th point observed with noise
0.3 every 1.0, N=20, 200 cycles (burn-in 50), float64: LETKF (radius 16), EnSF, the
bootstrap PF and the trained score filter (CLI defaults): RMSE, CRPS, 90 % coverage,
spread, spectral error (`metrics.spectral_error`), s/cycle (SF: pre-training included).
`--local`: the localised score update as the dimension grows: arctan Lorenz-96 (all
observed, noise 0.05, every 0.05), N=20, 300 cycles (burn-in 60), float64, seed 0, at
d = 40, 200, 1000 (`--local-dims`): LETKF (preset), EnSF (defaults) and the local
hybrid score filter (radius 4, adaptive bandwidth at ESS 0.9 N, 32 nearest observations):
RMSE, its ratio to d = 40, s/cycle, peak resident memory. `--local-model ks`: the same on
Kuramoto–Sivashinsky with the grid spacing of L = 32π at 128 points (L = dπ/4), every 4th
point observed with noise 0.3 every 1.0, 200 cycles (burn-in 50): LETKF (radius 16,
inflation 1.02), EnSF and hybrid (`ks` presets).
`--scaling`: seconds per cycle of EnSF (N=20, K=100, arctan observations of every
component) at each dimension, split into forecast and analysis (compiled, best of 3),
float32, with the process's peak resident memory after each size.
"""

import os
import platform
import resource
import time

from _common import Parser, integer, listing


def _run(dynamics, observation, filters, obs_interval, *, cycles, burn_in, **start):
    """A twin experiment with N=20, seed 0."""
    import jax.random as jr

    import assimilax as ax

    return ax.twin_experiment(
        dynamics, observation, filters, key=jr.key(0), members=20, cycles=cycles,
        obs_interval=obs_interval, burn_in=burn_in, **start,
    )  # fmt: skip


def _l96_twin(d, operator, std, filters, *, cycles, burn_in):
    """A Lorenz-96 twin at dimension `d`, all observed every 0.05, N=20, seed 0."""
    import assimilax as ax

    setup = ax.MODELS["lorenz96"]
    obs = ax.make_observation(d, std, "all", operator)
    start = dict(x0=setup.initial_state(d), spinup_time=20.0, init_std=1.0)
    return _run(setup.make_dynamics(d), obs, filters, 0.05, cycles=cycles, burn_in=burn_in, **start)


def _ks_twin(d, filters, *, cycles, burn_in):
    """Kuramoto–Sivashinsky at `d` points with the grid spacing of L = 32π at 128 points
    (L = dπ/4, so the dynamics per unit length stay the same as d grows), every 4th point
    observed with noise 0.3 every 1.0, N=20, seed 0."""
    import numpy as np

    import assimilax as ax
    from assimilax.dynamics import KuramotoSivashinsky

    phase = 2 * np.pi * np.arange(d) / d
    start = dict(
        x0=np.cos(phase) * (1 + np.sin(phase)),
        spinup_time=150.0,
        init_std=1.0,
        init_length_scale=2.0,
    )
    obs = ax.make_observation(d, 0.3, "every:4")
    dyn = KuramotoSivashinsky(d, d * np.pi / 4)
    return _run(dyn, obs, filters, 1.0, cycles=cycles, burn_in=burn_in, **start)


def _twin():
    import assimilax as ax
    from assimilax.diffusion import EnSFSDE
    from assimilax.filters import ETKF, EnsembleScoreFilter

    filters = {
        "etkf": ETKF(inflation=1.02),
        "letkf": ax.make_filter("letkf", "lorenz96"),
        "ensf": EnsembleScoreFilter(),
        "ensf_tuned": EnsembleScoreFilter(sde=EnSFSDE(t_min=0.01), likelihood_scale=10.0),
    }
    print("\nLorenz-96 d=40, N=20, 500 cycles, burn-in 100, float64, seed 0")
    print(
        f"{'observation':<22} {'filter':<11} {'rmse_a':>7} {'spread':>7} {'crps':>7} {'s/cycle':>8}"
    )
    for label, op, std in (("linear, std 1", "linear", 1.0), ("arctan, std 0.05", "arctan", 0.05)):
        ds = _l96_twin(40, op, std, filters, cycles=500, burn_in=100)
        for name, s in ax.summarise(ds).items():
            sec = float(ds["wall_seconds"].sel(filter=name)) / 500
            flag = " FAILED" if s["failed"] else ""
            print(
                f"{label:<22} {name:<11} {s['rmse_analysis']:>7.3f} {s['spread_analysis']:>7.3f} "
                f"{s['crps_analysis']:>7.3f} {sec:>8.4f}{flag}",
                flush=True,
            )


def _spde():
    import jax.random as jr

    import assimilax as ax

    setup = ax.MODELS["ks"]
    filters = {"letkf": ax.make_filter("letkf", "ks", radius=16.0)}
    start = time.perf_counter()
    filters["sf"] = ax.make_filter("sf", "ks")
    pretrain = time.perf_counter() - start
    for name in ("ensf", "pf"):
        filters[name] = ax.make_filter(name, "ks")
    cycles = 200
    ds = ax.twin_experiment(
        setup.make_dynamics(128),
        ax.make_observation(128, 0.3, "every:4"),
        filters,
        key=jr.key(0),
        members=20,
        cycles=cycles,
        obs_interval=1.0,
        burn_in=50,
        **setup.start(128),
    )
    print(
        "\nKuramoto-Sivashinsky L=32π, 128 points, every 4th observed (noise 0.3) every 1.0, "
        f"N=20, {cycles} cycles, burn-in 50, float64, seed 0"
    )
    print(
        f"{'filter':<7} {'rmse_a':>7} {'crps':>7} {'cov90':>6} {'spread':>7} {'spec_err':>9} "
        f"{'s/cycle':>8}"
    )
    for name, s in ax.summarise(ds).items():
        sec = float(ds["wall_seconds"].sel(filter=name)) / cycles
        extra = f"  (+{pretrain:.0f} s pre-training)" if name == "sf" else ""
        flag = " FAILED" if s["failed"] else ""
        print(
            f"{name:<7} {s['rmse_analysis']:>7.3f} {s['crps_analysis']:>7.3f} "
            f"{s['coverage_90']:>6.2f} {s['spread_analysis']:>7.3f} "
            f"{s['spectral_error_analysis']:>9.3f} {sec:>8.4f}{flag}{extra}",
            flush=True,
        )


def _best(fn, *args):
    import jax

    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def _scaling(dims):
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr

    import assimilax as ax
    from assimilax.dynamics import Lorenz96
    from assimilax.filters import EnsembleScoreFilter
    from assimilax.observations import Arctan, Identity

    print("\nEnSF scaling, Lorenz-96, N=20, K=100, arctan observations of all components, float32")
    print(f"{'d':>9} {'forecast s':>11} {'analysis s':>11} {'s/cycle':>9} {'peak RSS GiB':>13}")
    flt = EnsembleScoreFilter()
    for d in dims:
        dyn = Lorenz96(d)
        obs = Arctan(Identity(d, noise_std=jnp.float32(0.05)))
        x = (8 + jr.normal(jr.key(0), (20, d))).astype(jnp.float32)
        ens = ax.Ensemble(x)
        y = jnp.arctan(x[0])
        forecast = eqx.filter_jit(lambda f, m, e, k: f.forecast(e, m, 0.0, 0.05, key=k))
        update = eqx.filter_jit(lambda f, o, e, y, k: f.update(e, o, y, key=k))
        t_f = _best(forecast, flt, dyn, ens, jr.key(1))
        t_a = _best(update, flt, obs, ens, y, jr.key(2))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"{d:>9} {t_f:>11.4f} {t_a:>11.3f} {t_f + t_a:>9.3f} {rss:>13.2f}", flush=True)


def _local(dims, model):
    import assimilax as ax
    from assimilax.filters import LETKF, EnsembleScoreFilter, HybridScoreFilter

    if model == "ks":
        # The radii of the KS table (`--spde`, and the hybrid's preset).
        filters = {
            "letkf": LETKF(inflation=1.02, radius=16.0),
            "ensf": ax.make_filter("ensf", "ks"),
            "hybrid": ax.make_filter("hybrid", "ks"),
        }
        cycles, burn_in = 200, 50
        title = "KS (dx = π/4), every 4th point observed, noise 0.3, every 1.0"
        twin = lambda d: _ks_twin(d, filters, cycles=cycles, burn_in=burn_in)
    else:
        filters = {
            "letkf": ax.make_filter("letkf", "lorenz96"),
            "ensf": EnsembleScoreFilter(),
            "hybrid": HybridScoreFilter(radius=4.0, ess_target=0.9, max_local_observations=32),
        }
        cycles, burn_in = 300, 60
        title = "arctan Lorenz-96"
        twin = lambda d: _l96_twin(d, "arctan", 0.05, filters, cycles=cycles, burn_in=burn_in)
    print(f"\nLocal score update vs d: {title}, N=20, {cycles} cycles, float64, seed 0")
    head = f"{'d':>6} {'filter':<8} {'rmse_a':>7} {'/d=40':>6} {'spread':>7} {'s/cycle':>8}"
    print(f"{head} {'peak MB':>8}")
    first = {}
    for d in dims:
        ds = twin(d)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for name, s in ax.summarise(ds).items():
            first.setdefault(name, s["rmse_analysis"])
            sec = float(ds["wall_seconds"].sel(filter=name)) / cycles
            flag = " DIVERGED" if s["diverged"] else ""
            print(
                f"{d:>6} {name:<8} {s['rmse_analysis']:>7.3f} "
                f"{s['rmse_analysis'] / first[name]:>6.2f} {s['spread_analysis']:>7.3f} "
                f"{sec:>8.4f} {peak:>8.0f}{flag}",
                flush=True,
            )


def main():
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--twin", action="store_true")
    parser.add_argument("--spde", action="store_true")
    parser.add_argument("--local", action="store_true")
    parser.add_argument("--local-dims", type=listing(integer(4)), default="40,200,1000")
    parser.add_argument("--local-model", default="lorenz96", choices=("lorenz96", "ks"))
    parser.add_argument("--scaling", action="store_true")
    parser.add_argument("--dims", type=listing(integer(4)), default="1000,10000,100000,1000000")
    args = parser.parse_args()
    if not (args.twin or args.spde or args.local or args.scaling):
        parser.error("choose at least one of --twin, --spde, --local, --scaling")
    import jax

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}")
    print(f"jax {jax.__version__} ({jax.default_backend()})")
    if args.twin:
        jax.config.update("jax_enable_x64", True)
        _twin()
    if args.spde:
        jax.config.update("jax_enable_x64", True)
        _spde()
    if args.local:
        jax.config.update("jax_enable_x64", True)
        _local(args.local_dims, args.local_model)
    if args.scaling:
        jax.config.update("jax_enable_x64", False)
        _scaling(args.dims)


if __name__ == "__main__":
    main()
