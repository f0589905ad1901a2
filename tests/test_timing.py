"""Compile seconds apart from run seconds (`assimilax._timing`): nested JAX events are
counted once, and a call that compiles nothing has none."""

import jax
import jax.numpy as jnp

from assimilax._timing import Stopwatch, union_length


def test_union_length_counts_overlaps_once():
    assert union_length([(0.0, 2.0), (1.0, 3.0), (1.5, 1.7), (5.0, 6.0)]) == 4.0
    assert union_length([]) == 0.0


def test_compile_seconds_of_a_first_and_a_second_call():
    @jax.jit
    def inner(x):
        return jnp.sin(x) @ x.T

    @jax.jit
    def outer(x):
        return inner(x) + jax.lax.scan(lambda c, _: (inner(c), None), x, None, length=3)[0]

    x = jnp.ones((50, 50))
    with Stopwatch() as first:
        outer(x).block_until_ready()
    with Stopwatch() as second:
        outer(x).block_until_ready()
    assert 0 < first.compile_seconds <= first.seconds
    assert second.compile_seconds == 0 and second.run_seconds == second.seconds
