"""`assimilax assimilate`: one filter over a sensor file, with checkpoints, tuning and fitting."""

import math
import sys

from .._filter_names import FILTER_NAMES
from ._args import (
    _filter_name,
    _Formatter,
    _inflation,
    _model_arguments,
    _names,
    _positive_float,
    _positive_int,
    _run_arguments,
)
from ._run import _check_memory, _members, _mesh, _setup, _start_jax


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


def _run_assimilate(args) -> int:
    from pathlib import Path

    from .._io import check_output_paths

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

    from .. import _sinks
    from .._driver import NothingToResume, assimilate_stream, progress_sinks

    ckpt, resume = _checkpoint(args, checkpoint if use_checkpoint else None)
    from .._ensemble import Ensemble
    from .._io import describe
    from ..experiments import climatology_states, make_filter

    setup, dim, dynamics = _setup(args)
    # Everything is read and checked before anything is written.
    data = _read_sensor_file(args, dynamics)
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
    from .._timing import Stopwatch

    with Stopwatch() as watch:
        try:
            sol = assimilate_stream(
                flt,
                dynamics,
                series,
                flt.init(ensemble, key=filter_key),
                key=run_key,
                t0=t0,
                truth=None
                if data.truth is None
                else jnp.asarray(data.truth, ensemble.members.dtype),
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
    return _assimilate_outcome(sol, watch, args.out)


def _read_sensor_file(args, dynamics):
    """The `SensorData` of `--obs` in the model's grid (notes on stderr)."""
    from .._streams import read_observations
    from ..experiments import domain_lengths

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
    if args.variable is None and data.variable != "observations":
        print(f"note: reading {data.variable!r} as the observations", file=sys.stderr)
    return data


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

    from .._driver import check_resume
    from .._sinks import Checkpoint

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
    from .._tune import tune
    from ..experiments import OPTIONS, make_filter

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
    from .._fit import fit_named, with_parameters

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
    how = f"{result.message}, {result.derivatives} derivatives, {result.seconds:.1f} s"
    print(f"fitted ({how}): {found}", file=sys.stderr)
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


def _assimilate_outcome(sol, watch, out) -> int:
    """Print the run's summary line (the scores over the whole output file, so a resumed
    run reports the same as an uninterrupted one); the exit code: 1 if the filter failed
    or diverged."""
    import numpy as np

    from .._io import read_netcdf
    from .._results import RESULTS
    from ..metrics import divergence

    cycles = len(sol.times)
    ds = read_netcdf(out)
    records = ds.sizes["time"]
    line = (
        f"{cycles} cycles in {watch.seconds:.1f} s ({watch.compile_seconds:.1f} s compiling, "
        f"{cycles / max(watch.run_seconds, 1e-9):.0f} cycles/s without it); whole file, "
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
