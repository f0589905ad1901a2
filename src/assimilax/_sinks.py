"""Where the driver's results go while a long assimilation runs: an output file that
grows record by record, checkpoints, a progress bar. Each is a *sink*: the driver
calls `start` once, `write` after every chunk, `close` when the run stops (for any
reason). The pure loop (`assimilate`) knows nothing of them.

Also the file-level machinery they share: interrupts deferred while a file is
written, exclusive locks on output paths, the checkpoint format.
"""

import abc
import contextlib
import dataclasses
import io
import json
import math
import os
import signal
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from . import _schema
from ._io import (
    NO_SPACE,
    SHARDED_CHECKPOINT_MARKER,
    PathLock,
    atomic_write,
    netcdf_safe,
    no_space_error,
)
from ._sharding import is_main_process, is_spread


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


# Output files that grow --------------------------------------------------------------


_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 4, 6: 8, 7: 1, 8: 2, 9: 4, 10: 8, 11: 8}


@dataclasses.dataclass(frozen=True)
class ClassicLayout:
    """Where a classic netCDF file (CDF-1, -2 or -5) keeps its records, read from its
    header (the format's published grammar): the record count sits at byte 4
    (`count_width` bytes, big-endian), record `i` at `begin + i * size`. Appending a
    record writes only past the end and that count, so a failed append is undone by
    writing the count back and cutting the file to its former length, which needs
    no free space."""

    count_width: int
    records: int
    begin: int
    size: int

    @classmethod
    def read(cls, path: Path) -> "ClassicLayout | None":
        """The layout of `path`, or None if it is not a classic netCDF file."""
        with open(path, "rb") as f:
            head = f.read(1 << 20)
        if head[:3] != b"CDF" or head[3] not in (1, 2, 5):
            return None
        version = head[3]
        width = 8 if version == 5 else 4
        pos = 4

        def number(n=width):
            nonlocal pos
            value = int.from_bytes(head[pos : pos + n], "big")
            pos += n
            return value

        def name():
            nonlocal pos
            n = number()
            pos += -(-n // 4) * 4
            return n

        def attributes():
            nonlocal pos
            number(4)
            for _ in range(number()):
                name()
                kind = number(4)
                count = number()  # (read before `pos` is)
                pos += -(-count * _TYPE_SIZES[kind] // 4) * 4

        records = number()
        number(4)
        dims = []
        for _ in range(number()):
            name()
            dims.append(number())
        attributes()
        number(4)
        record_vars = []
        for _ in range(number()):
            name()
            ids = [number() for _ in range(number())]
            attributes()
            kind = number(4)
            vsize = number()
            begin = number(4 if version == 1 else 8)
            if ids and dims[ids[0]] == 0:
                shape = math.prod(dims[i] for i in ids[1:])
                record_vars.append((begin, vsize, shape * _TYPE_SIZES[kind]))
        if not record_vars:
            return None
        if len(record_vars) == 1:  # the format's one exception: no padding
            size = record_vars[0][2]
        else:
            size = sum(v[1] for v in record_vars)
        return cls(width, records, min(v[0] for v in record_vars), size)

    def cut(self, path: Path, records: int) -> None:
        """Make `path` hold its first `records` records: the count written back, the
        file cut to their end (in place; nothing is allocated)."""
        with open(path, "r+b") as f:
            f.seek(4)
            f.write(records.to_bytes(self.count_width, "big"))
            f.truncate(self.begin + records * self.size)
            f.flush()
            os.fsync(f.fileno())


class AppendableNetCDF:
    """A netCDF file with an unlimited `time` dimension, extended record by record.

    `create` writes the empty file atomically (dimensions, variables, attributes), in
    netCDF's classic 64-bit-data format (CDF-5), whose records lie one after another
    at the end of the file. `append` opens it, writes the new records, closes it (so
    everything is flushed to disk between appends) with SIGINT/SIGTERM deferred; if
    the append fails (a full disk, a file-size limit) the file is cut back to the
    records it held before (`ClassicLayout.cut`), so it always holds a whole number of
    appended blocks and stays readable. `truncate` cuts it back to its first records
    (used on resume) in place, which also drops a tail damaged by a hard kill.
    """

    FORMAT = "NETCDF3_64BIT_DATA"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def create(
        self,
        variables: Mapping[str, tuple[tuple[str, ...], np.dtype, Mapping[str, object]]],
        dims: Mapping[str, int],
        coords: Mapping[str, tuple[np.ndarray, Mapping[str, object]]],
        attrs: Mapping[str, object],
    ) -> None:
        """`variables[name] = (dims, dtype, attrs)`, the first dim `time` (unlimited);
        `dims` the sizes of the other dimensions; `coords[dim] = (values, attrs)`."""
        import netCDF4

        def write(tmp):
            with netCDF4.Dataset(tmp, "w", format=self.FORMAT) as nc:
                nc.createDimension("time", None)
                for name, size in dims.items():
                    nc.createDimension(name, size)
                for name, (values, cattrs) in coords.items():
                    var = nc.createVariable(name, np.asarray(values).dtype, (name,))
                    var[:] = values
                    var.setncatts(netcdf_safe(dict(cattrs)))
                for name, (vdims, dtype, vattrs) in variables.items():
                    var = nc.createVariable(name, dtype, vdims)
                    var.setncatts(netcdf_safe(dict(vattrs)))
                nc.setncatts(netcdf_safe(dict(attrs)))

        with deferred_interrupts():
            atomic_write(self.path, write)

    def __len__(self) -> int:
        import netCDF4

        with netCDF4.Dataset(self.path, "r") as nc:
            return len(nc.dimensions["time"])

    def append(self, records: Mapping[str, np.ndarray]) -> None:
        """Append the `(k, ...)` arrays `records[name]` (every time variable) at the end."""
        layout = ClassicLayout.read(self.path)
        try:
            with deferred_interrupts():
                if layout is not None:  # the space first: netCDF then cannot run out of it
                    k = len(np.asarray(next(iter(records.values()))))
                    self._reserve(layout.begin + (layout.records + k) * layout.size)
                self._write(records)
        except (OSError, RuntimeError) as e:
            kept = ""
            if layout is not None:
                with deferred_interrupts():
                    layout.cut(self.path, layout.records)
                kept = f"; it keeps its {layout.records} records"
            why = NO_SPACE if no_space_error(self.path, e) else str(e)
            raise OSError(
                f"Could not append to {str(self.path)!r} ({why}){kept}. The checkpoint is "
                "intact: free some space and continue with --resume."
            ) from None

    def _reserve(self, size: int) -> None:
        """Allocate the file's blocks up to `size` bytes (ENOSPC, or EFBIG past a
        file-size limit, raised here rather than inside libnetcdf, whose failed close
        leaves a handle that crashes the interpreter when it is closed again)."""
        fd = os.open(self.path, os.O_WRONLY)
        try:
            current = os.fstat(fd).st_size
            if size > current:
                os.posix_fallocate(fd, current, size - current)
        finally:
            os.close(fd)

    def _write(self, records: Mapping[str, np.ndarray]) -> None:
        import netCDF4

        with netCDF4.Dataset(self.path, "a") as nc:
            n = len(nc.dimensions["time"])
            for name, values in records.items():
                values = np.asarray(values)
                nc.variables[name][n : n + values.shape[0]] = values

    def truncate(self, n: int) -> None:
        """Keep only the first `n` records: in place for a classic file (nothing is
        allocated, so it works on a full disk), rewritten atomically otherwise (files
        of earlier versions, netCDF-4)."""
        try:
            layout = ClassicLayout.read(self.path)
            if layout is not None:
                if os.path.getsize(self.path) < layout.begin + n * layout.size:
                    raise ValueError(f"it holds fewer than the checkpoint's {n} records")
                with deferred_interrupts():
                    layout.cut(self.path, n)
                return
            import xarray as xr

            with xr.open_dataset(self.path, engine="netcdf4", decode_times=False) as ds:
                ds = ds.isel(time=slice(0, n)).load()
        except (OSError, RuntimeError, ValueError, KeyError, IndexError) as e:
            raise ValueError(
                f"Cannot resume: the output file {str(self.path)!r} cannot be read back "
                f"({e}); move it away and start afresh."
            ) from None
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


def is_checkpoint(path: str | os.PathLike) -> bool:
    """True if `path` is a file that starts like an assimilax checkpoint, or a sharded
    checkpoint's directory."""
    if Path(path).is_dir():
        return (Path(path) / SHARDED_CHECKPOINT_MARKER).is_file()
    try:
        with open(path, "rb") as f:
            return f.read(len(_MAGIC)) == _MAGIC
    except OSError:
        return False


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


# Sharded checkpoints (a belief spread over processes) ------------------------------


def _orbax():
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise ImportError(
            "Checkpoints of a belief spread over processes need orbax-checkpoint: pip "
            "install 'assimilax[distributed]'."
        ) from None
    return ocp


def _host_or_global(x):
    """Arrays spread over processes stay global (each process writes its shards); the
    rest (replicated scalars, the run's status) go as host numpy arrays."""
    return x if is_spread(x) else np.asarray(x)


def save_sharded_checkpoint(path: str | os.PathLike, tree, meta: Mapping[str, object]) -> Path:
    """Write `tree`'s arrays and `meta` with `orbax-checkpoint` into the directory `path`
    (atomic: orbax writes a temporary directory and renames it). Called by every
    process of the run."""
    ocp = _orbax()
    path = Path(path).absolute()
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_array))
    arrays = {str(i): _host_or_global(x) for i, x in enumerate(leaves)}
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(dict(meta))
    )
    with deferred_interrupts(), ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(path, args, force=True)
    if jax.process_index() == 0:
        (path / SHARDED_CHECKPOINT_MARKER).write_text(json.dumps({"leaves": len(leaves)}))
    return path


def load_sharded_checkpoint(path: str | os.PathLike, like) -> tuple[object, dict]:
    """Read a checkpoint of `save_sharded_checkpoint` into the structure and the
    shardings of `like`: returns `(tree, meta)`."""
    ocp = _orbax()
    path = Path(path).absolute()
    if not is_checkpoint(path):
        raise ValueError(f"No sharded checkpoint {str(path)!r} to resume from.")
    arrays, static = eqx.partition(like, eqx.is_array)
    leaves, treedef = jax.tree.flatten(arrays)
    target = {
        str(i): jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if is_spread(x)
        else np.asarray(x)
        for i, x in enumerate(leaves)
    }
    args = ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            restored = ckptr.restore(path, args)
    except Exception as e:
        raise ValueError(
            f"The sharded checkpoint {str(path)!r} does not match this run's belief "
            f"(another filter, model, ensemble size or device layout?): {e}"
        ) from None
    state = restored["state"]
    tree = jax.tree.unflatten(treedef, [state[str(i)] for i in range(len(leaves))])
    return eqx.combine(tree, static), dict(restored["meta"])


# The sinks --------------------------------------------------------------------------


@dataclasses.dataclass
class RunInfo:
    """What a sink learns when the run starts: the state shape, the record the run
    starts from (> 0 on resume), the total number of records if known, and the run's
    identity (fingerprint of filter + model + operator, key bits)."""

    state_shape: tuple[int, ...]
    start: int
    total: int | None
    resume: bool
    run_id: dict


@dataclasses.dataclass
class ChunkResult:
    """One chunk's results, as the driver hands them to its sinks: the global index
    of its first record, its per-cycle outputs (NumPy, `times` included), and the
    state after it (`state` is what a checkpoint saves; `meta` its bookkeeping)."""

    first: int
    done: int
    outputs: dict
    state: tuple
    meta: dict


class AbstractSink(abc.ABC):
    """Receives each chunk of a driven run. Sinks own files and terminals, so they are
    plain Python objects, not pytrees; they never change the numbers. In a
    multi-process run only process 0 drives a sink, unless `every_process` is True
    (a sink whose writes are collective, as a sharded checkpoint's)."""

    every_process: bool = False

    def paths(self) -> list[Path]:
        """Files this sink writes (checked against the inputs and each other)."""
        return []

    def start(self, info: RunInfo) -> None:  # noqa: B027 (an optional hook)
        """Called once before the first chunk (after every input check)."""

    @abc.abstractmethod
    def write(self, chunk: ChunkResult) -> None:
        """Called after every chunk."""

    def close(self, last: ChunkResult | None) -> None:  # noqa: B027 (an optional hook)
        """Called once when the run stops, normally or not; `last` is the last chunk
        finished (None if none was)."""


class NetCDFOutput(AbstractSink):
    """Append every cycle's diagnostics (`_schema.CYCLE_OUTPUTS` present in the run)
    to a CF netCDF file with an unlimited `time` dimension, after every chunk. Between
    appends the file is complete and readable. `attrs` become global attributes;
    `time_encoding` (from `read_observations`) writes times back as CF dates in the
    input's calendar."""

    def __init__(self, path, attrs: Mapping | None = None, time_encoding: Mapping | None = None):
        self.path = Path(path)
        self.attrs = dict(attrs or {})
        self.time_encoding = dict(time_encoding or {})
        self._file = AppendableNetCDF(self.path)
        self._lock = PathLock(self.path, "output file")
        self._created = False

    def paths(self):
        return [self.path]

    def start(self, info):
        self._lock.acquire()
        self._state_shape = info.state_shape
        if not info.resume or info.start == 0:
            return
        if not self.path.is_file():
            raise ValueError(f"Cannot resume: the output file {str(self.path)!r} is missing.")
        try:
            written = len(self._file)
        except (OSError, RuntimeError, KeyError):
            written = None  # a damaged file: rebuilt from its readable records below
        if written is not None and written < info.start:
            raise ValueError(
                f"Cannot resume: {str(self.path)!r} holds {written} records but the checkpoint "
                f"{info.start}; was it replaced?"
            )
        self._file.truncate(info.start)  # also repairs a damaged tail
        self._created = True

    def _times(self, times):
        """`(file times, their attributes, model times or None)`: an input in model time
        gets CF time (`_schema.to_cf`'s convention) and its own numbers in `model_time`."""
        enc = self.time_encoding
        times = np.asarray(times, np.float64)
        if "origin" not in enc:
            exact = self._file_times(times, times)
            hours = _schema.model_time_hours(exact, "1 day")
            return hours, _schema.cf_time_attrs("1 day"), exact
        step = enc["units"].split(" since ", 1)[0]
        duration_seconds = _schema.duration_seconds
        scale = duration_seconds(enc["model_time_unit"]) / duration_seconds(step)
        offset = float(enc.get("offset", 0.0))
        attrs = {"units": enc["units"], "calendar": enc["calendar"], "standard_name": "time"}
        return self._file_times(times, offset + times * scale), attrs, None

    def _file_times(self, times, converted):
        """The input file's own time numbers for the records that are its (matched by
        model time, to the run's precision), `converted` for any other."""
        enc = self.time_encoding
        if "file_times" not in enc:
            return converted
        model = np.asarray(enc["model_times"], np.float64)
        raw = np.asarray(enc["file_times"], np.float64)
        if len(model) < 2:
            nearest = np.zeros(times.shape, int)
        else:
            i = np.clip(np.searchsorted(model, times), 1, len(model) - 1)
            nearest = np.where(np.abs(model[i - 1] - times) <= np.abs(model[i] - times), i - 1, i)
        close = np.abs(model[nearest] - times) <= 1e-6 * np.maximum(1.0, np.abs(times))
        return np.where(close, raw[nearest], converted)

    def write(self, chunk):
        out = chunk.outputs
        records = {name: out[name] for name in _schema.CYCLE_OUTPUTS if name in out}
        times, time_attrs, model_times = self._times(out["times"])
        if not self._created:
            sdims = _schema.state_dims(self._state_shape)
            variables = {"time": (("time",), np.dtype(np.float64), time_attrs)}
            if model_times is not None:
                attrs = {"long_name": "model time (non-dimensional)", "units": "1"}
                variables["model_time"] = (("time",), np.dtype(np.float64), attrs)
            for name, value in records.items():
                value = np.asarray(value)
                dims = ("time", *sdims) if value.ndim > 1 else ("time",)
                variables[name] = (dims, value.dtype, _schema.variable_attrs(name))
            dims = dict(zip(sdims, self._state_shape, strict=True))
            coords = {
                d: (np.arange(n, dtype=np.int32), _schema.state_coordinate_attrs(d))
                for d, n in dims.items()
            }
            attrs = {"Conventions": _schema.CONVENTIONS, "history": _schema.history(), **self.attrs}
            self._file.create(variables, dims, coords, attrs)
            self._created = True
        if model_times is not None:
            records["model_time"] = model_times
        self._file.append({"time": times, **records})

    def close(self, last):
        self._lock.release()


class Checkpoint(AbstractSink):
    """Save the belief, the position in the record sequence, the key and the run's
    identity every `every` records (at the end of the first chunk at or past each
    multiple; None: only when the run stops) and when the run stops for any reason,
    atomically: nothing already assimilated is lost. `assimilate_stream(...,
    resume=True)` continues from it.

    A belief spread over several processes (a multi-process sharded run) is saved by
    all of them with `orbax-checkpoint` into the directory `path` (each process writes
    its own shards; restored with the same layout); otherwise the checkpoint is one
    file. An existing checkpoint is only overwritten by a run that resumes from it, or
    with `overwrite=True`."""

    every_process = True

    def __init__(self, path, every: int | None = None, *, overwrite: bool = False):
        if every is not None and not (isinstance(every, int) and every >= 1):
            raise ValueError(f"`every` must be a positive int or None; got {every!r}.")
        self.path = Path(path)
        self.every = every
        self.overwrite = overwrite
        self._lock = PathLock(self.path, "checkpoint file")
        self._saved = 0

    def paths(self):
        return [self.path]

    def check_writable(self) -> None:
        """Refuse to overwrite a file that is not an assimilax checkpoint, or (unless
        `overwrite`) an earlier run's checkpoint, which only a resume continues."""
        if self.path.exists() and not is_checkpoint(self.path):
            raise ValueError(
                f"The checkpoint path {str(self.path)!r} holds a file that is not an "
                "assimilax checkpoint; it will not be overwritten. Choose another path."
            )
        if self.path.exists() and not self.overwrite:
            raise ValueError(
                f"The checkpoint {str(self.path)!r} of an earlier run exists; continue that "
                "run with --resume (resume=True), or start afresh with --overwrite-checkpoint "
                "(Checkpoint(..., overwrite=True)) or after deleting it."
            )

    def load(self, like) -> tuple[object, dict]:
        if is_spread(like):
            return load_sharded_checkpoint(self.path, like)
        return load_checkpoint(self.path, like)

    def start(self, info):
        if is_main_process():
            self._lock.acquire()
        self._saved = info.start

    def _save(self, chunk):
        if is_spread(chunk.state):
            save_sharded_checkpoint(self.path, chunk.state, chunk.meta)
        elif is_main_process():
            save_checkpoint(self.path, chunk.state, chunk.meta)
        self._saved = chunk.done

    def write(self, chunk):
        every = self.every
        if every is not None and chunk.done // every > self._saved // every:
            self._save(chunk)

    def close(self, last):
        try:
            if last is not None and last.done > self._saved:
                self._save(last)
        finally:
            if is_main_process():
                self._lock.release()


class ProgressBar(AbstractSink):
    """A `tqdm` progress bar over records (`tqdm.auto`: a widget in notebooks)."""

    def __init__(self, description: str | None = None):
        self.description = description
        self._bar = None

    def start(self, info):
        from tqdm.auto import tqdm

        total = None if info.total is None else info.total - info.start
        self._bar = tqdm(total=total, unit="cycle", desc=self.description, leave=False)

    def write(self, chunk):
        if self._bar is not None:
            self._bar.update(chunk.done - chunk.first)

    def close(self, last):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
