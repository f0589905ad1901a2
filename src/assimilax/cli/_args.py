"""Argument types and the flags several commands share (checked before JAX starts)."""

import argparse
import math

from .._filter_names import FILTER_NAMES, TRAINED_FILTERS


_SEED_MAX = 2**32 - 1


def _number(convert, low: int | float, strict: bool, what: str, high=None):
    """An argparse type: finite `convert(text)`, > low (strict) or >= low, <= high."""

    def parse(text: str):
        try:
            value = convert(text)
        except (ValueError, OverflowError):
            value = None
        ok = value is not None and math.isfinite(value)
        ok = ok and (value > low if strict else value >= low) and (high is None or value <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, 0, True, "a positive integer")


_nonnegative_int = _number(int, 0, False, "an integer >= 0")


_positive_float = _number(float, 0.0, True, "a positive finite number")


_nonnegative_float = _number(float, 0.0, False, "a finite number >= 0")


_seed = _number(int, 0, False, f"an integer seed in [0, {_SEED_MAX}]", _SEED_MAX)


_fraction = _number(float, 0.0, False, "a number in [0, 1]", 1.0)


_bandwidth = _number(float, 0.0, True, "a number in (0, 1]", 1.0)


# Multiplicative inflation: below 1 it deflates the spread until the filter loses track.
_inflation = _number(float, 1.0, False, "a number >= 1 (below 1 the spread collapses)")


def _open_fraction(text: str) -> float:
    value = _fraction(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (the contract for every error), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help with every flag's default shown (unless it is None or a flag)."""

    def _get_help_string(self, action):
        text = action.help or ""
        # By identity: a default of 0 is shown (0 == False).
        hidden = any(action.default is v for v in (None, False, argparse.SUPPRESS))
        if hidden or "%(default)" in text:
            return text
        return super()._get_help_string(action)


def _version() -> str:
    from .. import __version__

    return __version__


def _filter_name(text: str) -> str:
    """`--filter`: one of the filter names (checked before JAX starts)."""
    name = text.strip().lower()
    if name not in FILTER_NAMES:
        raise argparse.ArgumentTypeError(
            f"Unknown filter {name!r}; choose from {', '.join(FILTER_NAMES)}."
        )
    return name


def _filter_names(text: str) -> list[str]:
    """`--filters`: distinct filter names, comma-separated."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one filter.")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a filter is named twice in {text!r}.")
    return [n if n in TRAINED_FILTERS else _filter_name(n) for n in names]


def _names(text: str) -> list[str]:
    """`--fit`: distinct parameter names (Python identifiers), comma-separated."""
    names = [n.strip() for n in text.split(",")]
    if not all(n.isidentifier() for n in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected distinct comma-separated names such as obs_std,forcing; got {text!r}"
        )
    return names


def _ensemble_sizes(text: str) -> list[int]:
    """`--members` of `sweep`: distinct ensemble sizes >= 2, comma-separated."""
    try:
        sizes = [int(m) for m in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 2 or len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError(
            f"expected distinct ensemble sizes >= 2, comma-separated (e.g. 10,20); got {text!r}"
        )
    return sizes


MAX_AXIS = 100_000  # values along one --grid axis at most


def _grid_axis(text: str) -> tuple[str, list[float]]:
    name, _, values = text.partition("=")
    try:
        if values.count(":") == 2:
            start, stop, count = values.split(":")
            if not 1 <= int(count) <= MAX_AXIS:
                raise ValueError
            import numpy as np

            numbers = np.linspace(float(start), float(stop), int(count)).tolist()
        else:
            numbers = [float(v) for v in values.split(",")]
        if not name.strip() or not all(math.isfinite(v) for v in numbers):
            raise ValueError
        return name.strip(), numbers
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NAME=V1,V2,... or NAME=START:STOP:COUNT (finite numbers, COUNT in "
            f"[1, {MAX_AXIS}]); got {text!r}"
        ) from None


def _experiment_arguments(parser) -> None:
    """The twin-experiment setting flags shared by `twin` and `sweep`."""
    parser.add_argument(
        "--cycles", type=_positive_int, default=None, help="observation cycles (default: 2000)"
    )
    parser.add_argument(
        "--burn-in",
        type=_nonnegative_int,
        default=None,
        help="cycles left out of time averages (default: 10%% of --cycles)",
    )
    parser.add_argument(
        "--obs-interval",
        type=_positive_float,
        default=None,
        help="model time between observations (default: the model's)",
    )
    parser.add_argument(
        "--obs-std",
        type=_positive_float,
        default=None,
        help="observation error std (default: the model's)",
    )
    parser.add_argument(
        "--observe",
        default=None,
        help="all | every:K (every K-th grid point) | random:M (M points drawn once) | "
        "indices:I,J,... (those flat indices) (default: the model's; every:4 for heat2d, "
        "burgers, ns2d)",
    )
    parser.add_argument(
        "--observation",
        default=None,
        choices=["linear", "arctan", "square", "cubic"],
        help="operator applied to the observed components (default: linear, or the regime's)",
    )
    parser.add_argument(
        "--regime",
        default=None,
        help="a named non-Gaussian regime (l63-sakov2012, l63-x-only, l96-sparse, l63-cubic, "
        "l96-square, l96-arctan-shocks): its model, observations and ensemble size; flags "
        "override",
    )


def _model_arguments(parser) -> None:
    parser.add_argument(
        "--model", default=None, help="lorenz96 (default), lorenz63, ks, burgers, heat2d, ns2d"
    )
    parser.add_argument(
        "--dim",
        type=_positive_int,
        default=None,
        help="state dimension (SPDEs: points per axis; default: the model's)",
    )


def _run_arguments(parser) -> None:
    parser.add_argument("--seed", type=_seed, default=0, help="random seed")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "float32", "float64"],
        help="floating point (auto: float64 below 1e5 state values, float32 above)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument(
        "--devices",
        type=_positive_int,
        default=None,
        help="shard the ensemble members over this many devices (of every process with "
        "--distributed); the member count must be a multiple",
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="one process of a multi-process run: join via JAX_COORDINATOR_ADDRESS, "
        "JAX_NUM_PROCESSES, JAX_PROCESS_ID (or SLURM's variables); process 0 writes the files",
    )
    parser.add_argument(
        "--no-compilation-cache",
        action="store_true",
        help="do not use JAX's persistent compilation cache (also: ASSIMILAX_NO_CACHE=1)",
    )
