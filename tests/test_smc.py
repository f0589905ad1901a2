"""The sequential Monte Carlo diffusion sampler is exact in practice (issue 27): exact
moments on a Gaussian problem, and Kolmogorov–Smirnov distances below 0.05 at 10^4
particles, with its defaults, against numerical quadrature on twelve posteriors (1-D and
2-D; mixture priors with unequal weights and widths; operators x^2, x^3, |x|, arctan,
sin; weak and informative observations; observations in the prior's tail), where plain
guidance is biased; the distance shrinks as the particles grow."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from assimilax.diffusion import VPSDE, DampedGuidance, euler_maruyama, smc_posterior
from assimilax.observations import AbstractObservation, Identity


SDE = VPSDE()
N = 10_000


class _Function(AbstractObservation):
    """`y = fn(x) + noise`: any operator, for the quadrature cases."""

    base: AbstractObservation
    fn: object = eqx.field(static=True)

    @property
    def noise(self):
        return self.base.noise

    def apply(self, x):
        return jnp.atleast_1d(self.fn(x)).reshape(-1)

    def locations(self):
        return None


def mixture(means, weights, stds):
    """Log-density of a Gaussian mixture (diagonal components, `stds[k]` per component)
    diffused to time t (exact), and its score."""
    means, weights = jnp.asarray(means, float), jnp.asarray(weights, float)
    stds = jnp.asarray(stds, float)

    def log_density(x, t):
        a, s = SDE.alpha(t), SDE.sigma(t)
        var = a**2 * stds[:, None] ** 2 + s**2
        sq = (x[None] - a * means) ** 2 / var
        terms = jnp.sum(sq + jnp.log(2 * jnp.pi * var), axis=1)
        return jax.nn.logsumexp(jnp.log(weights) - 0.5 * terms)

    return log_density, jax.grad(log_density)


# name: (component means, weights, stds, operator, noise std, y)
CASES = {
    "x2-issue": ([[-1.0], [2.0]], [0.3, 0.7], [0.5, 1.0], lambda x: x**2, 0.5, [1.5]),
    "x3": ([[-1.0], [2.0]], [0.3, 0.7], [0.5, 1.0], lambda x: x**3, 1.0, [2.0]),
    "abs": ([[-2.0], [2.0]], [0.5, 0.5], [0.6, 0.6], jnp.abs, 0.3, [1.8]),
    "arctan-informative": ([[-2.0], [1.0]], [0.4, 0.6], [0.6, 0.6], jnp.arctan, 0.05, [0.9]),
    "sin-multimodal": ([[0.0]], [1.0], [2.0], jnp.sin, 0.2, [0.5]),
    "x2-weak": ([[-1.0], [2.0]], [0.3, 0.7], [0.5, 1.0], lambda x: x**2, 3.0, [1.0]),
    "linear-tail": ([[0.0], [3.0]], [0.7, 0.3], [0.5, 0.3], lambda x: x, 0.2, [4.0]),
    "x2-unequal-widths": ([[-3.0], [1.0]], [0.2, 0.8], [0.2, 1.5], lambda x: x**2, 0.5, [8.0]),
    "x3-tail": ([[-1.0], [2.0]], [0.3, 0.7], [0.5, 1.0], lambda x: x**3, 0.5, [-5.0]),
    "2d-x1sq-plus-x2": (
        [[-1.0, 0.5], [1.5, -1.0]], [0.4, 0.6], [0.6, 0.8],
        lambda x: x[0] ** 2 + x[1], 0.5, [2.0],
    ),
    "2d-x1sq": (
        [[-2.0, 1.0], [1.5, -1.0]], [0.4, 0.6], [0.6, 0.6], lambda x: x[0] ** 2, 0.7, [2.0],
    ),
    "2d-arctan-cube": (
        [[-1.0, 1.0], [1.0, -1.0]], [0.5, 0.5], [0.7, 0.7],
        lambda x: jnp.stack([jnp.arctan(x[0]), x[1] ** 3]), 0.2, [0.5, 0.3],
    ),
}  # fmt: skip


def ks_distance(samples, weights, grid, cdf):
    order = np.argsort(samples)
    ecdf = np.cumsum(weights[order])
    return float(np.max(np.abs(ecdf - np.interp(samples[order], grid, cdf))))


def _problem(name):
    """The prior's score, the operator, y, and the posterior's marginal CDFs on a grid
    (quadrature of prior x likelihood)."""
    means, weights, stds, fn, std, y = CASES[name]
    d, y = len(means[0]), jnp.asarray(y, float)
    log_prior, score = mixture(means, weights, stds)
    obs = _Function(Identity(y.shape[0], noise_std=std), (lambda x: fn(x[0])) if d == 1 else fn)
    axis = np.linspace(-8, 8, 4001 if d == 1 else 321)
    grids = np.meshgrid(*[axis] * d, indexing="ij")
    points = jnp.asarray(np.stack([g.ravel() for g in grids], axis=1))
    log_post = jax.vmap(lambda p: log_prior(p, SDE.t_min) + obs.log_likelihood(y, p))(points)
    density = np.exp(np.asarray(log_post) - float(log_post.max())).reshape(grids[0].shape)
    cdfs = []
    for j in range(d):
        marginal = density.sum(axis=tuple(k for k in range(d) if k != j))
        cdfs.append((np.cumsum(marginal) - 0.5 * marginal) / marginal.sum())  # midpoints
    return score, obs, y, d, axis, cdfs


def _ks(name, n=N, seed=0, **options):
    """The largest marginal KS distance of `smc_posterior`'s weighted samples."""
    score, obs, y, d, axis, cdfs = _problem(name)
    x0 = SDE.prior_sample((n, d), key=jr.key(seed))
    xs, log_w = smc_posterior(SDE, score, obs, y, None, x0, key=jr.key(seed + 100), **options)
    w, xs = np.exp(np.asarray(log_w)), np.asarray(xs)
    return max(ks_distance(xs[:, j], w, axis, cdfs[j]) for j in range(d))


def test_gaussian_posterior_moments_are_exact():
    score = lambda x, t: -x / (SDE.alpha(t) ** 2 + SDE.sigma(t) ** 2)  # prior N(0, 1)
    obs, y = Identity(1, noise_std=0.1), jnp.array([1.5])
    x0 = SDE.prior_sample((N, 1), key=jr.key(0))
    xs, log_w = smc_posterior(SDE, score, obs, y, None, x0, key=jr.key(1), steps=100)
    w, x = np.exp(np.asarray(log_w)), np.asarray(xs[:, 0])
    mean = np.sum(w * x)
    var = np.sum(w * (x - mean) ** 2)
    exact_var = 1 / (1 + 1 / 0.1**2)
    assert abs(mean - exact_var * 1.5 / 0.1**2) < 3 * np.sqrt(exact_var / N) * 3
    assert abs(var / exact_var - 1) < 0.05


# Two cases in the default run (the issue's, and a steep operator in the prior's tail
# that the untempered twist lost entirely: KS 1.0); all twelve on three seeds in the slow.
@pytest.mark.parametrize("name", ["x2-issue", "x3-tail"])
def test_defaults_match_quadrature(name):
    assert _ks(name) < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", list(CASES))
def test_defaults_match_quadrature_on_every_case(name, seed):
    assert _ks(name, seed=seed) < 0.05


@pytest.mark.slow
def test_error_shrinks_as_particles_grow():
    # measured (mean of 3 seeds): 0.022 at 10^3, 0.0070 at 10^4, 0.0048 at 10^5
    small = np.mean([_ks("x2-issue", n=1_000, seed=s) for s in range(3)])
    large = np.mean([_ks("x2-issue", n=30_000, seed=s) for s in range(3)])
    assert large < 0.5 * small, (small, large)


def test_untempered_twist_and_plain_guidance_are_biased():
    """What the defaults fix: without tempering the twist leads the particles into the
    wrong mode, and the damped likelihood score is biased on the issue's case."""
    assert _ks("x3-tail", n=2_000, temper=0.0) > 0.5  # measured 1.0
    score, obs, y, _, axis, cdfs = _problem("x2-issue")
    x0 = SDE.prior_sample((2_000, 1), key=jr.key(0))
    guidance = DampedGuidance(obs, y, None)
    guided = lambda x, t: score(x, t) + guidance(x, t, SDE, score)
    xd = euler_maruyama(SDE, guided, x0, key=jr.key(2), steps=200)
    damped = ks_distance(np.asarray(xd[:, 0]), np.full(2_000, 1 / 2_000), axis, cdfs[0])
    assert damped > 0.1, damped


def test_score_filters_check_their_sampler():
    from assimilax.filters import EnsembleScoreFilter

    with pytest.raises(ValueError, match="sampler"):
        EnsembleScoreFilter(sampler="magic")
    with pytest.raises(ValueError, match="particles"):
        EnsembleScoreFilter(sampler="smc", particles=1)
    assert EnsembleScoreFilter(sampler="smc", particles=500).particles == 500
