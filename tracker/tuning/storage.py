"""The study's database: opened with heartbeats, one worker at a time on SQLite."""

from __future__ import annotations

import contextlib
import fcntl
import re
import time
import warnings
from collections.abc import Iterator
from typing import Any

from tracker.errors import ConfigError
from tracker.recording.store import sqlite_path
from tracker.tuning.config import TuneConfig


def single_sqlite_worker(storage: str) -> contextlib.AbstractContextManager:
    """Hold a lock on a SQLite study file: a second worker gets a clear refusal, not lock errors."""
    database = sqlite_path(storage) if storage.startswith("sqlite:///") else None
    if database is None:  # a server's database, or one in this process's memory
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def locked() -> Iterator[None]:
        path = database.with_name(database.name + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(
                    f"another tune worker is using {storage}: SQLite takes one worker; for several, "
                    "share a PostgreSQL study: --storage postgresql://USER:PASS@HOST/DB") from None
            yield

    return locked()


def open_storage(config: TuneConfig, attempts: int = 5) -> Any:
    """The study database, with heartbeats. Workers starting together on a new database race to
    create Optuna's tables; the loser retries and finds them made."""
    import optuna
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental; we rely on them
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    config.storage, heartbeat_interval=config.heartbeat_s,
                    grace_period=3 * config.heartbeat_s,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
        except ImportError as err:
            raise ConfigError(f"no database driver for {safe_url(config.storage)}: "
                              "pip install -e \".[postgres]\"") from err
        except sqlalchemy.exc.OperationalError as err:
            if "could not connect" in str(err) or "Connection refused" in str(err):
                raise ConfigError(f"cannot reach the study database {safe_url(config.storage)}: "
                                  f"{str(err.orig).splitlines()[0]}") from err
            if attempt == attempts - 1:
                raise
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
        time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def create_or_load(config: TuneConfig, storage: Any, higher_is_better: bool, sampler: Any) -> tuple[Any, bool]:
    """The study, created or found; ``sampler`` is the strategy's (``strategies.make_sampler``)."""
    import optuna

    directions = (["minimize"] if config.objective == "carbon"
                  else ["minimize", "maximize" if higher_is_better else "minimize"])
    try:
        study = optuna.create_study(study_name=config.name, storage=storage, sampler=sampler,
                                    directions=directions)
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=config.name, storage=storage, sampler=sampler)
        if len(study.directions) != len(directions):
            raise ConfigError(f"study '{config.name}' exists with objective "
                              f"{'pareto' if len(study.directions) == 2 else 'carbon'}; pass that "
                              "--objective or another --study-name") from None
        return study, False


def safe_url(url: str) -> str:
    """A storage URL without its password, for tags."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
