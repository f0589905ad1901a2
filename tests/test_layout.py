"""The shape of the code: short functions, no private imports across packages, and
arrays flowing one way (nothing low imports something high)."""

import ast
from pathlib import Path


SRC = Path(__file__).resolve().parents[1] / "src" / "assimilax"
# Floors, top first: a module may import only from its own floor or lower ones.
FLOORS = [
    {"cli"},
    {"_report"},
    {"experiments"},
    {"_driver"},
    {"_sinks"},
    {"_assimilate", "_tune", "_fit", "_em", "_augment"},
    {"filters", "_streams", "metrics", "stylized", "diffusion"},
    {"observations", "_ensemble", "_sharding", "_belief", "_covariance"},
    {"dynamics"},
    {
        "_schema",
        "_io",
        "_checks",
        "_results",
        "_custom_types",
        "_resampling",
        "_signals",
        "_filter_names",
        "_timing",
    },
]


def _floor(top: str) -> int:
    return next(i for i, names in enumerate(FLOORS) if top in names)


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts == ("__init__",):
            continue
        yield path, parts


def _imports(path: Path, parts):
    """`(imported top-level name, full dotted target)` of every relative import."""
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[: len(package) - (node.level - 1)])
            target = [*base, *(node.module.split(".") if node.module else [])]
            names = [a.name for a in node.names] if not node.module else [""]
            for name in names:
                full = [*target, name] if name else target
                if full and not full[0].startswith("__"):  # `from . import __version__`
                    yield full[0], full


def test_functions_are_at_most_100_lines():
    long = []
    for path, _ in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 100:
                    long.append(f"{path.name}:{node.name} ({length} lines)")
    assert not long, long


def test_no_private_imports_across_packages():
    bad = []
    for path, parts in _modules():
        own = parts[0] if len(parts) > 1 else None
        for top, full in _imports(path, parts):
            private = [p for p in full[1:] if p.startswith("_")]
            if top != own and len(full) > 1 and not top.startswith("_") and private:
                bad.append(f"{'/'.join(parts)} imports {'.'.join(full)}")
    assert not bad, bad


def test_layering_is_one_way():
    bad = []
    for path, parts in _modules():
        here = _floor(parts[0])
        for top, full in _imports(path, parts):
            if top != parts[0] and _floor(top) < here:
                bad.append(f"{'/'.join(parts)} (floor {here}) imports {'.'.join(full)}")
    assert not bad, bad


def test_the_loop_knows_nothing_of_files():
    imported = {top for top, _ in _imports(SRC / "_assimilate.py", ("_assimilate",))}
    assert not imported & {"_io", "_sinks", "_driver", "experiments", "_report", "cli"}
