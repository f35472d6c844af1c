"""Multi-purpose models: a seq2seq or causal language model prompted to do a task.

The paper's sharpest finding is that a general model prompted for a task (Flan-T5, BLOOMz) costs
far more than a model made for it. A run with such a model lands in the task's experiment tagged
``tracker.model.kind=multi-purpose``, so one chart compares both kinds. The task supplies the
prompt and turns the generated text back into a prediction it can score.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Any, Literal

from tracker.errors import ConfigError, ModelLoadError
from tracker.loading.builtin import BUILTINS, Architecture
from tracker.loading.remote_code import pretrained
from tracker.sources.models import ModelChoice
from tracker.tasks.base import BatchOutput, GenerationSettings, LoadedModel, Task, decode_generated, pad_on_the_left

# Instruction-tuned families: a seq2seq model of these names is prompted even on summarization,
# where a seq2seq model is otherwise the task's own kind.
_INSTRUCTION_TUNED = re.compile(r"flan|\bt0|mt0|bloomz|instruct|chat|tk-", re.IGNORECASE)
# Inputs longer than this many tokens are cut from the left (the instruction comes last).
MAX_PROMPT_TOKENS = 1024


@dataclass(frozen=True)
class ModelKind:
    kind: Literal["task-specific", "multi-purpose"]
    reason: str
    predictor: Any  # what loads the model and runs a batch: the task itself, or a PromptedModel


def decide_kind(task: Task, model: ModelChoice, requested: str) -> ModelKind:
    """Whether the model does the task with its own head or is prompted, and why."""
    if model.runs_as_logged:
        from tracker.sources.mlflow_models import PyfuncPredictor

        return ModelKind("task-specific", "an MLflow pyfunc model: run through its predict", PyfuncPredictor(task))
    if requested == "task-specific":
        return ModelKind("task-specific", "--model-kind task-specific", task)
    if requested == "auto" and task.prompt_template is None and model.name not in BUILTINS:
        return ModelKind("task-specific", f"{task.name} is not run by prompting", task)
    architecture = BUILTINS.get(model.name) or language_model_architecture(model)
    if requested == "multi-purpose":
        return _prompted(task, model, architecture, "--model-kind multi-purpose")
    if model.name in BUILTINS:
        return _prompted(task, model, architecture, f"{model.name} is a built-in multi-purpose model")
    if architecture is None:
        return ModelKind("task-specific", "the model has the task's own architecture", task)
    if architecture == "causal" or task.auto_model_class != "AutoModelForSeq2SeqLM":
        return _prompted(task, model, architecture,
                         f"a {architecture} language model on {task.name}: it is prompted")
    if _INSTRUCTION_TUNED.search(model.name):
        return _prompted(task, model, architecture, "an instruction-tuned seq2seq model (by its name)")
    return ModelKind("task-specific", "a seq2seq model on a seq2seq task", task)


def _prompted(task: Task, model: ModelChoice, architecture: Architecture | None, why: str) -> ModelKind:
    if task.prompt_template is None:
        raise ConfigError(f"task {task.name} cannot be prompted: multi-purpose models run "
                          "text-classification, question-answering and summarization")
    if architecture is None:
        raise ConfigError(f"model '{model.name}' is not a seq2seq or causal language model, so it "
                          "cannot be prompted; drop --model-kind multi-purpose")
    return ModelKind("multi-purpose", why, PromptedModel(task, architecture))


def language_model_architecture(model: ModelChoice) -> Architecture | None:
    """seq2seq or causal when the model's config names a generative LM class, else None."""
    from transformers import AutoConfig

    try:
        config = pretrained(AutoConfig, model.location, local_files_only=model.local_only)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot read the config of model '{model.name}': {err}") from err
    names = " ".join(getattr(config, "architectures", None) or [])
    if "ForConditionalGeneration" in names and getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    if "ForCausalLM" in names or "LMHeadModel" in names:
        return "causal"
    return None


class PromptedModel:
    """Runs a task by prompting a language model (a Predictor, like a task)."""

    def __init__(self, task: Task, architecture: Architecture) -> None:
        self.task = task
        self.architecture = architecture

    def load_model(self, source: str, *, local_only: bool) -> LoadedModel:
        import transformers

        tokenizer = pretrained(transformers.AutoTokenizer, source, local_files_only=local_only)
        tokenizer.truncation_side = "left"
        if self.architecture == "causal":
            pad_on_the_left(tokenizer)
            auto_class = transformers.AutoModelForCausalLM
        else:
            auto_class = transformers.AutoModelForSeq2SeqLM
        model = pretrained(auto_class, source, local_files_only=local_only)
        return LoadedModel(model=model.eval(), tokenizer=tokenizer)

    def predict(self, loaded: LoadedModel, inputs: list[Any], settings: GenerationSettings,
                device: Any) -> BatchOutput:
        import torch

        tokenizer, model = loaded.tokenizer, loaded.model
        prompts = [self.task.prompt(value) for value in inputs]
        limit = min(MAX_PROMPT_TOKENS, tokenizer.model_max_length)
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True,
                            max_length=limit).to(device)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*generation flags are not valid.*")
            output = model.generate(**encoded, max_new_tokens=settings.max_new_tokens,
                                    pad_token_id=tokenizer.pad_token_id)
        prompt_length = encoded["input_ids"].shape[1] if self.architecture == "causal" else None
        decoded = decode_generated(output, loaded, prompt_length)
        decoded.predictions = [self.task.parse_generation(t) for t in decoded.predictions]
        return decoded
