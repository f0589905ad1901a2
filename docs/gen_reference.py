"""Write the generated reference pages: `docs/cli.md` (every command's `--help`, from
the parsers) and `docs/schema.md` (every output variable, its meaning and units, from
`assimilax._schema`). `tests/test_docs.py` checks the committed pages are current.

    python docs/gen_reference.py
"""

import argparse
import inspect
import os
from pathlib import Path

from assimilax import _schema
from assimilax.cli import build_parser


HERE = Path(__file__).resolve().parent


def cli_page() -> str:
    os.environ["COLUMNS"] = "88"  # argparse wraps at the terminal width: fix it
    parser = build_parser()
    parts = [
        "# CLI reference\n",
        "Generated from the parsers by `python docs/gen_reference.py`; `assimilax COMMAND "
        "--help` prints the same.\n",
        f"```\n{parser.format_help()}```\n",
    ]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        parts.append(f"## assimilax {name}\n\n```\n{sub.format_help()}```\n")
    return "\n".join(parts)


def schema_page() -> str:
    lines = [
        "# Output files",
        "",
        "Generated from `assimilax._schema` by `python docs/gen_reference.py` "
        "(`tests/test_cf.py` runs both checkers on twin, sensor and assimilate files). "
        + inspect.getdoc(_schema).split("\n\n", 1)[1].split("\n\n")[0].replace("\n", " "),
        "",
        *inspect.getdoc(_schema).split("\n\n", 2)[2].splitlines(),
        "",
        "| variable | meaning | units |",
        "| --- | --- | --- |",
    ]
    for name, (meaning, units) in _schema.VARIABLES.items():
        lines.append(f"| `{name}` | {meaning.replace('|', '/')} | {units or '—'} |")
    lines += [
        "",
        "The per-cycle variables an `assimilate` output file grows by, in file order: "
        + ", ".join(f"`{n}`" for n in _schema.CYCLE_OUTPUTS)
        + ".",
        "",
    ]
    return "\n".join(lines)


PAGES = {"cli.md": cli_page, "schema.md": schema_page}


if __name__ == "__main__":
    for name, page in PAGES.items():
        (HERE / name).write_text(page())
        print(f"wrote docs/{name}")
