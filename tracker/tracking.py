"""MLflow: where runs go, and a run's lifecycle (never left RUNNING).

One experiment per task by default. Under ``mlflow run`` (MLFLOW_RUN_ID set), the launcher's run
holds the raw -P values (an empty model, device "auto") and sits in whatever experiment
``mlflow run`` chose before this code started. The measured run is always a run of its own, in
the target experiment, with the resolved params; the two are linked by tags both ways, and the
measured run is nested under the launcher when both share an experiment.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from contextlib import contextmanager
from typing import Any

from tracker.errors import RunInterrupted, TrackingServerError

logger = logging.getLogger(__name__)

PROVENANCE_FROM_LAUNCHER = ("mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit",
                            "mlflow.gitRepoURL", "mlflow.project.entryPoint", "mlflow.project.env",
                            "mlflow.user")


def check_tracking_server(timeout_s: float = 5.0) -> str:
    """The tracking URI, after checking that a remote server answers at all."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        prepare_sqlite_store(uri)
    if not uri.startswith(("http://", "https://")):
        return uri
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        pass  # it answered: reachable, whatever it thinks of /health
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingServerError(
            f"cannot reach the MLflow tracking server at {uri} ({reason}); start it "
            f"(mlflow server --host 127.0.0.1 --port 5000) or unset MLFLOW_TRACKING_URI to use "
            f"the local store"
        ) from err
    return uri


def prepare_sqlite_store(uri: str) -> None:
    """Open a SQLite store once under a lock on ``<file>.lock``, so that of several processes
    starting on a new (or older) store one creates or migrates its schema and the others wait for
    it, instead of racing through MLflow's migrations and leaving the store broken for good."""
    import fcntl

    from mlflow.tracking._model_registry.utils import _get_store as registry_store
    from mlflow.tracking._tracking_service.utils import _get_store as tracking_store

    database = Path(uri.removeprefix("sqlite:///")).expanduser()
    database.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = open(database.with_name(database.name + ".lock"), "a")
    except OSError:  # a read-only folder: nothing can be migrated there, opening tells why
        handle = None
    try:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        tracking_store(uri)  # creates or migrates the schema, once, while the others wait
        registry_store(uri)
    finally:
        if handle is not None:
            handle.close()  # releases the lock


class RunRecorder:
    """Writes one run's params, metrics, tags and artifacts."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log(self, *, params: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
            tags: dict[str, Any] | None = None) -> None:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
            params=[Param(k, str(v)) for k, v in (params or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )

    def log_text(self, text: str, path: str) -> None:
        self.client.log_text(self.run_id, text, path)

    def log_json(self, data: Any, path: str) -> None:
        self.client.log_text(self.run_id, json.dumps(data, indent=2, default=str), path)


@contextmanager
def recorded_run(*, experiment: str, run_name: str, tags: dict[str, str],
                 times_ms: tuple[int, int] | None = None) -> Iterator[RunRecorder]:
    """A RUNNING run that ends FINISHED, FAILED (reason tagged) or KILLED (signal tagged).

    ``times_ms`` (start, end) dates a run that records a measurement taken earlier (an import).
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    start_ms, end_ms = times_ms or (None, None)
    run_id = _start_run(client, experiment_id(client, experiment), run_name, tags, start_ms)
    recorder = RunRecorder(client, run_id)
    try:
        yield recorder
    except RunInterrupted as err:
        _end(client, run_id, "KILLED", {"tracker.interrupted_by": err.signal_name})
        raise
    except BaseException as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        _end(client, run_id, "FAILED", {"tracker.error": message[:5000],
                                        "tracker.error_type": type(err).__name__})
        raise
    else:
        _end(client, run_id, "FINISHED", {}, end_ms)


def experiment_id(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name)
        except Exception:  # created by a concurrent run in the meantime
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def finished_runs(client: Any, experiment_id: str) -> list[Any]:
    """Every FINISHED run of an experiment, page by page."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string="attributes.status = 'FINISHED'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _start_run(client: Any, exp_id: str, run_name: str, tags: dict[str, str],
               start_ms: int | None = None) -> str:
    launcher_id = os.environ.get("MLFLOW_RUN_ID")
    launcher = client.get_run(launcher_id) if launcher_id else None
    run_tags = dict(tags)
    if launcher is not None:
        run_tags.update({k: v for k, v in launcher.data.tags.items() if k in PROVENANCE_FROM_LAUNCHER})
        run_tags["tracker.launcher_run_id"] = launcher_id
        if launcher.info.experiment_id == exp_id and "mlflow.parentRunId" not in tags:
            run_tags["mlflow.parentRunId"] = launcher_id  # shown nested under the launcher
    run = client.create_run(exp_id, run_name=run_name, tags=run_tags, start_time=start_ms)
    # A study or a search describes its launcher itself; its runs carry tracker.attempt.
    if launcher is not None and "tracker.attempt" not in tags:
        client.set_tag(launcher_id, "tracker.measured_run_id", run.info.run_id)
        client.set_tag(launcher_id, "tracker.measured_experiment_id", exp_id)
        client.set_tag(launcher_id, "mlflow.note.content",
                       f"Launcher of `mlflow run`: the measured run is {run.info.run_id} in experiment "
                       f"{exp_id}, with the resolved params and every metric.")
    return run.info.run_id


def _end(client: Any, run_id: str, status: str, tags: dict[str, str], end_ms: int | None = None) -> None:
    try:
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
    finally:
        client.set_terminated(run_id, status, end_time=end_ms)
