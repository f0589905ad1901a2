r"""Stylized facts of financial returns (the set of Takahashi, Chen & Tanaka-Ishii 2019),
to judge generated series against data.

Every function takes log-returns `r` as a 1-D series or as windows `(n, L)`; statistics
over time lags are computed inside each window (no lag crosses a window boundary) and
pooled over windows, so generated windows and data windows are treated alike.

- `tail_exponent`: the power-law exponent $\alpha$ of the density of $|r|$ above $x_{\min}$
  (continuous maximum likelihood, $x_{\min}$ by the smallest Kolmogorov–Smirnov distance;
  Clauset, Shalizi & Newman 2009).
- `autocorrelation`: of $r$ (linear unpredictability) or $|r|$ (volatility clustering);
  `decay_exponent` fits $\mathrm{ACF}(k) \propto k^{-\beta}$.
- `leverage`: $L(k) = E[r_t r_{t+k}^2 - r_t r_t^2] / E[r_t^2]^2$ (negative at small $k$).
- `coarse_fine_volatility`: $\rho(k) = \mathrm{corr}(v^c_{t+k}, v^f_t)$ of coarse
  $v^c = |\sum_{i<\tau} r|$ and fine $v^f = \sum_{i<\tau} |r|$ volatilities, and the
  lead-lag asymmetry $\rho(k) - \rho(-k)$.
- `gain_loss_asymmetry`: the distributions of the first times the cumulative return
  reaches $+\theta$ and $-\theta$ and their modes (losses come sooner).
- `bootstrap_band`: quantile bands of any of these over windows resampled with
  replacement.
"""

from collections.abc import Callable

import numpy as np


def _windows(r) -> np.ndarray:
    r = np.asarray(r, np.float64)
    if r.ndim == 1:
        r = r[None]
    if r.ndim != 2 or r.shape[1] < 3:
        raise ValueError(f"`r` must be a series or windows (n, L) with L >= 3; got {r.shape}.")
    if not np.all(np.isfinite(r)):
        raise ValueError("`r` must be finite.")
    return r


def _lags(lags, length) -> np.ndarray:
    lags = np.atleast_1d(np.asarray(lags, int))
    if np.any(lags < 0) or np.any(lags >= length):
        raise ValueError(f"`lags` must lie in [0, {length}); got {lags.min()}..{lags.max()}.")
    return lags


def tail_exponent(r, *, min_tail: int = 50, candidates: int = 200) -> tuple[float, float, float]:
    r"""`(alpha, xmin, ks)`: the power-law exponent of the density $p(x) \propto x^{-\alpha}$
    of $x = |r|$ (all windows pooled) for $x \ge x_{\min}$, with $x_{\min}$ among up to
    `candidates` quantiles of $x$ leaving at least `min_tail` points in the tail, chosen
    by the smallest KS distance between the tail's empirical and fitted CDFs. The MLE is
    $\hat\alpha = 1 + n / \sum \ln(x_i / x_{\min})$."""
    x = np.sort(np.abs(_windows(r)).ravel())
    x = x[x > 0]
    if x.size < 2 * min_tail:
        raise ValueError(f"`r` needs at least {2 * min_tail} nonzero values; got {x.size}.")
    picks = np.unique(np.linspace(0, x.size - min_tail, candidates).astype(int))
    best = (np.inf, np.nan, np.nan)
    for i in picks:
        tail = x[i:]
        alpha = 1 + tail.size / np.sum(np.log(tail / tail[0]))
        empirical = np.arange(tail.size) / tail.size
        fitted = 1 - (tail / tail[0]) ** (1 - alpha)
        ks = float(np.max(np.abs(empirical - fitted)))
        if ks < best[0]:
            best = (ks, float(alpha), float(tail[0]))
    return best[1], best[2], best[0]


def autocorrelation(r, lags, *, absolute: bool = False) -> np.ndarray:
    """The autocorrelation of `r` (or of `|r|`) at `lags`, each window centred on the
    pooled mean and the lag products pooled over windows."""
    x = _windows(r)
    x = np.abs(x) if absolute else x
    x = x - x.mean()
    lags = _lags(lags, x.shape[1])
    var = np.mean(x**2)
    return np.array([np.mean(x[:, : x.shape[1] - k] * x[:, k:]) / var for k in lags])


def decay_exponent(acf, lags) -> float:
    r"""$\beta$ of $\mathrm{ACF}(k) \propto k^{-\beta}$ by least squares in log-log over the
    lags where the ACF is positive."""
    acf, lags = np.asarray(acf, np.float64), np.asarray(lags, np.float64)
    keep = (acf > 0) & (lags > 0)
    if keep.sum() < 2:
        return float("nan")
    slope = np.polyfit(np.log(lags[keep]), np.log(acf[keep]), 1)[0]
    return float(-slope)


def leverage(r, lags) -> np.ndarray:
    r"""$L(k) = E[r_t r_{t+k}^2 - r_t r_t^2] / E[r_t^2]^2$ at `lags`, pooled over windows."""
    x = _windows(r)
    lags = _lags(lags, x.shape[1])
    scale = np.mean(x**2) ** 2
    n = x.shape[1]
    return np.array(
        [np.mean(x[:, : n - k] * x[:, k:] ** 2 - x[:, : n - k] ** 3) / scale for k in lags]
    )


def coarse_fine_volatility(r, lags, *, tau: int = 5) -> tuple[np.ndarray, np.ndarray]:
    r"""`(rho, asymmetry)`: $\rho(k)$ at `lags` (may be negative) and
    $\rho(k) - \rho(-k)$ at `|lags|`."""
    x = _windows(r)
    kernel = np.ones(tau)
    coarse = np.abs(np.apply_along_axis(np.convolve, 1, x, kernel, "valid"))
    fine = np.apply_along_axis(np.convolve, 1, np.abs(x), kernel, "valid")
    lags = np.atleast_1d(np.asarray(lags, int))
    _lags(np.abs(lags), coarse.shape[1])

    def rho(k):
        n = coarse.shape[1] - abs(k)
        a, b = (coarse[:, k:], fine[:, :n]) if k >= 0 else (coarse[:, :n], fine[:, -k:])
        return np.corrcoef(a.ravel(), b.ravel())[0, 1]

    values = np.array([rho(k) for k in lags])
    return values, np.array([rho(abs(k)) - rho(-abs(k)) for k in lags])


def gain_loss_asymmetry(r, *, theta: float, horizon: int = 250) -> dict:
    r"""First-passage times of the cumulative log-return from every start to $+\theta$
    (gain) and $-\theta$ (loss), within `horizon` steps: their histograms over
    `1..horizon` (probabilities) and modes. A loss mode earlier than the gain mode is
    the asymmetry of stock indices."""
    x = _windows(r)
    horizon = min(horizon, x.shape[1] - 1)
    cum = np.cumsum(x, axis=1)
    out = {}
    for name, sign in (("gain", 1.0), ("loss", -1.0)):
        counts = np.zeros(horizon + 1)
        for start in range(x.shape[1] - 1):
            base = cum[:, start - 1] if start else 0.0
            path = sign * (cum[:, start : start + horizon] - np.asarray(base)[..., None])
            hit = path >= theta
            first = np.where(hit.any(1), hit.argmax(1) + 1, 0)
            counts += np.bincount(first, minlength=horizon + 1)[: horizon + 1]
        density = counts[1:] / max(counts[1:].sum(), 1)
        out[name] = density
        out[f"{name}_mode"] = int(np.argmax(density) + 1)
    return out


def bootstrap_band(
    statistic: Callable[[np.ndarray], np.ndarray],
    r,
    *,
    key: int = 0,
    draws: int = 200,
    level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """The `level` band of `statistic(windows)` over `draws` resamplings of the windows
    `(n, L)` with replacement (a block bootstrap with the windows as blocks)."""
    x = _windows(r)
    rng = np.random.default_rng(key)
    values = np.stack([statistic(x[rng.integers(0, len(x), len(x))]) for _ in range(draws)])
    tail = (1 - level) / 2
    return np.quantile(values, tail, axis=0), np.quantile(values, 1 - tail, axis=0)
