"""The `assimilax` command line: one module per command (`twin`, `sweep`, `report`,
`make-sensors`, `assimilate`), the shared flags in `_args`, the shared run set-up in `_run`.

Errors are printed to stderr as one line (no traceback) with exit code 2; a run whose
filter failed or lost track exits with 1; an interrupted run with 130. `--help` and
`--version` answer without importing JAX.
"""

import argparse
import signal
import sys

from ._args import _Formatter, _Parser, _version
from ._run import _interrupt, _output_lock, _signals
from .assimilate import _assimilate_parser
from .make_sensors import _make_sensors_parser
from .report import _report_parser
from .sweep import _sweep_parser
from .twin import _twin_parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="assimilax",
        description="Sequential data assimilation in JAX: twin experiments, sensor files, reports.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"assimilax {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _twin_parser(sub)
    _sweep_parser(sub)
    _report_parser(sub)
    _make_sensors_parser(sub)
    _assimilate_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `assimilax` command. Returns the exit code."""
    # First thing: SIGTERM stops a run the same clean way as Ctrl-C (KeyboardInterrupt),
    # before anything heavy starts.
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _interrupt)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (printed as one line), --help, --version
        return int(e.code or 0)
    try:
        with _output_lock(args), _signals(args):
            return args.run(args)
    except (ValueError, TypeError, OSError, MemoryError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"assimilax {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = " (continue with --resume)" if getattr(args, "checkpoint_every", None) else ""
        print(f"assimilax {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as e:  # a run that could not be carried out (e.g. out of memory)
        if "RESOURCE_EXHAUSTED" in str(e) or "Out of memory" in str(e):
            print(
                f"assimilax {args.command}: error: out of memory: use fewer cycles, members "
                "or a smaller --dim",
                file=sys.stderr,
            )
            return 2
        raise
