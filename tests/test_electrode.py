"""The porous-electrode PDE (issue 17): the finite-volume operator against a manufactured
solution, steady state = long-time limit, conservation, and the porosity GP."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from assimilax.dynamics import (
    ElectrodeDynamics,
    ElectrodeParameters,
    electrode_solution,
    gp_covariance,
    porosity_fields,
    sample_conditions,
)
from assimilax.dynamics._electrode import (
    diffusion_operator,
    electrode_potential,
    electrode_source,
    tridiagonal_solve,
)


def _manufactured(cells, dirichlet_last):
    r"""$-(a u')' + r u = f$ on [0, 1], $a = 1 + x^2/2$, $r = 2$, $u = \cos(\pi x / 2)$:
    $u'(0) = 0$, and at the right the flux $a u'(1)$ or the value of the last cell."""
    dx = 1.0 / cells
    x = (jnp.arange(cells, dtype=float) + 0.5) * dx
    a = 1 + 0.5 * x**2
    u = jnp.cos(jnp.pi * x / 2)
    du = lambda x: -(jnp.pi / 2) * jnp.sin(jnp.pi * x / 2)
    flux_derivative = -(jnp.pi / 2) * (
        x * jnp.sin(jnp.pi * x / 2) + (1 + 0.5 * x**2) * (jnp.pi / 2) * jnp.cos(jnp.pi * x / 2)
    )
    f = -flux_derivative + 2 * u
    lower, diagonal, upper = diffusion_operator(a, dirichlet_last=dirichlet_last)
    rhs = f * dx**2
    if dirichlet_last:
        reaction = jnp.full(cells, 2 * dx**2).at[-1].set(0.0)
        rhs = rhs.at[-1].set(u[-1])
    else:
        reaction = jnp.full(cells, 2 * dx**2)
        rhs = rhs.at[-1].add(dx * 1.5 * du(1.0))
    out = tridiagonal_solve(lower, diagonal + reaction, upper, rhs)
    return float(jnp.max(jnp.abs(out - u)))


@pytest.mark.parametrize("dirichlet_last", [False, True], ids=["flux", "dirichlet"])
def test_finite_volumes_converge_at_second_order(dirichlet_last):
    sizes = np.array([25, 50, 100, 200, 400])
    errors = np.array([_manufactured(n, dirichlet_last) for n in sizes])
    order = -np.polyfit(np.log(sizes), np.log(errors), 1)[0]
    assert 1.9 < order < 2.2, (order, errors)


def test_steady_state_is_the_long_time_limit_and_conserves():
    params = ElectrodeParameters()
    eps = porosity_fields(jr.key(0), 1e-5, 2, params)[0]
    u0, f_right = 0.05, 30.0
    steady = electrode_solution(eps, u0, f_right, params)
    dyn = ElectrodeDynamics(eps, u0, f_right, params, dt=20.0)
    c = dyn.step(jnp.full(params.cells, params.c_right), 0.0, 20000.0, key=None)
    assert np.allclose(c, steady[0], rtol=0, atol=1e-9)
    # The recipe's t = 100 s is far from steady (about a third of the way at x = 0).
    early = electrode_solution(eps, u0, f_right, params, time=100.0)
    ratio = (early[0, 0] - params.c_right) / (steady[0, 0] - params.c_right)
    assert 0.1 < ratio < 0.6, ratio
    # Potential: the total reaction current leaves through the right face.
    phi = electrode_potential(eps, u0, f_right, params, shift=False)
    assert np.allclose(phi - phi[0], steady[1], atol=1e-15)
    a_s = params.surface_area * (1 - eps)
    solid = params.solid_slope * params.centres()
    current = jnp.sum(a_s * params.rate * (solid - phi - u0)) * params.dx
    assert np.isclose(current, -f_right, rtol=1e-10)
    # Concentration: the source in cells 0..N-2 leaves through the last interior face.
    source = electrode_source(eps, steady[1], u0, params)
    d = params.diffusivity0 * eps**params.bruggeman
    d_face = 2 * d[-2] * d[-1] / (d[-2] + d[-1])
    outflow = -d_face * (steady[0, -1] - steady[0, -2]) / params.dx
    assert np.isclose(jnp.sum(source[:-1]) * params.dx, outflow, rtol=1e-9)


def test_porosity_gp_covariance_and_conditions():
    params = ElectrodeParameters()
    ell = params.length / 10
    eps = porosity_fields(jr.key(1), ell, 40000, params)
    assert float(eps.min()) > 0.2 and float(eps.max()) < 0.5
    g = jnp.log((eps - 0.2) / (0.5 - eps))  # the inverse of 0.2 + 0.3 sigmoid
    empirical = jnp.cov(g.T)
    assert float(jnp.max(jnp.abs(empirical - gp_covariance(ell, params)))) < 0.05
    cond = sample_conditions(jr.key(2), 20000, params)
    log_ell = jnp.log(cond[:, 0] / params.length)
    assert np.allclose([log_ell.min(), log_ell.max()], np.log([1 / 50, 1 / 5]), atol=0.01)
    assert abs(float(jnp.mean(cond[:, 1]))) < 0.01 and abs(float(jnp.mean(cond[:, 2])) - 25) < 0.5


def test_electrode_bad_input():
    with pytest.raises(ValueError, match="eps"):
        electrode_solution(jnp.ones(10), 0.0, 1.0)
    with pytest.raises(ValueError, match="dt"):
        ElectrodeDynamics(jnp.full(100, 0.3), 0.0, 1.0, dt=0.0)
    out = jax.vmap(lambda e: electrode_solution(e, 0.0, 25.0))(jnp.full((3, 100), 0.3))
    assert out.shape == (3, 2, 100) and bool(jnp.all(jnp.isfinite(out)))


def test_electrode_dataset_and_scaling_round_trip(tmp_path):
    import assimilax as ax
    from assimilax.experiments import ElectrodeScaling, electrode_dataset

    points = [[1e-5, 0.0, 25.0], [3e-6, -0.1, 5.0]]
    ds = electrode_dataset(jr.key(0), fields=4, operating_points=points)
    assert ds.sizes == {"sample": 8, "x": 100}
    direct = electrode_solution(jnp.asarray(ds["eps"].values[5]), -0.1, 5.0)
    assert np.allclose(ds["c"].values[5], direct[0]) and np.allclose(ds["phi"].values[5], direct[1])
    back = ax.read_netcdf(ax.write_netcdf(ds, tmp_path / "electrode.nc"))
    assert np.array_equal(back["c"].values, ds["c"].values)
    for residual in (False, True):
        scaling = ElectrodeScaling.fit(ds, residual=residual)
        states = scaling.states(ds)
        assert np.allclose(states.std(axis=(0, 2)), 1)
        if not residual:
            assert np.allclose(states.mean(axis=(0, 2)), 0, atol=1e-9)
        rows = np.repeat(np.asarray(points), 4, axis=0)
        c, phi = scaling.physical(states, scaling.offset(rows), scaling.scale(rows))
        assert np.allclose(c, ds["c"].values) and np.allclose(phi, ds["phi"].values)
    # The residual from the mean-porosity solve is much smaller than the spread.
    assert scaling.std[0] < 0.5 * ElectrodeScaling.fit(ds, residual=False).std[0]
    cond = scaling.dataset_conditions(ds)
    assert np.allclose(cond[0], [np.log(5) / np.log(10), 0.5, 0.5]) and cond.shape == (8, 3)
    with pytest.raises(ValueError, match="operating_points"):
        electrode_dataset(jr.key(0), fields=2, operating_points=[1.0, 2.0])
