"""Hermetic tests: a sqlite MLflow store under tmp_path, Hub offline, built-ins in a session cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def builtin_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Tiny models and sample data are built once per test session, not once per test.
    return tmp_path_factory.mktemp("tracker-cache")


@pytest.fixture(autouse=True)
def hermetic(tmp_path: Path, builtin_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TRACKER_CACHE_DIR", str(builtin_cache))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    work = tmp_path / "work"
    work.mkdir()
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
    return client.search_runs([e.experiment_id for e in experiments])


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child `python -m tracker`: the repo importable, the venv's bin on PATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra)
    return env
