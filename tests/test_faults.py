"""Faults a real user meets, each done for real: the README's promises under them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MlflowServer, all_runs, started, subprocess_env

EVIL = '''
from pathlib import Path
Path({marker!r}).write_text("the model folder's own code ran")
from transformers import DistilBertForSequenceClassification


class EvilModel(DistilBertForSequenceClassification):
    pass
'''


def summarizing(n_samples: int = 1000) -> list[str]:
    """A run long enough to be hit mid-measurement: tiny summaries, one at a time (about 0.2 s each
    here). A test that lets the run go on after its fault asks for fewer: it waits for all of them."""
    return [sys.executable, "-m", "tracker", "run", "--task", "summarization", "--model", "builtin-tiny",
            "--dataset", "builtin", "--n-samples", str(n_samples), "--no-progress", "--country", "FRA"]


def _wait_for_heartbeat(client, process, deadline_s=300):
    """The first run once its heartbeat has logged inferences from inside the query phase."""
    deadline = time.monotonic() + deadline_s
    while True:
        runs = [r for r in all_runs(client) if r.data.metrics.get("partial_inferences", 0) > 0]
        if runs:
            return runs[0]
        assert process.poll() is None and time.monotonic() < deadline, "no heartbeat came"
        time.sleep(0.2)


def _folder_with_its_own_code(tmp_path: Path) -> tuple[Path, Path]:
    """The built-in tiny classifier, copied, with an auto_map to a modeling file that writes a
    marker when imported: what a downloaded model with custom code looks like."""
    from tracker.sources.models import builtin_model
    from tracker.tasks import get_task

    folder = tmp_path / "model-with-code"
    shutil.copytree(builtin_model(get_task("text-classification")).location, folder)
    marker = tmp_path / "marker.txt"
    (folder / "modeling_evil.py").write_text(EVIL.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def _tracker(*args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracker", *args], input=stdin, capture_output=True, text=True,
                          env=env or subprocess_env(), timeout=600)


@pytest.mark.slow
def test_a_model_folders_own_code_never_runs_without_the_flag_even_on_a_y(tmp_path, client):
    folder, marker = _folder_with_its_own_code(tmp_path)
    args = ("run", "--task", "text-classification", "--dataset", "builtin", "--n-samples", "4", "--no-progress",
            "--model", str(folder))
    refused = _tracker(*args, stdin="y\ny\ny\n")  # transformers' prompt, answered yes, as `yes y |` would
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert not marker.exists()
    [line] = [line for line in refused.stderr.splitlines() if line.startswith("tracker: error:")]
    assert "--trust-remote-code" in line and "auto_map" in line
    assert "Traceback" not in refused.stderr
    assert all_runs(client) == []  # refused before any run

    allowed = _tracker(*args, "--trust-remote-code")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert marker.exists()  # the flag is what lets it run: the refusal was not a broken load
    [run] = all_runs(client)
    assert run.info.status == "FINISHED"
    assert run.data.tags["tracker.model.trust_remote_code"].startswith("true")


def test_every_load_states_trust_remote_code_so_transformers_never_asks(monkeypatch):
    from tracker.errors import ModelLoadError
    from tracker.loading.remote_code import pretrained, remote_code

    seen = []

    class Loader:
        @staticmethod
        def from_pretrained(source, **kwargs):
            seen.append(kwargs["trust_remote_code"])
            if not kwargs["trust_remote_code"]:
                raise ValueError("The repository contains custom code ... pass `trust_remote_code=True`")
            return "loaded"

    with pytest.raises(ModelLoadError, match="--trust-remote-code"):
        pretrained(Loader, "org/model")
    with remote_code(True):
        assert pretrained(Loader, "org/model") == "loaded"
    assert seen == [False, True]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "-5"])
def test_impossible_carbon_intensities_are_refused_in_one_line(cli, client, value):
    code, _, err = cli("run", "--task", "text-classification", f"--carbon-intensity={value}", "--no-progress")
    assert code == 2
    ours = [line for line in err.splitlines() if line.startswith("tracker:")]
    assert len(ours) == 1 and "--carbon-intensity must be a finite number >= 0" in ours[0]
    assert "Traceback" not in err
    assert all_runs(client) == []


@pytest.mark.slow
def test_eight_processes_at_once_on_a_fresh_sqlite_store(tmp_path, client):
    """MLflow migrates a new store on first open; eight at once used to crash and break it."""
    store = f"sqlite:///{tmp_path}/fresh/mlflow.db"  # not even its folder exists yet
    env = subprocess_env(MLFLOW_TRACKING_URI=store)
    command = [sys.executable, "-m", "tracker", "run", "--task", "text-classification", "--dataset", "builtin",
               "--model", "builtin-tiny", "--n-samples", "4", "--warmup", "0", "--no-progress", "--country", "FRA"]
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(8)]
    try:
        outcomes = [p.communicate(timeout=600) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    failures = [err[-1500:] for p, (_, err) in zip(processes, outcomes) if p.returncode != 0]
    assert not failures, failures[0]
    from mlflow import MlflowClient

    later = MlflowClient(tracking_uri=store)  # the store is whole for every later command
    runs = later.search_runs([later.get_experiment_by_name("text-classification").experiment_id])
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    assert os.path.exists(f"{tmp_path}/fresh/mlflow.db.lock")


@pytest.mark.slow
def test_a_failed_baseline_ends_tune_in_one_line_and_the_next_tune_measures_it_again(cli, client, hermetic,
                                                                                      monkeypatch):
    import tracker.execution.child

    real = tracker.execution.child.run_command

    def baseline_dies(config, tags):
        if tags.get("tracker.tune.role") == "baseline":
            return [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
        return real(config, tags)

    storage = f"sqlite:///{hermetic}/optuna.db"
    args = ("tune", "--task", "text-classification", "--model", "builtin-tiny", "--dataset", "builtin",
            "--n-samples", "8", "--country", "FRA", "--warmup", "0", "--min-window-s", "0", "--n-trials", "1",
            "--max-batch-size", "2", "--precisions", "fp32", "--storage", storage, "--study-name", "poisoned")
    monkeypatch.setattr(tracker.execution.child, "run_command", baseline_dies)
    code, _, err = cli(*args)
    assert code == 1
    [line] = [line for line in err.splitlines() if line.startswith("tracker:")]
    assert "baseline run (batch 1, fp32)" in line and "SIGKILL" in line and "measures it again" in line
    assert "Traceback" not in err

    monkeypatch.setattr(tracker.execution.child, "run_command", real)
    code, out, err = cli(*args)  # the same command, at once: no hour-long wait for a baseline that never comes
    assert code == 0, err
    parents = [r for r in all_runs(client) if r.data.tags.get("tracker.tune.role") == "parent"]
    assert sorted(r.info.status for r in parents) == ["FAILED", "FINISHED"]
    baselines = [r for r in all_runs(client) if r.data.tags.get("tracker.tune.role") == "baseline"]
    assert "FINISHED" in {r.info.status for r in baselines}


def test_empty_and_nan_inputs_are_skipped_and_counted(cli, client, hermetic):
    path = hermetic / "reviews.csv"
    path.write_text("text,label\ngreat film,1\n,0\nNaN,1\n   ,0\nawful film,0\nfine film,1\n")
    code, _, err = cli("run", "--task", "text-classification", "--model", "builtin-tiny", "--dataset", str(path),
                       "--target-column", "label", "--n-samples", "3", "--no-progress")
    assert code == 0, err
    [run] = all_runs(client)
    assert run.data.metrics["inferences_measured"] == 3  # the three films, not the empty cells
    assert run.data.tags["tracker.dataset.skipped_rows"] == "3"


def _broken_model(tmp_path: Path, fault: str) -> Path:
    """The built-in tiny classifier, copied and broken as a download or a copy breaks it."""
    import argparse

    import torch
    from safetensors.torch import load_file

    from tracker.sources.models import builtin_model
    from tracker.tasks import get_task

    folder = tmp_path / fault
    shutil.copytree(builtin_model(get_task("text-classification")).location, folder)
    weights = folder / "model.safetensors"
    if fault == "config-only":
        weights.unlink()
    elif fault == "corrupt-safetensors":
        weights.write_bytes(weights.read_bytes()[:100])  # cut short, as by a broken download
    elif fault == "config-mismatch":  # the weights fine, the config edited: shapes differ at load time
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | {"vocab_size": 2 * config["vocab_size"]}))
    elif fault in ("unsafe-pickle", "plain-pickle"):
        state = load_file(str(weights))
        if fault == "unsafe-pickle":
            state["extra"] = argparse.Namespace(note="a pickled object: could be any code")
        weights.unlink()
        torch.save(state, folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize("fault, message", [
    ("config-only", "holds no weights"),
    ("corrupt-safetensors", "model.safetensors is unreadable"),
    ("unsafe-pickle", "pytorch_model.bin holds pickled objects (argparse.Namespace) that torch's safe loader"),
])
def test_a_model_that_cannot_be_loaded_is_refused_in_one_line_before_any_run(cli, client, tmp_path, fault,
                                                                             message):
    folder = _broken_model(tmp_path, fault)
    code, _, err = cli("run", "--task", "text-classification", "--model", str(folder), "--dataset", "builtin",
                       "--n-samples", "2", "--no-progress")
    assert code == 2
    [line] = [line for line in err.splitlines() if line.startswith("tracker: error:")]
    assert message in line and "Traceback" not in err
    assert "weights_only" not in err  # torch's advice to turn its safe loader off is never passed on
    assert all_runs(client) == []


def test_weights_that_do_not_fit_their_config_fail_the_run_in_one_line(cli, client, tmp_path):
    """Found only when the model loads, in the run: FAILED with the reason, not a traceback."""
    folder = _broken_model(tmp_path, "config-mismatch")
    code, _, err = cli("run", "--task", "text-classification", "--model", str(folder), "--dataset", "builtin",
                       "--n-samples", "2", "--no-progress")
    assert code != 0 and "Traceback" not in err, err[-3000:]
    [line] = [line for line in err.splitlines() if line.startswith("tracker: error:")]
    assert "do not fit its config.json" in line
    [run] = all_runs(client)
    assert run.info.status == "FAILED" and "do not fit its config.json" in run.data.tags["tracker.error"]


def test_pickled_weights_that_load_safely_still_run(cli, client, tmp_path):
    folder = _broken_model(tmp_path, "plain-pickle")
    code, _, err = cli("run", "--task", "text-classification", "--model", str(folder), "--dataset", "builtin",
                       "--n-samples", "2", "--no-progress")
    assert code == 0, err
    assert [r.info.status for r in all_runs(client)] == ["FINISHED"]


def test_a_load_failure_at_load_time_is_one_line_without_torchs_advice(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from tracker.errors import ModelLoadError
    from tracker.loading.remote_code import pretrained

    folder = _broken_model(tmp_path, "unsafe-pickle")  # as if it changed after the check
    with pytest.raises(ModelLoadError) as raised:
        pretrained(AutoModelForSequenceClassification, str(folder))
    assert "argparse.Namespace" in str(raised.value) and "weights_only" not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


@pytest.mark.parametrize("flags, input_logged", [((), True), (("--no-log-inputs",), False)])
def test_inputs_are_cut_short_in_the_sample_and_left_out_on_request(cli, client, hermetic, flags, input_logged):
    import csv
    import io

    secret = "PATIENT-RECORD-7731 " + "x" * 400  # a private input, longer than the cut
    path = hermetic / "private.csv"
    path.write_text(f"text,label\n{secret},1\nfine film,0\n")
    code, _, err = cli("run", "--task", "text-classification", "--model", "builtin-tiny", "--dataset", str(path),
                       "--target-column", "label", "--n-samples", "2", "--no-progress", *flags)
    assert code == 0, err
    [run] = all_runs(client)
    sample = client.download_artifacts(run.info.run_id, "predictions_sample.csv", str(hermetic))
    rows = list(csv.DictReader(io.StringIO(Path(sample).read_text())))
    assert len(rows) == 2 and ("PATIENT-RECORD-7731" in Path(sample).read_text()) is input_logged
    if input_logged:
        assert rows[0]["input"].startswith("PATIENT-RECORD-7731") and len(rows[0]["input"]) == 200
    else:
        assert "input" not in rows[0] and run.data.params["log_inputs"] == "False"


@pytest.mark.parametrize("content, message", [
    ("text,label\n", "has no usable rows: it holds no rows at all (a header alone)"),
    ("text,label\n,1\nNaN,0\n", "has no usable rows: its 2 row(s) are all empty, NaN or unusable"),
    ("text,label\ngood,1\n,0\n", "has 1 usable rows (of 2; 1 empty or NaN), fewer than --n-samples 5"),
])
def test_a_file_without_enough_usable_rows_says_so(cli, client, hermetic, content, message):
    path = hermetic / "data.csv"
    path.write_text(content)
    code, _, err = cli("run", "--task", "text-classification", "--model", "builtin-tiny", "--dataset", str(path),
                       "--target-column", "label", "--n-samples", "5", "--no-progress")
    assert code == 2
    [line] = [line for line in err.splitlines() if line.startswith("tracker:")]
    assert message in line
    assert all_runs(client) == []


@pytest.mark.slow
def test_a_sigkilled_run_keeps_its_partial_energy_and_the_next_command_closes_it(cli, client):
    with started(summarizing(), subprocess_env(TRACKER_HEARTBEAT_S="0.5"), stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL) as process:
        _wait_for_heartbeat(client, process)
        os.kill(process.pid, signal.SIGKILL)  # no handler runs: nothing gets to close the run
        process.wait(timeout=60)
    [killed] = all_runs(client)
    assert killed.info.status == "RUNNING"

    code, _, err = cli("run", "--task", "summarization", "--model", "builtin-tiny", "--dataset", "builtin",
                       "--n-samples", "2", "--no-progress", "--country", "FRA")
    assert code == 0, err
    closed = client.get_run(killed.info.run_id)
    assert closed.info.status == "FAILED" and closed.info.end_time
    assert "is gone" in closed.data.tags["tracker.error"]
    assert closed.data.metrics["partial_energy_kwh"] > 0 and closed.data.metrics["partial_inferences"] > 0
    assert not [r for r in all_runs(client) if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_sigterm_to_tune_ends_its_parent_and_its_running_trial_killed(client, hermetic):
    storage = f"sqlite:///{hermetic}/optuna.db"
    command = [sys.executable, "-m", "tracker", "tune", "--task", "summarization", "--model", "builtin-tiny",
               "--dataset", "builtin", "--n-samples", "400", "--country", "FRA", "--warmup", "0",
               "--min-window-s", "0", "--n-trials", "2", "--max-batch-size", "1", "--precisions", "fp32",
               "--storage", storage]
    with started(command, stdout=subprocess.DEVNULL) as worker:
        deadline = time.monotonic() + 300
        while not any(r.info.status == "RUNNING" and r.data.tags.get("tracker.tune.role") == "baseline"
                      for r in all_runs(client)):  # the baseline is measuring in its child
            assert worker.poll() is None and time.monotonic() < deadline, "the baseline never started"
            time.sleep(0.2)
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=180)
    assert worker.returncode == 128 + signal.SIGTERM, err[-2000:]
    runs = all_runs(client)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    [parent] = [r for r in runs if r.data.tags.get("tracker.tune.role") == "parent"]
    [baseline] = [r for r in runs if r.data.tags.get("tracker.tune.role") == "baseline"]
    assert baseline.info.status == "KILLED" and baseline.data.tags["tracker.interrupted_by"] == "SIGTERM"
    assert parent.info.status == "KILLED" and parent.data.tags["tracker.interrupted_by"] == "SIGTERM"


@pytest.mark.slow
def test_a_lost_tracking_server_spools_the_run_and_sync_uploads_it(hermetic):
    from mlflow import MlflowClient

    server = MlflowServer(hermetic)
    uri = server.start()
    client = MlflowClient(uri)
    env = subprocess_env(MLFLOW_TRACKING_URI=uri, TRACKER_HEARTBEAT_S="0.5")
    try:
        with started(summarizing(150), env) as process:
            run_id = _wait_for_heartbeat(client, process).info.run_id  # measuring, its heartbeat reaching the server
            server.stop(signal.SIGKILL)  # the server goes away mid-run
            _, err = process.communicate(timeout=600)
    finally:
        server.stop(signal.SIGKILL)
    assert process.returncode == 1, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("tracker: error: lost the MLflow tracking server") and "tracker sync" in last
    spooled = list((hermetic / "spool").glob("*.jsonl"))
    assert [p.stem for p in spooled] == [run_id]

    server.start()  # back, on the same port and store
    assert client.get_run(run_id).info.status == "RUNNING"  # the server never heard the end
    synced = subprocess.run([sys.executable, "-m", "tracker", "sync"], env=env, capture_output=True, text=True,
                            timeout=300)
    try:
        assert synced.returncode == 0, synced.stderr[-3000:]
        assert "1 run(s) measured while this tracking store took no writes" in synced.stderr  # commands mention it
        assert f"run {run_id} uploaded, FINISHED" in synced.stdout
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.info.end_time
        assert run.data.metrics["energy_kwh"] > 0 and run.data.metrics["energy_kwh_per_1k"] > 0
        assert {a.path for a in client.list_artifacts(run_id)} >= {"predictions_sample.csv", "config.json"}
        assert not list((hermetic / "spool").glob("*"))
    finally:
        server.stop()


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 32 MiB filesystem (tmpfs) that a test can fill, as a disk fills; skipped where mounting
    is not allowed."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` to the last byte; returns the filler to delete."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
        try:
            while True:  # the last partial block
                out.write(b"\0")
                out.flush()
        except OSError:
            pass
    return filler


def test_a_full_store_is_refused_in_one_line_within_seconds(cli, small_filesystem, monkeypatch):
    from tracker.recording.store import prepare_sqlite_store

    uri = f"sqlite:///{small_filesystem}/mlflow.db"
    prepare_sqlite_store(uri)  # a store that worked, then its disk filled
    _fill(small_filesystem)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    code, _, err = cli("run", "--task", "text-classification", "--model", "builtin-tiny", "--dataset", "builtin",
                       "--n-samples", "2", "--no-progress")
    assert code == 2
    [line] = [line for line in err.splitlines() if line.startswith("tracker: error:")]
    assert "cannot be written" in line and "free some space" in line
    assert time.monotonic() - started < 60  # no retries for minutes


def test_a_read_only_store_is_refused_in_one_line(cli, hermetic, monkeypatch):
    from tracker.recording.store import prepare_sqlite_store

    database = hermetic / "store" / "mlflow.db"
    prepare_sqlite_store(f"sqlite:///{database}")
    # chattr, not chmod: root (as in CI) writes through file modes
    locked = subprocess.run(["chattr", "+i", str(database)], capture_output=True, text=True)
    if locked.returncode != 0:
        pytest.skip(f"cannot make a file immutable here: {locked.stderr.strip()}")
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
        code, _, err = cli("run", "--task", "text-classification", "--model", "builtin-tiny", "--dataset",
                           "builtin", "--n-samples", "2", "--no-progress")
    finally:
        subprocess.run(["chattr", "-i", str(database)], check=False)
    assert code == 2
    [line] = [line for line in err.splitlines() if line.startswith("tracker: error:")]
    assert "cannot be written (attempt to write a readonly database)" in line


@pytest.mark.slow
def test_a_store_that_fills_mid_run_spools_the_run_and_sync_uploads_it(hermetic, small_filesystem):
    from mlflow import MlflowClient

    uri = f"sqlite:///{small_filesystem}/mlflow.db"
    env = subprocess_env(MLFLOW_TRACKING_URI=uri, TRACKER_HEARTBEAT_S="0.5")
    client = MlflowClient(uri)
    with started(summarizing(150), env) as process:
        run_id = _wait_for_heartbeat(client, process).info.run_id  # measuring, its heartbeat reaching the store
        filler = _fill(small_filesystem)  # the disk fills mid-run
        _, err = process.communicate(timeout=600)
    assert process.returncode == 1, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "stopped taking writes" in last and "tracker sync" in last
    assert [p.stem for p in (hermetic / "spool").glob("*.jsonl")] == [run_id]

    filler.unlink()  # space again
    synced = subprocess.run([sys.executable, "-m", "tracker", "sync"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert synced.returncode == 0, synced.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["energy_kwh"] > 0
    assert not list((hermetic / "spool").glob("*"))


@pytest.mark.parametrize("fault", ["a file", "a read-only folder"])
def test_report_output_onto_a_file_or_a_read_only_folder_is_one_line(cli, client, tmp_path, fault):
    target = tmp_path / "out"
    if fault == "a file":
        target.write_text("someone's notes")
    else:
        target.mkdir()
        locked = subprocess.run(["chattr", "+i", str(target)], capture_output=True, text=True)
        if locked.returncode != 0:
            pytest.skip(f"cannot make a folder immutable here: {locked.stderr.strip()}")
    try:
        code, _, err = cli("report", "--output", str(target))
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=False, capture_output=True)
    assert code == 2
    [line] = [line for line in err.splitlines() if line.startswith("tracker: error:")]
    assert ("is a file, not a folder" if fault == "a file" else "cannot write into --output") in line
    assert all_runs(client) == []  # refused before the report's run was made
    if fault == "a file":
        assert target.read_text() == "someone's notes"


@pytest.mark.slow
def test_a_child_whose_parent_dies_closes_its_run_through_repeated_signals_and_a_dead_stderr(client):
    """A study's or a search's measured child gets SIGTERM when its parent dies, and again each time
    the kernel hands it to another of the dying parent's threads, while its stderr is a pipe nobody
    reads any more. Its run still ends KILLED with its energy, and the process exits."""
    from tracker.recording.signals import die_with_parent

    with started(summarizing(), subprocess_env(TRACKER_HEARTBEAT_S="0.5"), preexec_fn=die_with_parent) as process:
        measuring = _wait_for_heartbeat(client, process)
        process.stderr.close()  # the dead parent's end of the pipe
        for _ in range(6):  # a parent of 6 threads: spaced so that they arrive one by one, as the kernel's do
            os.kill(process.pid, signal.SIGTERM)
            time.sleep(0.05)
        process.wait(timeout=300)  # (exit 143, or SIGTERM's own death from a repeat that lands after the closing)
    run = client.get_run(measuring.info.run_id)
    assert run.info.status == "KILLED" and run.data.tags["tracker.interrupted_by"] == "SIGTERM"
    assert run.data.metrics["energy_kwh"] > 0 and run.data.metrics["inferences_measured"] > 0


@pytest.mark.slow
def test_two_quick_ctrl_c_end_the_run_killed_with_its_energy(client):
    with started(summarizing(), subprocess_env(TRACKER_HEARTBEAT_S="0.5")) as process:
        measuring = _wait_for_heartbeat(client, process)
        os.kill(process.pid, signal.SIGINT)
        os.kill(process.pid, signal.SIGINT)  # at once: it lands while the first is being handled
        _, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "Traceback" not in err
    run = client.get_run(measuring.info.run_id)
    assert run.info.status == "KILLED" and run.data.tags["tracker.interrupted_by"] == "SIGINT"
    assert run.data.metrics["energy_kwh"] > 0 and run.data.metrics["inferences_measured"] > 0


@pytest.mark.slow
def test_ctrl_c_in_the_terminal_under_mlflow_run_ends_the_measured_run_killed(client, hermetic):
    """A terminal's Ctrl-C reaches the whole foreground group: `mlflow run`, and our process, which
    then also gets the SIGTERM with which `mlflow run` cancels its child."""
    from conftest import REPO

    command = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local",
               "-P", "task=summarization", "-P", "n_samples=1000", "-P", "country=FRA"]
    with started(command, subprocess_env(TRACKER_HEARTBEAT_S="0.5"), cwd=hermetic) as process:
        measuring = _wait_for_heartbeat(client, process)
        os.killpg(process.pid, signal.SIGINT)  # the terminal's Ctrl-C, to the process group
        _, err = process.communicate(timeout=300)
    run = client.get_run(measuring.info.run_id)
    assert run.info.status == "KILLED", err[-3000:]
    assert run.data.tags["tracker.interrupted_by"] in ("SIGINT", "SIGTERM")
    assert run.data.metrics["energy_kwh"] > 0 and run.data.metrics["inferences_measured"] > 0
    assert not [r for r in all_runs(client) if r.info.status == "RUNNING"]


def test_ctrl_c_before_the_run_opens_is_one_line_and_no_run(client, hermetic):
    fifo = hermetic / "reviews.jsonl"
    os.mkfifo(fifo)  # reading it blocks until a writer comes: the command waits before any run
    command = [sys.executable, "-m", "tracker", "run", "--task", "text-classification", "--model", "builtin-tiny",
               "--dataset", str(fifo), "--target-column", "label", "--n-samples", "2", "--no-progress"]
    with started(command) as process, open(fifo, "w"):  # opened once the command opens it: the event
        os.kill(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "tracker: interrupted by SIGINT before a run was open; nothing was recorded"
    assert all_runs(client) == []


def test_ctrl_c_during_an_import_stops_between_whole_chunks(client, hermetic):
    records = hermetic / "emissions.csv"
    header = "timestamp,project_name,run_id,duration,emissions,energy_consumed,cpu_energy,gpu_energy,ram_energy"
    rows = [f"2024-01-01T00:{i // 60:02d}:{i % 60:02d},model-{i},run-{i},10,0.001,0.002,0.001,0,0.001"
            for i in range(3000)]
    records.write_text("\n".join([header, *rows]) + "\n")
    command = [sys.executable, "-m", "tracker", "import-codecarbon", str(records), "--task", "text-classification",
               "--dataset", "imdb", "--n-samples", "1000"]
    with started(command) as process:
        deadline = time.monotonic() + 300
        while len(all_runs(client)) < 3:  # importing: some records are runs already
            assert process.poll() is None and time.monotonic() < deadline, "the import never started"
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("tracker: import interrupted by SIGINT between chunks of runs; the runs "
                                            "written are whole and FINISHED, and the same command imports the rest")
    statuses = [r.info.status for r in all_runs(client)]
    assert set(statuses) == {"FINISHED"}  # runs are written whole, never RUNNING: none to end KILLED
    assert len(statuses) % 200 == 0 and len(statuses) < 3000  # stopped between chunks of 200
    # the same command imports the rest, and only the rest
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=subprocess_env())
    assert done.returncode == 0 and f"{len(statuses)} already imported" in done.stdout, done.stderr[-3000:]
    assert len(all_runs(client)) == 3000


def test_tracker_sync_closes_runs_whose_process_is_gone(cli, client):
    import socket

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    experiment = client.create_experiment("summarization")
    run = client.create_run(experiment, tags={"tracker.run.host": socket.gethostname(),
                                              "tracker.run.pid": gone.stdout.strip()})
    code, out, _ = cli("sync")
    assert code == 0 and "0 spooled run(s) uploaded" in out
    closed = client.get_run(run.info.run_id)
    assert closed.info.status == "FAILED" and "is gone" in closed.data.tags["tracker.error"]


def test_sigterm_the_moment_a_run_exists_still_ends_it_killed(client, hermetic):
    """The signal lands while the new run's params and inputs are being written, before any
    measuring: the run ends KILLED, never left RUNNING (or FAILED for a process gone)."""
    import sqlite3

    database = hermetic / "mlflow.db"
    client.search_experiments()  # the store exists before the child starts, so it can be polled
    with started(summarizing(), stdout=subprocess.DEVNULL) as process:
        deadline = time.monotonic() + 300
        while True:  # polled in SQL every few milliseconds: MLflow's client would be too slow
            assert process.poll() is None and time.monotonic() < deadline, "the run never started"
            try:
                with contextlib.closing(sqlite3.connect(database, timeout=0.05)) as db:
                    if db.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0]:
                        break
            except sqlite3.OperationalError:  # locked by the child's write: try again
                pass
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    [run] = all_runs(client)
    assert run.info.status == "KILLED" and run.data.tags["tracker.interrupted_by"] == "SIGTERM"
