"""Tuning by gradient from observations alone: exact gradients, the tuned setting, and
the differentiable pieces it relies on."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import assimilax as ax
from assimilax.experiments._twin import twin_inputs
from assimilax.filters import ETKF, LETKF, ExtendedKalmanFilter
from assimilax.filters._enkf import inverse_and_root, transform


SETUP = ax.MODELS["lorenz96"]


def _twin(d, cycles, observe="all", seed=0):
    dyn = SETUP.make_dynamics(d)
    obs = ax.make_observation(d, 1.0, observe)
    truth, series, ens, key = twin_inputs(
        dyn, obs, key=jr.key(seed), members=10, cycles=cycles, obs_interval=0.05,
        x0=SETUP.initial_state(d), spinup_time=20.0, init_std=1.0, init_length_scale=None,
        truth_dynamics=None,
    )  # fmt: skip
    return dyn, truth, series, ens, key


def test_inverse_and_root_derivative_with_repeated_eigenvalues(getkey):
    """C = S S^T + (n-1) I with rank(S) < n: eigh's derivative is NaN there, the
    matrix functions' derivative must match central finite differences."""
    s = jr.normal(getkey(), (6, 2))
    c = s @ s.T + 5 * jnp.eye(6)
    dc = jr.normal(getkey(), (6, 6))
    dc = dc + dc.T
    _, tangents = jax.jvp(inverse_and_root, (c,), (dc,))
    eps = 1e-6
    plus, minus = inverse_and_root(c + eps * dc), inverse_and_root(c - eps * dc)
    for t, p, m in zip(tangents, plus, minus, strict=True):
        assert jnp.all(jnp.isfinite(t))
        assert np.allclose(t, (p - m) / (2 * eps), atol=1e-7)
    inverse, root = inverse_and_root(c)
    assert np.allclose(inverse @ c, np.eye(6), atol=1e-12)
    assert np.allclose(root @ root @ c, np.eye(6), atol=1e-12)


@pytest.mark.parametrize("n, m", [(30, 7), (8, 3)])
def test_transform_observation_space_equals_ensemble_space(getkey, n, m):
    """With fewer observations than members `transform` works in observation space
    (eigh of m x m); its weights, transform and their gradients must equal the
    ensemble-space formulas (eigh of n x n), also with a zero (tapered-out) column."""
    s = jr.normal(getkey(), (n, m)).at[:, 0].set(0.0)
    delta = jr.normal(getkey(), (m,))

    def ensemble_space(s):
        inverse, root = inverse_and_root(s @ s.T + (n - 1) * jnp.eye(n))
        return inverse @ (s @ delta), jnp.sqrt(n - 1.0) * root

    for got, want in zip(transform(s, delta), ensemble_space(s), strict=True):
        assert np.allclose(got, want, atol=1e-12)
    loss = lambda f: lambda s: jnp.sum(f(s)[0] ** 2) + jnp.sum(jnp.sin(f(s)[1]))  # noqa: E731
    got, want = jax.grad(loss(lambda s: transform(s, delta)))(s), jax.grad(loss(ensemble_space))(s)
    assert jnp.all(jnp.isfinite(got))
    assert np.allclose(got, want, atol=1e-10)


@pytest.mark.parametrize(
    "make, initial, loss",
    [
        (lambda inflation: ETKF(inflation=inflation), {"inflation": 1.05}, "innovation"),
        pytest.param(lambda inflation, radius: LETKF(inflation=inflation, radius=radius),
                     {"inflation": 1.03, "radius": 2.5}, "crps", marks=pytest.mark.slow),
    ],
    ids=["etkf-innovation", "letkf-crps"],
)  # fmt: skip
def test_tune_gradient_matches_finite_differences(make, initial, loss):
    """With a window over all cycles the gradient is the exact derivative of the loss
    (sparse observations: the LETKF's local analyses have fewer observations than
    members, so the repeated eigenvalues are exercised)."""
    dyn, _, series, ens, key = _twin(12, 8, "every:3")
    run = dict(key=key, loss=loss, steps=1, window=8, burn_in=2)
    result = ax.tune(make, initial, dyn, series, ens, **run)
    eps = 1e-7  # the CRPS has kinks (members crossing): a small step stays between them
    for name in initial:
        up = {**initial, name: initial[name] * np.exp(eps)}
        down = {**initial, name: initial[name] * np.exp(-eps)}
        fd = (ax.tune(make, up, dyn, series, ens, **run).loss[0]
              - ax.tune(make, down, dyn, series, ens, **run).loss[0]) / (2 * eps)  # fmt: skip
        assert np.isclose(result.gradient[name][0], fd, rtol=1e-4, atol=1e-7), (name, fd)


def test_tune_finds_the_inflation_the_truth_would_pick(capsys):
    """ETKF on Lorenz-96 (d=40, N=10, which needs inflation): from 1.3, tuned on the
    observations alone, the RMSE against the truth is within 5 % of the best of a grid;
    with progress, a line per step."""
    dyn, truth, series, ens, key = _twin(40, 300)

    def rmse(inflation):
        f = ETKF(inflation=inflation)
        sol = ax.assimilate(f, dyn, series, f.init(ens, key=key), key=key, truth=truth,
                            scores=False, throw=False)  # fmt: skip
        return float(jnp.nan_to_num(sol.rmse_analysis[30:].mean(), nan=1e9))

    grid = min(rmse(i) for i in np.linspace(1.0, 1.3, 16))
    result = ax.tune(lambda inflation: ETKF(inflation=inflation), {"inflation": 1.3}, dyn,
                     series, ens, key=key, steps=20, burn_in=30, progress=True)  # fmt: skip
    lines = capsys.readouterr().err.strip().split("\n")
    assert len(lines) == 20 and lines[-1].startswith("tune: step 20/20, loss")
    assert result.loss[-1] <= result.loss[0]
    assert rmse(result.params["inflation"]) < 1.05 * grid, (result.params, grid)


def test_tune_rejects_bad_input():
    dyn, _, series, ens, key = _twin(12, 5)
    make = lambda inflation: ETKF(inflation=inflation)
    with pytest.raises(ValueError, match="loss"):
        ax.tune(make, {"inflation": 1.1}, dyn, series, ens, key=key, loss="rmse")
    with pytest.raises(ValueError, match="positive number"):
        ax.tune(make, {"inflation": -1.0}, dyn, series, ens, key=key)
    with pytest.raises(ValueError, match="stored in the filter as given"):
        ax.tune(lambda x: ETKF(inflation=1 + x**2), {"x": 0.1}, dyn, series, ens, key=key)
    with pytest.raises(ValueError, match="steps"):
        ax.tune(make, {"inflation": 1.1}, dyn, series, ens, key=key, steps=0)
    with pytest.raises(TypeError, match="ensemble filter"):
        ax.tune(ExtendedKalmanFilter, {"inflation": 1.1}, dyn, series, ens, key=key)


def test_assimilate_cli_tunes_on_the_sensor_file(tmp_path, capsys):
    from assimilax.cli import main

    sensors, out = tmp_path / "s.nc", tmp_path / "a.nc"
    assert main(["make-sensors", "--dim", "12", "--cycles", "60", "--out", str(sensors)]) == 0
    argv = ["assimilate", "--dim", "12", "--obs", str(sensors), "--filter", "etkf"]
    code = main([*argv, "--tune", "inflation", "--tune-cycles", "40", "--out", str(out)])
    assert code in (0, 1)  # 1: flagged as diverged; the file is written either way
    err = capsys.readouterr().err
    assert "tuned on 40 records" in err and "inflation=" in err
    line = next(x for x in err.splitlines() if x.startswith("tuned on"))
    tuned = float(line.split("inflation=")[1].split()[0])
    assert str(tuned)[:4] in ax.read_netcdf(out).attrs["filter"]
    assert main([*argv, "--tune", "radius", "--out", str(tmp_path / "b.nc")]) == 2
    assert "no tunable setting 'radius'" in capsys.readouterr().err
