"""The ``tracker`` command: run, study, tune, serve-bench, import-codecarbon, annotate, report, sync, tasks.

Flags mirror the MLproject ``main`` entry point's parameters in kebab case. User mistakes print
one line and exit 2; an interrupted run exits 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse
import math
import signal
import sys

from tracker.console import configure_logging, say
from tracker.errors import ConfigError, RunInterrupted, TrackerError, UserError
from tracker.execution.placement import Placement
from tracker.execution.remeasure import Remeasure
from tracker.options import add_flags, boolean, integer, options_of
from tracker.recording.signals import signals_restored
from tracker.runs.config import RunConfig
from tracker.serving.config import ServeConfig
from tracker.tuning.config import DEFAULT_STORAGE, TUNE_SEARCHES, TuneConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tracker", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tracker {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="measure one model on one task and log it to MLflow")
    add_flags(run, RunConfig, required=["task"])
    run.add_argument("--tag", dest="tags", action="append", default=[], metavar="KEY=VALUE",
                     help="add a tag to the run (repeatable)")
    commands.add_parser("tasks", help="list the tasks with their default models and datasets")
    study = commands.add_parser("study", help="run every model x dataset of a study definition")
    study.add_argument("definition", help="a YAML file, e.g. experiments/summarization.yaml")
    study.add_argument("--force", nargs="?", const="true", default="false",
                       help="measure again combinations that already have a FINISHED run")
    study.add_argument("--n-samples", help="override the definition's n_samples (e.g. for a quick try)")
    study.add_argument("--dry-run", action="store_true", help="list the runs without running them")
    add_flags(study, RunConfig, exclude=[f.name for f in options_of(RunConfig) if f.name != "wait_for_quiet"])
    add_flags(study, Remeasure)
    add_flags(study, Placement, exclude=["workers"])
    tune = commands.add_parser("tune", help="search batch size, precision and, with --knobs, threads, length sorting, "
                                            "attention and compile for the lowest carbon per output")
    add_flags(tune, RunConfig, exclude=[*TUNE_SEARCHES, "progress"], required=["task"])  # trials show no bar
    add_flags(tune, TuneConfig)
    add_flags(tune, Placement)
    serve = commands.add_parser("serve-bench", help="measure an OpenAI-compatible server's energy per request "
                                                   "and per token, with its latency, at each load level")
    add_flags(serve, ServeConfig)
    serve.add_argument("--tag", dest="tags", action="append", default=[], metavar="KEY=VALUE",
                       help="add a tag to the runs (repeatable)")
    _add_record_commands(commands)
    commands.add_parser("sync", help="upload the runs kept locally while the tracking server was lost")
    _add_report_command(commands)
    return parser


def _add_record_commands(commands: argparse._SubParsersAction) -> None:
    """import-codecarbon and annotate: runs made or completed from records and tables."""
    records = commands.add_parser("import-codecarbon", help="turn CodeCarbon records (emissions.csv) into runs")
    records.add_argument("files", nargs="+", metavar="FILES",
                         help="emissions.csv files or folders of them: complete records (one run per row); "
                              "phase files (task_name) among them are used as --phases")
    records.add_argument("--task", required=True, help=_help(RunConfig, "task"))
    records.add_argument("--dataset", help="the dataset the records measured, e.g. imdb")
    records.add_argument("--dataset-from-file", metavar="REGEX",
                         help="instead of --dataset: a regular expression on each file's name whose first group "
                              "is its dataset, e.g. '_(imdb|sst2|tomatoes)'")
    records.add_argument("--n-samples", required=True, help="inferences each record covers, e.g. 1000")
    records.add_argument("--phases", nargs="+", default=[], metavar="PATH",
                         help="files or folders of the same runs split by phase (task_name: load model, "
                              "query model, any other phase)")
    records.add_argument("--experiment", help=_help(RunConfig, "experiment"))
    records.add_argument("--model-kind", help="task-specific or multi-purpose, when known (default: unrecorded)")
    records.add_argument("--model-kind-map", action="append", default=[], metavar="RULES",
                         help="PATTERN=KIND (regex on the model id; repeatable) or a file of such lines, "
                              "e.g. 'flan-t5|bloomz|gpt2|opt-|llama|bloom-=multi-purpose'")
    records.add_argument("--replace", action="store_true",
                         help="import again, in place, records imported before with other options")

    notes = commands.add_parser("annotate", help="attach a quality table and parameter counts to existing runs")
    notes.add_argument("--quality", help="CSV: long (model,dataset,metric,value) or wide ('imdb (acc)' columns)")
    notes.add_argument("--parameters", help="CSV: model_name,num_parameters")
    notes.add_argument("--experiments", default="",
                       help="comma-separated MLflow experiments whose runs to annotate (default: every task's)")
    notes.add_argument("--alias", action="append", default=[], metavar="THEIRS=OURS",
                       help="a model or dataset name in the tables and the name the runs use (repeatable)")


def _add_report_command(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser("report", help="tables, figures, star ratings and regional what-ifs from the runs")
    report.add_argument("--output", default="report", help="folder to write into (default: report)")
    report.add_argument("--experiments", default="",
                        help="comma-separated MLflow experiments to read (default: every task's)")
    report.add_argument("--countries", default="",
                        help="comma-separated ISO 3166 alpha-3 codes for the regional what-if "
                             "(default: FRA,USA,DEU,CHN,IND)")
    report.add_argument("--include-tuning", nargs="?", const="true", default="false",
                        help="also compare the runs of `tracker tune` searches (default: false)")
    report.add_argument("--unit", default="kWh", choices=["kWh", "gCO2eq"],
                        help="energy or carbon per 1,000 inferences in the figures (default: kWh)")
    report.add_argument("--report-experiment", default="report", help="experiment of the report run (default: report)")
    report.add_argument("--no-tag-runs", dest="tag_runs", action="store_false",
                        help="do not tag the compared runs with their stars")


def _help(cls: type, name: str) -> str:
    return next(f.metadata["help"] for f in options_of(cls) if f.name == name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "tune":  # as typed: workers started on a cluster get it less the executor's flags
        args.argv = list(sys.argv[1:] if argv is None else argv)
    configure_logging()
    with signals_restored():
        return _command(args)


def _command(args: argparse.Namespace) -> int:
    try:
        if args.command == "tasks":
            return _list_tasks()
        if args.command == "study":
            return _study(args)
        if args.command == "tune":
            return _tune(vars(args))
        if args.command == "import-codecarbon":
            return _import(args)
        if args.command == "report":
            return _report(args)
        if args.command == "annotate":
            return _annotate(args)
        if args.command == "sync":
            return _sync()
        if args.command == "serve-bench":
            return _serve_bench(vars(args))
        return _run(vars(args))
    except UserError as err:
        print(f"tracker: error: {err}", file=sys.stderr)
        return 2
    except RunInterrupted as err:  # (said safely: a study's child may outlive the stderr it was given)
        say(f"tracker: run {err}; logged as KILLED with the energy measured so far")
        return 128 + getattr(signal, err.signal_name)
    except KeyboardInterrupt:  # before any run was made (loading a model, reading records)
        print("tracker: interrupted by SIGINT before a run was open; nothing was recorded", file=sys.stderr)
        return 128 + signal.SIGINT
    except TrackerError as err:  # something failed on the way (not a bad input): one line, exit 1
        print(f"tracker: error: {err}", file=sys.stderr)
        return 1


def _run(args: dict) -> int:
    from tracker.api import run

    args.pop("command")
    tags = _parse_tags(args.pop("tags"))
    report = run(**args, tags=tags)
    config = report.config
    m = report.metrics
    print(f"run {report.run_id} FINISHED in experiment '{report.experiment}'")
    inferences = int(m.get("inferences_measured") or config.n_samples)  # a GPU window may pass over them again
    print(f"  energy: {_fmt(m.get('energy_kwh'))} kWh for {inferences} inferences "
          f"({_fmt(m.get('energy_kwh_per_1k'))} kWh per 1,000); emissions: "
          f"{_fmt(m.get('emissions_g_per_output'))} gCO2eq per output")
    meaningful = report.tags.get("tracker.quality.meaningful") == "true"
    label = "meaningful" if meaningful else "NOT meaningful: built-in model/data"
    print(f"  quality ({label}): {_fmt(m.get('quality'))}; "
          f"CPU energy {report.tags.get('tracker.energy.cpu.method')}")
    print(f"  attributed to this run: {_fmt(m.get('energy_kwh'))} kWh of the {_fmt(m.get('machine_energy_kwh'))} kWh "
          f"the meter saw; this run used {_percent(m.get('cpu_time_share'))} of the busy CPU time; "
          + ("CONTENDED: " + report.tags["tracker.measurement.contended_reason"]
             if report.tags.get("tracker.measurement.contended") == "true"
             else "not contended: the run's threads and other processes' demand fit the CPUs it may use"))
    return 0


def _serve_bench(args: dict) -> int:
    from tracker.api import serve_bench

    args.pop("command")
    tags = _parse_tags(args.pop("tags"))
    result = serve_bench(**args, tags=tags)
    print(f"serve-bench {result.parent_run_id} FINISHED in experiment '{result.experiment}': {result.model}")
    for level in result.levels:
        m = level.metrics
        print(f"  {level.name}: {_fmt(m.get('energy_j_per_output_token'))} J per output token, "
              f"{_fmt(m.get('energy_j_per_request'))} J per request, {_fmt(m.get('output_tokens_per_s'))} tokens/s, "
              f"TTFT p90 {_fmt(m.get('ttft_ms_p90'))} ms, TPOT p90 {_fmt(m.get('tpot_ms_p90'))} ms, "
              f"{int(m.get('requests_failed', 0))} failed"
              + ("" if level.feasible else " (misses the latency targets)"))
    s = result.summary
    if "best_level" in s:
        against = (f"; carbon_reduction_x = {_fmt(s['carbon_reduction_x'])} against {s['baseline_level']} (95% "
                   f"interval {_fmt(s['carbon_reduction_x_ci95_low'])} to {_fmt(s['carbon_reduction_x_ci95_high'])})"
                   if s["best_level"] != s["baseline_level"] else "")
        print(f"  lowest carbon per output token within the targets: {s['best_level']} "
              f"({_fmt(s['best_emissions_g_per_output_token'])} gCO2eq per token){against}"
              + (f"; tied with {s['tie']} (their 95% intervals overlap; more --windows narrow them)"
                 if s.get("tie") else ""))
    else:
        print("  no level kept the latency targets")
    return 0


def _parse_tags(pairs: list[str]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--tag must be KEY=VALUE, got '{pair}'")
        tags[key.strip()] = value
    return tags


def _version() -> str:
    """The installed distribution's version (pyproject.toml's), else the package's own."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tracker")
    except PackageNotFoundError:
        from tracker import __version__

        return __version__


def _study(args: argparse.Namespace) -> int:
    from tracker.study import load_definition, run_study

    force = boolean("--force", args.force)
    placement = Placement.parse(executor=args.executor, address=args.address, per_node=args.per_node)
    remeasure = Remeasure.parse(remeasure=args.remeasure)
    overrides = {name: value for name, value in (("n_samples", args.n_samples), ("wait_for_quiet", args.wait_for_quiet))
                 if value not in (None, "")}
    definition = load_definition(args.definition, overrides)
    if args.dry_run:
        for combination in definition.combinations:
            print(combination.label)
        print(f"{len(definition.combinations)} runs in experiment '{definition.combinations[0].config.experiment_name}'")
        return 0
    from tracker.recording.store import check_tracking_server

    check_tracking_server()
    try:
        outcomes = run_study(definition, force=force, executor=placement.executor, address=placement.address,
                             per_node=placement.per_node, remeasure=remeasure.remeasure)
    except KeyboardInterrupt:  # the runs measuring were ended KILLED, with their energy, before this
        print(f"tracker: study {definition.name} interrupted by SIGINT; any run it was measuring ended KILLED with "
              "its energy so far, and the same command resumes it (FINISHED combinations are skipped)",
              file=sys.stderr)
        return 128 + signal.SIGINT
    print(f"study {definition.name}: {len(outcomes)} combinations")
    for o in outcomes:
        energy = _fmt(o.metrics.get("energy_kwh_per_1k")) if o.metrics else "-"
        print(f"  {o.status:<8} {o.combination.label}  kWh/1k={energy}  run={o.run_id or '-'}"
              + (f"  ({o.reason})" if o.reason and o.status != "SKIPPED" else "")
              + ("  CONTENDED" if o.contended else ""))
    contended = [o for o in outcomes if o.contended]
    if contended:
        print(f"{len(contended)} of {len(outcomes)} stayed contended after measuring again (--remeasure "
              f"{remeasure.remeasure}): their figures are less reliable (tag tracker.measurement.contended_reason, "
              f"e.g. {contended[0].contended}); measure them on a quieter machine or raise --wait-for-quiet",
              file=sys.stderr)
    failed = [o for o in outcomes if o.status in ("FAILED", "KILLED")]
    if failed:
        print(f"{len(failed)} of {len(outcomes)} failed; each run is FAILED in MLflow with its reason "
              "(tag tracker.error)", file=sys.stderr)
    return 1 if failed else 0


def _tune(args: dict) -> int:
    from tracker.api import tune

    args.pop("command")
    argv = args.pop("argv")
    placement = Placement.parse(**{f.name: args.pop(f.name) for f in options_of(Placement)})
    if placement.executor == "ray":
        return _tune_on_ray(argv, placement, args.get("storage") or DEFAULT_STORAGE)
    result = tune(**args | {"progress": False})
    summary = result.summary
    print(f"study {summary['study']}: {summary['trials']} trials")
    print(f"  baseline (batch 1, fp32): {_fmt(summary['baseline_emissions_g_per_output'])} gCO2eq per output "
          f"over {summary['baseline_measurements']} measurement(s), quality {_fmt(summary['reference_quality'])}")
    if "best_params" in summary:
        low, high = summary["carbon_reduction_x_ci95"]
        print(f"  best feasible: {summary['best_params']} (trial {summary['best_trial']}): "
              f"{_fmt(summary['best_emissions_g_per_output'])} gCO2eq per output, quality "
              f"{_fmt(summary['best_quality'])}; carbon_reduction_x = {summary['carbon_reduction_x']:.2f} "
              f"(95% interval {_fmt(low)} to {_fmt(high)})")
        if "tie" in summary:
            print(f"  TIE: {summary['tie']}")
    else:
        print("  no feasible trial: every trial failed or lost too much quality")
    return 0


def _tune_on_ray(argv: list[str], placement: Placement, storage: str) -> int:
    from tracker.recording.store import check_tracking_server
    from tracker.tuning.on_ray import run_workers

    code, output = run_workers(_without_flags(argv, [f.name for f in options_of(Placement)]),
                               workers=placement.workers, storage=storage, tracking_uri=check_tracking_server(),
                               address=placement.address, per_node=placement.per_node)
    print(output, end="")
    return code


def _without_flags(argv: list[str], names: list[str]) -> list[str]:
    """``argv`` less the given flags and their values (``--flag VALUE`` or ``--flag=VALUE``)."""
    flags = {"--" + name.replace("_", "-") for name in names}
    kept, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word in flags:
            skip = True
        elif word.split("=", 1)[0] not in flags:
            kept.append(word)
    return kept


def _import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tracker.import_codecarbon import ImportConfig, import_records
    from tracker.import_codecarbon.kinds import parse_rules

    config = ImportConfig(files=tuple(map(Path, args.files)), task=args.task, dataset=args.dataset,
                          dataset_from_file=args.dataset_from_file,
                          n_samples=integer("n_samples", args.n_samples, 1),
                          phases=tuple(map(Path, args.phases)), experiment=args.experiment,
                          model_kind=args.model_kind, model_kind_map=parse_rules(tuple(args.model_kind_map)),
                          replace=args.replace)
    try:
        summary = import_records(config)
    except RunInterrupted as err:  # no run is left KILLED: they are written whole, chunk by chunk
        print(f"tracker: import {err} between chunks of runs; the runs written are whole and FINISHED, and the "
              "same command imports the rest", file=sys.stderr)
        return 128 + getattr(signal, err.signal_name)
    phased = len(summary.imported) - summary.without_query_phase
    phases = f" (phases: {', '.join(sorted(summary.phase_names))})" if summary.phase_names else ""
    print(f"imported {len(summary.imported)} records as runs in experiment '{summary.experiment}': "
          f"{phased} with a query phase{phases}, {summary.without_query_phase} whole-record only; "
          f"{summary.already_imported} already imported"
          + (f"; {summary.replaced} imported before with other options replaced" if summary.replaced else ""))
    if summary.other_options:
        print(f"tracker: {summary.other_options} record(s) were imported before with other options and were "
              f"left as they were ({summary.example_difference}); add --replace to import them again in place",
              file=sys.stderr)
    return 0


def _annotate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tracker.annotate import AnnotateConfig, annotate, parse_aliases

    config = AnnotateConfig(quality=Path(args.quality) if args.quality else None,
                            parameters=Path(args.parameters) if args.parameters else None,
                            experiments=_listed(args.experiments), aliases=parse_aliases(tuple(args.alias)))
    result = annotate(config)
    print(f"annotated {result.runs} runs: quality on {result.runs_with_quality}, parameter counts on "
          f"{result.runs_with_parameters}" + (f"; {result.kept_measured_quality} kept their measured quality"
                                             if result.kept_measured_quality else ""))
    for what, models in (("quality", result.models_without_quality),
                         ("a parameter count", result.models_without_parameters)):
        if models:
            print(f"tracker: no {what} in the table for {len(models)} model(s): {', '.join(models)}; if the table "
                  "names them otherwise, add --alias THEIRS=OURS", file=sys.stderr)
    return 0


def _report(args: argparse.Namespace) -> int:
    from tracker.api import report

    result = report(output=args.output, experiments=_listed(args.experiments), countries=_listed(args.countries),
                    include_tuning=boolean("--include-tuning", args.include_tuning),
                    report_experiment=args.report_experiment, tag_runs=args.tag_runs, unit=args.unit)
    tables = "models.csv, tasks.csv, " + ("multipurpose.csv, " if len(result.multipurpose) else "") + "regional.csv"
    print(f"report run {result.run_id}: {len(result.models)} model rows, {len(result.tasks)} task(s); "
          f"written to {result.output}/ (report.html, report.md, {tables}, figures)")
    for task in result.tasks.itertuples():
        print(f"  {task.task:<30} {task.models:>3} models {task.runs:>4} runs  kWh per 1,000: mean "
              f"{_fmt(task.kwh_per_1k_mean)} (models {_fmt(task.kwh_per_1k_min)} to {_fmt(task.kwh_per_1k_max)})")
    for (task, family), rows in result.multipurpose.groupby(["task", "family"], sort=False):
        print(f"  {task} prompted, {family:<16} {rows['model'].nunique():>3} models {rows['runs'].sum():>4} runs  "
              f"kWh per 1,000: {_fmt(rows['kwh_per_1k_mean'].min())} to {_fmt(rows['kwh_per_1k_mean'].max())}, "
              f"{rows['x_task_specific'].median():.0f}x the task-specific models (median)")
    return 0


def _sync() -> int:
    import mlflow

    from tracker.recording.lifecycle import sync

    uploaded = sync()
    for run_id, status in uploaded:
        print(f"run {run_id} uploaded, {status}")
    print(f"{len(uploaded)} spooled run(s) uploaded to {mlflow.get_tracking_uri()}")
    return 0


def _listed(text: str) -> tuple[str, ...]:
    """A comma-separated flag's values, blanks dropped."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _list_tasks() -> int:
    from tracker.tasks import get_task, task_names

    for name in task_names():
        info = get_task(name).info()
        print(f"{info.name}\n  {info.description}\n  default model: {info.default_model}\n"
              f"  datasets: {', '.join(info.datasets)} (default {info.default_dataset})\n"
              f"  quality: {info.primary_metric}")
    return 0


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.1%}"


def _fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.3g}"
