"""The commands as functions: ``run``, ``tune``, ``serve_bench`` and ``report`` take the CLI's options as keyword
arguments (numbers as numbers, lists as lists), check them the same way, and return typed results.
The CLI is a thin layer over them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracker.runs.config import RunConfig
from tracker.runs.result import RunResult

if TYPE_CHECKING:  # pandas and matplotlib come with it: imported where a report is made
    from tracker.reporting import ReportResult


@dataclass
class TuneResult:
    """A search's outcome: the best feasible settings (None when no trial kept quality), the
    carbon reduction against the baseline (batch 1, fp32) with its 95% interval, and the summary
    logged on the parent run."""

    study: str
    trials: int
    best_params: dict[str, Any] | None
    carbon_reduction_x: float | None
    carbon_reduction_x_ci95: tuple[float, float] | None
    reference_quality: float
    best_quality: float | None
    tie: str | None
    summary: dict[str, Any] = field(repr=False)


def run(*, task: str, tags: dict[str, str] | None = None, **options: Any) -> RunResult:
    """Measure one model on one task and log it to MLflow (``tracker run``).

    Args:
        task: a task name (see ``tracker tasks``).
        tags: extra tags for the run.
        **options: the flags of ``tracker run`` by their Python names: ``model`` (a Hub id, a
            folder, ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``runs:/RUN_ID/PATH``),
            ``dataset``, ``n_samples``, ``batch_size``, ``precision``, ``device``, ``repeats``,
            ``country``, ... ``progress`` defaults to False here.

    Raises:
        tracker.errors.UserError: a bad option, model or dataset, before any run is made.
    """
    options.setdefault("progress", False)
    config = RunConfig.parse(task=task, **options)
    reference = config.check_inputs()  # before the session's imports: bad input is answered in about --help's time
    from tracker.runs.session import measure as measure_run

    return measure_run(config, reference=reference, tags=tags)


def tune(*, task: str, **options: Any) -> TuneResult:
    """Search batch size, precision and the other knobs asked for, for the lowest carbon per output
    that keeps quality (``tracker tune``); options are its flags by their Python names
    (``n_trials``, ``max_batch_size``, ``precisions`` and ``knobs`` as lists, ``strategy``,
    ``max_quality_drop``, ``storage``, ...)."""
    from tracker.options import options_of
    from tracker.tuning import tune as search
    from tracker.tuning.config import TuneConfig, parse_tune_config

    search_options = {f.name: options.pop(f.name) for f in options_of(TuneConfig) if f.name in options}
    options.setdefault("progress", False)
    config = parse_tune_config(RunConfig.parse(task=task, **options), **search_options)
    summary = search(config)
    low_high = summary.get("carbon_reduction_x_ci95")
    return TuneResult(study=summary["study"], trials=summary["trials"], best_params=summary.get("best_params"),
                      carbon_reduction_x=summary.get("carbon_reduction_x"),
                      carbon_reduction_x_ci95=tuple(low_high) if low_high else None,
                      reference_quality=summary["reference_quality"], best_quality=summary.get("best_quality"),
                      tie=summary.get("tie"), summary=summary)


def serve_bench(*, tags: dict[str, str] | None = None, **options: Any) -> Any:
    """Measure an OpenAI-compatible server at each load level (``tracker serve-bench``): its energy
    per request and per token with their latency, one MLflow run per level under a parent run.

    Options are the command's flags by their Python names: ``endpoint`` or ``launch``, ``model``,
    ``concurrency`` or ``request_rate`` (lists), ``output_tokens``, ``windows``, ``slo_ttft_ms``, ...
    Returns a ``tracker.serving.bench.ServeResult`` (the parent run, each level's run and metrics,
    the best level within the latency targets with ``carbon_reduction_x``).

    Raises:
        tracker.errors.UserError: a bad option, or a server that cannot be measured, before any run.
    """
    from tracker.serving.bench import serve_bench as measure_server
    from tracker.serving.config import ServeConfig

    return measure_server(ServeConfig.parse(**options), tags=tags)


def report(*, output: str | Path = "report", experiments: list[str] | tuple[str, ...] = (),
           countries: list[str] | tuple[str, ...] = (), include_tuning: bool = False, unit: str = "kWh",
           report_experiment: str = "report", tag_runs: bool = True) -> ReportResult:
    """Tables, figures, star ratings and regional what-ifs from the runs (``tracker report``);
    returns a ``ReportResult`` (its run id, output folder, tables as DataFrames, files)."""
    from tracker.reporting import DEFAULT_COUNTRIES, ReportConfig, build_report

    config = ReportConfig(output=Path(output), experiments=tuple(experiments),
                          countries=tuple(countries) or DEFAULT_COUNTRIES, include_tuning=include_tuning,
                          report_experiment=report_experiment, tag_runs=tag_runs, unit=unit)
    return build_report(config)
