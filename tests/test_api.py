"""The Python API: tracker.measure around the user's own code, and run/tune/report as functions."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from conftest import all_runs, subprocess_env

import tracker
from tracker.errors import ConfigError, UserError

CONTRACT_METRICS = ["energy_kwh", "energy_cpu_kwh", "energy_ram_kwh", "emissions_kg", "energy_kwh_per_1k",
                    "emissions_g_per_output", "duration_s", "throughput_per_s", "machine_energy_kwh",
                    "cpu_time_share", "background_cpu_share", "load_energy_kwh", "load_duration_s", "quality",
                    "accuracy", "batch_latency_ms_p50"]
CONTRACT_TAGS = ["tracker.energy.cpu.method", "tracker.energy.ram.method", "tracker.energy.gpu.method",
                 "tracker.carbon.country_source", "tracker.carbon.intensity_source", "tracker.energy.attribution",
                 "tracker.measurement.contended", "tracker.measurement.short_window", "tracker.hardware.cpu_model",
                 "tracker.version.codecarbon", "tracker.quality.metric", "tracker.model.source"]


def busy(n: int) -> int:
    """Plain Python work that takes CPU time."""
    return sum(i * i for i in range(n))


def test_measure_a_plain_function_honours_the_contract(client, capfd):
    with tracker.measure(task="ticket-routing", model="my-rules-v2", dataset="tickets-2026",
                         country="FRA", params={"batch_size": 4}) as m:
        with m.phase("load"):
            busy(200_000)
        for _ in range(25):
            busy(100_000)
            m.count(4)
        m.log_quality(accuracy=0.9, f1=0.8)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # a notebook stays quiet

    run = client.get_run(m.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "ticket-routing"
    metrics, tags, params = run.data.metrics, run.data.tags, run.data.params
    missing = [k for k in CONTRACT_METRICS if k not in metrics]
    assert not missing, missing
    assert metrics["energy_kwh"] > 0 and metrics["load_energy_kwh"] > 0
    assert metrics["inferences_measured"] == 100
    assert metrics["energy_kwh_per_1k"] == pytest.approx(metrics["energy_kwh"] / 100 * 1000)
    assert metrics["quality"] == 0.9 and metrics["f1"] == 0.8
    assert metrics["emissions_g_per_output"] == pytest.approx(metrics["emissions_kg"] * 1000 / 100)
    assert not [k for k in CONTRACT_TAGS if k not in tags]
    assert tags["tracker.quality.metric"] == "accuracy" and tags["tracker.quality.meaningful"] == "true"
    assert tags["tracker.api"] == "measure"
    assert params["task"] == "ticket-routing" and params["model"] == "my-rules-v2"
    assert params["n_samples"] == "100" and params["batch_size"] == "4" and params["country_iso_code"] == "FRA"
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["tickets-2026"]
    records = client.download_artifacts(m.run_id, "codecarbon/emissions.csv")
    phases = [line.split(",")[0] for line in open(records).read().splitlines()[1:]]
    assert "load model" in phases and phases.count("query model") == 2  # before and after the load phase
    assert m.metrics["quality"] == 0.9  # what was logged, also on the object


def test_an_exception_inside_fails_the_run_with_its_energy_and_a_rerun_is_a_new_run(client):
    for attempt in range(2):  # a notebook cell run twice
        with pytest.raises(ZeroDivisionError):
            with tracker.measure(task="cell", model="flaky", country="USA") as m:
                busy(300_000)
                m.count(3)
                1 / 0
    runs = sorted(all_runs(client), key=lambda r: r.info.start_time)
    assert [r.info.status for r in runs] == ["FAILED", "FAILED"]
    assert [r.info.run_name for r in runs] == ["flaky · user code · #1", "flaky · user code · #2"]
    for run in runs:
        assert run.data.tags["tracker.error_type"] == "ZeroDivisionError"
        assert run.data.metrics["energy_kwh"] > 0 and run.data.metrics["inferences_measured"] == 3
        assert run.data.tags["tracker.quality.meaningful"] == "false"


def test_measure_nests_under_the_active_run_and_decorates(client):
    import mlflow

    @tracker.measure(task="scoring", model="decorated", country="USA", outputs=len)
    def score(n: int) -> list[int]:
        busy(50_000)
        return list(range(n))

    @tracker.measure(task="scoring", model="counts-itself", country="USA")
    def generate() -> str:
        tracker.current().count(2, tokens=30)
        tracker.current().log_quality(bleu=0.3)
        return "text"

    mlflow.set_experiment("my-notebook")
    with mlflow.start_run() as parent:
        assert score(7) == list(range(7))
        assert generate() == "text"
    runs = {r.data.params["model"]: r for r in all_runs(client) if r.info.run_id != parent.info.run_id}
    assert set(runs) == {"decorated", "counts-itself"}
    for run in runs.values():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert client.get_experiment(run.info.experiment_id).name == "my-notebook"
        assert run.info.status == "FINISHED"
    assert runs["decorated"].data.metrics["inferences_measured"] == 7
    generated = runs["counts-itself"].data.metrics
    assert generated["inferences_measured"] == 2 and generated["generated_tokens"] == 30
    assert generated["energy_j_per_token"] == pytest.approx(generated["energy_kwh"] * 3.6e6 / 30)
    assert generated["quality"] == 0.3


def test_measure_refuses_bad_input_in_one_line(client):
    with pytest.raises(ConfigError, match="task="):
        tracker.measure(task="", model="m")
    with pytest.raises(ConfigError, match="carbon_intensity"):
        tracker.measure(task="t", model="m", carbon_intensity=-1)
    with pytest.raises(ConfigError, match="whole number"):
        with tracker.measure(task="t", model="m", country="USA") as m:
            m.count(-2)
    with pytest.raises(ConfigError, match="names none"):
        with tracker.measure(task="t", model="m", country="USA") as m:
            m.log_quality("rouge", bleu=0.1)
    with pytest.raises(ConfigError, match="no measurement is open"):
        tracker.current()
    # A mistake in the user's use of the API fails its run like any other exception: nothing stays RUNNING.
    assert {r.info.status for r in all_runs(client)} == {"FAILED"}


def test_run_and_report_as_functions(client, tmp_path):
    result = tracker.run(task="text-classification", n_samples=16, batch_size=8, country="FRA")
    assert isinstance(result, tracker.RunResult)
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert result.energy_kwh_per_1k > 0 and not math.isnan(result.quality)
    assert result.config.batch_size == 8
    [dataset] = client.get_run(result.run_id).inputs.dataset_inputs
    assert dataset.dataset.name == "builtin" and len(dataset.dataset.digest) == 8

    again = tracker.run(task="text-classification", n_samples=16, batch_size=8, country="FRA")
    names = sorted(client.get_run(r.run_id).info.run_name for r in (result, again))
    assert names == ["builtin-tiny · builtin · bs8 · fp32 · #1", "builtin-tiny · builtin · bs8 · fp32 · #2"]
    # The same digest for the same rows: the UI groups the runs by dataset.
    assert client.get_run(again.run_id).inputs.dataset_inputs[0].dataset.digest == dataset.dataset.digest

    report = tracker.report(output=tmp_path / "report", experiments=["text-classification"], countries=["FRA"])
    assert (report.output / "report.html").is_file()
    assert list(report.tasks["task"]) == ["text-classification"]

    with pytest.raises(ConfigError, match="--batch-size must be a positive whole number"):
        tracker.run(task="text-classification", batch_size=0)
    with pytest.raises(ConfigError, match="--n-trials"):
        tracker.tune(task="text-classification", n_trials=0)
    with pytest.raises(ConfigError, match="unknown parameter.*n_trial"):
        tracker.tune(task="text-classification", n_trial=3)
    assert len(all_runs(client)) == 3  # two runs and the report's run; the refusals made none


@pytest.mark.parametrize("argv", [
    ["run", "--task", "text-classification", "--model", "./no-such-model"],
    ["run", "--task", "text-classification", "--model", "models:/just-a-name"],
    ["run", "--task", "text-classification", "--dataset", "data/missing.csv"],
    ["run", "--task", "text-classification", "--dataset", "{tmp}/reviews.csv"],  # no 'text' column
    ["run", "--task", "text-classification", "--dataset", "{tmp}/reviews.jsonl", "--text-column", "body"],
    ["tune", "--task", "text-classification", "--model", "/no/such/folder"],
    ["import-codecarbon", "{tmp}/missing.csv", "--task", "summarization", "--dataset", "xsum", "--n-samples", "9"],
    ["annotate", "--quality", "{tmp}/missing.csv"],
])
def test_bad_input_is_answered_before_heavy_imports(argv, tmp_path):
    """Answered in about the time of --help: neither MLflow, torch, transformers, Optuna nor pandas
    was imported (benchmarks/startup.py times it)."""
    (tmp_path / "reviews.csv").write_text("review,label\ngreat film,1\n")
    (tmp_path / "reviews.jsonl").write_text('{"review": "great film", "label": 1}\n')
    probe = ("import sys; from tracker.cli import main; code = main(sys.argv[1:]); "
             "heavy = [m for m in ('mlflow', 'torch', 'transformers', 'optuna', 'pandas') if m in sys.modules]; "
             "print(code, heavy)")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    done = subprocess.run([sys.executable, "-c", probe, *argv], env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.strip() == "2 []", (done.stdout, done.stderr)
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("tracker: error: ")
    if "reviews" in " ".join(argv):
        assert "has no column" in line and "(its columns: review, label)" in line


def test_only_text_to_image_imports_diffusers_and_model_code_is_imported_before_the_load_window(tmp_path):
    """A run of another task never imports diffusers; a model's transformers module is imported by
    import_model_code (outside the measured load phase), not first by from_pretrained inside it."""
    probe = ("import sys, json; from tracker.cli import main; from tracker.runs.loop import import_model_code; "
             "from tracker.tasks import get_task; import pathlib; "
             "folder = pathlib.Path(sys.argv[1]); folder.mkdir(); "
             "(folder / 'config.json').write_text(json.dumps({'architectures': ['BertModel']})); "
             "before = 'transformers.models.bert.modeling_bert' in sys.modules; "
             "import_model_code(str(folder), get_task('sentence-similarity')); "
             "after = 'transformers.models.bert.modeling_bert' in sys.modules; "
             "code = main(['run', '--task', 'text-classification', '--n-samples', '8', '--country', 'FRA', "
             "'--no-progress']); print(code, before, after, 'diffusers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "bert")], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.stdout.strip().splitlines()[-1] == "0 False True False", (done.stdout, done.stderr[-2000:])


def test_the_public_api_is_documented():
    for name in ("measure", "run", "tune", "report", "current", "RunResult", "TuneResult", "ReportResult",
                 "Measurement"):
        assert name in tracker.__all__
        assert getattr(tracker, name).__doc__, name
    with pytest.raises(UserError):
        tracker.run(task="no-such-task")


@pytest.mark.parametrize("example", ["measure_your_code.py", "registered_model.py"])
def test_the_examples_run_as_a_new_user_runs_them(example, client, tmp_path):
    from conftest import REPO

    done = subprocess.run([sys.executable, str(REPO / "experiments" / "examples" / example)], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "kWh per 1,000" in done.stdout
    runs = all_runs(client)
    measured = [r for r in runs if "energy_kwh_per_1k" in r.data.metrics]
    assert measured and all(r.info.status == "FINISHED" for r in runs)
    if example == "registered_model.py":
        assert "tracker.energy_kwh_per_1k" in client.get_model_version("sentiment-demo", "1").tags


def test_mlflow_telemetry_is_off_while_measuring_unless_asked_for(monkeypatch):
    import os

    from tracker.recording.store import quiet_mlflow_telemetry

    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    quiet_mlflow_telemetry()
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")  # a user who wants it keeps it
    quiet_mlflow_telemetry()
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "false"
