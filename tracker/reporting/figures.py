"""The report's figures (PNG). Each returns the file it wrote, or why it could not be drawn.

Energy is drawn in the unit the user chose (kWh or gCO2eq per 1,000 inferences) on log axes with
labelled ticks at 1, 2 and 5 of each decade only, so labels never overlap. Kinds and families of
models have colours of their own throughout.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tracker.measurement.pareto import pareto_front

BY_TASK, BY_QUALITY, BY_SIZE, BY_KIND = FILES = (
    "energy_by_task.png", "energy_vs_quality.png", "energy_vs_size.png", "multipurpose_vs_task_specific.png")
UNITS = {"kWh": ("kwh_per_1k", "kWh per 1,000 inferences"), "gCO2eq": ("g_co2_per_1k", "gCO2eq per 1,000 inferences")}
# One colour per kind, and per family of multi-purpose models, in every figure.
COLOURS = {"task-specific": "tab:blue", "unknown": "tab:gray", "multi-purpose": "tab:orange", "Flan-T5": "tab:orange",
           "BLOOMz": "tab:red", "base LM": "tab:purple", "mT0": "tab:brown", "T0": "tab:pink",
           "Llama (chat)": "tab:olive", "instruction-tuned": "tab:cyan"}


def energy_by_task(runs: Any, tasks: Any, folder: Path, unit: str = "kWh") -> Path | str:
    """The paper's Figure 1: per task, from the cheapest up, every run as a point over the box of
    their spread, coloured by kind (task-specific; unknown when a record did not say)."""
    column, label = UNITS[unit]
    runs = runs[runs["task"].isin(tasks["task"]) & (runs["kind"] != "multi-purpose")]
    values = runs[column].dropna()
    if values.empty or not (values > 0).any():
        return f"no run has a figure in {unit}"
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(tasks)), 4.8))
    order = list(tasks["task"])
    for x, task in enumerate(order):
        of_task = runs[(runs["task"] == task) & (runs[column] > 0)]
        if of_task.empty:
            continue
        axis.boxplot([of_task[column]], positions=[x], widths=0.5, showfliers=False, manage_ticks=False,
                     medianprops={"color": "black"})
        for kind, points in of_task.groupby("kind"):
            jitter = [x + 0.3 * (((i * 0.618) % 1) - 0.5) for i in range(len(points))]  # spread, reproducibly
            legend = f"a run ({kind} model)"
            axis.scatter(jitter, points[column], s=7, alpha=0.45, color=COLOURS.get(kind, "tab:gray"),
                         label=legend if legend not in axis.get_legend_handles_labels()[1] else None)
    axis.set_xticks(range(len(order)), order, rotation=30, ha="right")
    axis.set_xlim(-0.7, len(order) - 0.3)
    _log(axis, "y")
    axis.set(ylabel=f"{label} (log)", title=f"{label.split(' per')[0]} per 1,000 inferences by task "
                                            "(query phase; box: quartiles of runs)")
    axis.title.set_fontsize(10)
    _legend(axis)
    return _save(figure, folder / BY_TASK)


def energy_vs_quality(models: Any, runs: Any, folder: Path, unit: str = "kWh") -> Path | str:
    """Per task and dataset (quality compares within a dataset only), each model row's energy
    against its quality, coloured by kind or family, the Pareto frontier marked."""
    column, label = UNITS[unit]
    mean = f"{column}_mean"
    scored = models[models["quality"].notna() & (models[mean] > 0)]
    panels = list(dict.fromkeys(zip(scored["task"], scored["dataset"])))
    if not panels:
        return "no run has a quality figure (imported records hold energy only: tracker annotate attaches quality)"
    plt = _pyplot()
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.8 * rows), squeeze=False)
    for axis, (task, dataset) in zip(axes.flat, panels):
        points = scored[(scored["task"] == task) & (scored["dataset"] == dataset)]
        higher = bool(runs.loc[runs["task"] == task, "higher_is_better"].all())
        for group, part in points.groupby(points.apply(_colour_group, axis=1)):
            axis.scatter(part[mean], part["quality"], s=22, color=COLOURS.get(group, "tab:gray"), label=group)
        front = pareto_front(list(points.itertuples()), cost=lambda r: getattr(r, mean),
                             quality=lambda r: r.quality, higher_is_better=higher)
        axis.plot([getattr(r, mean) for r in front], [r.quality for r in front], color="tab:green",
                  linewidth=1, label="Pareto frontier")
        for r in front:
            settings = f" bs{r.batch_size} {r.precision}" if str(r.batch_size) else ""
            axis.annotate(_short(r.model) + settings, (getattr(r, mean), r.quality), fontsize=6)
        meaningful = bool(points["quality_meaningful"].all())
        metric = "; ".join(sorted(set(points["quality_metric"]))) or "quality"
        _log(axis, "x")
        axis.set(xlabel=f"{label} (log)", ylabel=f"{metric} ({'higher' if higher else 'lower'} is better)",
                 title=f"{task} · {dataset}" + ("" if meaningful else "\n(quality NOT meaningful: built-in model/data)"))
        axis.title.set_fontsize(9)
        axis.xaxis.label.set_fontsize(8)
        _legend(axis, size=6)
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    figure.suptitle("Energy against quality")
    return _save(figure, folder / BY_QUALITY)


def energy_vs_size(models: Any, folder: Path, unit: str = "kWh") -> Path | str:
    """Energy against parameter count, where runs record it (measured runs do; imports get it from
    tracker annotate), coloured by kind or family, one marker per task."""
    column, label = UNITS[unit]
    mean = f"{column}_mean"
    sized = models[models["parameters"].notna() & (models["parameters"] > 0) & (models[mean] > 0)]
    if sized.empty:
        return ("no run records its model's parameter count (measured runs do; for imported ones, tracker "
                "annotate --parameters attaches it)")
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.8))
    markers = dict(zip(sorted(sized["task"].unique()), "osD^v<>pPX*h"))
    for (task, group), points in sized.groupby(["task", sized.apply(_colour_group, axis=1)]):
        axis.scatter(points["parameters"], points[mean], s=24, marker=markers[task],
                     color=COLOURS.get(group, "tab:gray"), alpha=0.8, label=f"{task}: {group}")
    _log(axis, "x")
    _log(axis, "y")
    axis.set(xlabel="parameters (log)", ylabel=f"{label} (log)", title="Energy against model size")
    _legend(axis, size=7)
    return _save(figure, folder / BY_SIZE)


def multipurpose_vs_task_specific(models: Any, folder: Path, unit: str = "kWh") -> Path | str:
    """Per task and dataset where multi-purpose models were run, each model's energy: the
    task-specific ones beside each family of multi-purpose ones (Flan-T5, BLOOMz, base LMs, ...)."""
    from tracker.reporting.tables import model_family

    column, label = UNITS[unit]
    mean = f"{column}_mean"
    prompted = models[models["kind"] == "multi-purpose"]
    if prompted.empty:
        return "no run of a multi-purpose model (tag tracker.model.kind; --model-kind or --model-kind-map at import)"
    groups = list(dict.fromkeys(zip(prompted["task"], prompted["dataset"])))
    families = sorted(set(prompted["model"].map(model_family)))
    lanes = ["task-specific"] + families
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(6.5, 1.6 * len(groups) * len(lanes) / 2), 4.8))
    width = 0.8 / len(lanes)
    for x, (task, dataset) in enumerate(groups):
        here = models[(models["task"] == task) & (models["dataset"] == dataset) & (models[mean] > 0)]
        for i, lane in enumerate(lanes):
            if lane == "task-specific":
                points = here[here["kind"] == "task-specific"]
            else:
                points = here[(here["kind"] == "multi-purpose") & (here["model"].map(model_family) == lane)]
            energies = points.groupby("model")[mean].mean()
            shown = lane not in axis.get_legend_handles_labels()[1]
            axis.scatter([x - 0.4 + width * (i + 0.5)] * len(energies), energies, s=22,
                         color=COLOURS.get(lane, "tab:gray"), label=lane if shown and len(energies) else None)
    axis.set_xticks(range(len(groups)), [f"{t}\n{d}" for t, d in groups], fontsize=8)
    axis.set_xlim(-0.6, len(groups) - 0.4)
    _log(axis, "y")
    axis.set(ylabel=f"{label} (log)")
    axis.set_title("Multi-purpose (prompted) against task-specific models: each dot a model's mean", fontsize=10)
    _legend(axis)
    return _save(figure, folder / BY_KIND)


def _colour_group(row: Any) -> str:
    """A row's colour: its kind, or its family for a multi-purpose model."""
    from tracker.reporting.tables import model_family

    return model_family(row["model"]) if row["kind"] == "multi-purpose" else (row["kind"] or "unknown")


def _log(axis: Any, which: str) -> None:
    """A log axis labelled at 1, 2 and 5 of each decade, with unlabelled minor ticks between."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    getattr(axis, f"set_{which}scale")("log")
    low, high = getattr(axis, f"get_{which}lim")()
    decades = math.log10(high / low) if low > 0 and high > low else 1.0
    # Enough labels to read a narrow range, few enough not to crowd a wide one.
    labelled = tuple(map(float, range(1, 10))) if decades < 0.5 else (1.0, 2.0, 5.0) if decades <= 3 else (1.0,)
    scale = getattr(axis, f"{which}axis")
    scale.set_major_locator(LogLocator(base=10, subs=labelled, numticks=30))
    scale.set_major_formatter(FuncFormatter(_tick))
    scale.set_minor_locator(LogLocator(base=10, subs=tuple(float(s) for s in range(1, 10) if s not in labelled),
                                       numticks=30))
    scale.set_minor_formatter(NullFormatter())
    axis.tick_params(axis=which, which="major", labelsize=7)


def _tick(value: float, _: Any) -> str:
    """0.005, 20, 2e8, 1e10: plain where that is short, powers of ten beyond."""
    if 1e-3 <= value < 1e5:
        return f"{value:g}"
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _legend(axis: Any, size: int = 8) -> None:
    if axis.get_legend_handles_labels()[1]:
        axis.legend(fontsize=size)


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
