import jax
import jax.random as jr
import pytest


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
