"""Runs in real child processes: interrupted by real signals, against a real MLflow server,
launched by `mlflow run`, and two at once."""

import contextlib
import re
import signal
import subprocess
import sys

import pytest
from conftest import REPO, all_runs, mlflow_server, read_until, started, subprocess_env

pytestmark = pytest.mark.slow


def _tracker(*args: str) -> list[str]:
    return [sys.executable, "-m", "tracker", "run", *args]


def _wait_for_query_phase(proc, timeout=180, at_least=1):
    """Read the child's stderr until its progress bar shows ``at_least`` measured inferences."""
    def measured(text: str) -> bool:
        done = re.findall(r"\| *(\d+)/\d+ \[", text[-200:])
        return bool(done) and int(done[-1]) >= at_least

    return read_until(proc.stderr, measured, timeout)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_run_ends_killed_with_partial_energy(client, sig, code):
    # Long enough to interrupt: 2,000 summaries one at a time with the tiny model.
    with started(_tracker("--task", "summarization", "--n-samples", "2000", "--country", "FRA")) as proc:
        _wait_for_query_phase(proc, at_least=20)  # well inside the query phase: some energy to keep
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "logged as KILLED" in err
    [run] = all_runs(client)
    assert run.info.status == "KILLED"
    assert run.data.tags["tracker.interrupted_by"] == sig.name
    metrics = run.data.metrics
    assert metrics["energy_kwh"] > 0 and metrics["load_energy_kwh"] > 0
    assert 0 < metrics["inferences_measured"] < 2000
    assert "of 2000 inferences measured" in run.data.tags["tracker.run.partial"]


def test_run_against_a_real_mlflow_server(hermetic):
    with mlflow_server(hermetic) as uri:
        with started(_tracker("--task", "text-classification", "--n-samples", "16", "--country", "FRA",
                              "--no-progress"), subprocess_env(MLFLOW_TRACKING_URI=uri)) as proc:
            out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-2000:]
        from mlflow import MlflowClient

        remote = MlflowClient(tracking_uri=uri)
        [run] = all_runs(remote)
        assert run.info.status == "FINISHED"
        assert "codecarbon" in {a.path for a in remote.list_artifacts(run.info.run_id)}

        # imports, annotations and ratings through a server take MLflow's client, not SQL chunks
        from test_import import record, write

        records = write(hermetic / "emissions.csv", [
            record(f"r{i}", f"org/model-{i}", cpu=0.001 * (i + 1), gpu=0.0, ram=0.001, duration=10, emissions=0.0001)
            for i in range(3)])
        quality = write(hermetic / "q.csv", [{"model": "org/model-1", "dataset": "imdb", "metric": "acc", "value": "0.9"}])
        env = subprocess_env(MLFLOW_TRACKING_URI=uri)
        for command in (["import-codecarbon", str(records), "--task", "text-classification", "--dataset", "imdb",
                         "--n-samples", "1000", "--model-kind", "task-specific"],
                        ["annotate", "--quality", str(quality), "--experiments", "text-classification"],
                        ["report", "--output", str(hermetic / "report"), "--experiments", "text-classification"]):
            done = subprocess.run([sys.executable, "-m", "tracker", *command], env=env, capture_output=True,
                                  text=True, timeout=300, cwd=hermetic)
            assert done.returncode == 0, done.stderr[-3000:]
        imported = {r.data.params["model"]: r for r in all_runs(remote) if r.data.tags.get("tracker.imported")}
        assert len(imported) == 3 and {r.info.status for r in imported.values()} == {"FINISHED"}
        assert "codecarbon/emissions.csv" in {a.path for a in remote.list_artifacts(imported["org/model-0"].info.run_id,
                                                                                        "codecarbon")}
        assert imported["org/model-1"].data.metrics["quality"] == 0.9
        assert "tracker.quality.unavailable" not in imported["org/model-1"].data.tags
        assert imported["org/model-2"].data.tags["tracker.rating.stars"] == "1"  # the dearest of the four rows
        assert len({r.data.tags["tracker.rating.report_run_id"] for r in imported.values()}) == 1


def test_mlflow_run_entry_point(client, hermetic):
    """`mlflow run` creates its run in Default: the measured run goes to the task's experiment,
    linked both ways; with --experiment-name set to the task, it is nested under the launcher."""
    env = subprocess_env()
    base = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local",
            "-P", "task=text-classification", "-P", "n_samples=16", "-P", "country=FRA"]
    # A dataset of the user's, its columns named by parameters MLproject lacked before
    reviews = hermetic / "reviews.csv"
    reviews.write_text("body,verdict\n" + "".join(f"a {w} film,{i % 2}\n" for i, w in enumerate(["fine", "dull"] * 8)))
    columns = ["-P", f"dataset={reviews}", "-P", "text_column=body", "-P", "target_column=verdict",
               "-P", "tracking_mode=machine", "-P", "progress=false"]
    done = subprocess.run(base + columns, env=env, capture_output=True, text=True, timeout=300, cwd=hermetic)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = all_runs(client)
    launcher = next(r for r in runs if "tracker.measured_run_id" in r.data.tags)
    measured = client.get_run(launcher.data.tags["tracker.measured_run_id"])
    assert measured.data.tags["tracker.dataset.source"] == "local" and measured.data.params["dataset"].endswith("reviews.csv")
    assert measured.data.metrics["inferences_measured"] == 16
    assert client.get_experiment(measured.info.experiment_id).name == "text-classification"
    assert measured.info.status == "FINISHED" and launcher.info.status == "FINISHED"
    assert measured.data.tags["tracker.launcher_run_id"] == launcher.info.run_id
    assert measured.data.tags.get("mlflow.project.entryPoint") == "main"

    done = subprocess.run(base + ["--experiment-name", "text-classification"], env=env,
                          capture_output=True, text=True, timeout=300, cwd=hermetic)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [r for r in all_runs(client) if r.info.run_id not in (launcher.info.run_id, measured.info.run_id)]
    child = next(r for r in runs if "mlflow.parentRunId" in r.data.tags)
    parent = client.get_run(child.data.tags["mlflow.parentRunId"])
    assert parent.info.experiment_id == child.info.experiment_id == measured.info.experiment_id
    assert child.info.status == "FINISHED" and "energy_kwh" in child.data.metrics
    assert child.data.params["model"] == "builtin-tiny" and child.data.params["device"] == "cpu"


def test_two_runs_at_once_do_not_block_each_other(hermetic):
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(started(_tracker("--task", "text-classification", "--n-samples", "200",
                                                      "--country", "FRA", "--no-progress"),
                                             subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{hermetic}/db{i}.db")))
                 for i in range(2)]
        for proc in procs:
            _, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err[-2000:]
            assert "Another instance of codecarbon" not in err
