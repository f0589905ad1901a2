"""Verification metrics of an estimate or an ensemble against the truth.

Per-cycle scores take one `Ensemble` (weighted or not) and the true state; the CRPS
and the energy score come from `scoringrules` (its JAX backend, so they run inside the
jitted filter loop). Time averages are taken after a burn-in with `time_average`.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scoringrules.core.crps import ensemble_w as _crps_ensemble_w
from scoringrules.core.energy import es_w as _es_ensemble_w

from ._belief import GaussianBelief
from ._custom_types import Array, Float
from ._ensemble import Ensemble, flatten_members


COVERAGE_LEVELS = (0.5, 0.9, 0.95)
# The energy score's estimator holds all member pairs: n^2 d numbers.
ENERGY_SCORE_MAX_PAIRS = 2**24


def rmse(
    estimate: Float[Array, "..."], truth: Float[Array, "..."], ndim: int
) -> Float[Array, "..."]:
    r"""Root-mean-square error over the last `ndim` (state) axes:
    $\sqrt{\tfrac1d \sum_i (\hat x_i - x_i)^2}$."""
    axes = tuple(range(-ndim, 0))
    return jnp.sqrt(jnp.mean((estimate - truth) ** 2, axis=axes))


def time_average(series, burn_in: int):
    """Mean over the leading (time) axis of the cycles after the first `burn_in`."""
    if not 0 <= burn_in < series.shape[0]:
        raise ValueError(f"`burn_in` must lie in [0, {series.shape[0]}) cycles; got {burn_in}.")
    return series[burn_in:].mean(axis=0)


def spread_skill_ratio(spread, error, burn_in: int):
    """Time-averaged spread over time-averaged RMSE (1 for a calibrated ensemble;
    below 1 is under-dispersion)."""
    return time_average(spread, burn_in) / time_average(error, burn_in)


def _flat(ensemble: Ensemble, truth):
    """Members as `(d, n)` (components first, as scoringrules wants), weights `(n,)`,
    truth `(d,)`."""
    return flatten_members(ensemble.members).T, ensemble.weights(), jnp.ravel(truth)


def _sorted(ensemble: Ensemble, truth):
    x, w, y = _flat(ensemble, truth)
    order = jnp.argsort(x, axis=-1)
    return jnp.take_along_axis(x, order, -1), w[order], y


def crps(ensemble: Ensemble, truth: Float[Array, " *state"]) -> Float[Array, ""]:
    r"""The continuous ranked probability score, averaged over state components:
    $\mathrm{CRPS}(F, y) = E|X - y| - \tfrac12 E|X - X'|$ for the (weighted) empirical
    distribution `F` of the members (scoringrules' quantile-decomposition estimator).
    Lower is better; for a point forecast it is the absolute error."""
    x, w, y = _sorted(ensemble, truth)
    return jnp.mean(_crps_ensemble_w(y, x, w, estimator="qd", backend="jax"))


def energy_score(ensemble: Ensemble, truth: Float[Array, " *state"]) -> Float[Array, ""]:
    r"""The energy score $E\|X - y\| - \tfrac12 E\|X - X'\|$ of the whole state vector
    (the multivariate CRPS). Needs `n^2 d` memory; NaN above `ENERGY_SCORE_MAX_PAIRS`."""
    x, w, y = _flat(ensemble, truth)
    d, n = x.shape
    if n * n * d > ENERGY_SCORE_MAX_PAIRS:
        return jnp.full((), jnp.nan, x.dtype)
    return _es_ensemble_w(y, x.T, w, backend="jax")


def pit(ensemble: Ensemble, truth: Float[Array, " *state"]) -> Float[Array, " d"]:
    r"""Probability integral transform of each true component: the ensemble weight
    below it, $\sum_j w_j 1\{x_j < y\}$. For equal weights this is the rank of the
    truth among the members divided by `n`."""
    x, w, y = _flat(ensemble, truth)
    return jnp.sum(jnp.where(x < y[:, None], w[None], 0), axis=-1)


def rank_bins(n: int) -> int:
    """Rank-histogram bins for `n` members: the `n + 1` ranks, up to 21 bins."""
    return min(n + 1, 21)


def rank_counts(
    ensemble: Ensemble, truth: Float[Array, " *state"], bins: int | None = None
) -> Float[Array, " bins"]:
    r"""How many state components fall in each of `bins` equal rank bins; sum over
    cycles for the rank histogram (flat when calibrated, U-shaped when
    under-dispersive).

    The truth's rank `r` among `n` members (for weights: `n` times the weight below it)
    covers the interval $[r, r + 1) / (n + 1)$ of the unit interval; its unit count is
    shared between the bins that interval overlaps (the expectation of the randomised
    PIT). With `n + 1 <= 21` members the bins are the ranks themselves; with more,
    counts are fractional, and a calibrated ensemble still gives a flat histogram.
    """
    n = ensemble.size
    bins = rank_bins(n) if bins is None else bins
    lower = n * pit(ensemble, truth) / (n + 1)
    upper = lower + 1 / (n + 1)
    edges = jnp.linspace(0, 1, bins + 1, dtype=lower.dtype)
    overlap = jnp.minimum(upper[:, None], edges[None, 1:]) - jnp.maximum(
        lower[:, None], edges[None, :-1]
    )
    return jnp.sum(jnp.clip(overlap, 0), axis=0) * (n + 1)


def coverage(
    ensemble: Ensemble, truth: Float[Array, " *state"], levels: Sequence[float] = COVERAGE_LEVELS
) -> Float[Array, " L"]:
    r"""Fraction of state components inside the ensemble's central interval at each
    level.

    The ensemble's CDF is the piecewise-linear interpolation of $F(x_{(k)}) =
    \tfrac{n}{n+1} \sum_{j \le k} w_{(j)}$ over the sorted members (Weibull plotting
    positions, `k / (n + 1)` for equal weights, so a calibrated ensemble's coverage is
    nominal); the truth is covered at level `a` when $|F(y) - \tfrac12| \le a/2$.
    An `n`-member ensemble cannot resolve levels above `(n - 1) / (n + 1)`.
    """
    x, w, y = _sorted(ensemble, truth)
    n = x.shape[-1]
    positions = n / (n + 1) * jnp.cumsum(w, axis=-1)
    cdf = jax.vmap(lambda yi, xi, pi: jnp.interp(yi, xi, pi, left=0.0, right=1.0))(y, x, positions)
    half = jnp.asarray(levels, cdf.dtype)[:, None] / 2
    return jnp.mean(jnp.abs(cdf[None] - 0.5) <= half, axis=-1, dtype=cdf.dtype)


def _shell_index(shape: tuple[int, ...]) -> np.ndarray:
    """The integer wavenumber shell `round(|k|)` of every FFT coefficient of a periodic
    grid of `shape` (integer wavenumbers, `numpy.fft.fftfreq` order)."""
    k = np.meshgrid(*(np.fft.fftfreq(n) * n for n in shape), indexing="ij")
    return np.rint(np.sqrt(sum(ki**2 for ki in k))).astype(np.int32)


def power_spectrum(x: Float[Array, " *grid"]) -> Float[Array, " shells"]:
    r"""The shell-summed power spectrum of a field on a periodic grid: $E(k) =
    \sum_{\mathrm{round}(|\mathbf k|) = k} |\hat x_{\mathbf k}|^2 / N^2$ for the integer
    shells $k = 0, 1, \dots$ ($N$ grid points; the shells sum to the mean square of
    `x`, Parseval). Every axis of `x` is a grid axis."""
    shells = _shell_index(x.shape)
    power = jnp.abs(jnp.fft.fftn(x)) ** 2 / x.size**2
    return jax.ops.segment_sum(
        power.ravel(), jnp.asarray(shells.ravel()), num_segments=int(shells.max()) + 1
    )


def spectral_error(
    estimate: Float[Array, " *grid"], truth: Float[Array, " *grid"]
) -> Float[Array, ""]:
    r"""How far the estimate's power spectrum is from the truth's, scale by scale: the
    RMS over shells $k = 1 \dots k_{max}$ of $\log_{10} E_{est}(k) - \log_{10}
    E_{true}(k)$ (`power_spectrum`), with $k_{max}$ = a third of the smallest grid size
    (the scales a 2/3-dealiased spectral model resolves). 0 is a perfect spectrum; 0.3
    means a factor 2 in energy per shell on average. It does not see phase errors (the
    RMSE does); it shows over-smoothed analyses, which lose small-scale energy, and
    noisy ones. A floor of 1e-12 of the truth's largest shell avoids log 0.
    """
    k_max = max(min(truth.shape) // 3, 1)
    e_est = power_spectrum(estimate)[1 : k_max + 1]
    e_true = power_spectrum(truth)[1 : k_max + 1]
    floor = 1e-12 * jnp.max(e_true) + jnp.finfo(e_true.dtype).tiny
    log_ratio = jnp.log10(e_est + floor) - jnp.log10(e_true + floor)
    return jnp.sqrt(jnp.mean(log_ratio**2))


def cycle_scores(
    ensemble: Ensemble, truth: Float[Array, " *state"], levels: Sequence[float] = COVERAGE_LEVELS
) -> dict[str, Array]:
    """All per-cycle scores of one ensemble: `crps`, `energy_score`, `coverage` (one
    per level), `rank_counts`, and the `spectral_error` of its mean."""
    return dict(
        crps=crps(ensemble, truth),
        energy_score=energy_score(ensemble, truth),
        coverage=coverage(ensemble, truth, levels),
        rank_counts=rank_counts(ensemble, truth),
        spectral_error=spectral_error(ensemble.mean(), truth),
    )


def innovation_ratio(
    forecast: Ensemble | GaussianBelief, observation, y: Float[Array, " m"], mask: Array
) -> Float[Array, ""]:
    r"""The forecast's normalised innovation statistic over the observed values:

    $$\frac{\sum_i (y_i - \overline{h(x)}_i)^2}{\sum_i (\operatorname{var}_i h(x) + R_{ii})}$$

    with the weighted mean and variance of the observed members $h(x^{(j)})$. About 1
    for a filter whose spread matches its error (in expectation); far above 1 when the
    filter has lost track (its ensemble is confident and wrong). Needs no truth, so it
    also flags divergence when assimilating real sensor data (see `divergence`).
    For a `GaussianBelief` $N(m, P)$: $h(m)$ and the diagonal of $H P H^T$, $H$ the
    Jacobian of the observation at $m$."""
    if isinstance(forecast, GaussianBelief):
        mean, jac = observation.apply(forecast.loc), jax.jacfwd(observation.apply)(forecast.loc)
        var = jnp.sum((jac @ forecast.covariance_matrix) * jac, axis=1)
    else:
        hx = jax.vmap(observation.apply)(forecast.members)
        w = forecast.weights()
        mean = w @ hx
        var = w @ (hx - mean[None]) ** 2
    noise = observation.noise.diagonal()
    num = jnp.sum(jnp.where(mask, (y - mean) ** 2, 0))
    den = jnp.sum(jnp.where(mask, var + noise, 0))
    return jnp.where(jnp.any(mask), num / jnp.maximum(den, jnp.finfo(den.dtype).tiny), 1.0)


# A filter has diverged when its innovations stay this many times their predicted
# variance over a window of cycles (innovations ~3.2 predicted standard deviations).
DIVERGENCE_RATIO = 10.0


def divergence(
    ratio, burn_in: int = 0, *, window: int | None = None, threshold: float = DIVERGENCE_RATIO
) -> bool:
    """Whether a filter lost track: the windowed median of its `innovation_ratio`
    series (K,) exceeds `threshold` somewhere after `burn_in` (window: 5 % of the cycles
    after burn-in, at least 10 and at most the cycles available). Non-finite values
    count as divergence.

    The median, not the mean: a filter that lost track has large ratios cycle after
    cycle, while a strongly nonlinear operator (y = x^3 on Lorenz-63) gives a tracking
    filter rare, huge ratios (skewed forecasts in observation space) that a windowed
    mean mistook for divergence (measured: every filter flagged at RMSE 0.10-0.15)."""
    r = np.asarray(ratio, np.float64)[burn_in:]
    if r.size == 0:
        return False
    if not np.all(np.isfinite(r)):
        return True
    w = min(r.size, max(10, r.size // 20)) if window is None else min(window, r.size)
    medians = np.median(np.lib.stride_tricks.sliding_window_view(r, w), axis=1)
    return bool(np.any(medians > threshold))


# A filter is uninformative when its analysis error stays this large a fraction of the
# climatological error (the error of the climatological mean): it gained next to nothing
# from the observations, whatever its innovation statistics say (spread grown to
# climatology makes them look consistent).
UNINFORMATIVE_FRACTION = 0.7


def uninformative(
    rmse, climatological_error: float, burn_in: int = 0, *, window: int | None = None,
    fraction: float = UNINFORMATIVE_FRACTION,
) -> bool:  # fmt: skip
    """Whether a filter gave up: the windowed median of its analysis `rmse` series (K,)
    exceeds `fraction` of `climatological_error` somewhere after `burn_in` (the window as
    `divergence`'s). Non-finite errors count (as divergence does)."""
    r = np.asarray(rmse, np.float64)[burn_in:]
    if r.size == 0 or not climatological_error > 0:
        return False
    if not np.all(np.isfinite(r)):
        return True
    w = min(r.size, max(10, r.size // 20)) if window is None else min(window, r.size)
    medians = np.median(np.lib.stride_tricks.sliding_window_view(r, w), axis=1)
    return bool(np.any(medians > fraction * climatological_error))


def climatological_error(truth, burn_in: int = 0) -> float:
    """The RMSE of the climatological mean as an estimate of `truth` (K, *state): the
    root of the mean over components of their variance in time (after `burn_in`)."""
    x = np.asarray(truth, np.float64)[burn_in:]
    return float(np.sqrt(np.mean(np.var(x.reshape(x.shape[0], -1), axis=0))))


def gaussian_crps(mean, std, truth):
    """The closed-form CRPS of `N(mean, std^2)` at `truth` (scoringrules), for reference."""
    from scoringrules import crps_normal

    return crps_normal(np.asarray(truth), np.asarray(mean), np.asarray(std), backend="numpy")
