"""The `assimilax` command line.

Errors are printed to stderr as one line (no traceback) with exit code 2.
"""

import argparse
import sys

import numpy as np


def _number(convert, low: int | float, strict: bool, what: str):
    """An argparse type: `convert(text)`, which must be > low (strict) or >= low."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not (value > low if strict else value >= low):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, 0, True, "a positive integer")
_nonnegative_int = _number(int, 0, False, "an integer >= 0")
_positive_float = _number(float, 0.0, True, "a positive number")
_nonnegative_float = _number(float, 0.0, False, "a number >= 0")


def _fraction(text: str) -> float:
    value = _nonnegative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (the contract for every error), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="assimilax", description="Sequential data assimilation in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    twin = sub.add_parser(
        "twin",
        help="run a twin experiment (truth, synthetic observations, filters, metrics)",
        description=(
            "Run a twin experiment. Every flag has a default: the standard setting of "
            "the model (Lorenz-96: all 40 observed every 0.05, noise std 1; Lorenz-63: "
            "all observed every 0.25, noise variance 2) and filter settings tuned for it."
        ),
    )
    _model_arguments(twin)
    twin.add_argument(
        "--filters",
        default="etkf,letkf,enkf",
        help="comma-separated: etkf,letkf,enkf,pf,ensf,sf (sf pre-trains a network first)",
    )
    twin.add_argument("--members", type=_positive_int, default=None, help="ensemble size")
    twin.add_argument("--cycles", type=_positive_int, default=2000, help="observation cycles")
    twin.add_argument(
        "--burn-in",
        type=_nonnegative_int,
        default=None,
        help="cycles left out of time averages (default: 10%% of --cycles)",
    )
    twin.add_argument("--obs-interval", type=_positive_float, default=None)
    twin.add_argument("--obs-std", type=_positive_float, default=None)
    twin.add_argument(
        "--observe",
        default=None,
        help="all | every:K | random:M (default: the model's; every:4 for heat2d, burgers, ns2d)",
    )
    twin.add_argument("--observation", default="linear", help="linear | arctan")
    twin.add_argument(
        "--inflation",
        type=_positive_float,
        default=None,
        help="multiplicative inflation for every filter (overrides tuning)",
    )
    twin.add_argument(
        "--radius",
        type=_positive_float,
        default=None,
        help="LETKF localisation radius in grid points",
    )
    twin.add_argument(
        "--threshold",
        type=_fraction,
        default=None,
        help="particle filter: resample when ESS <= threshold * members",
    )
    twin.add_argument(
        "--regularisation",
        type=_nonnegative_float,
        default=None,
        help="particle filter: jitter factor after resampling (DAPPER's reg)",
    )
    twin.add_argument(
        "--resampling",
        default=None,
        choices=["systematic", "stratified", "residual", "multinomial"],
        help="particle filter resampling scheme (default systematic)",
    )
    twin.add_argument("--precision", default="float64", choices=["float32", "float64"])
    twin.add_argument("--seed", type=int, default=0)
    twin.add_argument("--out", default=None, help="write the results to this netCDF file")
    twin.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    twin.set_defaults(run=_run_twin)

    rep = sub.add_parser(
        "report",
        help="plots and a summary table of a twin-experiment file",
        description=(
            "Write PNG plots (RMSE and spread through time, rank histograms, truth vs "
            "analysis, ESS of particle filters) and summary.md into --out."
        ),
    )
    rep.add_argument("file", help="a netCDF file written by `assimilax twin --out`")
    rep.add_argument("--out", default="report", help="output folder (default: report/)")
    rep.set_defaults(run=_run_report)

    sensors = sub.add_parser(
        "make-sensors",
        help="write a demo sensor file (a twin experiment's observations, with gaps)",
        description=(
            "Write a netCDF sensor file in the layout `assimilax assimilate` reads: a truth "
            "run observed at jittered (irregular) CF times by sensors at random positions "
            "between grid points, each with its own error std, with gaps; the truth is "
            "included for scoring."
        ),
    )
    _model_arguments(sensors)
    sensors.add_argument("--cycles", type=_positive_int, default=500, help="observation times")
    sensors.add_argument(
        "--sensors", type=_positive_int, default=None, help="number of sensors (default: dim)"
    )
    sensors.add_argument("--obs-interval", type=_positive_float, default=None)
    sensors.add_argument("--obs-std", type=_positive_float, default=None)
    sensors.add_argument(
        "--missing", type=_fraction, default=0.1, help="fraction of values lost (default 0.1)"
    )
    sensors.add_argument(
        "--jitter", type=_fraction, default=0.3, help="time jitter in intervals (default 0.3)"
    )
    sensors.add_argument("--seed", type=int, default=0)
    sensors.add_argument("--out", required=True, help="the netCDF file to write")
    sensors.set_defaults(run=_run_make_sensors)

    assim = sub.add_parser(
        "assimilate",
        help="assimilate a sensor file with one filter; write the analyses",
        description=(
            "Assimilate the observations of a netCDF sensor file (CF time, sensor positions "
            "or grid indices, NaN/_FillValue gaps, optional error std) with one filter, "
            "starting from a climatological ensemble. Analyses are appended to --out as "
            "they are produced; with --checkpoint-every the run can be stopped (Ctrl-C, "
            "SIGTERM) and continued with --resume to the same result."
        ),
    )
    _model_arguments(assim)
    assim.add_argument("--obs", required=True, help="the netCDF sensor file")
    assim.add_argument("--variable", default=None, help="observed variable (default: observations)")
    assim.add_argument(
        "--obs-std",
        type=_positive_float,
        default=None,
        help="error std for files without one",
    )
    assim.add_argument(
        "--time-unit",
        default=None,
        help="one model time unit, e.g. '6 hours' (default: the file's model_time_unit)",
    )
    assim.add_argument("--filter", default="letkf", help="etkf, letkf, enkf, pf, ensf or sf")
    assim.add_argument("--members", type=_positive_int, default=None, help="ensemble size")
    assim.add_argument("--inflation", type=_positive_float, default=None)
    assim.add_argument("--radius", type=_positive_float, default=None)
    assim.add_argument("--out", required=True, help="netCDF file for the analyses")
    assim.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=None,
        help="save a checkpoint every K cycles (and when interrupted)",
    )
    assim.add_argument(
        "--checkpoint", default=None, help="checkpoint file (default: OUT.checkpoint)"
    )
    assim.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    assim.add_argument("--seed", type=int, default=0)
    assim.add_argument("--precision", default="float64", choices=["float32", "float64"])
    assim.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    assim.set_defaults(run=_run_assimilate)
    return parser


def _model_arguments(parser) -> None:
    parser.add_argument(
        "--model",
        default="lorenz96",
        help="lorenz96 (default), lorenz63, ks, burgers, heat2d, ns2d",
    )
    parser.add_argument(
        "--dim", type=_positive_int, default=None, help="state dimension (SPDEs: points per axis)"
    )


def _setup(args):
    """The model setup, its dimension and dynamics from --model and --dim."""
    from ._twin import get_model

    setup = get_model(args.model)
    dim = setup.default_dim if args.dim is None else args.dim
    if setup.fixed_dim and dim != setup.default_dim:
        raise ValueError(f"--dim: {setup.name} has dimension {setup.default_dim}; got {dim}.")
    return setup, dim, setup.make_dynamics(dim)


def _run_make_sensors(args) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.random as jr

    from ._io import write_netcdf
    from ._twin import make_sensors

    setup, dim, dynamics = _setup(args)
    ds = make_sensors(
        setup,
        dynamics,
        key=jr.key(args.seed),
        cycles=args.cycles,
        sensors=dim if args.sensors is None else args.sensors,
        obs_std=setup.obs_std if args.obs_std is None else args.obs_std,
        obs_interval=args.obs_interval,
        missing=args.missing,
        jitter=args.jitter,
    )
    observed = float(np.isfinite(ds["observations"].values).mean())
    print(
        f"{setup.name} d={dim}: {ds.sizes['sensor']} sensors, {ds.sizes['time']} times "
        f"({100 * observed:.0f}% of values present)",
        file=sys.stderr,
    )
    print(write_netcdf(ds, args.out))
    return 0


def _run_assimilate(args) -> int:
    import time

    import jax

    jax.config.update("jax_enable_x64", args.precision == "float64")
    import jax.numpy as jnp
    import jax.random as jr

    from ._assimilate import assimilate
    from ._ensemble import Ensemble
    from ._io import describe, terminate_as_interrupt
    from ._results import RESULTS
    from ._streams import read_observations
    from ._twin import climatology_states, domain_lengths, make_filter

    setup, dim, dynamics = _setup(args)
    # Everything is read and checked before anything is written.
    data = read_observations(
        args.obs,
        dynamics.state_shape,
        variable=args.variable,
        lengths=domain_lengths(dynamics),
        noise_std=args.obs_std,
        units="1",
        time_unit=args.time_unit,
    )
    series = data.series
    members = setup.members if args.members is None else args.members
    if members < 2:
        raise ValueError(f"--members: need at least 2; got {members}.")
    flt = make_filter(
        args.filter.strip().lower(), setup, dim=dim, inflation=args.inflation, radius=args.radius
    )
    init_key, filter_key, run_key = jr.split(jr.key(args.seed), 3)
    ensemble = Ensemble(climatology_states(setup, dynamics, members, key=init_key))
    t0 = series.times[0] - setup.obs_interval
    checkpoint = args.checkpoint or f"{args.out}.checkpoint"
    attrs = {
        "title": "assimilax analysis",
        "source_file": str(args.obs),
        "model": setup.name,
        "dim": dim,
        "filter": describe(flt),
        "members": members,
        "seed": args.seed,
        "precision": args.precision,
        "t0": float(t0),
        **{f"time_{k}": v for k, v in data.time_encoding.items()},
    }
    print(
        f"Assimilating {len(series)} records of {series.observation.obs_dim} sensors "
        f"({100 * float(jnp.mean(series.mask)):.0f}% present) into {setup.name} d={dim} with "
        f"{args.filter} N={members}{', resuming' if args.resume else ''}",
        file=sys.stderr,
    )
    terminate_as_interrupt()
    start = time.perf_counter()
    sol = assimilate(
        flt,
        dynamics,
        series,
        flt.init(ensemble, key=filter_key),
        key=run_key,
        t0=t0,
        truth=None if data.truth is None else jnp.asarray(data.truth, ensemble.members.dtype),
        scores=False,
        chunk_size=min(100, args.checkpoint_every or 100),
        progress=not args.no_progress,
        out=args.out,
        out_attrs=attrs,
        checkpoint=checkpoint if args.checkpoint_every or args.resume else None,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        throw=False,
    )
    seconds = time.perf_counter() - start
    cycles = len(sol.times)
    line = (
        f"{cycles} cycles in {seconds:.1f} s ({cycles / seconds:.0f} cycles/s); "
        f"mean analysis spread {float(jnp.mean(sol.analysis_spread)):.4f}"
    )
    if sol.rmse_analysis is not None:
        burn = cycles // 10
        line += (
            f"; RMSE vs the file's truth after {burn} cycles: analysis "
            f"{float(jnp.mean(sol.rmse_analysis[burn:])):.4f}, forecast "
            f"{float(jnp.mean(sol.rmse_forecast[burn:])):.4f}"
        )
    print(line)
    if sol.result != RESULTS.successful:
        print(f"assimilax assimilate: the filter failed: {RESULTS[sol.result]}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _run_report(args) -> int:
    from ._report import report

    for path in report(args.file, args.out):
        print(path)
    return 0


def _run_twin(args) -> int:
    import jax

    # Precision is chosen here, at the boundary, never at import time.
    jax.config.update("jax_enable_x64", args.precision == "float64")
    import jax.random as jr

    from ._io import write_netcdf
    from ._twin import make_filter, make_observation, summarise, twin_experiment

    setup, dim, dynamics = _setup(args)
    names = [n.strip().lower() for n in args.filters.split(",") if n.strip()]
    if not names:
        raise ValueError("--filters: name at least one filter.")
    if len(set(names)) != len(names):
        raise ValueError(f"--filters: a filter is named twice in {args.filters!r}.")
    options = dict(
        inflation=args.inflation,
        radius=args.radius,
        threshold=args.threshold,
        regularisation=args.regularisation,
        resampling=args.resampling,
    )
    filters = {n: make_filter(n, setup, dim=dim, **options) for n in names}
    obs_std = setup.obs_std if args.obs_std is None else args.obs_std
    obs_interval = setup.obs_interval if args.obs_interval is None else args.obs_interval
    members = setup.members if args.members is None else args.members
    if members < 2:
        raise ValueError(f"--members: need at least 2; got {members}.")
    burn_in = args.cycles // 10 if args.burn_in is None else args.burn_in
    if burn_in >= args.cycles:
        raise ValueError(f"--burn-in ({burn_in}) must be less than --cycles ({args.cycles}).")
    observe = setup.observe if args.observe is None else args.observe
    observation = make_observation(
        dynamics.state_shape, obs_std, observe, args.observation, seed=args.seed
    )
    settings = {
        "model": setup.name,
        "dim": dim,
        "obs_std": obs_std,
        "observe": observe,
        "observation": args.observation,
        "seed": args.seed,
        "expected_rmse": setup.expected,
    }
    print(
        f"Twin experiment: {setup.name} d={dim}, {members} members, {args.cycles} cycles "
        f"(burn-in {burn_in}), obs every {obs_interval} ({observe}, "
        f"{args.observation}, noise std {obs_std:.3g}), {args.precision}, seed {args.seed}",
        file=sys.stderr,
    )
    ds = twin_experiment(
        dynamics,
        observation,
        filters,
        key=jr.key(args.seed),
        members=members,
        cycles=args.cycles,
        obs_interval=obs_interval,
        burn_in=burn_in,
        **setup.start(dim),
        progress=not args.no_progress,
        attrs=settings,
    )
    scores = summarise(ds)
    print(
        f"{'filter':<8} {'rmse_a':>8} {'rmse_f':>8} {'spread_a':>9} {'crps_a':>8} "
        f"{'spec_err':>8} {'cov90':>6} {'ess':>7} {'cycles/s':>9}"
    )
    for name in names:
        s = scores[name]
        rate = args.cycles / float(ds["wall_seconds"].sel(filter=name))
        flag = "  DIVERGED" if s["failed"] else ""
        print(
            f"{name:<8} {s['rmse_analysis']:>8.4f} {s['rmse_forecast']:>8.4f} "
            f"{s['spread_analysis']:>9.4f} {s['crps_analysis']:>8.4f} "
            f"{s['spectral_error_analysis']:>8.4f} "
            f"{s['coverage_90']:>6.2f} {s['ess_analysis']:>7.1f} {rate:>9.0f}{flag}"
        )
    print(f"(time averages after {burn_in} burn-in cycles; cycles/s includes compilation)")
    if args.out:
        path = write_netcdf(ds, args.out)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `assimilax` command. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError) as e:
        message = " ".join(str(e).split())
        print(f"assimilax {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = " (continue with --resume)" if getattr(args, "checkpoint_every", None) else ""
        print(f"assimilax {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
