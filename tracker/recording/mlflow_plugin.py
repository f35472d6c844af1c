"""MLflow's store plugin for ``sqlite:`` URIs, registered by tracker's package (entry points
``mlflow.tracking_store`` and ``mlflow.model_registry_store``): every MLflow process of this
environment (``mlflow ui``, the launcher of ``mlflow run``, a notebook's ``MlflowClient``) then
opens a SQLite store under the same lock as tracker, so that two of them opening a new store at
once cannot leave it half-migrated (tracker.recording.store). The store itself is MLflow's own,
built by MLflow's own builder once the schema is ready.

MLflow loads this module while it is being imported: it imports nothing of MLflow's or tracker's
until a store is asked for.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


def tracking_store(store_uri: str, artifact_uri: str | None = None):
    """MLflow's SQLAlchemy tracking store for ``store_uri``, its schema made ready first."""
    if _read_replica():
        from mlflow.server.handlers import TrackingStoreRegistryWrapper

        build = TrackingStoreRegistryWrapper._get_sqlalchemy_store
    else:
        from mlflow.tracking._tracking_service.utils import _get_sqlalchemy_store as build
    return _opened(store_uri, build, artifact_uri)


def registry_store(store_uri: str):
    """MLflow's SQLAlchemy model registry store for ``store_uri``, its schema made ready first."""
    if _read_replica():
        from mlflow.server.handlers import ModelRegistryStoreRegistryWrapper

        build = ModelRegistryStoreRegistryWrapper._get_sqlalchemy_store
    else:
        from mlflow.tracking._model_registry.utils import _get_sqlalchemy_store as build
    return _opened(store_uri, build)


def _read_replica() -> bool:
    """Whether this is a worker of an `mlflow server` given a read replica: the one thing the
    server's builders add to the client's (which also resolve a missing artifact root)."""
    from mlflow.server.constants import READ_REPLICA_BACKEND_STORE_URI_ENV_VAR

    return bool(os.environ.get(READ_REPLICA_BACKEND_STORE_URI_ENV_VAR))


def _opened(store_uri: str, build: Callable[..., Any], *args: Any) -> Any:
    from tracker.errors import TrackingServerError
    from tracker.recording.store import schema_ready, sqlite_path

    database = sqlite_path(store_uri)
    lock = contextlib.ExitStack()
    if database is not None:
        try:
            lock.enter_context(schema_ready(database))
        except TrackingServerError:
            raise  # a store being migrated past the wait, or one that cannot be rebuilt: one line says so
        except Exception as err:  # never worse than MLflow alone: it opens the store and says what it says
            logger.warning("could not prepare the MLflow store %s (%s): opening it as MLflow does", database, err)
    with lock:  # MLflow's own failures are its own, raised once
        return build(store_uri, *args)
