"""SIGINT and SIGTERM become a ``RunInterrupted`` exception while a run is in progress.

An exception unwinds through the measuring context managers, so the energy measured so far is
closed and logged, and the run ends KILLED instead of being left RUNNING. Signals that come after
the first are held while that happens: a second Ctrl-C, or the SIGTERM that `mlflow run` sends its
child right after the terminal's SIGINT, would otherwise cut the closing short and leave the run
FAILED without its energy, or RUNNING. Closing is bounded (MLflow's retries are, and a lost store
spools), but a user who insists gets out: the QUIT_AFTER-th held signal ends the process at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tracker.errors import RunInterrupted

HANDLED = (signal.SIGINT, signal.SIGTERM)
QUIT_AFTER = 3  # held signals after the first: the third ends the process without closing the run


class _Stopping:
    def __init__(self) -> None:
        self.first: str | None = None  # the signal that stopped the command
        self.held = 0  # signals that came after it
        self.deferring = 0  # nested sections (a run being opened, a write to the store) that hold a first signal
        self.deferred: str | None = None


_state = _Stopping()


@contextmanager
def interrupts_raise() -> Iterator[None]:
    """Inside the block, the first SIGINT or SIGTERM raises RunInterrupted; later ones are held
    until ``signals_restored`` (around the whole command) ends."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, frame: object) -> None:
        if _state.deferring:
            _state.deferred = _state.deferred or signal.Signals(signum).name
            return
        _stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in HANDLED}
    try:
        yield
    finally:
        if _state.first is None:
            for sig, old in previous.items():
                signal.signal(sig, old)


def _stop(name: str) -> None:
    _state.first = name
    for sig in HANDLED:  # held from now on, also after the block, while the run is closed
        signal.signal(sig, _hold)
    raise RunInterrupted(name)


def defer_interrupts() -> Callable[[], None]:
    """Hold a first interrupt while a run is opened or the store written; returns ``release``,
    which raises the held interrupt, if any, where it is called. Raised mid-write, an interrupt
    would leave the store's transaction (and its lock) open and the run unclosable; raised
    between the run's creation and the block that ends it KILLED, it would leave it RUNNING.
    Call ``release`` once, whatever happens."""
    _state.deferring += 1

    def release() -> None:
        _state.deferring -= 1
        if _state.deferring == 0 and _state.deferred:
            held, _state.deferred = _state.deferred, None
            if _state.first is None:
                _stop(held)

    return release


def _hold(signum: int, frame: object) -> None:
    _state.held += 1
    name = signal.Signals(signum).name
    if _state.held >= QUIT_AFTER:
        print(f"tracker: {name} again: quitting without closing the run (the next command closes it "
              "FAILED, with what its heartbeat logged)", file=sys.stderr, flush=True)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _state.held == 1:
        print(f"tracker: {name} while stopping after {_state.first}: closing the run with the energy "
              f"measured so far first ({QUIT_AFTER - 1} more to quit at once)", file=sys.stderr, flush=True)


@contextmanager
def signals_restored() -> Iterator[None]:
    """Around a whole command: the handlers it started with are back when it returns."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _state
    previous = {sig: signal.getsignal(sig) for sig in HANDLED}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _state = _Stopping()
