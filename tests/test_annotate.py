"""tracker annotate: a study's quality and parameter tables onto existing runs, by model and dataset."""

from __future__ import annotations

import pytest
from conftest import all_runs
from test_import import PAPER_RECORDS, record, write
from test_report import make_run


def by_key(client) -> dict:
    return {(r.data.params["model"], r.data.params.get("dataset")): r for r in all_runs(client)}


def test_wide_and_long_tables_attach_quality_and_size_with_aliases(cli, client, tmp_path):
    records = write(tmp_path / "emissions.csv", [
        record("r1", "cardiffnlp/twitter-roberta-base-sentiment-latest", cpu=0.001, gpu=0.0, ram=0.001,
               duration=10, emissions=0.0001),
        record("r2", "org/unscored", cpu=0.001, gpu=0.0, ram=0.001, duration=10, emissions=0.0001)])
    assert cli("import-codecarbon", str(records), "--task", "question-answering", "--dataset", "squadv2",
               "--n-samples", "1000", "--experiment", "qa")[0] == 0
    # the study's layout: its names differ from the records' (no organisation, squad_v2)
    wide = tmp_path / "performance.csv"
    wide.write_text('model,task,type,imdb (acc),"squad_v2 (f1, has answer)",samsum (rouge)\n'
                    "twitter-roberta-base-sentiment-latest,qa,encoder,,0.8123,\n"
                    "org/elsewhere,qa,encoder,0.9,0.5,\n")
    sizes = write(tmp_path / "params.csv", [{"model_name": "twitter-roberta-base-sentiment-latest",
                                             "num_parameters": "124645632"}])
    code, out, err = cli("annotate", "--quality", str(wide), "--parameters", str(sizes), "--experiments", "qa",
                         "--alias", "twitter-roberta-base-sentiment-latest=cardiffnlp/twitter-roberta-base-sentiment-latest",
                         "--alias", "squad_v2=squadv2")
    assert code == 0, err
    assert "annotated 2 runs: quality on 1, parameter counts on 1" in out
    assert "no quality in the table for 1 model(s): org/unscored" in err and "--alias" in err
    run = by_key(client)[("cardiffnlp/twitter-roberta-base-sentiment-latest", "squadv2")].data
    assert run.metrics["quality"] == pytest.approx(0.8123) and run.metrics["f1_has_answer"] == pytest.approx(0.8123)
    assert run.metrics["model_parameters"] == 124645632
    assert run.tags["tracker.quality.metric"] == "f1, has answer"
    assert run.tags["tracker.quality.meaningful"] == "true" and "tracker.quality.unavailable" not in run.tags
    assert run.tags["tracker.quality.source"].startswith(f"imported from {wide}")
    unscored = by_key(client)[("org/unscored", "squadv2")].data
    assert "quality" not in unscored.metrics and unscored.tags["tracker.quality.meaningful"] == "false"

    # a long table, annotated again: the imported figure is replaced, its history kept
    long = write(tmp_path / "long.csv", [{"model": "cardiffnlp/twitter-roberta-base-sentiment-latest",
                                          "dataset": "squadv2", "metric": "exact_match", "value": "0.7"}])
    assert cli("annotate", "--quality", str(long), "--experiments", "qa")[0] == 0
    run_id = by_key(client)[("cardiffnlp/twitter-roberta-base-sentiment-latest", "squadv2")].info.run_id
    again = client.get_run(run_id).data
    assert again.metrics["quality"] == pytest.approx(0.7) and again.tags["tracker.quality.metric"] == "exact_match"
    assert [m.value for m in client.get_metric_history(run_id, "quality")] == pytest.approx([0.8123, 0.7])


def test_a_measured_quality_is_kept(cli, client, tmp_path):
    run_id = make_run(client, task="text-classification", model="m1", dataset="imdb", kwh_per_1k=1.0, quality=0.91)
    table = write(tmp_path / "q.csv", [{"model": "m1", "dataset": "imdb", "metric": "acc", "value": "0.5"}])
    code, out, _ = cli("annotate", "--quality", str(table), "--experiments", "text-classification")
    assert code == 0 and "quality on 0" in out and "1 kept their measured quality" in out
    assert client.get_run(run_id).data.metrics["quality"] == pytest.approx(0.91)


@pytest.mark.parametrize("content, message", [
    ("model,score\nm1,0.5\n", "is neither a long table (columns model, dataset, metric, value) nor the study's wide"),
    ("model,imdb (acc)\nm1,high\n", "line 2: acc of m1 on imdb: 'high' is not a number"),
])
def test_bad_tables_are_refused_before_any_change(cli, client, tmp_path, content, message):
    run_id = make_run(client, task="text-classification", model="m1", dataset="imdb", kwh_per_1k=1.0, quality=0.91)
    table = tmp_path / "q.csv"
    table.write_text(content)
    code, _, err = cli("annotate", "--quality", str(table), "--experiments", "text-classification")
    [line] = [line for line in err.splitlines() if line.startswith("tracker:")]
    assert code == 2 and message in line
    assert client.get_run(run_id).data.tags.get("tracker.quality.source") is None
    code, _, err = cli("annotate", "--experiments", "text-classification")
    assert code == 2 and "needs --quality FILE, --parameters FILE or both" in err
    code, _, err = cli("annotate", "--quality", str(table), "--alias", "nonsense")
    assert code == 2 and "--alias 'nonsense' is not THEIRS=OURS" in err


@pytest.mark.skipif(not PAPER_RECORDS.is_dir(), reason="../shared/data/power-hungry-processing is not beside the repo")
def test_the_papers_records_as_released_give_its_table_kinds_apart_with_quality_and_size(cli, tmp_path):
    """docs/reproducing.md's commands on a copy of the study's records (the multi-purpose files in a
    folder of their own there): task-specific and multi-purpose runs, phases, quality and sizes; the
    paper's table unpolluted, the multi-purpose families apart."""
    import pandas as pd

    D = PAPER_RECORDS  # docs/reproducing.md's commands
    code, out, err = cli("import-codecarbon", *map(str, sorted((D / "complete").glob("text_classif_*.csv"))),
                         str(D / "multi-purpose"), "--task", "text-classification",
                         "--dataset-from-file", "_(imdb|sst2|tomatoes)", "--n-samples", "1000",
                         "--phases", str(D / "base"), "--model-kind", "task-specific",
                         "--model-kind-map", "flan-t5|bloom|gpt2|opt-|llama=multi-purpose",
                         "--experiment", "paper-text-classification")
    assert code == 0 and "imported 600 records" in out and "600 with a query phase" in out, err
    code, out, err = cli("import-codecarbon", *map(str, sorted((D / "complete").glob("summarize_*.csv"))),
                         "--task", "summarization", "--dataset-from-file", "_(cnn|samsum|xsum)_",
                         "--n-samples", "1000", "--phases", str(D / "base"), "--model-kind", "task-specific",
                         "--experiment", "paper-summarization")
    assert code == 0 and "imported 240 records" in out, err
    experiments = "paper-text-classification,paper-summarization"
    code, out, err = cli("annotate", "--quality", str(D / "performance.csv"), "--parameters",
                         str(D / "model_parameters.csv"), "--experiments", experiments, "--alias",
                         "twitter-roberta-base-sentiment-latest=cardiffnlp/twitter-roberta-base-sentiment-latest")
    assert code == 0, err
    assert "annotated 840 runs: quality on 720, parameter counts on 840" in out  # base LMs have no quality
    code, out, err = cli("report", "--output", str(tmp_path / "report"), "--experiments", experiments,
                         "--unit", "gCO2eq")
    assert code == 0, err
    tasks = pd.read_csv(tmp_path / "report" / "tasks.csv").set_index("task")
    assert tasks.loc["text-classification", "kwh_per_1k_mean"] == pytest.approx(0.0023, rel=0.02)
    assert tasks.loc["summarization", "kwh_per_1k_mean"] == pytest.approx(0.049, rel=0.02)
    assert tasks.loc["text-classification", "runs"] == 240 and (tasks["kinds"] == "task-specific").all()
    prompted = pd.read_csv(tmp_path / "report" / "multipurpose.csv")
    families = prompted.groupby("family")["kwh_per_1k_mean"].mean()
    assert set(families.index) == {"BLOOMz", "Flan-T5", "base LM"}
    assert 0.014 < families["BLOOMz"] < 0.03 and 0.014 < families["Flan-T5"] < 0.03
    ratio = prompted[prompted["family"] != "base LM"]["x_task_specific"].median()
    assert 5 < ratio < 15  # about 10x the task-specific models, as the paper found
    report = (tmp_path / "report" / "report.md").read_text()
    for figure in ("energy_by_task", "energy_vs_quality", "energy_vs_size", "multipurpose_vs_task_specific"):
        assert f"({figure}.png)" in report  # drawn, not "No figure"
    assert "No figure" not in report
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.index("<img") < page.index("<table") and "<details><summary>Table:" in page
