"""The docs: generated reference pages are current, every public symbol has a
docstring, the README is a front door (at most 150 lines) whose links resolve. The site
itself is built by `mkdocs build --strict` in `.ci/run`."""

import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest

import assimilax


ROOT = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = (
    "assimilax",
    "assimilax.dynamics",
    "assimilax.observations",
    "assimilax.filters",
    "assimilax.diffusion",
    "assimilax.experiments",
    "assimilax.metrics",
)


def _public(module_name):
    module = importlib.import_module(module_name)
    if module_name == "assimilax":
        names = list(assimilax._LAZY)
    else:
        names = [n for n in dir(module) if not n.startswith("_")]
    for name in names:
        value = getattr(module, name)
        if inspect.ismodule(value) or not (inspect.isclass(value) or callable(value)):
            continue
        if not getattr(value, "__module__", "").startswith("assimilax"):
            continue  # imported helpers (typing aliases, jax)
        yield f"{module_name}.{name}", value


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_symbol_has_a_docstring(module_name):
    missing = [
        name
        for name, value in _public(module_name)
        if not (inspect.getdoc(value) or "").strip()
        or (inspect.isclass(value) and value.__doc__ is None)
    ]
    assert not missing, f"public symbols without a docstring: {missing}"


def test_generated_reference_pages_are_current():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        gen = importlib.import_module("gen_reference")
    finally:
        sys.path.pop(0)
    for name, page in gen.PAGES.items():
        assert (ROOT / "docs" / name).read_text() == page(), (
            f"docs/{name} is stale: run `python docs/gen_reference.py`"
        )


def test_readme_is_a_front_door_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    first = text.split("\n## ")[0]
    assert "assimilax" in first and "for" in first  # what it is and for whom, first
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in re.findall(r":\s+(\S+\.md)", nav):
        assert (ROOT / "docs" / page).is_file(), page
