"""The conformance matrix: every (filter, problem) pair runs through `assimilate` and
`assimilate_stream` with the same properties. Adding a filter is adding one line to
`CASES`."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import assimilax as ax
from assimilax.diffusion import VPSDE
from assimilax.dynamics import LinearDynamics, Lorenz96
from assimilax.filters import (
    ETKF,
    LETKF,
    RTPS,
    AdaptiveInflation,
    BootstrapFilter,
    DEnKF,
    EnKFN,
    EnKS,
    EnsembleScoreFilter,
    ExtendedKalmanFilter,
    HybridScoreFilter,
    IEnKS,
    KalmanFilter,
    LearnedPriorFilter,
    LocalParticleFilter,
    NormalScoreEnKF,
    OptimalInterpolation,
    OptimalProposalFilter,
    RankHistogramFilter,
    ScoreFilter,
    SerialEnSRF,
    StochasticEnKF,
    Var3D,
)
from assimilax.observations import Arctan, LinearObservation, Subsample

from .helpers import StandardNormalNoise, tree_allclose


K = 6  # cycles


def linear_problem(key):
    """d=4 linear SDE, 3 linear observations with a dense R, one value missing."""
    k1, k2, k3 = jr.split(key, 3)
    a = jr.normal(k1, (4, 4)) / 4 - 0.5 * jnp.eye(4)
    dyn = LinearDynamics(a, 0.1 * jnp.eye(4))
    r = 0.3 * jnp.eye(3) + 0.05
    obs = LinearObservation(jr.normal(k2, (3, 4)), noise_covariance=r, locations=jnp.arange(3.0))
    return dyn, obs, jnp.zeros(4), 64, k3


def lorenz96_arctan(key):
    """Lorenz-96 d=8, arctan of every 2nd variable (nonlinear, sparse)."""
    return Lorenz96(8), Arctan(Subsample.every(8, 2, noise_std=0.2)), jnp.full(8, 8.0), 16, key


PROBLEMS = {"linear": linear_problem, "l96-arctan": lorenz96_arctan}
_score_filter, _score_filter_smc = (
    ScoreFilter(
        StandardNormalNoise(jnp.ones(())),
        VPSDE(),
        jnp.full(8, 8.0),
        1.0,
        steps=10,
        finetune_steps=1,
        batch_size=8,
        sampler=sampler,
    )
    for sampler in ("reverse-sde", "smc")
)


# (name, filter, the problems it applies to)
def _exact_learned(**settings):
    return LearnedPriorFilter(
        StandardNormalNoise(jnp.ones(())), VPSDE(), 1.0, 0.0, 1.0, steps=20, conditioned=False,
        ridge=0.0, **settings,
    )  # fmt: skip


CASES = [
    ("kalman", KalmanFilter(), ["linear"]),
    ("etkf", ETKF(inflation=1.02), ["linear", "l96-arctan"]),
    ("enkf", StochasticEnKF(inflation=1.02), ["linear", "l96-arctan"]),
    ("letkf", LETKF(radius=2.0, inflation=RTPS(0.5)), ["linear", "l96-arctan"]),
    ("bootstrap", BootstrapFilter(threshold=0.5, regularisation=1.0), ["linear", "l96-arctan"]),
    ("optimal-proposal", OptimalProposalFilter(), ["linear"]),
    # 10 pseudo-time steps blow up on the linear problem (stiff likelihood): 100.
    ("ensf", EnsembleScoreFilter(steps=100), ["linear", "l96-arctan"]),
    (
        "ensf-smc",
        EnsembleScoreFilter(steps=10, sampler="smc", standardise=True, t_min=0.1),
        ["linear", "l96-arctan"],
    ),
    ("hybrid", HybridScoreFilter(1.0), ["linear", "l96-arctan"]),
    (
        "hybrid-local",
        HybridScoreFilter(radius=2.0, linearise="kernel", inflation=1.02),
        ["linear", "l96-arctan"],
    ),
    ("sf", _score_filter, ["l96-arctan"]),
    ("enkf-n", EnKFN(rotate=True), ["linear", "l96-arctan"]),
    ("denkf", DEnKF(inflation=1.01), ["linear", "l96-arctan"]),
    ("extkf", ExtendedKalmanFilter(2.0), ["linear", "l96-arctan"]),
    ("ienks", IEnKS(3, inflation=1.02), ["linear", "l96-arctan"]),
    ("serial", SerialEnSRF(), ["linear"]),
    ("enks", EnKS(ETKF(1.02), 2), ["linear", "l96-arctan"]),
    ("adaptive-letkf", AdaptiveInflation(LETKF(radius=2.0), 2.0), ["linear", "l96-arctan"]),
    ("serial-local", SerialEnSRF(1.02, radius=2.0), ["l96-arctan"]),
    # Static backgrounds: not Kalman-exact, so not on the linear problem.
    ("var3d", Var3D(4.0 * jnp.eye(8), 0.5), ["l96-arctan"]),
    ("oi", OptimalInterpolation(jnp.full(8, 2.0), 12.0 * jnp.eye(8)), ["l96-arctan"]),
    ("sf-smc", _score_filter_smc, ["l96-arctan"]),
    ("rhf", RankHistogramFilter(), ["linear"]),
    ("rhf-local", RankHistogramFilter(1.02, radius=2.0), ["l96-arctan"]),
    ("ns-enkf", NormalScoreEnKF(), ["linear"]),
    ("ns-enkf-local", NormalScoreEnKF(1.02, radius=2.0), ["l96-arctan"]),
    ("lpf", LocalParticleFilter(radius=None, jitter=0.3), ["linear"]),
    ("lpf-local", LocalParticleFilter(radius=2.0, jitter=0.3), ["l96-arctan"]),
    # The exact score of N(0, I) in the ensemble's frame: the Gaussian prior of the
    # members; then the same in the local frame of a ring, updated by the LETKF.
    ("learned", _exact_learned(particles=500), ["linear", "l96-arctan"]),
    (
        "learned-local",
        _exact_learned(particles=200, local=True, analysis=LETKF(radius=2.0)),
        ["l96-arctan"],
    ),
]
# The slow suite runs every pair; the default one each filter once (SMC with its
# particles only there), which keeps it inside its time (a filter name, or name-problem).
SLOW = {
    "ensf-smc", "sf-smc", "optimal-proposal-linear", "ienks-linear", "serial-linear",
    "enks-l96-arctan", "enkf-n-l96-arctan", "extkf-l96-arctan", "enkf-l96-arctan",
    "letkf-l96-arctan", "bootstrap-l96-arctan", "ensf-l96-arctan", "hybrid-l96-arctan",
    "denkf-l96-arctan", "adaptive-letkf-linear", "enks-linear", "rhf", "ns-enkf", "lpf",
    "learned-l96-arctan", "learned-local",
}  # fmt: skip
PAIRS = [
    pytest.param(
        flt,
        problem,
        id=f"{name}-{problem}",
        marks=[pytest.mark.slow] if {name, f"{name}-{problem}"} & SLOW else [],
    )
    for name, flt, problems in CASES
    for problem in problems
]


@pytest.mark.parametrize("flt, problem", PAIRS)
def test_filter_on_problem(flt, problem):
    dyn, obs, centre, n, key = PROBLEMS[problem](jr.key(7))
    k0, k1, k2, k3 = jr.split(key, 4)
    x0 = centre + jr.normal(k0, centre.shape)
    times = 0.1 * jnp.arange(1.0, K + 1.0)
    truth, series = ax.simulate(dyn, obs, x0, times, key=k1)
    mask = jnp.ones((K, obs.obs_dim), bool).at[2, 0].set(False)
    series = ax.ObservationSeries(obs, series.times, series.values, mask)
    ensemble = ax.Ensemble(x0[None] + 0.5 * jr.normal(k2, (n, *centre.shape)))
    belief0 = flt.init(ensemble, key=k3)
    sol = ax.assimilate(flt, dyn, series, belief0, key=k3, truth=truth, scores=False)

    # Finite, successful, the shapes of the contract.
    assert sol.result == ax.RESULTS.successful
    assert sol.analysis_mean.shape == (K, *centre.shape)
    for leaf in (sol.analysis_mean, sol.analysis_std, sol.rmse_analysis, sol.analysis_spread):
        assert jnp.all(jnp.isfinite(leaf))

    # The loop is manual stepping: init/forecast/update with keys fold_in(key, k).
    @eqx.filter_jit
    def cycle(b, t, k):
        fkey, ukey = jr.split(jr.fold_in(k3, k))
        b = flt.forecast(b, dyn, t, series.times[k], key=fkey)
        return flt.update(b, obs, series.values[k], series.mask[k], key=ukey)

    b, t = belief0, jnp.zeros(())
    for k in range(K):
        b, t = cycle(b, t, jnp.asarray(k)), series.times[k]
    assert np.allclose(sol.analysis_mean[-1], b.mean(), rtol=1e-9, atol=1e-9)
    # The driver in chunks (one of them a stream) gives the same numbers, bit for bit.
    chunked = ax.assimilate_stream(flt, dyn, series, belief0, key=k3, chunk_size=3)
    assert tree_allclose(sol.analysis_mean, chunked.analysis_mean, rtol=0, atol=0)
    stream = ax.ObservationStream(obs, series.records())
    streamed = ax.assimilate_stream(flt, dyn, stream, belief0, key=k3, chunk_size=3)
    assert tree_allclose(sol.analysis_mean, streamed.analysis_mean, rtol=0, atol=0)
    # On the linear-Gaussian problem every filter ends near the exact (Kalman) posterior.
    if problem == "linear":
        exact = _kalman(problem, dyn, series, ensemble)
        z = (sol.analysis_mean[-1] - exact.analysis_mean[-1]) / exact.analysis_std[-1]
        assert jnp.max(jnp.abs(z)) < 1.5, z
        if isinstance(flt, KalmanFilter):
            assert eqx.tree_equal(sol.analysis_mean, exact.analysis_mean)


_EXACT = {}


def _kalman(problem, dyn, series, ensemble):
    """The Kalman filter's solution of a (deterministic) problem, computed once."""
    if problem not in _EXACT:
        kf = KalmanFilter()
        _EXACT[problem] = ax.assimilate(
            kf, dyn, series, kf.init(ensemble, key=jr.key(0)), key=jr.key(0)
        )
    return _EXACT[problem]


def test_smoothed_estimates_survive_chunking():
    """The EnKS's smoothed estimates (shifted by the lag) are the same from one scan and
    from chunks of a stream."""
    dyn, obs, centre, n, key = PROBLEMS["l96-arctan"](jr.key(3))
    times = 0.1 * jnp.arange(1.0, 9.0)
    truth, series = ax.simulate(dyn, obs, centre, times, key=key)
    flt = EnKS(ETKF(1.02), 3)
    belief0 = flt.init(ax.Ensemble(centre[None] + jr.normal(key, (n, *centre.shape))), key=key)
    whole = ax.assimilate(flt, dyn, series, belief0, key=key)
    chunked = ax.assimilate_stream(flt, dyn, series, belief0, key=key, chunk_size=3)
    assert whole.smoothed_mean.shape == (8, *centre.shape)
    assert tree_allclose(whole.smoothed_mean, chunked.smoothed_mean, rtol=0, atol=0)
    # The last time is the filter's analysis; earlier ones differ (smoothed).
    assert tree_allclose(whole.smoothed_mean[-1], whole.analysis_mean[-1], rtol=0, atol=0)
    assert not np.allclose(whole.smoothed_mean[:-1], whole.analysis_mean[:-1])
