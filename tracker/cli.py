"""The ``tracker`` command: ``tracker run`` (one measured run) and ``tracker tasks``.

Flags mirror the MLproject ``main`` entry point's parameters in kebab case. User mistakes print
one line and exit 2; an interrupted run exits 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys

from tracker.config import RunConfig
from tracker.errors import RunInterrupted, UserError

# Each run parameter: (flag, help). Values stay strings here; RunConfig.parse validates them.
RUN_FLAGS = {
    "task": "task to run (see `tracker tasks`)",
    "model": "Hugging Face Hub id, local folder, or builtin-tiny (default: the task's)",
    "dataset": "study dataset name, local file (csv/jsonl/json/parquet), Hub id, or builtin",
    "n_samples": "inferences per measured query phase (default 1000, as in the paper)",
    "batch_size": "inputs per forward pass (default 1, as in the paper)",
    "precision": "fp32, fp16, bf16 or int8 (dynamic quantization, CPU) (default fp32)",
    "device": "auto, cpu, cuda, cuda:N or mps (default auto)",
    "repeats": "measured repetitions of the query phase (default 1)",
    "warmup": "batches run before measuring, not counted (default 1)",
    "country": "ISO 3166 alpha-3 code of the grid (default: CodeCarbon config, else USA)",
    "carbon_intensity": "gCO2eq/kWh, overrides the country's grid mix",
    "max_new_tokens": "generated tokens per output, generative tasks (default 15)",
    "image_size": "text-to-image: image height and width in pixels (default: the model's)",
    "num_inference_steps": "text-to-image: denoising steps (default 50)",
    "guidance_scale": "text-to-image: classifier-free guidance scale (default 7.5)",
    "model_kind": "auto, task-specific, or multi-purpose (a prompted LM; auto decides from the model)",
    "experiment": "MLflow experiment (default: the task's name)",
    "seed": "random seed (default 0)",
    "tracking_mode": "CodeCarbon tracking mode: machine or process (default machine)",
    "text_column": "input column of a custom dataset (text, question, image or audio path)",
    "target_column": "reference/label column of a custom dataset",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tracker", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="measure one model on one task and log it to MLflow")
    for name, help_text in RUN_FLAGS.items():
        run.add_argument("--" + name.replace("_", "-"), dest=name, help=help_text,
                         required=name == "task")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    commands.add_parser("tasks", help="list the tasks with their default models and datasets")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="tracker: %(levelname)s: %(message)s")
    logging.getLogger("tracker").setLevel(logging.INFO)
    try:
        if args.command == "tasks":
            return _list_tasks()
        return _run(vars(args))
    except UserError as err:
        print(f"tracker: error: {err}", file=sys.stderr)
        return 2
    except RunInterrupted as err:
        print(f"tracker: run {err}; logged as KILLED with the energy measured so far", file=sys.stderr)
        return 128 + getattr(signal, err.signal_name)


def _run(args: dict) -> int:
    args.pop("command")
    config = RunConfig.parse(**args)
    _quiet_libraries()
    from tracker.session import measure

    report = measure(config)
    m = report.metrics
    print(f"run {report.run_id} FINISHED in experiment '{report.experiment}'")
    print(f"  energy: {_fmt(m.get('energy_kwh'))} kWh for {config.n_samples} inferences "
          f"({_fmt(m.get('energy_kwh_per_1k'))} kWh per 1,000); emissions: "
          f"{_fmt(m.get('emissions_g_per_output'))} gCO2eq per output")
    meaningful = report.tags.get("tracker.quality.meaningful") == "true"
    label = "meaningful" if meaningful else "NOT meaningful: built-in model/data"
    print(f"  quality ({label}): {_fmt(m.get('quality'))}; "
          f"CPU energy {report.tags.get('tracker.energy.cpu.method')}")
    return 0


def _list_tasks() -> int:
    from tracker.tasks import get_task, task_names

    for name in task_names():
        info = get_task(name).info()
        print(f"{info.name}\n  {info.description}\n  default model: {info.default_model}\n"
              f"  datasets: {', '.join(info.datasets)} (default {info.default_dataset})\n"
              f"  quality: {info.primary_metric}")
    return 0


def _quiet_libraries() -> None:
    """Our progress bar is the one that matters; transformers' loading bars are noise."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    try:
        import diffusers
    except ImportError:
        return
    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()


def _fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.3g}"
