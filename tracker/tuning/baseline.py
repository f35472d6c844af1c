"""The baseline (batch 1, fp32): the quality reference and the carbon denominator, measured again
during the search, and the spreads of measurements as they are stored on the study."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

from tracker.errors import TrackerError
from tracker.measurement.stats import Spread, pooled
from tracker.runs.config import RunConfig

logger = logging.getLogger(__name__)

OBJECTIVE_METRIC = "emissions_g_per_output"
BASELINE_WAIT_S = 3600  # how long a second worker waits for the first to measure the baseline
MIN_WINDOWS = 3  # query windows per measurement: enough for a spread and a 95% interval
BASELINE_ATTR = "baseline:"  # study user attrs "baseline:<run id>": one per baseline measurement


def baseline_config(run: RunConfig) -> RunConfig:
    """The paper's protocol (batch 1, fp32, the model and torch as they come), measured in at least
    MIN_WINDOWS windows."""
    return dataclasses.replace(run, batch_size=1, precision="fp32", repeats=max(run.repeats, MIN_WINDOWS),
                               threads=None, sort_by_length=False, attention=None, compile=False, progress=False)


def carbon_spread(run: Any) -> dict[str, Any]:
    """A measurement's carbon per output over its windows, as stored on the study."""
    m = run.data.metrics
    return {"mean": m[OBJECTIVE_METRIC], "std": m.get(f"{OBJECTIVE_METRIC}_std", math.nan),
            "n": int(m.get("windows", 1)), "contended": run.data.tags.get("tracker.measurement.contended") == "true",
            "run_id": run.info.run_id}


def record_baseline(study: Any, run: Any) -> None:
    study.set_user_attr(BASELINE_ATTR + run.info.run_id, carbon_spread(run))


def baseline_spread(study: Any) -> Spread:
    """Every baseline measurement's windows together; contended ones only when all were."""
    measured = [v for k, v in study.user_attrs.items() if k.startswith(BASELINE_ATTR)]
    if not measured and "baseline_emissions_g_per_output" in study.user_attrs:  # a study from before
        return Spread(float(study.user_attrs["baseline_emissions_g_per_output"]), math.nan, 1)
    quiet = [v for v in measured if not v.get("contended")] or measured
    return pooled([stored_spread(v) for v in quiet])


def stored_spread(stored: dict[str, Any] | None) -> Spread:
    """A spread as ``carbon_spread`` stored it on the study (empty: no measurement)."""
    stored = stored or {}
    return Spread(stored.get("mean", math.nan), stored.get("std", math.nan), stored.get("n", 0))


def trial_spread(trial: Any) -> Spread:
    """A finished trial's carbon spread as stored on it; its objective value alone (no spread) for a
    trial stored without one."""
    spread = stored_spread(trial.user_attrs.get("carbon"))
    return spread if spread.n else Spread(float(trial.values[0]), math.nan, 1)


def baseline_failed(client: Any, study: Any) -> bool:
    """The study's creator ended its parent run without storing a baseline: it failed or died."""
    attrs = study.user_attrs
    if "reference_quality" in attrs:
        return False
    if "parent_run_id" not in attrs:
        return False  # the creating worker has only just begun
    try:
        status = client.get_run(attrs["parent_run_id"]).info.status
    except Exception:  # the parent run is gone (another store, deleted): nothing to wait for
        return True
    return status in ("FAILED", "KILLED")


def wait_for_baseline(study: Any) -> Any:
    """The study once its baseline is stored (at once for the worker that measured it)."""
    import optuna

    waited = 0.0
    while "reference_quality" not in study.user_attrs:
        if waited == 0:
            logger.info("waiting for the worker that created study %s to measure the baseline",
                        study.study_name)
        if waited > BASELINE_WAIT_S:
            raise TrackerError(f"study '{study.study_name}' has no baseline after {BASELINE_WAIT_S} s; "
                               "the worker that created it may have died: start again with a new --study-name")
        time.sleep(2)
        waited += 2
        try:
            study = optuna.load_study(study_name=study.study_name, storage=study._storage)
        except KeyError:
            raise TrackerError(f"study '{study.study_name}' was begun again after its baseline failed; start "
                               "this worker again to join it") from None
    return study
