"""What the benchmark scripts share: the machine line and a named configuration with
`--set NAME=VALUE` overrides."""

import argparse
import ast
import os
import platform

import jax

import assimilax as ax


def machine_line() -> str:
    return (
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs; "
        f"python {platform.python_version()}; "
        f"jax {jax.__version__} ({jax.devices()[0].platform}); assimilax {ax.__version__}"
    )


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="the <= 15 min CPU configuration")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a configuration entry, e.g. --set steps=2000",
    )


def config_from(args: argparse.Namespace, configs: dict) -> dict:
    """The `quick` or `full` entry of `configs` with the `--set` overrides applied."""
    config = dict(configs["quick" if args.quick else "full"])
    for item in args.set:
        name, value = item.split("=", 1)
        if name not in config:
            raise SystemExit(f"--set: unknown entry {name!r}; known: {sorted(config)}")
        config[name] = ast.literal_eval(value)
    return config
