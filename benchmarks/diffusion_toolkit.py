"""Throughput of the diffusion toolkit: samples per second and training steps per
second, for a d=40 vector state (MLP) and a 1 x 128 periodic field (1-D U-Net).

    python benchmarks/diffusion_toolkit.py [--float64]

Timings are of compiled functions (compile time printed separately), min of 2 runs.
"""

import os
import platform
import time

from _common import POSITIVE_INT, Parser


def _timed(fn, *args):
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best, first - best


def _row(name, shape, net, sde, samples, args):
    import equinox as eqx
    import jax
    import jax.random as jr

    from assimilax import diffusion as dm

    params = sum(x.size for x in jax.tree.leaves(eqx.filter(net, eqx.is_array)))
    score = dm.score_function(net, sde)
    x = sde.prior_sample((samples, *shape), key=jr.key(1))
    em = jax.jit(lambda x: dm.euler_maruyama(sde, score, x, key=jr.key(2), steps=args.steps))
    pc = jax.jit(lambda x: dm.predictor_corrector(sde, score, x, key=jr.key(2), steps=args.steps))
    ode = jax.jit(lambda x: dm.probability_flow(sde, score, x, rtol=1e-3, atol=1e-3))
    t_em, c_em = _timed(em, x)
    t_pc, _ = _timed(pc, x)
    t_ode, _ = _timed(ode, x[:8])
    data = jr.normal(jr.key(3), (4096, *shape))
    steps, batch = (200, 128) if samples > 32 else (10, 32)

    def train(data):
        return dm.fit(
            net, data, sde=sde, key=jr.key(4), steps=steps, chunk_size=steps, batch_size=batch
        ).losses

    t_fit, _ = _timed(train, data)
    print(
        f"{name:<32} {params:>8} {samples / t_em:>13.0f} {samples / t_pc:>13.0f} "
        f"{8 / t_ode:>14.1f} {steps / t_fit:>14.0f} {c_em:>12.1f}s",
        flush=True,
    )


def main():
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--float64", action="store_true")
    parser.add_argument("--steps", type=POSITIVE_INT, default=100, help="reverse-time steps")
    args = parser.parse_args()
    import jax

    jax.config.update("jax_enable_x64", args.float64)
    import equinox as eqx
    import jax.random as jr
    import optax

    import assimilax as ax
    from assimilax import diffusion as dm

    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, {jax.devices()[0].platform}; "
        f"assimilax {ax.__version__}, jax {jax.__version__}, equinox {eqx.__version__}, "
        f"optax {optax.__version__}; {'float64' if args.float64 else 'float32'}"
    )
    sde = dm.VPSDE()
    # (name, state shape, network, batch of samples)
    cases = [
        ("MLP d=40 (width 256, depth 3)", (40,), dm.MLPScore(40, 256, 3, key=jr.key(0)), 256),
        ("U-Net 1x128 (channels 32,64)", (128,), dm.UNetScore(1, (32, 64), key=jr.key(0)), 32),
    ]
    header = (
        f"{'network':<32} {'params':>8} {'EM samples/s':>13} {'PC samples/s':>13} "
        f"{'ODE samples/s':>14} {'train steps/s':>14} {'compile (EM)':>13}"
    )
    print(header)
    print("-" * len(header))
    for name, shape, net, samples in cases:
        _row(name, shape, net, sde, samples, args)
    print(
        f"EM/PC: {args.steps} reverse steps (PC: 1 Langevin corrector step each), batch "
        "256 (MLP) or 32 (U-Net); ODE: adaptive Tsit5, rtol=atol=1e-3, batch 8; training: "
        "Adam + EMA, batch 128 (MLP) or 32 (U-Net)."
    )


if __name__ == "__main__":
    main()
