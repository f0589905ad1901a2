"""Metrics: CRPS against its closed form, calibration diagnostics that can tell a
calibrated ensemble from an under-dispersive one."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.stats

from assimilax import Ensemble, metrics


def test_crps_of_gaussian_ensemble_matches_closed_form(getkey):
    n, d = 4000, 64
    mu, sigma = 1.5, 0.7
    ens = Ensemble(mu + sigma * jr.normal(getkey(), (n, d)))
    y = jr.normal(getkey(), (d,)) * 1.3
    expected = np.mean(metrics.gaussian_crps(mu, sigma, np.asarray(y)))
    # The ensemble estimator is biased low by E|X - X'| / (2n) = sigma / (sqrt(pi) n).
    assert abs(float(metrics.crps(ens, y)) - expected) < 0.01 * expected
    # A point ensemble: CRPS is the absolute error.
    point = Ensemble(jnp.broadcast_to(y[None] + 0.25, (5, d)))
    assert np.isclose(float(metrics.crps(point, y)), 0.25)


def test_weighted_scores_equal_duplicated_members(getkey):
    """Weights 2:1:1 score like an equal-weight ensemble with member 0 duplicated."""
    x = jr.normal(getkey(), (3, 4))
    y = jr.normal(getkey(), (4,))
    weighted = Ensemble(x, jnp.log(jnp.array([2.0, 1.0, 1.0])))
    duplicated = Ensemble(x[jnp.array([0, 0, 1, 2])])
    for fn in (metrics.crps, metrics.energy_score, metrics.pit):
        assert np.allclose(fn(weighted, y), fn(duplicated, y), atol=1e-12), fn.__name__


def test_energy_score_reduces_to_crps_and_norm(getkey):
    x = jr.normal(getkey(), (30, 1))
    y = jr.normal(getkey(), (1,))
    assert np.isclose(metrics.energy_score(Ensemble(x), y), metrics.crps(Ensemble(x), y))
    z = jr.normal(getkey(), (6,))
    point = Ensemble(jnp.broadcast_to(z[None], (4, 6)))
    assert np.isclose(metrics.energy_score(point, jnp.zeros(6)), jnp.linalg.norm(z))


def _cases(key, n, d, reps, scale):
    """Truth and ensemble drawn from the same N(mu, 1) (scale 1: calibrated) or an
    ensemble shrunk by `scale` (< 1: under-dispersive)."""

    def one(k):
        k1, k2 = jr.split(k)
        mu = 3 * jr.normal(k1, (d,))
        draws = jr.normal(k2, (n + 1, d))
        return Ensemble(mu[None] + scale * draws[:n]), mu + draws[n]

    return jax.vmap(one)(jr.split(key, reps))


@pytest.mark.parametrize("n", [20, 40])
def test_calibrated_ensemble_is_flat_and_covers(n, getkey):
    ens, y = _cases(getkey(), n, 25, 1000, 1.0)
    counts = np.asarray(jax.vmap(metrics.rank_counts)(ens, y).sum(0))
    assert counts.size == metrics.rank_bins(n)
    assert scipy.stats.chisquare(counts).pvalue > 1e-3
    cover = np.asarray(jax.vmap(metrics.coverage)(ens, y).mean(0))
    nominal = np.asarray(metrics.COVERAGE_LEVELS)
    # nominal where the ensemble can resolve the level ((n-1)/(n+1))
    resolvable = nominal <= (n - 1) / (n + 1)
    assert np.allclose(cover[resolvable], nominal[resolvable], atol=0.015), cover


def test_underdispersive_ensemble_is_detected(getkey):
    ens, y = _cases(getkey(), 20, 25, 1000, 0.5)
    counts = np.asarray(jax.vmap(metrics.rank_counts)(ens, y).sum(0))
    assert scipy.stats.chisquare(counts).pvalue < 1e-10
    assert counts[0] > 2 * counts[10] and counts[-1] > 2 * counts[10]  # U shape
    cover = np.asarray(jax.vmap(metrics.coverage)(ens, y).mean(0))
    assert np.all(cover < np.asarray(metrics.COVERAGE_LEVELS) - 0.2)


def test_scores_run_inside_jit_with_weights(getkey):
    x = jr.normal(getkey(), (10, 5))
    ens = Ensemble(x, jr.normal(getkey(), (10,)))
    out = jax.jit(metrics.cycle_scores)(ens, jnp.zeros(5))
    assert out["coverage"].shape == (3,) and np.isclose(out["rank_counts"].sum(), 5)
    assert all(jnp.all(jnp.isfinite(v)) for v in out.values())


def test_spread_skill_ratio():
    spread = np.array([9.0, 1.0, 1.0, 1.0])
    error = np.array([0.0, 2.0, 2.0, 2.0])
    assert metrics.spread_skill_ratio(spread, error, burn_in=1) == 0.5
    with pytest.raises(ValueError, match="burn_in"):
        metrics.time_average(spread, 4)


def test_power_spectrum_parseval_and_shells(getkey):
    from assimilax.metrics import power_spectrum

    for shape in [(40,), (16, 24)]:
        x = jr.normal(getkey(), shape)
        assert np.isclose(power_spectrum(x).sum(), jnp.mean(x**2), rtol=1e-10)
    grid = 2 * np.pi * np.arange(32) / 32
    e = power_spectrum(jnp.asarray(np.sin(3 * grid)))
    assert np.isclose(e[3], 0.5) and np.isclose(e.sum(), 0.5)
    i, j = np.meshgrid(grid, grid, indexing="ij")
    e2 = power_spectrum(jnp.asarray(np.cos(3 * i + 4 * j)))  # |k| = 5
    assert np.isclose(e2[5], 0.5) and np.isclose(e2.sum(), 0.5)


def test_spectral_error(getkey):
    from assimilax.metrics import spectral_error

    x = jr.normal(getkey(), (64,))
    assert spectral_error(x, x) == 0
    # Twice the amplitude at every scale: four times the energy, log10(4) per shell.
    assert np.isclose(spectral_error(2 * x, x), np.log10(4.0), rtol=1e-6)
    # A smoothed estimate loses small-scale energy; the RMSE barely sees it.
    xh = jnp.fft.rfft(x)
    smooth = jnp.fft.irfft(jnp.where(jnp.arange(33) < 8, xh, 0), n=64)
    assert spectral_error(smooth, x) > 3
    assert spectral_error(x + 0.1 * jr.normal(getkey(), (64,)), x) < 0.1


def test_divergence_needs_sustained_large_innovations():
    calm = np.ones(400)
    assert not metrics.divergence(calm)
    # Rare huge ratios (a tracking filter seen through y = x^3) are not divergence ...
    spiky = calm.copy()
    spiky[::25] = 500.0
    assert not metrics.divergence(spiky)
    # ... a run of them is, as are non-finite values; the burn-in is skipped.
    lost = calm.copy()
    lost[300:] = 40.0
    assert metrics.divergence(lost)
    assert not metrics.divergence(lost, burn_in=0, window=400)
    assert metrics.divergence(np.r_[calm, np.nan])
    assert not metrics.divergence(np.r_[np.full(50, 40.0), calm], burn_in=50)


def test_uninformative_flags_an_error_near_climatology():
    from assimilax.metrics import climatological_error, uninformative

    rng = np.random.default_rng(0)
    truth = rng.normal(2.0, 3.0, (400, 5))
    reference = climatological_error(truth)
    assert abs(reference - 3.0) < 0.15
    tracking = np.full(400, 0.3 * reference)
    assert not uninformative(tracking, reference, 40)
    gave_up = tracking.copy()
    gave_up[200:260] = 0.9 * reference  # a sustained window near climatology
    assert uninformative(gave_up, reference, 40)
    blip = tracking.copy()
    blip[200:203] = 5 * reference  # three bad cycles are no window
    assert not uninformative(blip, reference, 40)


def test_a_twin_that_learns_nothing_is_flagged():
    """Observations 30x noisier than the climate: the ETKF's analysis error is the
    climatological one, its innovations consistent: UNINFORMATIVE, not silent."""
    import assimilax as ax
    from assimilax.dynamics import Lorenz96
    from assimilax.experiments import status
    from assimilax.filters import ETKF
    from assimilax.observations import Identity

    run = dict(key=jr.key(0), members=10, cycles=300, obs_interval=0.05, burn_in=50)
    run.update(x0=8.0 + jnp.arange(8.0) / 8, spinup_time=5.0)
    for std, flagged in ((100.0, True), (1.0, False)):
        ds = ax.twin_experiment(Lorenz96(8), Identity(8, noise_std=std), {"etkf": ETKF()}, **run)
        row = ax.summarise(ds)["etkf"]
        assert row["uninformative"] == flagged and not row["diverged"], (std, row)
        assert (status(row) == "UNINFORMATIVE") == flagged
