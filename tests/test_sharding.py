"""Ensemble members sharded across devices give the same analysis as on one device.

Runs in a subprocess with 4 virtual CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=4`), which must be set before JAX
starts.
"""

import os
import subprocess
import sys
import textwrap


SCRIPT = textwrap.dedent(
    """
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, jax.random as jr, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import assimilax as ax
    from assimilax.dynamics import Lorenz96
    from assimilax.filters import ETKF, LETKF
    from assimilax.observations import Subsample

    assert jax.device_count() == 4, jax.devices()
    dyn, obs = Lorenz96(16), Subsample.every(16, 2, noise_std=1.0)
    times = 0.05 * jnp.arange(1.0, 21.0)
    series = ax.ObservationSeries(obs, times, 8 + jr.normal(jr.key(0), (20, 8)))
    members = 8 + jr.normal(jr.key(1), (8, 16))
    mesh = Mesh(np.array(jax.devices()), ("members",))
    sharded = jax.device_put(members, NamedSharding(mesh, P("members", None)))
    assert len(sharded.sharding.device_set) == 4
    for flt in (ETKF(1.02), LETKF(2.0, 1.02)):
        one = ax.assimilate(flt, dyn, series, ax.Ensemble(members), key=jr.key(2))
        many = ax.assimilate(flt, dyn, series, ax.Ensemble(sharded), key=jr.key(2))
        assert np.allclose(one.analysis_mean, many.analysis_mean, atol=1e-9), flt
        assert np.allclose(one.belief.members, many.belief.members, atol=1e-9), flt
    print("SHARDED-OK")
    """
)


def test_sharded_members_match_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SHARDED-OK" in proc.stdout
