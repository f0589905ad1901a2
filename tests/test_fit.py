"""Likelihoods and maximum-likelihood fits (issue 29) against statsmodels' numbers on its
bundled real series: the Nile (local level, with missing years) and Mauna Loa CO2
(local linear trend, with its own gaps); the particle filter's likelihood estimate is
unbiased; the ensemble filters' Gaussian approximation tends to the exact one."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import assimilax as ax
from assimilax import Ensemble, GaussianBelief, ObservationSeries
from assimilax.dynamics import DiscreteLinearDynamics
from assimilax.filters import ETKF, BootstrapFilter, KalmanFilter, SerialEnSRF, log_evidence
from assimilax.observations import LinearObservation


sm = pytest.importorskip("statsmodels.api")
P0 = 1e7  # a large initial variance, the same on both sides (statsmodels: known init)


def _nile():
    y = sm.datasets.nile.load_pandas().data["volume"].to_numpy(float).copy()
    y[[20, 21, 22, 40, 41, 60, 61, 62, 63, 80]] = np.nan  # ten missing years
    return y


def _series(obs, y):
    mask = ~np.isnan(y)
    values = np.nan_to_num(y).reshape(len(y), -1)
    times = jnp.arange(1.0, len(y) + 1)
    return ObservationSeries(
        obs, times, jnp.asarray(values), jnp.asarray(mask).reshape(values.shape)
    )


def _local_level(y):
    """`build` of the local level model; the prior at t=0 is N(0, P0 - level_var), so
    the predicted state at the first observation is N(0, P0) as statsmodels' known
    initialisation."""

    def build(obs_var, level_var):
        dyn = DiscreteLinearDynamics(jnp.eye(1), level_var * jnp.eye(1))
        obs = LinearObservation(jnp.eye(1), noise_std=jnp.sqrt(obs_var))
        prior = GaussianBelief(jnp.zeros(1), (P0 - level_var) * jnp.eye(1))
        return KalmanFilter(), dyn, _series(obs, y), prior

    return build


def _statsmodels(y, spec, k_states):
    mod = sm.tsa.UnobservedComponents(y, spec)
    mod.ssm.initialize_known(np.zeros(k_states), P0 * np.eye(k_states))
    mod.loglikelihood_burn = 0
    return mod


def test_nile_log_likelihood_and_fit_match_statsmodels():
    """The Kalman filter's log-likelihood at Durbin & Koopman's variances equals
    statsmodels' to 1e-8 (relative); the maximum-likelihood variances are within 0.5 %
    of statsmodels' fit, at a log-likelihood at least as high, and the standard errors
    (observed information) within 5 % of statsmodels' numerical-Hessian ones."""
    y = _nile()
    build = _local_level(y)
    mod = _statsmodels(y, "llevel", 1)
    ll = ax.log_likelihood(*build(15099.0, 1469.1), key=jr.key(0))
    assert abs(float(ll) / mod.loglike(np.array([15099.0, 1469.1])) - 1) < 1e-8
    result = ax.fit(build, {"obs_var": 1e4, "level_var": 1e3}, key=jr.key(0))
    ref = mod.fit(disp=False, cov_type="approx")
    assert result.converged, result.message
    ours = np.array([result.params["obs_var"], result.params["level_var"]])
    assert np.allclose(ours, ref.params, rtol=5e-3)
    assert result.log_likelihood >= ref.llf - 1e-6
    errors = np.array([result.std_errors["obs_var"], result.std_errors["level_var"]])
    assert np.allclose(errors, ref.bse, rtol=0.05)
    assert result.derivatives == "exact"  # the Kalman likelihood is smooth: no fallback
    # Smoothed derivatives (what rough ensemble likelihoods get) reach the same maximum.
    smooth = ax.fit(
        build, {"obs_var": 1e4, "level_var": 1e3}, key=jr.key(0), derivatives="smoothed"
    )
    assert smooth.converged and smooth.derivatives == "smoothed", smooth.message
    ours = np.array([smooth.params["obs_var"], smooth.params["level_var"]])
    assert np.allclose(ours, ref.params, rtol=5e-3)
    errors = np.array([smooth.std_errors["obs_var"], smooth.std_errors["level_var"]])
    assert np.allclose(errors, ref.bse, rtol=0.05)


def test_nile_em_climbs_to_the_statsmodels_maximum():
    """EM (Shumway & Stoffer) on the Nile local level from a poor start: every iteration
    raises the log-likelihood, and the variances end within 0.5 % of statsmodels' MLE
    (its log-likelihood within 1e-6 relative)."""
    y = _nile()
    mod = _statsmodels(y, "llevel", 1)
    ref = mod.fit(disp=False)
    build = _local_level(y)
    _, dynamics, series, prior = build(1e4, 1e3)
    # The prior at the first record's time minus one step, as `build` puts it.
    result = ax.fit_em(dynamics, series, prior, max_iterations=3000, tolerance=1e-12)
    # Its E-step's likelihood is the Kalman filter's (same model, same prior).
    first = float(ax.log_likelihood(*build(1e4, 1e3), key=jr.key(0)))
    assert abs(result.history[0] / first - 1) < 1e-12
    assert np.all(np.diff(result.history) >= -1e-9 * np.abs(result.history[1:]))
    ours = np.array([result.obs_variance[0], result.noise_covariance[0, 0]])
    assert np.allclose(ours, ref.params, rtol=5e-3), (ours, ref.params, result.iterations)
    assert abs(result.history[-1] / ref.llf - 1) < 1e-6


def test_co2_local_linear_trend_matches_statsmodels():
    """Weekly Mauna Loa CO2 (first 300 weeks, statsmodels' copy, its own missing weeks):
    the local linear trend's log-likelihood at given variances equals statsmodels' to
    1e-8 and the three maximum-likelihood variances agree within 0.5 %."""
    y = sm.datasets.co2.load_pandas().data["co2"].to_numpy(float)[:300].copy()
    assert np.isnan(y).sum() > 0

    def build(irregular, level, trend):
        dyn = DiscreteLinearDynamics(
            jnp.array([[1.0, 1.0], [0.0, 1.0]]), jnp.diag(jnp.stack([level, trend]))
        )
        obs = LinearObservation(jnp.array([[1.0, 0.0]]), noise_std=jnp.sqrt(irregular))
        q = jnp.diag(jnp.stack([level, trend]))
        prior = GaussianBelief(jnp.zeros(2), P0 * jnp.eye(2) - _lagged(q))
        return KalmanFilter(), dyn, _series(obs, y), prior

    mod = _statsmodels(y, "lltrend", 2)
    params = np.array([0.1, 0.05, 1e-4])
    # The prior at t=0 whose forecast is N(0, P0 I): solve F P F^T + Q = P0 I for P.
    ll = ax.log_likelihood(*build(*map(jnp.asarray, params)), key=jr.key(0))
    assert abs(float(ll) / mod.loglike(params) - 1) < 1e-8
    ref = mod.fit(disp=False, cov_type="approx", maxiter=500)
    result = ax.fit(
        build,
        dict(zip(("irregular", "level", "trend"), ref.params * 1.3, strict=True)),
        key=jr.key(0),
    )
    ours = np.array([result.params[k] for k in ("irregular", "level", "trend")])
    assert np.allclose(ours, ref.params, rtol=5e-3), (ours, ref.params)
    assert result.log_likelihood >= ref.llf - 1e-6


def _lagged(q):
    """`P` with `F P F^T + Q = P0 I` for the trend model's `F` (so the forecast at the first
    observation is N(0, P0 I), statsmodels' known initialisation)."""
    f_inv = jnp.array([[1.0, -1.0], [0.0, 1.0]])
    target = P0 * jnp.eye(2) - q
    return P0 * jnp.eye(2) - f_inv @ target @ f_inv.T


def _linear_problem(key, cycles=10):
    """A 2-D linear-Gaussian model, one noisy observation per cycle."""
    dyn = DiscreteLinearDynamics(jnp.array([[0.9, 0.2], [-0.1, 0.8]]), 0.3 * jnp.eye(2))
    obs = LinearObservation(jnp.array([[1.0, 0.5]]), noise_std=0.7)
    times = jnp.arange(1.0, cycles + 1)
    _, series = ax.simulate(dyn, obs, jnp.zeros(2), times, key=key)
    return dyn, series


def test_particle_filter_likelihood_is_unbiased():
    """Bootstrap PF with 64 particles, 10 cycles, 200 seeds: the mean of
    exp(loglik_PF - loglik_KF) is within two standard errors of 1; the ensemble
    (Gaussian) approximation of an EnKF tends to the exact value with many members."""
    dyn, series = _linear_problem(jr.key(0))
    exact = ax.log_likelihood(
        KalmanFilter(), dyn, series, GaussianBelief(jnp.zeros(2), jnp.eye(2)), key=jr.key(0)
    )

    def pf(key):
        k1, k2 = jr.split(key)
        ens = Ensemble(jr.normal(k1, (64, 2)))
        return ax.log_likelihood(BootstrapFilter(threshold=0.5), dyn, series, ens, key=k2)

    ratios = np.exp(np.asarray(jax.vmap(pf)(jr.split(jr.key(1), 200))) - float(exact))
    se = ratios.std(ddof=1) / np.sqrt(ratios.size)
    assert abs(ratios.mean() - 1) < 2 * se and se < 0.1, (ratios.mean(), se)
    big = Ensemble(jr.normal(jr.key(2), (20_000, 2)))  # serial: O(n) per cycle here
    ll = ax.log_likelihood(SerialEnSRF(), dyn, series, big, key=jr.key(3))
    assert abs(float(ll) - float(exact)) < 0.05


def test_evidence_is_the_gaussian_density_with_missing_values():
    """One cycle, dense R, one value missing: the ensemble and Gaussian forms equal the
    density of the observed values under N(mean h, cov h + R) computed directly."""
    key1, key2 = jr.split(jr.key(5))
    members = jr.normal(key1, (30, 4)) + jnp.arange(4.0)[None]
    h = jr.normal(key2, (3, 4))
    r = 0.5 * jnp.eye(3) + 0.1
    obs = LinearObservation(h, noise_covariance=r)
    y, mask = jnp.array([1.0, 0.0, -2.0]), jnp.array([True, False, True])
    ens = Ensemble(members)
    keep = np.array([0, 2])
    s = np.asarray(h @ ens.covariance() @ h.T + r)[np.ix_(keep, keep)]
    mean = np.asarray(h @ ens.mean())[keep]
    from scipy import stats

    direct = stats.multivariate_normal(mean, s).logpdf(np.asarray(y)[keep])
    for belief, flt in (
        (ens, ETKF()),
        (GaussianBelief(ens.mean(), ens.covariance()), KalmanFilter()),
    ):
        assert np.isclose(float(log_evidence(flt, belief, obs, y, mask)), direct, rtol=1e-10)


def test_fit_rejects_bad_input():
    build = _local_level(_nile())
    with pytest.raises(ValueError, match="initial\\['obs_var'\\] must be finite"):
        ax.fit(build, {"obs_var": np.nan, "level_var": 1.0}, key=jr.key(0))
    with pytest.raises(ValueError, match="at least one"):
        ax.fit(build, {}, key=jr.key(0))
    with pytest.raises(ValueError, match="`positive` parameter 'x'"):
        ax.fit(build, {"obs_var": 1.0, "level_var": 1.0}, key=jr.key(0), positive=("x",))


@pytest.mark.slow
def test_cli_fit_recovers_the_sensor_files_error_std(tmp_path, capsys):
    """`make-sensors` (per-sensor stds U(0.75, 1.25) x 1), then `assimilate --obs-std 2
    --fit obs_std`: the estimate within 5 % of the stds' RMS (the issue's check; 1.024
    against 1.052 when written)."""
    from assimilax.cli import main

    sensors, out = tmp_path / "s.nc", tmp_path / "a.nc"
    argv = ["make-sensors", "--dim", "12", "--cycles", "300", "--missing", "0", "--out"]
    assert main([*argv, str(sensors)]) == 0
    std = ax.read_netcdf(sensors)["observations_std"].values[0]
    argv = ["assimilate", "--dim", "12", "--obs", str(sensors), "--obs-std", "2", "--fit",
            "obs_std", "--tune-cycles", "300", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) in (0, 1)
    err = capsys.readouterr().err
    fitted = ax.read_netcdf(out).attrs["fit_obs_std"]
    assert abs(fitted / np.sqrt(np.mean(std**2)) - 1) < 0.05, err
    assert ax.read_netcdf(out).attrs["fit_converged"] == 1, err


@pytest.mark.slow
def test_lorenz96_model_error_std_is_recovered():
    """Lorenz-96 (d = 40, every 2nd site every 0.1, R = I) whose truth has model noise
    of std 0.5 per unit time, 500 cycles, LETKF N = 20: the fit of the filter's model
    noise from 0.2 ends within 10 % of 0.5 (0.514 when written), converged. The
    LETKF's pathwise gradient is rough here, so the fit takes the smoothed route."""
    import equinox as eqx

    from assimilax._fit import fit_named
    from assimilax.experiments import get_model, make_filter, make_observation
    from assimilax.experiments._twin import twin_inputs

    setup = get_model("lorenz96")
    dyn = setup.make_dynamics(40)
    noisy = lambda d, q: eqx.tree_at(  # noqa: E731
        lambda m: m.noise_std, d, jnp.asarray(q), is_leaf=lambda x: x is None
    )
    obs = make_observation(40, 1.0, observe="every:2")
    _, series, members0, key = twin_inputs(
        noisy(dyn, 0.5), obs, key=jr.key(0), members=20, cycles=500, obs_interval=0.1,
        truth_dynamics=None, **setup.start(40),
    )  # fmt: skip
    flt = make_filter("letkf", setup, dim=40)
    result = fit_named(
        ["model_noise"], flt, noisy(dyn, 0.2), series, flt.init(members0, key=key), key=key,
        t0=series.times[0] - 0.1, burn_in=50,
    )  # fmt: skip
    assert result.converged and result.derivatives == "smoothed", result.message
    assert abs(result.params["model_noise"] / 0.5 - 1) < 0.1


def _lorenz_twin(model, dim, observe, members, cycles, interval, name, wrong):
    import equinox as eqx

    from assimilax.experiments import get_model, make_observation
    from assimilax.experiments._twin import twin_inputs

    setup = get_model(model)
    dyn = setup.make_dynamics(dim)
    truth, series, members0, key = twin_inputs(
        dyn, make_observation(dim, 1.0, observe=observe), key=jr.key(0), members=members,
        cycles=cycles, obs_interval=interval, truth_dynamics=None, **setup.start(dim),
    )  # fmt: skip
    wrong = eqx.tree_at(lambda m: getattr(m, name), dyn, jnp.asarray(wrong))
    return wrong, series, members0, key, series.times[0] - interval


def test_state_augmentation_recovers_lorenz63_rho():
    """Lorenz-63 observed in full every 0.05 (R = I), 500 cycles, ETKF N = 20 on the
    state augmented with rho, members' rho drawn from N(24, 2^2) where the truth has
    28: the estimate (mean over the last 250 analyses) is within 0.5 % of 28 (28.02
    measured) and the members agree on it (spread below 0.5, from 2)."""
    wrong, series, members0, key, t0 = _lorenz_twin(
        "lorenz63", 3, "all", 20, 500, 0.05, "rho", 24.0
    )
    result = ax.estimate_by_augmentation(
        ETKF(1.02), wrong, series, members0, ["rho"], 2.0, key=key, t0=t0, burn_in=250
    )
    assert abs(result.params["rho"] / 28 - 1) < 0.005, result.params
    assert result.spread["rho"] < 0.5
    assert result.trajectory["rho"].shape == (500,)


def test_state_augmentation_rejects_bad_input():
    from assimilax._augment import AugmentedDynamics
    from assimilax.dynamics import Lorenz63

    with pytest.raises(ValueError, match="names.*'gamma'"):
        AugmentedDynamics(Lorenz63(), ["gamma"])
    with pytest.raises(ValueError, match="drift_std"):
        AugmentedDynamics(Lorenz63(), ["rho"], drift_std=-1.0)
    wrong, series, members0, key, t0 = _lorenz_twin("lorenz63", 3, "all", 5, 10, 0.05, "rho", 24.0)
    with pytest.raises(ValueError, match="prior_std"):
        ax.estimate_by_augmentation(ETKF(), wrong, series, members0, ["rho"], 0.0, key=key, t0=t0)
    with pytest.raises(ValueError, match="burn_in"):
        ax.estimate_by_augmentation(
            ETKF(), wrong, series, members0, ["rho"], 1.0, key=key, t0=t0, burn_in=10
        )


@pytest.mark.slow
def test_state_augmentation_recovers_lorenz96_forcing():
    """Lorenz-96 (d = 40, every 2nd site every 0.1, R = I, 1000 cycles; the setting of
    the gradient fit above), ETKF N = 40 (inflation 1.05) on the state augmented with
    F, members' F from N(7, 1): within 2 % of 8 (8.023 measured; the gradient MLE with
    the LETKF N = 20 reached 8.002 on this truth)."""
    wrong, series, members0, key, t0 = _lorenz_twin(
        "lorenz96", 40, "every:2", 40, 1000, 0.1, "forcing", 7.0
    )
    result = ax.estimate_by_augmentation(
        ETKF(1.05), wrong, series, members0, ["forcing"], 1.0, key=key, t0=t0, burn_in=200
    )
    assert abs(result.params["forcing"] / 8 - 1) < 0.02, result.params
