"""Reading and writing: netCDF through xarray, written atomically; output files that
grow as an assimilation runs; checkpoints; interrupts deferred while a file is written."""

import contextlib
import hashlib
import io
import json
import os
import re
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import equinox as eqx
import netCDF4
import numpy as np
import xarray as xr


def _netcdf_safe(attrs: dict) -> dict:
    """netCDF attributes hold strings and numbers only: map bools to ints, None to ''."""
    out = {}
    for key, value in attrs.items():
        if isinstance(value, bool | np.bool_):
            value = int(value)
        elif value is None:
            value = ""
        out[key] = value
    return out


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call `write(tmp)` to create a temporary file next to `path`, flush it to disk,
    then rename it over `path`: a reader (or a crash) never sees a half-written file.
    Returns the path."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"`path` {str(path)!r} is a directory; give a file name.")
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a normal file is wanted
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_netcdf(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write `ds` to `path` (netCDF4) atomically (see `atomic_write`). Returns the path."""
    ds = ds.copy()
    ds.attrs = _netcdf_safe(ds.attrs)
    for var in ds.variables.values():
        var.attrs = _netcdf_safe(var.attrs)
    return atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4"))


def read_netcdf(path: str | os.PathLike, *, decode_times: bool = True) -> xr.Dataset:
    """Read a netCDF file fully into memory (the file is closed on return).

    **Raises:** `ValueError` if the file does not exist or is not a readable netCDF file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No such file: {str(path)!r}.")
    try:
        with xr.open_dataset(path, engine="netcdf4", decode_times=decode_times) as ds:
            return ds.load()
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"{str(path)!r} is not a readable netCDF file (truncated or another format?): {e}"
        ) from None


def describe(module: eqx.Module) -> str:
    """A one-line description of a filter (or any module) with its numeric settings."""
    text = " ".join(eqx.tree_pformat(module, short_arrays=False).split())
    # "Array(1.02, dtype=float64, weak_type=True)" -> "1.02"
    text = re.sub(r"Array\(([^,()]+), dtype=[^)]*\)", r"\1", text)
    return text.replace("( ", "(").replace(" )", ")")


def fingerprint(*modules) -> str:
    """A short hash of the full descriptions (all numbers included) of `modules`."""
    text = "\n".join(" ".join(eqx.tree_pformat(m, short_arrays=False).split()) for m in modules)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Interrupts -------------------------------------------------------------------------


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold back SIGINT and SIGTERM while a file is being written; deliver them (to
    the handlers in place before) once the block is done, so an interrupt never
    leaves a half-written file. Outside the main thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s in signals:
            signal.signal(s, previous[s])
        for s in dict.fromkeys(caught):
            signal.raise_signal(s)


def terminate_as_interrupt() -> None:
    """Make SIGTERM raise `KeyboardInterrupt`, as SIGINT does, so that `kill` stops a
    run the same clean way as Ctrl-C (the CLI installs this)."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handler)


# Output files that grow --------------------------------------------------------------


class AppendableNetCDF:
    """A netCDF file with an unlimited `time` dimension, extended record by record.

    `create` writes the empty file atomically (dimensions, variables, attributes).
    `append` opens it, writes the new records, closes it (so everything is flushed
    to disk between appends) with SIGINT/SIGTERM deferred: the file on disk always
    holds a whole number of appended blocks. `truncate` cuts it back to its first
    records (used on resume).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def create(
        self,
        variables: Mapping[str, tuple[tuple[str, ...], np.dtype, Mapping[str, object]]],
        dims: Mapping[str, int],
        coords: Mapping[str, np.ndarray],
        attrs: Mapping[str, object],
    ) -> None:
        """`variables[name] = (dims, dtype, attrs)`, the first dim `time` (unlimited);
        `dims` the sizes of the other dimensions; `coords` their coordinate values."""

        def write(tmp):
            with netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
                nc.createDimension("time", None)
                for name, size in dims.items():
                    nc.createDimension(name, size)
                for name, values in coords.items():
                    nc.createVariable(name, np.asarray(values).dtype, (name,))[:] = values
                for name, (vdims, dtype, vattrs) in variables.items():
                    var = nc.createVariable(name, dtype, vdims)
                    var.setncatts(_netcdf_safe(dict(vattrs)))
                nc.setncatts(_netcdf_safe(dict(attrs)))

        with deferred_interrupts():
            atomic_write(self.path, write)

    def __len__(self) -> int:
        with netCDF4.Dataset(self.path, "r") as nc:
            return len(nc.dimensions["time"])

    def append(self, records: Mapping[str, np.ndarray]) -> None:
        """Append the `(k, ...)` arrays `records[name]` (every time variable) at the end."""
        with deferred_interrupts(), netCDF4.Dataset(self.path, "a") as nc:
            n = len(nc.dimensions["time"])
            for name, values in records.items():
                values = np.asarray(values)
                nc.variables[name][n : n + values.shape[0]] = values

    def truncate(self, n: int) -> None:
        """Keep only the first `n` records (rewritten atomically)."""
        with xr.open_dataset(self.path, engine="netcdf4", decode_times=False) as ds:
            ds = ds.isel(time=slice(0, n)).load()
        encoding = {v: {"_FillValue": None} for v in ds.variables}
        with deferred_interrupts():
            atomic_write(
                self.path,
                lambda tmp: ds.to_netcdf(
                    tmp, engine="netcdf4", unlimited_dims=["time"], encoding=encoding
                ),
            )


# Checkpoints ------------------------------------------------------------------------

_MAGIC = b"ASSIMILAX-CHECKPOINT-1\n"


def save_checkpoint(path: str | os.PathLike, tree, meta: Mapping[str, object]) -> Path:
    """Write the pytree `tree` (its array leaves, `equinox.tree_serialise_leaves`) and
    the JSON-able `meta` to one file, atomically and with interrupts deferred."""
    header = json.dumps(dict(meta)).encode()

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(_MAGIC)
            f.write(len(header).to_bytes(8, "little"))
            f.write(header)
            eqx.tree_serialise_leaves(f, tree)

    with deferred_interrupts():
        return atomic_write(path, write)


def load_checkpoint(path: str | os.PathLike, like) -> tuple[object, dict]:
    """Read a checkpoint written by `save_checkpoint`: returns `(tree, meta)`, the tree
    with the structure of `like`.

    **Raises:** `ValueError` if the file is missing, not a checkpoint, truncated, or
    holds a tree of another structure.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No checkpoint file {str(path)!r} to resume from.")
    data = path.read_bytes()
    if not data.startswith(_MAGIC):
        raise ValueError(f"{str(path)!r} is not an assimilax checkpoint.")
    try:
        start = len(_MAGIC)
        size = int.from_bytes(data[start : start + 8], "little")
        meta = json.loads(data[start + 8 : start + 8 + size])
        tree = eqx.tree_deserialise_leaves(io.BytesIO(data[start + 8 + size :]), like)
    except Exception as e:
        raise ValueError(
            f"The checkpoint {str(path)!r} is truncated or does not match this run's "
            f"belief (another filter, model or ensemble size?): {e}"
        ) from None
    return tree, meta
