"""dynamax and assimilax side by side: the Kalman filter's log-likelihood of one
linear-Gaussian model.

A random stable model (state and observations of dimension `--dim`, dense Q and R),
`--steps` observations simulated once; dynamax's `lgssm_filter` and assimilax's
`KalmanFilter` (through `assimilax.log_likelihood`) compute the marginal
log-likelihood of the same observations. The table gives both values, their relative
difference, and seconds per evaluation of each (compiled, the median of `--repeats`
runs; compilation printed separately) and their ratio.

dynamax's convention puts its initial state at the first observation; assimilax
predicts from its prior at t0 to the first observation, so assimilax's prior is N(m,
P) and dynamax's initial state N(A m, A P A^T + Q): the same model.

    pip install -e ".[bench]" && pip install --force-reinstall --no-deps tfp-nightly
    python benchmarks/dynamax_side_by_side.py       # d = 10, 10^4 steps, 10 s

(dynamax imports TensorFlow Probability's JAX substrate; the released 0.25 fails to
import on jax >= 0.5, the nightly works.)
"""

import statistics
import time

from _common import POSITIVE_INT, SEED, Parser, machine_line, require


PARSER = Parser(description=__doc__.splitlines()[0])
PARSER.add_argument("--dim", type=POSITIVE_INT, default=10, help="state and observation size")
PARSER.add_argument("--steps", type=POSITIVE_INT, default=10_000, help="observations")
PARSER.add_argument("--repeats", type=POSITIVE_INT, default=5, help="timed runs of each")
PARSER.add_argument("--seed", type=SEED, default=0, help="random seed of the model and data")


def model(d: int, steps: int, seed: int):
    """A random stable linear-Gaussian model and `steps` observations of it (NumPy)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a = q @ np.diag(rng.uniform(0.5, 0.95, d)) @ q.T  # stable, non-diagonal
    c = rng.normal(size=(d, d)) / np.sqrt(d)
    lq, lr = rng.normal(size=(d, d)) / np.sqrt(d), rng.normal(size=(d, d)) / np.sqrt(d)
    qcov, rcov = 0.1 * np.eye(d) + lq @ lq.T, 0.5 * np.eye(d) + lr @ lr.T
    m0, p0 = rng.normal(size=d), np.eye(d)
    x = rng.multivariate_normal(m0, p0)
    ys = np.empty((steps, d))
    for k in range(steps):
        x = a @ x + rng.multivariate_normal(np.zeros(d), qcov)
        ys[k] = c @ x + rng.multivariate_normal(np.zeros(d), rcov)
    return a, c, qcov, rcov, m0, p0, ys


def timed(fn, repeats):
    """(compile + first run seconds, median seconds of `repeats` further runs, value)."""
    import jax

    start = time.perf_counter()
    value = jax.block_until_ready(fn())
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - start)
    return first, statistics.median(runs), float(value)


def main():
    args = PARSER.parse_args()
    require(PARSER, "dynamax")
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import jax.random as jr
    from dynamax.linear_gaussian_ssm import LinearGaussianSSM, lgssm_filter

    import assimilax as ax
    from assimilax.dynamics import DiscreteLinearDynamics
    from assimilax.filters import KalmanFilter
    from assimilax.observations import LinearObservation

    a, c, qcov, rcov, m0, p0, ys = model(args.dim, args.steps, args.seed)
    d = args.dim
    ys_j = jnp.asarray(ys)

    # dynamax: initial state at the first observation = assimilax's prediction to it.
    lgssm = LinearGaussianSSM(d, d)
    params, _ = lgssm.initialize(
        jr.key(0),
        initial_mean=jnp.asarray(a @ m0),
        initial_covariance=jnp.asarray(a @ p0 @ a.T + qcov),
        dynamics_weights=jnp.asarray(a),
        dynamics_covariance=jnp.asarray(qcov),
        emission_weights=jnp.asarray(c),
        emission_covariance=jnp.asarray(rcov),
    )
    theirs = jax.jit(lambda y: lgssm_filter(params, y).marginal_loglik)

    # assimilax: the same model as a discrete linear dynamics, unit time steps.
    dyn = DiscreteLinearDynamics(jnp.asarray(a), jnp.asarray(qcov))
    obs = LinearObservation(jnp.asarray(c), noise_covariance=jnp.asarray(rcov))
    times = jnp.arange(1.0, args.steps + 1)
    series = ax.ObservationSeries(obs, times, ys_j, jnp.ones(ys.shape, bool))
    prior = ax.GaussianBelief(jnp.asarray(m0), jnp.asarray(p0))
    ours = jax.jit(
        lambda y: ax.log_likelihood(
            KalmanFilter(), dyn, ax.ObservationSeries(obs, times, y, series.mask), prior,
            key=jr.key(0),
        )
    )  # fmt: skip

    print(machine_line())
    print(f"d = {d}, {args.steps} observations, float64, median of {args.repeats} runs")
    rows = {"dynamax": timed(lambda: theirs(ys_j), args.repeats),
            "assimilax": timed(lambda: ours(ys_j), args.repeats)}  # fmt: skip
    ref = rows["dynamax"][2]
    print(f"{'library':<10} {'log-likelihood':>22} {'rel. diff':>10} {'first (s)':>10} "
          f"{'run (s)':>9} {'steps/s':>10}")  # fmt: skip
    for name, (first, run, value) in rows.items():
        diff = abs(value / ref - 1)
        print(f"{name:<10} {value:>22.12f} {diff:>10.1e} {first:>10.2f} {run:>9.4f} "
              f"{args.steps / run:>10.0f}")  # fmt: skip
    ratio = rows["assimilax"][1] / rows["dynamax"][1]
    print(f"assimilax / dynamax run time: {ratio:.2f}")


if __name__ == "__main__":
    main()
