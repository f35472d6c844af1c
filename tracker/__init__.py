"""Energy and carbon tracking of ML inference, logged to MLflow.

The Python API (each name is documented; the CLI is a thin layer over the same functions):

- ``measure(task=..., model=...)``: a context manager and decorator that measures your own code
  as one MLflow run (a child of the active run, if any), with the same metrics and tags as
  ``tracker run``; ``current()`` is the open measurement, for code inside a decorated function.
- ``run(task=..., **options) -> RunResult``: measure one model on one task (``tracker run``);
  ``model`` may be a Hub id, a folder, or an MLflow model URI (``models:/NAME/VERSION``,
  ``models:/NAME@ALIAS``, ``runs:/RUN_ID/PATH``).
- ``tune(task=..., **options) -> TuneResult``: search batch size and precision (``tracker tune``).
- ``report(output=..., ...) -> ReportResult``: tables and figures from the runs (``tracker report``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

# MLflow's telemetry thread wakes through every measured window and cost 5 to 10% of a query
# phase here; off in tracker's processes unless asked for (store.quiet_mlflow_telemetry). Not
# where MLflow came first: there tracker is loaded as MLflow's store plugin (the UI, a notebook),
# whose settings are not tracker's to change; a measurement there stops the thread itself.
if "mlflow" not in sys.modules:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

__version__ = "0.1.0"
__all__ = ["Measurement", "ReportResult", "RunResult", "TuneResult", "current", "measure", "report", "run", "tune"]

# Where each name lives: imported on first use, so that `tracker --help` stays fast.
_HOMES = {"measure": "tracker.runs.usercode", "current": "tracker.runs.usercode", "Measurement": "tracker.runs.usercode",
          "run": "tracker.api", "tune": "tracker.api", "report": "tracker.api", "RunResult": "tracker.api",
          "TuneResult": "tracker.api", "ReportResult": "tracker.reporting"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'tracker' has no attribute '{name}'")
    import importlib

    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
