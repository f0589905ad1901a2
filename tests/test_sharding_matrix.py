"""Sharded runs on virtual CPU devices never hang: every filter of
`assimilax.experiments.FILTERS` on 1, 2 and 4 devices, split over members or the state
axis, at d = 40, 80 and 1000 (Lorenz-96, 24 members), either completes a few cycles or
is refused with a one-line `ValueError` before compiling. Each case runs in a
subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=4` and a timeout, so
a hang fails the test instead of blocking CI.

The hang (jax 0.10.2): XLA:CPU runs each device's program on a thread of one pool of
max(cores, devices) threads, and jaxlib's batched LAPACK calls (the LETKF's local
`eigh`s) wait for tasks queued on that same pool; `assimilax` gives the pool a spare
thread per core (`PJRT_NPROC`) when it is imported before JAX starts and refuses
meshes without one. Also: `initialize_distributed` starts up in bounded time, can be
killed while it waits, and names a malformed setting.
"""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from assimilax._sharding import initialize_distributed
from assimilax.experiments import FILTERS

from .test_distributed import _free_port


# argv: filter name, d, members, cycles, runs, then cases "devices:over". Each case runs
# `runs` times (each run may hang: XLA's threads race), and prints one line:
# "CASE name d devices over OK" or "... REFUSED <message>".
CASES = textwrap.dedent(
    """
    import sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, jax.random as jr
    import assimilax as ax
    from assimilax.dynamics import Lorenz96
    from assimilax.experiments import make_filter
    from assimilax.observations import Subsample

    name, (d, n, cycles, runs) = sys.argv[1], map(int, sys.argv[2:6])
    dyn, obs = Lorenz96(d), Subsample.every(d, 2, noise_std=1.0)
    times = 0.05 * jnp.arange(1.0, cycles + 1.0)
    series = ax.ObservationSeries(obs, times, 8 + jr.normal(jr.key(0), (cycles, d // 2)))
    ensemble = ax.Ensemble(8 + jr.normal(jr.key(1), (n, d)))
    # Short training and sampling: the subject is the sharded loop, not the accuracy.
    cheap = {"sf": dict(samples=200, train_steps=50, steps=10, finetune_steps=1),
             "ensf": dict(steps=10)}
    flt = make_filter(name, "lorenz96", dim=d, **cheap.get(name, {}))
    belief0 = flt.init(ensemble, key=jr.key(3))
    for case in sys.argv[6:]:
        devices, over = case.split(":")
        print("START", name, d, devices, over, flush=True)
        try:
            mesh = ax.device_mesh(int(devices))
            for _ in range(runs):  # throw=False: a filter that loses track is no hang
                out = ax.assimilate(
                    flt, dyn, series, belief0, key=jr.key(2), mesh=mesh, over=over, throw=False
                )
                jax.block_until_ready(out.analysis_mean)
        except ValueError as e:
            assert "\\n" not in str(e), str(e)
            print("CASE", name, d, devices, over, "REFUSED", e, flush=True)
        else:
            print("CASE", name, d, devices, over, "OK", flush=True)
    """
)
ALL_CASES = [f"{n}:{over}" for n in (1, 2, 4) for over in ("members", "state")]


def _child_env(**extra) -> dict[str, str]:
    """The tester's environment: 4 virtual CPU devices and nothing else in XLA_FLAGS
    (no thread-pool setting: importing assimilax must provide it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PJRT_NPROC", "NPROC")}
    return dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4", **extra)


def _run_cases(name: str, d: int, cases, *, timeout: float, cycles=3, runs=1) -> dict:
    """{"devices:over": "OK" | "REFUSED ..."} of filter `name` at dimension `d`."""
    cmd = [sys.executable, "-c", CASES, name, str(d), "24", str(cycles), str(runs), *cases]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=_child_env(), timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        started = [line for line in (e.stdout or b"").decode().splitlines() if "START" in line]
        pytest.fail(f"{name} d={d} hung (no result after {timeout} s): {started[-1:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("CASE"):
            _, _, _, devices, over, verdict = line.split(" ", 5)
            results[f"{devices}:{over}"] = verdict
    assert sorted(results) == sorted(cases), proc.stdout
    return results


def test_tester_letkf_case_completes():
    """The reported hang: the LETKF at d = 80, 24 members, on 4 virtual devices (over
    members and over the state axis) finishes instead of waiting forever. Without the
    spare threads 20 runs of 3 cycles hung in 5 of 5 tries."""
    cases = ["4:members", "4:state"]
    results = _run_cases("letkf", 80, cases, timeout=150, cycles=3, runs=20)
    assert results == {"4:members": "OK", "4:state": "OK"}


def test_mesh_without_a_spare_thread_is_refused():
    """JAX started (4 devices, a pool of 4 threads) before assimilax could size the pool:
    a 4-device mesh is refused in one line that says what to set; 2 devices pass."""
    script = textwrap.dedent(
        """
        import jax
        jax.devices()  # the backend starts before assimilax is imported
        import assimilax as ax
        ax.device_mesh(2)
        try:
            ax.device_mesh(4)
        except ValueError as e:
            print("REFUSED", e)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True, text=True, env=_child_env(), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = proc.stdout.splitlines()
    assert line.startswith("REFUSED") and "PJRT_NPROC=" in line, line


@pytest.mark.slow
@pytest.mark.parametrize("d", [40, 80, 1000])
@pytest.mark.parametrize("name", list(FILTERS))
def test_every_filter_completes_or_is_refused(name, d):
    """Every filter x {1, 2, 4} devices x over {members, state}: completes or is
    refused in one line (only beliefs that are no ensemble are refused: the dense
    covariances of the Kalman-type filters)."""
    results = _run_cases(name, d, ALL_CASES, timeout=900)
    for verdict in results.values():
        assert verdict == "OK" or verdict.startswith("REFUSED Only ensemble beliefs"), verdict


# Distributed start-up -----------------------------------------------------------------


def test_unreachable_coordinator_fails_fast_in_one_line():
    """No coordinator listening (process 1 of 2): a non-zero exit with a one-line error
    naming JAX_COORDINATOR_ADDRESS within the timeout (2 s here), not minutes."""
    env = _child_env(
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}",
        JAX_NUM_PROCESSES="2",
        JAX_PROCESS_ID="1",
        ASSIMILAX_DISTRIBUTED_TIMEOUT="2",
    )
    script = "import assimilax as ax; ax.initialize_distributed()"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: Could not reach the coordinator"), proc.stderr[-2000:]
    assert "JAX_COORDINATOR_ADDRESS" in last
    assert elapsed < 30, elapsed


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_waiting_start_up_dies_on_a_signal(sig):
    """Process 0 of 2 waits inside JAX (C++) for a peer that never comes; a handler
    the program had installed (as the CLI does) must not keep the signal from ending it."""
    script = textwrap.dedent(
        """
        import signal, sys
        from assimilax._sharding import initialize_distributed
        signal.signal(signal.SIGTERM, lambda *a: print("handled", flush=True))
        signal.signal(signal.SIGINT, lambda *a: print("handled", flush=True))
        initialize_distributed(sys.argv[1], 2, 0, timeout=60)
        """
    )
    port = _free_port()
    with subprocess.Popen(
        [sys.executable, "-c", script, f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_child_env(),
    ) as proc:  # fmt: skip
        try:
            _wait_until_listening(port, proc)  # JAX's service is up: it waits in C++ now
            time.sleep(0.5)
            proc.send_signal(sig)
            proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == -sig


def _wait_until_listening(port: int, proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.returncode
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"nothing listens on port {port} after {timeout} s")


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"JAX_NUM_PROCESSES": "abc"}, "JAX_NUM_PROCESSES must be a positive integer; got 'abc'"),
        ({"JAX_NUM_PROCESSES": "0"}, "JAX_NUM_PROCESSES must be a positive integer"),
        (
            {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "x"},
            r"JAX_PROCESS_ID must be an integer in \[0, 2\); got 'x'",
        ),
        ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, r"JAX_PROCESS_ID .* \[0, 2\)"),
        ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "-1"}, r"JAX_PROCESS_ID .* \[0, 2\)"),
        (
            {"JAX_COORDINATOR_ADDRESS": "localhost", "JAX_NUM_PROCESSES": "2"},
            "JAX_COORDINATOR_ADDRESS must be host:port",
        ),
        ({"ASSIMILAX_DISTRIBUTED_TIMEOUT": "soon"}, "ASSIMILAX_DISTRIBUTED_TIMEOUT must be"),
        ({"ASSIMILAX_DISTRIBUTED_TIMEOUT": "-5"}, "ASSIMILAX_DISTRIBUTED_TIMEOUT must be"),
    ],
)
def test_bad_distributed_settings_are_named(monkeypatch, env, match):
    """Malformed settings fail before JAX is asked to start anything."""
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ASSIMILAX_DISTRIBUTED_TIMEOUT", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=match):
        initialize_distributed()


def test_bad_distributed_arguments_are_named():
    with pytest.raises(ValueError, match="`num_processes` must be a positive integer"):
        initialize_distributed("127.0.0.1:1234", 0, 0)
    with pytest.raises(ValueError, match=r"`process_id` must be an integer in \[0, 2\)"):
        initialize_distributed("127.0.0.1:1234", 2, 5)
    with pytest.raises(ValueError, match="`timeout` must be a positive number"):
        initialize_distributed("127.0.0.1:1234", 2, 1, timeout=0)
    with pytest.raises(ValueError, match="`coordinator` must be host:port"):
        initialize_distributed("127.0.0.1", 2, 1)


def test_device_mesh_names_a_bad_devices_argument():
    import assimilax as ax

    for bad in ("2", True, 2.5, [0, 1], []):
        with pytest.raises(TypeError, match="`devices`"):
            ax.device_mesh(bad)
