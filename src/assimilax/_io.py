"""Reading and writing: netCDF through xarray, written atomically; one-line
descriptions and fingerprints of modules; checks of output paths.

xarray and netCDF4 are imported when a file is read or written, not on import, so
`import assimilax.filters` stays light."""

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import equinox as eqx
import jax
import numpy as np


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
    sharded checkpoint's) or its folder does not exist (it is not created: a typo would
    silently scatter files)."""
    if path.is_dir() and not (path / SHARDED_CHECKPOINT_MARKER).is_file():
        raise ValueError(f"{what} {str(path)!r} is a folder; give a file name.")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(
            f"{what} {str(path)!r}: the folder {str(folder)!r} does not exist; create it first."
        )
    return folder


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call `write(tmp)` to create a temporary file next to `path`, flush it to disk,
    then rename it over `path`: a reader (or a crash) never sees a half-written file.
    Returns the path."""
    path = Path(path)
    folder = _writable_folder(path, "`path`")
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


def write_netcdf(ds, path: str | os.PathLike) -> Path:
    """Write `ds` to `path` (netCDF4) atomically (see `atomic_write`). Returns the path."""
    ds = ds.copy()
    ds.attrs = netcdf_safe(ds.attrs)
    for var in ds.variables.values():
        var.attrs = netcdf_safe(var.attrs)
    return atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4"))


def read_netcdf(path: str | os.PathLike, *, decode_times: bool = True):
    """Read a netCDF file fully into memory (the file is closed on return).

    **Raises:** `ValueError` if the file does not exist or is not a readable netCDF file.
    """
    import xarray as xr

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
