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

    code, out, err = cli("study", "--remeasure", "0", study)
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
    code, out, _ = cli("study", "--remeasure", "0", study)
    assert code == 1
    assert "SKIPPED  builtin-tiny" in out
    runs = all_runs(client)
    assert len(runs) == 5
    assert sum(r.info.status == "FINISHED" for r in runs) == 1


def test_force_measures_a_finished_combination_again(cli, client, hermetic):
    study = _definition(hermetic / "one.yaml", ["builtin-tiny"])
    assert cli("study", "--remeasure", "0", study)[0] == 0
    assert cli("study", "--remeasure", "0", study)[0] == 0
    assert len(all_runs(client)) == 1  # skipped the second time
    assert cli("study", "--remeasure", "0", study, "--force")[0] == 0
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
    code, out, _ = cli("study", "--remeasure", "0", _definition(hermetic / "one.yaml", ["builtin-tiny"]))
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
    code, _, err = cli("study", "--remeasure", "0", str(path))
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


def _result(run_id, status="FINISHED", contended=False, share=0.0):
    from types import SimpleNamespace

    tags = {"tracker.measurement.contended": "true" if contended else "false"}
    if contended:
        tags["tracker.measurement.contended_reason"] = f"CPUs oversubscribed ({run_id})"
    run = SimpleNamespace(info=SimpleNamespace(run_id=run_id),
                          data=SimpleNamespace(tags=tags, metrics={"background_cpu_share": share}))
    return SimpleNamespace(status=status, run=run, reason="" if status == "FINISHED" else "it died", seconds=1.0)


class _Client:
    def __init__(self):
        self.tags = {}

    def set_tag(self, run_id, key, value):
        self.tags[(run_id, key)] = value


@pytest.mark.parametrize("sequence, tries, kept, dropped", [
    (["quiet"], 1, "r1", []),  # quiet at once: measured once
    (["busy", "quiet"], 1, "r2", ["r1"]),  # the quiet one kept, the other tagged
    (["busy", "busy:0.1", "quiet"], 1, "r2", ["r1"]),  # tries bound the measurements; the less disturbed kept
    (["busy", "busy:0.1", "quiet"], 2, "r3", ["r1", "r2"]),
    (["busy", "dead"], 3, "r1", []),  # a failure is not a quieter figure: the first kept, untagged
    (["busy"], 0, "r1", []),  # --remeasure 0: never again
])
def test_a_contended_measurement_is_measured_again_and_the_least_disturbed_kept(sequence, tries, kept, dropped):
    from tracker.execution.remeasure import REMEASURED_BY, measure_until_quiet

    made = []

    def measure():
        kind = sequence[len(made)]
        name = f"r{len(made) + 1}"
        share = float(kind.partition(":")[2] or 0.5)
        made.append(_result(name, "FAILED" if kind == "dead" else "FINISHED", kind.startswith("busy"), share))
        return made[-1]

    client = _Client()
    result, gone = measure_until_quiet(client, measure, tries=tries, wait_s=0)
    assert result.run.info.run_id == kept
    assert [r.run.info.run_id for r in gone] == dropped
    assert client.tags == {(d, REMEASURED_BY): kept for d in dropped}
    assert len(made) == min(len(sequence), tries + 1)


def test_a_study_beside_a_burner_ends_with_a_quiet_figure_or_says_which_is_not(cli, client, hermetic):
    import os
    import threading
    import time

    from test_attribution import cpu_burner

    from tracker.execution.remeasure import REMEASURED_BY
    from tracker.reporting.collect import LEFT_OUT_REMEASURED, read_runs

    cpus = len(os.sched_getaffinity(0))  # a pool as wide as the CPUs: one busy core oversubscribes it
    study = _definition(hermetic / "study.yaml", ["builtin-tiny"])
    path = hermetic / "study.yaml"
    path.write_text(path.read_text().replace("n_samples: 8,", "n_samples: 400,").replace(
        "country: FRA}", f"country: FRA, threads: {cpus}, repeats: 2}}"))  # windows of tenths of a second
    stop = threading.Event()

    def stop_burner_when_the_first_run_ends(pid):
        deadline = time.monotonic() + 600
        while not stop.is_set() and time.monotonic() < deadline:
            if any(r.info.status == "FINISHED" for r in all_runs(client)):
                os.kill(pid, 9)
                return
            stop.wait(0.2)

    with cpu_burner() as pid:
        watcher = threading.Thread(target=stop_burner_when_the_first_run_ends, args=(pid,), daemon=True)
        watcher.start()
        code, out, err = cli("study", study, "--remeasure", "1", "--wait-for-quiet", "20")
        stop.set()
    assert code == 0, err
    first, second = sorted(all_runs(client), key=lambda r: r.info.start_time)
    assert first.data.tags["tracker.measurement.contended"] == "true"  # beside the burner
    assert "oversubscribed" in first.data.tags["tracker.measurement.contended_reason"]
    kept, dropped = (second, first) if REMEASURED_BY in first.data.tags else (first, second)
    assert dropped.data.tags[REMEASURED_BY] == kept.info.run_id and REMEASURED_BY not in kept.data.tags
    if kept.data.tags["tracker.measurement.contended"] == "true":  # the machine stayed busy: said so
        assert "stayed contended after measuring again" in err and "CONTENDED" in out
    else:
        assert "CONTENDED" not in out
    assert f"run={kept.info.run_id}" in out
    # the report compares the kept measurement only, and says why the other is left out
    runs = read_runs(client, ["study-test"], include_tuning=False)
    assert list(runs["run_id"]) == [kept.info.run_id]
    assert runs.attrs["left_out"] == {LEFT_OUT_REMEASURED: 1}
    # and the same study again skips the combination, citing the kept run
    code, out, _ = cli("study", study, "--remeasure", "0")
    assert code == 0 and f"SKIPPED  builtin-tiny · builtin  kWh/1k=-  run={kept.info.run_id}" in out
