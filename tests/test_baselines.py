"""The rest of DAPPER's method table: EnKF-N, DEnKF, the extended Kalman filter, 3D-Var
and optimal interpolation, each against an independent reference."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

import assimilax as ax
from assimilax import Ensemble, GaussianBelief
from assimilax.dynamics import LinearDynamics, Lorenz63
from assimilax.filters import (
    ETKF,
    AdaptiveInflation,
    DEnKF,
    EnKFN,
    EnKS,
    ExtendedKalmanFilter,
    IEnKS,
    KalmanFilter,
    OptimalInterpolation,
    SerialEnSRF,
    Var3D,
)
from assimilax.observations import Arctan, Identity, LinearObservation, Power, Subsample

from .test_filters import _exact_ensemble, _random_problem


def _dual_cost_minimiser(s, d, n, weight=1.0):
    """EnKF-N's inflation from the dual cost written out in numpy (Bocquet et al. 2015,
    with the mode correction of their eq. 36), minimised by scipy."""
    _, sv, vt = np.linalg.svd(s, full_matrices=False)
    u2, s2, n1 = (vt @ d) ** 2, sv**2, n - 1
    diag = np.concatenate([s2, np.zeros(n - s2.size)]) + n1
    e_n, c_l = (n + 1) / n, n / n1
    mc = np.sqrt((e_n / c_l) ** (np.mean(1 / diag) * n1))
    e_n, c_l = weight * e_n / mc, weight * c_l * mc
    cost = lambda lam: np.sum(u2 / (lam**2 * s2 + n1)) + e_n / lam**2 + c_l * np.log(lam**2)
    return minimize_scalar(cost, bounds=(0.3, 3.0), method="bounded", options={"xatol": 1e-10}).x


@pytest.mark.parametrize("n, m, weight", [(10, 3, 1.0), (20, 40, 1.0), (5, 100, 2.0)])
def test_enkf_n_inflation_minimises_dual_cost(n, m, weight):
    rng = np.random.default_rng(n + m)
    s = 0.7 * rng.standard_normal((n, m))
    s -= s.mean(0)
    d = 1.5 * rng.standard_normal(m)
    lam = EnKFN(weight).estimated_inflation(jnp.asarray(s), jnp.asarray(d))
    assert abs(float(lam) - _dual_cost_minimiser(s, d, n, weight)) < 1e-6


def test_enkf_n_is_etkf_with_its_inflation(getkey):
    """The analysis is the ETKF's on prior anomalies scaled by the estimated factor; with
    uninformative observations the factor tends to 1 (the mode correction)."""
    dyn, obs, m0, p0 = _random_problem(getkey())
    ens = _exact_ensemble(getkey(), m0, p0, n=12)
    y = jr.normal(getkey(), (3,))
    flt = EnKFN()
    out = flt.update(ens, obs, y, key=getkey())
    terms = ax.filters._enkf.innovation_terms(ens, obs, y, None)
    lam = flt.estimated_inflation(terms.obs_anomalies, terms.innovation)
    assert lam > 1  # a 12-member sample: the EnKF-N inflates
    inflated = Ensemble(ens.mean()[None] + lam * (ens.members - ens.mean()[None]))
    kf = KalmanFilter().update(GaussianBelief(ens.mean(), inflated.covariance()), obs, y, key=None)
    assert np.allclose(out.mean(), kf.loc, atol=1e-10)
    assert np.allclose(out.covariance(), kf.covariance_matrix, atol=1e-10)
    weak = LinearObservation(obs.matrix(), noise_covariance=1e8 * jnp.eye(3))
    terms = ax.filters._enkf.innovation_terms(ens, weak, y, None)
    assert abs(flt.estimated_inflation(terms.obs_anomalies, terms.innovation) - 1) < 1e-3


def test_denkf_is_half_gain_on_anomalies(getkey):
    """DEnKF: the Kalman mean of the ensemble's moments, anomalies (I - KH/2) A."""
    _, obs, m0, p0 = _random_problem(getkey())
    ens = _exact_ensemble(getkey(), m0, p0, n=12)
    y = jr.normal(getkey(), (3,))
    out = DEnKF().update(ens, obs, y, key=getkey())
    h, r = obs.matrix(), obs.noise.dense()
    k = p0 @ h.T @ jnp.linalg.inv(h @ p0 @ h.T + r)
    assert np.allclose(out.mean(), m0 + k @ (y - h @ m0), atol=1e-10)
    a = ens.members - m0[None]
    assert np.allclose(out.members - out.mean()[None], a - 0.5 * a @ (k @ h).T, atol=1e-10)


def test_extended_kalman_filter_is_kalman_on_linear(getkey):
    dyn, obs, m0, p0 = _random_problem(getkey())
    ekf, kf = ExtendedKalmanFilter(), KalmanFilter()
    a = b = GaussianBelief(m0, p0)
    for t0, t1 in ((0.0, 0.3), (0.3, 0.8)):
        y = jr.normal(getkey(), (3,))
        a = ekf.update(ekf.forecast(a, dyn, t0, t1, key=None), obs, y, key=None)
        b = kf.update(kf.forecast(b, dyn, t0, t1, key=None), obs, y, key=None)
    assert np.allclose(a.loc, b.loc, atol=1e-12)
    assert np.allclose(a.covariance_matrix, b.covariance_matrix, atol=1e-12)


def test_extended_kalman_filter_linearises_nonlinear_parts(getkey):
    """On Lorenz-63 (no noise) and y = x^3: the forecast covariance is M P M^T with M the
    finite-difference Jacobian of the step (times the inflation per unit time), and the
    update is the Kalman update with the Jacobian 3 x^2."""
    dyn = Lorenz63()
    m0, p0 = jnp.array([1.0, 2.0, 20.0]), 0.1 * jnp.eye(3) + 0.02
    f = ExtendedKalmanFilter(inflation=4.0).forecast(
        GaussianBelief(m0, p0), dyn, 0.0, 0.5, key=None
    )
    eps = 1e-6
    step = lambda x: np.asarray(dyn.step_mean(x, 0.0, 0.5))
    fd = np.stack([(step(m0 + eps * e) - step(m0 - eps * e)) / (2 * eps) for e in np.eye(3)], 1)
    assert np.allclose(f.covariance_matrix, 4.0**0.5 * fd @ p0 @ fd.T, rtol=1e-6)
    obs = Power(Identity(3, noise_std=2.0), 3)
    y = jnp.array([5.0, -3.0, 8000.0])
    out = ExtendedKalmanFilter().update(f, obs, y, key=None)
    h = jnp.diag(3 * f.loc**2)
    ref = KalmanFilter().update(
        f, LinearObservation(h, noise_std=2.0), y - f.loc**3 + h @ f.loc, key=None
    )
    assert np.allclose(out.loc, ref.loc, rtol=1e-10)


def test_var3d_is_static_kalman_and_stationary(getkey):
    """Linear: one Gauss–Newton step is the Kalman update with B; nonlinear: enough
    steps reach a stationary point of the 3D-Var cost."""
    _, obs, m0, _ = _random_problem(getkey())
    b = jnp.eye(4) + 0.5
    y = jr.normal(getkey(), (3,))
    prior = GaussianBelief(m0, jnp.eye(4))
    out = Var3D(b, scale=2.0).update(prior, obs, y, key=None)
    ref = KalmanFilter().update(GaussianBelief(m0, 2.0 * b), obs, y, key=None)
    assert np.allclose(out.loc, ref.loc, atol=1e-12)
    assert np.allclose(out.covariance_matrix, ref.covariance_matrix, atol=1e-12)
    arctan = Arctan(Subsample(4, jnp.array([0, 2]), noise_std=0.1))
    y = jnp.array([1.2, -0.5])
    out = Var3D(b, iterations=30).update(prior, arctan, y, key=None)
    cost = lambda x: (
        (x - m0) @ jnp.linalg.solve(b, x - m0) + jnp.sum(((y - arctan.apply(x)) / 0.1) ** 2)
    )
    assert jnp.linalg.norm(jax.grad(cost)(out.loc)) < 1e-8


def test_optimal_interpolation_ignores_the_forecast(getkey):
    mean, b = jnp.arange(4.0), jnp.eye(4) + 0.5
    _, obs, _, _ = _random_problem(getkey())
    y = jr.normal(getkey(), (3,))
    oi = OptimalInterpolation(mean, b)
    dyn = LinearDynamics(-jnp.eye(4))
    f = oi.forecast(GaussianBelief(jnp.full(4, 100.0), jnp.eye(4)), dyn, 0.0, 1.0, key=None)
    out = oi.update(f, obs, y, key=None)
    ref = KalmanFilter().update(GaussianBelief(mean, b), obs, y, key=None)
    assert np.allclose(out.loc, ref.loc, atol=1e-12)


def test_baselines_reject_bad_settings():
    with pytest.raises(ValueError, match="hyperprior_weight"):
        EnKFN(-1.0)
    with pytest.raises(ValueError, match="inflation"):
        ExtendedKalmanFilter(0.5)
    with pytest.raises(ValueError, match="covariance"):
        Var3D(jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="negative variances"):
        Var3D(-jnp.eye(3))
    with pytest.raises(ValueError, match="scale"):
        Var3D(jnp.eye(3), scale=0.0)
    with pytest.raises(ValueError, match="covariance"):
        OptimalInterpolation(jnp.zeros(3), jnp.eye(4))
    with pytest.raises(TypeError, match="additive Gaussian noise"):
        ExtendedKalmanFilter().forecast(
            GaussianBelief(jnp.zeros(2), jnp.eye(2)), ax.MODELS["heat2d"].make_dynamics(4),
            0.0, 1.0, key=None,
        )  # fmt: skip


@pytest.mark.parametrize(
    "name, bound",
    # DAPPER `mods.Lorenz63.sakov2012` (N=10): OptInterp 1.25, Var3D 1.04, ExtKF 0.92,
    # EnKF-N 0.54, iEnKS 0.31, each +15 % for a short run of one seed.
    [
        ("oi", 1.25 * 1.15),
        ("var3d", 1.04 * 1.15),
        ("extkf", 0.92 * 1.15),
        ("enkf-n", 0.54 * 1.15),
        ("ienks", 0.31 * 1.15),
    ],  # fmt: skip
)
def test_lorenz63_baselines_reach_dapper_rmse(name, bound):
    setup = ax.MODELS["lorenz63"]
    flt = {name: ax.make_filter(name, setup)}
    ds = ax.twin_experiment(
        setup.make_dynamics(3), ax.make_observation(3, setup.obs_std), flt, key=jr.key(3),
        members=10, cycles=1000, obs_interval=0.25, burn_in=100, **setup.start(3),
    )  # fmt: skip
    rmse = ax.summarise(ds)[name]["rmse_analysis"]
    assert rmse < bound, rmse


@pytest.mark.parametrize(
    "flt",
    [IEnKS(1), IEnKS(4), IEnKS(3, mda=True), IEnKS(2, lag=3)],
    ids=["1", "4", "mda", "lag3"],
)
def test_ienks_is_the_etkf_on_linear_models(flt, getkey):
    """Linear model and observation: the Gauss–Newton iterations stop moving after the
    first, MDA's annealing reaches the same posterior, and running the smoothed ensemble
    to the observation time gives the ETKF's analysis (mean and covariance)."""
    dyn, obs, m0, p0 = _random_problem(getkey())
    dyn = LinearDynamics(dyn.drift)  # deterministic
    ens = _exact_ensemble(getkey(), m0, p0, n=12)
    y = jr.normal(getkey(), (3,))
    key = getkey()
    a = flt.update(flt.forecast(flt.init(ens, key=key), dyn, 0.0, 0.4, key=key), obs, y, key=key)
    etkf = ETKF()
    b = etkf.update(etkf.forecast(ens, dyn, 0.0, 0.4, key=key), obs, y, key=key)
    assert np.allclose(a.mean(), b.mean(), atol=1e-10)
    assert np.allclose(a.ensemble.covariance(), b.covariance(), atol=1e-10)


def test_serial_ensrf_is_kalman_exact_without_localisation(getkey):
    """Uncorrelated linear observations one at a time = the batch update: the Kalman
    update of the ensemble's moments (mean and covariance), as the ETKF."""
    _, _, m0, p0 = _random_problem(getkey())
    ens = _exact_ensemble(getkey(), m0, p0, n=12)
    obs = LinearObservation(jr.normal(getkey(), (3, 4)), noise_std=jnp.array([0.5, 1.0, 0.7]))
    y = jr.normal(getkey(), (3,))
    out = SerialEnSRF().update(ens, obs, y, key=getkey())
    ref = KalmanFilter().update(GaussianBelief(m0, p0), obs, y, key=None)
    assert np.allclose(out.mean(), ref.loc, atol=1e-10)
    assert np.allclose(out.covariance(), ref.covariance_matrix, atol=1e-10)


def test_serial_ensrf_localisation_cuts_distant_influence(getkey):
    """With a radius, a single observation moves only the state within the taper's
    support (2 x 1.82 x radius grid points), and the closer, the more."""
    d = 40
    ens = Ensemble(jr.normal(getkey(), (20, d)))
    obs = Subsample(d, jnp.array([10]), noise_std=0.5)
    out = SerialEnSRF(radius=2.0, periodic=False).update(ens, obs, jnp.array([3.0]), key=getkey())
    moved = jnp.abs(out.members - ens.members).max(axis=0)
    far = jnp.abs(jnp.arange(d, dtype=float) - 10) >= 2 * 1.82 * 2.0
    assert jnp.all(moved[far] < 1e-12) and jnp.all(moved[~far] > 1e-6)
    with pytest.raises(TypeError, match="uncorrelated"):
        dense = Subsample(d, jnp.array([3, 9]), noise_covariance=jnp.eye(2) + 0.1)
        SerialEnSRF(radius=2.0).update(ens, dense, jnp.zeros(2), key=getkey())


def _smoothing_problem(getkey):
    """A deterministic linear model, 5 observation times, an exact-moment ensemble, and
    the joint Gaussian's mean and std of x_i given y_1..y_j, `reference(i, j)`."""
    dyn, obs, m0, p0 = _random_problem(getkey())
    dyn = LinearDynamics(dyn.drift)
    times, d, m = jnp.array([0.2, 0.5, 0.7, 1.1, 1.3]), 4, 3
    k = times.shape[0]
    ys = jr.normal(getkey(), (k, m))
    mats, t_prev, prev = [], 0.0, np.eye(d)
    for t in times:
        prev = np.asarray(dyn.transition(t_prev, t)[0]) @ prev  # x_k = M_k x_0
        mats.append(prev)
        t_prev = t
    x_mean = np.concatenate([a @ m0 for a in mats])
    x_cov = np.block([[a @ p0 @ b.T for b in mats] for a in mats])
    g = np.kron(np.eye(k), np.asarray(obs.matrix()))
    r = np.kron(np.eye(k), np.asarray(obs.noise.dense()))

    def reference(i, j):
        seen = slice(0, m * j)
        gs = g[seen]
        gain = x_cov @ gs.T @ np.linalg.inv(gs @ x_cov @ gs.T + r[seen, seen])
        mean = x_mean + gain @ (np.asarray(ys).ravel()[seen] - gs @ x_mean)
        var = np.diag(x_cov - gain @ gs @ x_cov)
        block = slice(i * d, (i + 1) * d)
        return mean[block], np.sqrt(var[block])

    series = ax.ObservationSeries(obs, times, ys)
    return dyn, series, _exact_ensemble(getkey(), m0, p0, n=12), reference


@pytest.mark.parametrize("smoother", ["enks", "ienks"])
def test_enks_is_the_fixed_lag_kalman_smoother(smoother, getkey):
    """EnKS(ETKF), and the iEnKS of a window of `lag` cycles on a linear model: the
    estimate of time i is x_i given y_1..y_min(i+lag, K)."""
    dyn, series, ens, reference = _smoothing_problem(getkey)
    lag, k = 2, len(series)
    flt = EnKS(ETKF(), lag) if smoother == "enks" else IEnKS(2, lag=lag)
    sol = ax.assimilate(flt, dyn, series, flt.init(ens, key=getkey()), key=getkey())
    for i in range(k):
        mean, std = reference(i, min(i + 1 + lag, k))
        assert np.allclose(sol.smoothed_mean[i], mean, atol=1e-9), i
        assert np.allclose(sol.smoothed_std[i], std, atol=1e-9), i
    with pytest.raises(ValueError, match="lag"):
        IEnKS(lag=0)
    with pytest.raises(TypeError, match="global filter"):
        EnKS(ax.filters.LETKF(radius=2.0))
    with pytest.raises(ValueError, match="lag"):
        EnKS(ETKF(), 0)


def test_rts_smoother_is_the_kalman_rts_smoother(getkey):
    """The ensemble RTS pass over the ETKF's saved ensembles: x_i given all of y."""
    dyn, series, ens, reference = _smoothing_problem(getkey)
    etkf = ETKF()
    sol = ax.assimilate(etkf, dyn, series, ens, key=getkey(), save_ensembles=True)
    smoothed = ax.filters.rts_smoother(sol.forecast_ensembles, sol.ensembles, decorrelation=1.0)
    for i in range(len(series)):
        mean, std = reference(i, len(series))
        assert np.allclose(smoothed[i].mean(0), mean, atol=1e-9), i
        assert np.allclose(smoothed[i].std(0, ddof=1), std, atol=1e-9), i
    with pytest.raises(ValueError, match="same shape"):
        ax.filters.rts_smoother(sol.forecast_ensembles[1:], sol.ensembles)


@pytest.mark.slow
def test_enks_in_twin_datasets():
    setup = ax.MODELS["lorenz96"]
    flt = {"etkf": ETKF(1.02), "enks": EnKS(ETKF(1.02), 3)}
    ds = ax.twin_experiment(
        setup.make_dynamics(12), ax.make_observation(12, 1.0), flt, key=jr.key(0), members=10,
        cycles=200, obs_interval=0.05, burn_in=20, **setup.start(12),
    )  # fmt: skip
    rows = ax.summarise(ds)
    assert np.isnan(rows["etkf"]["rmse_smoothed"])
    assert np.isclose(rows["enks"]["rmse_analysis"], rows["etkf"]["rmse_analysis"], rtol=1e-10)
    assert rows["enks"]["rmse_smoothed"] < 0.9 * rows["enks"]["rmse_analysis"]
    assert ds["smoothed_mean"].dims == ("filter", "time", "x")


def test_adaptive_inflation_is_the_enkf_n_around_any_filter(getkey):
    """`AdaptiveInflation(ETKF())` is the EnKF-N member for member; around a serial
    EnSRF it is that filter on the inflated forecast."""
    _, obs, m0, p0 = _random_problem(getkey())
    ens = _exact_ensemble(getkey(), m0, 2.0 * p0, n=8)
    y = 3.0 + jr.normal(getkey(), (3,))
    key = getkey()
    a = AdaptiveInflation(ETKF(), 2.0).update(ens, obs, y, key=key)
    b = EnKFN(2.0).update(ens, obs, y, key=key)
    assert np.allclose(a.members, b.members, atol=1e-12)
    terms = ax.filters.innovation_terms(ens, obs, y, None)
    lam = EnKFN(2.0).estimated_inflation(terms.obs_anomalies, terms.innovation)
    inflated = Ensemble(terms.mean[None] + lam * terms.anomalies)
    c = AdaptiveInflation(SerialEnSRF(), 2.0).update(ens, obs, y, key=key)
    assert np.allclose(c.members, SerialEnSRF().update(inflated, obs, y, key=key).members)
    with pytest.raises(TypeError, match="filter"):
        AdaptiveInflation(KalmanFilter())
