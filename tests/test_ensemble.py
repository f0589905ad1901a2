import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from assimilax import Ensemble, GaussianBelief


def test_moments_match_numpy(getkey):
    x = jr.normal(getkey(), (7, 4))
    ens = Ensemble(x)
    xn = np.asarray(x)
    assert np.allclose(ens.mean(), xn.mean(0))
    assert np.allclose(ens.variance(), xn.var(0, ddof=1))
    assert np.allclose(ens.covariance(), np.cov(xn.T))
    assert np.isclose(ens.spread(), np.sqrt(xn.var(0, ddof=1).mean()))
    assert np.isclose(ens.effective_size(), 7.0)


def test_weighted_moments(getkey):
    x = jr.normal(getkey(), (6, 3))
    w = jnp.array([0.1, 0.3, 0.2, 0.2, 0.1, 0.1])
    ens = Ensemble(x, jnp.log(w) + 5.0)  # unnormalised log-weights
    xn, wn = np.asarray(x), np.asarray(w)
    assert np.allclose(ens.weights(), wn)
    assert np.allclose(ens.mean(), wn @ xn)
    # unbiased for reliability weights
    assert np.allclose(ens.covariance(), _rel_cov(xn, wn))
    assert np.isclose(ens.effective_size(), 1 / np.sum(wn**2))


def _rel_cov(x, w):
    a = x - w @ x
    return (a.T * w) @ a / (1 - np.sum(w**2))


def test_field_states_keep_shape(getkey):
    ens = Ensemble(jr.normal(getkey(), (5, 2, 3)))
    assert ens.mean().shape == (2, 3)
    assert ens.state_shape == (2, 3)
    with pytest.raises(ValueError, match="flat states"):
        ens.covariance()


@pytest.mark.parametrize(
    "members, match",
    [
        (jnp.ones(5), "shape \\(n, \\*state_shape\\)"),
        (jnp.ones((1, 3)), "at least 2 members"),
        (jnp.ones((4, 3)).at[1, 2].set(jnp.nan), "`members` contains NaN"),
    ],
)
def test_bad_members(members, match):
    with pytest.raises(ValueError, match=match):
        Ensemble(members)


def test_bad_dtype_and_weights():
    with pytest.raises(TypeError, match="floating dtype"):
        Ensemble(jnp.ones((4, 3), jnp.int32))
    with pytest.raises(ValueError, match="log_weights"):
        Ensemble(jnp.ones((4, 3)), jnp.ones(3))
    with pytest.raises(ValueError, match="log_weights"):
        Ensemble(jnp.ones((4, 3)), jnp.array([0.0, jnp.nan, 0.0, 0.0]))


def test_gaussian_belief_checks():
    b = GaussianBelief(jnp.zeros(2), jnp.eye(2))
    assert np.isclose(b.spread(), 1.0)
    with pytest.raises(ValueError, match="covariance_matrix"):
        GaussianBelief(jnp.zeros(2), jnp.eye(3))
