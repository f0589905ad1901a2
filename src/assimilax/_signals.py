"""How SIGINT and SIGTERM end what cannot stop between steps (standard library only, so
the command line can use it before JAX starts)."""

import contextlib
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def default_signals() -> Iterator[None]:
    """SIGTERM and SIGINT at their default actions (end the process at once) inside the
    block: a long compiled call or a blocking C++ call never returns to Python's
    handlers. The previous handlers come back afterwards. Only the main thread can set
    handlers: elsewhere nothing changes."""
    saved = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                saved[sig] = signal.signal(sig, signal.SIG_DFL)
            except ValueError:  # not the main thread
                break
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
