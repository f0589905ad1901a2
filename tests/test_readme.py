"""Every Python block of the README runs verbatim, in order, in one namespace (in a
temporary folder, so the files it writes go there); the how-to guides' blocks run after
them (slow tier)."""

import re
from pathlib import Path

import jax
import pytest


ROOT = Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def _run(pages, tmp_path, monkeypatch, capsys) -> list[str]:
    """The printed lines of every block of `pages`, run in order in one namespace."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    x64 = jax.config.jax_enable_x64
    try:
        # A user's default JAX settings (the suite is strict elsewhere).
        with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
            for page in pages:
                for i, block in enumerate(python_blocks((ROOT / page).read_text())):
                    exec(compile(block, f"{page} python block {i + 1}", "exec"), namespace)
    finally:
        jax.config.update("jax_enable_x64", x64)
    return capsys.readouterr().out.split("\n")


def _check_readme(printed, tmp_path):
    # The numbers the README's comments promise.
    shape, rmse = printed[0].rsplit(" ", 1)
    assert shape == "(500, 40)" and float(rmse) < 0.45
    assert float(printed[1]) < 0  # a log-likelihood of 10,000 values with unit noise
    assert float(printed[2]) < 0.25  # the ETKF of the twin experiment
    for name in ("run.nc", "report/summary.md"):
        assert (tmp_path / name).is_file(), name


def test_readme_python_blocks_run_verbatim(tmp_path, monkeypatch, capsys):
    assert len(python_blocks((ROOT / "README.md").read_text())) == 2
    _check_readme(_run(["README.md"], tmp_path, monkeypatch, capsys), tmp_path)


@pytest.mark.slow
def test_howto_python_blocks_run_verbatim(tmp_path, monkeypatch, capsys):
    """The how-to guides continue the README's namespace: own model, sensor files,
    live feeds."""
    printed = _run(["README.md", "docs/howto.md"], tmp_path, monkeypatch, capsys)
    _check_readme(printed, tmp_path)
    assert printed[-2] == "True"  # live feed == file
    for name in ("analysis.nc", "live.nc", "run.ckpt"):
        assert (tmp_path / name).is_file(), name
