"""Search batch size and precision for the lowest carbon per output that keeps quality (Optuna).

Layout of a search, in MLflow and Optuna:

- one Optuna study per search (name and storage given, or derived), one MLflow *parent* run for
  it, in the task's experiment;
- a *baseline* run at the paper's protocol (batch 1, fp32): its quality is the reference of the
  constraint, its carbon per output the denominator of ``carbon_reduction_x``; measured first by
  the worker that creates the study, then again by every worker after each ``baseline_every`` of
  its trials, so that the comparison spans the same drift in the machine's load as the trials;
  each measurement is stored on the study;
- one nested MLflow run per trial, measured in a child process (``tracker run``), so a trial that
  kills its process (SIGILL, a segfault, the OOM killer) is recorded FAILED with the signal's name
  while the search goes on.

Every measurement has at least ``MIN_WINDOWS`` query windows, so each carbon figure has a spread;
a trial whose windows were contended (other processes busy on the machine) is measured again.
``carbon_reduction_x`` comes with a 95% interval from the baseline's and the best trial's windows,
and when the best and the runner-up's intervals overlap the search says it is a tie.

A trial is feasible when its quality is at least reference x (1 - max_quality_drop) (at most
reference x (1 + drop) for lower-is-better metrics such as WER). Infeasible trials stay in the
study, marked, and are never reported as best. Settings already measured are not measured again
(the trial is pruned as a duplicate, pointing at the first, and does not count towards
``n_trials``) unless repeats are asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tracker.child import measure_in_child
from tracker.config import RunConfig
from tracker.errors import ConfigError, RunInterrupted, TrackerError
from tracker.pareto import pareto_front
from tracker.signals import interrupts_raise
from tracker.stats import Spread, pooled, ratio_interval

logger = logging.getLogger(__name__)

Objective = Literal["carbon", "pareto"]
OBJECTIVE_METRIC = "emissions_g_per_output"
DEFAULT_STORAGE = "sqlite:///optuna.db"
BASELINE_WAIT_S = 3600  # how long a second worker waits for the first to measure the baseline
MAX_PROPOSALS_PER_TRIAL = 10  # a bound on proposals when the sampler keeps repeating settings
MIN_WINDOWS = 3  # query windows per measurement: enough for a spread and a 95% interval
BASELINE_ATTR = "baseline:"  # study user attrs "baseline:<run id>": one per baseline measurement


class TrialFailed(TrackerError):
    """A trial's run did not finish; the reason is on the trial and its MLflow run."""


@dataclass(frozen=True, kw_only=True)
class TuneConfig:
    run: RunConfig  # what every trial measures; batch_size and precision are the search's
    n_trials: int = 20
    max_batch_size: int = 64
    precisions: tuple[str, ...] = ()  # empty: every precision that can apply to the device
    max_quality_drop: float = 0.01
    objective: Objective = "carbon"
    study_name: str | None = None
    storage: str = DEFAULT_STORAGE
    min_window_s: float = 3.0
    heartbeat_s: int = 30
    seed: int | None = None
    baseline_every: int = 4  # each worker measures the baseline again after this many trials

    def __post_init__(self) -> None:
        if self.n_trials < 1:
            raise ConfigError(f"--n-trials must be a positive whole number, got {self.n_trials}")
        if self.baseline_every < 1:
            raise ConfigError(f"--baseline-every must be a positive whole number, got {self.baseline_every}")
        if self.max_batch_size < 1:
            raise ConfigError(f"--max-batch-size must be a positive whole number, got {self.max_batch_size}")
        if not 0 <= self.max_quality_drop < 1:
            raise ConfigError(f"--max-quality-drop must be in [0, 1), got {self.max_quality_drop:g}")
        if self.objective not in ("carbon", "pareto"):
            raise ConfigError(f"unknown objective '{self.objective}': use carbon or pareto")
        if not self.storage.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg2://", "mysql")):
            raise ConfigError(f"--storage '{self.storage}' is not a database URL: use "
                              "sqlite:///FILE (one worker) or postgresql://USER:PASS@HOST/DB (several)")

    @property
    def name(self) -> str:
        if self.study_name:
            return self.study_name
        run = self.run
        model = (run.model or "default").rstrip("/").split("/")[-1]
        return f"tune-{run.task}-{model}-{run.dataset or 'default'}-{run.n_samples}"

    def batch_sizes(self) -> list[int]:
        """Powers of two up to the maximum."""
        return [2 ** i for i in range(int(math.log2(self.max_batch_size)) + 1)]

    def search_precisions(self, device: str) -> list[str]:
        from tracker.precision import PRECISIONS

        if self.precisions:
            return list(self.precisions)
        return [p for p in PRECISIONS if not (p == "int8" and device != "cpu")]


def feasibility(quality: float, reference: float, max_drop: float, higher_is_better: bool) -> float:
    """Optuna's constraint value: <= 0 when the quality is good enough, > 0 by how much it is not.

    A quality that could not be computed (NaN) is infeasible: it cannot be shown to keep quality.
    """
    if math.isnan(quality) or math.isnan(reference):
        return math.inf
    if higher_is_better:
        return reference * (1 - max_drop) - quality
    return quality - reference * (1 + max_drop)


def tune(config: TuneConfig) -> dict[str, Any]:
    """Run (or continue) the search; returns the summary also logged on the parent run."""
    import optuna
    from mlflow import MlflowClient

    from tracker.session import resolve_device
    from tracker.tasks import get_task
    from tracker.tracking import check_tracking_server

    check_tracking_server()
    task = get_task(config.run.task)
    device = resolve_device(config.run.device)
    client = MlflowClient()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # SIGTERM as well as Ctrl-C unwinds through here, so the parent run always ends.
    with interrupts_raise(), _single_sqlite_worker(config.storage):
        storage = _open_storage(config)
        study, created = _create_or_load(config, storage, task.higher_is_better)
        if not created and _baseline_failed(client, study):
            # A study whose baseline failed has nothing to compare with: begin it again.
            logger.info("study %s: its baseline failed earlier; measuring it again", study.study_name)
            optuna.delete_study(study_name=study.study_name, storage=storage)
            study, created = _create_or_load(config, storage, task.higher_is_better)
        if created:
            try:
                _start_search(client, config, study, task, device)
            except (KeyboardInterrupt, RunInterrupted) as err:
                parent = study.user_attrs.get("parent_run_id")
                if parent:  # the next tune on this study sees a KILLED parent and begins again
                    client.set_tag(parent, "tracker.interrupted_by", getattr(err, "signal_name", "SIGINT"))
                    client.set_terminated(parent, "KILLED")
                raise
        study = _wait_for_baseline(study)
        parent_id = study.user_attrs["parent_run_id"]
        client.update_run(parent_id, status="RUNNING")  # again, when a study is resumed
        objective = _Objective(client, config, study, parent_id, device)
        space = len(objective.batch_sizes) * len(objective.precisions)
        status = "FINISHED"
        try:
            study.optimize(objective, n_trials=MAX_PROPOSALS_PER_TRIAL * config.n_trials,
                           callbacks=[_StopWhenDone(config.n_trials, space)], catch=(TrialFailed,))
        except (KeyboardInterrupt, RunInterrupted) as err:
            status = "KILLED"
            client.set_tag(parent_id, "tracker.interrupted_by", getattr(err, "signal_name", "SIGINT"))
            raise
        except BaseException as err:
            status = "FAILED"
            client.set_tag(parent_id, "tracker.error", (str(err).splitlines() or [type(err).__name__])[0][:5000])
            raise
        finally:
            summary = summarize(client, study, parent_id)
            client.set_terminated(parent_id, status)
    return summary


class _StopWhenDone:
    """Stops every worker once the study has ``n_trials`` measured trials (finished or failed), or
    every setting of the space has finished. Duplicates, pruned without measuring, do not count;
    a worker also stops after MAX_PROPOSALS_PER_TRIAL x n_trials proposals of its own."""

    def __init__(self, n_trials: int, space: int) -> None:
        self.n_trials, self.space = n_trials, space

    def __call__(self, study: Any, trial: Any) -> None:
        import optuna

        states = optuna.trial.TrialState
        measured = study.get_trials(deepcopy=False, states=(states.COMPLETE, states.FAIL))
        finished = {tuple(sorted(t.params.items())) for t in measured if t.state == states.COMPLETE}
        if len(measured) >= self.n_trials or len(finished) >= self.space:
            study.stop()


def _single_sqlite_worker(storage: str) -> contextlib.AbstractContextManager:
    """Hold a lock on a SQLite study file: a second worker gets a clear refusal, not lock errors."""
    if not storage.startswith("sqlite:///"):
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def locked() -> Iterator[None]:
        path = Path(storage.removeprefix("sqlite:///") + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(
                    f"another tune worker is using {storage}: SQLite takes one worker; for several, "
                    "share a PostgreSQL study: --storage postgresql://USER:PASS@HOST/DB") from None
            yield

    return locked()


def _open_storage(config: TuneConfig, attempts: int = 5) -> Any:
    """The study database, with heartbeats. Workers starting together on a new database race to
    create Optuna's tables; the loser retries and finds them made."""
    import optuna
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental; we rely on them
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    config.storage, heartbeat_interval=config.heartbeat_s,
                    grace_period=3 * config.heartbeat_s,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
        except ImportError as err:
            raise ConfigError(f"no database driver for {_safe_url(config.storage)}: "
                              "pip install -e \".[postgres]\"") from err
        except sqlalchemy.exc.OperationalError as err:
            if "could not connect" in str(err) or "Connection refused" in str(err):
                raise ConfigError(f"cannot reach the study database {_safe_url(config.storage)}: "
                                  f"{str(err.orig).splitlines()[0]}") from err
            if attempt == attempts - 1:
                raise
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
        time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def _create_or_load(config: TuneConfig, storage: Any, higher_is_better: bool) -> tuple[Any, bool]:
    import optuna

    directions = (["minimize"] if config.objective == "carbon"
                  else ["minimize", "maximize" if higher_is_better else "minimize"])
    sampler = _sampler(config)
    try:
        study = optuna.create_study(study_name=config.name, storage=storage, sampler=sampler,
                                    directions=directions)
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=config.name, storage=storage, sampler=sampler)
        if len(study.directions) != len(directions):
            raise ConfigError(f"study '{config.name}' exists with objective "
                              f"{'pareto' if len(study.directions) == 2 else 'carbon'}; pass that "
                              "--objective or another --study-name") from None
        return study, False


def _sampler(config: TuneConfig) -> Any:
    """TPE (NSGA-II for pareto); both read the constraint each trial sets (Trial.set_constraint)."""
    import optuna

    if config.objective == "pareto":
        return optuna.samplers.NSGAIISampler(seed=config.seed)
    return optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=min(5, config.n_trials))


def _start_search(client: Any, config: TuneConfig, study: Any, task: Any, device: str) -> None:
    """The creating worker: the parent run, the search space, then the baseline on the study."""
    from tracker.tracking import experiment_id

    run = config.run
    tags = {"tracker.tune.study": study.study_name, "tracker.tune.role": "parent",
            "tracker.tune.storage": _safe_url(config.storage),
            "mlflow.note.content": (f"Search of batch size x precision for the lowest {OBJECTIVE_METRIC} "
                                    f"keeping {task.primary_metric} within {config.max_quality_drop:.1%} "
                                    "of the fp32 reference; trials are nested below.")}
    launcher = os.environ.get("MLFLOW_RUN_ID")  # set under `mlflow run -e tune`
    if launcher:
        tags["tracker.launcher_run_id"] = launcher
    parent = client.create_run(experiment_id(client, run.experiment_name),
                               run_name=f"tune · {study.study_name}", tags=tags)
    parent_id = parent.info.run_id
    if launcher:
        client.set_tag(launcher, "mlflow.note.content", f"Launcher of `mlflow run -e tune`: the search's "
                       f"parent run is {parent_id} in experiment {parent.info.experiment_id}.")
        client.set_tag(launcher, "tracker.tune.parent_run_id", parent_id)
    from mlflow.entities import Param

    params = {"task": run.task, "model": run.model or "default", "dataset": run.dataset or "default",
              "n_samples": run.n_samples, "device": device, "objective": config.objective,
              "max_quality_drop": config.max_quality_drop, "n_trials": config.n_trials,
              "batch_sizes": ",".join(map(str, config.batch_sizes())),
              "precisions": ",".join(config.search_precisions(device)), "study_name": study.study_name}
    client.log_batch(parent_id, params=[Param(k, str(v)) for k, v in params.items()])
    study.set_user_attr("parent_run_id", parent_id)
    study.set_user_attr("quality_metric", task.primary_metric)
    study.set_user_attr("higher_is_better", task.higher_is_better)

    # The paper's protocol: quality reference and carbon baseline in one measurement.
    result = measure_in_child(client, baseline_config(run), {
        "tracker.tune.study": study.study_name, "tracker.tune.role": "baseline",
        "mlflow.parentRunId": parent_id})
    if result.status != "FINISHED":
        client.set_tag(parent_id, "tracker.error", f"baseline (batch 1, fp32) failed: {result.reason}")
        client.set_terminated(parent_id, "FAILED")
        raise TrackerError(f"the baseline run (batch 1, fp32) of study '{study.study_name}' failed, so there is "
                           f"no quality to keep: {result.reason}. The same command measures it again")
    metrics = result.run.data.metrics
    _record_baseline(study, result.run)
    study.set_user_attr("baseline_run_id", result.run.info.run_id)
    study.set_user_attr("baseline_duration_s", metrics["duration_s"])
    # Set last: other workers wait for it.
    study.set_user_attr("reference_quality", metrics.get("quality", math.nan))


def baseline_config(run: RunConfig) -> RunConfig:
    """The paper's protocol (batch 1, fp32), measured in at least MIN_WINDOWS windows."""
    return dataclasses.replace(run, batch_size=1, precision="fp32", repeats=max(run.repeats, MIN_WINDOWS),
                               progress=False)


def carbon_spread(run: Any) -> dict[str, Any]:
    """A measurement's carbon per output over its windows, as stored on the study."""
    m = run.data.metrics
    return {"mean": m[OBJECTIVE_METRIC], "std": m.get(f"{OBJECTIVE_METRIC}_std", math.nan),
            "n": int(m.get("windows", 1)), "contended": run.data.tags.get("tracker.measurement.contended") == "true",
            "run_id": run.info.run_id}


def _record_baseline(study: Any, run: Any) -> None:
    study.set_user_attr(BASELINE_ATTR + run.info.run_id, carbon_spread(run))


def baseline_spread(study: Any) -> Spread:
    """Every baseline measurement's windows together; contended ones only when all were."""
    measured = [v for k, v in study.user_attrs.items() if k.startswith(BASELINE_ATTR)]
    if not measured and "baseline_emissions_g_per_output" in study.user_attrs:  # a study from before
        return Spread(float(study.user_attrs["baseline_emissions_g_per_output"]), math.nan, 1)
    quiet = [v for v in measured if not v.get("contended")] or measured
    return pooled([_stored_spread(v) for v in quiet])


def _stored_spread(stored: dict[str, Any] | None) -> Spread:
    """A spread as ``carbon_spread`` stored it on the study (empty: no measurement)."""
    stored = stored or {}
    return Spread(stored.get("mean", math.nan), stored.get("std", math.nan), stored.get("n", 0))


def _baseline_failed(client: Any, study: Any) -> bool:
    """The study's creator ended its parent run without storing a baseline: it failed or died."""
    attrs = study.user_attrs
    if "reference_quality" in attrs:
        return False
    if "parent_run_id" not in attrs:
        return False  # the creating worker has only just begun
    try:
        status = client.get_run(attrs["parent_run_id"]).info.status
    except Exception:  # the parent run is gone (another store, deleted): nothing to wait for
        return True
    return status in ("FAILED", "KILLED")


def _wait_for_baseline(study: Any) -> Any:
    """The study once its baseline is stored (at once for the worker that measured it)."""
    import optuna

    waited = 0.0
    while "reference_quality" not in study.user_attrs:
        if waited == 0:
            logger.info("waiting for the worker that created study %s to measure the baseline",
                        study.study_name)
        if waited > BASELINE_WAIT_S:
            raise TrackerError(f"study '{study.study_name}' has no baseline after {BASELINE_WAIT_S} s; "
                               "the worker that created it may have died: start again with a new --study-name")
        time.sleep(2)
        waited += 2
        try:
            study = optuna.load_study(study_name=study.study_name, storage=study._storage)
        except KeyError:
            raise TrackerError(f"study '{study.study_name}' was begun again after its baseline failed; start "
                               "this worker again to join it") from None
    return study


class _Objective:
    """Measures one trial's settings in a child process and scores it; every ``baseline_every``
    trials of this worker, measures the baseline again."""

    def __init__(self, client: Any, config: TuneConfig, study: Any, parent_id: str, device: str) -> None:
        attrs = study.user_attrs
        self.client, self.config, self.parent_id = client, config, parent_id
        self.reference = float(attrs["reference_quality"])
        self.higher_is_better = bool(attrs["higher_is_better"])
        self.batch_sizes = config.batch_sizes()
        self.precisions = config.search_precisions(device)
        # Short windows are noisy: repeat the query phase until the baseline would fill the window.
        baseline_s = float(attrs.get("baseline_duration_s") or config.min_window_s)
        self.repeats = max(config.run.repeats, MIN_WINDOWS, math.ceil(config.min_window_s / max(baseline_s, 1e-3)))
        self.measured = 0

    def __call__(self, trial: Any) -> float | tuple[float, float]:
        import optuna

        batch_size = trial.suggest_categorical("batch_size", self.batch_sizes)
        precision = trial.suggest_categorical("precision", self.precisions)
        tags = {"tracker.tune.study": trial.study.study_name, "tracker.tune.role": "trial",
                "tracker.tune.trial": str(trial.number), "mlflow.parentRunId": self.parent_id}
        earlier = _measured_before(trial)
        if earlier is not None and self.config.run.repeats == 1:
            trial.set_user_attr("duplicate_of", earlier.number)
            trial.set_user_attr("constraint", earlier.user_attrs.get("constraint", [math.inf]))
            raise optuna.TrialPruned(f"batch {batch_size}, {precision} already measured by trial {earlier.number}")
        config = dataclasses.replace(self.config.run, batch_size=batch_size, precision=precision,
                                     repeats=self.repeats, progress=False)
        try:
            result = self._measure(config, tags)
        finally:
            self.measured += 1
            if self.measured % self.config.baseline_every == 0:
                self._remeasure_baseline(trial.study)
        if result.status != "FINISHED":
            run_id = result.run.info.run_id
            self.client.set_tag(run_id, "tracker.tune.state", "FAIL")
            trial.set_user_attr("run_id", run_id)
            trial.set_user_attr("fail_reason", result.reason)
            trial.set_user_attr("constraint", [math.inf])
            raise TrialFailed(f"trial {trial.number} (batch {batch_size}, {precision}): {result.reason}")
        metrics = result.run.data.metrics
        carbon, quality = metrics[OBJECTIVE_METRIC], metrics.get("quality", math.nan)
        constraint = feasibility(quality, self.reference, self.config.max_quality_drop, self.higher_is_better)
        trial.set_user_attr("run_id", result.run.info.run_id)
        trial.set_user_attr("quality", quality)
        trial.set_user_attr("energy_kwh_per_1k", metrics.get("energy_kwh_per_1k", math.nan))
        trial.set_user_attr("carbon", carbon_spread(result.run))
        trial.set_user_attr("constraint", [constraint])
        # The sampler's view; a quality that could not be computed counts as far off.
        trial.set_constraint("quality", constraint if math.isfinite(constraint) else 1e12)
        self.client.set_tag(result.run.info.run_id, "tracker.tune.state",
                            "COMPLETE" if constraint <= 0 else "INFEASIBLE")
        if self.config.objective == "pareto":
            return carbon, (quality if not math.isnan(quality) else -math.inf if self.higher_is_better else math.inf)
        return carbon

    def _measure(self, config: RunConfig, tags: dict[str, str]) -> Any:
        """One measurement; measured once more when other work contended it, keeping the quieter."""
        result = measure_in_child(self.client, config, tags)
        if result.status != "FINISHED" or result.run.data.tags.get("tracker.measurement.contended") != "true":
            return result
        logger.info("trial measurement %s was contended (%s); measuring it again", result.run.info.run_id,
                    result.run.data.tags.get("tracker.measurement.contended_reason", ""))
        again = measure_in_child(self.client, config, tags)
        if again.status != "FINISHED":
            return result
        share = lambda r: r.run.data.metrics.get("background_cpu_share", math.inf)  # noqa: E731
        kept, dropped = (again, result) if share(again) <= share(result) else (result, again)
        self.client.set_tag(dropped.run.info.run_id, "tracker.tune.state", "REMEASURED")
        self.client.set_tag(dropped.run.info.run_id, "tracker.tune.remeasured_by", kept.run.info.run_id)
        return kept

    def _remeasure_baseline(self, study: Any) -> None:
        """The baseline again, between trials, so that it drifts with them; a failure is logged
        and leaves the earlier measurements in use."""
        result = measure_in_child(self.client, baseline_config(self.config.run), {
            "tracker.tune.study": study.study_name, "tracker.tune.role": "baseline",
            "tracker.tune.baseline": "remeasured", "mlflow.parentRunId": self.parent_id})
        if result.status == "FINISHED":
            _record_baseline(study, result.run)
        else:
            logger.warning("the baseline measured again failed (%s); the earlier ones stay in use", result.reason)


def _measured_before(trial: Any) -> Any:
    """A finished earlier trial with the same params, if any."""
    import optuna

    for other in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if other.number != trial.number and other.params == trial.params:
            return other
    return None


def feasible_trials(study: Any) -> list[Any]:
    import optuna

    return [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("constraint", [math.inf])[0] <= 0]


def best_trials(study: Any) -> list[Any]:
    """The lowest carbon per output among feasible trials; the feasible Pareto front for pareto."""
    feasible = feasible_trials(study)
    if not feasible:
        return []
    if len(study.directions) == 1:
        return [min(feasible, key=lambda t: t.values[0])]
    return _front(feasible, study)


def _front(trials: list[Any], study: Any) -> list[Any]:
    """Trials no other trial beats on both carbon and quality (the pareto objective's two values)."""
    return pareto_front(trials, cost=lambda t: t.values[0], quality=lambda t: t.values[1],
                        higher_is_better=bool(study.user_attrs.get("higher_is_better", True)))


def summarize(client: Any, study: Any, parent_id: str) -> dict[str, Any]:
    """Best settings, baseline and carbon_reduction_x, a trials table and plots, on the parent run."""
    from mlflow.entities import Metric

    _close_orphans(client, study, parent_id)
    attrs = study.user_attrs
    best = best_trials(study)
    baseline = baseline_spread(study)
    summary: dict[str, Any] = {"study": study.study_name, "trials": len(study.trials),
                               "baseline_emissions_g_per_output": baseline.mean,
                               "baseline_measurements": len([k for k in attrs if k.startswith(BASELINE_ATTR)]),
                               "reference_quality": attrs.get("reference_quality", math.nan)}
    now = int(time.time() * 1000)
    metrics = {"baseline_emissions_g_per_output": baseline.mean,
               "baseline_measurements": float(summary["baseline_measurements"]),
               "reference_quality": float(attrs.get("reference_quality", math.nan)),
               "trials_total": float(len(study.trials)),
               "trials_feasible": float(len(feasible_trials(study)))}
    tags = {}
    if best:
        top = best[0]
        carbon = top.values[0]
        top_spread = _stored_spread(top.user_attrs.get("carbon"))
        ratio, low, high = ratio_interval(baseline, top_spread if top_spread.n else Spread(carbon, math.nan, 1))
        summary.update(best_params=top.params, best_trial=top.number, best_emissions_g_per_output=carbon,
                       best_quality=top.user_attrs.get("quality"), carbon_reduction_x=ratio,
                       carbon_reduction_x_ci95=(low, high),
                       pareto=[{"trial": t.number, **t.params, "emissions_g_per_output": t.values[0],
                                "quality": t.user_attrs.get("quality")} for t in best])
        metrics.update(best_emissions_g_per_output=carbon, best_quality=float(top.user_attrs.get("quality", math.nan)),
                       best_batch_size=float(top.params["batch_size"]), carbon_reduction_x=ratio,
                       carbon_reduction_x_ci95_low=low, carbon_reduction_x_ci95_high=high)
        tags = {"tracker.tune.best.batch_size": str(top.params["batch_size"]),
                "tracker.tune.best.precision": top.params["precision"],
                "tracker.tune.best.trial": str(top.number),
                "tracker.tune.best.run_id": top.user_attrs.get("run_id", "")}
        tie = _tie(study, top) if len(study.directions) == 1 else None
        if tie:
            summary["tie"] = tie
            tags["tracker.tune.best.tie"] = tie
    else:
        tags = {"tracker.tune.best": "none: no feasible trial yet"}
    client.log_batch(parent_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                     tags=[_tag(k, v) for k, v in tags.items()])
    client.log_text(parent_id, trials_table(study), "trials.csv")
    _log_plots(client, study, parent_id)
    return summary


def _tie(study: Any, best: Any) -> str | None:
    """The runner-up, in words, when its 95% interval overlaps the best's: within the measured
    spread, so the search cannot tell them apart."""
    others = [t for t in feasible_trials(study) if t.params != best.params and t.values]
    if not others:
        return None
    runner = min(others, key=lambda t: t.values[0])
    a, b = _stored_spread(best.user_attrs.get("carbon")), _stored_spread(runner.user_attrs.get("carbon"))
    if not a.overlaps(b):
        return None
    (a_low, a_high), (b_low, b_high) = a.ci95, b.ci95
    return (f"batch {best.params['batch_size']}, {best.params['precision']} (trial {best.number}) and batch "
            f"{runner.params['batch_size']}, {runner.params['precision']} (trial {runner.number}) are within the "
            f"measured spread: 95% intervals {a_low:.3g} to {a_high:.3g} and {b_low:.3g} to {b_high:.3g} "
            f"gCO2eq per output overlap")


def _close_orphans(client: Any, study: Any, parent_id: str) -> None:
    """Runs of trials whose worker died with them (killed with its whole process group): the
    trial was failed through the heartbeat; its run is closed FAILED, not left RUNNING."""
    failed = {str(t.number) for t in study.trials if t.state.name == "FAIL"}
    experiment_id = client.get_run(parent_id).info.experiment_id
    for run in client.search_runs([experiment_id], filter_string=(
            f"tags.`tracker.tune.study` = '{study.study_name}' and attributes.status = 'RUNNING'")):
        if run.data.tags.get("tracker.tune.trial") in failed:
            client.set_tag(run.info.run_id, "tracker.error", "its worker died; the trial was failed "
                           "through Optuna's heartbeat and retried")
            client.set_tag(run.info.run_id, "tracker.tune.state", "FAIL")
            client.set_terminated(run.info.run_id, "FAILED")


def _tag(key: str, value: str) -> Any:
    from mlflow.entities import RunTag

    return RunTag(key, value)


def trials_table(study: Any) -> str:
    import pandas as pd

    rows = []
    for t in study.trials:
        rows.append({"trial": t.number, "state": t.state.name, **t.params,
                     OBJECTIVE_METRIC: t.values[0] if t.values else math.nan,
                     "quality": t.user_attrs.get("quality", math.nan),
                     "feasible": t.user_attrs.get("constraint", [math.inf])[0] <= 0,
                     "run_id": t.user_attrs.get("run_id", ""),
                     "note": t.user_attrs.get("fail_reason")
                     or (f"duplicate of trial {t.user_attrs['duplicate_of']}" if "duplicate_of" in t.user_attrs else "")})
    out = io.StringIO()
    pd.DataFrame(rows).to_csv(out, index=False)
    return out.getvalue()


def _log_plots(client: Any, study: Any, parent_id: str) -> None:
    """Optimization history, carbon against quality with the Pareto front, carbon by settings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in study.trials if t.state.name == "COMPLETE" and t.values]
    if not done:
        return
    feasible = {t.number for t in feasible_trials(study)}
    front = {t.number for t in _front(
        [t for t in done if "quality" in t.user_attrs and not math.isnan(t.user_attrs["quality"])],
        study)} if len(study.directions) == 2 else set()

    figure, axis = plt.subplots(figsize=(6, 4))
    numbers = [t.number for t in done]
    values = [t.values[0] for t in done]
    best_so_far = [min(v for t, v in zip(done[:i + 1], values[:i + 1]) if t.number in feasible)
                   if any(t.number in feasible for t in done[:i + 1]) else math.nan for i in range(len(done))]
    axis.scatter(numbers, values, c=["tab:blue" if n in feasible else "tab:red" for n in numbers], s=18,
                 label="trial (red: infeasible)")
    axis.plot(numbers, best_so_far, color="black", label="best feasible so far")
    axis.set(xlabel="trial", ylabel="gCO2eq per output", yscale="log", title="Optimization history")
    axis.legend()
    _save(client, parent_id, figure, "plots/optimization_history.png")

    figure, axis = plt.subplots(figsize=(6, 4))
    for t in done:
        quality = t.user_attrs.get("quality", math.nan)
        axis.scatter(t.values[0], quality, s=30 if t.number in front else 14,
                     c="tab:green" if t.number in front else ("tab:blue" if t.number in feasible else "tab:red"))
        axis.annotate(f"bs{t.params['batch_size']} {t.params['precision']}", (t.values[0], quality), fontsize=6)
    reference = study.user_attrs.get("reference_quality")
    if reference is not None and not math.isnan(reference):
        axis.axhline(reference, color="grey", linestyle="--", label="fp32 reference quality")
        axis.legend()
    axis.set(xlabel="gCO2eq per output", ylabel=str(study.user_attrs.get("quality_metric", "quality")),
             xscale="log", title="Carbon against quality (green: Pareto front, red: infeasible)")
    _save(client, parent_id, figure, "plots/carbon_vs_quality.png")

    figure, axis = plt.subplots(figsize=(6, 4))
    for precision in sorted({t.params["precision"] for t in done}):
        points = sorted((t.params["batch_size"], t.values[0]) for t in done if t.params["precision"] == precision)
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=precision)
    axis.set(xlabel="batch size", ylabel="gCO2eq per output", xscale="log", yscale="log",
             title="Carbon per output by batch size and precision")
    axis.legend()
    _save(client, parent_id, figure, "plots/carbon_by_settings.png")


def _save(client: Any, run_id: str, figure: Any, path: str) -> None:
    import matplotlib.pyplot as plt

    client.log_figure(run_id, figure, path)
    plt.close(figure)


def _safe_url(url: str) -> str:
    """A storage URL without its password, for tags."""
    import re

    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
