"""Sweeps in one compiled run, and tuning by gradient from the observations alone.

    python benchmarks/sweep_tune.py [--cycles 1000] [--grid 10] [--sequential 5]

Lorenz-96 d=40, all observed every 0.05 with unit noise, N=20, seed 0, float64:

1. `assimilax.sweep` of a `--grid` x `--grid` LETKF grid (inflation 1.0-1.1 x radius
   1-10) and a `--grid`^2-point ETKF inflation grid (1.0-1.2), `--cycles` cycles, in one
   compiled run each (compilation included), against running configurations one after
   another with `assimilate` (compiled once, then `--sequential` of them timed and
   extrapolated to the grid): configuration-cycles per second and their ratio.
2. `assimilax.tune` (innovation likelihood and CRPS, no truth) from inflation 1.2
   (and radius 8 for the LETKF) on the same observations: the tuned settings, their
   RMSE against the truth, the grid's best RMSE and the seconds of each.
"""

import os
import platform
import time

from _common import POSITIVE_INT, Parser


def main():
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=POSITIVE_INT, default=1000)
    parser.add_argument("--grid", type=POSITIVE_INT, default=10, help="points per setting")
    parser.add_argument("--sequential", type=POSITIVE_INT, default=5, help="configurations timed")
    args = parser.parse_args()
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.random as jr
    import numpy as np

    import assimilax as ax
    from assimilax.experiments._twin import twin_inputs
    from assimilax.filters import ETKF, LETKF

    print(f"machine: {platform.platform()}, {os.cpu_count()} CPU cores")
    print(f"assimilax {ax.__version__}, jax {jax.__version__} ({jax.default_backend()}), float64")
    setup = ax.MODELS["lorenz96"]
    dyn, obs = setup.make_dynamics(40), ax.make_observation(40, 1.0)
    k, burn = args.cycles, args.cycles // 10
    run = dict(members=20, cycles=k, obs_interval=0.05, burn_in=burn, **setup.start(40))
    truth, series, ens, key = twin_inputs(
        dyn, obs, key=jr.key(0), members=20, cycles=k, obs_interval=0.05,
        x0=setup.initial_state(40), spinup_time=setup.spinup_time, init_std=setup.init_std,
        init_length_scale=None, truth_dynamics=None,
    )  # fmt: skip

    def rmse(flt):
        sol = ax.assimilate(flt, dyn, series, flt.init(ens, key=key), key=key, truth=truth,
                            scores=False, throw=False)  # fmt: skip
        return float(np.asarray(jax.block_until_ready(sol.rmse_analysis))[burn:].mean())

    g = args.grid
    cases = {
        "letkf": (
            lambda inflation, radius: LETKF(inflation=inflation, radius=radius),
            {"inflation": np.linspace(1.0, 1.1, g), "radius": np.linspace(1.0, 10.0, g)},
            {"inflation": 1.2, "radius": 8.0},
        ),
        "etkf": (
            lambda inflation: ETKF(inflation=inflation),
            {"inflation": np.linspace(1.0, 1.2, g * g)},
            {"inflation": 1.2},
        ),
    }
    print(f"\n## Sweep: {g * g} configurations x {k} cycles, one compiled run vs one by one")
    print(f"{'filter':<7} {'sweep s':>8} {'cfg-cyc/s':>10} {'1-by-1 cfg-cyc/s':>17} {'ratio':>6} "
          f"{'best setting':<32} {'rmse':>7}")  # fmt: skip
    best = {}
    for name, (make, grid, _) in cases.items():
        start = time.perf_counter()
        ds = ax.sweep(make, grid, dyn, obs, seeds=[0], **run)
        sweep_s = time.perf_counter() - start
        mesh = np.meshgrid(*grid.values(), indexing="ij")
        points = list(zip(*(v.ravel() for v in mesh), strict=True))
        rmse(make(*points[0]))  # compile
        start = time.perf_counter()
        timed = points[: args.sequential]
        for p in timed:
            rmse(make(*p))
        one = (time.perf_counter() - start) / len(timed)
        cells = len(points) * k
        best[name] = (ax.best_setting(ds)[20], sweep_s)
        setting = ", ".join(f"{a} {v:.3g}" for a, v in best[name][0].items() if a != "rmse")
        print(
            f"{name:<7} {sweep_s:>8.1f} {cells / sweep_s:>10.0f} {k / one:>17.0f} "
            f"{cells / sweep_s / (k / one):>5.1f}x {setting:<32} {best[name][0]['rmse']:>7.4f}",
            flush=True,
        )
    print("\n## Tune from the observations alone (30 evaluations, window 1) vs the grid")
    print(f"{'filter':<7} {'loss':<11} {'tuned':<32} {'rmse':>7} {'grid best':>9} {'vs grid':>8} "
          f"{'tune s':>7} {'grid s':>7}")  # fmt: skip
    for name, (make, _, initial) in cases.items():
        for loss in ("innovation", "crps"):
            result = ax.tune(make, initial, dyn, series, ens, key=key, loss=loss, burn_in=burn)
            r = rmse(result.filter)
            (grid_best, grid_s) = best[name]
            tuned = ", ".join(f"{a} {v:.4g}" for a, v in result.params.items())
            print(
                f"{name:<7} {loss:<11} {tuned:<32} {r:>7.4f} {grid_best['rmse']:>9.4f} "
                f"{100 * (r / grid_best['rmse'] - 1):>+7.1f}% {result.seconds:>7.1f} "
                f"{grid_s:>7.1f}",
                flush=True,
            )
    print(
        "\ncfg-cyc/s: configuration-cycles per second (compilation included for the sweep; "
        "the one-by-one runs reuse one compiled loop). rmse: analysis RMSE against the "
        "truth after burn-in; the tuner never sees the truth."
    )


if __name__ == "__main__":
    main()
