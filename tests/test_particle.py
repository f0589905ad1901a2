"""Particle filters: unbiased resampling, convergence to the Kalman filter, weight
collapse reported, the Lorenz-63 benchmark setting."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax import lax

import assimilax as ax
from assimilax import Ensemble, GaussianBelief
from assimilax.dynamics import LinearDynamics, Lorenz63
from assimilax.filters import (
    RESAMPLING,
    BootstrapFilter,
    KalmanFilter,
    OptimalProposalFilter,
    ProposalEnsemble,
    resample,
)
from assimilax.observations import Arctan, Identity, LinearObservation


@pytest.mark.parametrize("method", RESAMPLING)
def test_resampling_is_unbiased(method, getkey):
    """E[copies of particle i] = n w_i, checked to 5 standard errors over 4000 draws."""
    n, reps = 7, 4000
    w = jr.uniform(getkey(), (n,)) ** 2
    w = w.at[3].set(0.0)
    w = w / w.sum()
    idx = jax.vmap(lambda k: resample(w, method, key=k))(jr.split(getkey(), reps))
    assert idx.shape == (reps, n) and idx.dtype == jnp.int32
    assert jnp.all(jnp.diff(idx, axis=1) >= 0)  # sorted
    counts = np.asarray(jax.vmap(lambda i: jnp.bincount(i, length=n))(idx), float)
    assert np.all(counts[:, 3] == 0)  # a zero weight is never drawn
    mean, se = counts.mean(0), counts.std(0) / np.sqrt(reps) + 1e-3
    assert np.all(np.abs(mean - n * np.asarray(w)) < 5 * se), (mean, n * w)
    if method in ("systematic", "residual"):
        # Low-variance schemes: every particle gets floor(n w_i) copies at least.
        assert np.all(counts >= np.floor(n * np.asarray(w)) - 1e-9)


def test_keep_in_place_moves_the_fewest_members(getkey):
    """Every drawn particle keeps its own slot; the multiset of ancestors is unchanged;
    the extra copies fill the empty slots."""
    from assimilax._resampling import keep_in_place

    n = 9
    for k in jr.split(getkey(), 20):
        drawn = resample(jr.dirichlet(k, jnp.full(n, 0.5)), key=k)
        kept = np.asarray(keep_in_place(drawn))
        assert sorted(kept) == sorted(np.asarray(drawn))
        survivors = np.unique(np.asarray(drawn))
        assert np.array_equal(kept[survivors], survivors)


def test_resampling_rejects_unknown_scheme():
    with pytest.raises(ValueError, match="resampling"):
        BootstrapFilter("bogus")
    with pytest.raises(ValueError, match="threshold"):
        BootstrapFilter(threshold=1.5)
    with pytest.raises(ValueError, match="regularisation"):
        BootstrapFilter(regularisation=-1.0)


def _linear_problem():
    a = jnp.array([[-0.2, 0.5], [-0.5, -0.2]])
    dyn = LinearDynamics(a, 0.3 * jnp.eye(2))
    obs = LinearObservation(jnp.array([[1.0, 0.0]]), noise_std=0.5, locations=jnp.zeros(1))
    ys = jnp.array([[0.8], [1.1], [0.3], [-0.4]])
    return dyn, obs, ys


def _plain(ens):
    return ens.members, ens.log_weights


def _kalman_means(dyn, obs, ys, m0, p0):
    kf, belief = KalmanFilter(), GaussianBelief(m0, p0)
    for k, y in enumerate(ys):
        belief = kf.forecast(belief, dyn, 0.5 * k, 0.5 * (k + 1), key=None)
        belief = kf.update(belief, obs, y, key=None)
    return belief.loc, belief.covariance_matrix


@pytest.mark.parametrize(
    "flt",
    [BootstrapFilter(threshold=0.5), pytest.param(OptimalProposalFilter(), marks=pytest.mark.slow)],
)
def test_particle_filter_converges_to_kalman(flt, getkey):
    """The error of the particle mean shrinks like n^(-1/2) (slope fitted over
    n = 100..6400, 16 independent runs each)."""
    dyn, obs, ys = _linear_problem()
    m0, p0 = jnp.array([0.5, -0.5]), jnp.eye(2)
    mean_kf, cov_kf = _kalman_means(dyn, obs, ys, m0, p0)

    @eqx.filter_jit
    def run(key, n):
        k0, key = jr.split(key)
        ens = Ensemble(m0[None] + jr.normal(k0, (n, 2)))

        def cycle(ens, inputs):
            k, y = inputs
            kf_, ku = jr.split(jr.fold_in(key, k))
            t0 = 0.5 * k.astype(ys.dtype)
            ens = flt.forecast(ens, dyn, t0, t0 + 0.5, key=kf_)
            return Ensemble(*_plain(flt.update(ens, obs, y, key=ku))), None

        ens, _ = lax.scan(cycle, ens, (jnp.arange(ys.shape[0]), ys))
        return ens.mean(), ens.covariance()

    sizes = np.array([100, 400, 1600, 6400])
    errors = []
    for n in sizes:
        means, covs = jax.vmap(lambda k, n=int(n): run(k, n))(jr.split(getkey(), 16))
        errors.append(float(jnp.sqrt(jnp.mean(jnp.sum((means - mean_kf[None]) ** 2, -1)))))
    slope = np.polyfit(np.log(sizes), np.log(errors), 1)[0]
    assert -0.75 < slope < -0.3, (slope, errors)
    assert errors[-1] < 0.03
    assert np.allclose(covs.mean(0), cov_kf, atol=0.02)


def test_weight_collapse_is_reported_not_nan(getkey):
    """An observation far in the tail: ESS collapses to ~1, the analysis stays finite,
    and `assimilate` reports the ESS per cycle."""
    ens = Ensemble(jr.normal(getkey(), (50, 2)))
    obs = Identity(2, noise_std=1e-3)
    out = BootstrapFilter().update(ens, obs, jnp.array([30.0, -30.0]), key=getkey())
    assert float(out.effective_size()) < 1.01
    assert jnp.all(jnp.isfinite(out.log_weights)) and jnp.all(jnp.isfinite(out.mean()))
    # Through the loop: resampling restores equal weights next cycle; ESS is reported.
    dyn, _, _ = _linear_problem()
    times = jnp.array([0.5, 1.0, 1.5])
    series = ax.ObservationSeries(obs, times, jnp.array([[30.0, -30.0], [0.0, 0.0], [0.1, 0.2]]))
    sol = ax.assimilate(BootstrapFilter(regularisation=1.0), dyn, series, ens, key=getkey())
    assert sol.effective_size.shape == (3,)
    assert float(sol.effective_size[0]) < 1.5
    assert jnp.all(jnp.isfinite(sol.analysis_mean))


def test_jitter_only_on_duplicates(getkey):
    """With `jitter_duplicates_only`, particles drawn once keep their exact value."""
    x = jr.normal(getkey(), (6, 3))
    logw = jnp.log(jnp.array([0.45, 0.3, 0.1, 0.1, 0.05, 1e-12]))
    flt = BootstrapFilter(threshold=1.0, regularisation=2.0)
    out = flt.resample_if_degenerate(Ensemble(x, logw), key=getkey())
    assert jnp.all(out.log_weights == 0)
    unique = [row for row in np.asarray(out.members) if np.any(np.all(row == np.asarray(x), 1))]
    # particle 0 (n w = 2.7) is copied and jittered; some single copies stay exact
    assert 1 <= len(unique) < 6


def test_no_resampling_above_threshold(getkey):
    ens = Ensemble(jr.normal(getkey(), (10, 2)), jnp.linspace(0, 0.1, 10))
    out = BootstrapFilter(threshold=0.5).resample_if_degenerate(ens, key=getkey())
    assert out.members is ens.members or jnp.all(out.members == ens.members)
    assert jnp.all(out.log_weights == ens.log_weights)


def test_optimal_proposal_checks_its_inputs(getkey):
    ens = Ensemble(jr.normal(getkey(), (10, 3)))
    flt = OptimalProposalFilter()
    obs = Identity(3, noise_std=1.0)
    with pytest.raises(TypeError, match="ProposalEnsemble"):
        flt.update(ens, obs, jnp.zeros(3), key=getkey())
    forecast = flt.forecast(ens, Lorenz63(noise_std=1.0), 0.0, 0.1, key=getkey())
    assert isinstance(forecast, ProposalEnsemble)
    assert np.allclose(forecast.noise_covariance, 0.1 * jnp.eye(3))
    with pytest.raises(TypeError, match="linear observation"):
        flt.update(forecast, Arctan(obs), jnp.zeros(3), key=getkey())

    class NoSplit(ax.dynamics.AbstractDynamics):
        @property
        def state_shape(self):
            return (3,)

        def step(self, x, t0, t1, *, key):
            return x

    with pytest.raises(TypeError, match="additive Gaussian noise"):
        flt.forecast(ens, NoSplit(), 0.0, 0.1, key=getkey())


def test_optimal_proposal_masked_equals_removed(getkey):
    dyn, _, _ = _linear_problem()
    ens = Ensemble(jr.normal(getkey(), (20, 2)))
    flt = OptimalProposalFilter()
    forecast = flt.forecast(ens, dyn, 0.0, 0.5, key=getkey())
    full = Identity(2, noise_std=jnp.array([0.5, 0.7]))
    part = LinearObservation(jnp.array([[1.0, 0.0]]), noise_std=0.5, locations=jnp.zeros(1))
    key = getkey()
    a = flt.update(forecast, full, jnp.array([0.3, 1e6]), jnp.array([True, False]), key=key)
    b = flt.update(forecast, part, jnp.array([0.3]), key=key)
    assert np.allclose(a.members, b.members, atol=1e-10)
    assert np.allclose(a.log_weights, b.log_weights, atol=1e-10)


def _lorenz63_pf(members, cycles, seed):
    setup = ax.MODELS["lorenz63"]
    flt = BootstrapFilter(threshold=0.2, regularisation=0.9)  # DAPPER's N=800 tuning
    ds = ax.twin_experiment(
        setup.make_dynamics(3),
        ax.make_observation(3, setup.obs_std),
        {"pf": flt},
        key=jr.key(seed),
        members=members,
        cycles=cycles,
        obs_interval=setup.obs_interval,
        burn_in=cycles // 10,
        x0=setup.initial_state(3),
        spinup_time=setup.spinup_time,
        init_std=setup.init_std,
    )
    return ax.summarise(ds)["pf"]


@pytest.mark.slow
def test_lorenz63_particle_filter_1000():
    """Sakov (2012) setting, 1000 particles: DAPPER's PartFilt (N=800, reg 0.9, NER 0.2)
    reaches 0.28; we allow 15 % (0.322) plus 0.03 for this short run."""
    s = _lorenz63_pf(1000, 1500, seed=0)
    assert not s["failed"]
    assert s["rmse_analysis"] < 0.35
    assert 0.6 < s["spread_skill"] < 1.6


@pytest.mark.slow
@pytest.mark.xfail(
    reason="Known: over 10,000 cycles this PF (N=1000, reg 0.9, NER 0.2) loses track on some "
    "seeds (seed 1: RMSE 1.60; 2 of 3 seeds fail), as DAPPER's PartFilt does on the same "
    "observations for seed 3000 (DAPPER 2.77, ours 3.76). Kept to show when a fix lands.",
    strict=False,
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lorenz63_particle_filter_long(seed):
    s = _lorenz63_pf(1000, 10_000, seed)
    assert s["rmse_analysis"] < 0.28 * 1.15
