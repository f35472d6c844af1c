"""tracker import-codecarbon: plain and phase-split records, identity and --replace, kinds by rule, bad files,
runs written in one transaction (the paper's records, annotated and reported: test_annotate.py)."""

from __future__ import annotations

import csv
import math
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import REPO, all_runs

HEADER = ["timestamp", "project_name", "run_id", "duration", "emissions", "emissions_rate", "cpu_power",
          "gpu_power", "ram_power", "cpu_energy", "gpu_energy", "ram_energy", "energy_consumed",
          "country_name", "country_iso_code", "region", "codecarbon_version", "gpu_count", "gpu_model"]
PAPER_RECORDS = REPO.parent / "shared" / "data" / "power-hungry-processing"


def record(run_id: str, model: str, cpu: float, gpu: float, ram: float, duration: float,
           emissions: float, **extra: str) -> dict[str, str]:
    return {"timestamp": "2023-09-26 16:44:16", "project_name": model, "run_id": run_id,
            "duration": str(duration), "emissions": str(emissions), "emissions_rate": "0",
            "cpu_power": "42.5", "gpu_power": "300", "ram_power": "10", "cpu_energy": str(cpu),
            "gpu_energy": str(gpu), "ram_energy": str(ram), "energy_consumed": str(cpu + gpu + ram),
            "country_name": "France", "country_iso_code": "FRA", "region": "", "codecarbon_version": "2.3.1",
            "gpu_count": "1", "gpu_model": "1 x NVIDIA A100", **extra}


def write(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def by_model(client) -> dict:
    return {r.data.params["model"]: r for r in all_runs(client)}


def test_plain_records_become_runs_named_like_measured_ones(cli, client, tmp_path):
    records = write(tmp_path / "emissions.csv", [
        record("r1", "org/model-a", cpu=0.001, gpu=0.004, ram=0.002, duration=100, emissions=0.0007),
        record("r2", "org/model-b", cpu=0.002, gpu=0.0, ram=0.002, duration=50, emissions=0.0003)])
    code, out, err = cli("import-codecarbon", str(records), "--task", "summarization", "--dataset", "xsum",
                         "--n-samples", "500")
    assert code == 0, err
    assert "imported 2 records" in out and "2 whole-record only" in out
    runs = by_model(client)
    assert set(runs) == {"org/model-a", "org/model-b"}
    run = runs["org/model-a"]
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "summarization"
    assert run.info.run_name == "model-a · xsum · imported"
    assert run.data.params == {"task": "summarization", "model": "org/model-a", "dataset": "xsum",
                               "n_samples": "500", "country_iso_code": "FRA"}
    m = run.data.metrics
    assert m["energy_kwh"] == pytest.approx(0.007)
    assert (m["energy_cpu_kwh"], m["energy_gpu_kwh"], m["energy_ram_kwh"]) == pytest.approx((0.001, 0.004, 0.002))
    assert m["energy_kwh_per_1k"] == pytest.approx(0.007 / 500 * 1000)
    assert m["emissions_g_per_output"] == pytest.approx(0.0007 * 1000 / 500)
    assert m["throughput_per_s"] == pytest.approx(5.0) and m["duration_s"] == pytest.approx(100)
    assert m["carbon_intensity_g_per_kwh"] == pytest.approx(100)
    assert "load_energy_kwh" not in m and "quality" not in m  # not in the record: missing, not 0
    tags = run.data.tags
    assert tags["tracker.imported"] == "true" and tags["tracker.import.codecarbon_version"] == "2.3.1"
    assert tags["tracker.import.codecarbon_run_id"] == "r1"
    assert tags["tracker.energy.scope"].startswith("whole record")
    assert tags["tracker.energy.cpu.method"].startswith("imported: as recorded by CodeCarbon 2.3.1")
    # dated by the record: CodeCarbon stamps it when it stops, `duration` after it started
    assert run.info.end_time - run.info.start_time == 100_000
    rows = open(client.download_artifacts(run.info.run_id, "codecarbon/emissions.csv")).read().splitlines()
    assert rows[0].startswith("timestamp,project_name,run_id") and len(rows) == 2


def test_phase_split_records_become_load_and_query_phases(cli, client, tmp_path):
    records = write(tmp_path / "complete.csv", [
        record("r1", "org/model-a", cpu=0.003, gpu=0.010, ram=0.003, duration=40, emissions=0.0016),
        record("r2", "org/model-b", cpu=0.001, gpu=0.001, ram=0.001, duration=9, emissions=0.0003)])
    phases = tmp_path / "base"
    phases.mkdir()
    write(phases / "emissions_base_r1.csv", [
        {"task_name": "load model", **record("r1", "org/model-a", cpu=0.001, gpu=0.002, ram=0.001, duration=10,
                                             emissions=0.0004)},
        {"task_name": "query model", **record("r1", "org/model-a", cpu=0.002, gpu=0.008, ram=0.002,
                                              duration=30, emissions=0.0012)}])
    code, out, err = cli("import-codecarbon", str(records), "--task", "text-classification", "--dataset", "imdb",
                         "--n-samples", "1000", "--phases", str(phases), "--model-kind", "task-specific")
    assert code == 0, err
    assert "1 with a query phase (phases: load model, query model), 1 whole-record only" in out
    runs = by_model(client)
    phased = runs["org/model-a"].data
    # the query phase alone, as measured runs report it; loading apart
    assert phased.metrics["energy_kwh"] == pytest.approx(0.012)
    assert phased.metrics["energy_kwh_per_1k"] == pytest.approx(0.012)
    assert phased.metrics["duration_s"] == pytest.approx(30)
    assert phased.metrics["load_energy_kwh"] == pytest.approx(0.004)
    assert phased.metrics["load_duration_s"] == pytest.approx(10)
    assert phased.tags["tracker.energy.scope"] == "query phase"
    assert phased.tags["tracker.import.phase_files"] == "emissions_base_r1.csv"
    assert phased.tags["tracker.model.kind"] == "task-specific"
    artifact = client.download_artifacts(runs["org/model-a"].info.run_id, "codecarbon/emissions.csv")
    with open(artifact) as kept:  # the record, then its phase rows, as read
        assert [row["task_name"] for row in csv.DictReader(kept)] == ["", "load model", "query model"]
    assert phased.metrics["phase_load_model_energy_kwh"] == pytest.approx(0.004)
    assert phased.metrics["phase_query_model_duration_s"] == pytest.approx(30)
    assert phased.metrics["record_energy_kwh"] == pytest.approx(0.016)
    # a record with no phase rows keeps its whole energy, and says so
    plain = runs["org/model-b"].data
    assert plain.metrics["energy_kwh"] == pytest.approx(0.003)
    assert plain.tags["tracker.energy.scope"].startswith("whole record")


def test_importing_the_same_records_twice_adds_nothing(cli, client, tmp_path):
    records = write(tmp_path / "emissions.csv", [
        record("r1", "org/model-a", cpu=0.001, gpu=0.0, ram=0.001, duration=10, emissions=0.0001),
        record("r2", "org/model-a", cpu=0.002, gpu=0.0, ram=0.001, duration=10, emissions=0.0001)])
    args = ["--task", "text-classification", "--dataset", "sst2", "--n-samples", "1000"]
    assert cli("import-codecarbon", str(records), *args)[0] == 0
    first = {r.info.run_id for r in all_runs(client)}
    assert len(first) == 2
    # again, and the same records under another file name
    copy = shutil.copy(records, tmp_path / "copy.csv")
    code, out, _ = cli("import-codecarbon", str(records), str(copy), *args)
    assert code == 0 and "imported 0 records" in out and "4 already imported" in out
    assert {r.info.run_id for r in all_runs(client)} == first
    # a record is its run_id, model and timestamp: a copy saved by a spreadsheet (1E-04 for
    # 0.0001, a column less) is the same record; another run_id is another record
    resaved = write(tmp_path / "resaved.csv", [
        {k: v for k, v in record("r1", "org/model-a", cpu=0.001, gpu=0.0, ram=0.001, duration=10,
                                 emissions=0.0001).items() if k != "region"} | {"emissions": "1E-04"}])
    code, out, _ = cli("import-codecarbon", str(resaved), *args)
    assert code == 0 and "imported 0 records" in out and "1 already imported" in out
    write(records, [record("r3", "org/model-a", cpu=0.005, gpu=0.0, ram=0.001, duration=10, emissions=0.0001)])
    code, out, _ = cli("import-codecarbon", str(records), *args)
    assert "imported 1 records" in out and len(all_runs(client)) == 3


@pytest.mark.parametrize("problem, message", [
    ("only-phase-rows", "no complete record in"),
    ("missing-column", "no column gpu_energy"),
    ("not-a-number", "has no number in cpu_energy"),
    ("negative", "line 2: record r1 has an impossible value in cpu_energy ('-0.001')"),
    ("infinite", "has an impossible value in ram_energy ('inf')"),
    ("nan", "has no number in emissions ('NaN')"),
    ("record-as-phase-file", "holds complete records (no task_name column): pass it as FILES"),
    ("empty-folder", "is a folder without .csv files"),
    ("bad-kind-rule", "is not a rule PATTERN=KIND"),
    ("bad-kind-in-rule", "takes task-specific or multi-purpose, got 'prompted'"),
    ("bad-regex-in-rule", "is not a regular expression"),
    ("no-such-file", "does not exist"),
    ("unknown-task", "unknown task"),
])
def test_bad_records_are_refused_before_any_run(cli, client, tmp_path, problem, message):
    good = record("r1", "org/m", cpu=0.001, gpu=0.0, ram=0.001, duration=10, emissions=0.0001)
    records = write(tmp_path / "emissions.csv", [good])
    task, phases = "summarization", []
    if problem == "only-phase-rows":
        write(records, [{"task_name": "query model", **good}])
    elif problem == "missing-column":
        write(records, [{k: v for k, v in good.items() if k != "gpu_energy"}])
    elif problem == "not-a-number":
        write(records, [good | {"cpu_energy": "abc"}])
    elif problem == "negative":
        write(records, [good | {"cpu_energy": "-0.001"}])
    elif problem == "infinite":
        write(records, [good | {"ram_energy": "inf"}])
    elif problem == "nan":
        write(records, [good | {"emissions": "NaN"}])
    elif problem == "empty-folder":
        (tmp_path / "empty").mkdir()
        phases = ["--phases", str(tmp_path / "empty")]
    elif problem == "bad-kind-rule":
        phases = ["--model-kind-map", "flan-t5"]
    elif problem == "bad-kind-in-rule":
        phases = ["--model-kind-map", "flan=prompted"]
    elif problem == "bad-regex-in-rule":
        phases = ["--model-kind-map", "flan(=multi-purpose"]
    elif problem == "record-as-phase-file":
        phases = ["--phases", str(write(tmp_path / "other.csv", [good | {"run_id": "r2"}]))]
    elif problem == "no-such-file":
        records = tmp_path / "missing.csv"
    elif problem == "unknown-task":
        task = "sumarization"
    code, _, err = cli("import-codecarbon", str(records), "--task", task, "--dataset", "x", "--n-samples", "10",
                       *phases)
    [line] = [line for line in err.splitlines() if line.startswith("tracker:")]
    assert code == 2 and message in line
    assert all_runs(client) == []


def test_runs_written_in_one_transaction_read_back_as_mlflow_client_writes_them(client):
    """The SQL fast path writes MLflow's rows itself: what MLflow reads back must be what its own
    client would have written (a schema change in MLflow fails here, not in users' stores)."""
    _written_both_ways(client)


@pytest.mark.skipif(not os.environ.get("TRACKER_TEST_POSTGRES_URL"),
                    reason="set TRACKER_TEST_POSTGRES_URL (.ci/run starts a PostgreSQL server)")
def test_runs_written_in_one_transaction_on_a_postgresql_store(monkeypatch):
    import mlflow
    import psycopg
    from mlflow import MlflowClient

    url = os.environ["TRACKER_TEST_POSTGRES_URL"]
    database = f"mlflow_{os.getpid()}_{int(time.time())}"  # MLflow's own tables, apart from Optuna's
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {database}")
    store = url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{database}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    mlflow.set_tracking_uri(store)
    try:
        client = MlflowClient()
        from tracker.recording import sql_bulk

        assert sql_bulk.sql_store(client) is not None  # the fast path is the one tried
        _written_both_ways(client)
    finally:
        mlflow.set_tracking_uri(None)


def _written_both_ways(client):
    import socket

    from tracker.recording.lifecycle import FinishedRun, _write_one, experiment_id, update_runs, write_finished_runs

    run = FinishedRun(run_name="model-a · imdb · imported", tags={"tracker.imported": "true", "x.y": "é ✓"},
                      params={"task": "text-classification", "n_samples": 1000},
                      metrics={"energy_kwh": 0.0123, "missing": math.nan, "huge": math.inf},
                      times_ms=(1_600_000_000_000, 1_600_000_040_000), texts={"codecarbon/emissions.csv": "a,b\n1,2\n"})
    [fast_id] = write_finished_runs("both", [run])
    here = {"tracker.run.host": socket.gethostname(), "tracker.run.pid": str(os.getpid())}
    slow_id = _write_one(client, experiment_id(client, "both"), run, here)
    fast, slow = client.get_run(fast_id), client.get_run(slow_id)
    for attribute in ("status", "start_time", "end_time", "lifecycle_stage", "run_name", "user_id", "experiment_id"):
        assert getattr(fast.info, attribute) == getattr(slow.info, attribute), attribute
    assert fast.data.params == slow.data.params and fast.data.tags == slow.data.tags
    assert set(fast.data.metrics) == set(slow.data.metrics)
    for name, value in slow.data.metrics.items():
        assert fast.data.metrics[name] == value or (math.isnan(value) and math.isnan(fast.data.metrics[name]))
    assert open(client.download_artifacts(fast_id, "codecarbon/emissions.csv")).read() == "a,b\n1,2\n"
    found = client.search_runs([fast.info.experiment_id], "metrics.energy_kwh > 0.01 and params.task = 'text-classification'")
    assert {r.info.run_id for r in found} == {fast_id, slow_id}
    # what is learnt later: tags set, a tag deleted, a metric's latest value replaced, its history kept
    update_runs(client, tags={fast_id: {"tracker.rating.stars": "4"}}, metrics={fast_id: {"energy_kwh": 0.02}},
                delete_tags={fast_id: ("x.y",)})
    later = client.get_run(fast_id)
    assert later.data.tags["tracker.rating.stars"] == "4" and "x.y" not in later.data.tags
    assert later.data.metrics["energy_kwh"] == 0.02
    assert sorted(m.value for m in client.get_metric_history(fast_id, "energy_kwh")) == [0.0123, 0.02]
    assert client.get_run(slow_id).data.tags["x.y"] == "é ✓"  # other runs untouched


def test_any_phase_name_becomes_metrics_and_phase_files_may_come_as_files(cli, client, tmp_path):
    """The study's full records have a third phase; one folder holds records and phase rows of
    several tasks; a run whose phase rows have no query phase keeps its whole record."""
    folder = tmp_path / "released"
    folder.mkdir()
    write(folder / "complete.csv", [
        record("r1", "org/model-a", cpu=0.003, gpu=0.012, ram=0.003, duration=45, emissions=0.0018),
        record("r2", "org/model-b", cpu=0.001, gpu=0.001, ram=0.001, duration=9, emissions=0.0003)])
    write(folder / "phases_r1.csv", [
        {"task_name": "load model", **record("r1", "org/model-a", cpu=0.001, gpu=0.002, ram=0.001, duration=10,
                                             emissions=0.0004)},
        {"task_name": "transfer model to GPU", **record("r1", "org/model-a", cpu=0.0, gpu=0.002, ram=0.0,
                                                        duration=5, emissions=0.0002)},
        {"task_name": "query model", **record("r1", "org/model-a", cpu=0.002, gpu=0.008, ram=0.002, duration=30,
                                              emissions=0.0012)}])
    write(folder / "phases_r2_and_another_task.csv", [
        {"task_name": "warm up", **record("r2", "org/model-b", cpu=0.0, gpu=0.001, ram=0.0, duration=2,
                                          emissions=0.0001)},
        {"task_name": "query model", **record("r9", "org/other-task", cpu=0.1, gpu=0.1, ram=0.1, duration=2,
                                              emissions=0.0001)}])
    code, out, err = cli("import-codecarbon", str(folder), "--task", "text-classification", "--dataset", "imdb",
                         "--n-samples", "1000")
    assert code == 0, err
    assert "imported 2 records" in out and "1 with a query phase" in out and "1 whole-record only" in out
    assert "transfer model to GPU" in out
    runs = by_model(client)
    assert set(runs) == {"org/model-a", "org/model-b"}  # r9's phase row has no record here: not a run
    a = runs["org/model-a"].data.metrics
    assert a["energy_kwh"] == pytest.approx(0.012) and a["load_energy_kwh"] == pytest.approx(0.004)
    assert a["phase_transfer_model_to_gpu_energy_kwh"] == pytest.approx(0.002)
    assert a["phase_transfer_model_to_gpu_duration_s"] == pytest.approx(5)
    assert a["record_energy_kwh"] == pytest.approx(0.018)
    b = runs["org/model-b"]
    assert b.data.metrics["energy_kwh"] == pytest.approx(0.003)  # the whole record: no query phase
    assert b.data.metrics["phase_warm_up_energy_kwh"] == pytest.approx(0.001)
    assert "have no query phase" in b.data.tags["mlflow.note.content"]


def test_kinds_come_from_rules_and_a_reimport_with_other_options_is_replaced_only_when_asked(cli, client, tmp_path):
    records = write(tmp_path / "mixed.csv", [
        record("r1", "google/flan-t5-base", cpu=0.001, gpu=0.01, ram=0.001, duration=10, emissions=0.001),
        record("r2", "bigscience/bloomz-560m", cpu=0.001, gpu=0.01, ram=0.001, duration=10, emissions=0.001),
        record("r3", "distilbert-base-uncased-finetuned-sst-2-english", cpu=0.001, gpu=0.001, ram=0.001,
               duration=10, emissions=0.0001),
        record("r4", "someone/unlisted", cpu=0.001, gpu=0.001, ram=0.001, duration=10, emissions=0.0001)])
    rules = tmp_path / "kinds.txt"
    rules.write_text("# prompted families\nflan-t5|bloomz=multi-purpose\ndistilbert=task-specific\n")
    args = ["--task", "text-classification", "--dataset", "sst2", "--n-samples", "1000"]
    assert cli("import-codecarbon", str(records), *args, "--model-kind-map", str(rules))[0] == 0
    kinds = {model: run.data.tags.get("tracker.model.kind") for model, run in by_model(client).items()}
    assert kinds == {"google/flan-t5-base": "multi-purpose", "bigscience/bloomz-560m": "multi-purpose",
                     "distilbert-base-uncased-finetuned-sst-2-english": "task-specific", "someone/unlisted": None}
    assert "flan-t5|bloomz=multi-purpose" in by_model(client)["google/flan-t5-base"].data.tags["tracker.model.kind_reason"]
    before = {r.info.run_id for r in all_runs(client)}
    # the same records, now with a default kind for the unlisted model: counted, left alone, --replace offered
    code, out, err = cli("import-codecarbon", str(records), *args, "--model-kind-map", str(rules),
                         "--model-kind", "task-specific")
    assert code == 0 and "imported 0 records" in out and "3 already imported" in out
    assert "1 record(s) were imported before with other options" in err and "kind: unrecorded -> task-specific" in err
    assert "--replace" in err and {r.info.run_id for r in all_runs(client)} == before
    code, out, err = cli("import-codecarbon", str(records), *args, "--model-kind-map", str(rules),
                         "--model-kind", "task-specific", "--replace")
    assert code == 0 and "imported 1 records" in out and "1 imported before with other options replaced" in out
    runs = all_runs(client)
    assert len(runs) == 4 and by_model(client)["someone/unlisted"].data.tags["tracker.model.kind"] == "task-specific"
    [old] = before - {r.info.run_id for r in runs}
    assert client.get_run(old).info.lifecycle_stage == "deleted"  # restorable, as `mlflow runs delete` leaves it
    assert by_model(client)["someone/unlisted"].data.tags["tracker.import.replaces"] == old


def test_the_dataset_may_come_from_each_files_name(cli, client, tmp_path):
    for dataset in ("imdb", "sst2"):
        write(tmp_path / f"text_classif_{dataset}.csv", [
            record(f"r-{dataset}", "org/model-a", cpu=0.001, gpu=0.0, ram=0.001, duration=10, emissions=0.0001)])
    code, out, err = cli("import-codecarbon", str(tmp_path), "--task", "text-classification",
                         "--dataset-from-file", "_(imdb|sst2)", "--n-samples", "1000")
    assert code == 0 and "imported 2 records" in out, err
    assert {r.data.params["dataset"] for r in all_runs(client)} == {"imdb", "sst2"}
    write(tmp_path / "tomatoes.csv", [record("r-t", "org/model-a", cpu=0.001, gpu=0.0, ram=0.001, duration=10,
                                              emissions=0.0001)])
    code, _, err = cli("import-codecarbon", str(tmp_path), "--task", "text-classification",
                       "--dataset-from-file", "_(imdb|sst2)", "--n-samples", "1000")
    assert code == 2 and "finds no dataset in the file name 'tomatoes.csv'" in err and len(all_runs(client)) == 2
    code, _, err = cli("import-codecarbon", str(tmp_path), "--task", "text-classification", "--n-samples", "1000")
    assert code == 2 and "--dataset NAME" in err and "--dataset-from-file REGEX" in err


def test_runs_imported_before_record_ids_are_recognised_and_replaced_when_asked(cli, client, tmp_path):
    """An earlier version keyed a record by its text: importing it again must not add it twice."""
    from mlflow.entities import Param

    from tracker.import_codecarbon.records import times_ms
    from tracker.recording.lifecycle import experiment_id

    row = record("r1", "org/model-a", cpu=0.001, gpu=0.0, ram=0.001, duration=10, emissions=0.0001)
    start, end = times_ms(row)
    old = client.create_run(experiment_id(client, "text-classification"), start_time=start,
                            tags={"tracker.import.record_key": "0" * 32, "tracker.import.codecarbon_run_id": "r1",
                                  "tracker.imported": "true"}).info.run_id
    client.log_batch(old, params=[Param("model", "org/model-a"), Param("task", "text-classification")])
    client.set_terminated(old, "FINISHED", end_time=end)
    records = write(tmp_path / "emissions.csv", [row])
    args = ["--task", "text-classification", "--dataset", "sst2", "--n-samples", "1000"]
    code, out, err = cli("import-codecarbon", str(records), *args)
    assert code == 0 and "imported 0 records" in out and "imported by an earlier version" in err
    code, out, err = cli("import-codecarbon", str(records), *args, "--replace")
    assert code == 0 and "imported 1 records" in out, err
    [run] = all_runs(client)
    assert run.data.tags["tracker.import.replaces"] == old and client.get_run(old).info.lifecycle_stage == "deleted"
