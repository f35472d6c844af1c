"""The one validated configuration of a measured run.

Values arrive as strings from the CLI and the MLproject entry point; ``RunConfig.parse`` checks
each one and raises a ConfigError that names the flag, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from tracker.errors import ConfigError
from tracker.loading.precision import PRECISIONS

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
TRACKING_MODES = ("machine", "process")
ATTENTIONS = ("sdpa", "eager")  # transformers' attention implementations that run on any device
MODEL_KINDS = ("auto", "task-specific", "multi-purpose")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    task: str
    model: str | None = None  # None: the task's default
    dataset: str | None = None  # None: the task's default
    n_samples: int = 1000  # the paper's protocol: 1,000 inferences
    batch_size: int = 1  # the paper's protocol: one input at a time
    precision: str = "fp32"
    device: str = "auto"
    repeats: int = 1
    min_duration_s: float = 0.0  # measure more query windows until they cover this long (0: repeats only)
    wait_for_quiet: float = 0.0  # seconds to wait, before each window, for other processes to calm down
    warmup: int = 1  # batches run before measuring, not counted
    country: str | None = None
    carbon_intensity: float | None = None  # gCO2eq/kWh, overrides the country's mix
    max_new_tokens: int = 15  # the paper's limit for generated summaries
    image_size: int | None = None  # text-to-image: pixels per side; None: the model's default
    num_inference_steps: int = 50  # text-to-image: denoising steps (diffusers' default)
    guidance_scale: float = 7.5  # text-to-image: classifier-free guidance (diffusers' default)
    model_kind: str = "auto"  # task-specific, multi-purpose (prompted), or auto: decided from the model
    experiment: str | None = None  # None: named after the task
    seed: int = 0
    tracking_mode: str = "machine"
    trust_remote_code: bool = False  # let a model's own code (auto_map, custom pipelines) run
    text_column: str | None = None
    target_column: str | None = None
    progress: bool = True
    log_inputs: bool = True  # the first inputs in predictions_sample.csv (False: predictions only)
    # Knobs that change the cost of an output besides batch size and precision (tune can search them).
    threads: int | None = None  # torch's CPU threads; None: torch's default (the physical cores)
    sort_by_length: bool = False  # batch inputs of similar length together: less padding
    attention: str | None = None  # sdpa or eager; None: the model's default
    compile: bool = False  # torch.compile the model (compiled during warm-up, not measured)

    @classmethod
    def parse(cls, **raw: Any) -> RunConfig:
        """Build from raw (often string) values; empty strings and None mean "default"."""
        values = {k: (None if isinstance(v, str) and v.strip() == "" else v) for k, v in raw.items()}
        values = {k: v for k, v in values.items() if v is not None}
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        if "task" not in values:
            raise ConfigError("a task is required: pass --task NAME (see `tracker tasks`)")
        for name, minimum in (("n_samples", 1), ("batch_size", 1), ("repeats", 1), ("warmup", 0),
                              ("max_new_tokens", 1), ("seed", 0), ("image_size", 8),
                              ("num_inference_steps", 1), ("threads", 1)):
            if name in values:
                values[name] = _integer(name, values[name], minimum)
        for name in ("trust_remote_code", "log_inputs", "sort_by_length", "compile"):
            if name in values:
                values[name] = boolean(flag(name), values[name])
        for name in ("carbon_intensity", "guidance_scale", "min_duration_s", "wait_for_quiet"):
            if name in values:
                values[name] = _number(name, values[name])
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        from tracker.tasks import get_task

        get_task(self.task)  # unknown task: "did you mean"
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision '{self.precision}': choose one of {', '.join(PRECISIONS)}")
        if not _DEVICE.match(self.device):
            raise ConfigError(f"unknown device '{self.device}': use auto, cpu, cuda, cuda:N or mps")
        if self.tracking_mode not in TRACKING_MODES:
            raise ConfigError(f"unknown tracking mode '{self.tracking_mode}': use machine or process")
        if self.model_kind not in MODEL_KINDS:
            raise ConfigError(f"unknown model kind '{self.model_kind}': use {', '.join(MODEL_KINDS)}")
        if self.attention is not None and self.attention not in ATTENTIONS:
            raise ConfigError(f"unknown attention '{self.attention}': use {' or '.join(ATTENTIONS)}")
        if self.guidance_scale < 0:
            raise ConfigError(f"--guidance-scale must be >= 0, got {self.guidance_scale:g}")
        if self.carbon_intensity is not None and not 0 <= self.carbon_intensity < math.inf:
            raise ConfigError(f"--carbon-intensity must be a finite number >= 0 gCO2eq/kWh, got {self.carbon_intensity:g}")
        for name in ("min_duration_s", "wait_for_quiet"):
            value = getattr(self, name)
            if not 0 <= value < math.inf:
                raise ConfigError(f"{flag(name)} must be a finite number of seconds >= 0, got {value:g}")

    def check_inputs(self) -> None:
        """Check what the run reads (model folder or URI, dataset file) without torch, MLflow or
        the network, so that a wrong path is answered in about the time of ``--help``."""
        from tracker.loading.builtin import BUILTIN_DATASET, BUILTIN_MODEL, BUILTINS
        from tracker.sources.data import (
            Columns,
            check_dataset_location,
            check_file_columns,
        )
        from tracker.sources.mlflow_models import check_model_uri, is_model_uri
        from tracker.sources.models import check_model_location
        from tracker.tasks import get_task

        if self.model is not None and self.model != BUILTIN_MODEL and self.model not in BUILTINS:
            if is_model_uri(self.model):
                check_model_uri(self.model)
            else:
                check_model_location(self.model, trust_remote_code=self.trust_remote_code)
        task = get_task(self.task)
        if self.dataset is not None and self.dataset != BUILTIN_DATASET and self.dataset not in task.datasets:
            path = check_dataset_location(task, self.dataset)
            if path is not None:
                check_file_columns(task, path, Columns(self.text_column, self.target_column))

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.task

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Identifies what is measured: equal for runs that differ only in display or destination.

        Logged as the tag ``tracker.config_key``; a study skips a combination that already has a
        FINISHED run with the same key.
        """
        # Waiting for quiet changes when a window starts, not what it measures. Settings added after
        # keys were first logged count only when set, so earlier runs keep matching.
        measured = {k: v for k, v in self.as_dict().items()
                    if k not in ("progress", "experiment", "wait_for_quiet", "log_inputs")
                    and not (k == "min_duration_s" and v == 0)
                    and not (k in ("trust_remote_code", "sort_by_length", "compile") and not v)
                    and not (k in ("threads", "attention") and v is None)}
        return hashlib.sha256(json.dumps(measured, sort_keys=True).encode()).hexdigest()[:16]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def boolean(name: str, value: Any) -> bool:
    """true/false, 1/0, yes/no (any case), or a bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{name} takes true or false, got '{value}'")
    return text in ("true", "1", "yes")


def _integer(name: str, value: Any, minimum: int) -> int:
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is None or not number.is_integer() or number < minimum:
        kind = "a positive whole number" if minimum == 1 else f"a whole number >= {minimum}"
        raise ConfigError(f"{flag(name)} must be {kind}, got '{text}'")
    return int(number)


def _number(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag(name)} must be a number, got '{value}'") from None
