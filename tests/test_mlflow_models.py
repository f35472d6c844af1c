"""Models kept in MLflow (logged, registered, aliased) measured by `tracker run --model models:/...`."""

from __future__ import annotations

import pytest
from conftest import all_runs

REQUIREMENTS = ["transformers", "torch"]  # given, so MLflow does not probe the environment


@pytest.fixture
def registered(client, cli):
    """The built-in tiny sentiment classifier, logged with MLflow's transformers flavour and registered
    as tiny-sentiment version 1, alias champion."""
    import mlflow
    import transformers

    from tracker.sources.models import builtin_model
    from tracker.tasks import get_task

    folder = builtin_model(get_task("text-classification")).location
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    mlflow.set_experiment("models")
    with mlflow.start_run() as run:
        info = mlflow.transformers.log_model({"model": model, "tokenizer": tokenizer}, name="classifier",
                                             task="text-classification", registered_model_name="tiny-sentiment",
                                             pip_requirements=REQUIREMENTS)
    client.set_registered_model_alias("tiny-sentiment", "champion", "1")
    return run.info.run_id, info.model_id


def test_a_registered_transformers_model_is_measured_and_its_version_shows_its_energy(cli, client, registered):
    source_run, model_id = registered
    code, out, err = cli("run", "--task", "text-classification", "--model", "models:/tiny-sentiment/1",
                         "--n-samples", "16", "--batch-size", "8", "--country", "FRA", "--no-progress")
    assert code == 0, err
    [run] = [r for r in all_runs(client) if r.data.tags.get("tracker.model.uri")]
    assert run.info.status == "FINISHED"
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["tracker.model.source"] == "mlflow" and tags["tracker.model.flavor"] == "transformers"
    assert tags["tracker.model.registered_name"] == "tiny-sentiment" and tags["tracker.model.version"] == "1"
    assert tags["tracker.model.logged_model_id"] == model_id and tags["tracker.model.source_run_id"] == source_run
    assert tags["tracker.model.kind"] == "task-specific"  # ran through the task's own code
    assert metrics["energy_kwh_per_1k"] > 0 and 0 <= metrics["accuracy"] <= 1
    linked = client.get_run(run.info.run_id).inputs.model_inputs  # search_runs leaves model inputs out
    assert [m.model_id for m in linked] == [model_id]  # linked to the logged model

    version = client.get_model_version("tiny-sentiment", "1")
    assert float(version.tags["tracker.energy_kwh_per_1k"]) == pytest.approx(metrics["energy_kwh_per_1k"], rel=1e-5)
    assert float(version.tags["tracker.quality"]) == pytest.approx(metrics["quality"], rel=1e-5)
    assert version.tags["tracker.run_id"] == run.info.run_id
    assert version.tags["tracker.quality_metric"] == "accuracy"

    # The alias and the run's own path name the same model: the run records which URI it was.
    for uri in ("models:/tiny-sentiment@champion", f"runs:/{source_run}/classifier"):
        code, _, err = cli("run", "--task", "text-classification", "--model", uri, "--n-samples", "8",
                           "--country", "FRA", "--no-progress")
        assert code == 0, err
    uris = {r.data.tags["tracker.model.uri"]: r for r in all_runs(client) if r.data.tags.get("tracker.model.uri")}
    assert set(uris) == {"models:/tiny-sentiment/1", "models:/tiny-sentiment@champion",
                         f"runs:/{source_run}/classifier"}
    assert uris["models:/tiny-sentiment@champion"].data.tags["tracker.model.version"] == "1"
    assert client.get_model_version("tiny-sentiment", "1").tags["tracker.run_id"] == \
        uris["models:/tiny-sentiment@champion"].info.run_id  # the latest run's figures


def test_a_pyfunc_model_runs_through_its_predict(cli, client):
    import mlflow

    class Keywords(mlflow.pyfunc.PythonModel):
        """A rule-based sentiment model: no transformers inside."""

        def predict(self, context, model_input, params=None):
            words = ("great", "superb", "loved", "wonderful", "brilliant", "excellent")
            return ["POSITIVE" if any(w in str(t).lower() for w in words) else "NEGATIVE" for t in model_input]

    mlflow.set_experiment("models")
    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="rules", python_model=Keywords(), registered_model_name="rules",
                                pip_requirements=[])
    code, out, err = cli("run", "--task", "text-classification", "--model", "models:/rules/1", "--n-samples", "40",
                         "--batch-size", "8", "--country", "FRA", "--no-progress")
    assert code == 0, err
    [run] = [r for r in all_runs(client) if r.data.tags.get("tracker.model.uri")]
    assert run.data.tags["tracker.model.flavor"] == "pyfunc"
    assert "pyfunc" in run.data.tags["tracker.model.kind_reason"]
    # 40 keyword checks take a few milliseconds: a short window (flagged), still charged its CPU time, never 0.
    assert run.data.metrics["inferences_measured"] == 40 and run.data.metrics["energy_kwh"] > 0
    assert run.data.tags["tracker.measurement.short_window"] == "true"
    assert run.data.metrics["accuracy"] > 0.5  # the rules read the built-in reviews' words
    assert client.get_model_version("rules", "1").tags["tracker.quality_metric"] == "accuracy"


@pytest.mark.parametrize("uri, message", [
    ("models:/nobody/1", "MLflow has no model at 'models:/nobody/1'"),
    ("models:/nobody@prod", "MLflow has no model at 'models:/nobody@prod'"),
    ("runs:/0123456789abcdef0123456789abcdef/model", "MLflow has no model at"),
    ("models:/two/slashes/here", "is not one MLflow serves"),
])
def test_a_model_uri_that_names_nothing_is_refused_in_one_line(cli, client, uri, message):
    code, out, err = cli("run", "--task", "text-classification", "--model", uri, "--country", "FRA", "--no-progress")
    assert code == 2
    [line] = err.strip().splitlines()[-1:]
    assert message in line
    assert not [r for r in all_runs(client) if r.data.params.get("model") == uri]  # refused before any run
