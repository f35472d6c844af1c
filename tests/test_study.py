"""The study runner: every model x dataset as its own run, skipping what is FINISHED, recording
what fails (before or during its run) and going on."""

import json

import pytest
from conftest import all_runs

pytestmark = pytest.mark.slow


def _definition(path, models, extra=""):
    lines = "\n".join(f"  - {m}" for m in models)
    path.write_text(f"task: text-classification\nexperiment: study-test\ndatasets: [builtin]\n"
                    f"params: {{n_samples: 8, batch_size: 4, country: FRA}}\n{extra}models:\n{lines}\n")
    return str(path)


def _broken_model(folder):
    """A model folder whose weights are readable but do not fit its config (another width): it
    fails inside its run, while loading (a folder without weights is refused before any run)."""
    import shutil

    from tracker.sources.models import builtin_model
    from tracker.tasks import get_task

    shutil.copytree(builtin_model(get_task("text-classification")).location, folder)
    config = json.loads((folder / "config.json").read_text())
    config["dim"], config["hidden_dim"] = config["dim"] * 2, config["hidden_dim"] * 2
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_study_skips_finished_records_failures_and_goes_on(cli, client, hermetic):
    broken = _broken_model(hermetic / "broken-model")
    study = _definition(hermetic / "study.yaml", ["builtin-tiny", "no-such-org/no-such-model", broken])

    code, out, err = cli("study", study)
    assert code == 1  # something failed, and the study still ran every combination
    runs = all_runs(client)
    assert len(runs) == 3
    by_model = {r.data.params["model"]: r for r in runs}
    assert by_model["builtin-tiny"].info.status == "FINISHED"
    # failed before a run could exist: a FAILED run with the requested params and the reason
    unreachable = by_model["no-such-org/no-such-model"]
    assert unreachable.info.status == "FAILED"
    assert "cannot load model" in unreachable.data.tags["tracker.error"]
    assert unreachable.data.tags["tracker.run.started"] == "false"
    # failed inside its run: the run's own FAILED status and error
    inside = by_model[broken]
    assert inside.info.status == "FAILED" and inside.data.tags["tracker.error"]
    assert "tracker.run.started" not in inside.data.tags
    assert {r.data.tags["tracker.study.name"] for r in runs} == {"study"}
    assert "FINISHED builtin-tiny" in out and out.count("FAILED") == 2

    # Again: the FINISHED combination is skipped, the failed ones are tried again.
    code, out, _ = cli("study", study)
    assert code == 1
    assert "SKIPPED  builtin-tiny" in out
    runs = all_runs(client)
    assert len(runs) == 5
    assert sum(r.info.status == "FINISHED" for r in runs) == 1


def test_force_measures_a_finished_combination_again(cli, client, hermetic):
    study = _definition(hermetic / "one.yaml", ["builtin-tiny"])
    assert cli("study", study)[0] == 0
    assert cli("study", study)[0] == 0
    assert len(all_runs(client)) == 1  # skipped the second time
    assert cli("study", study, "--force")[0] == 0
    runs = all_runs(client)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["tracker.config_key"] for r in runs}) == 1


def test_a_run_made_by_hand_counts_as_done(cli, client, hermetic):
    """The skip key is the measured configuration, so a plain `tracker run` with the same settings
    satisfies the study too."""
    code, _, err = cli("run", "--task", "text-classification", "--model", "builtin-tiny", "--dataset",
                       "builtin", "--n-samples", "8", "--batch-size", "4", "--country", "FRA",
                       "--experiment", "study-test", "--no-progress")
    assert code == 0, err
    code, out, _ = cli("study", _definition(hermetic / "one.yaml", ["builtin-tiny"]))
    assert code == 0 and "SKIPPED" in out
    assert len(all_runs(client)) == 1


@pytest.mark.parametrize("content, message", [
    ("task: text-classification\n", "needs 'task' and a list of 'models'"),
    ("task: text-clasification\nmodels: [builtin-tiny]\n", "Did you mean 'text-classification'"),
    ("task: summarization\nmodels: [builtin-tiny]\nparams: {batch_size: 0}\n", "--batch-size"),
    ("task: summarization\nmodel: [builtin-tiny]\n", "needs 'task'"),
    ("task: [unclosed\n", "not valid YAML"),
    # wrong types: a string where a list belongs used to run once per character
    ("task: summarization\nmodels: some-id\n", "'models' must be a list, got str 'some-id'"),
    ("task: summarization\nmodels: 42\n", "'models' must be a list, got int"),
    ("task: summarization\nmodels: [builtin-tiny]\nparams: [batch_size, 8]\n", "'params' must be a mapping"),
    ("task: summarization\nmodels: [builtin-tiny]\nexperiment: [a, b]\n", "'experiment' must be a name"),
    ("task: summarization\nmodels: [builtin-tiny]\ndatasets: builtin\n", "'datasets' must be a list"),
    ("task: summarization\nmodels: [{model: [a]}]\n", "models[0] must be a model name"),
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "is not a text file"),
])
def test_bad_definition_is_one_clear_line_and_runs_nothing(cli, client, hermetic, content, message):
    path = hermetic / "bad.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, _, err = cli("study", str(path))
    assert code == 2
    [line] = [line for line in err.splitlines() if line.startswith("tracker: error:")]
    assert message in line
    assert all_runs(client) == []


def test_every_shipped_definition_is_valid():
    from pathlib import Path

    from conftest import REPO

    from tracker.study import load_definition

    files = sorted(Path(REPO, "experiments").glob("*.yaml"))
    assert len(files) >= 12
    for path in files:
        definition = load_definition(path)
        assert definition.combinations, path
