"""DAPPER and assimilax side by side on the same twin experiments.

For each case, DAPPER simulates the truth and the observations of its standard setting
(`mods.Lorenz63.sakov2012`, `mods.Lorenz96.sakov2008`); DAPPER's method and the
assimilax filter with the same settings then assimilate *the same observations*. The
table gives the time-averaged analysis RMSE (after DAPPER's burn-in) and assimilation
cycles per second of each, and their ratio.

Our timing is of the compiled loop (a second run; compile time is printed
separately) with per-cycle probabilistic scores off, as DAPPER computes none of them.
Both use float64 and the same model integration (Lorenz-96: one RK4 step of 0.05 per
cycle, DAPPER's setting; Lorenz-63: RK4 steps of 0.01).

    pip install -e ".[bench]"
    python benchmarks/dapper_side_by_side.py            # about 15 minutes on 2 cores
    python benchmarks/dapper_side_by_side.py --scale 0.2 --seeds 1  # a quick look

Each case runs over several seeds (a different truth and observations per seed); the
table gives the mean RMSE over seeds and the RMSE pair of each seed, and cycles per
second over all seeds.
"""

import os
import platform
import time

from _common import NAME, POSITIVE_FLOAT, SEED, Parser, listing, require


PARSER = Parser(description=__doc__.splitlines()[0])
PARSER.add_argument("--scale", type=POSITIVE_FLOAT, default=1.0, help="multiply every run length")
PARSER.add_argument("--seeds", type=listing(SEED), default="1,2,3", help="comma-separated seeds")
PARSER.add_argument(
    "--only",
    type=listing(NAME),
    default=None,
    help="comma-separated: run the cases whose label contains one",
)


def parse_arguments():
    """The arguments, checked before the imports below (seconds): a bad one, or a missing
    DAPPER, is one line on stderr and exit code 2."""
    args = PARSER.parse_args()
    require(PARSER, "dapper")
    return args


if __name__ == "__main__":
    ARGS = parse_arguments()

import jax  # noqa: E402


jax.config.update("jax_enable_x64", True)

import dapper as dpr  # noqa: E402
import dapper.da_methods as da  # noqa: E402
import dapper.tools.progressbar  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

import assimilax as ax  # noqa: E402
from assimilax.filters import (  # noqa: E402
    ETKF,
    LETKF,
    BootstrapFilter,
    DEnKF,
    EnKFN,
    ExtendedKalmanFilter,
    IEnKS,
    OptimalInterpolation,
    SerialEnSRF,
    StochasticEnKF,
    Var3D,
)


dapper.tools.progressbar.disable_progbar = True

# (model, label, DAPPER method, assimilax filter (given the truth `xx`, from which
# DAPPER's OptInterp and Var3D take their climatology), members, cycles at --scale 1).
# The rows of DAPPER's own tables (`mods.Lorenz63.sakov2012`, `mods.Lorenz96.sakov2008`)
# that assimilax implements; Gaussian filters start from 1000 draws of DAPPER's X0.
_clim = lambda xx: (np.mean(xx, 0), np.cov(np.asarray(xx).T))
CASES = [
    ("lorenz63", "OptInterp", lambda: da.OptInterp(),
     lambda xx: OptimalInterpolation(*_clim(xx)), 1000, 5000),
    ("lorenz63", "Var3D xB 0.1", lambda: da.Var3D(xB=0.1),
     lambda xx: Var3D(_clim(xx)[1], 0.1), 1000, 5000),
    ("lorenz63", "ExtKF infl 180", lambda: da.ExtKF(infl=180),
     lambda xx: ExtendedKalmanFilter(180.0), 1000, 5000),
    ("lorenz63", "ETKF N=3, infl 1.30", lambda: da.EnKF("Sqrt", N=3, infl=1.30),
     lambda xx: ETKF(1.30), 3, 5000),
    ("lorenz63", "ETKF N=10, infl 1.02, rotation",
     lambda: da.EnKF("Sqrt", N=10, infl=1.02, rot=True), lambda xx: ETKF(1.02, rotate=True), 10,
     5000),
    ("lorenz63", "EnKF (perturbed obs) N=10, infl 1.04",
     lambda: da.EnKF("PertObs", N=10, infl=1.04), lambda xx: StochasticEnKF(1.04), 10, 5000),
    ("lorenz63", "EnKF (perturbed obs) N=100, infl 1.01",
     lambda: da.EnKF("PertObs", N=100, infl=1.01), lambda xx: StochasticEnKF(1.01), 100, 5000),
    ("lorenz63", "EnKF-N N=3", lambda: da.EnKF_N(N=3), lambda xx: EnKFN(), 3, 5000),
    ("lorenz63", "EnKF-N N=10, rotation", lambda: da.EnKF_N(N=10, rot=True),
     lambda xx: EnKFN(rotate=True), 10, 5000),
    ("lorenz63", "iEnKS Sqrt N=10, infl 1.02, rotation",
     lambda: da.iEnKS("Sqrt", N=10, infl=1.02, rot=True),
     lambda xx: IEnKS(inflation=1.02, rotate=True), 10, 5000),
    ("lorenz63", "iEnKS Sqrt N=10, Lag 3, infl 1.02, rotation",
     lambda: da.iEnKS("Sqrt", N=10, Lag=3, infl=1.02, rot=True),
     lambda xx: IEnKS(lag=3, inflation=1.02, rotate=True), 10, 1000),
    ("lorenz63", "PF N=100, reg 2.4, NER 0.3", lambda: da.PartFilt(N=100, reg=2.4, NER=0.3),
     lambda xx: BootstrapFilter(threshold=0.3, regularisation=2.4), 100, 5000),
    ("lorenz63", "PF N=1000, reg 0.9, NER 0.2", lambda: da.PartFilt(N=1000, reg=0.9, NER=0.2),
     lambda xx: BootstrapFilter(threshold=0.2, regularisation=0.9), 1000, 5000),
    ("lorenz96", "OptInterp", lambda: da.OptInterp(),
     lambda xx: OptimalInterpolation(*_clim(xx)), 1000, 2000),
    ("lorenz96", "Var3D xB 0.02", lambda: da.Var3D(xB=0.02),
     lambda xx: Var3D(_clim(xx)[1], 0.02), 1000, 2000),
    ("lorenz96", "ExtKF infl 10", lambda: da.ExtKF(infl=10),
     lambda xx: ExtendedKalmanFilter(10.0), 1000, 2000),
    ("lorenz96", "ETKF N=20, infl 1.02", lambda: da.EnKF("Sqrt", N=20, infl=1.02),
     lambda xx: ETKF(1.02), 20, 5000),
    ("lorenz96", "ETKF N=24, infl 1.013, rotation",
     lambda: da.EnKF("Sqrt", N=24, infl=1.013, rot=True), lambda xx: ETKF(1.013, rotate=True),
     24, 5000),
    ("lorenz96", "EnKF (perturbed obs) N=40, infl 1.06",
     lambda: da.EnKF("PertObs", N=40, infl=1.06), lambda xx: StochasticEnKF(1.06), 40, 5000),
    ("lorenz96", "DEnKF N=40, infl 1.01", lambda: da.EnKF("DEnKF", N=40, infl=1.01),
     lambda xx: DEnKF(1.01), 40, 5000),
    ("lorenz96", "Serial EnSRF N=28, infl 1.02, rotation",
     lambda: da.EnKF("Serial", N=28, infl=1.02, rot=True),
     lambda xx: SerialEnSRF(1.02, rotate=True), 28, 5000),
    ("lorenz96", "EnKF-N N=24, rotation", lambda: da.EnKF_N(N=24, rot=True),
     lambda xx: EnKFN(rotate=True), 24, 5000),
    ("lorenz96", "EnKF-N N=24, rotation, xN 2", lambda: da.EnKF_N(N=24, rot=True, xN=2.0),
     lambda xx: EnKFN(2.0, rotate=True), 24, 5000),
    ("lorenz96", "EnKF-N N=20, rotation (untuned)", lambda: da.EnKF_N(N=20, rot=True),
     lambda xx: EnKFN(rotate=True), 20, 5000),
    ("lorenz96", "LETKF N=20, radius 4, infl 1.02", lambda: da.LETKF(N=20, loc_rad=4, infl=1.02),
     lambda xx: LETKF(radius=4.0, inflation=1.02), 20, 2000),
    ("lorenz96", "PF N=1000, reg 1.2, NER 0.2", lambda: da.PartFilt(N=1000, reg=1.2, NER=0.2),
     lambda xx: BootstrapFilter(threshold=0.2, regularisation=1.2), 1000, 2000),
]  # fmt: skip


def _hmm(model: str, cycles: int):
    if model == "lorenz63":
        from dapper.mods.Lorenz63.sakov2012 import HMM

        dynamics = ax.dynamics.Lorenz63(dt=0.01)
    else:
        from dapper.mods.Lorenz96.sakov2008 import HMM

        dynamics = ax.dynamics.Lorenz96(40, dt=0.05)
    HMM = HMM.copy()
    HMM.tseq.Ko = cycles
    return HMM, dynamics


def _ours(flt, dynamics, HMM, xx, yy, members, seed):
    tseq = HMM.tseq
    times = jnp.asarray(tseq.tto)
    truth = jnp.asarray(xx[tseq.kko])
    obs_std = float(np.sqrt(HMM.Obs(0).noise.C.diag[0]))
    observation = ax.observations.Identity(truth.shape[1], noise_std=obs_std)
    series = ax.ObservationSeries(observation, times, jnp.asarray(np.stack(list(yy))))
    x0_std = np.sqrt(HMM.X0.C.diag)
    key = jr.key(seed)
    members0 = HMM.X0.mu + x0_std * np.asarray(
        jr.normal(jr.fold_in(key, 1), (members, len(x0_std)))
    )
    belief = flt.init(ax.Ensemble(jnp.asarray(members0)), key=key)

    def run():
        sol = ax.assimilate(
            flt, dynamics, series, belief, key=key, truth=truth, scores=False, throw=False
        )
        return jax.block_until_ready(sol)

    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    start = time.perf_counter()
    sol = run()
    steady = time.perf_counter() - start
    rmse = float(np.mean(np.asarray(sol.rmse_analysis)[tseq.masko]))
    return rmse, steady, first - steady


def _dapper(method, HMM, xx, yy, seed):
    dpr.set_seed(seed)
    xp = method()
    start = time.perf_counter()
    xp.assimilate(HMM, xx, yy, liveplots=False)
    seconds = time.perf_counter() - start
    xp.stats.average_in_time()
    return float(xp.avrgs.err.rms.a.val), seconds


def main(args):
    missing = [part for part in args.only or () if not any(part in c[1] for c in CASES)]
    if missing:
        PARSER.error(f"--only: no case label contains {missing[0]!r}")
    print(
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; python {platform.python_version()}"
    )
    print(
        f"versions: assimilax {ax.__version__}, jax {jax.__version__} "
        f"({jax.devices()[0].platform}), dapper {dpr.__version__}, numpy {np.__version__}"
    )
    seeds = args.seeds
    header = (
        f"{'model':<9} {'case':<40} {'cycles':>6} {'rmse DAPPER':>11} {'rmse ours':>9} "
        f"{'diff':>6} {'c/s DAPPER':>10} {'c/s ours':>9} {'speed-up':>8} {'compile':>7}  "
        "per seed (DAPPER/ours)"
    )
    print(header)
    print("-" * len(header))
    for model, label, dapper_method, ours, members, cycles in CASES:
        if args.only and not any(part in label for part in args.only):
            continue
        cycles = max(int(cycles * args.scale), 50)
        rmse_d, rmse_o, sec_d, sec_o, compile_o = [], [], 0.0, 0.0, 0.0
        for seed in seeds:
            HMM, dynamics = _hmm(model, cycles)
            dpr.set_seed(seed)
            xx, yy = HMM.simulate()
            r, sec = _dapper(dapper_method, HMM, xx, yy, seed)
            rmse_d.append(r)
            sec_d += sec
            r, sec, comp = _ours(ours(xx), dynamics, HMM, xx, yy, members, seed)
            rmse_o.append(r)
            sec_o += sec
            compile_o = max(compile_o, comp)
        n = HMM.tseq.Ko + 1
        total = n * len(seeds)
        mean_d, mean_o = np.mean(rmse_d), np.mean(rmse_o)
        pairs = " ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(rmse_d, rmse_o, strict=True))
        print(
            f"{model:<9} {label:<40} {n:>6} {mean_d:>11.4f} {mean_o:>9.4f} "
            f"{100 * (mean_o / mean_d - 1):>+5.1f}% {total / sec_d:>10.0f} "
            f"{total / sec_o:>9.0f} {sec_d / sec_o:>7.1f}x {compile_o:>6.1f}s  {pairs}",
            flush=True,
        )
    print(
        "rmse: analysis RMSE averaged over the cycles after DAPPER's burn-in, then over "
        "seeds; diff: ours "
        "relative to DAPPER. c/s: assimilation cycles per second (ours: compiled loop, "
        "compile time in the last column). Same truth and observations for both."
    )


if __name__ == "__main__":
    main(ARGS)
