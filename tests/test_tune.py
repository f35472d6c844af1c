"""The search: constraint and Pareto front on known figures, the parent/trial layout in MLflow,
trials whose process really dies, a killed worker resumed, one SQLite worker, and two workers on
a real PostgreSQL server."""

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from conftest import all_runs, mlflow_server, started, subprocess_env

from tracker.errors import ConfigError
from tracker.measurement.pareto import pareto_front
from tracker.measurement.stats import Spread
from tracker.tuning import TuneConfig, feasibility

pytestmark = pytest.mark.slow

BASE = ["--task", "text-classification", "--model", "builtin-tiny", "--dataset", "builtin",
        "--n-samples", "16", "--country", "FRA", "--warmup", "0", "--min-window-s", "0"]


def test_feasibility_against_the_reference():
    # higher is better: 1% drop from 0.80 allows down to 0.792
    assert feasibility(0.80, 0.80, 0.01, True) <= 0
    assert feasibility(0.7921, 0.80, 0.01, True) <= 0
    assert feasibility(0.7919, 0.80, 0.01, True) > 0
    # lower is better (WER, perplexity): up to 1% above
    assert feasibility(20.19, 20.0, 0.01, False) <= 0
    assert feasibility(20.21, 20.0, 0.01, False) > 0
    # no quality: never feasible
    assert feasibility(math.nan, 0.8, 0.01, True) == math.inf


def test_pareto_front_keeps_the_undominated():
    trials = [SimpleNamespace(number=i, values=v) for i, v in enumerate(
        [(1.0, 0.70), (2.0, 0.80), (3.0, 0.79), (0.5, 0.60), (2.0, 0.75)])]
    def front(higher_is_better):
        return [t.number for t in pareto_front(trials, cost=lambda t: t.values[0], quality=lambda t: t.values[1],
                                               higher_is_better=higher_is_better)]

    assert front(True) == [3, 0, 1]
    assert front(False) == [3]


def test_search_space_and_bad_settings():
    from tracker.runs.config import RunConfig

    run = RunConfig.parse(task="summarization")
    assert TuneConfig(run=run, max_batch_size=20).batch_sizes() == [1, 2, 4, 8, 16]
    assert TuneConfig(run=run).search_precisions("cpu") == ["fp32", "fp16", "bf16", "int8"]
    assert TuneConfig(run=run).search_precisions("cuda:0") == ["fp32", "fp16", "bf16"]
    for bad, message in [({"max_quality_drop": 1.5}, "--max-quality-drop"),
                         ({"storage": "optuna.db"}, "not a database URL"),
                         ({"objective": "speed"}, "unknown objective")]:
        with pytest.raises(ConfigError, match=message):
            TuneConfig(run=run, **bad)


def _trial_runs(client):
    """The runs that count for their trial: a measurement that other work contended and that was
    measured again is kept, marked REMEASURED, beside the one used."""
    return [r for r in all_runs(client) if r.data.tags.get("tracker.tune.role") == "trial"
            and r.data.tags.get("tracker.tune.state") != "REMEASURED"]


def _optuna_trials(storage, name=None):
    import optuna

    studies = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=name or studies[0].study_name, storage=storage)
    return study


def test_search_layout_parent_baseline_and_nested_trials(cli, client, hermetic):
    storage = f"sqlite:///{hermetic}/optuna.db"
    code, out, err = cli("tune", *BASE, "--n-trials", "4", "--max-batch-size", "4", "--strategy", "tpe",
                         "--precisions", "fp32,int8", "--storage", storage, "--sampler-seed", "3")
    assert code == 0, err
    assert "carbon_reduction_x" in out
    runs = all_runs(client)
    [parent] = [r for r in runs if r.data.tags.get("tracker.tune.role") == "parent"]
    baselines = [r for r in runs if r.data.tags.get("tracker.tune.role") == "baseline"]
    # measured first, then again after every 4 trials of the worker (--baseline-every, default 4)
    assert len(baselines) == 2
    [baseline] = [r for r in baselines if "tracker.tune.baseline" not in r.data.tags]
    assert parent.info.status == "FINISHED"
    for run in baselines:
        assert run.data.params["batch_size"] == "1" and run.data.params["precision"] == "fp32"
        assert run.data.metrics["windows"] >= 3  # enough windows for a spread
    study = _optuna_trials(storage)
    measured = [t for t in study.trials if t.state.name in ("COMPLETE", "FAIL")]
    assert len(measured) == 4  # duplicates, pruned, do not count
    trial_runs = _trial_runs(client)
    # every measured trial has exactly one MLflow run, nested under the parent, honouring the contract
    assert sorted(r.data.tags["tracker.tune.trial"] for r in trial_runs) == sorted(str(t.number) for t in measured)
    for run in trial_runs + [baseline]:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["tracker.tune.study"] == study.study_name
    for run in trial_runs:
        assert "emissions_g_per_output" in run.data.metrics and "quality" in run.data.metrics
        assert run.data.tags["tracker.tune.state"] in ("COMPLETE", "INFEASIBLE")
    # pruned trials repeat settings already measured
    for t in study.trials:
        if t.state.name == "PRUNED":
            assert "duplicate_of" in t.user_attrs
    metrics, tags = parent.data.metrics, parent.data.tags
    best = min((t for t in measured if t.user_attrs["constraint"][0] <= 0), key=lambda t: t.values[0])
    assert tags["tracker.tune.best.batch_size"] == str(best.params["batch_size"])
    assert metrics["best_emissions_g_per_output"] == pytest.approx(best.values[0])
    # the baselines' windows pooled, over the best trial's: with a 95% interval around it
    from tracker.measurement.stats import Spread, pooled

    if all(r.data.tags["tracker.measurement.contended"] == "false" for r in baselines):
        pooled_baseline = pooled([Spread(r.data.metrics["emissions_g_per_output"],
                                         r.data.metrics["emissions_g_per_output_std"],
                                         int(r.data.metrics["windows"])) for r in baselines])
        assert metrics["carbon_reduction_x"] == pytest.approx(pooled_baseline.mean / best.values[0])
    assert metrics["carbon_reduction_x_ci95_low"] < metrics["carbon_reduction_x"] < metrics["carbon_reduction_x_ci95_high"]
    assert metrics["baseline_measurements"] == 2
    assert metrics["reference_quality"] == pytest.approx(baseline.data.metrics["quality"])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "trials.csv" in artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/optimization_history.png", "plots/carbon_vs_quality.png",
                     "plots/carbon_by_settings.png"}


# The shared-load child, whose measuring of a bf16 setting really dies by SIGILL.
DIES_ON_BF16 = """
import os, signal, sys
import tracker.runs.session

real = tracker.runs.session.measure
def measure(config, **options):
    if config.precision == "bf16":
        os.kill(os.getpid(), signal.SIGILL)
    return real(config, **options)
tracker.runs.session.measure = measure
from tracker.execution.child import serve
sys.exit(serve())
"""


def test_a_precision_whose_process_dies_fails_alone_and_the_search_goes_on(cli, client, hermetic, monkeypatch):
    """bf16 trials' process really dies by SIGILL, as bf16 does on CPUs that advertise AMX in a VM
    that forbids it; those trials are FAILED with the signal's name, bf16 is given up after two,
    and fp32 is searched and reported best."""
    import tracker.execution.child

    monkeypatch.setattr(tracker.execution.child, "serve_command", lambda: [sys.executable, "-c", DIES_ON_BF16])
    storage = f"sqlite:///{hermetic}/optuna.db"
    code, out, err = cli("tune", *BASE, "--n-trials", "8", "--max-batch-size", "2", "--precisions", "bf16,fp32",
                         "--storage", storage)
    assert code == 0, err
    study = _optuna_trials(storage)
    bf16 = [t for t in study.trials if t.params["precision"] == "bf16"]
    assert [t.state.name for t in bf16] == ["FAIL", "FAIL"]
    assert all("SIGILL" in t.user_attrs["fail_reason"] for t in bf16)
    fp32 = [t for t in study.trials if t.params["precision"] == "fp32" and t.state.name == "COMPLETE"]
    assert fp32 and "'precision': 'fp32'" in out
    failed = [r for r in _trial_runs(client) if r.info.status == "FAILED"]
    assert len(failed) == 2  # its process died with the run open, or before it: one FAILED run each, with why
    assert all("SIGILL" in r.data.tags["tracker.error"] for r in failed)


def test_structured_search_shares_model_loads_and_searches_the_knobs_asked_for(cli, client, hermetic, monkeypatch):
    import tracker.tuning.config

    monkeypatch.setattr(tracker.tuning.config, "default_threads", lambda: 2)  # as on 2 cores (the tests set 1)
    storage = f"sqlite:///{hermetic}/optuna.db"
    code, out, err = cli("tune", *BASE, "--n-trials", "10", "--max-batch-size", "4", "--precisions", "fp32,int8",
                         "--knobs", "batch_size,precision,threads,sort_by_length", "--storage", storage)
    assert code == 0, err
    study = _optuna_trials(storage)
    measured = [t for t in study.trials if t.state.name in ("COMPLETE", "FAIL")]
    first = study.trials[0]
    assert first.params["batch_size"] == 4 and first.params["precision"] == "fp32"  # largest batch, first given
    assert first.user_attrs["strategy_role"] == "probe"
    assert {t.user_attrs["strategy_role"] for t in measured} >= {"probe", "knob"}
    assert {t.params["sort_by_length"] for t in measured} == {False, True}
    assert {t.params["threads"] for t in measured} >= {1}
    runs = {r.data.tags["tracker.tune.trial"]: r for r in _trial_runs(client)}
    for trial in measured:
        run = runs[str(trial.number)]
        assert run.data.params["threads"] == str(trial.params["threads"])  # applied, as torch reports it
        assert run.data.params.get("sort_by_length", "False") == str(trial.params["sort_by_length"])
    # settings of one precision are measured in one process: its first run measures the load, the
    # others say they shared it and have no load figures that would look real
    shared = [r for r in runs.values() if "tracker.load.shared" in r.data.tags]
    loaded = [r for r in runs.values() if "tracker.load.shared" not in r.data.tags]
    assert shared and all("load_energy_kwh" not in r.data.metrics for r in shared)
    assert all(r.data.metrics["load_energy_kwh"] > 0 for r in loaded)
    [parent] = [r for r in all_runs(client) if r.data.tags.get("tracker.tune.role") == "parent"]
    assert parent.data.params["strategy"] == "structured"
    assert parent.data.params["knobs"] == "batch_size,precision,threads,sort_by_length"
    assert {"tracker.tune.best.threads", "tracker.tune.best.sort_by_length"} <= set(parent.data.tags)
    [baseline] = [r for r in all_runs(client) if r.data.tags.get("tracker.tune.role") == "baseline"
                  and "tracker.tune.baseline" not in r.data.tags]
    if baseline.data.tags["tracker.energy.cpu.method"].startswith("modelled"):  # no RAPL: say what threads' gain may be
        assert "load curve" in parent.data.tags["tracker.tune.threads_note"]
    assert "carbon_reduction_x" in out


def _tune_command(storage, *extra):
    return [sys.executable, "-m", "tracker", "tune", *BASE, "--storage", storage, *extra]


def _wait_for_running_trial(storage, deadline_s=120):
    import optuna

    deadline = time.time() + deadline_s
    while time.time() < deadline:
        try:
            study = _optuna_trials(storage)
            running = [t for t in study.trials if t.state.name == "RUNNING"]
            if running:
                return running[0]
        except (KeyError, IndexError, optuna.exceptions.StorageInternalError, Exception):
            pass
        time.sleep(0.5)
    raise AssertionError("no trial started")


def _wait_for_trial_run(client, number, deadline_s=180):
    """The trial's run once its heartbeat shows it inside its query phase (TRACKER_HEARTBEAT_S small)."""
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        runs = [r for r in all_runs(client) if r.data.tags.get("tracker.tune.trial") == str(number)
                and r.data.metrics.get("partial_inferences", 0) > 0]
        if runs:
            return runs[0].info.run_id
        time.sleep(0.5)
    raise AssertionError(f"trial {number} never reached its query phase")


def _wait_for_run_to_end(client, run_id, deadline_s):
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        if client.get_run(run_id).info.status != "RUNNING":
            return
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} still RUNNING after {deadline_s} s")


def test_a_killed_worker_is_resumed_and_its_trial_retried(client, hermetic):
    storage = f"sqlite:///{hermetic}/optuna.db"
    # One setting (batch 1, fp32) long enough to be killed mid-measurement: 3 windows of 60 tiny
    # summaries (about 12 s each here); the resumed worker measures the killed trial again, in full.
    settings = ("--task", "summarization", "--n-samples", "60", "--n-trials", "3", "--max-batch-size", "1",
                "--precisions", "fp32", "--heartbeat-s", "1", "--study-name", "resumable")
    with contextlib.ExitStack() as stack:  # whatever fails, no worker or child of this test outlives it
        worker = stack.enter_context(started(_tune_command(storage, *settings),
                                             subprocess_env(TRACKER_HEARTBEAT_S="0.5"), stdout=subprocess.DEVNULL))
        killed = _wait_for_running_trial(storage, deadline_s=300)
        orphan = _wait_for_trial_run(client, killed.number)
        os.kill(worker.pid, signal.SIGKILL)  # the worker alone, as the OOM killer would
        killed_at = time.monotonic()
        # wait() not communicate(): the orphaned child still holds the pipes while it ends its run
        worker.wait(timeout=30)
        _wait_for_run_to_end(client, orphan, deadline_s=180)
        # Optuna fails a trial whose heartbeat is older than its grace period (3 heartbeats of 1 s)
        grace_left = 4 - (time.monotonic() - killed_at)
        if grace_left > 0:
            time.sleep(grace_left)
        again = stack.enter_context(started(_tune_command(storage, *settings)))
        out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    study = _optuna_trials(storage, "resumable")
    states = {t.number: t.state.name for t in study.trials}
    assert states[killed.number] == "FAIL"  # failed through the heartbeat
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    # (the snapshot taken while it ran may predate its params; the study's record has them)
    assert retried and retried[0].params == study.trials[killed.number].params == {
        "batch_size": 1, "precision": "fp32"}
    runs = all_runs(client)
    assert len([r for r in runs if r.data.tags.get("tracker.tune.role") == "parent"]) == 1
    assert len([r for r in runs if r.data.tags.get("tracker.tune.role") == "baseline"]) == 1
    assert not [r for r in runs if r.info.status == "RUNNING"]
    # the killed worker's child got SIGTERM when its parent died: its run ended with partial energy
    assert client.get_run(orphan).info.status in ("KILLED", "FAILED")


def test_a_second_worker_on_sqlite_is_refused(cli, hermetic):
    from tracker.tuning.storage import single_sqlite_worker

    storage = f"sqlite:///{hermetic}/optuna.db"
    with single_sqlite_worker(storage):
        code, _, err = cli("tune", *BASE, "--storage", storage)
    assert code == 2
    [line] = [line for line in err.splitlines() if line.startswith("tracker: error:")]
    assert "another tune worker" in line and "postgresql://" in line


@pytest.mark.skipif(not os.environ.get("TRACKER_TEST_POSTGRES_URL"),
                    reason="set TRACKER_TEST_POSTGRES_URL (.ci/run starts a PostgreSQL server)")
def test_two_workers_share_one_study_on_postgresql(hermetic):
    import optuna

    url = os.environ["TRACKER_TEST_POSTGRES_URL"]
    name = f"shared-{os.getpid()}-{int(time.time())}"
    with mlflow_server(hermetic) as uri:
        env = subprocess_env(MLFLOW_TRACKING_URI=uri)
        settings = ("--n-trials", "6", "--max-batch-size", "8", "--precisions", "fp32,int8",
                    "--study-name", name)
        with contextlib.ExitStack() as stack:  # whatever fails, no worker outlives the test
            workers = [stack.enter_context(started(_tune_command(url, *settings), env)) for _ in range(2)]
            outputs = [w.communicate(timeout=500) for w in workers]
        for worker, (out, err) in zip(workers, outputs):
            assert worker.returncode == 0, err[-3000:]
        study = optuna.load_study(study_name=name, storage=url)
        numbers = [t.number for t in study.trials]
        # the structured strategy may end before --n-trials: it stops when nothing is left to learn
        assert len(numbers) >= 2 and len(set(numbers)) == len(numbers)
        finished = [t for t in study.trials if t.state.name in ("COMPLETE", "FAIL", "PRUNED")]
        assert len(finished) == len(study.trials)
        from mlflow import MlflowClient

        remote = MlflowClient(tracking_uri=uri)
        runs = [r for r in all_runs(remote) if r.data.tags.get("tracker.tune.study") == name]
        [parent] = [r for r in runs if r.data.tags["tracker.tune.role"] == "parent"]
        baselines = [r for r in runs if r.data.tags["tracker.tune.role"] == "baseline"]
        # one first baseline; a worker measures it again after every 4 of its own trials
        assert len([r for r in baselines if "tracker.tune.baseline" not in r.data.tags]) == 1
        trial_runs = [r for r in runs if r.data.tags["tracker.tune.role"] == "trial"
                      and r.data.tags.get("tracker.tune.state") != "REMEASURED"]
        measured = [t for t in study.trials if t.state.name in ("COMPLETE", "FAIL")]
        # every measured trial recorded exactly once, all under the one parent
        assert sorted(int(r.data.tags["tracker.tune.trial"]) for r in trial_runs) == sorted(t.number for t in measured)
        assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {parent.info.run_id}


def _study_with(trials, baselines):
    """An in-memory study holding finished trials (settings, carbon windows) and baseline measurements."""
    import optuna

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    study.set_user_attr("higher_is_better", True)
    for i, (bs, precision, windows) in enumerate(trials):
        spread = Spread.of(windows)
        study.add_trial(optuna.trial.create_trial(
            params={"batch_size": bs, "precision": precision}, value=spread.mean,
            distributions={"batch_size": optuna.distributions.CategoricalDistribution([1, 2, 4, 8, 16, 32, 64]),
                           "precision": optuna.distributions.CategoricalDistribution(["fp32", "int8"])},
            user_attrs={"constraint": [-0.1], "quality": 0.8,
                        "carbon": {"mean": spread.mean, "std": spread.std, "n": spread.n}}))
    for i, (windows, contended) in enumerate(baselines):
        spread = Spread.of(windows)
        study.set_user_attr(f"baseline:run{i}", {"mean": spread.mean, "std": spread.std, "n": spread.n,
                                                  "contended": contended, "run_id": f"run{i}"})
    return study


def test_a_tie_is_declared_only_when_the_intervals_overlap():
    from tracker.tuning.results import _tie, best_trials

    close = _study_with([(64, "int8", [1.00, 1.02, 0.98]), (32, "int8", [1.01, 1.04, 1.00]),
                         (1, "fp32", [9.0, 9.1, 8.9])], [])
    [best] = best_trials(close)
    assert best.params == {"batch_size": 64, "precision": "int8"}
    tie = _tie(close, best)
    assert "batch 64, int8" in tie and "batch 32, int8" in tie and "overlap" in tie
    apart = _study_with([(64, "int8", [1.00, 1.01, 0.99]), (32, "int8", [2.00, 2.01, 1.99])], [])
    assert _tie(apart, best_trials(apart)[0]) is None


def test_the_baseline_pools_its_quiet_measurements_and_the_ratio_has_an_interval():
    from tracker.measurement.stats import ratio_interval
    from tracker.tuning.baseline import baseline_spread

    study = _study_with([], [([10.0, 10.2, 9.8], False), ([11.0, 11.2, 10.8], False), ([30.0, 31.0, 29.0], True)])
    baseline = baseline_spread(study)
    assert baseline.n == 6 and baseline.mean == pytest.approx(10.5)  # the contended one is left out
    ratio, low, high = ratio_interval(baseline, Spread.of([1.0, 1.05, 0.95]))
    assert ratio == pytest.approx(10.5) and low < 10.5 < high
    all_contended = _study_with([], [([30.0, 31.0, 29.0], True)])
    assert baseline_spread(all_contended).mean == pytest.approx(30.0)  # all there is, and it says so
