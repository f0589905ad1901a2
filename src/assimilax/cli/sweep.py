"""`assimilax sweep`: a grid of one filter's settings x seeds in one compiled run per size."""

import math
import sys

from ._args import (
    _ensemble_sizes,
    _experiment_arguments,
    _filter_name,
    _Formatter,
    _grid_axis,
    _model_arguments,
    _positive_int,
)
from ._run import _experiment, _start_jax


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
    sweep.add_argument(
        "--no-progress", action="store_true", help="hide the progress lines (one per seed)"
    )
    sweep.add_argument("--out", default=None, help="write the grid to this netCDF file")
    sweep.set_defaults(run=_run_sweep, lock_out=True)


def _run_sweep(args) -> int:
    from .._io import check_output_paths

    check_output_paths([("--out", args.out)], [])
    _start_jax(args)
    from .._io import write_netcdf
    from .._report import setting_label
    from ..experiments import OPTIONS, best_setting, make_filter, sweep

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
        compiling = float(ds["compile_seconds"].sel(members=n))
        seconds = max(float(ds["wall_seconds"].sel(members=n)) - compiling, 1e-9)
        found = (
            "every setting failed or diverged"
            if best is None
            else ", ".join(
                f"{k}={setting_label(v) if k != 'rmse' else f'{v:.4g}'}" for k, v in best.items()
            )
        )
        print(
            f"members {n}: {found}  ({cells / seconds:.0f} cycles/s over the grid, "
            f"{compiling:.1f} s compiling apart)"
        )
    if args.out:
        print(f"wrote {write_netcdf(ds, args.out, lock=not args.out_locked)}", file=sys.stderr)
    return 0
