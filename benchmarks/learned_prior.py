"""A learned prior of the forecast law given few members (issue 28), against the tuned baselines.

    python benchmarks/learned_prior.py [--regime l63-sakov2012] [--members 10] [--seeds 10]
        [--cycles C] [--train-seeds 20] [--train-cycles 2000] [--steps 5000] [--rounds 2]
        [--particles M] [--sampler-steps S] [--width W] [--depth D] [--analysis A]
        [--teacher NAME] [--unconditioned] [--training-forcing F] [--save FILE] [--load FILE]

`l63-sakov2012` (all observed every 0.25, R = 2 I), `l96-sakov2008` (d = 40, all
observed every 0.05, R = I) or `l96-sparse` (every other site observed every 0.4, R =
I/2). Forecast/truth pairs come from the teacher's twin runs (`--teacher`: a baseline,
default the first) on
training seeds (2000, 2001, ...), each truth written in its forecast ensemble's frame
(`filters._learned.training_pairs`: the full covariance's on Lorenz-63, the local frame
on Lorenz-96); a score network (VP SDE) is trained on them by denoising score matching,
conditioned on the ensemble's features (or not, `--unconditioned`): an `MLPScore`
(width 128, depth 3) on Lorenz-63, a local `LocalScore` (width 16, depth 3; 10
sampler steps; the scored run used `--width 32 --depth 4 --sampler-steps 20`) on
Lorenz-96; then `--rounds - 1` rounds of self-training on the learned filter's own forecasts (4
training seeds, 500 cycles). `--training-forcing 8.5` makes the pairs with Lorenz-96's F
= 8.5 while the truth and the forecasts use F = 8 (model error). The analysis: M samples
weighted by the likelihood (`--analysis weights`, Lorenz-63's default) or updated by the
LETKF (radius 4) / ETKF as an ensemble of M (`letkf`, Lorenz-96's default).

Scored on seeds 1..S against the baselines `benchmarks/regimes.py` tuned at this N on
the tuning seeds (`baselines`: on Lorenz-63, N = 5 and 10, the ETKF, inflation 1.05,
and the EnKF-N; on Lorenz-96, N = 10, the LETKF, and on `l96-sparse` the rank
histogram filter too), same truth per seed:
RMSE ± s.e., spread, 90 % coverage, paired difference with its 95 % interval and seeds
won, and seconds per cycle of each (analysis, forecast and scores, compilation included).
"""

import platform
import time

from _common import INPUT_FILE, OUTPUT_FILE, POSITIVE_FLOAT, POSITIVE_INT, Parser, choice, integer


REGIME_NAMES = ("l63-sakov2012", "l96-sakov2008", "l96-sparse")


def baselines(regime, members):
    """The tuned baselines at this N (`benchmarks/regimes.py --members N`, tuning seeds
    1000-1001, 500 cycles; on `l96-sparse` the LETKF's grid extended to radius 1-3 and
    RTPS 0.1-0.5 on the same seeds, `letkf-std` the standard sweep's pick)."""
    from assimilax.filters import ETKF, LETKF, RTPS, EnKFN, RankHistogramFilter

    if regime.name == "l96-sakov2008":
        return {"letkf": LETKF(radius=4.0, inflation=1.02)}
    if regime.name == "l96-sparse":  # the sweep's picks lay on its grid's edge: extended
        return {
            "letkf": LETKF(radius=1.25, inflation=RTPS(0.2)),
            "letkf-std": LETKF(radius=2.0, inflation=RTPS(0.3)),
            "rhf": RankHistogramFilter(1.2, radius=2.0),
        }
    return {"etkf": ETKF(1.05, rotate=True), "enkf-n": EnKFN(rotate=True)}


def main():
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", type=choice(*REGIME_NAMES), default=REGIME_NAMES[0])
    parser.add_argument("--members", type=integer(2), default=10)
    parser.add_argument("--seeds", type=integer(2), default=10, help="scoring seeds 1..S")
    parser.add_argument("--cycles", type=POSITIVE_INT, default=None, help="default: the regime's")
    parser.add_argument("--train-seeds", type=POSITIVE_INT, default=20)
    parser.add_argument("--train-cycles", type=integer(101), default=2000)
    parser.add_argument("--steps", type=POSITIVE_INT, default=5000, help="training steps a round")
    parser.add_argument("--rounds", type=POSITIVE_INT, default=2)
    parser.add_argument("--particles", type=POSITIVE_INT, default=None)
    parser.add_argument("--sampler-steps", type=POSITIVE_INT, default=None)
    parser.add_argument("--width", type=POSITIVE_INT, default=None)
    parser.add_argument("--depth", type=POSITIVE_INT, default=None)
    parser.add_argument("--analysis", type=choice("weights", "etkf", "letkf"), default=None)
    parser.add_argument("--teacher", default=None, help="a baseline's name (default the first)")
    parser.add_argument("--unconditioned", action="store_true")
    parser.add_argument("--training-forcing", type=POSITIVE_FLOAT, default=None)
    parser.add_argument("--save", type=OUTPUT_FILE, default=None, help="write the network")
    parser.add_argument("--load", type=INPUT_FILE, default=None, help="skip training")
    args = parser.parse_args()
    import dataclasses

    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from regimes import paired, run

    import assimilax as ax
    from assimilax.experiments import (
        REGIMES,
        load_learned_prior,
        save_learned_prior,
        train_learned_prior,
    )
    from assimilax.filters import ETKF, LETKF

    regime = REGIMES[args.regime]
    if args.training_forcing is not None and regime.model != "lorenz96":
        parser.error("--training-forcing is for the Lorenz-96 regime")
    print(f"machine: {platform.processor() or platform.machine()}, jax {jax.__version__}, "
          f"assimilax {ax.__version__}, float64")  # fmt: skip
    print(f"settings: {vars(args)}")
    cycles = args.cycles or regime.cycles
    base = baselines(regime, args.members)
    if args.teacher not in (None, *base):
        parser.error(f"--teacher must be one of {', '.join(base)}; got {args.teacher!r}")
    analysis = {"weights": None, "etkf": ETKF(), "letkf": LETKF(radius=4.0), None: None}
    settings = {
        k: v
        for k, v in dict(
            particles=args.particles, steps=args.sampler_steps,
            analysis=analysis[args.analysis],
        ).items()
        if v is not None
    }  # fmt: skip
    start = time.perf_counter()
    if args.load:
        learned = load_learned_prior(args.load, **settings)
    else:
        training = None
        if args.training_forcing is not None:
            training = dataclasses.replace(regime, forcing=args.training_forcing)
        learned = train_learned_prior(
            regime, args.members, train_seeds=range(2000, 2000 + args.train_seeds),
            train_cycles=args.train_cycles, steps=args.steps, rounds=args.rounds,
            conditioned=not args.unconditioned, width=args.width, depth=args.depth,
            particles=args.particles, sampler_steps=args.sampler_steps,
            analysis=analysis[args.analysis], training_regime=training, progress=True,
            teacher=base[args.teacher or next(iter(base))],
        )  # fmt: skip
        print(f"\ntrained in {time.perf_counter() - start:.0f} s (pair runs included)")
    if args.save:
        save_learned_prior(args.save, learned)

    filters = {"learned": learned, **base}
    rows = {name: [] for name in filters}
    seconds = dict.fromkeys(filters, 0.0)
    for seed in range(1, args.seeds + 1):
        for name, flt in filters.items():
            start = time.perf_counter()
            summary = ax.summarise(run(regime, {name: flt}, seed, cycles, args.members))[name]
            seconds[name] += time.perf_counter() - start
            rows[name].append(
                (summary["rmse_analysis"], summary["spread_analysis"], summary["coverage_90"])
            )
    print(f"\n{regime.name}: scored on seeds 1..{args.seeds}, {cycles} cycles, N = {args.members}")
    print(f"{'filter':<8} {'rmse_a':>15} {'spread':>7} {'cov90':>6} {'s/cycle':>9}")
    for name, r in rows.items():
        rmse, spread, cover = (np.array(c) for c in zip(*r, strict=True))
        se = rmse.std(ddof=1) / np.sqrt(rmse.size)
        per_cycle = seconds[name] / (args.seeds * cycles)
        print(f"{name:<8} {rmse.mean():>7.3f} ± {se:<5.3f} {spread.mean():>7.3f} "
              f"{cover.mean():>6.2f} {per_cycle:>9.5f}")  # fmt: skip
    for name in list(filters)[1:]:
        mean, low, high, wins = paired([r[0] for r in rows["learned"]], [r[0] for r in rows[name]])
        print(f"paired, learned - {name}: {mean:+.1f} % [{low:+.1f}, {high:+.1f}], "
              f"learned better on {wins}/{args.seeds}")  # fmt: skip


if __name__ == "__main__":
    main()
