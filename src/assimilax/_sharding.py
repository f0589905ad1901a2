"""Beliefs spread over devices with JAX's own machinery (`jax.sharding` meshes; the
collectives are the ones XLA inserts), on one host or several (`jax.distributed`).

A run is sharded by handing `assimilate`, `assimilate_stream` or `twin_experiment` a
`mesh` (`device_mesh()`): the belief's arrays are placed on it and the compiled loop
keeps them there every cycle (`constrain`), either

- `over="members"` (default): the member axis is split, so forecasts need no
  communication and the analyses' ensemble-space products, a particle filter's weights
  and resampling, and a score filter's mixture over members reduce across devices; or
- `over="state"`: the first state axis is split (large grids with few members: an
  LETKF's local analyses and SPDE members run where their grid points live).

Everything else (observations, per-cycle outputs) is replicated, so what a run returns
or writes is the same array on every process.

Virtual CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=N`) share one
XLA:CPU thread pool, which needs spare threads for batched LAPACK calls (`CPU_THREADS_VAR`):
importing this module (or `assimilax.filters`) before JAX starts provides them, and
meshes without them are refused (`check_cpu_threads`).
"""

import math
import os
import re
import socket
import time

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._ensemble import as_ensemble
from ._signals import default_signals


AXIS = "shard"
_OVER = ("members", "state")
# Kept in `cpu_xla_flags` (the CLI adds it too), but it is not what stops the hangs of
# sharded loops on XLA:CPU: measured with jax 0.10.2, runs hang with or without it when
# the thread pool below has no spare thread, and did not hang with spare threads.
CPU_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
# XLA:CPU runs each device's program on a thread of one pool of max(cores, devices)
# threads (`PJRT_NPROC`, else `NPROC`, replaces the core count). jaxlib's batched LAPACK
# kernels (`eigh`, `cholesky`, ... of a stack of matrices, such as the LETKF's local
# analyses) split a large batch into tasks on that same pool and block until the tasks
# are done. With as many virtual devices as threads every thread can end up so blocked,
# and the run hangs at 0 % CPU. A pool of devices + cores threads leaves every core a
# thread for those tasks.
CPU_THREADS_VAR = "PJRT_NPROC"
_DEVICE_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def _cores() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_threads(devices: int) -> int:
    """The XLA:CPU thread-pool size (`PJRT_NPROC`) at which `devices` virtual CPU devices
    run sharded loops without hanging: one thread per device, which its program holds
    while it waits, plus one per core for the batched LAPACK tasks it waits for."""
    return devices + _cores()


def cpu_xla_flags(devices: int) -> str:
    """The `XLA_FLAGS` for `devices` virtual CPU devices; set it, with `PJRT_NPROC`, in
    the environment before JAX starts (`cpu_environment` gives both)."""
    return f"--xla_force_host_platform_device_count={devices} {CPU_FLAG}"


def cpu_environment(devices: int) -> dict[str, str]:
    """The environment variables (`XLA_FLAGS`, `PJRT_NPROC`) for `devices` virtual CPU
    devices that run sharded loops safely, e.g. for a subprocess:
    `dict(os.environ, **cpu_environment(4))`. They must be set before JAX starts."""
    return {"XLA_FLAGS": cpu_xla_flags(devices), CPU_THREADS_VAR: str(cpu_threads(devices))}


def _requested_cpu_devices() -> int:
    """The virtual CPU device count the environment asks JAX for (1 if none)."""
    counts = _DEVICE_COUNT_FLAG.findall(os.environ.get("XLA_FLAGS", ""))
    number = os.environ.get("JAX_NUM_CPU_DEVICES", "").strip()  # JAX's own, takes precedence
    if number.isdigit():
        return int(number)
    return int(counts[-1]) if counts else 1


def _pool_size_setting() -> int | None:
    """The thread count `PJRT_NPROC` (else `NPROC`) gives XLA:CPU, if set (as XLA reads it)."""
    for name in (CPU_THREADS_VAR, "NPROC"):
        value = os.environ.get(name, "").strip()
        if re.fullmatch(r"[+-]?\d+", value):
            return max(int(value), 0)
    return None


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # pragma: no cover - other JAX versions
        return False


def reserve_cpu_threads() -> None:
    """Before JAX starts: give XLA:CPU's thread pool a spare thread per core (set
    `PJRT_NPROC`) when the environment asks for at least as many virtual CPU devices as
    there are cores, unless `PJRT_NPROC` or `NPROC` is set. Runs when this module (or
    `assimilax.filters`) is imported; does nothing once JAX's backend has started."""
    devices = _requested_cpu_devices()
    if devices < 2 or devices < _cores() or _pool_size_setting() is not None:
        return
    if not _backend_started():
        os.environ[CPU_THREADS_VAR] = str(cpu_threads(devices))


reserve_cpu_threads()


def check_cpu_threads(mesh: Mesh) -> None:
    """Refuse (`ValueError`) a mesh of virtual CPU devices whose sharded loops can hang:
    one whose devices of this process occupy every thread of XLA:CPU's pool (see
    `cpu_threads`). Meshes of other platforms, or of one device per process, pass."""
    devices = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    if len(devices) < 2 or devices[0].platform != "cpu":
        return
    setting = _pool_size_setting()
    threads = max(_cores() if setting is None else setting, jax.local_device_count("cpu"))
    if threads <= len(devices):
        raise ValueError(
            f"{len(devices)} CPU devices would hold all {threads} threads of XLA:CPU's pool, "
            "so a sharded run can hang (batched LAPACK calls such as the LETKF's wait for "
            f"tasks on that pool); set {CPU_THREADS_VAR}={cpu_threads(len(devices))} before "
            "JAX starts (importing assimilax.filters before then does), or use at most "
            f"{threads - 1} devices."
        )


def device_mesh(devices=None) -> Mesh:
    """A one-axis mesh (axis name `"shard"`) over `devices`: a list of devices, an int
    (the first that many of `jax.devices()`, which spans every process of a
    multi-process run) or None (all of them).

    **Raises:** `TypeError` for anything else, `ValueError` for a count outside
    [1, `jax.device_count()`], and for virtual CPU devices that would occupy XLA:CPU's
    whole thread pool (`check_cpu_threads`)."""
    if devices is None:
        devices = jax.devices()
    elif isinstance(devices, (str, bytes)) or isinstance(devices, bool):
        raise TypeError(
            "`devices` must be an int, a list of devices or None; got "
            f"{type(devices).__name__} {devices!r}."
        )
    elif isinstance(devices, (int, np.integer)):
        if not 1 <= devices <= jax.device_count():
            raise ValueError(
                f"`devices` must lie in [1, {jax.device_count()}] (the devices JAX sees); "
                f"got {devices}."
            )
        devices = jax.devices()[: int(devices)]
    try:
        devices = list(devices)
    except TypeError:
        raise TypeError(
            f"`devices` must be an int, a list of devices or None; got {type(devices).__name__}."
        ) from None
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise TypeError("`devices` must be a non-empty list of JAX devices (`jax.devices()`).")
    mesh = Mesh(np.asarray(devices), (AXIS,))
    check_cpu_threads(mesh)
    return mesh


def _spec(leaf, n: int, size: int, over: str) -> PartitionSpec:
    shape = getattr(leaf, "shape", ())
    if len(shape) >= 1 and shape[0] == n:
        if over == "members":
            return PartitionSpec(AXIS)
        if len(shape) >= 2 and shape[1] % size == 0:
            return PartitionSpec(None, AXIS)
    return PartitionSpec()


def belief_shardings(belief, mesh: Mesh, over: str = "members"):
    """The `NamedSharding` of every array of `belief` (a pytree of the same structure):
    arrays with a leading member axis split as `over` says, the rest replicated.

    **Raises:** `ValueError` for an unknown `over`, a belief that is no ensemble, or a
    member count (or first state axis) that the mesh's devices do not divide."""
    if over not in _OVER:
        raise ValueError(f"`over` must be one of {_OVER}; got {over!r}.")
    ensemble = as_ensemble(belief)
    if ensemble is None:
        raise ValueError(
            f"Only ensemble beliefs can be sharded; got a {type(belief).__name__} (its "
            "covariance is one dense matrix: run it on one device)."
        )
    size = mesh.devices.size
    n, state = ensemble.members.shape[0], ensemble.members.shape[1:]
    split = n if over == "members" else state[0]
    if split % size:
        what = "members" if over == "members" else "points along the first state axis"
        raise ValueError(
            f"The {split} {what} do not divide among the mesh's {size} devices; use a "
            f"multiple of {size} (or another `mesh`)."
        )
    arrays = eqx.filter(belief, eqx.is_array)
    return jax.tree.map(lambda x: NamedSharding(mesh, _spec(x, n, size, over)), arrays)


def shard(belief, mesh: Mesh | None, over: str = "members"):
    """`belief` placed on `mesh` (`belief_shardings`); unchanged when `mesh` is None.
    Every process of a multi-process run passes the same belief. Refuses
    (`check_cpu_threads`) a mesh of virtual CPU devices whose runs can hang."""
    if mesh is None:
        return belief
    check_cpu_threads(mesh)
    arrays, static = eqx.partition(belief, eqx.is_array)
    return eqx.combine(jax.device_put(arrays, belief_shardings(belief, mesh, over)), static)


def place_like(tree, like):
    """`tree`'s arrays put on the devices, with the layout, of `like`'s (same structure);
    e.g. a belief read from a checkpoint file back onto a run's mesh."""
    arrays, static = eqx.partition(tree, eqx.is_array)
    layout = eqx.filter(like, eqx.is_array)
    placed = jax.tree.map(lambda x, y: jax.device_put(x, y.sharding), arrays, layout)
    return eqx.combine(placed, static)


def constrain(belief, mesh: Mesh | None, over: str):
    """Inside a compiled loop: keep `belief` laid out as `shard` put it."""
    if mesh is None:
        return belief
    arrays, static = eqx.partition(belief, eqx.is_array)
    shardings = belief_shardings(belief, mesh, over)
    return eqx.combine(jax.lax.with_sharding_constraint(arrays, shardings), static)


def replicate(tree, mesh: Mesh | None):
    """Inside a compiled loop: outputs replicated on every device of `mesh`."""
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, PartitionSpec()))


def is_spread(tree) -> bool:
    """Whether any array of `tree` (or the array `tree`) lives partly on another process."""
    return any(
        isinstance(x, jax.Array) and not x.is_fully_addressable for x in jax.tree.leaves(tree)
    )


def gather(tree):
    """Host numpy copies of `tree`'s arrays, gathered from every process when an array
    is spread over several (multi-process runs); a no-op copy otherwise."""

    def one(x):
        if is_spread(x):
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x) if isinstance(x, jax.Array) else x

    return jax.tree.map(one, tree)


def is_main_process() -> bool:
    """Whether this process writes files (process 0 of a multi-process run)."""
    return jax.process_index() == 0


# Seconds `initialize_distributed` waits for the coordinator and the other processes.
TIMEOUT_VAR = "ASSIMILAX_DISTRIBUTED_TIMEOUT"
DEFAULT_TIMEOUT = 60.0


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout: float | int | None = None,
) -> None:
    """Start JAX's multi-controller runtime (`jax.distributed.initialize`): call it once
    in every process, before any array is made; afterwards `jax.devices()` (and so
    `device_mesh()`) spans every process's devices.

    The arguments default to the environment variables `JAX_COORDINATOR_ADDRESS`
    (`host:port` of process 0), `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`; with none of
    them set, JAX detects the cluster itself (SLURM, Open MPI, Kubernetes). On CPUs the
    collectives go through gloo.

    Start-up is bounded by `timeout` seconds (default: the environment variable
    `ASSIMILAX_DISTRIBUTED_TIMEOUT`, else 60): a process other than 0 first waits that
    long for the coordinator's port to accept connections, then JAX waits the rest of
    it for every process to join. While it waits, SIGTERM and SIGINT kill the process
    at once (their default actions; JAX's wait would otherwise ignore them), and the
    previous handlers come back afterwards.

    **Raises:** `ValueError` (one line) for a malformed setting, naming it, or a
    coordinator that cannot be reached in time. Peers that never join make JAX itself
    end the process after the timeout."""
    env = os.environ
    timeout = _timeout(timeout, env)
    if coordinator is None and env.get("JAX_COORDINATOR_ADDRESS"):
        coordinator, source = env["JAX_COORDINATOR_ADDRESS"], "JAX_COORDINATOR_ADDRESS"
    else:
        source = "`coordinator`"
    if num_processes is None and "JAX_NUM_PROCESSES" in env:
        num_processes = _env_int("JAX_NUM_PROCESSES", "a positive integer", env)
        if num_processes < 1:
            raise ValueError(f"JAX_NUM_PROCESSES must be a positive integer; got {num_processes}.")
    elif num_processes is not None and (not _is_int(num_processes) or num_processes < 1):
        raise ValueError(f"`num_processes` must be a positive integer; got {num_processes!r}.")
    expected = "an integer in [0, JAX_NUM_PROCESSES)"
    if num_processes is not None:
        expected = f"an integer in [0, {num_processes})"
    if process_id is None and "JAX_PROCESS_ID" in env:
        process_id = _env_int("JAX_PROCESS_ID", expected, env)
        name = "JAX_PROCESS_ID"
    else:
        name = "`process_id`"
    if process_id is not None and (
        not _is_int(process_id)
        or process_id < 0
        or (num_processes is not None and process_id >= num_processes)
    ):
        raise ValueError(f"{name} must be {expected}; got {process_id!r}.")
    address = None if coordinator is None else _address(coordinator, source)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    with default_signals():
        deadline = time.monotonic() + timeout
        if address is not None and process_id not in (None, 0):
            _wait_for(address, deadline, coordinator, source)
        remaining = max(math.ceil(deadline - time.monotonic()), 1)
        try:
            jax.distributed.initialize(
                coordinator, num_processes, process_id, initialization_timeout=remaining
            )
        except jax.errors.JaxRuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"Could not join the run coordinated at {coordinator} ({source}): {first}"
            ) from None


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _env_int(name: str, expected: str, env) -> int:
    value = env[name].strip()
    if not re.fullmatch(r"[+-]?\d+", value):
        raise ValueError(f"{name} must be {expected}; got {env[name]!r}.")
    return int(value)


def _timeout(timeout, env) -> float:
    """The start-up timeout in seconds: `timeout`, else $ASSIMILAX_DISTRIBUTED_TIMEOUT, else 60."""
    if timeout is None and env.get(TIMEOUT_VAR, "").strip():
        text = env[TIMEOUT_VAR]
        try:
            timeout = float(text)
        except ValueError:
            timeout = math.nan
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"{TIMEOUT_VAR} must be a positive number of seconds; got {text!r}.")
        return timeout
    if timeout is None:
        return DEFAULT_TIMEOUT
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float, np.number))
        or not (math.isfinite(timeout) and timeout > 0)
    ):
        raise ValueError(f"`timeout` must be a positive number of seconds; got {timeout!r}.")
    return float(timeout)


def _address(coordinator, source: str) -> tuple[str, int]:
    """`host:port` (IPv6 hosts in brackets) as (host, port)."""
    host, _, port = str(coordinator).rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"{source} must be host:port (of process 0), e.g. 10.0.0.1:1234; got {coordinator!r}."
        )
    return host, int(port)


def _wait_for(address, deadline: float, coordinator, source: str) -> None:
    """Wait until the coordinator accepts TCP connections, or raise at `deadline`."""
    start = time.monotonic()
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection(address, timeout=max(min(left, 2.0), 0.05)):
                return
        except OSError as e:
            reason = e.strerror or type(e).__name__
        if time.monotonic() + 0.25 >= deadline:
            raise ValueError(
                f"Could not reach the coordinator at {coordinator} ({source}) within "
                f"{time.monotonic() - start:.0f} s ({reason}): start process 0 there, or "
                f"fix the address; {TIMEOUT_VAR} sets the wait."
            )
        time.sleep(0.25)
