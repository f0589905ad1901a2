"""`assimilax twin`: a twin experiment (truth, synthetic observations, filters, metrics)."""

import math
import sys

from .._filter_names import FILTER_NAMES, TRAINED_FILTERS
from ._args import (
    _bandwidth,
    _experiment_arguments,
    _filter_names,
    _Formatter,
    _fraction,
    _inflation,
    _model_arguments,
    _nonnegative_float,
    _positive_float,
    _positive_int,
    _run_arguments,
)
from ._run import _check_memory, _experiment, _filter_options, _members, _mesh, _start_jax


def _twin_parser(sub) -> None:
    twin = sub.add_parser(
        "twin",
        help="run a twin experiment (truth, synthetic observations, filters, metrics)",
        formatter_class=_Formatter,
        description=(
            "Run a twin experiment. Every flag has a default: the standard setting of "
            "the model (Lorenz-96: all 40 observed every 0.05, noise std 1; Lorenz-63: "
            "all observed every 0.25, noise variance 2) and filter settings tuned for it. "
            "Exit code 1 if a filter failed or diverged."
        ),
    )
    _model_arguments(twin)
    twin.add_argument(
        "--filters",
        type=_filter_names,
        default="etkf,letkf,enkf",
        help=f"comma-separated: {','.join(FILTER_NAMES)}; with --regime also "
        f"{','.join(TRAINED_FILTERS)} (the learned prior, trained on the regime's own twin "
        "runs on first use and kept in the user cache)",
    )
    twin.add_argument(
        "--members", type=_positive_int, default=None, help="ensemble size (default: the model's)"
    )
    _experiment_arguments(twin)
    twin.add_argument(
        "--inflation",
        type=_inflation,
        default=None,
        help="multiplicative inflation for the filters that take one (overrides tuning)",
    )
    twin.add_argument(
        "--radius",
        type=_positive_float,
        default=None,
        help="localisation radius (grid points) of the LETKF and the local hybrid",
    )
    twin.add_argument(
        "--bandwidth",
        type=_bandwidth,
        default=None,
        help="hybrid score filter: kernel width in forecast spreads, (0, 1] (1: Kalman; "
        "default: adaptive, by the kernels' ESS)",
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
    _run_arguments(twin)
    twin.add_argument("--out", default=None, help="write the results to this netCDF file")
    twin.set_defaults(run=_run_twin, lock_out=True)


def _trained_filter(name, regime, members, args):
    """The learned prior of `regime` at `members` members: from the user cache, or
    trained now and cached (a note on stderr says which)."""
    from ..experiments import learned_prior

    if regime is None:
        raise ValueError(
            f"--filters {name}: the learned prior is trained on a regime's own twin runs; "
            "give --regime (e.g. l63-sakov2012)."
        )
    flt, note = learned_prior(regime, members, progress=not args.no_progress)
    print(f"note: {note}", file=sys.stderr)
    return flt


def _run_twin(args) -> int:
    from .._io import check_output_paths

    check_output_paths([("--out", args.out)], [])
    names = args.filters
    jax = _start_jax(args)
    from .._io import write_netcdf
    from ..experiments import make_filter, status, summarise, twin_experiment

    regime, setup, dim, dynamics, observation, burn_in = _experiment(args)
    members = _members(args, setup)
    obs_std, obs_interval, observe = args.obs_std, args.obs_interval, args.observe
    n_values = math.prod(dynamics.state_shape)
    _check_memory(
        8.0 * (args.cycles * n_values * (2 + 4 * len(names)) + 30 * members * (n_values + members)),
        "This run (--cycles x --members x --dim)",
    )
    options = _filter_options(args, names)
    filters = {
        n: _trained_filter(n, regime, members, args)
        if n in TRAINED_FILTERS
        else make_filter(n, setup, dim=dim, **options[n])
        for n in names
    }
    settings = {
        "model": setup.name,
        "regime": "none" if regime is None else regime.name,
        "dim": dim,
        "obs_std": obs_std,
        "observe": observe,
        "observation": args.observation,
        "seed": args.seed,
        "expected_rmse": ", ".join(f"{k} {v:g}" for k, v in setup.expected_rmse.items()) or "none",
        "expected_rmse_source": setup.source,
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
        key=jax.random.key(args.seed),
        members=members,
        cycles=args.cycles,
        obs_interval=obs_interval,
        burn_in=burn_in,
        **setup.start(dim),
        progress=not args.no_progress,
        attrs=settings,
        truth_dynamics=None if regime is None else regime.make_truth_dynamics(),
        mesh=_mesh(args),
    )
    ds["time"].attrs["model_time_unit"] = setup.time_unit
    scores = summarise(ds)
    _print_table(names, scores, ds, args.cycles)
    print(
        f"(time averages after {burn_in} burn-in cycles; cycles/s leaves out the compile seconds)"
    )
    from .._sharding import is_main_process

    if args.out and is_main_process():  # one writer in a multi-process run
        path = write_netcdf(ds, args.out, lock=not args.out_locked)
        print(f"wrote {path}", file=sys.stderr)
    bad = [n for n in names if status(scores[n])]
    if bad:
        print(
            f"assimilax twin: {', '.join(f'{n} {status(scores[n])}' for n in bad)} (lost track: "
            "innovations far beyond the spread, or an analysis error near the climatological "
            "error); try more members or inflation",
            file=sys.stderr,
        )
        return 1
    return 0


def _print_table(names, scores, ds, cycles) -> None:
    from ..experiments import status

    print(
        f"{'filter':<8} {'rmse_a':>8} {'rmse_f':>8} {'spread_a':>9} {'crps_a':>8} "
        f"{'spec_err':>8} {'cov90':>6} {'ess':>7} {'loglik':>10} {'cycles/s':>9} {'compile':>8}"
    )
    for name in names:
        s = scores[name]
        compiling = float(ds["compile_seconds"].sel(filter=name))
        rate = cycles / max(float(ds["wall_seconds"].sel(filter=name)) - compiling, 1e-9)
        flag = f"  {status(s)}" if status(s) else ""
        print(
            f"{name:<8} {s['rmse_analysis']:>8.4f} {s['rmse_forecast']:>8.4f} "
            f"{s['spread_analysis']:>9.4f} {s['crps_analysis']:>8.4f} "
            f"{s['spectral_error_analysis']:>8.4f} "
            f"{s['coverage_90']:>6.2f} {s['ess_analysis']:>7.1f} {s['log_likelihood']:>10.4g} "
            f"{rate:>9.0f} {compiling:>7.1f}s{flag}"
        )
