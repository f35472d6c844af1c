"""``tracker report``: the paper's table and figures from MLflow runs, with ratings and regional what-ifs.

Reads the FINISHED runs of the chosen experiments (collect), aggregates them per model and per
task with star ratings and regional what-ifs (tables), draws the figures (figures), writes CSV
files, a Markdown summary and a self-contained HTML page (pages) into one folder, logs that folder
as the artifacts of a report run, and tags every compared run with its stars.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tracker.errors import UserError
from tracker.reporting import figures, tables
from tracker.reporting.pages import Section, html_page, markdown, stars

logger = logging.getLogger(__name__)

# Grids from low to high carbon intensity, when the user names none.
DEFAULT_COUNTRIES = ("FRA", "USA", "DEU", "CHN", "IND")
REPORT_EXPERIMENT = "report"
STARS_TAG = "tracker.rating.stars"


@dataclass(frozen=True, kw_only=True)
class ReportConfig:
    output: Path
    experiments: tuple[str, ...] = ()  # empty: every task's experiment that exists
    countries: tuple[str, ...] = DEFAULT_COUNTRIES
    include_tuning: bool = False
    report_experiment: str = REPORT_EXPERIMENT
    tag_runs: bool = True
    unit: str = "kWh"  # of the figures: kWh or gCO2eq per 1,000 inferences

    def __post_init__(self) -> None:
        if self.unit not in figures.UNITS:
            raise UserError(f"--unit takes {' or '.join(figures.UNITS)}, got '{self.unit}'")


@dataclass
class ReportResult:
    run_id: str
    output: Path
    tasks: Any  # the tasks table (task-specific models, and those of unknown kind)
    models: Any  # the models table
    files: list[Path]
    multipurpose: Any = None  # the multi-purpose models' table


def _check_output(folder: Path) -> None:
    """Refuse, before any work, an --output that is a file or a folder that takes no files."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--output '{folder}' is a file, not a folder: name a folder to write the report into")
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    probe = folder / ".tracker-write-probe"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write into --output '{folder}' ({err.strerror or err}): name a folder "
                        "you can write to") from None
    finally:
        for made in created:  # nothing is left behind if the report stops before writing
            with contextlib.suppress(OSError):
                made.rmdir()


def build_report(config: ReportConfig) -> ReportResult:
    from mlflow import MlflowClient

    from tracker.recording.lifecycle import recorded_run
    from tracker.recording.store import check_tracking_server
    from tracker.reporting.collect import default_experiments, read_runs

    countries = tables.check_countries(list(config.countries))
    _check_output(config.output)
    check_tracking_server()
    client = MlflowClient()
    experiments = list(config.experiments) or default_experiments(client)
    runs = read_runs(client, experiments, include_tuning=config.include_tuning)
    if runs.empty:
        where = ", ".join(f"'{e}'" for e in experiments) if experiments else "no task's experiment (none exists yet)"
        raise UserError(f"nothing to report: no FINISHED run with an energy figure in {where}. Measure "
                        "some (tracker run --task ...) or import CodeCarbon records (tracker "
                        "import-codecarbon FILE --task ... --dataset ... --n-samples ...)")

    models = tables.models_table(runs)
    task_table = tables.tasks_table(runs)
    prompted = tables.multipurpose_table(runs)
    regional = tables.regional_table(task_table, countries)
    config.output.mkdir(parents=True, exist_ok=True)
    for name in figures.FILES:  # a figure an earlier report drew that this one cannot must not linger
        (config.output / name).unlink(missing_ok=True)
    files = [_csv(models, config.output / "models.csv"), _csv(task_table, config.output / "tasks.csv"),
             _csv(regional, config.output / "regional.csv")]
    if not prompted.empty:
        files.append(_csv(prompted, config.output / "multipurpose.csv"))
    else:
        (config.output / "multipurpose.csv").unlink(missing_ok=True)
    drawn = {
        "by_task": figures.energy_by_task(runs, task_table, config.output, config.unit),
        "quality": figures.energy_vs_quality(models, runs, config.output, config.unit),
        "size": figures.energy_vs_size(models, config.output, config.unit),
        "kinds": figures.multipurpose_vs_task_specific(models, config.output, config.unit),
    }
    files += [f for f in drawn.values() if isinstance(f, Path)]
    title = "Energy and carbon of ML inference"
    sections = _sections(runs, models, task_table, prompted, regional, drawn, experiments)
    (config.output / "report.md").write_text(markdown(title, sections), encoding="utf-8")
    (config.output / "report.html").write_text(html_page(title, sections), encoding="utf-8")
    files += [config.output / "report.md", config.output / "report.html"]

    tags = {"tracker.report.experiments": ", ".join(experiments),
            "tracker.report.include_tuning": str(config.include_tuning).lower()}
    run_name = f"report · {len(task_table)} task(s) · {len(runs)} runs"
    with recorded_run(experiment=config.report_experiment, run_name=run_name, tags=tags) as recorder:
        recorder.log(params={"experiments": ", ".join(experiments), "countries": ",".join(countries),
                             "include_tuning": config.include_tuning},
                     metrics={"runs": len(runs), "tasks": len(task_table), "model_rows": len(models)})
        for path in files:
            client.log_artifact(recorder.run_id, str(path))
    if config.tag_runs:
        _tag_stars(client, runs, models, recorder.run_id)
    return ReportResult(recorder.run_id, config.output, task_table, models, files, prompted)


def _sections(runs: Any, models: Any, task_table: Any, prompted: Any, regional: Any,
              drawn: dict[str, Path | str], experiments: list[str]) -> list[Section]:
    by_task = _figure_section("Energy per 1,000 inferences by task", drawn["by_task"], [
        "The paper's table: task-specific models (and models of unknown kind), query phase. Each dot a run."])
    by_task.table = task_table.drop(columns=["energy_method"])  # said in the overview when mixed
    shown_models = models.assign(stars=models["stars"].map(stars)).drop(columns=["energy_method"])
    kinds_section = _figure_section("Multi-purpose against task-specific models", drawn["kinds"])
    if not prompted.empty:
        kinds_section.paragraphs.append(
            "x_task_specific: the model's energy per 1,000 inferences over the mean of the task-specific "
            "models' on the same task and dataset.")
        kinds_section.table = prompted.drop(columns=["energy_method"])
    sections = [
        _overview(runs, models, task_table, experiments),
        by_task,
        kinds_section,
        _figure_section("Energy against quality", drawn["quality"], [
            "Green: the Pareto frontier, the models no other beats on both energy and quality, per task "
            "and dataset."]),
        _figure_section("Energy against model size", drawn["size"]),
        Section("Models", ["One row per task, model, dataset and settings; means over its runs."],
                table=shown_models),
    ]
    if not regional.empty:
        sections.append(_regional_section(regional, task_table))
    return sections


def _overview(runs: Any, models: Any, task_table: Any, experiments: list[str]) -> Section:
    """How the figures were obtained, and what a reader must know before comparing them."""
    methods = runs["energy_method"].value_counts()
    scopes = set(runs["energy_scope"])
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    overview = Section("How these figures were obtained", [
        f"{len(runs)} FINISHED runs of {models['model'].nunique()} models on {len(task_table)} task(s), "
        f"read from the MLflow experiments {', '.join(f'`{e}`' for e in experiments)} on {generated}."
        + "".join(f" Left out: {n} {reason}." for reason, n in runs.attrs.get("left_out", {}).items()),
        "Energy: " + "; ".join(f"{m} ({n} runs)" for m, n in methods.items()) + ". The runs' tags "
        "(`tracker.energy.*.method`, `tracker.energy.attribution`) say more. Measured runs report the energy "
        "attributed to the run, not the whole machine's (`machine_energy_kwh`). Modelled figures (CPU: "
        "CodeCarbon's load curve over a TDP; RAM: a rule of thumb from its size) compare only with figures "
        "obtained the same way.",
        "Energy per 1,000 inferences is the query phase's (model loading excluded), as in the paper."
        + ("" if scopes <= {"query phase"} else " Except: runs imported from records without phase rows "
           "cover loading and querying together (energy_scope)."),
        f"A phone charge is {tables.PHONE_CHARGE_KWH} kWh. Stars rate each task's compared model rows in five "
        "equal bands of their range of energy per 1,000 inferences, 5 the lowest (after AI Energy Score).",
    ])
    contended = int(runs["contended"].sum())
    if contended:
        overview.paragraphs.append(
            f"Contended: {contended} of {len(runs)} runs were measured while other processes used a material "
            "share of the machine's CPU or the run's GPU (tag `tracker.measurement.contended`, with the reason). "
            "Their energy is the part attributed to the run, but less reliable; `contended_runs` in the Models "
            "table counts them per row. Measure them again on a quiet machine (`--wait-for-quiet`).")
    for task in task_table[task_table["energy_method"].str.contains(";")].itertuples():
        overview.paragraphs.append(
            f"Mixed: {task.task} averages runs whose energy was obtained in different ways "
            f"({task.energy_method}), perhaps on different hardware. Compare within one way, or report "
            "their experiments apart (`--experiments`).")
    kinds = set(runs["kind"])
    if "multi-purpose" in kinds:
        overview.paragraphs.append(
            f"Kinds kept apart: the {int((runs['kind'] == 'multi-purpose').sum())} runs of multi-purpose models "
            "(prompted for the task) are in their own table and figure, not in the tasks table, which is of "
            "task-specific models as in the paper.")
    if "unknown" in kinds:
        overview.paragraphs.append(
            f"Unknown kind: {int((runs['kind'] == 'unknown').sum())} runs do not say whether their model is "
            "task-specific or multi-purpose (imported without --model-kind or --model-kind-map); the tasks table "
            "counts them with the task-specific ones (its kinds column says which tasks).")
    for merged in runs.attrs.get("datasets_merged", []):
        overview.paragraphs.append(f"Dataset names taken as one: {merged}.")
    return overview


def _regional_section(regional: Any, task_table: Any) -> Section:
    """Each task's mean energy under each listed country's grid."""
    order = list(dict.fromkeys(regional["country_iso_code"]))  # as the user listed them
    pivot = regional.pivot(index="task", columns="country_iso_code", values="g_co2_per_1k")[order]
    intensity = regional.drop_duplicates("country_iso_code").set_index("country_iso_code")
    pivot.columns = [f"{c} ({intensity.loc[c, 'carbon_intensity_g_per_kwh']:.0f} g/kWh)" for c in pivot.columns]
    pivot = pivot.reindex(task_table["task"]).reset_index()
    years = sorted({str(y) for y in intensity["year"]})
    return Section("Regional what-if: gCO2eq per 1,000 inferences", [
        "The same mean energy per task under each country's grid: CodeCarbon's yearly average carbon "
        f"intensity ({', '.join(years)} data). The runs' own emissions used their own grid "
        "(g_co2_per_1k_mean above)."], table=pivot)


def _tag_stars(client: Any, runs: Any, models: Any, report_run_id: str) -> None:
    """Every compared run gets its model row's stars and how they were given."""
    import pandas as pd

    from tracker.recording.lifecycle import update_runs

    rated = runs.merge(models[tables.MODEL_KEY + ["stars"]], on=tables.MODEL_KEY, how="left")
    basis = {task: tables.rating_basis(models, task) for task in models["task"].unique()}
    update_runs(client, tags={
        row.run_id: {STARS_TAG: "unrated" if pd.isna(row.stars) else str(int(row.stars)),
                     "tracker.rating.basis": basis[row.task], "tracker.rating.report_run_id": report_run_id}
        for row in rated.itertuples()})


def _csv(table: Any, path: Path) -> Path:
    table.to_csv(path, index=False)
    return path


def _figure_section(title: str, drawn: Path | str, paragraphs: list[str] | None = None) -> Section:
    """A section with the figure drawn, or the reason it could not be."""
    return Section(title, paragraphs or [], figure=drawn if isinstance(drawn, Path) else None,
                   missing_figure=drawn if isinstance(drawn, str) else "")
