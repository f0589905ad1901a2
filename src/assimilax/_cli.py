"""The `assimilax` command line.

Errors are printed to stderr as one line (no traceback) with exit code 2; a run whose
filter failed or lost track exits with 1; an interrupted run with 130. `--help` and
`--version` answer without importing JAX.
"""

import argparse
import dataclasses
import math
import os
import signal
import sys

from ._filter_names import FILTER_NAMES


_SEED_MAX = 2**32 - 1


def _number(convert, low: int | float, strict: bool, what: str, high=None):
    """An argparse type: finite `convert(text)`, > low (strict) or >= low, <= high."""

    def parse(text: str):
        try:
            value = convert(text)
        except (ValueError, OverflowError):
            value = None
        ok = value is not None and math.isfinite(value)
        ok = ok and (value > low if strict else value >= low) and (high is None or value <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, 0, True, "a positive integer")
_nonnegative_int = _number(int, 0, False, "an integer >= 0")
_positive_float = _number(float, 0.0, True, "a positive finite number")
_nonnegative_float = _number(float, 0.0, False, "a finite number >= 0")
_seed = _number(int, 0, False, f"an integer seed in [0, {_SEED_MAX}]", _SEED_MAX)
_fraction = _number(float, 0.0, False, "a number in [0, 1]", 1.0)
_bandwidth = _number(float, 0.0, True, "a number in (0, 1]", 1.0)
# Multiplicative inflation: below 1 it deflates the spread until the filter loses track.
_inflation = _number(float, 1.0, False, "a number >= 1 (below 1 the spread collapses)")


def _open_fraction(text: str) -> float:
    value = _fraction(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (the contract for every error), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help with every flag's default shown (unless it is None or a flag)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in text:
            return text
        return super()._get_help_string(action)


def _version() -> str:
    from . import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="assimilax",
        description="Sequential data assimilation in JAX: twin experiments, sensor files, reports.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"assimilax {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _twin_parser(sub)
    _sweep_parser(sub)
    _report_parser(sub)
    _make_sensors_parser(sub)
    _assimilate_parser(sub)
    return parser


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
        help=f"comma-separated: {','.join(FILTER_NAMES)}",
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


def _report_parser(sub) -> None:
    rep = sub.add_parser(
        "report",
        help="plots and a summary table of a twin-experiment file",
        formatter_class=_Formatter,
        description=(
            "Write PNG plots (RMSE and spread through time, rank histograms, truth vs "
            "analysis, ESS of particle filters) and summary.md into --out."
        ),
    )
    rep.add_argument("file", help="a netCDF file written by `assimilax twin --out`")
    rep.add_argument("--out", default="report", help="output folder (created if missing)")
    rep.set_defaults(run=_run_report)


def _make_sensors_parser(sub) -> None:
    sensors = sub.add_parser(
        "make-sensors",
        help="write a demo sensor file (a twin experiment's observations, with gaps)",
        formatter_class=_Formatter,
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
    sensors.add_argument(
        "--obs-interval", type=_positive_float, default=None, help="default: the model's"
    )
    sensors.add_argument(
        "--obs-std", type=_positive_float, default=None, help="default: the model's"
    )
    sensors.add_argument(
        "--missing", type=_open_fraction, default=0.1, help="fraction of values lost, in [0, 1)"
    )
    sensors.add_argument(
        "--jitter", type=_open_fraction, default=0.3, help="time jitter in intervals, in [0, 1)"
    )
    sensors.add_argument("--seed", type=_seed, default=0, help="random seed")
    sensors.add_argument("--out", required=True, help="the netCDF file to write")
    sensors.set_defaults(run=_run_make_sensors, lock_out=True)


def _assimilate_parser(sub) -> None:
    assim = sub.add_parser(
        "assimilate",
        help="assimilate a sensor file with one filter; write the analyses",
        formatter_class=_Formatter,
        description=(
            "Assimilate the observations of a netCDF sensor file (CF time, sensor positions "
            "or grid indices, NaN/_FillValue gaps, optional error std) with one filter, "
            "starting from a climatological ensemble. Analyses are appended to --out as "
            "they are produced; with --checkpoint-every the run can be stopped (Ctrl-C, "
            "SIGTERM) and continued with --resume to the same result. Exit code 1 if the "
            "filter failed or diverged."
        ),
    )
    _model_arguments(assim)
    assim.add_argument("--obs", required=True, help="the netCDF sensor file")
    assim.add_argument("--variable", default=None, help="observed variable (default: observations)")
    assim.add_argument(
        "--obs-std",
        type=_positive_float,
        default=None,
        help="error std (replaces the file's own, if it has one)",
    )
    assim.add_argument(
        "--time-unit",
        default=None,
        help="one model time unit, e.g. '6 hours' (default: the file's model_time_unit)",
    )
    assim.add_argument(
        "--max-gap",
        type=_positive_float,
        default=None,
        help="longest allowed time between records, in model time (default: 1000 x the median)",
    )
    assim.add_argument(
        "--filter", type=_filter_name, default="letkf", help=f"one of {', '.join(FILTER_NAMES)}"
    )
    assim.add_argument(
        "--members", type=_positive_int, default=None, help="ensemble size (default: the model's)"
    )
    assim.add_argument(
        "--inflation", type=_inflation, default=None, help="default: tuned for the model"
    )
    assim.add_argument(
        "--radius", type=_positive_float, default=None, help="LETKF radius (default: tuned)"
    )
    assim.add_argument(
        "--tune",
        default=None,
        help="settings to tune first from the observations alone (no truth), e.g. "
        "inflation,radius: gradient steps on the forecasts' innovation likelihood over the "
        "first --tune-cycles records (assimilax.tune); starts from --inflation/--radius",
    )
    assim.add_argument(
        "--fit",
        type=_names,
        default=None,
        help="parameters to estimate first by maximum likelihood over the first "
        "--tune-cycles records (assimilax.fit): obs_std, model_noise, or a scalar parameter "
        "of the model (lorenz96: forcing; lorenz63: sigma, rho, beta); the estimates and "
        "standard errors are printed, written to --out's attributes and used for the run",
    )
    assim.add_argument(
        "--tune-cycles",
        type=_positive_int,
        default=500,
        help="records used by --tune and --fit",
    )
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
    assim.add_argument(
        "--overwrite-checkpoint",
        action="store_true",
        help="start afresh even though --checkpoint holds an earlier run's checkpoint",
    )
    _run_arguments(assim)
    assim.set_defaults(run=_run_assimilate)


def _sweep_parser(sub) -> None:
    sweep = sub.add_parser(
        "sweep",
        help="sweep a filter's settings x seeds in one compiled run (twin experiments)",
        formatter_class=_Formatter,
        description=(
            "Run the twin experiment of every point of a grid of one filter's settings "
            "and every seed, vmapped in one compiled run per ensemble size; print the best "
            "setting (lowest RMSE over seeds, none lost) and write the grid to --out "
            "(`assimilax report` draws its heat map)."
        ),
    )
    _model_arguments(sweep)
    sweep.add_argument(
        "--filter", type=_filter_name, required=True, help="the filter to tune, e.g. letkf"
    )
    sweep.add_argument(
        "--grid",
        action="append",
        required=True,
        type=_grid_axis,
        help="NAME=V1,V2,... or NAME=START:STOP:COUNT (evenly spaced); repeat per setting, "
        "e.g. --grid inflation=1:1.1:10 --grid radius=1:10:10",
    )
    sweep.add_argument("--seeds", type=_positive_int, default=3, help="seeds 0, 1, ...")
    sweep.add_argument(
        "--members",
        type=_ensemble_sizes,
        default=None,
        help="ensemble size(s), comma-separated (default: the model's)",
    )
    _experiment_arguments(sweep)
    sweep.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "float32", "float64"],
        help="floating point (auto: float64 below 1e5 state values, float32 above)",
    )
    sweep.add_argument("--out", default=None, help="write the grid to this netCDF file")
    sweep.set_defaults(run=_run_sweep, lock_out=True)


def _filter_name(text: str) -> str:
    """`--filter`: one of the filter names (checked before JAX starts)."""
    name = text.strip().lower()
    if name not in FILTER_NAMES:
        raise argparse.ArgumentTypeError(
            f"Unknown filter {name!r}; choose from {', '.join(FILTER_NAMES)}."
        )
    return name


def _filter_names(text: str) -> list[str]:
    """`--filters`: distinct filter names, comma-separated."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one filter.")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a filter is named twice in {text!r}.")
    return [_filter_name(n) for n in names]


def _names(text: str) -> list[str]:
    """`--fit`: distinct parameter names (Python identifiers), comma-separated."""
    names = [n.strip() for n in text.split(",")]
    if not all(n.isidentifier() for n in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected distinct comma-separated names such as obs_std,forcing; got {text!r}"
        )
    return names


def _ensemble_sizes(text: str) -> list[int]:
    """`--members` of `sweep`: distinct ensemble sizes >= 2, comma-separated."""
    try:
        sizes = [int(m) for m in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 2 or len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError(
            f"expected distinct ensemble sizes >= 2, comma-separated (e.g. 10,20); got {text!r}"
        )
    return sizes


MAX_AXIS = 100_000  # values along one --grid axis at most


def _grid_axis(text: str) -> tuple[str, list[float]]:
    name, _, values = text.partition("=")
    try:
        if values.count(":") == 2:
            start, stop, count = values.split(":")
            if not 1 <= int(count) <= MAX_AXIS:
                raise ValueError
            import numpy as np

            numbers = np.linspace(float(start), float(stop), int(count)).tolist()
        else:
            numbers = [float(v) for v in values.split(",")]
        if not name.strip() or not all(math.isfinite(v) for v in numbers):
            raise ValueError
        return name.strip(), numbers
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NAME=V1,V2,... or NAME=START:STOP:COUNT (finite numbers, COUNT in "
            f"[1, {MAX_AXIS}]); got {text!r}"
        ) from None


def _experiment_arguments(parser) -> None:
    """The twin-experiment setting flags shared by `twin` and `sweep`."""
    parser.add_argument(
        "--cycles", type=_positive_int, default=None, help="observation cycles (default: 2000)"
    )
    parser.add_argument(
        "--burn-in",
        type=_nonnegative_int,
        default=None,
        help="cycles left out of time averages (default: 10%% of --cycles)",
    )
    parser.add_argument(
        "--obs-interval",
        type=_positive_float,
        default=None,
        help="model time between observations (default: the model's)",
    )
    parser.add_argument(
        "--obs-std",
        type=_positive_float,
        default=None,
        help="observation error std (default: the model's)",
    )
    parser.add_argument(
        "--observe",
        default=None,
        help="all | every:K | random:M (default: the model's; every:4 for heat2d, burgers, ns2d)",
    )
    parser.add_argument(
        "--observation",
        default=None,
        choices=["linear", "arctan", "square", "cubic"],
        help="operator applied to the observed components (default: linear, or the regime's)",
    )
    parser.add_argument(
        "--regime",
        default=None,
        help="a named non-Gaussian regime (l63-sakov2012, l63-x-only, l96-sparse, l63-cubic, "
        "l96-square, l96-arctan-shocks): its model, observations and ensemble size; flags "
        "override",
    )


def _model_arguments(parser) -> None:
    parser.add_argument(
        "--model", default=None, help="lorenz96 (default), lorenz63, ks, burgers, heat2d, ns2d"
    )
    parser.add_argument(
        "--dim",
        type=_positive_int,
        default=None,
        help="state dimension (SPDEs: points per axis; default: the model's)",
    )


def _run_arguments(parser) -> None:
    parser.add_argument("--seed", type=_seed, default=0, help="random seed")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "float32", "float64"],
        help="floating point (auto: float64 below 1e5 state values, float32 above)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument(
        "--devices",
        type=_positive_int,
        default=None,
        help="shard the ensemble members over this many devices (of every process with "
        "--distributed); the member count must be a multiple",
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="one process of a multi-process run: join via JAX_COORDINATOR_ADDRESS, "
        "JAX_NUM_PROCESSES, JAX_PROCESS_ID (or SLURM's variables); process 0 writes the files",
    )
    parser.add_argument(
        "--no-compilation-cache",
        action="store_true",
        help="do not use JAX's persistent compilation cache (also: ASSIMILAX_NO_CACHE=1)",
    )


# Start-up -------------------------------------------------------------------------


def compilation_cache_dir() -> str | None:
    """The folder of JAX's persistent compilation cache for the CLI: the environment's
    `JAX_COMPILATION_CACHE_DIR`, else `$XDG_CACHE_HOME/assimilax/jax` (default
    `~/.cache/assimilax/jax`); None when turned off by `ASSIMILAX_NO_CACHE=1`."""
    if os.environ.get("ASSIMILAX_NO_CACHE", "") not in ("", "0"):
        return None
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "assimilax", "jax")


def _start_jax(args):
    """Configure JAX at the boundary (never at import): precision and the persistent
    compilation cache (compiled loops are reused across runs: ~4x faster start-up)."""
    if getattr(args, "devices", None):  # before JAX starts its backend
        from ._sharding import CPU_FLAG

        flags = os.environ.get("XLA_FLAGS", "")
        if CPU_FLAG not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {CPU_FLAG}".strip()
    import jax

    if getattr(args, "distributed", False):
        from ._sharding import initialize_distributed

        initialize_distributed()
    if getattr(args, "precision", "float64") == "auto":
        args.precision = _auto_precision(args)
    jax.config.update("jax_enable_x64", getattr(args, "precision", "float64") == "float64")
    folder = None if getattr(args, "no_compilation_cache", False) else compilation_cache_dir()
    if folder is not None:
        try:
            os.makedirs(folder, exist_ok=True)
            jax.config.update("jax_compilation_cache_dir", folder)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        except OSError:
            pass  # a read-only home: run without the cache
    return jax


def _check_memory(needed_bytes: float, what: str) -> None:
    from ._checks import check_memory

    check_memory(needed_bytes, what)


LARGE_STATE = 100_000  # state values from which `--precision auto` means float32


def _auto_precision(args) -> str:
    """float64 for states of fewer than `LARGE_STATE` values (accuracy, the DAPPER
    comparisons), float32 for larger ones (memory and speed at scale)."""
    from .experiments import get_model

    try:
        setup = get_model(getattr(args, "model", None) or "lorenz96")
    except ValueError:
        return "float64"  # the bad name is reported where the model is built
    dim = getattr(args, "dim", None) or setup.default_dim
    size = float(dim) ** len(setup.initial_state(2).shape)
    return "float32" if size >= LARGE_STATE else "float64"


def _setup(args):
    """The model setup, its dimension and dynamics from --model and --dim."""
    from .experiments import get_model

    try:
        setup = get_model(args.model or "lorenz96")
    except ValueError as e:
        raise ValueError(f"--model: {e}") from None
    dim = setup.default_dim if args.dim is None else args.dim
    if setup.fixed_dim and dim != setup.default_dim:
        raise ValueError(f"--dim: {setup.name} has dimension {setup.default_dim}; got {dim}.")
    ndim = len(setup.initial_state(2).shape)
    _check_memory(8.0 * 20 * float(dim) ** ndim, "--dim")
    return setup, dim, setup.make_dynamics(dim)


def _members(args, setup) -> int:
    members = setup.members if args.members is None else args.members
    if members < 2:
        raise ValueError(f"--members: need at least 2; got {members}.")
    return members


# Subcommands ----------------------------------------------------------------------


def _run_make_sensors(args) -> int:
    from ._io import check_output_paths

    check_output_paths([("--out", args.out)], [])
    jax = _start_jax(args)
    from ._io import write_netcdf
    from .experiments import make_sensors

    setup, dim, dynamics = _setup(args)
    sensors = dim if args.sensors is None else args.sensors
    _check_memory(8.0 * args.cycles * (sensors * 3 + dim ** len(dynamics.state_shape)), "--cycles")
    ds = make_sensors(
        setup,
        dynamics,
        key=jax.random.key(args.seed),
        cycles=args.cycles,
        sensors=sensors,
        obs_std=setup.obs_std if args.obs_std is None else args.obs_std,
        obs_interval=args.obs_interval,
        missing=args.missing,
        jitter=args.jitter,
    )
    observed = float((ds["observations"].notnull()).mean())
    print(
        f"{setup.name} d={dim}: {ds.sizes['sensor']} sensors, {ds.sizes['time']} times "
        f"({100 * observed:.0f}% of values present)",
        file=sys.stderr,
    )
    print(write_netcdf(ds, args.out, lock=not args.out_locked))
    return 0


def _run_assimilate(args) -> int:
    import time
    from pathlib import Path

    from ._io import check_output_paths

    checkpoint = args.checkpoint or f"{args.out}.checkpoint"
    use_checkpoint = bool(args.checkpoint_every or args.resume or args.checkpoint)
    check_output_paths(
        [("--out", args.out), ("--checkpoint", checkpoint if use_checkpoint else None)],
        [args.obs],
    )
    if not Path(args.obs).is_file():
        raise ValueError(f"--obs: no such file {args.obs!r}.")
    _start_jax(args)
    import jax.numpy as jnp
    import jax.random as jr

    from . import _sinks
    from ._driver import NothingToResume, assimilate_stream, progress_sinks

    ckpt, resume = _checkpoint(args, checkpoint if use_checkpoint else None)
    from ._ensemble import Ensemble
    from ._io import describe
    from ._streams import read_observations
    from .experiments import climatology_states, domain_lengths, make_filter

    setup, dim, dynamics = _setup(args)
    # Everything is read and checked before anything is written.
    data = read_observations(
        args.obs,
        dynamics.state_shape,
        variable=args.variable,
        lengths=domain_lengths(dynamics),
        noise_std=args.obs_std,
        override_std=True,
        units="1",
        time_unit=args.time_unit,
    )
    if args.obs_std is not None and data.file_has_std:
        print(
            f"note: --obs-std {args.obs_std:g} replaces the error std the file carries",
            file=sys.stderr,
        )
    series = data.series
    members = _members(args, setup)
    n_values = math.prod(dynamics.state_shape)
    _check_memory(8.0 * (20 * members * n_values + 4 * len(series) * n_values), "This run")
    name = args.filter.strip().lower()
    try:
        flt = make_filter(name, setup, dim=dim, inflation=args.inflation, radius=args.radius)
    except ValueError as e:
        raise ValueError(f"--filter/--inflation/--radius: {e}") from None
    init_key, filter_key, run_key = jr.split(jr.key(args.seed), 3)
    ensemble = Ensemble(climatology_states(setup, dynamics, members, key=init_key))
    t0 = series.times[0] - setup.obs_interval
    _check_scale(series, ensemble, args.obs)
    if args.tune:
        flt = _tune_filter(args, setup, dim, dynamics, series, ensemble, filter_key, t0)
    fitted = {}
    if args.fit:
        dynamics, series, fitted = _fit_parameters(
            args, flt, dynamics, series, ensemble, filter_key, t0
        )
    attrs = _analysis_attrs(args, setup, dim, describe(flt), members, float(t0))
    attrs.update(fitted, source_variable=data.variable)
    if args.variable is None and data.variable != "observations":
        print(f"note: reading {data.variable!r} as the observations", file=sys.stderr)
    print(
        f"Assimilating {len(series)} records of {series.observation.obs_dim} sensors "
        f"({100 * float(jnp.mean(series.mask)):.0f}% present) into {setup.name} d={dim} with "
        f"{name} N={members}{', resuming' if resume else ''}",
        file=sys.stderr,
    )
    sinks = [_sinks.NetCDFOutput(args.out, attrs, data.time_encoding)]
    if ckpt is not None:
        sinks.append(ckpt)
    sinks += progress_sinks(not args.no_progress, name)
    start = time.perf_counter()
    try:
        sol = assimilate_stream(
            flt,
            dynamics,
            series,
            flt.init(ensemble, key=filter_key),
            key=run_key,
            t0=t0,
            truth=None if data.truth is None else jnp.asarray(data.truth, ensemble.members.dtype),
            scores=False,
            chunk_size=min(100, args.checkpoint_every or 100),
            sinks=sinks,
            resume=resume,
            max_gap=args.max_gap,
            throw=False,
            mesh=_mesh(args),
        )
    except NothingToResume:
        print(f"{args.out} is complete: every record was assimilated already", file=sys.stderr)
        return 0
    return _assimilate_outcome(sol, time.perf_counter() - start, args.out)


# Observations this many climatological standard deviations (model spread and error
# std together) from the model's climatology are taken for a unit or scale mistake.
SCALE_LIMIT = 100.0


def _check_scale(series, ensemble, source) -> None:
    """Refuse observations far outside what the model can produce (values in other
    units, x100, 1e300): the filter would otherwise blow the model up and blame it."""
    import jax
    import numpy as np

    hx = np.asarray(jax.vmap(series.observation.apply)(ensemble.members))
    mean, spread = hx.mean(axis=0), hx.std(axis=0)
    std = np.sqrt(spread**2 + np.asarray(series.error_std()) ** 2)
    z = np.where(np.asarray(series.mask), np.abs(np.asarray(series.values) - mean) / std, 0.0)
    if z.max() > SCALE_LIMIT:
        k, j = (int(i) for i in np.unravel_index(int(np.argmax(z)), z.shape))
        raise ValueError(
            f"{source}: the value {float(series.values[k, j]):.6g} at record {k}, sensor {j} "
            f"lies {z[k, j]:.3g} standard deviations from the model's climatology "
            f"({float(mean[j]):.3g} +- {float(std[k, j]):.3g}): are the values in the model's "
            "units (--variable, a scale factor)?"
        )


def _checkpoint(args, path):
    """The `Checkpoint` sink of `assimilate` (None without one) and whether the run
    resumes (`check_resume`: refusals before anything is read or written)."""
    import warnings

    from ._driver import check_resume
    from ._sinks import Checkpoint

    ckpt = None
    if path is not None:
        ckpt = Checkpoint(path, args.checkpoint_every, overwrite=args.overwrite_checkpoint)
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always")
        resume = check_resume(ckpt, [args.out], args.resume)
    for note in notes:
        print(f"note: {note.message}", file=sys.stderr)
    return ckpt, resume


def _tune_filter(args, setup, dim, dynamics, series, ensemble, key, t0):
    """`--tune`: the filter with the named settings tuned on the first records."""
    from ._tune import tune
    from .experiments import OPTIONS, make_filter

    name = args.filter.strip().lower()
    names = [n.strip() for n in args.tune.split(",") if n.strip()]
    given = {"inflation": args.inflation, "radius": args.radius}
    defaults = setup.filter_defaults.get(name, {})
    initial = {}
    for n in names:
        if n not in ("inflation", "radius") or n not in OPTIONS.get(name, ()):
            raise ValueError(f"--tune: {name} has no tunable setting {n!r} (inflation, radius).")
        start = given[n] if given[n] is not None else defaults.get(n)
        if start is None or isinstance(start, bool) or not isinstance(start, int | float):
            raise ValueError(f"--tune {n}: give a starting value with --{n}.")
        initial[n] = float(start)
    fixed = {k: v for k, v in given.items() if k not in initial}
    part = series[: min(args.tune_cycles, len(series))]
    build = lambda **p: make_filter(name, setup, dim=dim, **fixed, **p)
    result = tune(
        build, initial, dynamics, part, ensemble, key=key, t0=t0, burn_in=len(part) // 10,
        progress=not args.no_progress,
    )  # fmt: skip
    found = ", ".join(f"{k}={v:.4g}" for k, v in result.params.items())
    print(f"tuned on {len(part)} records ({result.seconds:.1f} s): {found}", file=sys.stderr)
    return result.filter


def _fit_parameters(args, flt, dynamics, series, ensemble, key, t0):
    """`--fit`: the dynamics and series with the named parameters estimated on the first
    records, and the output attributes recording the fit."""
    from ._fit import fit_named, with_parameters

    part = series[: min(args.tune_cycles, len(series))]
    print(f"fitting {', '.join(args.fit)} on {len(part)} records", file=sys.stderr)
    result = fit_named(
        args.fit,
        flt,
        dynamics,
        part,
        flt.init(ensemble, key=key),
        key=key,
        t0=t0,
        burn_in=len(part) // 10,
        progress=not args.no_progress,
    )
    found = ", ".join(
        f"{k} = {v:.6g} ± {result.std_errors[k]:.2g}" for k, v in result.params.items()
    )
    print(f"fitted ({result.message}, {result.seconds:.1f} s): {found}", file=sys.stderr)
    if not result.converged:
        print(f"note: the fit did not converge ({result.message})", file=sys.stderr)
    attrs = {"fit_records": len(part), "fit_log_likelihood": result.log_likelihood}
    attrs["fit_converged"] = int(result.converged)
    for k, v in result.params.items():
        attrs[f"fit_{k}"] = v
        attrs[f"fit_{k}_std_error"] = result.std_errors[k]
    return *with_parameters(result.params, dynamics, series), attrs


def _analysis_attrs(args, setup, dim, description, members, t0) -> dict:
    """The global attributes of an `assimilate` output file."""
    return {
        "title": "assimilax analysis",
        "source": "assimilax assimilate",
        "source_file": str(args.obs),
        "model": setup.name,
        "dim": dim,
        "filter": description,
        "members": members,
        "seed": args.seed,
        "precision": args.precision,
        "t0": t0,
    }


def _assimilate_outcome(sol, seconds: float, out) -> int:
    """Print the run's summary line (the scores over the whole output file, so a resumed
    run reports the same as an uninterrupted one); the exit code: 1 if the filter failed
    or diverged."""
    import numpy as np

    from ._io import read_netcdf
    from ._results import RESULTS
    from .metrics import divergence

    cycles = len(sol.times)
    ds = read_netcdf(out)
    records = ds.sizes["time"]
    line = (
        f"{cycles} cycles in {seconds:.1f} s ({cycles / seconds:.0f} cycles/s); whole file, "
        f"{records} records: mean analysis spread "
        f"{float(np.mean(ds['analysis_spread'].values)):.4f}, "
        f"log-likelihood {float(np.sum(ds['log_likelihood'].values)):.6g}"
    )
    if "rmse_analysis" in ds:
        burn = records // 10
        line += (
            f", RMSE vs the file's truth after {burn} records: analysis "
            f"{float(np.mean(ds['rmse_analysis'].values[burn:])):.4f}, forecast "
            f"{float(np.mean(ds['rmse_forecast'].values[burn:])):.4f}"
        )
    print(line)
    if sol.result != RESULTS.successful:
        print(f"assimilax assimilate: the filter failed: {RESULTS[sol.result]}", file=sys.stderr)
        return 1
    ratio = ds["innovation_ratio"].values if "innovation_ratio" in ds else None
    if ratio is not None and divergence(ratio, records // 10):
        print(
            "assimilax assimilate: the filter DIVERGED (innovations far beyond the ensemble "
            f"spread; {out} was written): try more inflation or members",
            file=sys.stderr,
        )
        return 1
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _run_report(args) -> int:
    from ._report import report

    for path in report(args.file, args.out):
        print(path)
    return 0


_PF_OPTIONS = ("threshold", "regularisation", "resampling")


def _filter_options(args, names) -> dict[str, dict]:
    """The options given on the command line, for each filter that takes them; an
    option that no chosen filter takes is an error, one that some ignore is noted."""
    from .experiments import OPTIONS

    given = {
        k: getattr(args, k)
        for k in ("inflation", "radius", "bandwidth", *_PF_OPTIONS)
        if getattr(args, k) is not None
    }
    for option in given:
        takers = [n for n in names if option in OPTIONS.get(n, ())]
        flag = f"--{option}"
        if not takers:
            raise ValueError(
                f"{flag}: does not apply to {', '.join(names)} (taken by "
                f"{', '.join(n for n in OPTIONS if option in OPTIONS[n])})."
            )
        if len(takers) < len(names):
            skip = ", ".join(n for n in names if n not in takers)
            print(f"note: {flag} applies to {', '.join(takers)}, not to {skip}", file=sys.stderr)
    return {n: {k: v for k, v in given.items() if k in OPTIONS.get(n, ())} for n in names}


def _mesh(args):
    """The device mesh of `--devices` (None: one device)."""
    if getattr(args, "devices", None) is None:
        return None
    from ._sharding import device_mesh

    try:
        return device_mesh(args.devices)
    except ValueError as e:
        raise ValueError(f"--devices: {e}") from None


def _run_twin(args) -> int:
    from ._io import check_output_paths

    check_output_paths([("--out", args.out)], [])
    names = args.filters
    jax = _start_jax(args)
    from ._io import write_netcdf
    from .experiments import make_filter, status, summarise, twin_experiment

    regime, setup, dim, dynamics, observation, burn_in = _experiment(args)
    members = _members(args, setup)
    obs_std, obs_interval, observe = args.obs_std, args.obs_interval, args.observe
    n_values = math.prod(dynamics.state_shape)
    _check_memory(
        8.0 * (args.cycles * n_values * (2 + 4 * len(names)) + 30 * members * (n_values + members)),
        "This run (--cycles x --members x --dim)",
    )
    options = _filter_options(args, names)
    filters = {n: make_filter(n, setup, dim=dim, **options[n]) for n in names}
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
    print(f"(time averages after {burn_in} burn-in cycles; cycles/s includes compilation)")
    from ._sharding import is_main_process

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


def _experiment(args):
    """The regime (or None), model setup, dimension, dynamics, observation operator and
    burn-in of a twin experiment or sweep; fills `args.obs_std`, `args.obs_interval`
    and `args.observe` with the model's defaults where not given."""
    from .experiments import make_observation

    regime = _apply_regime(args)
    setup, dim, dynamics = _setup(args)
    if regime is not None:
        dynamics = regime.make_dynamics()
        # The regime's tuned filter settings (benchmarks/regimes.py) over the model's.
        defaults = {**setup.filter_defaults, **regime.filter_settings}
        setup = dataclasses.replace(setup, filter_defaults=defaults)
    burn_in = args.cycles // 10 if args.burn_in is None else args.burn_in
    if burn_in >= args.cycles:
        raise ValueError(f"--burn-in ({burn_in}) must be less than --cycles ({args.cycles}).")
    args.obs_std = setup.obs_std if args.obs_std is None else args.obs_std
    args.obs_interval = setup.obs_interval if args.obs_interval is None else args.obs_interval
    args.observe = setup.observe if args.observe is None else args.observe
    observation = make_observation(
        dynamics.state_shape, args.obs_std, args.observe, args.observation,
        seed=getattr(args, "seed", 0),
    )  # fmt: skip
    return regime, setup, dim, dynamics, observation, burn_in


def _run_sweep(args) -> int:
    from ._io import check_output_paths

    check_output_paths([("--out", args.out)], [])
    _start_jax(args)
    from ._io import write_netcdf
    from .experiments import OPTIONS, best_setting, make_filter, sweep

    name = args.filter
    grid = dict(args.grid)
    if len(grid) != len(args.grid):
        raise ValueError("--grid: a setting is named twice.")
    for option in grid:
        if option not in OPTIONS[name]:
            raise ValueError(
                f"--grid: {name} has no setting {option!r}; it takes {', '.join(OPTIONS[name])}."
            )
    regime, setup, dim, dynamics, observation, burn_in = _experiment(args)
    sizes = [setup.members] if args.members is None else args.members
    print(
        f"Sweep: {name} on {setup.name} d={dim}, members {sizes}, {args.seeds} seed(s), "
        f"{args.cycles} cycles (burn-in {burn_in}), grid "
        + " x ".join(f"{k}[{len(v)}]" for k, v in grid.items()),
        file=sys.stderr,
    )
    ds = sweep(
        lambda **point: make_filter(name, setup, dim=dim, **point),
        grid,
        dynamics,
        observation,
        seeds=range(args.seeds),
        members=sizes,
        cycles=args.cycles,
        obs_interval=args.obs_interval,
        burn_in=burn_in,
        **setup.start(dim),
        truth_dynamics=None if regime is None else regime.make_truth_dynamics(),
        progress=not args.no_progress,
    )
    cells = math.prod(len(v) for v in grid.values()) * args.seeds * args.cycles
    for n, best in best_setting(ds).items():
        seconds = float(ds["wall_seconds"].sel(members=n))
        found = (
            "every setting failed or diverged"
            if best is None
            else ", ".join(f"{k}={v:.4g}" for k, v in best.items())
        )
        print(f"members {n}: {found}  ({cells / seconds:.0f} cycles/s over the grid)")
    if args.out:
        print(f"wrote {write_netcdf(ds, args.out, lock=not args.out_locked)}", file=sys.stderr)
    return 0


def _print_table(names, scores, ds, cycles) -> None:
    from .experiments import status

    print(
        f"{'filter':<8} {'rmse_a':>8} {'rmse_f':>8} {'spread_a':>9} {'crps_a':>8} "
        f"{'spec_err':>8} {'cov90':>6} {'ess':>7} {'loglik':>10} {'cycles/s':>9}"
    )
    for name in names:
        s = scores[name]
        rate = cycles / float(ds["wall_seconds"].sel(filter=name))
        flag = f"  {status(s)}" if status(s) else ""
        print(
            f"{name:<8} {s['rmse_analysis']:>8.4f} {s['rmse_forecast']:>8.4f} "
            f"{s['spread_analysis']:>9.4f} {s['crps_analysis']:>8.4f} "
            f"{s['spectral_error_analysis']:>8.4f} "
            f"{s['coverage_90']:>6.2f} {s['ess_analysis']:>7.1f} {s['log_likelihood']:>10.4g} "
            f"{rate:>9.0f}{flag}"
        )


def _apply_regime(args):
    """Fill the flags not given from `--regime` (model, dimension, observations,
    ensemble size, cycles); the regime, or None. Without one: the model's defaults."""
    regime = None
    if args.regime is not None:
        from .experiments import get_regime

        try:
            regime = get_regime(args.regime)
        except ValueError as e:
            raise ValueError(f"--regime: {e}") from None
        if args.model not in (None, regime.model):
            raise ValueError(f"--model {args.model} contradicts --regime {regime.name}.")
        args.model = regime.model
        for flag, value in (
            ("dim", regime.dim),
            ("observe", regime.observe),
            ("observation", regime.operator),
            ("obs_std", regime.obs_std),
            ("obs_interval", regime.obs_interval),
            ("members", regime.members),
            ("cycles", regime.cycles),
            ("burn_in", regime.burn_in if args.cycles is None else None),
        ):
            if getattr(args, flag) is None:
                setattr(args, flag, value)
    args.cycles = 2000 if args.cycles is None else args.cycles
    args.observation = args.observation or "linear"
    return regime


def _output_lock(args):
    """The lock on `--out` held for a whole `twin`, `make-sensors` or `sweep` run, so no
    other run writes the file meanwhile (`assimilate`'s output sink takes its own)."""
    import contextlib

    # Processes of a multi-process run: process 0 locks the file when it writes it.
    args.out_locked = bool(
        getattr(args, "lock_out", False) and args.out and not getattr(args, "distributed", False)
    )
    if not args.out_locked:
        return contextlib.nullcontext()
    from ._io import PathLock, check_output_paths

    check_output_paths([("--out", args.out)], [])
    return PathLock(args.out, "output file")


def _signals(args):
    """How SIGINT and SIGTERM stop a run. An `assimilate` with a checkpoint stops
    between chunks (bounded compiled calls), saves its checkpoint and exits 130. Every
    other run has nothing to save until its end, so a signal ends it at once (the
    operating system's default: no compiled call, however long, delays it), except
    while a file is written (`deferred_interrupts` holds it until the file is whole)."""
    import contextlib

    if any(getattr(args, k, None) for k in ("checkpoint_every", "checkpoint", "resume")):
        return contextlib.nullcontext()
    from ._signals import default_signals

    return default_signals()


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `assimilax` command. Returns the exit code."""
    # First thing: SIGTERM stops a run the same clean way as Ctrl-C (KeyboardInterrupt),
    # before anything heavy starts.
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _interrupt)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (printed as one line), --help, --version
        return int(e.code or 0)
    try:
        with _output_lock(args), _signals(args):
            return args.run(args)
    except (ValueError, TypeError, OSError, MemoryError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"assimilax {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = " (continue with --resume)" if getattr(args, "checkpoint_every", None) else ""
        print(f"assimilax {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as e:  # a run that could not be carried out (e.g. out of memory)
        if "RESOURCE_EXHAUSTED" in str(e) or "Out of memory" in str(e):
            print(
                f"assimilax {args.command}: error: out of memory: use fewer cycles, members "
                "or a smaller --dim",
                file=sys.stderr,
            )
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
