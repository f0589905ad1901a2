"""The ensemble score filter: the mixture score, the linear-Gaussian sanity check, errors."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import assimilax as ax
from assimilax.filters import EnsembleScoreFilter, KalmanFilter, mixture_score
from assimilax.observations import Subsample


def test_mixture_score_is_the_gradient_of_the_mixture_log_density(getkey):
    members = jr.normal(getkey(), (7, 5))
    x = 2 * jr.normal(getkey(), (4, 5))
    alpha, sigma2 = 0.7, 0.3

    def log_density(z):
        sq = jnp.sum((z[None] - alpha * members) ** 2, axis=1)
        return jax.nn.logsumexp(-sq / (2 * sigma2))

    expected = jax.vmap(jax.grad(log_density))(x)
    assert np.allclose(mixture_score(x, members, alpha, sigma2), expected, atol=1e-10)


def test_linear_gaussian_analysis_approaches_kalman():
    """Gaussian prior ensemble (N=1000), one component observed with noise 0.5, K=100:
    the analysis mean is within 0.2 of the Kalman mean (the update moves it by 0.8) and
    the covariance within 0.15, for three seeds.

    Measured: mean errors 0.12-0.15, covariance errors 0.07-0.12 (N=1000, K=100), and
    the same at N=4000, K=200; 0.16-0.20 at N=250, K=50. The floor (~15 % of the
    update: the observed component overshoots the Kalman mean, 1.45 against 1.30) is the
    bias of the damped likelihood score h(t) = 1 - t evaluated at x_t; it does not
    shrink with N or K.
    """
    p = jnp.array([[1.0, 0.6], [0.6, 0.8]])
    m0 = jnp.array([0.5, -0.3])
    obs = Subsample(2, jnp.array([0]), noise_std=0.5)
    y = jnp.array([1.5])
    kf = KalmanFilter().update(ax.GaussianBelief(m0, p), obs, y, key=jr.key(0))
    for seed in range(3):
        x = m0[None] + jr.normal(jr.key(seed), (1000, 2)) @ jnp.linalg.cholesky(p).T
        a = EnsembleScoreFilter(steps=100).update(ax.Ensemble(x), obs, y, key=jr.key(10 + seed))
        assert np.max(np.abs(a.mean() - kf.loc)) < 0.2
        assert np.max(np.abs(a.covariance() - kf.covariance_matrix)) < 0.15
        # the observed component moved from 0.5 to about the Kalman 1.3
        assert 1.1 < float(a.mean()[0]) < 1.5


@pytest.mark.parametrize(
    "flt",
    [EnsembleScoreFilter(steps=10, minibatch=5), EnsembleScoreFilter(steps=10, paired=True)],
    ids=["minibatch", "paired"],
)
def test_variants_run_and_keep_shapes(flt, getkey):
    x = jr.normal(getkey(), (12, 3, 4))
    obs = Subsample((3, 4), jnp.array([0, 5, 11]), noise_std=0.3)
    a = jax.jit(lambda e, k: flt.update(e, obs, jnp.ones(3), key=k))(ax.Ensemble(x), getkey())
    assert a.members.shape == x.shape and np.all(np.isfinite(a.members))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: EnsembleScoreFilter(steps=1), "steps"),
        (lambda: EnsembleScoreFilter(minibatch=0), "minibatch"),
        (lambda: EnsembleScoreFilter(likelihood_scale=-1.0), "likelihood_scale"),
    ],
)
def test_bad_settings(make, match):
    with pytest.raises(ValueError, match=match):
        make()
    with pytest.raises(TypeError, match="sde"):
        EnsembleScoreFilter(sde="vp")


def _lorenz96_twin(*names):
    """Lorenz-96 d=40, all observed (unit noise) every 0.05, N=20, 1000 cycles, the
    filters `names` with their stored defaults, seed 0."""
    setup = ax.MODELS["lorenz96"]
    return ax.twin_experiment(
        setup.make_dynamics(40),
        ax.make_observation(40, 1.0),
        {n: ax.make_filter(n, "lorenz96") for n in names},
        key=jr.key(0),
        members=20,
        cycles=1000,
        obs_interval=0.05,
        burn_in=100,
        x0=setup.initial_state(40),
        spinup_time=setup.spinup_time,
    )


@pytest.mark.slow
def test_lorenz96_ensf_tracks_for_1000_cycles_next_to_etkf():
    """Lorenz-96 d=40, all observed (unit noise) every 0.05, N=20, 1000 cycles: with
    the tuned defaults (likelihood_scale 10, t_min 0.01) the EnSF keeps track (measured
    RMSE 0.41 against ETKF's 0.19 in the same run; climatology ~3.6). Its spread
    collapses (0.06): the mixture prior pins samples to members as t -> 0.
    """
    ds = _lorenz96_twin("etkf", "ensf")
    s = ax.summarise(ds)
    assert not s["ensf"]["failed"] and not s["etkf"]["failed"]
    assert s["etkf"]["rmse_analysis"] < 0.21
    assert s["ensf"]["rmse_analysis"] < 0.6, s["ensf"]
    # never lost: the worst analysis after burn-in stays far below climatology
    assert float(ds["rmse_analysis"].sel(filter="ensf")[100:].max()) < 2.0


def _exact_score_filter(**options):
    from assimilax.diffusion import VPSDE
    from assimilax.filters import ScoreFilter

    from .helpers import StandardNormalNoise

    # The exact prior of N(8, 1) data in standardised coordinates, trainable scale w.
    return ScoreFilter(StandardNormalNoise(jnp.ones(())), VPSDE(), jnp.full(4, 8.0), 1.0, **options)


def test_score_filter_with_the_exact_prior_approaches_kalman():
    """Prior N(8, I) (400 members), components 0 and 2 observed with noise 0.5: with the
    exact prior score the analysis matches the Kalman filter (mean 8 + 0.8 (y - 8),
    std 0.447 observed; unchanged elsewhere) up to the guidance's own bias. Measured over
    3 seeds: SDA means 0.07-0.13 short of the Kalman means, stds 0.47-0.52 (a little
    wide); damped guidance means 0.06-0.11 beyond them, stds 0.34-0.37 (too narrow).
    """
    from assimilax.diffusion import VPSDE
    from assimilax.filters import ScoreFilter

    x = 8 + jr.normal(jr.key(0), (400, 4))
    obs = Subsample(4, jnp.array([0, 2]), noise_std=0.5)
    y = jnp.array([9.0, 7.0])
    kf_mean = 8 + 0.8 * (y - 8)
    seen, unseen = jnp.array([0, 2]), jnp.array([1, 3])
    for guidance, (lo, hi) in (("sda", (0.4, 0.56)), ("damped", (0.3, 0.42))):
        flt = _exact_score_filter(finetune_steps=0, guidance=guidance)
        a = flt.update(ax.Ensemble(x), obs, y, key=jr.key(1))
        mean, std = a.mean(), jnp.sqrt(a.variance())
        assert np.allclose(mean[seen], kf_mean, atol=0.17), (guidance, mean)
        assert np.all((lo < std[seen]) & (std[seen] < hi)), (guidance, std)
        assert np.allclose(mean[unseen], 8.0, atol=0.15), (guidance, mean)
        assert np.allclose(std[unseen], 1.0, atol=0.12), (guidance, std)
    with pytest.raises(ValueError, match="guidance"):
        ScoreFilter(None, VPSDE(), 0.0, 1.0, guidance="magic")


def test_score_filter_carries_and_fine_tunes_its_weights():
    """`init` puts the network's weights in the belief, `forecast` keeps them, `update`
    fine-tunes them on the forecast ensemble (warm start) and returns them."""
    from assimilax.dynamics import Lorenz96
    from assimilax.filters import ScoreEnsemble

    flt = _exact_score_filter(finetune_steps=5, batch_size=16, steps=50)
    x = 8 + 2 * jr.normal(jr.key(0), (30, 4))  # the data are wider than the prior: w moves
    belief = flt.init(ax.Ensemble(x), key=jr.key(1))
    assert isinstance(belief, ScoreEnsemble) and float(belief.params.w) == 1.0
    belief = flt.forecast(belief, Lorenz96(4), 0.0, 0.01, key=jr.key(2))
    assert isinstance(belief, ScoreEnsemble) and float(belief.params.w) == 1.0
    obs = Subsample(4, jnp.array([0]), noise_std=1.0)
    after = flt.update(belief, obs, jnp.array([8.0]), key=jr.key(3))
    assert isinstance(after, ScoreEnsemble) and float(after.params.w) != 1.0
    # the next update starts from the tuned weights, not from the filter's own
    frozen = _exact_score_filter(finetune_steps=0, steps=50)
    again = frozen.update(after, obs, jnp.array([8.0]), key=jr.key(4))
    assert float(again.params.w) == float(after.params.w)


@pytest.mark.slow
def test_lorenz96_score_filter_tracks_for_1000_cycles():
    """Lorenz-96 d=40, all observed (unit noise), N=20, 1000 cycles, CLI defaults
    (network pre-trained on 4000 climatological states, SDA guidance, 20 fine-tuning
    steps per cycle): measured RMSE 0.51 (ETKF 0.19, EnSF 0.41 in the same run),
    spread 0.42, 90 % coverage 0.84."""
    ds = _lorenz96_twin("sf")
    s = ax.summarise(ds)["sf"]
    assert not s["failed"] and s["rmse_analysis"] < 0.7, s
    assert float(ds["rmse_analysis"].sel(filter="sf")[100:].max()) < 2.0


@pytest.mark.slow
def test_kuramoto_sivashinsky_score_filters_and_letkf():
    """KS (L=32π, 128 points), every 4th point observed with noise 0.3 every 1.0, N=20,
    200 cycles, CLI defaults: measured LETKF (radius 16) 0.077, EnSF 0.29, SF (Gaussian
    residual prior, SDA) 0.37, bootstrap PF 1.82 (lost; climatology ~1.3). The SF with
    a bare MLP prior failed (NaN) here; the residual form must keep it finite and
    tracking, and the filters must rank as measured."""
    setup = ax.MODELS["ks"]
    filters = {n: ax.make_filter(n, "ks") for n in ("ensf", "sf")}
    filters["letkf"] = ax.make_filter("letkf", "ks", radius=16.0)
    ds = ax.twin_experiment(
        setup.make_dynamics(128),
        ax.make_observation(128, 0.3, "every:4"),
        filters,
        key=jr.key(0),
        members=20,
        cycles=200,
        obs_interval=1.0,
        burn_in=50,
        **setup.start(128),
    )
    s = ax.summarise(ds)
    assert not any(row["failed"] for row in s.values()), s
    assert s["letkf"]["rmse_analysis"] < 0.12
    assert s["ensf"]["rmse_analysis"] < 0.45
    assert s["sf"]["rmse_analysis"] < 0.6
    for row in s.values():
        assert np.isfinite(row["spectral_error_analysis"])
