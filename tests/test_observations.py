import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.stats

from assimilax.observations import (
    AbstractLinearObservation,
    Arctan,
    DenseCovariance,
    DiagonalCovariance,
    Identity,
    LinearObservation,
    ScalarCovariance,
    Subsample,
    as_covariance,
)

from .helpers import all_observations


def _spd(key, m):
    a = jr.normal(key, (m, m))
    return a @ a.T + m * jnp.eye(m)


@pytest.fixture
def covariances(getkey):
    return [
        ScalarCovariance(0.7, 4),
        DiagonalCovariance(jnp.array([0.5, 1.0, 2.0, 3.0])),
        DenseCovariance(_spd(getkey(), 4)),
    ]


def test_log_density_matches_scipy(covariances, getkey):
    r = jr.normal(getkey(), (4,))
    for cov in covariances:
        expected = scipy.stats.multivariate_normal(np.zeros(4), np.asarray(cov.dense())).logpdf(r)
        assert np.isclose(cov.log_density(r), expected)


def test_mask_is_marginalisation(covariances, getkey):
    """A masked log-density equals the density of the observed sub-vector."""
    r = jr.normal(getkey(), (4,))
    mask = jnp.array([True, False, True, True])
    keep = np.flatnonzero(mask)
    for cov in covariances:
        sub = np.asarray(cov.dense())[np.ix_(keep, keep)]
        expected = scipy.stats.multivariate_normal(np.zeros(3), sub).logpdf(np.asarray(r)[keep])
        assert np.isclose(cov.log_density(r, mask), expected)
        z = cov.whiten(r, mask)
        assert z[1] == 0
        # whitening is L^{-1} r on the observed block: |z|^2 = r_o^T R_oo^{-1} r_o
        ro = np.asarray(r)[keep]
        assert np.isclose(jnp.sum(z**2), ro @ np.linalg.solve(sub, ro))


def test_samples_have_the_covariance(covariances, getkey):
    for cov in covariances:
        s = cov.sample(key=getkey(), shape=(40000,))
        emp = np.cov(np.asarray(s).T)
        true = np.asarray(cov.dense())
        # Standard error of a sample covariance entry: sqrt((S_ii S_jj + S_ij^2) / n).
        se = np.sqrt((np.outer(np.diag(true), np.diag(true)) + true**2) / 40000)
        assert np.all(np.abs(emp - true) < 6 * se)


@pytest.mark.parametrize("index", range(5))
def test_observation_operators(index, getkey):
    d = 8
    obs = all_observations(d)[index]
    x = jr.normal(getkey(), (d,))
    y = obs.apply(x)
    assert y.shape == (obs.obs_dim,)
    if isinstance(obs, AbstractLinearObservation):
        assert np.allclose(y, obs.matrix() @ x)
    # log-likelihood is the Gaussian density of the residual
    yobs = obs.sample(x, key=getkey())
    expected = scipy.stats.multivariate_normal(np.asarray(y), np.asarray(obs.noise.dense())).logpdf(
        np.asarray(yobs)
    )
    assert np.isclose(obs.log_likelihood(yobs, x), expected)
    # vmappable over members and jittable
    xs = jr.normal(getkey(), (5, d))
    ys = jax.jit(jax.vmap(obs.apply))(xs)
    assert ys.shape == (5, obs.obs_dim)


def test_arctan_wraps():
    inner = Subsample(6, jnp.array([1, 4]), noise_std=0.1)
    obs = Arctan(inner)
    x = jnp.array([0.0, 1.0, 2.0, 3.0, -10.0, 5.0])
    assert np.allclose(obs.apply(x), np.arctan([1.0, -10.0]))
    assert obs.noise is inner.noise
    assert np.array_equal(obs.locations(), inner.locations())


def test_subsample_every_and_locations():
    obs = Subsample.every((4, 6), 2, 1, noise_std=1.0)
    # rows 1, 3 and columns 1, 3, 5 of a 4 x 6 grid: a sensor lattice
    assert np.array_equal(obs.indices, [7, 9, 11, 19, 21, 23])
    assert np.array_equal(obs.locations()[:2], [[1, 1], [1, 3]])
    assert np.array_equal(Subsample.every(10, 3, noise_std=1.0).indices, [0, 3, 6, 9])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Identity(5, noise_std=-1.0), "noise_std"),
        (lambda: Identity(5, noise_std=jnp.nan), "noise_std"),
        (lambda: Identity(5), "exactly one"),
        (
            lambda: Identity(5, noise_std=1.0, noise_covariance=jnp.eye(5)),
            "exactly one",
        ),
        (lambda: Identity(5, noise_std=jnp.ones(4)), "size 4"),
        (lambda: Identity(0, noise_std=1.0), "state_shape"),
        (lambda: Subsample(5, jnp.array([0, 5]), noise_std=1.0), "indices"),
        (lambda: Subsample(5, jnp.array([1, 1]), noise_std=1.0), "repeat"),
        (lambda: Subsample.every(5, 0, noise_std=1.0), "k >= 1"),
        (lambda: DiagonalCovariance(jnp.array([1.0, 0.0])), "variances"),
        (lambda: ScalarCovariance(-2.0, 3), "variance"),
        (
            lambda: DenseCovariance(jnp.array([[1.0, 2.0], [2.0, 1.0]])),
            "positive definite",
        ),
        (lambda: DenseCovariance(jnp.array([[1.0, 0.5], [0.0, 1.0]])), "symmetric"),
        (lambda: LinearObservation(jnp.ones(3), noise_std=1.0), "matrix"),
        (lambda: as_covariance(3, noise_std=jnp.ones((3, 3))), "noise_std"),
    ],
)
def test_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_noise_under_jit():
    """Traced noise levels are checked too (equinox.error_if)."""

    @jax.jit
    def build(std):
        return Identity(3, noise_std=std).noise.variance

    assert np.isclose(build(2.0), 4.0)
    with pytest.raises(Exception, match="noise_std"):
        build(-1.0).block_until_ready()
