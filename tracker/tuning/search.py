"""The search: the creating worker's parent run and baseline, then the objective that measures each
trial in a child process and scores it against the constraint."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

from tracker.errors import RunInterrupted, TrackerError
from tracker.execution.child import SharedLoadChild, measure_in_child
from tracker.execution.remeasure import REMEASURE_TRIES, measure_until_quiet
from tracker.recording.signals import interrupts_raise
from tracker.runs.config import RunConfig
from tracker.tuning.baseline import (MIN_WINDOWS, OBJECTIVE_METRIC, baseline_config, baseline_failed, carbon_spread,
                                     record_baseline, wait_for_baseline)
from tracker.tuning.config import TuneConfig, feasibility
from tracker.tuning.results import describe, summarize
from tracker.tuning.storage import create_or_load, open_storage, safe_url, single_sqlite_worker
from tracker.tuning.strategies import Space, StructuredSampler, make_sampler

logger = logging.getLogger(__name__)

MAX_PROPOSALS_PER_TRIAL = 10  # a bound on proposals when the sampler keeps repeating settings


class TrialFailed(TrackerError):
    """A trial's run did not finish; the reason is on the trial and its MLflow run."""


def tune(config: TuneConfig) -> dict[str, Any]:
    """Run (or continue) the search; returns the summary also logged on the parent run."""
    config.run.check_inputs()  # before Optuna, MLflow and torch: a wrong path is answered at once
    import optuna
    from mlflow import MlflowClient

    from tracker.loading.device import resolve_device
    from tracker.recording.lifecycle import resumed_run
    from tracker.recording.store import check_tracking_server
    from tracker.tasks import get_task

    check_tracking_server()
    task = get_task(config.run.task)
    device = resolve_device(config.run.device)
    client = MlflowClient()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # SIGTERM as well as Ctrl-C unwinds through here, so the parent run always ends.
    with interrupts_raise(), single_sqlite_worker(config.storage):
        storage = open_storage(config)
        space = config.space(device)
        new_sampler = lambda: make_sampler(config.strategy, space, seed=config.sampler_seed,  # noqa: E731
                                           n_trials=config.n_trials, pareto=config.objective == "pareto")
        study, created = create_or_load(config, storage, task.higher_is_better, new_sampler())
        if not created and baseline_failed(client, study):
            # A study whose baseline failed has nothing to compare with: begin it again.
            logger.info("study %s: its baseline failed earlier; measuring it again", study.study_name)
            optuna.delete_study(study_name=study.study_name, storage=storage)
            study, created = create_or_load(config, storage, task.higher_is_better, new_sampler())
        if created:
            _start_search(client, config, study, task, device)
        study = wait_for_baseline(study)
        study.sampler = new_sampler()  # the study reloaded while waiting: our sampler, not Optuna's default
        parent_id = study.user_attrs["parent_run_id"]
        with resumed_run(client, parent_id), \
                _Objective(client, config, study, parent_id, space) as objective:  # RUNNING again when resumed
            try:
                study.optimize(objective, n_trials=MAX_PROPOSALS_PER_TRIAL * config.n_trials,
                               callbacks=[_StopWhenDone(config.n_trials, space.size())], catch=(TrialFailed,))
            finally:
                summary = summarize(client, study, parent_id)
    return summary


class _StopWhenDone:
    """Stops every worker once the study has ``n_trials`` measured trials (finished or failed),
    every setting of the space has finished, or the structured strategy has nothing left to learn.
    Duplicates, pruned without measuring, do not count; a worker also stops after
    MAX_PROPOSALS_PER_TRIAL x n_trials proposals of its own."""

    def __init__(self, n_trials: int, space: int) -> None:
        self.n_trials, self.space = n_trials, space

    def __call__(self, study: Any, trial: Any) -> None:
        import optuna

        states = optuna.trial.TrialState
        measured = study.get_trials(deepcopy=False, states=(states.COMPLETE, states.FAIL))
        finished = {tuple(sorted(t.params.items())) for t in measured if t.state == states.COMPLETE}
        structured_done = isinstance(study.sampler, StructuredSampler) and study.sampler.done(study)
        if len(measured) >= self.n_trials or len(finished) >= self.space or structured_done:
            study.stop()


def _start_search(client: Any, config: TuneConfig, study: Any, task: Any, device: str) -> None:
    """The creating worker: the parent run, the search space, then the baseline on the study."""
    from tracker.recording.lifecycle import end_run, ending, open_run

    run = config.run
    tags = {"tracker.tune.study": study.study_name, "tracker.tune.role": "parent",
            "tracker.tune.storage": safe_url(config.storage),
            "mlflow.note.content": (f"Search of settings for the lowest {OBJECTIVE_METRIC} "
                                    f"keeping {task.primary_metric} within {config.max_quality_drop:.1%} "
                                    f"of the fp32 reference ({config.strategy} strategy, knobs "
                                    f"{', '.join(config.knobs)}); trials are nested below.")}
    launcher = os.environ.get("MLFLOW_RUN_ID")  # set under `mlflow run -e tune`
    if launcher:
        tags["tracker.launcher_run_id"] = launcher
    params = {"task": run.task, "model": run.model or "default", "dataset": run.dataset or "default",
              "n_samples": run.n_samples, "device": device, "objective": config.objective,
              "max_quality_drop": config.max_quality_drop, "n_trials": config.n_trials,
              "batch_sizes": ",".join(map(str, config.batch_sizes())),
              "precisions": ",".join(config.search_precisions(device)), "study_name": study.study_name,
              "strategy": config.strategy if config.objective == "carbon" else "nsga2",
              "knobs": ",".join(config.knobs)}
    parent_id = open_run(client, run.experiment_name, f"tune · {study.study_name}", tags, params)
    if launcher:
        client.set_tag(launcher, "mlflow.note.content", f"Launcher of `mlflow run -e tune`: the search's "
                       f"parent run is {parent_id}.")
        client.set_tag(launcher, "tracker.tune.parent_run_id", parent_id)
    study.set_user_attr("parent_run_id", parent_id)
    study.set_user_attr("quality_metric", task.primary_metric)
    study.set_user_attr("higher_is_better", task.higher_is_better)

    # The paper's protocol: quality reference and carbon baseline in one measurement.
    try:
        result = measure_in_child(client, baseline_config(run), {
            "tracker.tune.study": study.study_name, "tracker.tune.role": "baseline",
            "mlflow.parentRunId": parent_id})
    except (KeyboardInterrupt, RunInterrupted) as err:  # the next tune on this study begins it again
        end_run(client, parent_id, *ending(err))
        raise
    if result.status != "FINISHED":
        end_run(client, parent_id, "FAILED", {"tracker.error": f"baseline (batch 1, fp32) failed: {result.reason}"})
        raise TrackerError(f"the baseline run (batch 1, fp32) of study '{study.study_name}' failed, so there is "
                           f"no quality to keep: {result.reason}. The same command measures it again")
    metrics = result.run.data.metrics
    cpu_method = result.run.data.tags.get("tracker.energy.cpu.method", "")
    if "threads" in config.knobs and cpu_method.startswith("modelled"):
        # Fewer threads lower the machine's load, and a load-curve model lowers the modelled power
        # with it: a gain a counter might not show. Said where the result is read.
        note = ("threads searched with modelled CPU power (no RAPL): fewer threads lower the modelled power "
                "through its load curve, so a gain from fewer threads may be the model's; confirm it on a "
                "machine with a CPU energy counter")
        logger.warning(note)
        client.set_tag(parent_id, "tracker.tune.threads_note", note)
    record_baseline(study, result.run)
    study.set_user_attr("baseline_run_id", result.run.info.run_id)
    study.set_user_attr("baseline_duration_s", metrics["duration_s"])
    # Set last: other workers wait for it.
    study.set_user_attr("reference_quality", metrics.get("quality", math.nan))


class _Objective:
    """Measures one trial's settings in a child process and scores it; every ``baseline_every``
    trials of this worker, measures the baseline again. Settings that share a model load are
    measured in one child process (``SharedLoadChild``); leaving the context ends it."""

    def __init__(self, client: Any, config: TuneConfig, study: Any, parent_id: str, space: Space) -> None:
        attrs = study.user_attrs
        self.client, self.config, self.parent_id, self.space = client, config, parent_id, space
        self.reference = float(attrs["reference_quality"])
        self.higher_is_better = bool(attrs["higher_is_better"])
        # Short windows are noisy: repeat the query phase until the baseline would fill the window.
        baseline_s = float(attrs.get("baseline_duration_s") or config.min_window_s)
        self.repeats = max(config.run.repeats, MIN_WINDOWS, math.ceil(config.min_window_s / max(baseline_s, 1e-3)))
        self.measured = 0
        self.child = SharedLoadChild(client)

    def __enter__(self) -> _Objective:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.child.close()

    def __call__(self, trial: Any) -> float | tuple[float, float]:
        import optuna

        settings = {name: trial.suggest_categorical(name, values) for name, values in self.space.choices().items()}
        role = getattr(trial.study.sampler, "role", lambda number: None)(trial.number)
        tags = {"tracker.tune.study": trial.study.study_name, "tracker.tune.role": "trial",
                "tracker.tune.trial": str(trial.number), "mlflow.parentRunId": self.parent_id}
        if role:
            trial.set_user_attr("strategy_role", role)
            tags["tracker.tune.strategy_role"] = role
        earlier = _measured_before(trial)
        if earlier is not None and self.config.run.repeats == 1 and role != "confirm":
            trial.set_user_attr("duplicate_of", earlier.number)
            trial.set_user_attr("constraint", earlier.user_attrs.get("constraint", [math.inf]))
            raise optuna.TrialPruned(f"{describe(settings)} already measured by trial {earlier.number}")
        config = dataclasses.replace(self.config.run, **settings, repeats=self.repeats, progress=False)
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
            raise TrialFailed(f"trial {trial.number} ({describe(settings)}): {result.reason}")
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
        """One measurement; measured again when other work contended it, keeping the quieter."""
        kept, dropped = measure_until_quiet(self.client, lambda: self.child.measure(config, tags),
                                            tries=REMEASURE_TRIES, wait_s=config.wait_for_quiet, threads=config.threads)
        for result in dropped:
            self.client.set_tag(result.run.info.run_id, "tracker.tune.state", "REMEASURED")
            self.client.set_tag(result.run.info.run_id, "tracker.tune.remeasured_by", kept.run.info.run_id)
        return kept

    def _remeasure_baseline(self, study: Any) -> None:
        """The baseline again, between trials, so that it drifts with them; a failure is logged
        and leaves the earlier measurements in use."""
        result = self.child.measure(baseline_config(self.config.run), {
            "tracker.tune.study": study.study_name, "tracker.tune.role": "baseline",
            "tracker.tune.baseline": "remeasured", "mlflow.parentRunId": self.parent_id})
        if result.status == "FINISHED":
            record_baseline(study, result.run)
        else:
            logger.warning("the baseline measured again failed (%s); the earlier ones stay in use", result.reason)


def _measured_before(trial: Any) -> Any:
    """A finished earlier trial with the same params, if any."""
    import optuna

    for other in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if other.number != trial.number and other.params == trial.params:
            return other
    return None
