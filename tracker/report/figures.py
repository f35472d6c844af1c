"""The report's figures (PNG). Each returns the file it wrote, or why it could not be drawn."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tracker.pareto import pareto_front

ENERGY_LABEL = "kWh per 1,000 inferences (log)"
BY_TASK, BY_QUALITY, BY_SIZE, BY_KIND = FILES = (
    "energy_by_task.png", "energy_vs_quality.png", "energy_vs_size.png", "multipurpose_vs_task_specific.png")


def energy_by_task(models: Any, tasks: Any, folder: Path) -> Path | str:
    """The paper's figure: each model's energy per task, tasks from the cheapest up, on a log scale."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(6, 1.1 * len(tasks)), 4.5))
    order = list(tasks["task"])
    for x, task in enumerate(order):
        energies = models.loc[models["task"] == task].groupby("model")["kwh_per_1k_mean"].mean().sort_values()
        n = len(energies)
        spread = [x + (0.6 * i / (n - 1) - 0.3 if n > 1 else 0) for i in range(n)]  # side by side, in order
        axis.scatter(spread, energies, s=16, alpha=0.7, color="tab:blue",
                     label="model (mean over its runs)" if x == 0 else None)
        axis.scatter([x], [tasks.loc[tasks["task"] == task, "kwh_per_1k_mean"].iloc[0]], marker="_",
                     s=500, color="black", label="task mean over runs" if x == 0 else None)
    axis.set_xticks(range(len(order)), order, rotation=30, ha="right")
    axis.set(yscale="log", ylabel=ENERGY_LABEL, title="Energy per 1,000 inferences by task")
    axis.legend(fontsize=8)
    return _save(figure, folder / BY_TASK)


def energy_vs_quality(models: Any, runs: Any, folder: Path) -> Path | str:
    """Per task and dataset (quality compares within a dataset only), each model row's energy
    against its quality, the Pareto frontier marked."""
    scored = models[models["quality"].notna()]
    panels = list(dict.fromkeys(zip(scored["task"], scored["dataset"])))
    if not panels:
        return "no run has a quality figure (imported records hold energy only)"
    plt = _pyplot()
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.6 * rows), squeeze=False)
    for axis, (task, dataset) in zip(axes.flat, panels):
        points = scored[(scored["task"] == task) & (scored["dataset"] == dataset)]
        higher = bool(runs.loc[runs["task"] == task, "higher_is_better"].all())
        front = pareto_front(list(points.itertuples()), cost=lambda r: r.kwh_per_1k_mean,
                             quality=lambda r: r.quality, higher_is_better=higher)
        axis.scatter(points["kwh_per_1k_mean"], points["quality"], s=18, color="tab:blue", label="model row")
        axis.plot([r.kwh_per_1k_mean for r in front], [r.quality for r in front], color="tab:green",
                  marker="o", label="Pareto frontier")
        for r in front:
            settings = f" bs{r.batch_size} {r.precision}" if str(r.batch_size) else ""
            axis.annotate(_short(r.model) + settings, (r.kwh_per_1k_mean, r.quality), fontsize=6)
        meaningful = bool(points["quality_meaningful"].all())
        metric = "; ".join(sorted(set(points["quality_metric"]))) or "quality"
        axis.set(xscale="log", xlabel=ENERGY_LABEL,
                 ylabel=f"{metric} ({'higher' if higher else 'lower'} is better)",
                 title=f"{task} · {dataset}" + ("" if meaningful else "\n(quality NOT meaningful: built-in model/data)"))
        axis.title.set_fontsize(9)
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    figure.suptitle("Energy against quality")
    return _save(figure, folder / BY_QUALITY)


def energy_vs_size(models: Any, folder: Path) -> Path | str:
    """Energy against parameter count, where runs recorded it (measured runs do; imports do not)."""
    sized = models[models["parameters"].notna() & (models["parameters"] > 0)]
    if sized.empty:
        return "no run records its model's parameter count (runs measured by this tracker do; imports do not)"
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for task, points in sized.groupby("task"):
        axis.scatter(points["parameters"], points["kwh_per_1k_mean"], s=20, label=task)
    axis.set(xscale="log", yscale="log", xlabel="parameters (log)", ylabel=ENERGY_LABEL,
             title="Energy against model size")
    axis.legend(fontsize=7)
    return _save(figure, folder / BY_SIZE)


def multipurpose_vs_task_specific(models: Any, folder: Path) -> Path | str:
    """Per task where both kinds were measured, each model's energy by kind."""
    kinds = models.groupby("task")["kind"].agg(set)
    both = [task for task, found in kinds.items() if {"task-specific", "multi-purpose"} <= found]
    if not both:
        return "no task has runs of both a task-specific and a multi-purpose model"
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(6, 2.2 * len(both)), 4.5))
    for x, task in enumerate(both):
        for offset, kind, colour in ((-0.15, "task-specific", "tab:blue"), (0.15, "multi-purpose", "tab:orange")):
            energies = models[(models["task"] == task) & (models["kind"] == kind)].groupby("model")[
                "kwh_per_1k_mean"].mean()
            axis.scatter([x + offset] * len(energies), energies, color=colour, s=20,
                         label=kind if x == 0 else None)
    axis.set_xticks(range(len(both)), both, rotation=20, ha="right")
    axis.set_xlim(-0.6, len(both) - 0.4)
    axis.set(yscale="log", ylabel=ENERGY_LABEL)
    axis.set_title("Multi-purpose (prompted) against task-specific models", fontsize=10)
    axis.legend(fontsize=8)
    return _save(figure, folder / BY_KIND)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _short(model: str) -> str:
    return model.rstrip("/").split("/")[-1]
