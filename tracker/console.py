"""What tracker's processes say on their terminal: one log format, and lines that cannot fail.

The base of the package with ``tracker.errors``: it imports nothing of tracker's.
"""

from __future__ import annotations

import contextlib
import logging
import sys


def configure_logging() -> None:
    """Our log lines as `tracker: LEVEL: message`, for the CLI and the processes it starts."""
    logging.basicConfig(level=logging.WARNING, format="tracker: %(levelname)s: %(message)s")
    logging.getLogger("tracker").setLevel(logging.INFO)
    # MLflow logs a store's failed write with its traceback before raising it; we say it in one line.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def say(line: str) -> None:
    """One line on stderr that cannot fail: stderr may be a pipe to a parent that is gone."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)
