"""Every Python block of the README runs verbatim, in order, in one namespace (in a
temporary folder, so the files it writes go there)."""

import re
from pathlib import Path

import jax


README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_readme_python_blocks_run_verbatim(tmp_path, monkeypatch, capsys):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    x64 = jax.config.jax_enable_x64
    try:
        # A user's default JAX settings (the suite is strict elsewhere).
        with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
            for i, block in enumerate(blocks):
                exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    finally:
        jax.config.update("jax_enable_x64", x64)
    printed = capsys.readouterr().out.split("\n")
    # The numbers the README's comments promise.
    shape, rmse = printed[0].rsplit(" ", 1)
    assert shape == "(500, 40)" and float(rmse) < 0.45
    assert float(printed[1]) < 0.25  # the ETKF of the twin experiment
    assert printed[-2] == "True"  # live feed == file
    for name in ("run.nc", "analysis.nc", "live.nc", "run.ckpt", "report/summary.md"):
        assert (tmp_path / name).is_file(), name
