"""Beliefs sharded over devices give the single-device numbers (issue 19).

Runs in a subprocess with 4 virtual CPU devices and a thread pool that leaves the
batched LAPACK kernels spare threads (`assimilax.cpu_environment`: `XLA_FLAGS` and
`PJRT_NPROC`, set before JAX starts); meshes of 1, 2 and 4.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import assimilax as ax
from assimilax.filters import KalmanFilter


SCRIPT = textwrap.dedent(
    """
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, jax.random as jr, numpy as np
    import assimilax as ax
    from assimilax.dynamics import Lorenz96
    from assimilax.filters import ETKF, LETKF, BootstrapFilter, EnsembleScoreFilter
    from assimilax.observations import Subsample

    assert jax.device_count() == 4, jax.devices()
    dyn, obs = Lorenz96(16), Subsample.every(16, 2, noise_std=1.0)
    times = 0.05 * jnp.arange(1.0, 11.0)
    series = ax.ObservationSeries(obs, times, 8 + jr.normal(jr.key(0), (10, 8)))
    ensemble = ax.Ensemble(8 + jr.normal(jr.key(1), (16, 16)))
    cases = [
        ("etkf", ETKF(1.02), "members"),
        ("letkf", LETKF(2.0, 1.02), "members"),
        ("letkf-state", LETKF(2.0, 1.02), "state"),
        ("pf", BootstrapFilter(threshold=0.9, regularisation=0.5), "members"),
        ("ensf", EnsembleScoreFilter(steps=20), "members"),
    ]
    for name, flt, over in cases:
        belief0 = flt.init(ensemble, key=jr.key(3))
        one = ax.assimilate(flt, dyn, series, belief0, key=jr.key(2))
        for n in (1, 2, 4):
            mesh = ax.device_mesh(n)
            many = ax.assimilate(flt, dyn, series, belief0, key=jr.key(2), mesh=mesh, over=over)
            leaf = ax.as_ensemble(many.belief).members
            assert len(leaf.sharding.device_set) == n, (name, n, leaf.sharding)
            gap = max(
                float(np.max(np.abs(one.analysis_mean - many.analysis_mean))),
                float(np.max(np.abs(one.belief.members - many.belief.members))),
            )
            assert gap <= 1e-12, (name, n, gap)
            print(name, n, gap)
    print("SHARDED-OK")
    """
)


def test_sharded_runs_match_one_device():
    """ETKF, LETKF (members or grid points split), particle filter and EnSF on 1, 2 and
    4 devices: analyses and final members within 1e-12 of the one-device run."""
    env = dict(os.environ, **ax.cpu_environment(4))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SHARDED-OK" in proc.stdout, proc.stdout


def test_bad_meshes_are_refused():
    ensemble = ax.Ensemble(jnp.zeros((3, 4)) + jr.normal(jr.key(0), (3, 4)))
    mesh = ax.device_mesh(1)
    with pytest.raises(ValueError, match="over"):
        ax.shard(ensemble, mesh, over="time")
    with pytest.raises(ValueError, match="devices"):
        ax.device_mesh(jax.device_count() + 1)
    with pytest.raises(ValueError, match="Only ensemble beliefs"):
        ax.shard(KalmanFilter().init(ensemble, key=jr.key(0)), mesh)


@pytest.mark.parametrize("name", ["etkf", "letkf", "ensf"])
def test_no_quadratic_memory_at_a_million_variables(name):
    """The compiled loop for Lorenz-96 at d = 10^6 (20 members, every 10th point
    observed) needs temporary memory of a small multiple of the ensemble (n d numbers),
    read from XLA's memory analysis without running it: no d x d (8 TB) or d x m array."""
    from assimilax._assimilate import initial_result, run_cycles
    from assimilax.dynamics import Lorenz96
    from assimilax.filters import ETKF, LETKF, EnsembleScoreFilter
    from assimilax.observations import Subsample

    d, n = 10**6, 20
    flt = {
        "etkf": ETKF(1.02),
        "letkf": LETKF(4.0, 1.02, max_local_observations=5),
        "ensf": EnsembleScoreFilter(steps=10),
    }[name]
    obs = Subsample.every(d, 10, noise_std=1.0)
    series = ax.ObservationSeries(obs, 0.05 * jnp.arange(1.0, 3.0), jnp.zeros((2, d // 10)))
    belief0 = flt.init(ax.Ensemble(jnp.zeros((n, d))), key=jr.key(0))
    args = (Lorenz96(d), series, belief0, jnp.asarray(0.0), None, jnp.asarray(0, jnp.int32))
    lowered = run_cycles.lower(flt, *args, jr.key(1), initial_result(), False, False)
    memory = lowered.compile().compiled.memory_analysis()
    ensemble_bytes = n * d * 8
    assert memory.temp_size_in_bytes < 32 * ensemble_bytes, memory.temp_size_in_bytes / 1e9
    assert memory.output_size_in_bytes < 4 * ensemble_bytes


@pytest.mark.slow
def test_cli_devices_flag_gives_the_same_twin(tmp_path):
    """`assimilax twin --devices 4` on 4 virtual devices writes the one-device numbers."""
    env = dict(os.environ, **ax.cpu_environment(4))
    run = ["assimilax", "twin", "--cycles", "40", "--no-progress", "--filters", "etkf,letkf"]
    for name, extra in (("one", []), ("four", ["--devices", "4"])):
        cmd = [*run, "--out", str(tmp_path / f"{name}.nc"), *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    one, four = (ax.read_netcdf(tmp_path / f"{n}.nc") for n in ("one", "four"))
    gap = abs(one["analysis_mean"] - four["analysis_mean"]).max()
    assert float(gap) < 1e-12
