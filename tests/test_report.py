"""tracker report: aggregation on runs with known figures, star bands, regional what-ifs, empty input."""

from __future__ import annotations

import pytest

from tracker.reporting.tables import PHONE_CHARGE_KWH, star_ratings


def make_run(client, *, task, model, dataset, kwh_per_1k, quality=0.5, batch_size="1", precision="fp32",
             kind="task-specific", parameters=None, status="FINISHED", tags=None):
    """A run as `tracker run` leaves it, with the figures the report reads."""
    from mlflow.entities import Metric, Param, RunTag

    from tracker.recording.lifecycle import experiment_id

    run = client.create_run(experiment_id(client, task))
    metrics = {"energy_kwh_per_1k": kwh_per_1k, "emissions_g_per_output": kwh_per_1k * 0.4, "quality": quality}
    if parameters:
        metrics["model_parameters"] = parameters
    all_tags = {"tracker.model.kind": kind, "tracker.quality.metric": "accuracy",
                "tracker.quality.higher_is_better": "true", "tracker.quality.meaningful": "true",
                "tracker.energy.cpu.method": "modelled: TDP x CPU load", "tracker.energy.ram.method": "modelled: x",
                "tracker.energy.gpu.method": "absent: no GPU"} | (tags or {})
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
                     params=[Param(k, str(v)) for k, v in {"task": task, "model": model, "dataset": dataset,
                                                           "batch_size": batch_size, "precision": precision}.items()],
                     tags=[RunTag(k, v) for k, v in all_tags.items()])
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_star_bands_at_their_edges():
    # range 0 to 1 in five bands of 0.2; an edge belongs to the better (lower-energy) band
    assert star_ratings([0.0, 0.2, 0.2000001, 0.4, 0.6, 0.8, 0.8000001, 1.0]) == [5, 5, 4, 4, 3, 2, 1, 1]
    # the same on a realistic scale, where edges are not exact in binary
    low, high = 0.00135, 0.00444
    edges = [low + (high - low) * k / 5 for k in range(6)]
    assert star_ratings(edges) == [5, 5, 4, 3, 2, 1]
    # nothing to rate against
    assert star_ratings([0.003]) == [None]
    assert star_ratings([0.003, 0.003]) == [None, None]


def test_report_aggregates_runs_with_known_figures(cli, client, tmp_path):
    import pandas as pd

    a1 = make_run(client, task="text-classification", model="m1", dataset="imdb", kwh_per_1k=1.0, quality=0.80,
                  parameters=66e6)
    make_run(client, task="text-classification", model="m1", dataset="imdb", kwh_per_1k=3.0, quality=0.90,
             parameters=66e6, tags={"tracker.measurement.contended": "true"})
    make_run(client, task="text-classification", model="m1", dataset="sst2", kwh_per_1k=5.0, quality=0.70)
    make_run(client, task="text-classification", model="m2", dataset="imdb", kwh_per_1k=10.0, quality=0.95,
             kind="multi-purpose", parameters=250e6)
    # not compared: a failed run, and a search's trial (unless --include-tuning)
    make_run(client, task="text-classification", model="m2", dataset="imdb", kwh_per_1k=999.0, status="FAILED")
    trial = make_run(client, task="text-classification", model="m1", dataset="imdb", kwh_per_1k=0.1,
                     batch_size="64", precision="int8", tags={"tracker.tune.study": "s"})
    make_run(client, task="summarization", model="s1", dataset="xsum", kwh_per_1k=40.0)
    make_run(client, task="summarization", model="s2", dataset="xsum", kwh_per_1k=60.0,
             tags={"tracker.imported": "true", "tracker.import.codecarbon_version": "2.3.1"})
    alone = make_run(client, task="fill-mask", model="f1", dataset="c4", kwh_per_1k=0.5)

    out = tmp_path / "report"
    code, stdout, err = cli("report", "--output", str(out), "--countries", "ind,FRA")
    assert code == 0, err

    models = pd.read_csv(out / "models.csv")
    row = models[(models["model"] == "m1") & (models["dataset"] == "imdb")].iloc[0]
    assert row["runs"] == 2 and row["contended_runs"] == 1
    assert models[models["model"] == "m2"].iloc[0]["contended_runs"] == 0
    assert (row["kwh_per_1k_mean"], row["kwh_per_1k_min"], row["kwh_per_1k_max"]) == pytest.approx((2.0, 1.0, 3.0))
    assert row["g_co2_per_1k_mean"] == pytest.approx(2.0 * 0.4 * 1000)
    assert row["quality"] == pytest.approx(0.85)
    assert row["phone_charges_per_1k"] == pytest.approx(2.0 / PHONE_CHARGE_KWH)
    assert row["parameters"] == pytest.approx(66e6) and row["kind"] == "task-specific"
    assert len(models) == 6  # m1/imdb, m1/sst2, m2/imdb, s1, s2, f1: no failed run, no trial
    # stars per task over its model rows: 2, 5 and 10 kWh span 8 in bands of 1.6
    stars = {(r.model, r.dataset): r.stars for r in models.itertuples()}
    assert stars[("m1", "imdb")] == 5 and stars[("m1", "sst2")] == 4 and stars[("m2", "imdb")] == 1
    assert stars[("s1", "xsum")] == 5 and stars[("s2", "xsum")] == 1
    assert pd.isna(stars[("f1", "c4")])  # alone in its task: nothing to rate against

    tasks = pd.read_csv(out / "tasks.csv").set_index("task")
    classification = tasks.loc["text-classification"]
    # the paper's table is of task-specific models: m2, multi-purpose, is never averaged in
    assert classification["runs"] == 3 and classification["models"] == 1
    assert classification["kwh_per_1k_mean"] == pytest.approx((1 + 3 + 5) / 3)  # over runs
    assert (classification["kwh_per_1k_min"], classification["kwh_per_1k_max"]) == pytest.approx((3.0, 3.0))
    assert classification["kinds"] == "task-specific"
    prompted = pd.read_csv(out / "multipurpose.csv")
    assert list(prompted["model"]) == ["m2"] and prompted.loc[0, "family"] == "base LM"
    assert prompted.loc[0, "x_task_specific"] == pytest.approx(10 / 2)  # over m1's runs on imdb: (1 + 3) / 2
    assert list(tasks.index) == ["fill-mask", "text-classification", "summarization"]  # cheapest first

    regional = pd.read_csv(out / "regional.csv")
    fra = regional[(regional["task"] == "summarization") & (regional["country_iso_code"] == "FRA")].iloc[0]
    assert fra["carbon_intensity_g_per_kwh"] == pytest.approx(56.039, rel=0.01)  # CodeCarbon's mix for France
    assert fra["g_co2_per_1k"] == pytest.approx(50.0 * fra["carbon_intensity_g_per_kwh"])
    assert set(regional["country_iso_code"]) == {"FRA", "IND"}

    figures = {"energy_by_task.png", "energy_vs_quality.png", "energy_vs_size.png",
               "multipurpose_vs_task_specific.png"}
    assert figures <= {p.name for p in out.iterdir()}
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and 'src="energy' not in page  # self-contained
    assert "★★★★★" in page and "IND (" in page
    summary = (out / "report.md").read_text()
    assert "| text-classification | 1 | 3 | 3 | 3 | 3 |" in summary
    assert "Kinds kept apart: the 1 runs of multi-purpose models" in summary
    assert summary.index("| IND (713 g/kWh) | FRA (56 g/kWh) |") > 0  # in the order the user named them
    assert "Left out: 1 runs of a search" in summary
    assert "Contended: 1 of 7 runs" in summary
    # a task whose runs were obtained in different ways says so
    assert tasks.loc["summarization", "energy_method"] == (
        "CPU modelled, RAM modelled, GPU absent; imported CodeCarbon 2.3.1 record")
    assert "Mixed: summarization" in summary and "Mixed: text-classification" not in summary

    # the report run holds it all; the compared runs carry their stars, the trial none
    [report_run] = client.search_runs([client.get_experiment_by_name("report").experiment_id])
    logged = {a.path for a in client.list_artifacts(report_run.info.run_id)}
    assert {"models.csv", "tasks.csv", "regional.csv", "report.html", "report.md"} | figures <= logged
    assert client.get_run(a1).data.tags["tracker.rating.stars"] == "5"
    assert client.get_run(a1).data.tags["tracker.rating.report_run_id"] == report_run.info.run_id
    assert "tracker.rating.stars" not in client.get_run(trial).data.tags
    assert client.get_run(alone).data.tags["tracker.rating.stars"] == "unrated"
    assert client.get_run(alone).data.tags["tracker.rating.basis"].startswith("unrated: 1 compared")

    code, _, err = cli("report", "--output", str(tmp_path / "with-trials"), "--include-tuning", "true",
                       "--experiments", "text-classification")
    assert code == 0, err
    models = pd.read_csv(tmp_path / "with-trials" / "models.csv")
    assert len(models) == 4 and set(models["task"]) == {"text-classification"}
    assert models.loc[models["batch_size"] == 64, "stars"].item() == 5  # the trial is now the cheapest


def test_report_on_an_empty_experiment_says_what_to_do(cli, client, tmp_path):
    client.create_experiment("text-classification")
    code, _, err = cli("report", "--output", str(tmp_path / "report"))
    assert code == 2
    assert "nothing to report" in err and "tracker import-codecarbon" in err and "'text-classification'" in err
    assert not (tmp_path / "report").exists()
    # an experiment that does not exist, or a country that does not
    code, _, err = cli("report", "--output", str(tmp_path / "report"), "--experiments", "text-clasification")
    assert code == 2 and "experiment 'text-clasification' does not exist. Did you mean 'text-classification'?" in err
    code, _, err = cli("report", "--output", str(tmp_path / "report"), "--countries", "FRA,XYZ")
    assert code == 2 and "unknown country code 'XYZ'" in err


def test_report_on_measured_runs(cli, client, tmp_path):
    """A real measured run end to end: its parameter count, energy method and the figures from it."""
    import pandas as pd

    for model in ("builtin-tiny", "builtin-tiny-seq2seq"):
        code, _, err = cli("run", "--task", "text-classification", "--model", model, "--n-samples", "16",
                           "--batch-size", "8", "--no-progress")
        assert code == 0, err
    code, out, err = cli("report", "--output", str(tmp_path / "report"))
    assert code == 0, err
    models = pd.read_csv(tmp_path / "report" / "models.csv").set_index("model")
    assert set(models["kind"]) == {"task-specific", "multi-purpose"}
    assert (models["parameters"] > 0).all() and (models["source"] == "measured").all()
    assert models["energy_method"].str.startswith("CPU ").all()
    assert not models["quality_meaningful"].any()  # built-in models: said in the figure too
    assert (tmp_path / "report" / "multipurpose_vs_task_specific.png").exists()
    assert "text-classification" in out
