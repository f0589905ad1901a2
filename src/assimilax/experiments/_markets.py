"""Daily index prices shipped inside the `arch` package (S&P 500 and NASDAQ Composite,
1999-2018; no download at run time), and their windows for a generative model."""

import importlib.util
from pathlib import Path

import numpy as np


MARKETS = ("sp500", "nasdaq")


def _bundled(name: str) -> Path:
    if name not in MARKETS:
        raise ValueError(f"Unknown market {name!r}; expected one of {MARKETS}.")
    spec = importlib.util.find_spec("arch")  # its data files, without importing `arch`
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The market series ship with the `arch` package: pip install 'assimilax[finance]'."
        )
    return Path(spec.submodule_search_locations[0]) / "data" / name / f"{name}.csv.gz"


def market_prices(name: str = "sp500", *, path=None) -> tuple[np.ndarray, np.ndarray]:
    """`(dates, close)`: the adjusted daily close of the bundled index `name` (or of a
    csv(.gz) at `path` with `Date` and `Adj Close` columns), dates as `datetime64[D]`,
    checked increasing, positive and finite."""
    import pandas as pd  # xarray's dependency; only this loader needs it

    frame = pd.read_csv(path if path is not None else _bundled(name))
    missing = {"Date", "Adj Close"} - set(frame.columns)
    if missing:
        raise ValueError(f"The price file lacks the columns {sorted(missing)}.")
    dates = pd.to_datetime(frame["Date"], format="mixed").to_numpy().astype("datetime64[D]")
    close = pd.to_numeric(frame["Adj Close"], errors="coerce").to_numpy(np.float64)
    if not np.all(np.isfinite(close)) or np.any(close <= 0):
        raise ValueError("The price series has missing, non-finite or non-positive prices.")
    if np.any(np.diff(dates) <= np.timedelta64(0, "D")):
        raise ValueError("The price series' dates are not strictly increasing.")
    return dates, close


def price_windows(prices, length: int, stride: int) -> np.ndarray:
    """Overlapping windows `(n, length)` of a price series, every `stride` days."""
    prices = np.asarray(prices, np.float64)
    if prices.ndim != 1:
        raise ValueError(f"`prices` must be one series (T,); got shape {prices.shape}.")
    if not 2 <= length <= prices.size or stride < 1:
        raise ValueError(
            f"Need 2 <= length <= {prices.size} and stride >= 1; got {length}, {stride}."
        )
    starts = np.arange(0, prices.size - length + 1, stride)
    return prices[starts[:, None] + np.arange(length)]
