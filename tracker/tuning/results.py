"""What a search found: the feasible and best trials, a tie within the measured spread, and the
summary, trials table and plots logged on the parent run."""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from typing import Any

from tracker.measurement.pareto import pareto_front
from tracker.measurement.stats import Spread, pooled, ratio_interval
from tracker.tuning.baseline import BASELINE_ATTR, OBJECTIVE_METRIC, baseline_spread, trial_spread
from tracker.tuning.strategies import KNOBS, key


def feasible_trials(study: Any) -> list[Any]:
    import optuna

    return [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("constraint", [math.inf])[0] <= 0]


def best_trials(study: Any) -> list[Any]:
    """The lowest carbon per output among feasible settings (a setting measured again counts all
    its measurements); the feasible Pareto front for pareto."""
    feasible = feasible_trials(study)
    if not feasible:
        return []
    if len(study.directions) == 1:
        return [ranked_settings(feasible)[0].trials[0]]
    return _front(feasible, study)


@dataclass(frozen=True)
class SettingFigures:
    """One setting's carbon per output over every trial that measured it (the confirmations too)."""

    params: dict[str, Any]
    carbon: Spread
    trials: list[Any]  # the first one first


def ranked_settings(trials: list[Any]) -> list[SettingFigures]:
    """Finished trials grouped by their settings, cheapest pooled carbon first."""
    groups: dict[tuple, list[Any]] = {}
    for trial in trials:
        groups.setdefault(key(trial.params), []).append(trial)
    settings = [SettingFigures(dict(k), pooled([trial_spread(t) for t in group]),
                               sorted(group, key=lambda t: t.number)) for k, group in groups.items()]
    return sorted(settings, key=lambda s: s.carbon.mean)


def _front(trials: list[Any], study: Any) -> list[Any]:
    """Trials no other trial beats on both carbon and quality (the pareto objective's two values)."""
    return pareto_front(trials, cost=lambda t: t.values[0], quality=lambda t: t.values[1],
                        higher_is_better=bool(study.user_attrs.get("higher_is_better", True)))


def summarize(client: Any, study: Any, parent_id: str) -> dict[str, Any]:
    """Best settings, baseline and carbon_reduction_x, a trials table and plots, on the parent run."""
    from mlflow.entities import Metric

    _close_orphans(client, study, parent_id)
    attrs = study.user_attrs
    feasible = feasible_trials(study)
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
               "trials_feasible": float(len(feasible))}
    tags = {}
    if best:
        top = best[0]
        top_spread = pooled([trial_spread(t) for t in feasible if t.params == top.params])
        carbon = top_spread.mean if len(study.directions) == 1 else top.values[0]
        ratio, low, high = ratio_interval(baseline, top_spread)
        summary.update(best_params=top.params, best_trial=top.number, best_emissions_g_per_output=carbon,
                       best_quality=top.user_attrs.get("quality"), carbon_reduction_x=ratio,
                       carbon_reduction_x_ci95=(low, high),
                       pareto=[{"trial": t.number, **t.params, "emissions_g_per_output": t.values[0],
                                "quality": t.user_attrs.get("quality")} for t in best])
        metrics.update(best_emissions_g_per_output=carbon, best_quality=float(top.user_attrs.get("quality", math.nan)),
                       best_batch_size=float(top.params["batch_size"]), carbon_reduction_x=ratio,
                       carbon_reduction_x_ci95_low=low, carbon_reduction_x_ci95_high=high)
        tags = {**{f"tracker.tune.best.{name}": str(value) for name, value in top.params.items()},
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
    ranked = ranked_settings([t for t in feasible_trials(study) if t.values])
    first = next(s for s in ranked if s.params == best.params)
    others = [s for s in ranked if s.params != best.params]
    if not others:
        return None
    runner = others[0]
    a, b = first.carbon, runner.carbon
    if not a.overlaps(b):
        return None
    (a_low, a_high), (b_low, b_high) = a.ci95, b.ci95
    return (f"{describe(best.params)} (trial {best.number}) and {describe(runner.params)} (trial "
            f"{runner.trials[0].number}) are within the measured spread: 95% intervals {a_low:.3g} to {a_high:.3g} "
            f"and {b_low:.3g} to {b_high:.3g} gCO2eq per output overlap")


def describe(params: dict[str, Any]) -> str:
    """Settings in words: "batch 16, int8" and any other knob searched ("threads 2", "sort_by_length")."""
    words = [f"batch {params['batch_size']}", str(params["precision"])]
    for name in KNOBS[2:]:
        if name in params:
            value = params[name]
            words.append(name if value is True else f"no {name}" if value is False else f"{name} {value}")
    return ", ".join(words)


def _close_orphans(client: Any, study: Any, parent_id: str) -> None:
    """Runs of trials whose worker died with them (killed with its whole process group): the
    trial was failed through the heartbeat; its run is closed FAILED, not left RUNNING."""
    from tracker.recording.lifecycle import end_run

    failed = {str(t.number) for t in study.trials if t.state.name == "FAIL"}
    experiment_id = client.get_run(parent_id).info.experiment_id
    for run in client.search_runs([experiment_id], filter_string=(
            f"tags.`tracker.tune.study` = '{study.study_name}' and attributes.status = 'RUNNING'")):
        if run.data.tags.get("tracker.tune.trial") in failed:
            end_run(client, run.info.run_id, "FAILED", {
                "tracker.error": "its worker died; the trial was failed through Optuna's heartbeat and retried",
                "tracker.tune.state": "FAIL"})


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
                     "run_id": t.user_attrs.get("run_id", ""), "role": t.user_attrs.get("strategy_role", ""),
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
