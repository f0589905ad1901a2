"""Filters and observation operators by name, with the settings tuned for each model:
what the CLI, the benchmarks and the Python shortcuts build."""

import math
import numbers
from collections.abc import Callable

import jax.random as jr
import numpy as np

from ..filters import (
    ETKF,
    LETKF,
    AbstractFilter,
    BootstrapFilter,
    DEnKF,
    EnKFN,
    EnKS,
    EnsembleScoreFilter,
    ExtendedKalmanFilter,
    HybridScoreFilter,
    IEnKS,
    LocalParticleFilter,
    NormalScoreEnKF,
    OptimalInterpolation,
    RankHistogramFilter,
    ScoreFilter,
    SerialEnSRF,
    StochasticEnKF,
    Var3D,
)
from ..observations import AbstractObservation, Arctan, Identity, Power, Subsample
from ._presets import ModelSetup, get_model
from ._simulate import climatology_statistics


def _enks(lag: int = 4, **etkf_options) -> EnKS:
    """The fixed-lag EnKS with the ETKF (`etkf_options`: inflation, rotate)."""
    return EnKS(ETKF(**etkf_options), lag)


FILTERS: dict[str, Callable[..., AbstractFilter]] = {
    "etkf": ETKF,
    "letkf": LETKF,
    "enkf": StochasticEnKF,
    "pf": BootstrapFilter,
    "ensf": EnsembleScoreFilter,
    "hybrid": HybridScoreFilter,
    "sf": ScoreFilter,
    "enkf-n": EnKFN,
    "denkf": DEnKF,
    "extkf": ExtendedKalmanFilter,
    "var3d": Var3D,
    "oi": OptimalInterpolation,
    "ienks": IEnKS,
    "serial": SerialEnSRF,
    "enks": _enks,
    "rhf": RankHistogramFilter,
    "ns-enkf": NormalScoreEnKF,
    "lpf": LocalParticleFilter,
}
# Filters whose background is the model's climatology (`climatology_statistics`).
CLIMATOLOGICAL = ("var3d", "oi")
# The options each filter takes by name (from the CLI or `make_filter` overrides).
# Options that take one real number (checked by `make_filter`: '1.05' is refused).
NUMERIC_OPTIONS = frozenset(
    ("inflation", "radius", "bandwidth", "threshold", "regularisation", "ess_target", "jitter")
)

OPTIONS: dict[str, tuple[str, ...]] = {
    "etkf": ("inflation", "rotate"),
    "letkf": ("inflation", "radius"),
    "enkf": ("inflation",),
    "pf": ("threshold", "regularisation", "resampling"),
    "ensf": (
        "inflation",
        "steps",
        "minibatch",
        "likelihood_scale",
        "t_min",
        "standardise",
        "sampler",
        "particles",
    ),
    "hybrid": (
        "inflation",
        "radius",
        "bandwidth",
        "ess_target",
        "linearise",
        "max_local_observations",
    ),
    "sf": (
        "inflation",
        "guidance",
        "steps",
        "finetune_steps",
        "train_steps",
        "samples",
        "gaussian_residual",
        "sampler",
        "particles",
    ),
    "enkf-n": ("hyperprior_weight", "rotate", "inflation"),
    "denkf": ("inflation",),
    "extkf": ("inflation",),
    "var3d": ("scale",),
    "oi": (),
    "ienks": ("iterations", "lag", "mda", "inflation", "rotate"),
    "serial": ("inflation", "radius", "rotate"),
    "enks": ("lag", "inflation", "rotate"),
    "rhf": ("inflation", "radius", "rotate"),
    "ns-enkf": ("inflation", "radius"),
    "lpf": ("radius", "jitter", "ess_target", "inflation", "alpha", "resampling"),
}


def make_filter(
    name: str, model: str | ModelSetup, *, dim: int | None = None, **overrides
) -> AbstractFilter:
    """Build filter `name` (a key of `FILTERS`: 'etkf', 'letkf', 'enkf', 'pf', 'ensf',
    'hybrid', 'sf', 'enkf-n', 'denkf', 'extkf', 'var3d', 'oi', 'ienks', 'serial', 'enks',
    'rhf', 'ns-enkf', 'lpf') with the defaults tuned for `model`.

    `overrides` (e.g. `inflation=1.05`, `radius=6.0`, `threshold=0.5`) replace the
    defaults; a value of None keeps the default. An option the filter does not take
    (`radius` for the ETKF, `inflation` for the particle filter) is an error: it would
    otherwise be dropped silently. The trained score filter 'sf' is pre-trained here
    on the model's climatology at dimension `dim` (default: the model's), with a fixed
    key: the same network every time. 'var3d' and 'oi' take the model's climatological
    mean and covariance (`climatology_statistics`, 2000 states, fixed key) at `dim`.
    """
    setup = get_model(model) if isinstance(model, str) else model
    if name not in FILTERS:
        raise ValueError(f"Unknown filter {name!r}; choose from {', '.join(sorted(FILTERS))}.")
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(OPTIONS[name]))
    if unknown:
        raise ValueError(
            f"Option(s) {', '.join(unknown)} do not apply to filter {name!r}; it takes "
            f"{', '.join(OPTIONS[name])}."
        )
    for key, value in given.items():
        array_like = isinstance(value, numbers.Real) or hasattr(value, "dtype")  # (tracers)
        if key in NUMERIC_OPTIONS and (isinstance(value, bool | str | bytes) or not array_like):
            raise TypeError(
                f"Option {key!r} of filter {name!r} must be a number; got {value!r} "
                f"({type(value).__name__})."
            )
    options = {**setup.filter_defaults.get(name, {}), **given}
    dim = setup.default_dim if dim is None else dim
    if name in CLIMATOLOGICAL:
        mean, cov = climatology_statistics(setup, setup.make_dynamics(dim), key=jr.key(0))
        return Var3D(cov, **options) if name == "var3d" else OptimalInterpolation(mean, cov)
    if name == "sf":
        x0 = setup.initial_state(dim)
        if np.ndim(x0) != 1:
            raise ValueError(f"The score filter needs a flat state; {setup.name} is a field.")
        return ScoreFilter.pretrain(setup.make_dynamics(dim), x0, key=jr.key(0), **options)
    return FILTERS[name](**options)


def make_observation(
    state_shape, obs_std: float, observe: str = "all", operator: str = "linear", *, seed=0
) -> AbstractObservation:
    """Build an observation of a state of shape `state_shape` (an int for flat states)
    from the CLI-style strings.

    - `observe`: 'all', 'every:K' (every K-th grid point along each axis: a sensor
      lattice, K >= 1), 'random:M' (M distinct grid points drawn once from `seed`,
      sorted) or 'indices:I,J,...' (those flat indices).
    - `operator`: 'linear', 'arctan', 'square' or 'cubic' (applied to the observed
      components; `observations.Arctan`, `observations.Power`).
    """
    shape = (state_shape,) if isinstance(state_shape, int) else tuple(state_shape)
    size = math.prod(shape)
    kind, _, arg = observe.partition(":")
    indices = [a.strip() for a in arg.split(",")] if kind == "indices" else []
    valid = (kind == "all" and not arg) or (kind in ("every", "random") and arg.isdigit())
    valid = valid or (bool(indices) and all(a.isdigit() and int(a) < size for a in indices))
    if not valid or (kind in ("every", "random") and int(arg) < 1):
        raise ValueError(
            "`observe` (--observe) must be 'all', 'every:K', 'random:M' (integers K, M >= 1) "
            f"or 'indices:I,J,...' (flat indices below {size}); got {observe!r}."
        )
    if kind == "indices":
        obs = Subsample(shape, np.array(sorted({int(a) for a in indices})), noise_std=obs_std)
    elif kind == "all":
        obs = Identity(shape, noise_std=obs_std)
    elif kind == "every":
        if int(arg) > max(shape):
            raise ValueError(
                f"`observe` (--observe) every:K needs K <= {max(shape)} (the grid size); "
                f"got {observe!r}."
            )
        obs = Subsample.every(shape, int(arg), noise_std=obs_std)
    else:
        m = int(arg)
        if not 1 <= m <= size:
            raise ValueError(f"`observe` (--observe) random:M needs 1 <= M <= {size}; got M={m}.")
        rng = np.random.default_rng(seed)
        obs = Subsample(shape, np.sort(rng.choice(size, size=m, replace=False)), noise_std=obs_std)
    operators = {
        "linear": lambda o: o,
        "arctan": Arctan,
        "square": lambda o: Power(o, 2),
        "cubic": lambda o: Power(o, 3),
    }
    if operator not in operators:
        raise ValueError(
            f"`observation` (--observation) must be one of {', '.join(operators)}; got "
            f"{operator!r}."
        )
    return operators[operator](obs)
