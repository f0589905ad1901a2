"""A conditional score model of the porous-electrode PDE's uncertain solutions, and using it
as the prior of a sensor assimilation (issue 17; the original: Vandecasteele,
"Score-based generative models for uncertain PDE solutions", `ORIGIN_SYSTEMS.md` §2).

    python benchmarks/battery_sgm.py --quick     # <= 15 minutes on 2 CPU cores
    python benchmarks/battery_sgm.py             # the full configuration (an accelerator)

Data: 250 operating points (length scale, U0, F_right) x 100 porosity fields, steady
state by default (`--recipe` for the original's c at t = 100 s), c and phi each
standardised by one global mean/std. Model: `UNetScore` on the two fields, FiLM-
conditioned on the scaled operating point and time, VP-SDE (beta 0.001 -> 20), denoising
score matching, reverse-SDE sampling. Evaluation on held-out operating points (and the
article's U0 = 0, F_right = 25, length L/10): 1000 SGM samples against 1000 PDE solves
(sup |mean gap| / range of the PDE mean, band (2.5/97.5 %) gaps, band-width and
variance ratios, energy distance), the wall time of each, and the article's figure.

Beyond the original: noisy readings of c at 4 positions at the article's operating point;
the posterior of the whole (c, phi) profile sampled with the score model and the
toolkit's guidance (SDA Gaussian guidance, and SMC), against importance sampling over
20,000 porosity draws through the PDE: coverage of the 90 % bands, RMSE of the
posterior mean, seconds. Prints tables; saves `battery_sgm.png` and, with `--out`, the
datasets as netCDF.
"""

import os
import time

from _common import (
    FOLDER,
    OUTPUT_FILE,
    POSITIVE_INT,
    TRAINING_KINDS,
    Parser,
    add_config_arguments,
    check_unet,
    config_from,
    integer,
    machine_line,
)


CONFIGS = {
    "quick": dict(channels=(32, 64), time_dim=32, steps=2400, batch=256, lr=2e-3, ema=0.995,
                  sample_steps=100, held_out=10, samples=1000, trials=5, posterior_samples=500),
    "full": dict(channels=(64, 128, 128), time_dim=64, steps=60000, batch=1024, lr=2e-4,
                 ema=0.999, sample_steps=1000, held_out=20, samples=1000, trials=40,
                 posterior_samples=1000),
}  # fmt: skip
KINDS = dict(
    **TRAINING_KINDS,
    held_out=POSITIVE_INT,
    samples=integer(2),  # bands and variances of the samples
    trials=POSITIVE_INT,
    posterior_samples=integer(2),
)
CELLS = 100  # the electrode's grid (ElectrodeParameters)

PARSER = Parser(description=__doc__.splitlines()[0])
add_config_arguments(PARSER, CONFIGS, KINDS)
PARSER.add_argument("--recipe", action="store_true", help="c at t = 100 s (the original's data)")
PARSER.add_argument(
    "--plain", action="store_true",
    help="the original's normalisation (global means) instead of residuals from the "
    "mean-porosity solve",
)  # fmt: skip
PARSER.add_argument("--out", type=FOLDER, default=None, help="folder for the netCDF datasets")
PARSER.add_argument("--figure", type=OUTPUT_FILE, default="battery_sgm.png")


def parse_arguments():
    """The arguments and the configuration, checked before the imports below (seconds): a
    bad one is one line on stderr and exit code 2."""
    args = PARSER.parse_args()
    config = config_from(args, CONFIGS)
    check_unet(PARSER, config["channels"], CELLS, f"the {CELLS} cells")
    return args, config


if __name__ == "__main__":
    ARGS, CONFIG = parse_arguments()

import jax  # noqa: E402


jax.config.update("jax_enable_x64", True)  # the PDE needs float64 (see dynamics._electrode)
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import assimilax as ax  # noqa: E402
from assimilax.diffusion import (  # noqa: E402
    VPSDE,
    GaussianGuidance,
    GaussianResidual,
    UNetScore,
    euler_maruyama,
    posterior_score,
    score_function,
    smc_posterior,
)
from assimilax.dynamics import (  # noqa: E402
    ElectrodeParameters,
    electrode_solution,
    porosity_fields,
)
from assimilax.experiments import ElectrodeScaling, electrode_dataset  # noqa: E402


FIGURE_POINT = (1e-5, 0.0, 25.0)  # length L/10, U0, F_right: the article's figure
SENSORS = np.array([10, 35, 60, 85])  # cells where c is read
SENSOR_STD = 0.5  # mol/m^3 (the within-condition spread of c is ~2)


def pde_monte_carlo(key, point, num, params, time_):
    """`num` PDE solves at one operating point: `(num, 2, cells)` and seconds."""
    solve = jax.jit(
        jax.vmap(lambda e: electrode_solution(e, point[1], point[2], params, time=time_))
    )
    eps = porosity_fields(key, point[0], num, params)
    solve(eps).block_until_ready()  # compile
    start = time.perf_counter()
    eps = porosity_fields(key, point[0], num, params)
    out = solve(eps).block_until_ready()
    return np.asarray(out), time.perf_counter() - start


def energy_distance(a, b):
    """The energy distance between two samples `(n, d)` (in standardised units)."""
    dist = lambda u, v: np.sqrt(np.maximum(((u[:, None] - v[None]) ** 2).sum(-1), 0)).mean()
    return 2 * dist(a, b) - dist(a, a) - dist(b, b)


def compare(sgm, pde):
    """Scalar gaps between SGM and PDE samples of one field `(n, cells)`, at the cells
    where the PDE varies (the fixed end of c and the zero of phi left out)."""
    live = pde.std(0) > 1e-9 * np.abs(pde).max()
    sgm, pde = sgm[:, live], pde[:, live]
    span = np.ptp(pde.mean(0)) + 1e-300
    q = lambda a: np.quantile(a, [0.025, 0.975], axis=0)
    (lo_s, hi_s), (lo_p, hi_p) = q(sgm), q(pde)
    width = (hi_s - lo_s) / (hi_p - lo_p)
    return dict(
        mean_gap=float(np.max(np.abs(sgm.mean(0) - pde.mean(0))) / span),
        mean_gap_std=float(np.max(np.abs(sgm.mean(0) - pde.mean(0)) / pde.std(0))),
        band_gap=float(max(np.max(np.abs(lo_s - lo_p)), np.max(np.abs(hi_s - hi_p))) / span),
        width_ratio=float(np.mean(width)),
        variance_ratio=float(np.mean(sgm.var(0) / pde.var(0))),
    )


def train(config, states, cond, key):
    """A `UNetScore` on the two fields inside `GaussianResidual` (exact for the data's
    Gaussian fit; the network learns the departure and the conditioning)."""
    sde = VPSDE(beta_min=1e-3, beta_max=20.0, t_min=1e-4)
    unet = UNetScore(
        1, config["channels"], periodic=False, time_dim=config["time_dim"], cond_dim=3,
        fields=2, key=key,
    )  # fmt: skip
    flat = np.asarray(states, np.float64).reshape(len(states), -1)
    network = GaussianResidual(
        unet, sde, jnp.asarray(np.cov(flat.T), jnp.float32), jnp.asarray(flat.mean(0), jnp.float32)
    )
    schedule = optax.cosine_decay_schedule(config["lr"], config["steps"], alpha=1e-3)
    optimiser = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    start = time.perf_counter()
    result = ax.diffusion.fit(
        network,
        states,
        sde=sde,
        key=jr.fold_in(key, 1),
        steps=config["steps"],
        batch_size=config["batch"],
        optimiser=optimiser,
        cond=cond,
        progress=True,
        chunk_size=200,
        ema_decay=config["ema"],
    )
    seconds = time.perf_counter() - start
    params = sum(x.size for x in jax.tree.leaves(result.ema_network) if hasattr(x, "size"))
    print(
        f"trained {params:,} parameters, {config['steps']} steps in {seconds:.0f} s; "
        f"final loss {float(result.losses[-200:].mean()):.4f}"
    )
    return result.ema_network, sde


def sample(network, sde, cond, num, steps, key):
    """`num` SGM samples at one condition and the seconds they took (after a compile)."""
    score = score_function(network, sde, jnp.asarray(cond, jnp.float32))
    run = jax.jit(
        lambda k: euler_maruyama(
            sde,
            score,
            sde.prior_sample((num, 2, 100), key=k, dtype=jnp.float32),
            key=k,
            steps=steps,
        )
    )
    run(key).block_until_ready()
    start = time.perf_counter()
    out = run(jr.fold_in(key, 1)).block_until_ready()
    return np.asarray(out), time.perf_counter() - start


def pde_references(config, params, time_, key, prior=20000):
    """Everything the PDE gives (float64): the held-out operating points (the figure's
    first) with their Monte Carlo solves and seconds, and for the sensor study a prior
    sample, the truths and their noisy readings."""
    points = np.asarray(ax.dynamics.sample_conditions(key, config["held_out"], params))
    points = np.concatenate([np.asarray(FIGURE_POINT)[None], points])
    solves = [
        pde_monte_carlo(jr.fold_in(key, 100 + i), p, config["samples"], params, time_)
        for i, p in enumerate(points)
    ]
    prior_sample, _ = pde_monte_carlo(jr.fold_in(key, 1), FIGURE_POINT, prior, params, time_)
    truths, _ = pde_monte_carlo(jr.fold_in(key, 2), FIGURE_POINT, config["trials"], params, time_)
    noise = np.random.default_rng(0).standard_normal((len(truths), len(SENSORS)))
    readings = truths[:, 0, SENSORS] + SENSOR_STD * noise
    spread = tuple(prior_sample.std(0).mean(axis=1))  # the prior's std per field, over x
    return dict(
        points=points, solves=solves, prior=prior_sample, truths=truths, readings=readings,
        spread=spread,
    )  # fmt: skip


def offsets(refs, scaling):
    """The model's offsets at the held-out operating points and at the sensors' one."""
    refs["offsets"] = scaling.offset(refs["points"])
    refs["scales"] = scaling.scale(refs["points"])
    refs["sensor_offset"] = scaling.offset(np.asarray(FIGURE_POINT))[0]
    refs["sensor_scale"] = scaling.scale(np.asarray(FIGURE_POINT))[0]


def held_out(config, network, sde, scaling, refs, key):
    """SGM vs PDE Monte Carlo on the held-out operating points."""
    rows, figure = [], None
    for i, (point, (pde, sec_pde)) in enumerate(zip(refs["points"], refs["solves"], strict=True)):
        cond = scaling.conditions(*point)
        out, sec_sgm = sample(
            network, sde, cond, config["samples"], config["sample_steps"], jr.fold_in(key, i)
        )
        offset, scale = refs["offsets"][i], refs["scales"][i]
        c, phi = scaling.physical(out, offset, scale)
        flat = lambda a: np.asarray(a, np.float64).reshape(len(a), -1)
        row = dict(
            point=point,
            sec_pde=sec_pde,
            sec_sgm=sec_sgm,
            c=compare(c, pde[:, 0]),
            phi=compare(phi, pde[:, 1]),
            energy=energy_distance(flat(out), flat(scaling.standardise(pde, offset, scale))),
        )
        rows.append(row)
        if i == 0:
            figure = (c, phi, pde)
    return rows, figure


def print_held_out(rows):
    head = (
        f"{'length/L':>8} {'U0':>6} {'F':>5} | {'c mean':>7} {'c band':>7} {'c width':>7} "
        f"{'c var':>6} | {'phi mean':>8} {'phi band':>8} {'phi width':>9} {'phi var':>7} | "
        f"{'energy':>6} {'s SGM':>6} {'s PDE':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        ell, u0, f = r["point"]
        c, p = r["c"], r["phi"]
        print(
            f"{ell / 1e-4:>8.3f} {u0:>6.3f} {f:>5.1f} | "
            f"{c['mean_gap']:>7.2%} {c['band_gap']:>7.2%} "
            f"{c['width_ratio']:>7.3f} {c['variance_ratio']:>6.3f} | {p['mean_gap']:>8.2%} "
            f"{p['band_gap']:>8.2%} {p['width_ratio']:>9.3f} {p['variance_ratio']:>7.3f} | "
            f"{r['energy']:>6.3f} {r['sec_sgm']:>6.2f} {r['sec_pde']:>6.3f}"
        )
    mean = lambda f, k: np.mean([r[f][k] for r in rows])
    print(
        f"{'mean':>22} | {mean('c', 'mean_gap'):>7.2%} {mean('c', 'band_gap'):>7.2%} "
        f"{mean('c', 'width_ratio'):>7.3f} {mean('c', 'variance_ratio'):>6.3f} | "
        f"{mean('phi', 'mean_gap'):>8.2%} {mean('phi', 'band_gap'):>8.2%} "
        f"{mean('phi', 'width_ratio'):>9.3f} {mean('phi', 'variance_ratio'):>7.3f} |"
    )
    print(
        "mean/band: sup over x of the gap / range of the PDE mean (targets 2 % and, for the "
        "band width, a ratio within 10 % of 1); energy distance in standardised units; "
        "seconds per 1000 samples (SGM) and per 1000 PDE solves."
    )


def weighted_quantile(values, weights, q):
    order = np.argsort(values, axis=0)
    v = np.take_along_axis(values, order, 0)
    w = np.cumsum(weights[order], axis=0)
    w = w / w[-1]
    idx = np.argmax(w >= q, axis=0)
    return np.take_along_axis(v, idx[None], 0)[0]


def sensor_posterior(config, network, sde, scaling, refs, key):
    """Posterior of (c, phi) from 4 noisy c readings at the figure's operating point:
    importance sampling through the PDE (reference) vs guided SGM sampling."""
    ell, u0, f = FIGURE_POINT
    pde, truths, prior = refs["prior"], refs["truths"], len(refs["prior"])
    cond = jnp.asarray(scaling.conditions(ell, u0, f), jnp.float32)
    score = score_function(network, sde, cond)
    offset, scale = refs["sensor_offset"], refs["sensor_scale"]
    std = SENSOR_STD / scale[0, 0]
    observation = ax.observations.Subsample((2, 100), jnp.asarray(SENSORS), noise_std=std)
    results = {name: dict(cover=[], rmse=[], seconds=0.0) for name in ("reference", "SDA", "SMC")}
    num = config["posterior_samples"]

    @jax.jit
    def sda(y, k):
        guided = posterior_score(sde, score, GaussianGuidance(observation, y))
        x0 = sde.prior_sample((num, 2, 100), key=k, dtype=jnp.float32)
        return euler_maruyama(sde, guided, x0, key=k, steps=config["sample_steps"])

    @jax.jit
    def smc(y, k):
        x0 = sde.prior_sample((num, 2, 100), key=k, dtype=jnp.float32)
        return smc_posterior(
            sde, score, observation, y, None, x0, key=k, steps=config["sample_steps"]
        )

    for i, (truth, y_phys) in enumerate(zip(truths, refs["readings"], strict=True)):
        y = jnp.asarray((y_phys - offset[0, SENSORS]) / scale[0, 0], jnp.float32)
        k = jr.fold_in(key, i)
        start = time.perf_counter()
        log_w = -0.5 * (((pde[:, 0, SENSORS] - y_phys) / SENSOR_STD) ** 2).sum(1)
        w = np.exp(log_w - log_w.max())
        estimates = {"reference": (pde, w / w.sum(), time.perf_counter() - start)}
        for name, run in (("SDA", sda), ("SMC", smc)):
            if i == 0:
                jax.block_until_ready(run(y, k))  # compile
            start = time.perf_counter()
            out = jax.block_until_ready(run(y, k))
            seconds = time.perf_counter() - start
            x, log_wts = out if name == "SMC" else (out, jnp.zeros(num))
            wts = np.exp(np.asarray(log_wts) - np.max(np.asarray(log_wts)))
            c, phi = scaling.physical(np.asarray(x), offset, scale)
            estimates[name] = (np.stack([c, phi], 1), wts / wts.sum(), seconds)
        for name, (samples, w, seconds) in estimates.items():
            lo = weighted_quantile(samples, w, 0.05)
            hi = weighted_quantile(samples, w, 0.95)
            mean = np.tensordot(w, samples, 1)
            live = np.ones((2, 100), bool)
            live[0, -1] = live[1, 0] = False  # c fixed at the right, phi zero at the left
            inside = (truth >= lo) & (truth <= hi)
            results[name]["cover"].append(inside[live].mean())
            err = (mean - truth) / np.array(refs["spread"])[:, None]
            results[name]["rmse"].append(np.sqrt((err[live] ** 2).mean()))
            results[name]["seconds"] += seconds
    print(
        f"\nsensor posterior: c read at cells {SENSORS.tolist()} with std {SENSOR_STD} mol/m3, "
        f"{len(truths)} truths at length L/10, U0 0, F_right 25; {num} samples each "
        f"(reference: importance sampling over {prior} PDE solves)"
    )
    print(
        f"{'method':<10} {'90% coverage':>12} {'RMSE / prior std':>17} {'rel. to ref':>11} "
        f"{'s/trial':>8}"
    )
    ref = np.mean(results["reference"]["rmse"])
    for name, r in results.items():
        rmse = np.mean(r["rmse"])
        print(
            f"{name:<10} {np.mean(r['cover']):>12.3f} {rmse:>17.4f} {rmse / ref - 1:>+10.1%} "
            f"{r['seconds'] / len(truths):>8.3f}"
        )
    return results


def plot(figure, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c, phi, pde = figure
    x = np.asarray(ElectrodeParameters().centres()) * 1e6
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax_, sgm, ref, name in (
        (axes[0], c, pde[:, 0], "c [mol/m3]"),
        (axes[1], phi * 1e3, pde[:, 1] * 1e3, "phi [mV]"),
    ):
        for data, colour, label in ((ref, "k", "PDE"), (sgm, "C1", "SGM")):
            lo, hi = np.quantile(data, [0.025, 0.975], axis=0)
            ax_.fill_between(x, lo, hi, color=colour, alpha=0.2)
            ax_.plot(x, data.mean(0), color=colour, label=f"{label} mean, 95 % band")
        ax_.set_xlabel("x [um]")
        ax_.set_ylabel(name)
    axes[0].legend()
    fig.suptitle("U0 = 0, F_right = 25, length L/10: 1000 SGM samples vs 1000 PDE solves")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(args, config):
    print(machine_line())
    print(
        f"config: {'quick' if args.quick else 'full'} {config}; data: "
        f"{'c at t = 100 s (recipe)' if args.recipe else 'steady state'}; model states: "
        f"{'global standardisation' if args.plain else 'residuals from the mean-porosity solve'}"
    )
    params, time_ = ElectrodeParameters(), (100.0 if args.recipe else None)
    key = jr.key(0)
    start = time.perf_counter()
    ds = electrode_dataset(jr.fold_in(key, 0), 250, 100, time=time_, params=params)
    print(f"data: {ds.sizes['sample']} PDE solves in {time.perf_counter() - start:.1f} s")
    if args.out:
        ax.write_netcdf(ds, os.path.join(args.out, "electrode_train.nc"))
    scaling = ElectrodeScaling.fit(ds, params, residual=not args.plain)
    states = scaling.states(ds).astype(np.float32)
    cond = scaling.dataset_conditions(ds).astype(np.float32)
    refs = pde_references(config, params, time_, jr.fold_in(key, 2))
    offsets(refs, scaling)
    # The score model in float32 (the PDE above needed float64).
    jax.config.update("jax_enable_x64", False)
    key = jr.key(1)
    network, sde = train(config, jnp.asarray(states), jnp.asarray(cond), jr.fold_in(key, 1))
    rows, figure = held_out(config, network, sde, scaling, refs, jr.fold_in(key, 2))
    print_held_out(rows)
    sensor_posterior(config, network, sde, scaling, refs, jr.fold_in(key, 3))
    plot(figure, args.figure)
    print(f"figure: {args.figure}")


if __name__ == "__main__":
    main(ARGS, CONFIG)
