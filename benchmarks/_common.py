"""What the benchmark scripts share: a parser whose errors are one line on stderr with exit
code 2 (as the `assimilax` command line's), argument types that check their values, a named
configuration with typed `--set NAME=VALUE` overrides, and the machine line.

Only the standard library is imported here, so a script checks its whole command line
before it imports JAX (seconds): a bad argument fails at once, never after minutes of work.
"""

import argparse
import dataclasses
import importlib.util
import math
import os
import platform
from collections.abc import Callable, Mapping
from typing import Any


class Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


@dataclasses.dataclass(frozen=True)
class Kind:
    """The type of an argument or of a configuration entry: `convert(text)`, kept if
    `accept(value)`. Called on a text (as an argparse `type`), anything else raises an
    `argparse.ArgumentTypeError` that says `what` was expected."""

    what: str
    convert: Callable[[str], Any]
    accept: Callable[[Any], bool] = lambda value: True

    def parse(self, text: str):
        """The value of `text`; `ValueError` if it is not one."""
        value = self.convert(text.strip())
        if not self.accept(value):
            raise ValueError(text)
        return value

    def __call__(self, text: str):
        try:
            return self.parse(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {self.what}, got {text!r}") from None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def integer(minimum: int = 1) -> Kind:
    """An integer >= `minimum`."""
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    return Kind(what, int, lambda value: value >= minimum)


def choice(*options: str) -> Kind:
    """One of `options`, spelt exactly."""
    return Kind(f"one of {', '.join(options)}", str, lambda value: value in options)


def listing(item: Kind, *, at_least: int = 1, distinct: bool = True) -> Kind:
    """A tuple of `at_least` or more `item`s, written `A,B,C` (or `(A, B, C)`, `[A, B, C]`);
    with `distinct`, none twice."""

    def convert(text: str) -> tuple:
        if text[:1] + text[-1:] in ("()", "[]"):
            text = text[1:-1]
        values = tuple(item.parse(part) for part in text.split(","))
        if len(values) < at_least or (distinct and len(set(values)) < len(values)):
            raise ValueError(text)
        return values

    size = f" of {at_least} or more" if at_least > 1 else ""
    once = " (no value twice)" if distinct else ""
    return Kind(f"a comma-separated list{size}{once}, each {item.what}", convert)


POSITIVE_INT = integer(1)
# e.g. the size of a time embedding of sines and cosines
EVEN_POSITIVE_INT = Kind("an even positive integer", int, lambda v: v > 0 and v % 2 == 0)
POSITIVE_FLOAT = Kind("a positive finite number", _finite, lambda value: value > 0)
DECAY = Kind("a number in [0, 1)", _finite, lambda value: 0 <= value < 1)
NAME = Kind("a name", str, bool)
SEED = Kind(f"an integer seed in [0, {2**32 - 1}]", int, lambda value: 0 <= value < 2**32)
FOLDER = Kind("an existing folder", str, os.path.isdir)
INPUT_FILE = Kind("an existing file", str, os.path.isfile)
OUTPUT_FILE = Kind(
    "a file name in an existing folder",
    str,
    lambda value: (
        bool(value)
        and not os.path.isdir(value)
        and os.path.isdir(os.path.dirname(os.path.abspath(value)))
    ),
)
UNET_CHANNELS = listing(POSITIVE_INT, at_least=2, distinct=False)  # widths per U-Net level
# The entries of a score network's training run (`diffusion` toolkit), shared by the
# scripts that train one.
TRAINING_KINDS = dict(
    channels=UNET_CHANNELS,
    time_dim=EVEN_POSITIVE_INT,
    steps=POSITIVE_INT,
    batch=POSITIVE_INT,
    lr=POSITIVE_FLOAT,
    ema=DECAY,
    sample_steps=POSITIVE_INT,
)


def _entry(kinds: Mapping[str, Kind]) -> Callable[[str], tuple[str, Any]]:
    """The argparse type of `--set NAME=VALUE`: `(NAME, VALUE parsed by kinds[NAME])`."""

    def parse(text: str) -> tuple[str, Any]:
        name, equals, value = text.partition("=")
        name = name.strip()
        if not equals:
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
        if name not in kinds:
            known = ", ".join(sorted(kinds))
            raise argparse.ArgumentTypeError(f"unknown entry {name!r}; known: {known}")
        try:
            return name, kinds[name](value)
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{name}: {e}") from None

    return parse


def add_config_arguments(
    parser: argparse.ArgumentParser, configs: Mapping[str, dict], kinds: Mapping[str, Kind]
) -> None:
    """`--quick` and `--set NAME=VALUE` (repeatable) over `configs` ("quick" and "full"),
    each value parsed and checked by `kinds[NAME]`."""
    for name, config in configs.items():
        if set(config) != set(kinds):
            raise ValueError(f"The {name!r} configuration and `kinds` name different entries.")
    parser.add_argument("--quick", action="store_true", help="the <= 15 min CPU configuration")
    entries = "; ".join(f"{name}: {kind.what}" for name, kind in sorted(kinds.items()))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        type=_entry(kinds),
        metavar="NAME=VALUE",
        help=f"override a configuration entry, e.g. --set steps=2000 (repeatable). {entries}",
    )


def config_from(args: argparse.Namespace, configs: Mapping[str, dict]) -> dict:
    """The `quick` or `full` entry of `configs` with the `--set` overrides applied."""
    return {**configs["quick" if args.quick else "full"], **dict(args.set)}


def check_unet(parser: argparse.ArgumentParser, channels: tuple, size: int, what: str) -> None:
    """`UNetScore` halves the grid at each level after the first: a one-line error unless
    the grid `size` (`what`) divides by 2 ** (levels - 1)."""
    factor = 2 ** (len(channels) - 1)
    if size % factor:
        parser.error(
            f"--set channels: a U-Net of {len(channels)} levels needs {what} divisible by "
            f"{factor}; got {size}"
        )


def check_known(parser: argparse.ArgumentParser, flag: str, names, known, what: str) -> None:
    """A one-line error naming the first of `names` that is not in `known`."""
    unknown = [name for name in names if name not in known]
    if unknown:
        parser.error(f"{flag}: unknown {what} {unknown[0]!r}; known: {', '.join(known)}")


def require(parser: argparse.ArgumentParser, module: str, extra: str = "bench") -> None:
    """A one-line error unless `module` is installed (found without importing it)."""
    if importlib.util.find_spec(module) is None:
        message = f"this benchmark needs {module}: pip install 'assimilax[{extra}]'"
        parser.exit(2, f"{parser.prog}: error: {message}\n")


def machine_line() -> str:
    import jax

    import assimilax as ax

    return (
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs; "
        f"python {platform.python_version()}; "
        f"jax {jax.__version__} ({jax.devices()[0].platform}); assimilax {ax.__version__}"
    )
