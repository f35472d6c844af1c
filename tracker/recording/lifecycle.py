"""MLflow: where runs go, and a run's lifecycle (never left RUNNING). The only module that opens
and ends runs: measured runs (``recorded_run``), a search's parent (``open_run``, ``resumed_run``),
attempts that died before their run (``failed_run``, ``end_run``), orphans, spooled runs, and
runs that record earlier measurements, written whole (``write_finished_runs``).

One experiment per task by default. Under ``mlflow run`` (MLFLOW_RUN_ID set), the launcher's run
holds the raw -P values (an empty model, device "auto") and sits in whatever experiment
``mlflow run`` chose before this code started. The measured run is always a run of its own, in
the target experiment, with the resolved params; the two are linked by tags both ways, and the
measured run is nested under the launcher when both share an experiment.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracker.errors import RunInterrupted, TrackingServerLost
from tracker.recording import spool
from tracker.recording.signals import defer_interrupts
from tracker.recording.store import check_tracking_server, store_unwritable, unreachable

logger = logging.getLogger(__name__)

PROVENANCE_FROM_LAUNCHER = ("mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit",
                            "mlflow.gitRepoURL", "mlflow.project.entryPoint", "mlflow.project.env",
                            "mlflow.user")


@dataclass(frozen=True)
class RunDataset:
    """A dataset as a run's input (MLflow's Dataset entity): ``source`` and ``schema`` and
    ``profile`` are JSON texts, as MLflow stores them."""

    name: str
    digest: str
    source_type: str
    source: str
    schema: str | None = None
    profile: str | None = None
    context: str = "inference"


class RunRecorder:
    """Writes one run's params, metrics, tags and artifacts, and ends it.

    When a remote tracking server stops answering mid-run, every call from then on goes to a local
    spool file instead (``tracker.recording.spool``), so nothing measured is lost; `tracker sync` uploads it.
    """

    def __init__(self, client: Any, run_id: str, experiment_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.spool: spool.Spool | None = None
        self.lost: str | None = None  # why the store took no more, once it did not
        self._lock = threading.Lock()

    def log(self, *, params: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
            tags: dict[str, Any] | None = None) -> None:
        from mlflow.utils.time import get_current_time_millis

        self._call({"op": "log", "time_ms": get_current_time_millis(), "metrics": metrics or {},
                    "params": params or {}, "tags": tags or {}})

    def log_text(self, text: str, path: str) -> None:
        self._call({"op": "text", "text": text, "path": path})

    def log_inputs(self, *, datasets: Sequence[RunDataset] = (), model_ids: Sequence[str] = ()) -> None:
        """The run's inputs as MLflow shows them: datasets (the UI's Dataset column) and logged models."""
        self._call({"op": "inputs", "datasets": [dataclasses.asdict(d) for d in datasets],
                    "model_ids": list(model_ids)})

    def log_json(self, data: Any, path: str) -> None:
        self.log_text(json.dumps(data, indent=2, default=str), path)

    def end(self, status: str, tags: dict[str, str], end_ms: int | None = None) -> None:
        self._call({"op": "end", "status": status, "tags": tags, "end_ms": end_ms})

    def _call(self, call: dict[str, Any]) -> None:
        release = defer_interrupts() if threading.current_thread() is threading.main_thread() else None
        try:
            self._store_or_spool(call)
        finally:
            if release is not None:
                release()  # an interrupt that came during the write is raised now that it is whole

    def _store_or_spool(self, call: dict[str, Any]) -> None:
        if self.spool is None:
            try:
                return _apply(self.client, self.run_id, call)
            except Exception as err:
                self.lost = self._lost(err)
                if not self.lost:
                    raise
                with self._lock:
                    if self.spool is None:
                        try:
                            self.spool = spool.Spool.create(self.client.tracking_uri, self.run_id,
                                                            self.experiment_id, f"{self.lost} ({err})")
                        except OSError as spool_err:
                            raise TrackingServerLost(
                                f"{self.lost}, and the local spool cannot be written either ({spool_err}): "
                                f"run {self.run_id} is lost beyond what the store took") from None
                        logger.warning("%s: run %s goes on, its records kept in %s", self.lost, self.run_id,
                                       self.spool.path)
        self.spool.append(call)

    def _lost(self, err: Exception) -> str | None:
        """Why the store can take no more of this run (gone, read-only, full), or None."""
        uri = self.client.tracking_uri
        if uri.startswith(("http://", "https://")):
            reason = unreachable(uri)
            return f"lost the MLflow tracking server at {uri} ({reason})" if reason else None
        reason = store_unwritable(err)
        return f"the MLflow store {uri} stopped taking writes ({reason})" if reason else None


def _apply(client: Any, run_id: str, call: dict[str, Any]) -> None:
    """Make one of a run's calls against the store: as the recorder makes it, or as a spool line
    holds it (``tracker sync``)."""
    if call["op"] == "log":
        from mlflow.entities import Metric, Param, RunTag

        stamp = int(call["time_ms"])
        client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in call["metrics"].items()],
                         params=[Param(k, str(v)) for k, v in call["params"].items()],
                         tags=[RunTag(k, str(v)) for k, v in call["tags"].items()])
    elif call["op"] == "text":
        client.log_text(run_id, call["text"], call["path"])
    elif call["op"] == "inputs":
        from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelInput

        datasets = [DatasetInput(Dataset(name=d["name"], digest=d["digest"], source_type=d["source_type"],
                                         source=d["source"], schema=d["schema"], profile=d["profile"]),
                                 tags=[InputTag("mlflow.data.context", d["context"])]) for d in call["datasets"]]
        _log_inputs(client, run_id, datasets=datasets or None,
                    models=[LoggedModelInput(m) for m in call["model_ids"]] or None)
    elif call["op"] == "end":
        _end(client, run_id, call["status"], call["tags"], call.get("end_ms"))
    else:
        raise ValueError(f"unknown call {call['op']!r}")


def _log_inputs(client: Any, run_id: str, **inputs: Any) -> None:
    """MLflow creates a dataset's row on its first use without a lock: two runs that log the same
    dataset into one experiment at once (a study's runs on two Ray nodes) may both try, and the
    store refuses the second (a UNIQUE constraint; all of that call is rolled back). The row exists
    then, so the same call once more links it (seen: 1 of 4 smoke runs FAILED on a two-node study)."""
    from mlflow.exceptions import MlflowException

    for attempt in range(3):
        try:
            return client.log_inputs(run_id, **inputs)
        except MlflowException as err:
            text = str(err).lower()
            if attempt == 2 or not ("unique constraint" in text or "duplicate key" in text):
                raise


# A measuring run tags its host and process, and beats every HEARTBEAT_S with the energy so far;
# a RUNNING run whose process is gone, or whose beat is older than STALE_S on another host, is
# closed FAILED by the next command that opens its experiment.
HEARTBEAT_S = float(os.environ.get("TRACKER_HEARTBEAT_S", "30"))
STALE_S = 10 * 60
_swept: set[tuple[str, str]] = set()  # (tracking URI, experiment id) whose orphans this process closed


class Heartbeat:
    """While a run measures, a thread that tags ``tracker.run.heartbeat`` and logs ``report()``'s
    figures every ``interval_s``, so that a run killed without a chance to log keeps them."""

    def __init__(self, recorder: RunRecorder, report: Callable[[], dict[str, float]],
                 interval_s: float = HEARTBEAT_S) -> None:
        self.recorder, self.report, self.interval_s = recorder, report, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="tracker-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.recorder.log(metrics=self.report(), tags={"tracker.run.heartbeat": str(int(time.time()))})
            except Exception as err:  # a lost beat must not stop the measurement
                logger.warning("could not log the run's heartbeat: %s", err)


def close_orphans(client: Any, exp_id: str) -> list[str]:
    """Close FAILED, with the reason, the RUNNING runs of an experiment whose process is gone:
    on this host, no process with that id started before the run; elsewhere, no heartbeat for
    STALE_S. Their partial figures (``partial_energy_kwh``) stay. Returns the closed run ids."""
    import socket

    import psutil

    here, now, closed = socket.gethostname(), time.time(), []
    spooled = {item.run_id for item in spool.pending(client.tracking_uri)}
    for run in client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if "tracker.run.pid" not in tags or run.info.run_id in spooled:
            continue  # not a measuring run of ours (a launcher, a search's parent), or `tracker sync`'s to end
        if tags.get("tracker.run.host") == here:
            pid = int(tags["tracker.run.pid"])
            try:
                alive = psutil.Process(pid).create_time() * 1000 <= run.info.start_time + 1000
            except psutil.Error:
                alive = False
            reason = f"its process ({pid} on {here}) is gone: killed or crashed before it could close the run"
        else:
            beat = float(tags.get("tracker.run.heartbeat", run.info.start_time / 1000))
            alive = now - beat < STALE_S
            reason = (f"no heartbeat from its process on {tags.get('tracker.run.host', '?')} for "
                      f"{(now - beat) / 60:.0f} min")
        if not alive:
            _end(client, run.info.run_id, "FAILED", {
                "tracker.error": f"{reason}; closed by a later command. partial_energy_kwh holds what it had "
                                 "measured by its last heartbeat",
                "tracker.error_type": "ProcessGone"})
            closed.append(run.info.run_id)
            logger.warning("run %s was left RUNNING: %s; closed FAILED", run.info.run_id, reason)
    return closed


def _close_orphans_once(client: Any, exp_id: str) -> None:
    """Close the experiment's orphans once per process: a process that writes many runs (an
    import, a study) would otherwise search for them again before each, and its own are no orphans."""
    if (client.tracking_uri, exp_id) not in _swept:
        close_orphans(client, exp_id)
        _swept.add((client.tracking_uri, exp_id))


@contextmanager
def recorded_run(*, experiment: str, run_name: str, tags: dict[str, str],
                 times_ms: tuple[int, int] | None = None) -> Iterator[RunRecorder]:
    """A RUNNING run that ends FINISHED, FAILED (reason tagged) or KILLED (signal tagged).

    ``times_ms`` (start, end) dates a run that records a measurement taken earlier (an import).
    Runs that earlier processes left RUNNING in the experiment are closed first.
    """
    import socket

    from mlflow import MlflowClient

    client = MlflowClient()
    start_ms, end_ms = times_ms or (None, None)
    exp_id = experiment_id(client, experiment)
    _close_orphans_once(client, exp_id)
    tags = tags | {"tracker.run.host": socket.gethostname(), "tracker.run.pid": str(os.getpid())}
    if "tracker.config_key" in tags and times_ms is None:
        run_name = f"{run_name} · #{_repeat_number(client, exp_id, tags['tracker.config_key'])}"
    release = defer_interrupts()
    try:
        run_id = _start_run(client, exp_id, run_name, tags, start_ms)
    except BaseException:
        release()
        raise
    recorder = RunRecorder(client, run_id, exp_id)
    try:
        release()  # a Ctrl-C that came while the run was being created is raised here
        yield recorder
    except BaseException as err:
        recorder.end(*ending(err))
        raise
    else:
        recorder.end("FINISHED", {}, end_ms)
        if recorder.spool is not None:
            raise TrackingServerLost(
                f"{recorder.lost} during run {run_id}: it ended FINISHED and its records are kept in "
                f"{recorder.spool.path}; once the store takes writes again, run `tracker sync` to upload them")


def _repeat_number(client: Any, exp_id: str, config_key: str) -> int:
    """1 for the first run of a configuration in the experiment, 2 for the next, ...: the run list
    then tells repeated runs apart by name."""
    earlier = client.search_runs([exp_id], filter_string=f"tags.`tracker.config_key` = '{config_key}'",
                                 max_results=1000, run_view_type=3)  # ViewType.ALL: deleted runs count too
    return len(earlier) + 1


@dataclass
class FinishedRun:
    """A run that records a measurement taken earlier (an imported record): written whole, FINISHED."""
    run_name: str
    tags: dict[str, str]
    params: dict[str, Any]
    metrics: dict[str, float]
    times_ms: tuple[int, int] | None = None  # (start, end); None: now
    texts: dict[str, str] = field(default_factory=dict)  # artifact path: its text
    replaces: str | None = None  # a run this one takes the place of: deleted once this one is written


def write_finished_runs(experiment: str, runs: list[FinishedRun], *, chunk: int = 200) -> list[str]:
    """Write ``runs`` into ``experiment``, FINISHED, ``chunk`` at a time; returns their run ids.

    On a SQL store each chunk is one transaction (``tracker.recording.sql_bulk``), so a chunk is there whole
    or not at all, and a Ctrl-C waits for the chunk being written. Elsewhere (a tracking server)
    each run is made with MLflow's client and ended FAILED, with the reason, if a call fails.
    The run a new one ``replaces`` (imported before with other options) is deleted, as `mlflow
    runs delete` deletes (restorable), as soon as the chunk of its replacement is written.
    """
    import socket

    from mlflow import MlflowClient

    from tracker.recording import sql_bulk

    client = MlflowClient()
    exp_id = experiment_id(client, experiment)
    _close_orphans_once(client, exp_id)
    here = {"tracker.run.host": socket.gethostname(), "tracker.run.pid": str(os.getpid())}
    store = sql_bulk.sql_store(client)
    root = client.get_experiment(exp_id).artifact_location
    ids: list[str] = []
    for start in range(0, len(runs), chunk):
        part = runs[start:start + chunk]
        release = defer_interrupts()  # a chunk is written whole; a Ctrl-C is raised between chunks
        try:
            if store is None:
                for run in part:
                    ids.append(_write_one(client, exp_id, run, here))
                continue
            rows = []
            for run in part:
                run_id = sql_bulk.new_run_id()
                artifact_uri = f"{root.rstrip('/')}/{run_id}/artifacts"
                _write_texts(artifact_uri, run.texts)  # before the run exists: a run never lacks them
                start_ms, end_ms = run.times_ms or (None, None)
                rows.append({"run_id": run_id, "run_name": run.run_name, "tags": run.tags | here,
                             "params": run.params, "metrics": run.metrics, "start_ms": start_ms,
                             "end_ms": end_ms, "artifact_uri": artifact_uri})
            sql_bulk.insert_finished_runs(store, exp_id, rows)
            ids += [row["run_id"] for row in rows]
        finally:
            try:
                for run in part[:len(ids) - start]:  # those of the chunk that were written
                    if run.replaces:
                        client.delete_run(run.replaces)
            finally:
                release()
    return ids


def update_runs(client: Any, *, tags: dict[str, dict[str, str]] | None = None,
                metrics: dict[str, dict[str, float]] | None = None,
                delete_tags: dict[str, tuple[str, ...]] | None = None) -> None:
    """Set tags and log metrics on many existing runs: one transaction on a SQL store, a call per
    run elsewhere. Used for what is learnt about runs after they ended (ratings, annotations)."""
    from mlflow.entities import Metric, RunTag
    from mlflow.exceptions import MlflowException

    from tracker.recording import sql_bulk

    tags, metrics, delete_tags = tags or {}, metrics or {}, delete_tags or {}
    store = sql_bulk.sql_store(client)
    if store is not None:
        sql_bulk.update_runs(store, tags, metrics, delete_tags)
        return
    stamp = int(time.time() * 1000)
    for run_id in set(tags) | set(metrics) | set(delete_tags):
        client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.get(run_id, {}).items()],
                         tags=[RunTag(k, str(v)) for k, v in tags.get(run_id, {}).items()])
        for key in delete_tags.get(run_id, ()):
            try:
                client.delete_tag(run_id, key)
            except MlflowException:  # the run does not have it
                pass


def _write_one(client: Any, exp_id: str, run: FinishedRun, here: dict[str, str]) -> str:
    start_ms, end_ms = run.times_ms or (None, None)
    run_id = client.create_run(exp_id, run_name=run.run_name, tags=run.tags | here, start_time=start_ms).info.run_id
    try:
        _apply(client, run_id, {"op": "log", "time_ms": int(time.time() * 1000), "metrics": run.metrics,
                                "params": run.params, "tags": {}})
        for path, text in run.texts.items():
            client.log_text(run_id, text, path)
    except BaseException as err:
        _end(client, run_id, *ending(err))
        raise
    _end(client, run_id, "FINISHED", {}, end_ms)
    return run_id


def _write_texts(artifact_uri: str, texts: dict[str, str]) -> None:
    import tempfile

    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    if not texts:
        return
    with tempfile.TemporaryDirectory() as folder:
        for path, text in texts.items():
            (Path(folder) / path).parent.mkdir(parents=True, exist_ok=True)
            (Path(folder) / path).write_text(text, encoding="utf-8")
        get_artifact_repository(artifact_uri).log_artifacts(folder)


def open_run(client: Any, experiment: str, run_name: str, tags: dict[str, str],
             params: dict[str, Any] | None = None) -> str:
    """A RUNNING run that outlives this call (a search's parent, resumed by its workers): its
    owner ends it with ``resumed_run`` or ``end_run``."""
    from mlflow.entities import Param

    run_id = client.create_run(experiment_id(client, experiment), run_name=run_name, tags=tags).info.run_id
    if params:
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run_id


@contextmanager
def resumed_run(client: Any, run_id: str) -> Iterator[None]:
    """A run opened earlier, RUNNING again while this block works on it, then ended FINISHED,
    KILLED (the signal tagged) or FAILED (the reason tagged) as the block ends."""
    client.update_run(run_id, status="RUNNING")
    try:
        yield
    except BaseException as err:
        end_run(client, run_id, *ending(err))
        raise
    else:
        end_run(client, run_id, "FINISHED")


def ending(err: BaseException) -> tuple[str, dict[str, str]]:
    """How a run ends when ``err`` stops it: KILLED with the signal for an interrupt (a
    KeyboardInterrupt is a Ctrl-C outside interrupts_raise), else FAILED with the reason's first line."""
    if isinstance(err, (RunInterrupted, KeyboardInterrupt)):
        return "KILLED", {"tracker.interrupted_by": getattr(err, "signal_name", "SIGINT")}
    message = (str(err).splitlines() or [type(err).__name__])[0]
    return "FAILED", {"tracker.error": message[:5000], "tracker.error_type": type(err).__name__}


def failed_run(client: Any, experiment: str, run_name: str, tags: dict[str, str], params: dict[str, Any],
               reason: str) -> str:
    """A run that is FAILED from the start: the record of an attempt whose process failed before
    it could make its own run."""
    run_id = open_run(client, experiment, run_name, tags | {"tracker.error": reason[:5000]}, params)
    end_run(client, run_id, "FAILED")
    return run_id


def end_run(client: Any, run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
    """End a run this process did not open with ``recorded_run`` (a parent, a dead child's run)."""
    _end(client, run_id, status, tags or {})


def sync() -> list[tuple[str, str]]:
    """Upload the runs spooled for this tracking server, then close the orphans of every
    experiment; returns (run id, status) of each run uploaded. Raises TrackingServerError while
    the store cannot be reached or written."""
    from mlflow import MlflowClient

    uri = check_tracking_server()
    client = MlflowClient()
    uploaded = []
    for item in spool.pending(uri):
        status = spool.replay(client, item, apply=_apply)
        uploaded.append((item.run_id, status))
    for experiment in client.search_experiments():  # runs whose process died, spooled or not
        close_orphans(client, experiment.experiment_id)
    return uploaded


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
