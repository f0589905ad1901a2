"""Seconds per cycle and memory against the number of devices (issue 19).

    python benchmarks/scaling.py --quick          # virtual CPU devices, small sizes (L96)
    python benchmarks/scaling.py                  # L96 d = 1e5 and 1e6, NS-2D 256^2
    python benchmarks/scaling.py --devices 1      # e.g. one GPU

Without an accelerator the script re-runs itself with virtual CPU devices, as many as
cores up to 4 (`XLA_FLAGS` from `assimilax.cpu_xla_flags`); they share the cores, so
there the table is a correctness check (the analysis on n devices against one), not a speed
claim. Cases: Lorenz-96 with the LETKF (1-D neighbour search, `max_local_observations`;
grid points split over devices) and the EnSF (members split); 2-D Navier-Stokes with the
LETKF at N = 40 (grid rows split). Strong scaling: the same problem on 1, 2, 4 devices; weak
scaling (L96 LETKF): 10 members per device. Memory: XLA's analysis of the compiled loop
(per device: arguments + temporaries + outputs). Float32 unless `--float64`.
"""

import os
import subprocess
import sys
import time

import numpy as np
from _common import POSITIVE_INT, Parser, listing, machine_line


def cases(quick: bool):
    """`(name, dynamics, observation, filter, members, scaling, split)` of each case."""
    from assimilax.dynamics import Lorenz96, NavierStokes2D, SpatialSpectrum
    from assimilax.filters import ETKF, LETKF, EnsembleScoreFilter
    from assimilax.observations import Subsample

    out = []
    if quick:  # the quick run: the global filters only
        dyn, obs = Lorenz96(10_000), Subsample.every(10_000, 10, noise_std=1.0)
        out.append(("L96 d=1e+04 ETKF", dyn, obs, ETKF(1.02), 20, "strong", "members"))
        out.append(("L96 d=1e+04 ETKF", dyn, obs, ETKF(1.02), 10, "weak", "members"))
        out.append(
            ("L96 d=1e+04 EnSF", dyn, obs, EnsembleScoreFilter(steps=50), 20, "strong", "members")
        )
        return out
    for d in [100_000, 1_000_000]:
        dyn, name = Lorenz96(d), f"L96 d={d:.0e}"
        obs = Subsample.every(d, 10, noise_std=1.0)  # taper support +-14.6: 2 each side
        letkf = LETKF(4.0, 1.02, max_local_observations=5)
        out.append((f"{name} LETKF", dyn, obs, letkf, 20, "strong", "state"))
        out.append((f"{name} LETKF", dyn, obs, letkf, 10, "weak", "state"))
        out.append(
            (f"{name} EnSF", dyn, obs, EnsembleScoreFilter(steps=50), 20, "strong", "members")
        )
    ns = 256
    dyn = NavierStokes2D(ns, noise=SpatialSpectrum(0.2, 0.5))
    obs = Subsample.every((ns, ns), 4, noise_std=0.2)
    letkf = LETKF(4.0, 1.02, max_local_observations=16)
    out.append((f"NS-2D {ns}^2 LETKF", dyn, obs, letkf, 40, "strong", "state"))
    return out


def measure(name, dyn, obs, flt, members, devices, cycles, dtype, over):
    """(seconds per cycle, bytes per device, final analysis mean) on `devices`."""
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    import assimilax as ax
    from assimilax._assimilate import initial_result, run_cycles

    shape = tuple(dyn.state_shape)
    times = jnp.asarray(0.05 * jnp.arange(1, cycles + 1), dtype)
    y = jr.normal(jr.key(0), (cycles, obs.obs_dim), dtype)
    series = ax.ObservationSeries(obs, times, y)
    ensemble = ax.Ensemble(jr.normal(jr.key(1), (members, *shape), dtype))
    mesh = ax.device_mesh(devices)
    belief0 = ax.shard(flt.init(ensemble, key=jr.key(2)), mesh, over)
    run = lambda: ax.assimilate(
        flt, dyn, series, belief0, key=jr.key(3), mesh=mesh, over=over, scores=False
    )
    jax.block_until_ready(run().analysis_mean)  # compile
    start = time.perf_counter()
    sol = run()
    jax.block_until_ready(sol.analysis_mean)
    seconds = (time.perf_counter() - start) / cycles
    args = (dyn, series, belief0, jnp.asarray(0.0, dtype), None, jnp.asarray(0, jnp.int32))
    lowered = run_cycles.lower(
        flt, *args, jr.key(3), initial_result(), False, False, mesh, "members"
    )
    mem = lowered.compile().compiled.memory_analysis()
    per_device = mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes
    return seconds, per_device, np.asarray(sol.analysis_mean[-1])


def main():
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--float64", action="store_true")
    parser.add_argument(
        "--devices",
        type=listing(POSITIVE_INT),
        default=None,
        help="device counts to run on (default 1,2,4; on CPU at most the core count, "
        "as virtual devices share the cores)",
    )
    parser.add_argument("--cycles", type=POSITIVE_INT, default=5)
    args = parser.parse_args()
    import jax

    counts = args.devices
    if counts is None:
        cpu = jax.devices()[0].platform == "cpu"
        limit = min(4, os.cpu_count() or 1) if cpu else jax.device_count()
        counts = [n for n in (1, 2, 4) if n <= max(limit, 1)]

    if jax.device_count() < max(counts) and "_SCALING_CHILD" not in os.environ:
        env = dict(os.environ, _SCALING_CHILD="1")
        import assimilax as ax

        env.update(ax.cpu_environment(max(counts)))  # XLA_FLAGS and PJRT_NPROC
        raise SystemExit(subprocess.call([sys.executable, *sys.argv], env=env))
    if jax.device_count() < max(counts):
        parser.error(f"--devices: JAX sees {jax.device_count()} device(s); got {max(counts)}")
    jax.config.update("jax_enable_x64", args.float64)
    import jax.numpy as jnp

    dtype = jnp.float64 if args.float64 else jnp.float32
    print(machine_line())
    print(f"devices: {jax.devices()}; dtype {np.dtype(dtype).name}; {args.cycles} cycles")
    head = (
        f"{'case':<24} {'split':<7} {'scaling':<7} {'N':>4} {'dev':>4} {'s/cycle':>9} {'MB/dev':>9}"
    )
    print(f"\n{head} {'max |d| vs 1 dev':>17}")
    for name, dyn, obs, flt, members, kind, over in cases(args.quick):
        ref = None
        for n in counts:
            m = members * n if kind == "weak" else members
            seconds, memory, mean = measure(name, dyn, obs, flt, m, n, args.cycles, dtype, over)
            if kind == "strong":
                ref = mean if ref is None else ref
                gap = f"{float(np.max(np.abs(mean - ref))):17.1e}"
            else:
                gap = f"{'-':>17}"
            row = f"{name:<24} {over:<7} {kind:<7} {m:>4} {n:>4} {seconds:9.4f}"
            print(f"{row} {memory / 1e6:9.1f} {gap}")


if __name__ == "__main__":
    main()
