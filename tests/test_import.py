"""tracker import-codecarbon: plain and phase-split records, importing twice, bad files, the paper's records."""

from __future__ import annotations

import csv
import math
import shutil
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


@pytest.mark.skipif(not PAPER_RECORDS.is_dir(), reason="../shared/data/power-hungry-processing is not beside the repo")
def test_the_papers_records_give_its_figures(cli, tmp_path):
    """The paper's query-phase figures: about 0.0023 kWh per 1,000 classifications, 0.049 per 1,000 summaries."""
    import pandas as pd

    for path in sorted((PAPER_RECORDS / "complete").glob("*.csv")):
        task = "summarization" if path.name.startswith("summarize") else "text-classification"
        dataset = path.stem.split("_")[2 if task == "text-classification" else 1]
        code, out, err = cli("import-codecarbon", str(path), "--task", task, "--dataset", dataset,
                             "--n-samples", "1000", "--phases", str(PAPER_RECORDS / "base"))
        assert code == 0, err
        assert "80 with a query phase" in out
    code, _, err = cli("report", "--output", str(tmp_path / "report"))
    assert code == 0, err
    tasks = pd.read_csv(tmp_path / "report" / "tasks.csv").set_index("task")
    assert tasks.loc["text-classification", "kwh_per_1k_mean"] == pytest.approx(0.0023, rel=0.02)
    assert tasks.loc["summarization", "kwh_per_1k_mean"] == pytest.approx(0.049, rel=0.02)
    assert tasks.loc["text-classification", "models"] == 8 and tasks.loc["text-classification", "runs"] == 240
    assert (tasks["energy_scope"] == "query phase").all()
    assert not math.isnan(tasks.loc["summarization", "kwh_per_1k_min"])
