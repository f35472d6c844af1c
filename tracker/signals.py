"""SIGINT and SIGTERM become a ``RunInterrupted`` exception while a run is in progress.

An exception unwinds through the measuring context managers, so the energy measured so far is
closed and logged, and the run ends KILLED instead of being left RUNNING.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tracker.errors import RunInterrupted

HANDLED = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def interrupts_raise() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, frame: object) -> None:
        # Restore the previous handlers first: a second Ctrl-C while we log ends the process.
        for sig, old in previous.items():
            signal.signal(sig, old)
        raise RunInterrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in HANDLED}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
