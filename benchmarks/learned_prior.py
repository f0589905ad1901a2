"""A learned prior of the forecast law given few members (issue 28), against the ETKF.

    python benchmarks/learned_prior.py [--members 10] [--seeds 10] [--cycles 1500]
        [--train-seeds 20] [--train-cycles 2000] [--steps 5000] [--rounds 2]
        [--particles 300] [--sampler-steps 30] [--unconditioned] [--save FILE]

On `l63-sakov2012` (all observed every 0.25, R = 2 I): forecast/truth pairs from the
tuned ETKF's twin runs on training seeds (2000, 2001, ...), each truth written in its
forecast ensemble's frame (`filters._learned.training_pairs`); an `MLPScore` (width
128, depth 3, VP SDE) trained on them by denoising score matching, conditioned on the
ensemble's features (or not, `--unconditioned`); then `--rounds - 1` rounds of
self-training on the learned filter's own forecasts (4 training seeds, 500 cycles;
pairs from runs that lost track, |z| > 50, left out). `LearnedPriorFilter` is scored
against the ETKF (inflation 1.05, rotation: the N = 10 setting `regimes.py` tuned) on
seeds 1..S, same truth per seed: RMSE ± s.e., spread, paired difference with its 95 %
interval and seeds won, and seconds per cycle of each.
"""

import platform
import time

from _common import OUTPUT_FILE, POSITIVE_INT, Parser, integer


def main():
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=integer(2), default=10)
    parser.add_argument("--seeds", type=integer(2), default=10, help="scoring seeds 1..S")
    parser.add_argument("--cycles", type=POSITIVE_INT, default=1500)
    parser.add_argument("--train-seeds", type=POSITIVE_INT, default=20)
    parser.add_argument("--train-cycles", type=integer(101), default=2000)
    parser.add_argument("--steps", type=POSITIVE_INT, default=5000, help="training steps a round")
    parser.add_argument("--rounds", type=POSITIVE_INT, default=2)
    parser.add_argument("--particles", type=POSITIVE_INT, default=300)
    parser.add_argument("--sampler-steps", type=POSITIVE_INT, default=30)
    parser.add_argument("--unconditioned", action="store_true")
    parser.add_argument("--save", type=OUTPUT_FILE, default=None, help="write the network")
    args = parser.parse_args()
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from regimes import paired

    import assimilax as ax
    from assimilax.experiments import (
        REGIMES,
        regime_run,
        save_learned_prior,
        train_learned_prior,
    )
    from assimilax.filters import ETKF

    print(f"machine: {platform.processor() or platform.machine()}, jax {jax.__version__}, "
          f"assimilax {ax.__version__}, float64")  # fmt: skip
    print(f"settings: {vars(args)}")
    regime = REGIMES["l63-sakov2012"]
    etkf = ETKF(1.05, rotate=True)

    def run(flt, seed, cycles):
        start = time.perf_counter()
        sol, _ = regime_run(regime, flt, seed, cycles, args.members)
        jax.block_until_ready(sol.analysis_mean)
        return sol, time.perf_counter() - start

    start = time.perf_counter()
    learned = train_learned_prior(
        regime, args.members, teacher=etkf, train_seeds=range(2000, 2000 + args.train_seeds),
        train_cycles=args.train_cycles, steps=args.steps, rounds=args.rounds,
        conditioned=not args.unconditioned, particles=args.particles,
        sampler_steps=args.sampler_steps, progress=True,
    )  # fmt: skip
    print(f"\ntrained in {time.perf_counter() - start:.0f} s (pair runs included)")
    if args.save:
        save_learned_prior(args.save, learned)

    rows = {"learned": [], "etkf": []}
    seconds = {"learned": 0.0, "etkf": 0.0}
    burn = args.cycles // 10
    for seed in range(1, args.seeds + 1):
        for name, flt in (("learned", learned), ("etkf", etkf)):
            sol, took = run(flt, seed, args.cycles)
            seconds[name] += took
            rows[name].append(
                (
                    float(jnp.mean(sol.rmse_analysis[burn:])),
                    float(jnp.mean(sol.analysis_spread[burn:])),
                )
            )
    print(f"\nscored on seeds 1..{args.seeds}, {args.cycles} cycles, N = {args.members}")
    print(f"{'filter':<8} {'rmse_a':>15} {'spread':>7} {'s/cycle':>9}")
    for name, r in rows.items():
        rmse = np.array([a for a, _ in r])
        se = rmse.std(ddof=1) / np.sqrt(rmse.size)
        per_cycle = seconds[name] / (args.seeds * args.cycles)
        print(f"{name:<8} {rmse.mean():>7.3f} ± {se:<5.3f} {np.mean([s for _, s in r]):>7.3f} "
              f"{per_cycle:>9.5f}")  # fmt: skip
    mean, low, high, wins = paired([a for a, _ in rows["learned"]], [a for a, _ in rows["etkf"]])
    print(f"paired, learned - ETKF: {mean:+.1f} % [{low:+.1f}, {high:+.1f}], "
          f"learned better on {wins}/{args.seeds}")  # fmt: skip


if __name__ == "__main__":
    main()
