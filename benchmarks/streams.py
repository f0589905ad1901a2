"""The cost of streaming: the same LETKF run on a sensor file (Lorenz-96, off-grid
sensors, gaps, irregular times) as one batch scan, in chunks with an appended output
file and checkpoints, and as a stream of single records; plus the cost of reading.

    python benchmarks/streams.py [--dim 40] [--cycles 2000]

Prints a table: cycles/s (compilation excluded by a warm-up run, best of 3), and the
overhead of each mode over the batch run.
"""

import platform
import tempfile
import time
from pathlib import Path

from _common import POSITIVE_INT, Parser, integer


def main():
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=integer(4), default=40)
    parser.add_argument("--cycles", type=POSITIVE_INT, default=2000)
    parser.add_argument("--members", type=integer(2), default=20)
    args = parser.parse_args()
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.random as jr

    import assimilax as ax
    from assimilax import read_observations, write_netcdf
    from assimilax.experiments import (
        climatology_states,
        domain_lengths,
        get_model,
        make_filter,
        make_sensors,
    )

    print(f"machine: {platform.processor() or platform.machine()}, {jax.device_count()} device(s)")
    print(f"jax {jax.__version__}, assimilax {ax.__version__}, float64")

    setup = get_model("lorenz96")
    dyn = setup.make_dynamics(args.dim)
    folder = Path(tempfile.mkdtemp())
    sensors = folder / "sensors.nc"
    ds = make_sensors(setup, dyn, key=jr.key(0), cycles=args.cycles, sensors=args.dim, obs_std=1.0)
    write_netcdf(ds, sensors)
    start = time.perf_counter()
    data = read_observations(sensors, dyn.state_shape, lengths=domain_lengths(dyn))
    read_s = time.perf_counter() - start
    series = data.series
    flt = make_filter("letkf", setup)
    ens = ax.Ensemble(climatology_states(setup, dyn, args.members, key=jr.key(1)))
    belief0 = flt.init(ens, key=jr.key(2))
    t0 = float(series.times[0]) - setup.obs_interval

    def mode(stream: bool, chunk_size=None, files: str | None = None):
        """A run over the series or a stream of its records, optionally with an output
        file and a checkpoint every 100 records."""

        def run():
            source = series
            if stream:
                source = ax.ObservationStream(series.observation, series.records())
            sinks = []
            if files:
                sinks = [
                    ax.NetCDFOutput(folder / f"{files}.nc"),
                    ax.Checkpoint(folder / f"{files}.ckpt", every=100),
                ]
            return ax.assimilate_stream(
                flt, dyn, source, belief0, key=jr.key(3), t0=t0, chunk_size=chunk_size, sinks=sinks
            )

        return run

    modes = [
        ("batch: one scan", mode(False)),
        ("series, chunks of 100, output file + checkpoint every 100", mode(False, 100, "series")),
        ("stream, 1 record per call", mode(True, 1)),
        ("stream, 10 records per call", mode(True, 10)),
        ("stream, 1 record per call, output file + checkpoint/100", mode(True, 1, "stream")),
    ]
    print(
        f"\nLorenz-96 d={args.dim}, {args.dim} off-grid sensors, {args.cycles} records, "
        f"LETKF N={args.members}; reading the file: {read_s:.2f} s"
    )
    print(f"{'mode':<60} {'cycles/s':>9} {'overhead':>9} {'RMSE':>7}")
    burn = min(200, args.cycles // 10)  # RMSE after a burn-in of 200 records (fewer if short)
    base = None
    for name, run in modes:
        jax.block_until_ready(run().analysis_mean)  # compile
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            sol = run()
            jax.block_until_ready(sol.analysis_mean)
            best = min(best, time.perf_counter() - start)
        rate = args.cycles / best
        base = base or best
        err = ((sol.analysis_mean - data.truth) ** 2).mean(axis=1) ** 0.5
        print(f"{name:<60} {rate:>9.0f} {best / base:>8.2f}x {float(err[burn:].mean()):>7.3f}")


if __name__ == "__main__":
    main()
