"""Full runs of each task through the CLI, checked in MLflow against the contract."""

import json
import math
import os

import pytest
from conftest import all_runs

ENERGY_METRICS = ["energy_kwh", "energy_cpu_kwh", "energy_gpu_kwh", "energy_ram_kwh", "emissions_kg",
                  "energy_kwh_per_1k", "emissions_g_per_output", "duration_s", "throughput_per_s",
                  "load_energy_kwh", "load_duration_s", "model_parameters", "machine_energy_kwh",
                  "machine_energy_cpu_kwh", "machine_energy_ram_kwh", "machine_energy_kwh_per_1k",
                  "own_cpu_seconds", "background_cpu_share", "cpu_time_share", "load_machine_energy_kwh",
                  "batch_latency_ms_p50", "batch_latency_ms_p90", "batch_latency_ms_p99"]
PARAMS = ["task", "model", "dataset", "n_samples", "batch_size", "precision", "device", "repeats",
          "warmup", "country_iso_code", "seed"]
TAGS = ["tracker.energy.cpu.method", "tracker.energy.ram.method", "tracker.energy.gpu.method",
        "tracker.carbon.country_source", "tracker.carbon.intensity_source", "tracker.model.source",
        "tracker.dataset.source", "tracker.quality.meaningful", "tracker.hardware.cpu_model",
        "tracker.version.torch", "tracker.version.codecarbon", "tracker.measurement.short_window",
        "tracker.energy.attribution", "tracker.measurement.contended"]


@pytest.mark.parametrize("task, quality_metrics, generative", [
    ("summarization", ["rouge1", "rouge2", "rougeL"], True),
    ("text-classification", ["accuracy", "f1"], False),
])
def test_full_run_honours_the_contract(cli, client, task, quality_metrics, generative):
    code, out, err = cli("run", "--task", task, "--n-samples", "24", "--batch-size", "8",
                         "--repeats", "2", "--country", "FRA", "--no-progress")
    assert code == 0, err
    [run] = all_runs(client)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == task
    assert run.info.run_name == "builtin-tiny · builtin · bs8 · fp32 · #1"

    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert set(PARAMS) <= set(params)
    assert params["task"] == task and params["batch_size"] == "8" and params["country_iso_code"] == "FRA"
    assert ("max_new_tokens" in params) == generative

    for name in ENERGY_METRICS + quality_metrics + ["quality"]:
        assert name in metrics, name
        assert not math.isnan(metrics[name]), name
    for name in ["energy_kwh", "machine_energy_kwh", "emissions_kg", "duration_s", "throughput_per_s"]:
        assert f"{name}_std" in metrics  # repeats > 1
        assert metrics[f"{name}_ci95_low"] <= metrics[name] <= metrics[f"{name}_ci95_high"]
    assert metrics["energy_kwh"] > 0 and metrics["machine_energy_kwh"] > 0
    assert 0 <= metrics["background_cpu_share"] <= 1 and 0 < metrics["cpu_time_share"] <= 1
    assert metrics["batch_latency_ms_p50"] <= metrics["batch_latency_ms_p90"] <= metrics["batch_latency_ms_p99"]
    assert metrics["windows"] == 2 and metrics["own_cpu_seconds"] > 0
    assert tags["tracker.measurement.contended"] in ("true", "false")
    assert ("tracker.measurement.contended_reason" in tags) == (tags["tracker.measurement.contended"] == "true")
    assert ("energy_j_per_token" in metrics) == generative
    assert metrics["energy_kwh"] > 0 and metrics["energy_cpu_kwh"] > 0 and metrics["energy_ram_kwh"] > 0
    assert metrics["energy_kwh"] == pytest.approx(
        metrics["energy_cpu_kwh"] + metrics["energy_gpu_kwh"] + metrics["energy_ram_kwh"])
    assert metrics["energy_kwh_per_1k"] == pytest.approx(metrics["energy_kwh"] / 24 * 1000, rel=0.05)
    assert metrics["emissions_g_per_output"] == pytest.approx(metrics["emissions_kg"] * 1000 / 24, rel=0.05)
    # France's grid mix in CodeCarbon's data, not some other country's
    assert metrics["carbon_intensity_g_per_kwh"] == pytest.approx(56.039, rel=0.01)
    assert metrics["quality"] == metrics[quality_metrics[-1] if generative else "accuracy"]

    for name in TAGS:
        assert tags.get(name), name
    assert tags["tracker.model.source"] == "builtin-tiny"
    assert tags["tracker.quality.meaningful"] == "false"
    if os.path.exists("/sys/class/powercap/intel-rapl") is False:
        assert tags["tracker.energy.cpu.method"].startswith("modelled:")
    assert "FALLBACK" in tags["mlflow.note.content"]

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"codecarbon", "config.json", "predictions_sample.csv"} <= artifacts
    records = client.download_artifacts(run.info.run_id, "codecarbon/emissions.csv")
    lines = open(records).read().splitlines()
    assert lines[0].startswith("task_name,") and "cpu_energy" in lines[0]
    assert [line.split(",")[0] for line in lines[1:]] == ["load model", "query model", "query model"]
    config = json.load(open(client.download_artifacts(run.info.run_id, "config.json")))
    assert config["batch_size"] == 8 and config["resolved_device"] == "cpu"
    sample = open(client.download_artifacts(run.info.run_id, "predictions_sample.csv")).read().splitlines()
    assert sample[0] == "input,prediction,reference" and len(sample) == 25

    # CodeCarbon wrote nothing into the working directory: no emissions.csv, no lock
    assert os.listdir(".") == [] or set(os.listdir(".")) <= {"mlruns"}
    assert "FINISHED" in out


def test_int8_run(cli, client):
    for precision in ("int8", "fp32"):
        code, _, err = cli("run", "--task", "text-classification", "--n-samples", "16", "--batch-size", "4",
                           "--precision", precision, "--country", "DEU", "--no-progress")
        assert code == 0, err
    runs = {r.data.params["precision"]: r for r in all_runs(client)}
    assert runs["int8"].info.status == "FINISHED"
    # the model's size as loaded: quantization packs weights out of parameters(), so it is counted first
    assert runs["int8"].data.metrics["model_parameters"] == runs["fp32"].data.metrics["model_parameters"] > 0


def test_carbon_intensity_override(cli, client):
    code, _, err = cli("run", "--task", "text-classification", "--n-samples", "16", "--country", "FRA",
                       "--carbon-intensity", "500", "--no-progress")
    assert code == 0, err
    [run] = all_runs(client)
    assert run.data.metrics["carbon_intensity_g_per_kwh"] == pytest.approx(500, rel=0.01)
    assert run.data.tags["tracker.carbon.intensity_source"] == "user override: 500 gCO2eq/kWh"


def test_tasks_lists_defaults(cli):
    code, out, _ = cli("tasks")
    assert code == 0
    assert "summarization" in out and "sshleifer/distilbart-cnn-12-6" in out
    assert "text-classification" in out and "imdb" in out


def test_a_dataset_another_run_creates_at_the_same_moment_is_linked_not_fatal(client, monkeypatch):
    """MLflow creates a dataset's row on first use without a lock: of two runs logging it at once,
    one is refused by the store's UNIQUE constraint (seen on a two-node study). Here the other run
    wins the race just before this one writes: its call is refused once, and linked on the next."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tracker.recording.lifecycle import RunDataset, recorded_run

    dataset = RunDataset(name="reviews", digest="d1g3st00", source_type="local", source='{"uri": "reviews.csv"}')
    real, refused = MlflowClient.log_inputs, []

    def racing(self, run_id, datasets=None, models=None):
        if not refused:  # the other run's row lands between this one's look-up and its insert
            refused.append(run_id)
            with recorded_run(experiment="race", run_name="the other run", tags={}) as other:
                other.log_inputs(datasets=[dataset])
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                                  "datasets.name, datasets.digest")
        return real(self, run_id, datasets=datasets, models=models)

    monkeypatch.setattr(MlflowClient, "log_inputs", racing)
    with recorded_run(experiment="race", run_name="this run", tags={}) as recorder:
        recorder.log_inputs(datasets=[dataset])
    runs = {r.info.run_name: r for r in all_runs(client)}
    assert refused == [runs["this run"].info.run_id]
    for run in runs.values():
        assert run.info.status == "FINISHED"
        assert [(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs] == [("reviews", "d1g3st00")]
