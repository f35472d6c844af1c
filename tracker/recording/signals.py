"""SIGINT and SIGTERM become a ``RunInterrupted`` exception while a run is in progress.

An exception unwinds through the measuring context managers, so the energy measured so far is
closed and logged, and the run ends KILLED instead of being left RUNNING. Signals that come after
the first are held while that happens: a second Ctrl-C, or the SIGTERM that `mlflow run` sends its
child right after the terminal's SIGINT, would otherwise cut the closing short and leave the run
FAILED without its energy, or RUNNING. Closing is bounded (MLflow's retries are, and a lost store
spools), but a user who insists gets out: the QUIT_AFTER-th held signal ends the process at once.

Measured children (`tracker run` under a study, a search's shared-load child) get SIGTERM when
their parent dies (``die_with_parent``). The kernel sends it again each time the orphan passes to
another of the dying parent's threads (1 to 8 times for a parent of 8 threads, seen here), so in
such a child a repeated SIGTERM is not a user insisting: it is neither counted nor answered. And
their stderr may be a pipe to the dead parent: what is said while closing must not break it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tracker.console import say
from tracker.errors import RunInterrupted

HANDLED = (signal.SIGINT, signal.SIGTERM)
QUIT_AFTER = 3  # held signals after the first: the third ends the process without closing the run
PARENT_DEATH_SIGNAL = signal.SIGTERM
_PR_SET_PDEATHSIG, _PR_GET_PDEATHSIG = 1, 2


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
    if signum == PARENT_DEATH_SIGNAL and _ARMED_FOR_PARENT_DEATH:
        return  # the kernel repeating the parent's death (or the parent ending us), not a user insisting
    _state.held += 1
    name = signal.Signals(signum).name
    if _state.held >= QUIT_AFTER:
        say(f"tracker: {name} again: quitting without closing the run (the next command closes it "
            "FAILED, with what its heartbeat logged)")
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _state.held == 1:
        say(f"tracker: {name} while stopping after {_state.first}: closing the run with the energy "
            f"measured so far first ({QUIT_AFTER - 1} more to quit at once)")


def _prctl() -> Callable[..., int] | None:
    """Linux's prctl, looked up here, not in a forked child (dlopen there can deadlock)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _prctl()


def die_with_parent() -> None:
    """Run in a child before it starts (``preexec_fn``): PARENT_DEATH_SIGNAL when the parent dies
    (Linux), so a killed study or search does not leave a run measuring on its own; the run then
    ends KILLED with its partial energy."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, PARENT_DEATH_SIGNAL)


def _armed_for_parent_death() -> bool:
    """Whether this process was started by ``die_with_parent``."""
    armed = ctypes.c_int(0)
    return _PRCTL is not None and _PRCTL(_PR_GET_PDEATHSIG, ctypes.byref(armed)) == 0 \
        and armed.value == PARENT_DEATH_SIGNAL


_ARMED_FOR_PARENT_DEATH = _armed_for_parent_death()  # read once, not from inside a signal handler


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
