"""What the commands' runs share: starting JAX, the model and filter set-up from the
flags, memory checks, output locks and signals."""

import dataclasses
import os
import signal
import sys


def compilation_cache_dir() -> str | None:
    """The folder of JAX's persistent compilation cache for the CLI: the environment's
    `JAX_COMPILATION_CACHE_DIR`, else `$XDG_CACHE_HOME/assimilax/jax` (default
    `~/.cache/assimilax/jax`); None when turned off by `ASSIMILAX_NO_CACHE=1`."""
    if os.environ.get("ASSIMILAX_NO_CACHE", "") not in ("", "0"):
        return None
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "assimilax", "jax")


def _start_jax(args):
    """Configure JAX at the boundary (never at import): precision and the persistent
    compilation cache (compiled loops are reused across runs: ~4x faster start-up)."""
    if getattr(args, "devices", None):  # before JAX starts its backend
        from .._sharding import CPU_FLAG

        flags = os.environ.get("XLA_FLAGS", "")
        if CPU_FLAG not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {CPU_FLAG}".strip()
    import jax

    if getattr(args, "distributed", False):
        from .._sharding import initialize_distributed

        initialize_distributed()
    if getattr(args, "precision", "float64") == "auto":
        args.precision = _auto_precision(args)
    jax.config.update("jax_enable_x64", getattr(args, "precision", "float64") == "float64")
    folder = None if getattr(args, "no_compilation_cache", False) else compilation_cache_dir()
    if folder is not None:
        try:
            os.makedirs(folder, exist_ok=True)
            jax.config.update("jax_compilation_cache_dir", folder)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        except OSError:
            pass  # a read-only home: run without the cache
    return jax


def _check_memory(needed_bytes: float, what: str) -> None:
    from .._checks import check_memory

    check_memory(needed_bytes, what)


LARGE_STATE = 100_000  # state values from which `--precision auto` means float32


def _auto_precision(args) -> str:
    """float64 for states of fewer than `LARGE_STATE` values (accuracy, the DAPPER
    comparisons), float32 for larger ones (memory and speed at scale)."""
    from ..experiments import get_model

    try:
        setup = get_model(getattr(args, "model", None) or "lorenz96")
    except ValueError:
        return "float64"  # the bad name is reported where the model is built
    dim = getattr(args, "dim", None) or setup.default_dim
    size = float(dim) ** len(setup.initial_state(2).shape)
    return "float32" if size >= LARGE_STATE else "float64"


def _setup(args):
    """The model setup, its dimension and dynamics from --model and --dim."""
    from ..experiments import get_model

    try:
        setup = get_model(args.model or "lorenz96")
    except ValueError as e:
        raise ValueError(f"--model: {e}") from None
    dim = setup.default_dim if args.dim is None else args.dim
    if setup.fixed_dim and dim != setup.default_dim:
        raise ValueError(f"--dim: {setup.name} has dimension {setup.default_dim}; got {dim}.")
    ndim = len(setup.initial_state(2).shape)
    _check_memory(8.0 * 20 * float(dim) ** ndim, "--dim")
    return setup, dim, setup.make_dynamics(dim)


def _members(args, setup) -> int:
    members = setup.members if args.members is None else args.members
    if members < 2:
        raise ValueError(f"--members: need at least 2; got {members}.")
    return members


_PF_OPTIONS = ("threshold", "regularisation", "resampling")


def _filter_options(args, names) -> dict[str, dict]:
    """The options given on the command line, for each filter that takes them; an
    option that no chosen filter takes is an error, one that some ignore is noted."""
    from ..experiments import OPTIONS

    given = {
        k: getattr(args, k)
        for k in ("inflation", "radius", "bandwidth", *_PF_OPTIONS)
        if getattr(args, k) is not None
    }
    for option in given:
        takers = [n for n in names if option in OPTIONS.get(n, ())]
        flag = f"--{option}"
        if not takers:
            raise ValueError(
                f"{flag}: does not apply to {', '.join(names)} (taken by "
                f"{', '.join(n for n in OPTIONS if option in OPTIONS[n])})."
            )
        if len(takers) < len(names):
            skip = ", ".join(n for n in names if n not in takers)
            print(f"note: {flag} applies to {', '.join(takers)}, not to {skip}", file=sys.stderr)
    return {n: {k: v for k, v in given.items() if k in OPTIONS.get(n, ())} for n in names}


def _mesh(args):
    """The device mesh of `--devices` (None: one device)."""
    if getattr(args, "devices", None) is None:
        return None
    from .._sharding import device_mesh

    try:
        return device_mesh(args.devices)
    except ValueError as e:
        raise ValueError(f"--devices: {e}") from None


def _experiment(args):
    """The regime (or None), model setup, dimension, dynamics, observation operator and
    burn-in of a twin experiment or sweep; fills `args.obs_std`, `args.obs_interval`
    and `args.observe` with the model's defaults where not given."""
    from ..experiments import make_observation

    regime = _apply_regime(args)
    setup, dim, dynamics = _setup(args)
    if regime is not None:
        dynamics = regime.make_dynamics()
        # The regime's tuned filter settings (benchmarks/regimes.py) over the model's.
        defaults = {**setup.filter_defaults, **regime.filter_settings}
        setup = dataclasses.replace(setup, filter_defaults=defaults)
    burn_in = args.cycles // 10 if args.burn_in is None else args.burn_in
    if burn_in >= args.cycles:
        raise ValueError(f"--burn-in ({burn_in}) must be less than --cycles ({args.cycles}).")
    args.obs_std = setup.obs_std if args.obs_std is None else args.obs_std
    args.obs_interval = setup.obs_interval if args.obs_interval is None else args.obs_interval
    args.observe = setup.observe if args.observe is None else args.observe
    observation = make_observation(
        dynamics.state_shape, args.obs_std, args.observe, args.observation,
        seed=getattr(args, "seed", 0),
    )  # fmt: skip
    return regime, setup, dim, dynamics, observation, burn_in


def _apply_regime(args):
    """Fill the flags not given from `--regime` (model, dimension, observations,
    ensemble size, cycles); the regime, or None. Without one: the model's defaults."""
    regime = None
    if args.regime is not None:
        from ..experiments import get_regime

        try:
            regime = get_regime(args.regime)
        except ValueError as e:
            raise ValueError(f"--regime: {e}") from None
        if args.model not in (None, regime.model):
            raise ValueError(f"--model {args.model} contradicts --regime {regime.name}.")
        args.model = regime.model
        for flag, value in (
            ("dim", regime.dim),
            ("observe", regime.observe),
            ("observation", regime.operator),
            ("obs_std", regime.obs_std),
            ("obs_interval", regime.obs_interval),
            ("members", regime.members),
            ("cycles", regime.cycles),
            ("burn_in", regime.burn_in if args.cycles is None else None),
        ):
            if getattr(args, flag) is None:
                setattr(args, flag, value)
    args.cycles = 2000 if args.cycles is None else args.cycles
    args.observation = args.observation or "linear"
    return regime


def _output_lock(args):
    """The lock on `--out` held for a whole `twin`, `make-sensors` or `sweep` run, so no
    other run writes the file meanwhile (`assimilate`'s output sink takes its own)."""
    import contextlib

    # Processes of a multi-process run: process 0 locks the file when it writes it.
    args.out_locked = bool(
        getattr(args, "lock_out", False) and args.out and not getattr(args, "distributed", False)
    )
    if not args.out_locked:
        return contextlib.nullcontext()
    from .._io import PathLock, check_output_paths

    check_output_paths([("--out", args.out)], [])
    return PathLock(args.out, "output file")


def _signals(args):
    """How SIGINT and SIGTERM stop a run. An `assimilate` with a checkpoint stops
    between chunks (bounded compiled calls), saves its checkpoint and exits 130. Every
    other run has nothing to save until its end, so a signal ends it at once (the
    operating system's default: no compiled call, however long, delays it), except
    while a file is written (`deferred_interrupts` holds it until the file is whole)."""
    import contextlib

    if any(getattr(args, k, None) for k in ("checkpoint_every", "checkpoint", "resume")):
        return contextlib.nullcontext()
    from .._signals import default_signals

    return default_signals()


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")
