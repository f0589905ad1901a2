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
"""

import os
import warnings

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._ensemble import as_ensemble


AXIS = "shard"
_OVER = ("members", "state")
# XLA:CPU's concurrency-optimised scheduler can order the collectives of a sharded
# `while` loop differently on each virtual CPU device, and the run then hangs (found
# with the LETKF at 4 devices x 16 members); this flag turns it off. Set it in
# XLA_FLAGS, with the device count, before JAX starts (the CLI does).
CPU_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def cpu_xla_flags(devices: int) -> str:
    """The `XLA_FLAGS` for `devices` virtual CPU devices that run sharded loops safely:
    set it in the environment before JAX starts."""
    return f"--xla_force_host_platform_device_count={devices} {CPU_FLAG}"


def device_mesh(devices=None) -> Mesh:
    """A one-axis mesh (axis name `"shard"`) over `devices`: a list of devices, an int
    (the first that many of `jax.devices()`, which spans every process of a
    multi-process run) or None (all of them)."""
    if devices is None:
        devices = jax.devices()
    elif isinstance(devices, int):
        if not 1 <= devices <= jax.device_count():
            raise ValueError(
                f"`devices` must lie in [1, {jax.device_count()}] (the devices JAX sees); "
                f"got {devices}."
            )
        devices = jax.devices()[:devices]
    devices = list(devices)
    _warn_cpu(devices)
    return Mesh(np.asarray(devices), (AXIS,))


def _warn_cpu(devices) -> None:
    """Warn where sharding over virtual CPU devices is known to hang XLA:CPU."""
    if devices[0].platform != "cpu" or len(devices) < 2:
        return
    if CPU_FLAG not in os.environ.get("XLA_FLAGS", ""):
        warnings.warn(
            f"Sharding over {len(devices)} CPU devices without {CPU_FLAG} in XLA_FLAGS: "
            "XLA:CPU may hang in the sharded loop. Start Python with XLA_FLAGS="
            f"'{cpu_xla_flags(len(devices))}' (assimilax.cpu_xla_flags).",
            stacklevel=3,
        )


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
    Every process of a multi-process run passes the same belief."""
    if mesh is None:
        return belief
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


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Start JAX's multi-controller runtime (`jax.distributed.initialize`): call it once
    in every process, before any array is made; afterwards `jax.devices()` (and so
    `device_mesh()`) spans every process's devices.

    The arguments default to the environment variables `JAX_COORDINATOR_ADDRESS`
    (`host:port` of process 0), `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`; with none of
    them set, JAX detects the cluster itself (SLURM, Open MPI, Kubernetes). On CPUs the
    collectives go through gloo."""
    env = os.environ
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and "JAX_NUM_PROCESSES" in env:
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in env:
        process_id = int(env["JAX_PROCESS_ID"])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)
