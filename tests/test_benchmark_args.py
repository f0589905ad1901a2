"""The benchmark scripts reject bad command lines as the `assimilax` CLI does: one line on
stderr naming the flag or `--set` entry and what was expected, exit code 2, no traceback,
and (for all but the slow cases) before importing JAX or doing any work."""

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


def _load_common():
    spec = importlib.util.spec_from_file_location("_common", ROOT / "benchmarks" / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = _load_common()


def _run(script, *argv):
    return subprocess.run(
        [sys.executable, f"benchmarks/{script}", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _check_one_line(script, argv, expected):
    proc = _run(script, *argv)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error:"), lines
    for text in expected:
        assert text in lines[0], lines[0]


GBM = ("gbm_diffusion.py", "--quick")
BATTERY = ("battery_sgm.py", "--quick")
# (script and arguments, texts the error line must contain)
BAD = [
    ((*GBM, "--set", "steps=abc"), ["--set", "steps", "positive integer", "'abc'"]),
    ((*GBM, "--set", "steps"), ["--set", "NAME=VALUE", "'steps'"]),
    ((*GBM, "--set", "steps=-1"), ["--set", "steps", "positive integer"]),
    ((*GBM, "--set", "batch=6.5"), ["--set", "batch", "positive integer", "'6.5'"]),
    ((*GBM, "--set", 'lr="fast"'), ["--set", "lr", "positive finite number"]),
    ((*GBM, "--set", "channels=32"), ["--set", "channels", "2 or more", "'32'"]),
    ((*GBM, "--set", "length=0"), ["--set", "length", "integer >= 51"]),
    ((*GBM, "--set", "lenght=256"), ["--set", "unknown entry 'lenght'", "known:", "length"]),
    ((*GBM, "--set", "ema=1"), ["--set", "ema", "[0, 1)"]),
    ((*GBM, "--set", "channels=16,32,64", "--set", "length=130"), ["channels", "divisible"]),
    ((*GBM, "--models", "FOO:bar"), ["--models", "GBM:exponential", "'FOO:bar'"]),
    ((*BATTERY, "--set", "steps=2**10"), ["--set", "steps", "positive integer", "'2**10'"]),
    ((*BATTERY, "--set", "steps=None"), ["--set", "steps", "positive integer", "'None'"]),
    ((*BATTERY, "--set", "batch=0"), ["--set", "batch", "positive integer", "'0'"]),
    ((*BATTERY, "--out", "no/such/folder"), ["--out", "existing folder"]),
    (("sweep_tune.py", "--grid", "0"), ["--grid", "positive integer", "'0'"]),
    (("streams.py", "--members", "1"), ["--members", "integer >= 2", "'1'"]),
    (("scaling.py", "--devices", "0"), ["--devices", "positive integer", "'0'"]),
    (("scaling.py", "--devices", "1,x"), ["--devices", "'1,x'"]),
    (("lorenz96_filters.py", "--burn-in", "20", "--cycles", "10"), ["--burn-in", "--cycles"]),
    (("regimes.py", "--filters", "etkf,nope"), ["--filters", "ensf-std", "'etkf,nope'"]),
    (("score_filters.py", "--local", "--local-dims", "40,2"), ["--local-dims", "integer >= 4"]),
    (("score_filters.py",), ["--twin", "--scaling"]),
    (("spde_models.py", "--members", "20,20"), ["--members", "no value twice"]),
    (("diffusion_toolkit.py", "--steps", "0"), ["--steps", "positive integer"]),
    (("dapper_side_by_side.py", "--seeds", "1,-2"), ["--seeds", "integer seed"]),
    (("smdp_heat.py", "--quick", "--iterations", "0"), ["--iterations", "positive integer"]),
]


@pytest.mark.parametrize(("argv", "expected"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_one_line(argv, expected):
    _check_one_line(argv[0], argv[1:], expected)


# Names checked against a registry that needs JAX: one line too, after the imports.
SLOW = [
    (("lorenz96_filters.py", "--filters", "etkf,nope"), ["--filters", "'nope'", "letkf"]),
    (("regimes.py", "--regimes", "nope"), ["--regimes", "'nope'", "l96-sparse"]),
]


@pytest.mark.slow
@pytest.mark.parametrize(("argv", "expected"), SLOW, ids=[" ".join(a) for a, _ in SLOW])
def test_bad_names_one_line(argv, expected):
    _check_one_line(argv[0], argv[1:], expected)


def test_help_without_optional_packages():
    """`--help` answers without DAPPER, exponax or JAX."""
    for script in (
        "dapper_side_by_side.py",
        "spde_models.py",
        "gbm_diffusion.py",
        "dynamax_side_by_side.py",
    ):
        proc = _run(script, "--help")
        assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]
        assert proc.stderr == ""


OPTIONAL = [
    ("dapper_side_by_side.py", "dapper"),
    ("spde_models.py", "exponax"),
    ("dynamax_side_by_side.py", "dynamax"),
]


@pytest.mark.parametrize(("script", "module"), OPTIONAL)
def test_missing_package_one_line(script, module):
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed: the run would start")
    _check_one_line(script, [], [module, "pip install 'assimilax[bench]'"])


def test_common_needs_no_jax():
    """What the scripts parse their arguments with imports only the standard library."""
    code = "import sys; sys.path[:0] = ['benchmarks']; import _common; print('jax' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]


def test_kinds_parse_and_reject():
    assert common.POSITIVE_INT(" 12 ") == 12 and type(common.POSITIVE_INT("12")) is int
    assert common.POSITIVE_FLOAT("1e-3") == 1e-3
    assert common.DECAY("0") == 0.0 and common.DECAY("0.999") == 0.999
    assert common.UNET_CHANNELS("16,32") == (16, 32)
    assert common.UNET_CHANNELS("(32, 64, 128, 128)") == (32, 64, 128, 128)
    assert common.listing(common.choice("a", "b"))("b,a") == ("b", "a")
    assert common.integer(4)("4") == 4
    bad = [
        (common.POSITIVE_INT, ["0", "-1", "6.5", "abc", "2**10", "None", "", "1e3"]),
        (common.POSITIVE_FLOAT, ["0", "-1", "fast", "inf", "nan", '"0.1"']),
        (common.DECAY, ["1", "-0.1", "nan"]),
        (common.EVEN_POSITIVE_INT, ["31", "0"]),
        (common.UNET_CHANNELS, ["32", "16,0", "16,,32", "16,32,", "(16,32"]),
        (common.listing(common.choice("a", "b")), ["a,a", "c", "a,", ""]),
        (common.integer(4), ["3"]),
    ]
    for kind, texts in bad:
        for text in texts:
            with pytest.raises(argparse.ArgumentTypeError, match="expected"):
                kind(text)


def _config_parser():
    configs = {"quick": dict(steps=10, lr=0.1), "full": dict(steps=1000, lr=0.01)}
    parser = common.Parser(prog="bench")
    common.add_config_arguments(parser, configs, dict(steps=common.POSITIVE_INT, lr=common.DECAY))
    return parser, configs


def test_set_overrides_typed():
    parser, configs = _config_parser()
    args = parser.parse_args(["--quick", "--set", "steps=5", "--set", "lr=0.5"])
    config = common.config_from(args, configs)
    assert config == dict(steps=5, lr=0.5) and type(config["steps"]) is int
    assert common.config_from(parser.parse_args([]), configs) == configs["full"]
    with pytest.raises(ValueError, match="different entries"):
        common.add_config_arguments(common.Parser(), configs, dict(steps=common.POSITIVE_INT))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--set", "steps=x"], "argument --set: steps: expected a positive integer, got 'x'"),
        (["--set", "rate=1"], "argument --set: unknown entry 'rate'; known: lr, steps"),
        (["--set", "lr"], "argument --set: expected NAME=VALUE, got 'lr'"),
    ],
)
def test_set_errors_one_line(argv, expected, capsys):
    parser, _ = _config_parser()
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == f"bench: error: {expected} (see --help)\n"


def test_grid_edges_flags_a_setting_at_the_end_of_its_range(monkeypatch):
    """`regimes.py` warns when a tuned setting lies on its grid's edge (as the LETKF's
    radius 2 on `l96-sparse` at N = 10, beaten at radius 1.25 just past it)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("regimes", ROOT / "benchmarks" / "regimes.py")
    regimes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(regimes)
    labels = [f"{k} {v} r {r}" for k, v in (("infl", 1.0), ("infl", 1.1), ("rtps", 0.3))
              for r in (2, 4, 8)]  # fmt: skip
    assert regimes.grid_edges(labels, "rtps 0.3 r 2") == ["r"]
    assert regimes.grid_edges(labels, "infl 1.1 r 4") == []
    assert regimes.grid_edges(labels, "infl 1.0 r 8") == ["r"]  # 1.0: a natural bound
    assert regimes.grid_edges(["adaptive r 2", "adaptive r 4"], "adaptive r 2") == []
