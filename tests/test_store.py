"""A new SQLite store opened by others at the same moment as a run (the UI, a notebook's client), and
a store that a concurrent migration left half-way: never a broken store, never a traceback."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MlflowServer, all_runs, started, subprocess_env
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

PLAIN_CLIENT = ("import sys; from mlflow import MlflowClient; client = MlflowClient(sys.argv[1]); "
                "client.search_experiments(); client.search_registered_models(); "
                "print(len(client.search_runs([e.experiment_id for e in client.search_experiments()])))")


# The same client in an environment without tracker: MLflow's own builders, no store plugin, so
# nobody's lock.
UNGUARDED_CLIENT = ("from mlflow.tracking._tracking_service import utils as t; "
                    "from mlflow.tracking._model_registry import utils as r; "
                    "t._tracking_store_registry.register('sqlite', t._get_sqlalchemy_store); "
                    "r._get_store_registry().register('sqlite', r._get_sqlalchemy_store); " + PLAIN_CLIENT)

# As the launcher of `mlflow run` opens the store: with MLflow's server modules loaded.
LAUNCHER_CLIENT = "import mlflow.server.handlers; " + PLAIN_CLIENT


def _plain_client(uri: str, script: str = PLAIN_CLIENT) -> list[str]:
    """A client that is not tracker's: it opens (and, on a new store, migrates) the store as the UI does."""
    return [sys.executable, "-c", script, uri]


def test_a_plain_client_and_a_run_opening_one_new_store_at_once_both_succeed(tmp_path):
    """Twice, each time a new store. Seen before: 2 in 3 tries died of `table _alembic_tmp_... already exists` and left the
    store broken for good; `prepare_sqlite_store` alone beside a client failed 5 in 5 here."""
    for attempt in range(2):
        uri = f"sqlite:///{tmp_path}/{attempt}/mlflow.db"
        (tmp_path / str(attempt)).mkdir()
        env = subprocess_env(MLFLOW_TRACKING_URI=uri)
        run = [sys.executable, "-m", "tracker", "run", "--task", "text-classification", "--model", "builtin-tiny",
               "--dataset", "builtin", "--n-samples", "4", "--warmup", "0", "--no-progress", "--country", "FRA"]
        with contextlib.ExitStack() as stack:  # started together: the run's own start is the slower
            client = stack.enter_context(started(_plain_client(uri), env))
            tracker = stack.enter_context(started(run, env))
            client_out, client_err = client.communicate(timeout=300)
            _, tracker_err = tracker.communicate(timeout=300)
        assert client.returncode == 0, client_err[-2000:]
        assert tracker.returncode == 0 and "Traceback" not in tracker_err, tracker_err[-3000:]
        after = subprocess.run(_plain_client(uri), env=env, capture_output=True, text=True, timeout=120)
        assert after.returncode == 0 and after.stdout.strip() == "1", after.stderr[-2000:]  # the run, FINISHED
        assert _leftovers(tmp_path / str(attempt) / "mlflow.db") == []


def _leftovers(database: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE name LIKE '\\_alembic\\_tmp\\_%' "
                                         "ESCAPE '\\'")]


def test_a_store_left_half_migrated_is_rebuilt_with_its_runs(cli, client, hermetic, monkeypatch, caplog):
    """The worst a batch migration that dies leaves behind: the table it was rebuilding dropped,
    its rows only in alembic's ``_alembic_tmp_`` copy. MLflow then fails on the store for good."""
    import tracker.recording.store as store

    monkeypatch.setattr(store, "SETTLED_S", 0.5)  # nobody migrates it in this test: no need to wait 15 s
    args = ("run", "--task", "text-classification", "--model", "builtin-tiny", "--dataset", "builtin",
            "--n-samples", "4", "--warmup", "0", "--no-progress", "--country", "FRA")
    assert cli(*args)[0] == 0
    [before] = all_runs(client)
    database = hermetic / "mlflow.db"
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        db.execute("CREATE TABLE _alembic_tmp_runs AS SELECT * FROM runs")
        db.execute("DROP TABLE runs")
    env = subprocess_env()
    broken = subprocess.run(_plain_client(f"sqlite:///{database}", UNGUARDED_CLIENT), env=env, capture_output=True,
                            text=True, timeout=120)
    assert broken.returncode != 0  # the fault is real: MLflow itself cannot use the store

    holder = sqlite3.connect(database)  # a process that has the store open (the UI)
    code, _, err = cli(*args)
    assert code == 0, err
    [line] = [r.getMessage() for r in caplog.records if "half-migrated" in r.getMessage()]
    assert "rebuilt with its 1 run(s)" in line and ".broken-" in line
    assert len(list(hermetic.glob("mlflow.db.broken-*"))) == 1  # the old file kept
    assert _leftovers(database) == []
    runs = {r.info.run_id: r for r in all_runs(client)}
    assert len(runs) == 2 and runs[before.info.run_id].info.status == "FINISHED"
    assert runs[before.info.run_id].data.metrics == before.data.metrics  # its figures, as they were
    assert subprocess.run(_plain_client(f"sqlite:///{database}"), env=env, capture_output=True,
                          timeout=120).returncode == 0
    with contextlib.closing(holder):  # rebuilt in place: it reads the repaired store, not the old file
        assert holder.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2


def test_mlflow_processes_without_tracker_code_open_a_new_store_under_its_lock(tmp_path):
    """The README's first steps, `mlflow ui` and `mlflow run .` started together, are two MLflow
    processes that run no tracker code of their own (the run's launcher opens the store first):
    tracker's store plugin makes them take the lock too. Here a real `mlflow server` and two plain
    clients start together on one new store."""
    from mlflow.tracking._model_registry.utils import _get_store_registry
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    from tracker.recording import mlflow_plugin

    assert _tracking_store_registry._registry["sqlite"] is mlflow_plugin.tracking_store  # the entry points
    assert _get_store_registry()._registry["sqlite"] is mlflow_plugin.registry_store
    database = tmp_path / "server.db"  # MlflowServer's store
    uri, env = f"sqlite:///{database}", subprocess_env()
    server = MlflowServer(tmp_path)
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(started(_plain_client(uri, script), env))
                   for script in (PLAIN_CLIENT, LAUNCHER_CLIENT)]
        stack.callback(server.stop)
        server.start()  # the clients start meanwhile
        results = [(c.communicate(timeout=300), c.returncode) for c in clients]
        assert all(code == 0 and out.strip() == "0" for (out, _), code in results), results
        names = [e.name for e in MlflowClient(server.uri).search_experiments()]
        assert names == ["Default"]  # the server answers from the same store
    assert _leftovers(database) == []
    with contextlib.closing(sqlite3.connect(database)) as db:
        [(revision,)] = db.execute("SELECT version_num FROM alembic_version").fetchall()
    assert revision == _head_revision()


def _head_revision() -> str:
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    return ScriptDirectory.from_config(_get_alembic_config("sqlite://")).get_current_head()


def test_a_new_store_opened_first_by_a_process_with_mlflows_server_loaded_gets_its_default_experiment(tmp_path):
    """The launcher of `mlflow run` has MLflow's server modules loaded; the store plugin must still
    build it a client's store (the server's builder leaves the artifact root unset there)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    opened = subprocess.run(_plain_client(uri, LAUNCHER_CLIENT), env=subprocess_env(),
                            capture_output=True, text=True, timeout=120)
    assert opened.returncode == 0 and opened.stdout.strip() == "0", opened.stderr[-2000:]


def test_a_run_where_the_store_plugin_is_not_registered_says_so_in_one_line(cli, monkeypatch, caplog):
    """A checkout updated without `pip install -e .` again: MLflow's processes open stores unguarded."""
    from mlflow.tracking._tracking_service import utils

    monkeypatch.setitem(utils._tracking_store_registry._registry, "sqlite", utils._get_sqlalchemy_store)
    code, _, err = cli("run", "--task", "text-classification", "--model", "builtin-tiny", "--dataset", "builtin",
                       "--n-samples", "2", "--warmup", "0", "--no-progress", "--country", "FRA")
    assert code == 0, err
    assert [r for r in caplog.records if "store plugin is not registered" in r.getMessage()]
