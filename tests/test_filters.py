"""Every filter: shared conformance, then exact linear-Gaussian references."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax import lax

from assimilax import Ensemble, GaussianBelief
from assimilax.dynamics import LinearDynamics, Lorenz96
from assimilax.filters import (
    ETKF,
    LETKF,
    RTPP,
    RTPS,
    KalmanFilter,
    MultiplicativeInflation,
    StochasticEnKF,
    gaspari_cohn,
    periodic_distance,
)
from assimilax.observations import Identity, Interpolate, LinearObservation, Subsample

from .helpers import all_ensemble_filters, tree_allclose


D, N = 8, 6


def _setup(key):
    k1, k2 = jr.split(key)
    ens = Ensemble(8 + jr.normal(k1, (N, D)))
    obs = Subsample.every(D, 2, noise_std=0.5)
    y = 8 + jr.normal(k2, (D // 2,))
    return ens, obs, y


# Shared conformance -------------------------------------------------------------------


@pytest.mark.parametrize("flt", all_ensemble_filters, ids=lambda f: type(f).__name__)
def test_conformance(flt, getkey):
    ens, obs, y = _setup(getkey())
    dyn = Lorenz96(D)
    key = getkey()

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def cycle(flt, ens, y, key):
        fkey, ukey = jr.split(key)
        b = flt.forecast(ens, dyn, 0.0, 0.05, key=fkey)
        return flt.update(b, obs, y, None, key=ukey)

    out = cycle(flt, ens, y, key)
    # shapes, dtypes, finiteness
    assert out.members.shape == ens.members.shape
    assert out.members.dtype == ens.members.dtype
    assert jnp.all(jnp.isfinite(out.members))
    # same key, same numbers; second call does not retrace
    assert tree_allclose(out, cycle(flt, ens, y + 0.0, key), rtol=0, atol=0)
    # vmap over keys
    keys = jr.split(getkey(), 3)
    outs = jax.vmap(lambda k: cycle(flt, ens, y, k))(keys)
    assert outs.members.shape == (3, *ens.members.shape)

    # scan a few cycles
    def body(b, k):
        return cycle(flt, b, y, k), None

    final, _ = lax.scan(body, ens, jr.split(getkey(), 4))
    assert jnp.all(jnp.isfinite(final.members))
    # float32 in, float32 out
    ens32 = Ensemble(ens.members.astype(jnp.float32))
    obs32 = Subsample.every(D, 2, noise_std=jnp.float32(0.5))
    b32 = flt.update(ens32, obs32, y.astype(jnp.float32), key=key)
    assert b32.members.dtype == jnp.float32


@pytest.mark.parametrize("sensors", ["grid", "between"])
@pytest.mark.parametrize("flt", all_ensemble_filters, ids=lambda f: type(f).__name__)
def test_masked_observation_has_no_influence(flt, sensors, getkey):
    """An update with a masked value equals the update without that sensor (on grid
    points, and interpolated between them)."""
    ens, _, _ = _setup(getkey())
    std = jnp.array([0.5, 0.6, 0.7])
    if sensors == "grid":
        idx = jnp.array([0, 3, 5])
        full = Subsample(D, idx, noise_std=std)
        part = Subsample(D, idx[jnp.array([0, 2])], noise_std=std[jnp.array([0, 2])])
    else:
        pos = jnp.array([0.5, 3.25, D - 0.4])
        full = Interpolate(D, pos, noise_std=std)
        part = Interpolate(D, pos[jnp.array([0, 2])], noise_std=std[jnp.array([0, 2])])
    y = 8 + jr.normal(getkey(), (3,))
    key = getkey()
    mask = jnp.array([True, False, True])
    a = flt.update(ens, full, y.at[1].set(1e6), mask, key=key)
    if isinstance(flt, StochasticEnKF):
        # Perturbations are drawn for all m components; compare statistically instead.
        b = flt.update(ens, part, y[jnp.array([0, 2])], key=key)
        assert np.allclose(a.mean(), b.mean(), atol=1.0)
        assert jnp.all(jnp.abs(a.members) < 100)
        return
    b = flt.update(ens, part, y[jnp.array([0, 2])], key=key)
    assert tree_allclose(a, b, rtol=1e-10, atol=1e-10)


# Exact references ---------------------------------------------------------------------


def _exact_ensemble(key, mean, cov, n):
    """An ensemble whose sample mean and covariance are exactly `mean` and `cov`."""
    d = mean.shape[0]
    z = jr.normal(key, (n, d))
    z = z - z.mean(0, keepdims=True)
    # Whiten the sample, then colour it: sample covariance exactly cov.
    s = jnp.linalg.cholesky(z.T @ z / (n - 1))
    z = jnp.linalg.solve(s, z.T).T
    return Ensemble(mean[None] + z @ jnp.linalg.cholesky(cov).T)


def _random_problem(key, d=4, m=3):
    k1, k2, k3, k4 = jr.split(key, 4)
    a = jr.normal(k1, (d, d)) / d - 0.5 * jnp.eye(d)  # a stable drift
    q = 0.1 * jnp.eye(d)
    h = jr.normal(k2, (m, d))
    r = jr.normal(k3, (m, m))
    r = r @ r.T / m + 0.5 * jnp.eye(m)
    dyn = LinearDynamics(a, q)
    obs = LinearObservation(h, noise_covariance=r)
    mean0 = jr.normal(k4, (d,))
    cov0 = jnp.eye(d) + 0.3
    return dyn, obs, mean0, cov0


def test_kalman_filter_matches_joint_gaussian(getkey):
    """Kalman filter over 3 cycles == brute-force conditioning of the joint Gaussian."""
    dyn, obs, m0, p0 = _random_problem(getkey())
    d, m = 4, 3
    times = [0.0, 0.3, 0.5, 1.0]
    ys = jr.normal(getkey(), (3, m))
    kf = KalmanFilter()
    b = GaussianBelief(m0, p0)
    for i in range(3):
        b = kf.forecast(b, dyn, times[i], times[i + 1], key=getkey())
        b = kf.update(b, obs, ys[i], key=getkey())
    # Joint Gaussian of (x0, x1, x2, x3, y1, y2, y3) built from transitions.
    mats = [dyn.transition(times[i], times[i + 1]) for i in range(3)]
    n_x = 4 * d
    mean = np.zeros(n_x)
    cov = np.zeros((n_x, n_x))
    mean[:d] = m0
    cov[:d, :d] = p0
    for i, (mm, qq) in enumerate(mats):
        lo, hi = i * d, (i + 1) * d
        mean[hi : hi + d] = mm @ mean[lo:hi]
        # Cov(x_{i+1}, x_j) = M Cov(x_i, x_j); Var(x_{i+1}) = M Var(x_i) M^T + Q.
        cov[hi : hi + d, :hi] = mm @ cov[lo:hi, :hi]
        cov[:hi, hi : hi + d] = cov[hi : hi + d, :hi].T
        cov[hi : hi + d, hi : hi + d] = mm @ cov[lo:hi, lo:hi] @ mm.T + qq
    hmat, rmat = np.asarray(obs.matrix()), np.asarray(obs.noise.dense())
    g = np.zeros((3 * m, n_x))
    for i in range(3):
        g[i * m : (i + 1) * m, (i + 1) * d : (i + 2) * d] = hmat
    s = g @ cov @ g.T + np.kron(np.eye(3), rmat)
    gain = cov @ g.T @ np.linalg.inv(s)
    post_mean = mean + gain @ (np.asarray(ys).ravel() - g @ mean)
    post_cov = cov - gain @ g @ cov
    last = slice(3 * d, 4 * d)
    assert np.allclose(b.loc, post_mean[last], atol=1e-10)
    assert np.allclose(b.covariance_matrix, post_cov[last, last], atol=1e-10)


@pytest.mark.parametrize("flt", [ETKF(), LETKF(radius=1e6, periodic=False)], ids=["ETKF", "LETKF"])
def test_etkf_reproduces_kalman_filter(flt, getkey):
    """Linear-Gaussian, n > d: ETKF's mean and covariance equal the Kalman filter's.

    (The LETKF with an infinite radius is the ETKF.) The forecast uses the exact
    linear transition without noise, so the ensemble moments stay exact.
    """
    dyn, obs, m0, p0 = _random_problem(getkey())
    dyn = LinearDynamics(dyn.drift)  # deterministic: ensemble forecast is exact
    obs = LinearObservation(obs.matrix(), noise_covariance=obs.noise, locations=jnp.zeros((3, 1)))
    ens = _exact_ensemble(getkey(), m0, p0, n=12)
    gb = GaussianBelief(m0, p0)
    kf = KalmanFilter()
    for i, t in enumerate([0.2, 0.5, 0.9]):
        y = jr.normal(getkey(), (3,))
        t0 = [0.0, 0.2, 0.5][i]
        ens = flt.forecast(ens, dyn, t0, t, key=getkey())
        ens = flt.update(ens, obs, y, key=getkey())
        gb = kf.forecast(gb, dyn, t0, t, key=getkey())
        gb = kf.update(gb, obs, y, key=getkey())
        assert np.allclose(ens.mean(), gb.loc, atol=1e-10)
        assert np.allclose(ens.covariance(), gb.covariance_matrix, atol=1e-10)


def test_stochastic_enkf_converges_to_kalman(getkey):
    """The stochastic EnKF's analysis covariance error shrinks like n^{-1/2}.

    With the prior moments exact and centred perturbations the analysis mean is exact;
    the perturbed observations leave a sampling error in the covariance, whose RMS
    over repetitions must fall with slope -0.5 +- 0.25 in n (log-log fit).
    """
    _, obs, m0, p0 = _random_problem(getkey())
    y = jr.normal(getkey(), (3,))
    kf_post = KalmanFilter().update(GaussianBelief(m0, p0), obs, y, key=getkey())
    sizes = np.array([20, 40, 80, 160])
    errors = []
    flt = StochasticEnKF()
    for n in sizes:

        def err(key, n=int(n)):
            k1, k2 = jr.split(key)
            ens = _exact_ensemble(k1, m0, p0, n)
            post = flt.update(ens, obs, y, key=k2)
            mean_err = jnp.sum((post.mean() - kf_post.loc) ** 2)
            return mean_err, jnp.sum((post.covariance() - kf_post.covariance_matrix) ** 2)

        mean_err, cov_err = jax.jit(jax.vmap(err))(jr.split(getkey(), 100))
        assert jnp.max(mean_err) < 1e-20
        errors.append(float(jnp.sqrt(jnp.mean(cov_err))))
    slope = np.polyfit(np.log(sizes), np.log(errors), 1)[0]
    assert abs(slope + 0.5) < 0.25, (slope, errors)


def test_kalman_masked_equals_removed(getkey):
    _, obs, m0, p0 = _random_problem(getkey())
    y = jr.normal(getkey(), (3,))
    mask = jnp.array([True, False, True])
    a = KalmanFilter().update(GaussianBelief(m0, p0), obs, y.at[1].set(1e8), mask, key=getkey())
    keep = jnp.array([0, 2])
    sub = LinearObservation(obs.matrix()[keep], noise_covariance=obs.noise.dense()[keep][:, keep])
    b = KalmanFilter().update(GaussianBelief(m0, p0), sub, y[keep], key=getkey())
    assert tree_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_kalman_rejects_nonlinear_parts():
    kf = KalmanFilter()
    b = GaussianBelief(jnp.zeros(4), jnp.eye(4))
    with pytest.raises(TypeError, match="linear model"):
        kf.forecast(b, Lorenz96(4), 0.0, 0.1, key=jr.key(0))
    from assimilax.observations import Arctan

    with pytest.raises(TypeError, match="linear observation"):
        kf.update(b, Arctan(Identity(4, noise_std=1.0)), jnp.zeros(4), key=jr.key(0))


# Localisation and inflation -----------------------------------------------------------


def test_gaspari_cohn_properties():
    z = jnp.linspace(0, 2.5, 251)
    g = gaspari_cohn(z)
    assert g[0] == 1 and jnp.all(g[z >= 2] == 0)
    assert jnp.all(jnp.diff(g) <= 1e-15)  # non-increasing
    # continuous at z = 1 (the two pieces meet)
    assert np.isclose(gaspari_cohn(jnp.array(1 - 1e-9)), gaspari_cohn(jnp.array(1 + 1e-9)))
    # DAPPER's radius convention (c = 1.82 * radius): taper 0.63 ~ exp(-1/2) at
    # distance == radius, zero beyond 2c.
    from assimilax.filters import GaspariCohn

    assert abs(GaspariCohn(4.0)(jnp.array(4.0)) - np.exp(-0.5)) < 0.03
    assert GaspariCohn(4.0)(jnp.array(2 * 1.82 * 4.0)) == 0
    # never negative, also in float32 (the outer piece cancels near z = 2; the LETKF
    # takes its square root: a negative taper gave NaN analyses in float32 runs)
    z32 = jnp.linspace(0, 3, 100001, dtype=jnp.float32)
    assert float(jnp.min(gaspari_cohn(z32))) >= 0


def test_periodic_distance():
    a = jnp.array([[0.0], [1.0], [39.0]])
    b = jnp.array([[38.0]])
    assert np.allclose(periodic_distance(a, b, (40,)), [2.0, 3.0, 1.0])
    assert np.allclose(periodic_distance(a, b, None), [38.0, 37.0, 1.0])


def test_letkf_top_k_is_exact_when_support_fits(getkey):
    """With all observations within the taper support counted, top-k == dense."""
    d = 40
    ens = Ensemble(8 + jr.normal(getkey(), (10, d)))
    obs = Identity(d, noise_std=1.0)
    y = 8 + jr.normal(getkey(), (d,))
    dense = LETKF(radius=2.0).update(ens, obs, y, key=getkey())
    # support of the taper: |r| < 2 * 1.826 * 2 = 7.3, i.e. at most 15 grid points
    sparse = LETKF(radius=2.0, max_local_observations=15).update(ens, obs, y, key=getkey())
    assert tree_allclose(dense, sparse, rtol=1e-10, atol=1e-10)


def test_letkf_window_search_handles_unsorted_sparse_observations(getkey):
    """The 1-D neighbour window (binary search over sorted locations) equals the dense
    analysis with observations every 3rd point, given in shuffled order, wrapping round."""
    d = 60
    ens = Ensemble(8 + jr.normal(getkey(), (10, d)))
    index = jr.permutation(getkey(), jnp.arange(0, d, 3))
    matrix = jnp.eye(d)[index]
    obs = LinearObservation(matrix, noise_std=1.0, locations=index[:, None].astype(float))
    y = 8 + jr.normal(getkey(), (index.size,))
    dense = LETKF(radius=2.0).update(ens, obs, y, key=getkey())
    # support |r| < 7.3: at most 3 observations on each side of a point
    sparse = LETKF(radius=2.0, max_local_observations=7).update(ens, obs, y, key=getkey())
    assert tree_allclose(dense, sparse, rtol=1e-10, atol=1e-10)


def test_letkf_needs_locations(getkey):
    ens = Ensemble(jr.normal(getkey(), (5, 4)))
    obs = LinearObservation(jnp.ones((2, 4)), noise_std=1.0)
    with pytest.raises(TypeError, match="locations"):
        LETKF().update(ens, obs, jnp.zeros(2), key=getkey())


def test_inflation_schemes(getkey):
    f = jr.normal(getkey(), (10, 5)) * 2.0
    a = 0.5 * (f - f.mean(0, keepdims=True)) + 1.0
    mean = a.mean(0)
    m = MultiplicativeInflation(1.1)(f, a)
    assert np.allclose(m.mean(0), mean)
    assert np.allclose(m.std(0), 1.1 * a.std(0))
    r = RTPS(0.7)(f, a)
    assert np.allclose(r.mean(0), mean)
    assert np.allclose(r.std(0), 0.3 * a.std(0) + 0.7 * f.std(0))
    p = RTPP(1.0)(f, a)
    assert np.allclose(p - p.mean(0, keepdims=True), f - f.mean(0, keepdims=True))
    with pytest.raises(ValueError, match="alpha"):
        RTPS(1.5)
    with pytest.raises(ValueError, match="factor"):
        MultiplicativeInflation(-1.0)


def test_etkf_rotation_preserves_moments(getkey):
    ens, obs, y = _setup(getkey())
    a = ETKF().update(ens, obs, y, key=getkey())
    b = ETKF(rotate=True).update(ens, obs, y, key=getkey())
    assert np.allclose(a.mean(), b.mean(), atol=1e-10)
    assert np.allclose(a.covariance(), b.covariance(), atol=1e-10)
    assert not np.allclose(a.members, b.members)
