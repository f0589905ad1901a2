"""Two processes on localhost (CPU collectives through gloo) reproduce a one-process
twin experiment, and a checkpoint written by the two-process run resumes in it
bit-identically (issue 19). Slow: each process starts JAX and compiles its own loop."""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import assimilax as ax


WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import jax
    jax.config.update("jax_enable_x64", True)
    import assimilax as ax
    pid, port, out = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    if pid >= 0:
        ax.initialize_distributed(f"127.0.0.1:{port}", 2, pid)
    import jax.numpy as jnp, jax.random as jr, numpy as np
    from assimilax.dynamics import Lorenz96
    from assimilax.filters import ETKF, LETKF, BootstrapFilter, EnsembleScoreFilter
    from assimilax.observations import Subsample

    tag = "two" if pid >= 0 else "one"
    mesh = ax.device_mesh() if pid >= 0 else None
    assert pid < 0 or jax.device_count() == 2 and jax.process_count() == 2
    dyn, obs = Lorenz96(16), Subsample.every(16, 2, noise_std=1.0)
    filters = {
        "etkf": ETKF(1.02), "letkf": LETKF(2.0, 1.02),
        "pf": BootstrapFilter(threshold=0.9, regularisation=0.5),
        "ensf": EnsembleScoreFilter(steps=20),
    }
    ds = ax.twin_experiment(
        dyn, obs, filters, key=jr.key(0), members=8, cycles=20, obs_interval=0.05,
        burn_in=5, x0=8.0 * jnp.ones(16), mesh=mesh,
    )
    if pid <= 0:
        ds.drop_vars(["wall_seconds", "compile_seconds"]).to_netcdf(out / f"twin-{tag}.nc")

    # Kill and resume with a checkpoint of the sharded belief.
    times = 0.05 * jnp.arange(1.0, 21.0)
    truth, series = ax.simulate(dyn, obs, 8.0 + jnp.arange(16.0) / 16, times, key=jr.key(5))
    flt = ETKF(1.02)
    belief0 = flt.init(ax.Ensemble(8 + jr.normal(jr.key(6), (8, 16))), key=jr.key(7))
    stream = lambda records: ax.ObservationStream(obs, records)

    def cut(records, after):
        for i, record in enumerate(records):
            if i == after:
                raise ConnectionError("the sensor feed dropped")
            yield record

    run = dict(key=jr.key(8), mesh=mesh, chunk_size=4)
    ckpt = ax.Checkpoint(out / f"ckpt-{tag}", every=4)
    sinks = lambda: [ax.NetCDFOutput(out / f"run-{tag}.nc"), ckpt]
    drive = lambda records, sinks, **kw: ax.assimilate_stream(
        flt, dyn, stream(records), belief0, sinks=sinks, **run, **kw
    )
    full = drive(series.records(), [ax.NetCDFOutput(out / f"full-{tag}.nc")])
    try:
        drive(cut(series.records(), 10), sinks())
        raise AssertionError("the interrupted run did not stop")
    except ConnectionError:
        pass
    resumed = drive(series.records(), sinks(), resume=True)
    from assimilax._sharding import gather
    a, b = gather(resumed.belief.members), gather(full.belief.members)
    assert np.array_equal(a, b), np.max(np.abs(a - b))
    print("WORKER-OK", pid)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_reproduce_one(tmp_path):
    env = dict(os.environ, XLA_FLAGS=ax.cpu_xla_flags(1))
    port = str(_free_port())
    run = lambda pid: subprocess.Popen(
        [sys.executable, "-c", WORKER, str(pid), port, str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    procs = [run(-1), run(0), run(1)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs, strict=True):
        assert p.returncode == 0, stderr[-3000:]
        assert "WORKER-OK" in stdout
    one, two = (ax.read_netcdf(tmp_path / f"twin-{t}.nc") for t in ("one", "two"))
    for name in one.data_vars:
        if one[name].dtype.kind == "f":
            np.testing.assert_allclose(two[name].values, one[name].values, rtol=0, atol=1e-12)
        else:
            assert np.array_equal(two[name].values, one[name].values), name
    for t in ("one", "two"):  # the resumed file equals the uninterrupted one, bit for bit
        a, b = ax.read_netcdf(tmp_path / f"run-{t}.nc"), ax.read_netcdf(tmp_path / f"full-{t}.nc")
        for name in b.data_vars:
            assert np.array_equal(a[name].values, b[name].values), (t, name)
    assert (tmp_path / "ckpt-two").is_dir() and (tmp_path / "ckpt-one").is_file()
