"""Hermetic tests: a sqlite MLflow store under tmp_path, Hub offline, built-ins in a session cache."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A shell starts background jobs (`pytest &`, nohup) with SIGINT ignored, and children inherit an
# ignored signal: the tests' Ctrl-C would never land. A handler here is reset to the default in
# every child this process starts.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(optionalhook=True)  # pytest -p no:xdist runs the tests in this process
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: a worker per CPU this process may use, at most 4 (each test starts processes of
    its own: more workers would only crowd them, and each holds a few GB at its peak)."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first, in their order: handed out to the workers longest first, the last
    minutes are not one long test alone on one worker while the others wait."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def builtin_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Tiny models and sample data are built once per test session, not once per test.
    return tmp_path_factory.mktemp("tracker-cache")


@pytest.fixture(scope="session")
def template_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow SQLite store, migrated once per session (MLflow's migrations take 3 to 5 s a store
    here): each test gets a copy. Tests where a fresh store is the point make their own."""
    folder = tmp_path_factory.mktemp("template-store")
    subprocess.run([sys.executable, "-c", "import sys; from mlflow import MlflowClient; "
                    "MlflowClient(sys.argv[1]).search_experiments()", f"sqlite:///{folder}/mlflow.db"],
                   cwd=folder, env=subprocess_env(), check=True, capture_output=True, timeout=300)
    return folder / "mlflow.db"


def copy_store(template: Path, destination: Path, artifacts: Path) -> None:
    """The template store as ``destination``, its Default experiment's artifacts under ``artifacts``
    (where a store created there would have put them)."""
    import sqlite3

    shutil.copyfile(template, destination)
    with contextlib.closing(sqlite3.connect(destination)) as db, db:
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(artifacts / "0"),))


@pytest.fixture(autouse=True)
def hermetic(tmp_path: Path, builtin_cache: Path, template_store: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TRACKER_CACHE_DIR", str(builtin_cache))
    monkeypatch.setenv("TRACKER_SPOOL_DIR", str(tmp_path / "spool"))
    work = tmp_path / "work"
    work.mkdir()
    copy_store(template_store, tmp_path / "mlflow.db", work / "mlruns")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # One torch thread a process: the tests' tiny models gain nothing from two, and two threads a
    # process, with two tests' processes at once, spin for a core another process waits for
    # (a run of 100 tiny summaries: 31.9 CPU-s with torch's 2 threads, 20.9 with 1; wall 24.5 and 22.2 s).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.chdir(work)  # the tests check that nothing is written here
    return tmp_path


@pytest.fixture
def cli(capsys: pytest.CaptureFixture):
    """Run the `tracker` command in-process; returns (exit code, stdout, stderr)."""
    from tracker.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def client():
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    yield MlflowClient()
    mlflow.set_tracking_uri(None)


def all_runs(client) -> list:
    experiments = client.search_experiments()
    if not experiments:
        return []
    return client.search_runs([e.experiment_id for e in experiments], max_results=50000)  # MLflow's most


@contextlib.contextmanager
def started(command: list[str], env: dict | None = None, **popen) -> Iterator[subprocess.Popen]:
    """A child in a process group of its own (text pipes by default), killed with its group when the
    test leaves, however it leaves (a failed assertion, a timeout)."""
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True} | popen
    process = subprocess.Popen(command, env=env or subprocess_env(), start_new_session=True, **options)
    try:
        yield process
    finally:  # the whole group: a child it left (its leader killed first) goes too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def read_until(stream, found, timeout_s: float) -> str:
    """What ``stream`` said until ``found(text so far)`` is true; an AssertionError with the text when
    the deadline passes or the stream ends first. Read in a thread: a silent child cannot hang the test."""
    import threading

    seen: list[str] = []
    done = threading.Event()

    def read() -> None:
        while chunk := stream.read(1):
            seen.append(chunk)
            if chunk in "[]\r\n" and found("".join(seen[-300:])):  # at the end of a progress line
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    done.wait(timeout_s)
    text = "".join(seen)
    if not found(text):
        raise AssertionError(f"not seen within {timeout_s:.0f} s: {text[-2000:]}")
    return text


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child `python -m tracker`: the repo importable, the venv's bin on PATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra)
    return env


# MLflow's server starts seven job consumers by default, each a process importing MLflow: CPU
# taken from the run beside it, for jobs (evaluation, scoring) that runs here never ask for.
SERVER_WITHOUT_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


class MlflowServer:
    """A real `mlflow server` on a free loopback port, with its store in ``folder``: it can be
    killed and started again on the same port and store, as a server that goes away comes back."""

    def __init__(self, folder: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.folder = folder
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, deadline_s: float = 120) -> str:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.folder}/server.db",
             "--artifacts-destination", str(self.folder / "server-artifacts"), "--workers", "1"],
            env=subprocess_env(**SERVER_WITHOUT_JOBS), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                urllib.request.urlopen(self.uri + "/health", timeout=1).close()
                return self.uri
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail("mlflow server did not start")
                time.sleep(0.5)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            self.process.wait(timeout=30)


@contextlib.contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """A real `mlflow server` on a free loopback port; yields its URI."""
    server = MlflowServer(folder)
    try:
        yield server.start()
    finally:
        server.stop()
