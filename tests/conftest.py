import os


# The suite runs on 2 pytest-xdist workers on 2 cores: one XLA thread per worker avoids
# oversubscription and per-op threading overhead on these small problems (measured: the
# notebook test 52 s -> 36 s alone). Set before JAX starts its CPU backend.
_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAGS).strip()

import jax  # noqa: E402
import jax.random as jr  # noqa: E402
import pytest  # noqa: E402


jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def getkey():
    """A fresh, deterministic PRNG key on every call."""
    state = {"i": 0}

    def _getkey():
        state["i"] += 1
        return jr.fold_in(jr.key(1234), state["i"])

    return _getkey


@pytest.fixture(scope="module")
def sensor_file(tmp_path_factory):
    """A small Lorenz-96 sensor file (d = 12, 40 records, 10 sensors) and its dataset."""
    import assimilax as ax
    from assimilax.experiments import get_model, make_sensors

    setup = get_model("lorenz96")
    ds = make_sensors(
        setup, setup.make_dynamics(12), key=jr.key(0), cycles=40, sensors=10, obs_std=1.0
    )
    path = tmp_path_factory.mktemp("faults") / "sensors.nc"
    ax.write_netcdf(ds, path)
    return path, ds
