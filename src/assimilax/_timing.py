"""Seconds spent compiling, measured apart from seconds spent running.

JAX reports how long it traced, lowered and compiled each function (its monitoring
events, which nest: an inner function's tracing lies inside its caller's); `Stopwatch`
takes the union of those intervals inside a block, so rates such as cycles/s can leave
compilation out and compilation can be reported on its own. A persistent-cache hit
counts its retrieval as compilation."""

import threading
import time


_EVENTS = frozenset(
    {
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
        "/jax/compilation_cache/cache_retrieval_time_sec",
    }
)
_active: list["Stopwatch"] = []
_lock = threading.Lock()
_registered = False


def _listener(event: str, duration: float, **_) -> None:
    if event in _EVENTS:
        end = time.perf_counter()
        with _lock:
            for watch in _active:
                watch._intervals.append((end - duration, end))


def union_length(intervals) -> float:
    """The total length covered by `(start, end)` intervals, overlaps counted once."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


class Stopwatch:
    """`with Stopwatch() as w: ...` then `w.seconds` (wall clock), `w.compile_seconds`
    (JAX tracing and compiling inside the block) and `w.run_seconds` (the rest)."""

    def __init__(self):
        self.seconds = 0.0
        self._intervals: list[tuple[float, float]] = []

    @property
    def compile_seconds(self) -> float:
        return min(union_length(self._intervals), self.seconds)

    @property
    def run_seconds(self) -> float:
        return self.seconds - self.compile_seconds

    def __enter__(self) -> "Stopwatch":
        global _registered
        import jax

        with _lock:
            if not _registered:
                jax.monitoring.register_event_duration_secs_listener(_listener)
                _registered = True
            _active.append(self)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds += time.perf_counter() - self._start
        with _lock:
            _active.remove(self)
