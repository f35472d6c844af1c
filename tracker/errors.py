"""The package's exceptions: one base class, a subclass per kind of failure.

User mistakes (bad flags, a model path that does not exist, an unreachable tracking server) derive
from ``UserError``: the CLI prints their one-line message and exits with status 2, no traceback.
"""

from __future__ import annotations

import difflib


def did_you_mean(value: str, choices: list[str]) -> str:
    """' Did you mean 'x'?' for the closest choice, or an empty string."""
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


class TrackerError(Exception):
    """Base class of every error this package raises on purpose."""


class UserError(TrackerError):
    """Something the user asked for cannot be done; the message says what to do instead."""


class ConfigError(UserError):
    """A run parameter is invalid."""


class ModelLoadError(UserError):
    """The model the user named cannot be loaded."""


class DatasetError(UserError):
    """The dataset the user named cannot be loaded or lacks a column the task needs."""


class PrecisionUnsupportedError(UserError):
    """The precision cannot run on the chosen device."""


class TrackingServerError(UserError):
    """The MLflow tracking server cannot be reached."""


class TrackingServerLost(TrackerError):
    """The tracking server stopped answering mid-run: the run's records went to the local spool."""


class RunInterrupted(BaseException):
    """SIGINT or SIGTERM arrived while a run was in progress.

    A BaseException, like KeyboardInterrupt: an ``except Exception`` on its way (ours around the
    meter, CodeCarbon's own) must not swallow it and let the run go on."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"interrupted by {signal_name}")
        self.signal_name = signal_name
