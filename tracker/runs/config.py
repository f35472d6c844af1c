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
from typing import TYPE_CHECKING, Any

from tracker.errors import ConfigError
from tracker.loading.precision import PRECISIONS
from tracker.options import counted, flag, option, parse_values

if TYPE_CHECKING:
    from tracker.sources.reference import ModelReference

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
TRACKING_MODES = ("machine", "process")
ATTENTIONS = ("sdpa", "eager")  # transformers' attention implementations that run on any device
MODEL_KINDS = ("auto", "task-specific", "multi-purpose")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    task: str = option(help="task to run (see `tracker tasks`)", param="always")
    model: str | None = option(  # None: the task's default
        help="Hugging Face Hub id, local folder, models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH, "
             "or builtin-tiny (default: the task's)")
    dataset: str | None = option(  # None: the task's default
        help="study dataset name, local file (csv/jsonl/json/parquet), Hub id, or builtin (default: the task's)")
    n_samples: int = option(1000, minimum=1, param="always",  # the paper's protocol: 1,000 inferences
                            help="inferences per measured query phase (default 1000, as in the paper)")
    batch_size: int = option(1, minimum=1, param="always",  # the paper's protocol: one input at a time
                             help="inputs per forward pass (default 1, as in the paper)")
    precision: str = option("fp32", param="always",
                            help="fp32, fp16, bf16 or int8 (dynamic quantization, CPU) (default fp32)")
    device: str = option("auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    repeats: int = option(1, minimum=1, param="always", help="measured repetitions of the query phase (default 1)")
    min_duration_s: float = option(0.0, key="when_set", param="when_set",
                                   help="measure more query windows until they cover this many seconds "
                                        "(default 0: repeats only)")
    # Waiting for quiet changes when a window starts, not what it measures: not in the key.
    wait_for_quiet: float = option(0.0, key="never", param="when_set", param_name="wait_for_quiet_s",
                                   help="before each window (and before a study or search measures a contended "
                                        "run again), wait up to this many seconds for other processes to leave "
                                        "the run its CPUs (default 0)")
    warmup: int = option(1, minimum=0, help="batches run before measuring, not counted (default 1)")
    country: str | None = option(help="ISO 3166 alpha-3 code of the grid (default: CodeCarbon config, else USA)")
    carbon_intensity: float | None = option(param="when_set", param_name="carbon_intensity_override_g_per_kwh",
                                            help="gCO2eq/kWh, overrides the country's grid mix")
    max_new_tokens: int = option(15, minimum=1,  # the paper's limit for generated summaries
                                 help="generated tokens per output, generative tasks (default 15)")
    image_size: int | None = option(minimum=8,
                                    help="text-to-image: image height and width in pixels (default: the model's)")
    num_inference_steps: int = option(50, minimum=1, help="text-to-image: denoising steps (default 50)")
    guidance_scale: float = option(7.5, help="text-to-image: classifier-free guidance scale (default 7.5)")
    model_kind: str = option("auto", help="auto, task-specific, or multi-purpose (a prompted LM; auto decides "
                                          "from the model)")
    experiment: str | None = option(key="never", help="MLflow experiment (default: the task's name)")
    seed: int = option(0, minimum=0, param="always", help="random seed (default 0)")
    tracking_mode: str = option("machine", help="CodeCarbon tracking mode: machine or process (default machine)")
    trust_remote_code: bool = option(False, key="when_set",
                                     help="let a model's own code (config.json auto_map) run: only for code you "
                                          "trust (default: refused)")
    text_column: str | None = option(help="input column of a custom dataset (text, question, image or audio path)")
    target_column: str | None = option(help="reference/label column of a custom dataset")
    progress: bool = option(True, key="never", negative="--no-progress", help="show the progress bar (default: true)")
    log_inputs: bool = option(True, key="never", param="when_set", negative="--no-log-inputs",
                              help="copy the first inputs into predictions_sample.csv (default: true; false keeps "
                                   "inputs out of the run: it holds predictions and references)")
    # Knobs that change the cost of an output besides batch size and precision (tune can search them);
    # threads and attention are logged as resolved, after loading.
    threads: int | None = option(minimum=1, key="when_set",
                                 help="torch CPU threads (default: torch's, the physical cores)")
    sort_by_length: bool = option(False, key="when_set", param="when_set",
                                  help="batch inputs of similar length together, so batches carry less padding "
                                       "(default: false)")
    attention: str | None = option(key="when_set",
                                   help="attention implementation, sdpa or eager (default: the model's)")
    compile: bool = option(False, key="when_set", param="when_set",
                           help="torch.compile the model; compiled during the unmeasured warm-up (default: false)")

    @classmethod
    def parse(cls, **raw: Any) -> RunConfig:
        """Build from raw (often string) values; empty strings and None mean "default"."""
        values = parse_values(cls, raw)
        if "task" not in values:
            raise ConfigError("a task is required: pass --task NAME (see `tracker tasks`)")
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

    def check_inputs(self) -> ModelReference:
        """Check what the run reads (model folder or URI, dataset file) without torch, MLflow or
        the network, so that a wrong path is answered in about the time of ``--help``; the model
        reference, classified (the session resolves the model from it)."""
        from tracker.loading.builtin import BUILTIN_DATASET
        from tracker.sources.data import Columns, check_dataset_location, check_file_columns
        from tracker.sources.reference import classify_model
        from tracker.tasks import get_task

        reference = classify_model(self.model, trust_remote_code=self.trust_remote_code)
        task = get_task(self.task)
        if self.dataset is not None and self.dataset != BUILTIN_DATASET and self.dataset not in task.datasets:
            path = check_dataset_location(task, self.dataset)
            if path is not None:
                check_file_columns(task, path, Columns(self.text_column, self.target_column))
        return reference

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
        return hashlib.sha256(json.dumps(counted(self, "key"), sort_keys=True).encode()).hexdigest()[:16]

    def params(self) -> dict[str, Any]:
        """The options logged as MLflow params by their contract names (the run adds what it resolves)."""
        return counted(self, "param")
