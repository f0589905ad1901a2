r"""Positive series as diffusion states: a log transform and a standardisation that
are part of the model, so that whatever a sampler returns maps back to positive prices.

`LogTransform("price")` gives the state of the GBM forward process (`GBMSDE`): the
log-price relative to the window's first price, $\log(S_j / S_0)$ for $j \ge 1$,
standardised by one global mean and std. `LogTransform("return")` gives the baselines'
state: the log-returns $\log(S_{j+1}/S_j)$, standardised the same way. `inverse` takes
either back to prices `start * exp(...)` -- positive by construction.
"""

import equinox as eqx
import numpy as np


_KINDS = ("price", "return")


class LogTransform(eqx.Module):
    """Prices `(..., L + 1)` <-> standardised states `(..., L)`: log-prices relative to the
    first, or log-returns (the same length, so one network shape serves both). Build with
    `LogTransform.fit(kind, prices)`."""

    kind: str = eqx.field(static=True)
    mean: float = eqx.field(static=True)
    std: float = eqx.field(static=True)

    def __init__(self, kind: str, mean: float = 0.0, std: float = 1.0):
        if kind not in _KINDS:
            raise ValueError(f"`kind` must be one of {_KINDS}; got {kind!r}.")
        if not std > 0:
            raise ValueError(f"`std` must be positive; got {std}.")
        self.kind, self.mean, self.std = kind, float(mean), float(std)

    @classmethod
    def fit(cls, kind: str, prices) -> "LogTransform":
        """The transform whose states have mean 0 and std 1 over `prices` `(n, L)`."""
        raw = cls(kind)._log(_check_prices(prices))
        return cls(kind, float(raw.mean()), float(raw.std()))

    def _log(self, prices):
        logs = np.log(prices)
        if self.kind == "price":
            return logs[..., 1:] - logs[..., :1]
        return np.diff(logs, axis=-1)

    def __call__(self, prices) -> np.ndarray:
        """Standardised states `(..., L)` of `prices` `(..., L + 1)` (positive, finite)."""
        return (self._log(_check_prices(prices)) - self.mean) / self.std

    def inverse(self, states, start=1.0) -> np.ndarray:
        """Prices `(..., L + 1)` from states `(..., L)`, starting at `start` (positive)."""
        logs = np.asarray(states, np.float64) * self.std + self.mean
        if self.kind == "return":
            logs = np.cumsum(logs, axis=-1)
        logs = np.concatenate([np.zeros((*logs.shape[:-1], 1)), logs], axis=-1)
        return np.asarray(start)[..., None] * np.exp(logs)

    def log_returns(self, states) -> np.ndarray:
        """The log-returns `(..., L)` of the series that `states` stand for."""
        logs = np.asarray(states, np.float64) * self.std + self.mean
        if self.kind == "return":
            return logs
        return np.diff(logs, axis=-1, prepend=0.0)


def _check_prices(prices) -> np.ndarray:
    prices = np.asarray(prices, np.float64)
    if prices.ndim < 1 or prices.shape[-1] < 2:
        raise ValueError(f"`prices` must have a time axis of length >= 2; got {prices.shape}.")
    if not np.all(np.isfinite(prices)) or np.any(prices <= 0):
        raise ValueError("`prices` must be finite and strictly positive.")
    return prices
