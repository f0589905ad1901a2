"""Lorenz-96 filter benchmark: RMSE and assimilation cycles per second.

The Sakov & Oke (2008) setting, as in DAPPER's `mods.Lorenz96.sakov2008`: d=40, all
components observed every 0.05 time units with unit noise variance, N=20 members,
RK4 at dt=0.01 (5 steps per cycle), float64. Each filter uses the tuned defaults of
`assimilax.make_filter` (printed). Timing follows diffrax's benchmarks: compile once,
then the minimum of `--repeat` timed runs of the whole jitted assimilation
(`jax.block_until_ready`); compilation time is reported separately.

    python benchmarks/lorenz96_filters.py [--cycles 10000] [--burn-in 1000] [--repeat 3]
"""

import platform
import time
import timeit

from _common import NAME, POSITIVE_INT, Parser, check_known, integer, listing


def main():
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=POSITIVE_INT, default=10000)
    parser.add_argument("--burn-in", type=integer(0), default=1000)
    parser.add_argument("--repeat", type=POSITIVE_INT, default=3)
    parser.add_argument("--filters", type=listing(NAME), default="etkf,letkf,enkf")
    args = parser.parse_args()
    if args.burn_in >= args.cycles:
        parser.error(f"--burn-in: must be below --cycles ({args.cycles}); got {args.burn_in}")
    import jax

    jax.config.update("jax_enable_x64", True)
    import equinox as eqx
    import jax.random as jr
    import numpy as np

    import assimilax as ax
    from assimilax import describe
    from assimilax.experiments import FILTERS

    check_known(parser, "--filters", args.filters, FILTERS, "filter")

    setup = ax.MODELS["lorenz96"]
    d, n = 40, 20
    dyn = setup.make_dynamics(d)
    obs = ax.make_observation(d, setup.obs_std)
    key = jr.key(0)
    k0, k1, k3, k4 = jr.split(key, 4)
    x0 = dyn.step(setup.initial_state(d) + jr.normal(k0, (d,)), 0.0, setup.spinup_time, key=k0)
    times = setup.obs_interval * np.arange(1, args.cycles + 1, dtype=np.float64)
    truth, series = ax.simulate(dyn, obs, x0, times, key=k1)
    ens = ax.Ensemble(x0[None] + jr.normal(k3, (n, d)))

    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{jax.devices()[0].device_kind} x{jax.device_count()}, python {platform.python_version()}"
    )
    print(f"versions: jax {jax.__version__}, equinox {eqx.__version__}, assimilax {ax.__version__}")
    print(
        f"setting: Lorenz-96 d={d}, N={n}, obs all every {setup.obs_interval}, R=I, "
        f"{args.cycles} cycles (RMSE after {args.burn_in}), float64"
    )
    print()
    header = (
        f"{'filter':<7} {'rmse_a':>7} {'spread_a':>8} {'compile s':>9} {'cycles/s':>10}  settings"
    )
    print(header)
    print("-" * len(header))
    for name in args.filters:
        flt = ax.make_filter(name, setup)
        run = lambda flt=flt: ax.assimilate(flt, dyn, series, ens, key=k4, truth=truth)
        start = time.perf_counter()
        sol = jax.block_until_ready(run())
        first = time.perf_counter() - start
        best = min(
            timeit.repeat(
                lambda run=run: jax.block_until_ready(run()),
                number=1,
                repeat=args.repeat,
            )
        )
        rmse = float(np.mean(sol.rmse_analysis[args.burn_in :]))
        spread = float(np.mean(sol.analysis_spread[args.burn_in :]))
        print(
            f"{name:<7} {rmse:>7.4f} {spread:>8.4f} {max(first - best, 0):>9.2f} "
            f"{args.cycles / best:>10.0f}  {describe(flt)}"
        )


if __name__ == "__main__":
    main()
