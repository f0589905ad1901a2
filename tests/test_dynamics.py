import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg

from assimilax.dynamics import LinearDynamics, Lorenz63, Lorenz96


def test_lorenz96_vector_field_matches_definition(getkey):
    m = Lorenz96(7)
    x = jr.normal(getkey(), (7,))
    xn = np.asarray(x)
    expected = (np.roll(xn, -1) - np.roll(xn, 2)) * np.roll(xn, 1) - xn + 8.0
    assert np.allclose(m.vector_field(x), expected)


def _start(model, key):
    """A start state off the attractor: fixed for Lorenz-63, random around F for Lorenz-96."""
    if isinstance(model, Lorenz63):
        return jnp.asarray([1.0, 2.0, 20.0])
    return 8 + jr.normal(key, model.state_shape)


@pytest.mark.parametrize("model", [Lorenz63(), Lorenz96(10)])
def test_rk4_against_scipy_reference(model, getkey):
    """RK4 at dt=0.01 over 0.5 time units agrees with a tight adaptive solution."""
    x0 = _start(model, getkey())
    ref = scipy.integrate.solve_ivp(
        lambda t, x: np.asarray(model.vector_field(jnp.asarray(x))),
        (0, 0.5),
        np.asarray(x0),
        method="DOP853",
        rtol=1e-12,
        atol=1e-12,
    ).y[:, -1]
    x1 = model.step(x0, 0.0, 0.5, key=getkey())
    # Global RK4 error at dt=0.01 is ~1e-4 on these fast fields (|f| ~ 50-100); the
    # order test below is the sharp check of the scheme.
    assert np.max(np.abs(x1 - ref)) < 1e-3


@pytest.mark.parametrize("model", [Lorenz63(), Lorenz96(8)])
def test_rk4_fourth_order(model, getkey):
    """The measured order of convergence is 4 +- 0.4 (fit over step sizes)."""
    x0 = _start(model, getkey())
    fine = Lorenz63(dt=1e-4) if isinstance(model, Lorenz63) else Lorenz96(8, dt=1e-4)
    ref = fine.step(x0, 0.0, 0.4, key=getkey())
    dts = np.array([0.04, 0.02, 0.01, 0.005])
    errs = []
    for dt in dts:
        coarse = Lorenz63(dt=dt) if isinstance(model, Lorenz63) else Lorenz96(8, dt=dt)
        errs.append(float(jnp.max(jnp.abs(coarse.step(x0, 0.0, 0.4, key=getkey()) - ref))))
    order = np.polyfit(np.log(dts), np.log(errs), 1)[0]
    assert abs(order - 4) < 0.4, (order, errs)


def test_substeps_handle_irregular_intervals(getkey):
    """0.05 is 5 steps of 0.01 despite rounding; 0.033 is 4 steps of 0.00825."""
    m = Lorenz96(10)
    x0 = 8 + jr.normal(getkey(), (10,))
    a = m.step(x0, 0.0, 0.05, key=getkey())
    b = x0
    for i in range(5):
        b = m.step(b, 0.01 * i, 0.01 * (i + 1), key=getkey())
    assert np.allclose(a, b, atol=1e-12)
    assert np.array_equal(m.step(x0, 1.0, 1.0, key=getkey()), x0)


def test_lorenz96_jacobian_matches_finite_differences(getkey):
    m = Lorenz96(10)
    x = 8 + jr.normal(getkey(), (10,))
    f = lambda z: m.step(z, 0.0, 0.05, key=jr.key(0))
    jac = jax.jacfwd(f)(x)
    eps = 1e-6
    fd = np.stack([(f(x.at[i].add(eps)) - f(x.at[i].add(-eps))) / (2 * eps) for i in range(10)], 1)
    assert np.allclose(jac, fd, atol=1e-6)


def test_model_noise_variance_scales_with_time(getkey):
    """Additive noise of std sigma per unit time has variance sigma^2 (t1 - t0)."""
    m = Lorenz96(8, noise_std=0.3)
    x0 = 8 + jr.normal(getkey(), (8,))
    det = Lorenz96(8).step(x0, 0.0, 0.2, key=getkey())
    keys = jr.split(getkey(), 20000)
    xs = jax.vmap(lambda k: m.step(x0, 0.0, 0.2, key=k))(keys)
    var = np.var(np.asarray(xs - det[None]), axis=0).mean()
    n = 20000 * 8
    assert abs(var - 0.3**2 * 0.2) < 6 * 0.3**2 * 0.2 * np.sqrt(2 / n)


@pytest.mark.parametrize(
    "model",
    [Lorenz63(noise_std=0.5), LinearDynamics(-jnp.eye(3) + 0.2, 0.4 * jnp.eye(3) + 0.1)],
    ids=["lorenz63", "linear"],
)
def test_additive_noise_split_matches_step(model, getkey):
    """`step` draws from N(step_mean, step_covariance): mean and covariance of 20000
    draws within 6 standard errors."""
    x0 = jnp.array([1.0, -2.0, 20.0])
    xs = jax.vmap(lambda k: model.step(x0, 0.0, 0.3, key=k))(jr.split(getkey(), 20000))
    mean, q = model.step_mean(x0, 0.0, 0.3), model.step_covariance(0.0, 0.3)
    se = np.sqrt(np.diagonal(q) / 20000)
    assert np.all(np.abs(np.asarray(xs.mean(0) - mean)) < 6 * se)
    cov = np.cov(np.asarray(xs).T)
    scale = np.sqrt(np.outer(np.diagonal(q), np.diagonal(q)) * 2 / 20000)
    assert np.all(np.abs(cov - np.asarray(q)) < 6 * scale)
    assert np.allclose(Lorenz63().step_covariance(0.0, 0.3), 0.0)


def test_linear_transition_is_exact(getkey):
    a = jnp.array([[-0.5, 1.0], [-1.0, -0.3]])
    q = jnp.array([[0.2, 0.05], [0.05, 0.1]])
    dyn = LinearDynamics(a, q)
    m, qd = dyn.transition(0.3, 1.0)
    assert np.allclose(m, scipy.linalg.expm(0.7 * np.asarray(a)))
    # Q_Delta = int_0^Delta e^{As} Q e^{A^T s} ds, by quadrature.
    s = np.linspace(0, 0.7, 2001)
    vals = np.stack(
        [
            scipy.linalg.expm(np.asarray(a) * t)
            @ np.asarray(q)
            @ scipy.linalg.expm(np.asarray(a).T * t)
            for t in s
        ]
    )
    quad = scipy.integrate.simpson(vals, x=s, axis=0)
    assert np.allclose(qd, quad, atol=1e-10)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Lorenz96(3), "dim"),
        (lambda: Lorenz96(10, dt=0.0), "dt"),
        (lambda: Lorenz63(noise_std=-1.0), "noise_std"),
        (lambda: LinearDynamics(jnp.ones((2, 3))), "drift"),
        (lambda: LinearDynamics(jnp.eye(2), jnp.eye(3)), "noise_covariance"),
    ],
)
def test_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_float32_stays_float32(getkey):
    m = Lorenz96(10)
    x = (8 + jr.normal(getkey(), (10,))).astype(jnp.float32)
    assert m.step(x, 0.0, 0.05, key=getkey()).dtype == jnp.float32
