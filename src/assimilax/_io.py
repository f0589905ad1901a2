"""Reading and writing: netCDF through xarray, written atomically; one-line
descriptions and fingerprints of modules; checks of output paths.

xarray and netCDF4 are imported when a file is read or written, not on import, so
`import assimilax.filters` stays light."""

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from ._schema import from_cf, to_cf


def netcdf_safe(attrs: dict) -> dict:
    """netCDF attributes hold strings and numbers only: map bools to ints, None to ''."""
    out = {}
    for key, value in attrs.items():
        if isinstance(value, bool | np.bool_):
            value = int(value)
        elif value is None:
            value = ""
        out[key] = value
    return out


# The file that marks a folder as a sharded checkpoint (`_sinks.save_sharded_checkpoint`).
SHARDED_CHECKPOINT_MARKER = "assimilax-checkpoint.json"


def _writable_folder(path: Path, what: str) -> Path:
    """The folder of file `path`, or a `ValueError` if `path` is a folder (other than a
    sharded checkpoint's), exists but is no regular file (a device, a FIFO, a socket:
    replacing it would destroy it), or its folder does not exist (it is not created: a
    typo would silently scatter files)."""
    if path.is_dir():
        if not (path / SHARDED_CHECKPOINT_MARKER).is_file():
            raise ValueError(f"{what} {str(path)!r} is a folder; give a file name.")
    elif path.exists() and not path.is_file():
        raise ValueError(
            f"{what} {str(path)!r} exists and is not a regular file (a device, FIFO or "
            "socket); it will not be replaced. Give the path of a file."
        )
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(
            f"{what} {str(path)!r}: the folder {str(folder)!r} does not exist; create it first."
        )
    return folder


NO_SPACE = "no space left on device (or the file-size limit reached)"


def no_space_error(path: str | os.PathLike, error: BaseException) -> OSError | None:
    """An `OSError` saying "no space left" for `error` raised while writing `path`, if
    the disk (or the file-size limit) is why: netCDF and HDF5 report a full disk as
    "HDF error" or "Permission denied"; None if the disk is not full."""
    codes = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    full = getattr(error, "errno", None) in codes
    full = full or any(os.strerror(c).lower() in str(error).lower() for c in codes)
    if not full:
        try:
            full = shutil.disk_usage(Path(path).parent or ".").free < 2**20
        except OSError:
            full = False
    if not full:
        return None
    return OSError(errno.ENOSPC, f"{NO_SPACE} while writing {str(path)!r}; free some space")


def _lock_path(path: Path) -> Path:
    """The lock file of `path`: `.NAME.lock` beside it, or a hashed name where that
    would pass the 255-byte limit of a file name."""
    name = f".{path.name}.lock"
    if len(name.encode()) > 255:
        name = f".{hashlib.sha256(path.name.encode()).hexdigest()[:24]}.lock"
    return path.with_name(name)


class PathLock:
    """An exclusive lock on `path` for one run's lifetime (a `.NAME.lock` file beside
    it, locked with `flock`; the lock goes with the process, even on a hard kill, and
    the lock file is removed on release). A second run on the same path gets a
    one-line `ValueError`."""

    def __init__(self, path: str | os.PathLike, what: str):
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "PathLock":
        lock = _lock_path(self.path)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise ValueError(
                    f"The {self.what} {str(self.path)!r} is in use by another run; wait for "
                    "it to finish or choose another path."
                ) from None
            # The holder before us may have removed the file as we opened it: the lock
            # counts only on the file that is still there.
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return self
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                _lock_path(self.path).unlink()
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> "PathLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call `write(tmp)` to create a temporary file next to `path`, flush it to disk,
    then rename it over `path`: a reader (or a crash) never sees a half-written file.
    Returns the path."""
    path = Path(path)
    folder = _writable_folder(path, "`path`")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=".tmp", dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a normal file is wanted
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        full = no_space_error(path, e) if isinstance(e, OSError | RuntimeError) else None
        if full is not None:
            raise full from None
        raise
    return path


def write_netcdf(ds, path: str | os.PathLike, *, lock: bool = True) -> Path:
    """Write `ds` to `path` (netCDF4, in its CF form: `_schema.to_cf`) atomically (see
    `atomic_write`), holding the path's `PathLock` while it writes (`lock=False`: the
    caller holds it). Returns the path."""
    ds, encoding, unlimited = to_cf(ds)
    ds.attrs = netcdf_safe(ds.attrs)
    for var in ds.variables.values():
        var.attrs = netcdf_safe(var.attrs)

    def write(tmp):
        ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding, unlimited_dims=unlimited)

    held = PathLock(path, "output file") if lock else contextlib.nullcontext()
    with held:
        return atomic_write(path, write)


def read_netcdf(path: str | os.PathLike, *, decode_times: bool = True):
    """Read a netCDF file fully into memory (the file is closed on return), undoing
    `_schema.to_cf` (model time and string labels back in their in-memory form).

    **Raises:** `ValueError` if the file does not exist or is not a readable netCDF file.
    """
    import xarray as xr

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No such file: {str(path)!r}.")
    try:
        with xr.open_dataset(path, engine="netcdf4", decode_times=decode_times) as ds:
            return from_cf(ds.load())
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"{str(path)!r} is not a readable netCDF file (truncated or another format?): {e}"
        ) from None


class _Short:
    """A placeholder that prints an array as its dtype and shape, e.g. `f32[128,64]`."""

    def __init__(self, array):
        self.text = f"{np.dtype(array.dtype).name}{list(array.shape)}".replace(" ", "")

    def __repr__(self) -> str:
        return self.text


def describe(module: eqx.Module) -> str:
    """A one-line description of a filter (or any module) with its numeric settings;
    arrays of more than 16 numbers (network weights) are shown as dtype and shape."""
    import jax.tree_util as jtu

    def short(leaf):
        big = isinstance(leaf, np.ndarray | jax.Array) and np.size(leaf) > 16
        return _Short(leaf) if big else leaf

    module = jtu.tree_map(short, module)
    text = " ".join(eqx.tree_pformat(module, short_arrays=False).split())
    # "Array(1.02, dtype=float64, weak_type=True)" -> "1.02"
    text = re.sub(r"Array\(([^,()]+), dtype=[^)]*\)", r"\1", text)
    text = re.sub(r" at 0x[0-9a-f]+", "", text)  # memory addresses differ between runs
    return text.replace("( ", "(").replace(" )", ")")


def fingerprint(*modules) -> str:
    """A short hash of the full descriptions (all numbers included) of `modules`."""
    text = "\n".join(" ".join(eqx.tree_pformat(m, short_arrays=False).split()) for m in modules)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_output_paths(outputs: Sequence[tuple[str, object]], inputs: Sequence[object]) -> None:
    """Refuse output paths `(what, path)` that are an input file (also through links or
    another spelling), that name the same file twice, that are folders, or whose
    folder does not exist: nothing is overwritten by mistake."""
    seen: dict[Path, str] = {}
    sources = {Path(p).resolve(): p for p in inputs if p is not None}
    for what, path in outputs:
        if path is None:
            continue
        path = Path(path)
        real = path.resolve()
        if real in sources:
            raise ValueError(
                f"{what} {str(path)!r} is an input file ({str(sources[real])!r}); it would "
                "be overwritten. Choose another path."
            )
        if real in seen:
            raise ValueError(f"{what} {str(path)!r} is also the {seen[real]}; give two paths.")
        _writable_folder(path, what)
        seen[real] = what
