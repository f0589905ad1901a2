"""Diffusion with a geometric-Brownian-motion forward process for positive series, against
VE and VP baselines, judged by the stylized facts of returns (issue 18; the original:
Kim, Choi & Kim 2025, arXiv 2507.19003, `ORIGIN_SYSTEMS.md` §3).

    python benchmarks/gbm_diffusion.py --quick     # <= 15 minutes on 2 CPU cores
    python benchmarks/gbm_diffusion.py             # the full configuration (an accelerator)

Data: the daily S&P 500 (adjusted close, 1999-2018) that the `arch` package ships, cut into
overlapping windows of `length + 1` prices. Models (one `UNetScore` each, the same size
and training): GBM = `ScheduledVESDE` on standardised log-prices (`LogTransform("price")`)
with the exponential, linear-in-variance and cosine volatility schedules (sigma 0.01 -> 1);
VE = the same SDEs on standardised log-returns; VP on log-returns. Sampling: predictor-
corrector (reverse Euler + one Langevin step, snr 0.2) from the paper's N(0, V(1)) ("paper"
rows) and from the forward marginal of a Gaussian fit to the data ("match" rows: with
sigma_max = 1 the forward process ends at variance 1.11, not 0.11); prices back through the
transform (positive by construction), differenced to log-returns.

Stylized facts of the pooled generated log-returns against the data's windows: the tail
exponent of |r| (power-law MLE, xmin by KS), the ACF of |r| (decay exponent; share of lags
1-50 inside the data's 95 % window-bootstrap band), the leverage curve (share inside the
band), the mean |ACF of r| at lags 1-10, the coarse-fine volatility asymmetry, and the
gain/loss first-passage modes. Prints the table; saves `gbm_diffusion.png`.
"""

import time

from _common import (
    OUTPUT_FILE,
    POSITIVE_INT,
    TRAINING_KINDS,
    Parser,
    add_config_arguments,
    check_unet,
    choice,
    config_from,
    integer,
    listing,
    machine_line,
    require,
)


CONFIGS = {
    "quick": dict(length=128, stride=4, channels=(16, 32), time_dim=32, steps=1200, batch=64,
                  lr=2e-3, ema=0.995, sample_steps=300, samples=200),
    "full": dict(length=512, stride=8, channels=(32, 64, 128), time_dim=64, steps=40000,
                 batch=64, lr=1e-3, ema=0.999, sample_steps=2000, samples=400),
}  # fmt: skip
KINDS = dict(
    length=integer(51),  # the ACF and leverage lags reach 50
    stride=POSITIVE_INT,
    **TRAINING_KINDS,
    samples=integer(2),  # the tail exponent needs 100 returns
)
SCHEDULES = ("exponential", "linear", "cosine")
MODELS = [("GBM", s) for s in SCHEDULES] + [("VE", s) for s in SCHEDULES] + [("VP", "linear")]

PARSER = Parser(description=__doc__.splitlines()[0])
add_config_arguments(PARSER, CONFIGS, KINDS)
PARSER.add_argument(
    "--models",
    type=listing(choice(*(f"{name}:{schedule}" for name, schedule in MODELS))),
    default=None,
    help="e.g. GBM:exponential,VE:cosine,VP:linear (default: all)",
)
PARSER.add_argument("--figure", type=OUTPUT_FILE, default="gbm_diffusion.png")


def parse_arguments():
    """The arguments and the configuration, checked before the imports below (seconds): a
    bad one is one line on stderr and exit code 2."""
    args = PARSER.parse_args()
    config = config_from(args, CONFIGS)
    check_unet(PARSER, config["channels"], config["length"], "the length (--set length)")
    require(PARSER, "arch", "finance")
    return args, config


if __name__ == "__main__":
    ARGS, CONFIG = parse_arguments()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from assimilax import stylized  # noqa: E402
from assimilax.diffusion import (  # noqa: E402
    VPSDE,
    LogTransform,
    ScheduledVESDE,
    UNetScore,
    fit,
    predictor_corrector,
    score_function,
)
from assimilax.experiments import market_prices, price_windows  # noqa: E402


LAGS = np.arange(1, 51)
THETA = 0.05  # gain/loss threshold on the cumulative log-return


def model(name, schedule):
    """The forward SDE and the data transform of one model."""
    if name == "VP":
        return VPSDE(beta_min=0.1, beta_max=20.0), "return"
    return ScheduledVESDE(schedule, 0.01, 1.0), ("price" if name == "GBM" else "return")


def train(config, sde, states, key):
    """A `UNetScore` trained on `states` `(n, length)`; returns it and the seconds."""
    network = UNetScore(1, config["channels"], periodic=False, time_dim=config["time_dim"], key=key)
    schedule = optax.cosine_decay_schedule(config["lr"], config["steps"], alpha=1e-2)
    optimiser = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    start = time.perf_counter()
    result = fit(
        network, jnp.asarray(states, jnp.float32), sde=sde, key=jr.fold_in(key, 1),
        steps=config["steps"], batch_size=config["batch"], optimiser=optimiser,
        ema_decay=config["ema"], chunk_size=100, progress=True,
    )  # fmt: skip
    return result.ema_network, time.perf_counter() - start


def start_points(sde, states, num, prior, key):
    """Where the reverse process starts: the paper's N(0, V(T) I) (`"paper"`), or the
    forward marginal at T of a Gaussian fit to the data, N(m, C + sigma(T)^2 I)
    (`"matched"`; with sigma_max = 1 the forward process never reaches N(0, V(T)):
    V(1) = 0.11 against a data variance of 1)."""
    shape = (num, states.shape[1])
    if prior == "paper":
        return sde.prior_sample(shape, key=key, dtype=jnp.float32)
    t_max = jnp.asarray(sde.t_max)
    alpha, sigma = float(sde.alpha(t_max)), float(sde.sigma(t_max))
    cov = alpha**2 * np.cov(states.T) + sigma**2 * np.eye(shape[1])
    z = np.asarray(jr.normal(key, shape, jnp.float64))
    x = alpha * states.mean(0) + z @ np.linalg.cholesky(cov).T
    return jnp.asarray(x, jnp.float32)


def sample(config, sde, network, x_init, key):
    """Predictor-corrector from `x_init`; returns the samples and the seconds."""
    score = score_function(network, sde)
    start = time.perf_counter()
    out = predictor_corrector(
        sde, score, x_init, key=key, steps=config["sample_steps"], snr=0.2
    ).block_until_ready()
    return np.asarray(out, np.float64), time.perf_counter() - start


def run_model(config, name, schedule, windows, key):
    """Train one model on the price windows and sample it (VE models from both starts):
    `[(label, facts, extras)]`."""
    sde, kind = model(name, schedule)
    transform = LogTransform.fit(kind, windows)
    states = transform(windows)
    network, seconds_train = train(config, sde, states, key)
    rows = []
    # VP's own prior is its forward marginal; the VE ones start from both.
    for prior in ("matched",) if name == "VP" else ("paper", "matched"):
        x_init = start_points(sde, states, config["samples"], prior, jr.fold_in(key, 100))
        out, seconds = sample(config, sde, network, x_init, jr.fold_in(key, 200))
        prices = transform.inverse(out)
        extra = dict(min_price=float(prices.min()), train=seconds_train, sample=seconds)
        label = f"{name} {schedule[:3]}" + ("" if name == "VP" else f" {prior[:5]}")
        rows.append((label, facts(transform.log_returns(out)), extra))
    return rows


def facts(r):
    """The stylized facts of log-return windows `(n, L)`."""
    acf_abs = stylized.autocorrelation(r, LAGS, absolute=True)
    _, asymmetry = stylized.coarse_fine_volatility(r, np.arange(1, 6))
    passage = stylized.gain_loss_asymmetry(r, theta=THETA, horizon=min(100, r.shape[1] - 1))
    return dict(
        alpha=stylized.tail_exponent(r)[0],
        acf_abs=acf_abs,
        beta=stylized.decay_exponent(acf_abs, LAGS),
        leverage=stylized.leverage(r, LAGS),
        acf=float(np.mean(np.abs(stylized.autocorrelation(r, LAGS[:10])))),
        cf_asym=float(np.mean(asymmetry)),
        gain_mode=passage["gain_mode"],
        loss_mode=passage["loss_mode"],
        std=float(r.std()),
    )


def data_bands(r):
    """95 % window-bootstrap bands of the data's |r| ACF and leverage curves."""
    acf = lambda w: stylized.autocorrelation(w, LAGS, absolute=True)
    lev = lambda w: stylized.leverage(w, LAGS)
    return dict(acf_abs=stylized.bootstrap_band(acf, r), leverage=stylized.bootstrap_band(lev, r))


def inside(curve, band):
    return float(np.mean((band[0] <= curve) & (curve <= band[1])))


def print_table(data, rows, bands):
    print(
        f"\n{'model':<16} {'alpha':>6} {'|d alpha|':>9} {'beta':>5} {'ACF|r| in':>9} "
        f"{'lev in':>6} {'|ACF r|':>7} {'cf asym':>7} {'gain/loss':>9} {'std r':>7} "
        f"{'min price':>9} {'train s':>7} {'sample s':>8}"
    )
    print(
        f"{'data (S&P 500)':<16} {data['alpha']:6.2f} {'':>9} {data['beta']:5.2f} {'':>9} "
        f"{'':>6} {data['acf']:7.3f} {data['cf_asym']:7.3f} "
        f"{data['gain_mode']:>4}/{data['loss_mode']:<4} {data['std']:7.4f}"
    )
    for name, f, extra in rows:
        print(
            f"{name:<16} {f['alpha']:6.2f} {abs(f['alpha'] - data['alpha']):9.2f} "
            f"{f['beta']:5.2f} {inside(f['acf_abs'], bands['acf_abs']):9.2f} "
            f"{inside(f['leverage'], bands['leverage']):6.2f} {f['acf']:7.3f} "
            f"{f['cf_asym']:7.3f} {f['gain_mode']:>4}/{f['loss_mode']:<4} {f['std']:7.4f} "
            f"{extra['min_price']:9.3g} {extra['train']:7.0f} {extra['sample']:8.1f}"
        )
    print(
        "alpha: tail exponent of |r| (paper: data 4.35, GBM exponential 4.62); beta: ACF|r| "
        "decay exponent; 'in': share of lags 1-50 inside the data's 95 % bootstrap band; "
        "gain/loss: first-passage modes (days) to +/-5 %"
    )


def plot(data, rows, bands, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax_, key, title in (
        (axes[0], "acf_abs", "ACF of |r|"),
        (axes[1], "leverage", "leverage L(k)"),
    ):
        ax_.fill_between(LAGS, *bands[key], color="k", alpha=0.2, label="data 95 % band")
        ax_.plot(LAGS, data[key], "k", label="data")
        for i, (name, f, _) in enumerate(rows):
            ax_.plot(LAGS, f[key], color=f"C{i}", lw=1, label=name)
        ax_.set_xlabel("lag k (days)")
        ax_.set_title(title)
    axes[0].set_xscale("log")
    axes[0].set_yscale("symlog", linthresh=0.01)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(args, config):
    print(machine_line())
    print(f"config: {'quick' if args.quick else 'full'} {config}")
    models = MODELS if args.models is None else [tuple(m.split(":")) for m in args.models]
    _, close = market_prices("sp500")
    if config["length"] >= close.size:
        PARSER.error(f"--set length: at most {close.size - 1} (the data has {close.size} days)")
    windows = price_windows(close, config["length"] + 1, config["stride"])
    if len(windows) < 2:
        PARSER.error(f"--set length, stride: the {close.size} days make 1 window; need 2 or more")
    returns = np.diff(np.log(windows), axis=1)
    data, bands = facts(returns), data_bands(returns)
    print(f"data: {close.size} days, {len(windows)} windows of {config['length']} returns")
    rows, key = [], jr.key(0)
    for i, (name, schedule) in enumerate(models):
        rows += run_model(config, name, schedule, windows, jr.fold_in(key, i))
        for label, f, _ in rows[-2:]:
            print(
                f"{label}: alpha {f['alpha']:.2f} (data {data['alpha']:.2f}), std r {f['std']:.4f}"
            )
    print_table(data, rows, bands)
    plot(data, rows, bands, args.figure)
    print(f"figure: {args.figure}")


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", False)
    main(ARGS, CONFIG)
