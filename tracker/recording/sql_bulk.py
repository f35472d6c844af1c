"""Many runs, or many runs' tags, in one transaction of a SQL tracking store.

MLflow's client writes a run in three or more transactions (create, log_batch, terminate), about
40 ms a run on SQLite on the development machine, and a tag update in one more: an import of
thousands of records, or a report that rates thousands of runs, would spend minutes in them. For
a SQL store (sqlite, postgresql, mysql) these functions write MLflow's own rows (its ORM models,
checked by MLflow's own validation) for many runs in one session. ``tests/test_import.py`` writes
the same runs through this module and through MLflow's client and compares what MLflow reads back,
so a change in MLflow's schema fails a test instead of writing runs MLflow cannot read.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

CHUNK = 500  # keys per IN (...) clause: well under SQLite's limit of bound parameters


def sql_store(client: Any) -> Any | None:
    """The client's store when it is MLflow's SQL store, else None (a server, a file store)."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except ImportError:  # MLflow without SQLAlchemy: the client's calls serve
        return None
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    return store if isinstance(store, SqlAlchemyStore) else None


def new_run_id() -> str:
    return uuid.uuid4().hex  # as MLflow makes them


def insert_finished_runs(store: Any, experiment_id: str, runs: list[dict[str, Any]]) -> None:
    """Insert FINISHED runs, each a dict with run_id, run_name, tags, params, metrics (name to
    value), start_ms, end_ms and artifact_uri, in one transaction: all of them or none."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.entities.lifecycle_stage import LifecycleStage
    from mlflow.entities.source_type import SourceType
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_USER
    from mlflow.utils.time import get_current_time_millis
    from mlflow.utils.validation import _validate_batch_log_data

    now = get_current_time_millis()
    rows: dict[Any, list[dict[str, Any]]] = {model: [] for model in (SqlRun, SqlTag, SqlParam, SqlMetric, SqlLatestMetric)}
    for run in runs:
        tags = run["tags"] | {MLFLOW_RUN_NAME: run["run_name"]}
        metrics = [Metric(k, float(v), now, 0) for k, v in run["metrics"].items()]
        params = [Param(k, str(v)) for k, v in run["params"].items()]
        _validate_batch_log_data(metrics, params, [RunTag(k, str(v)) for k, v in tags.items()])
        run_id = run["run_id"]
        rows[SqlRun].append(dict(
            name=run["run_name"], artifact_uri=run["artifact_uri"], run_uuid=run_id,
            experiment_id=int(experiment_id), source_type=SourceType.to_string(SourceType.UNKNOWN),
            source_name="", entry_point_name="", user_id=tags.get(MLFLOW_USER, "unknown"), status="FINISHED",
            start_time=run["start_ms"] or now, end_time=run["end_ms"] or now, deleted_time=None,
            source_version="", lifecycle_stage=LifecycleStage.ACTIVE))
        rows[SqlTag] += [dict(key=k, value=str(v), run_uuid=run_id) for k, v in tags.items()]
        rows[SqlParam] += [dict(key=p.key, value=p.value, run_uuid=run_id) for p in params]
        _add_metric_rows(store, rows, run_id, metrics)
    with store.ManagedSessionMaker(read_only=False) as session:  # one transaction, committed at the end
        _insert(session, rows)


def update_runs(store: Any, tags: dict[str, dict[str, str]], metrics: dict[str, dict[str, float]],
                delete_tags: dict[str, tuple[str, ...]]) -> None:
    """Set tags and log metrics (step 0, now) on many runs, and delete each run's ``delete_tags``,
    in one transaction."""
    from mlflow.entities import Metric, RunTag
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlTag
    from mlflow.utils.time import get_current_time_millis
    from mlflow.utils.validation import _validate_batch_log_data

    now = get_current_time_millis()
    rows: dict[Any, list[dict[str, Any]]] = {SqlTag: [], SqlMetric: [], SqlLatestMetric: []}
    by_keys: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}  # runs that replace the same names
    for run_id in set(tags) | set(metrics) | set(delete_tags):
        run_tags, run_metrics = tags.get(run_id, {}), metrics.get(run_id, {})
        checked = [Metric(k, float(v), now, 0) for k, v in run_metrics.items()]
        _validate_batch_log_data(checked, [], [RunTag(k, str(v)) for k, v in run_tags.items()])
        by_keys.setdefault((tuple(sorted(run_tags) + list(delete_tags.get(run_id, ()))), tuple(sorted(run_metrics))),
                           []).append(run_id)
        rows[SqlTag] += [dict(key=k, value=str(v), run_uuid=run_id) for k, v in run_tags.items()]
        _add_metric_rows(store, rows, run_id, checked)
    with store.ManagedSessionMaker(read_only=False) as session:
        for (tag_keys, metric_keys), run_ids in by_keys.items():
            for chunk in _chunks(run_ids):
                for model, keys in ((SqlTag, tag_keys), (SqlLatestMetric, metric_keys)):
                    if keys:  # the latest value is replaced; the history (SqlMetric) keeps the old ones
                        session.query(model).filter(model.run_uuid.in_(chunk), model.key.in_(keys)).delete(
                            synchronize_session=False)
        _insert(session, rows)


def _add_metric_rows(store: Any, rows: dict[Any, list[dict[str, Any]]], run_id: str, metrics: list[Any]) -> None:
    """A metric is two rows: its history (SqlMetric) and its latest value (SqlLatestMetric)."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric

    for metric in metrics:
        is_nan, value = store.sanitize_metric_value(metric.value)
        for model in (SqlMetric, SqlLatestMetric):
            rows[model].append(dict(key=metric.key, value=value, timestamp=metric.timestamp, step=metric.step,
                                    is_nan=is_nan, run_uuid=run_id))


def _insert(session: Any, rows: dict[Any, list[dict[str, Any]]]) -> None:
    """Plain INSERTs of many rows per table (executemany), runs first: the ORM's unit of work
    would build an object per row, most of the time of a large import."""
    from sqlalchemy import insert

    for model, values in rows.items():
        if values:
            session.execute(insert(model.__table__), values)


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start:start + CHUNK]
