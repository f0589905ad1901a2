import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import assimilax as ax
from assimilax.dynamics import Lorenz96
from assimilax.filters import ETKF, LETKF, StochasticEnKF
from assimilax.observations import Identity, Subsample

from .helpers import tree_allclose


D, N, K = 10, 6, 12


@pytest.fixture
def problem(getkey):
    dyn = Lorenz96(D)
    obs = Subsample.every(D, 2, noise_std=1.0)
    times = 0.05 * jnp.arange(1.0, K + 1)
    truth = 8 + jr.normal(getkey(), (K, D))
    y = truth[:, ::2] + jr.normal(getkey(), (K, D // 2))
    series = ax.ObservationSeries(obs, times, y)
    ens = ax.Ensemble(8 + jr.normal(getkey(), (N, D)))
    return dyn, series, ens, truth


def test_loop_equals_manual_stepping(problem, getkey):
    dyn, series, ens, truth = problem
    flt = StochasticEnKF(1.05)
    key = getkey()
    sol = ax.assimilate(flt, dyn, series, ens, key=key, truth=truth, save_ensembles=True)
    b, t_prev = ens, 0.0
    for k in range(K):
        fkey, ukey = jr.split(jr.fold_in(key, k))
        b = flt.forecast(b, dyn, t_prev, series.times[k], key=fkey)
        assert np.allclose(sol.forecast_mean[k], b.mean())
        b = flt.update(b, series.observation, series.values[k], series.mask[k], key=ukey)
        assert np.allclose(sol.analysis_mean[k], b.mean())
        assert np.allclose(sol.ensembles[k], b.members)
        assert np.isclose(sol.analysis_spread[k], b.spread())
        assert np.isclose(sol.rmse_analysis[k], np.sqrt(np.mean((b.mean() - truth[k]) ** 2)))
        t_prev = series.times[k]
    assert sol.result == ax.RESULTS.successful


def test_chunked_equals_whole_and_seed_determinism(problem, getkey):
    dyn, series, ens, truth = problem
    key = getkey()
    whole = ax.assimilate(ETKF(rotate=True), dyn, series, ens, key=key, truth=truth)
    chunked = ax.assimilate_stream(
        ETKF(rotate=True), dyn, series, ens, key=key, truth=truth, chunk_size=5
    )
    assert tree_allclose(whole, chunked, rtol=0, atol=0)
    other = ax.assimilate(ETKF(rotate=True), dyn, series, ens, key=getkey(), truth=truth)
    assert not np.allclose(whole.analysis_mean, other.analysis_mean)


def test_missing_values(problem, getkey):
    """NaN values are masked; a fully masked record leaves the forecast unchanged."""
    dyn, series, ens, _ = problem
    values = series.values.at[3].set(jnp.nan)
    masked = ax.ObservationSeries(series.observation, series.times, values)
    assert not masked.mask[3].any() and masked.values[3].sum() == 0
    sol = ax.assimilate(ETKF(), dyn, masked, ens, key=getkey())
    assert np.allclose(sol.forecast_mean[3], sol.analysis_mean[3])
    assert np.isclose(sol.forecast_spread[3], sol.analysis_spread[3])


def test_divergence_is_reported_not_hidden(getkey):
    # A degenerate, enormous ensemble: the run breaks down (NaN), which must be reported.
    dyn = Lorenz96(D)
    obs = Identity(D, noise_std=1.0)
    series = ax.ObservationSeries(obs, jnp.array([1.0, 2.0]), jnp.zeros((2, D)))
    ens = ax.Ensemble(1e300 * (1 + 0.1 * jr.normal(getkey(), (N, D))))
    sol = ax.assimilate(ETKF(), dyn, series, ens, key=getkey(), throw=False)
    assert sol.result != ax.RESULTS.successful
    assert not jnp.all(jnp.isfinite(sol.analysis_mean))
    with pytest.raises(RuntimeError, match="became NaN or infinite"):
        ax.assimilate(ETKF(), dyn, series, ens, key=getkey())


def test_kalman_filter_runs_in_the_loop(getkey):
    from assimilax.dynamics import LinearDynamics
    from assimilax.filters import KalmanFilter

    dyn = LinearDynamics(-0.5 * jnp.eye(3), 0.1 * jnp.eye(3))
    obs = Identity(3, noise_std=0.5)
    series = ax.ObservationSeries(obs, jnp.array([0.5, 1.0, 1.5]), jr.normal(getkey(), (3, 3)))
    ens = ax.Ensemble(jr.normal(getkey(), (10, 3)))
    kf = KalmanFilter()
    sol = ax.assimilate(kf, dyn, series, kf.init(ens, key=getkey()), key=getkey())
    assert sol.analysis_spread.shape == (3,)
    assert jnp.all(sol.analysis_spread < sol.forecast_spread)


@pytest.mark.parametrize(
    "change, match",
    [
        (
            lambda d, s, e: dict(belief0=ax.Ensemble(jnp.ones((N, D + 1)))),
            "state shape",
        ),
        (lambda d, s, e: dict(t0=1.0), "t0"),
        (lambda d, s, e: dict(truth=jnp.zeros((K + 1, D))), "truth"),
        (lambda d, s, e: dict(chunk_size=0), "chunk_size"),
        (lambda d, s, e: dict(filter=object()), "AbstractFilter"),
    ],
)
def test_bad_input(problem, getkey, change, match):
    dyn, series, ens, _ = problem
    kwargs = dict(filter=ETKF(), dynamics=dyn, observations=series, belief0=ens, key=getkey())
    kwargs.update(change(dyn, series, ens))
    with pytest.raises((ValueError, TypeError), match=match):
        ax.assimilate_stream(**kwargs)
    if "chunk_size" not in kwargs:  # the pure loop makes the same checks
        kwargs["series"] = kwargs.pop("observations")
        with pytest.raises((ValueError, TypeError), match=match):
            ax.assimilate(**kwargs)


@pytest.mark.parametrize(
    "times, values, match",
    [
        (
            jnp.array([0.1, 0.1, 0.3]),
            jnp.zeros((3, 5)),
            "strictly increasing; got times\\[1\\]",
        ),
        (jnp.array([0.3, 0.2, 0.4]), jnp.zeros((3, 5)), "strictly increasing"),
        (jnp.array([0.1, jnp.nan, 0.3]), jnp.zeros((3, 5)), "finite"),
        (jnp.array([0.1, 0.2, 0.3]), jnp.zeros((3, 4)), "values"),
        (jnp.array([[0.1, 0.2]]), jnp.zeros((1, 5)), "times"),
        (jnp.array([0.1, 0.2]), jnp.zeros((2, 5)).at[0, 0].set(jnp.inf), "infinities"),
    ],
)
def test_bad_series(times, values, match):
    obs = Subsample.every(10, 2, noise_std=1.0)
    with pytest.raises(ValueError, match=match):
        ax.ObservationSeries(obs, times, values)


def test_nan_in_initial_ensemble_is_named():
    with pytest.raises(ValueError, match="members"):
        ax.Ensemble(jnp.ones((4, 3)).at[0, 0].set(jnp.nan))


def test_letkf_in_loop_with_sparse_observations(problem, getkey):
    dyn, series, ens, truth = problem
    sol = ax.assimilate(
        LETKF(radius=2.0, inflation=1.05), dyn, series, ens, key=getkey(), truth=truth
    )
    assert sol.rmse_analysis.shape == (K,)
    assert jnp.all(jnp.isfinite(sol.rmse_analysis))
