"""SMDP on the heat-equation inverse problem (Holzschuh, Vegetti & Thuerey 2023, Table 1).

    python benchmarks/smdp_heat.py --quick      # <= 15 minutes on 2 CPU cores
    python benchmarks/smdp_heat.py              # the paper's sizes (needs an accelerator)

Heat equation u_t = Δu on [0, 2π)^2, 32 x 32, exact spectral step, T = 0.2, M = 32
steps, g = 0.1. Data: power-law Gaussian random fields (spectrum k^-4), one global
mean/std from the training set. A score network is trained through the solver
(`diffusion.fit_smdp`: multi-step probability-flow rollouts on jittered grids, window
growing from 6); the test input is P_T(x0) + 0.01 ξ; 32 reverse steps (ODE and SDE, the
same weights). Baselines in the same script: the same network trained to map the end
state to x0 directly (ResNet-S, supervised) and through the physics (ResNet-P: the
re-simulated estimate must match the input), and the Tikhonov-regularised backward heat
solve in closed form (λ tuned on the validation set). Metrics as the authors' code:
reconstruction MSE of the re-simulated end state (x 1e-5, normalised units) and the
log-amplitude spectral error over radius bins 1..10. Prints the table beside the paper's
numbers and saves `smdp_heat.png` (samples and radial spectra).
"""

import os
import platform
import time

from _common import OUTPUT_FILE, POSITIVE_INT, Parser


PARSER = Parser(description=__doc__.splitlines()[0])
PARSER.add_argument("--quick", action="store_true", help="the CPU configuration")
PARSER.add_argument(
    "--iterations", type=POSITIVE_INT, default=None, help="override the training iterations"
)
PARSER.add_argument("--out", type=OUTPUT_FILE, default="smdp_heat.png", help="figure file")

if __name__ == "__main__":
    ARGS = PARSER.parse_args()  # before the imports below (seconds): a bad argument fails at once

import jax  # noqa: E402


jax.config.update("jax_enable_x64", False)
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import assimilax as ax  # noqa: E402
from assimilax.diffusion import (  # noqa: E402
    ResNetScore,
    fit_smdp,
    power_law_fields,
    radial_log_amplitude,
    reconstruction_mse,
    reverse_trajectory,
    spectral_error,
)
from assimilax.dynamics import StochasticHeat  # noqa: E402


PAPER = {  # Table 1: MSE x 1e-5, spectral error (unverified: from the authors' write-up)
    "SMDP ODE": (0.74, 3.62),
    "SMDP SDE": (5.56, 0.56),
    "ResNet-S": (2.17, 1.67),
    "ResNet-P": (2.30, 1.09),
    "Tikhonov": (None, None),
}
CONFIGS = {
    # sizes, network, training iterations and the largest window
    "quick": dict(train=500, val=100, test=100, channels=16, blocks=2, iterations=2500,
                  max_window=12, batch=4, lr=1e-3),
    "paper": dict(train=2500, val=500, test=500, channels=32, blocks=5, iterations=60000,
                  max_window=32, batch=4, lr=1e-4),
}  # fmt: skip
SIZE, END, STEPS, NOISE = 32, 0.2, 32, 0.1


def _supervised(net, inputs, targets, loss_of, iterations, batch, key):
    """Train `net(y, 0)` on (inputs, targets) with `loss_of(prediction, target, input)`."""
    params, static = eqx.partition(net, eqx.is_inexact_array)
    opt = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(1e-3))
    state = opt.init(params)

    @eqx.filter_jit
    def update(params, state, idx):
        def loss(params):
            model = eqx.combine(params, static)
            pred = jax.vmap(lambda y: model(y, jnp.zeros((), y.dtype)))(inputs[idx])
            return loss_of(pred, targets[idx], inputs[idx])

        value, grads = jax.value_and_grad(loss)(params)
        with jax.numpy_dtype_promotion("standard"):
            updates, state = opt.update(grads, state, params)
        return eqx.apply_updates(params, updates), state, value

    for i in range(iterations):
        idx = jr.randint(jr.fold_in(key, i), (batch,), 0, inputs.shape[0])
        params, state, _ = update(params, state, idx)
    model = eqx.combine(params, static)
    return lambda y: model(y, jnp.zeros((), y.dtype))


def main(args):
    cfg = dict(CONFIGS["quick" if args.quick else "paper"])
    if args.iterations is not None:
        cfg["iterations"] = args.iterations
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPU cores")
    print(f"assimilax {ax.__version__}, jax {jax.__version__} ({jax.default_backend()}), float32")
    print(f"config: {cfg}")
    key = jr.key(0)
    heat = StochasticHeat(SIZE, 2, diffusivity=1.0)
    step = lambda x, dt: heat.step_mean(x, 0.0, dt)
    to_end = lambda x: heat.step_mean(x, 0.0, END)

    # Data, one global normalisation from the training set.
    n_all = cfg["train"] + cfg["val"] + cfg["test"]
    fields = power_law_fields(jr.fold_in(key, 0), n_all, SIZE)
    train = fields[: cfg["train"]]
    mean, std = jnp.mean(train), jnp.std(train)
    fields = (fields - mean) / std
    train, val, test = jnp.split(fields, [cfg["train"], cfg["train"] + cfg["val"]])
    observe = lambda x, k: jax.vmap(to_end)(x) + 0.01 * jr.normal(k, x.shape, x.dtype)
    y_val, y_test = observe(val, jr.fold_in(key, 1)), observe(test, jr.fold_in(key, 2))
    times = jnp.linspace(0.0, END, STEPS + 1, dtype=jnp.float32)

    rows = {}
    # SMDP: one network, the ODE and SDE samplers.
    start = time.perf_counter()
    net = ResNetScore(cfg["channels"], cfg["blocks"], key=jr.fold_in(key, 3))
    grow = lambda i: min(cfg["max_window"], 6 + 2 * (i * 8 // cfg["iterations"]))
    net, losses = fit_smdp(
        net, step, train, key=jr.fold_in(key, 4), noise=NOISE, end_time=END, num_steps=STEPS,
        window=grow, iterations=cfg["iterations"], batch_size=cfg["batch"],
        optimiser=optax.chain(optax.clip_by_global_norm(10.0), optax.adam(cfg["lr"])),
        callback=lambda i, loss: i % 250 or print(f"  iteration {i}: loss {loss:.4g}", flush=True),
    )  # fmt: skip
    train_s = time.perf_counter() - start
    first, last = losses[:50].mean(), losses[-50:].mean()
    print(f"SMDP trained in {train_s:.0f} s; loss {first:.4g} -> {last:.4g}")
    estimates = {}
    for name, sde in (("SMDP ODE", False), ("SMDP SDE", True)):
        run = lambda y, k, sde=sde: reverse_trajectory(step, net, y, times, NOISE, sde=sde, key=k)[
            -1
        ]
        keys = jr.split(jr.fold_in(key, 5), y_test.shape[0])
        estimates[name] = eqx.filter_jit(jax.vmap(run))(y_test, keys)

    # Baselines: the same network, supervised and through the physics; Tikhonov.
    sup_iters = cfg["iterations"]
    k_s, k_p = jr.fold_in(key, 6), jr.fold_in(key, 7)
    y_train = observe(train, jr.fold_in(key, 8))
    mse = lambda a, b: jnp.mean((a - b) ** 2)
    for name, loss_of, k in (
        ("ResNet-S", lambda p, t, y: mse(p, t), k_s),
        ("ResNet-P", lambda p, t, y: mse(jax.vmap(to_end)(p), y), k_p),
    ):
        model = _supervised(ResNetScore(cfg["channels"], cfg["blocks"], key=k), y_train, train,
                            loss_of, sup_iters, cfg["batch"], k)  # fmt: skip
        estimates[name] = jax.vmap(model)(y_test)
    kk = heat.grid.wavenumber_squared(jnp.float32)
    h = jnp.exp(-kk * END)

    def tikhonov(y, lam):
        return heat.grid.ifft((h / (h**2 + lam)).astype(jnp.complex64) * heat.grid.fft(y))

    lams = 10.0 ** np.arange(-8.0, 0.5, 0.5)
    val_err = [
        float(reconstruction_mse(to_end, jax.vmap(lambda y, lam=lam: tikhonov(y, lam))(y_val), val))
        for lam in lams
    ]
    best = lams[int(np.argmin(val_err))]
    estimates["Tikhonov"] = jax.vmap(lambda y: tikhonov(y, best))(y_test)

    print(f"\n{'method':<10} {'MSE x1e-5':>10} {'paper':>7} {'spectral':>9} {'paper':>7}")
    for name, est in estimates.items():
        m = float(reconstruction_mse(to_end, est, test)) * 1e5
        s = float(spectral_error(est, test))
        pm, ps = PAPER[name]
        rows[name] = (m, s)
        fmt = lambda v: "—" if v is None else f"{v:.3g}"
        print(f"{name:<10} {m:>10.3g} {fmt(pm):>7} {s:>9.3g} {fmt(ps):>7}")
    print(f"(Tikhonov λ = {best:.1e}, tuned for the validation MSE; {cfg['test']} test samples; "
          f"SMDP training {train_s:.0f} s)")  # fmt: skip
    _figure(args.out, test, estimates)


def _figure(path, test, estimates):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(estimates)
    fig, axes = plt.subplots(2, len(names) + 1, figsize=(2.6 * (len(names) + 1), 5.2),
                             layout="constrained")  # fmt: skip
    axes[0, 0].imshow(np.asarray(test[0]), cmap="RdBu_r")
    axes[0, 0].set_title("x0 (truth)")
    radii = np.arange(1, 11)
    truth = np.mean([np.asarray(radial_log_amplitude(u)) for u in test[:50]], axis=0)
    for i, name in enumerate(names, start=1):
        axes[0, i].imshow(np.asarray(estimates[name][0]), cmap="RdBu_r")
        axes[0, i].set_title(name)
        spec = np.mean([np.asarray(radial_log_amplitude(u)) for u in estimates[name][:50]], axis=0)
        axes[1, i].plot(radii, truth, "k-", label="truth")
        axes[1, i].plot(radii, spec, "r--", label=name)
        axes[1, i].set_xlabel("radius")
    axes[1, 0].axis("off")
    axes[1, 1].legend()
    for a in axes[0]:
        a.set_xticks([])
        a.set_yticks([])
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)  # atomic: no half-written figure
    print(f"wrote {path}")


if __name__ == "__main__":
    main(ARGS)
