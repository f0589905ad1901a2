"""Reading and writing results: netCDF through xarray, written atomically."""

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

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
    try:
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


def read_netcdf(path: str | os.PathLike) -> xr.Dataset:
    """Read a netCDF file fully into memory (the file is closed on return).

    **Raises:** `ValueError` if the file does not exist or is not a readable netCDF file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No such file: {str(path)!r}.")
    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            return ds.load()
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"{str(path)!r} is not a readable netCDF file (truncated or another format?): {e}"
        ) from None
