"""`assimilax make-sensors`: a demo sensor file."""

import sys

from ._args import (
    _Formatter,
    _model_arguments,
    _open_fraction,
    _positive_float,
    _positive_int,
    _seed,
)
from ._run import _check_memory, _setup, _start_jax


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


def _run_make_sensors(args) -> int:
    from .._io import check_output_paths

    check_output_paths([("--out", args.out)], [])
    jax = _start_jax(args)
    from .._io import write_netcdf
    from ..experiments import make_sensors

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
