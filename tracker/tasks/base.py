"""What a task is: how to read its data, load its model, run a batch, and score the outputs."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tracker.loading.remote_code import pretrained


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset of the study, by short name: where it lives on the Hub and how to read it."""

    name: str
    hub_id: str
    split: str
    # The task's column name -> the dataset's, where they differ.
    columns: dict[str, str] = field(default_factory=dict)
    config: str | None = None
    # For classification: the class names in label-index order (read from the Hub when not given).
    label_names: tuple[str, ...] | None = None
    # How the task reads this dataset's targets when their layout differs between datasets.
    layout: str = ""


@dataclass
class LoadedModel:
    """A model and what prepares its inputs (tokenizer, image processor, ...), as loaded."""

    model: Any
    tokenizer: Any = None
    processor: Any = None


@dataclass
class GenerationSettings:
    """Knobs of generative tasks; recorded as params so differing runs are never compared blindly."""

    max_new_tokens: int = 15
    image_size: int | None = None  # None: the model's own default
    num_inference_steps: int = 50
    guidance_scale: float = 7.5


@dataclass
class BatchOutput:
    predictions: list[Any]
    generated_tokens: int = 0


@dataclass
class TaskInfo:
    """The facts about a task that the CLI lists and the run logs."""

    name: str
    description: str
    default_model: str
    default_dataset: str
    datasets: list[str] = field(default_factory=list)
    primary_metric: str = ""


class Task(ABC):
    """One inference task. Subclasses live one per file and register with ``@register``.

    Data flows as: dataset rows (dicts keyed by the task's column names) -> ``example`` -> one
    input and one target per row -> batches of inputs to ``predict`` -> ``references`` and
    ``score``. Inputs are whatever the task's models take: a string, a question with its context,
    an image, an audio clip.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    default_model: ClassVar[str]
    default_dataset: ClassVar[str]
    datasets: ClassVar[dict[str, DatasetSpec]]
    # Column names of local files and the built-in sample data. --text-column renames the input
    # column, --target-column the target; other columns a task reads are listed in extra_columns.
    input_column: ClassVar[str] = "text"
    target_column: ClassVar[str | None] = None
    extra_columns: ClassVar[tuple[str, ...]] = ()
    primary_metric: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    # Generative tasks report energy per generated token.
    generative: ClassVar[bool] = False
    # The GenerationSettings fields that change this task's work, logged as params.
    settings_params: ClassVar[tuple[str, ...]] = ()
    # The transformers Auto classes that load the task's models and prepare their inputs.
    auto_model_class: ClassVar[str] = ""
    preprocessor_class: ClassVar[str] = "AutoTokenizer"  # or "AutoImageProcessor", ...
    # Rows of the built-in sample dataset (fewer where each row is a media file).
    sample_size: ClassVar[int] = 2000

    def missing_requirement(self) -> str | None:
        """What must be installed for this task, when it is not; checked before any run starts."""
        return None

    @property
    def columns(self) -> tuple[str, ...]:
        target = (self.target_column,) if self.target_column else ()
        return (self.input_column, *self.extra_columns, *target)

    def example(self, row: dict[str, Any], base: Path | None) -> tuple[Any, Any] | None:
        """One input and its target from a dataset row; None skips a row the task cannot use.

        ``base`` is the folder of a local dataset file, against which media paths resolve.
        """
        target = row[self.target_column] if self.target_column else None
        value = row[self.input_column]
        return ("" if value is None else str(value)), target

    def import_code(self) -> None:
        """Import the libraries the task's models run on (outside the measured load phase)."""
        import transformers

        getattr(transformers, self.auto_model_class or "AutoModel")
        getattr(transformers, self.preprocessor_class)

    def load_model(self, source: str, *, local_only: bool) -> LoadedModel:
        """Load the model and its tokenizer or processor from a Hub id or a local folder
        (fp32, CPU, eval mode)."""
        import transformers

        prepare = pretrained(getattr(transformers, self.preprocessor_class), source,
                             local_files_only=local_only)
        model = pretrained(getattr(transformers, self.auto_model_class), source,
                           local_files_only=local_only)
        if self.preprocessor_class == "AutoTokenizer":
            return LoadedModel(model=model.eval(), tokenizer=prepare)
        return LoadedModel(model=model.eval(), processor=prepare)

    @abstractmethod
    def predict(self, loaded: LoadedModel, inputs: list[Any], settings: GenerationSettings,
                device: Any) -> BatchOutput:
        """Run one batch of inferences."""

    def references(self, targets: list[Any], spec: DatasetSpec | None) -> list[Any]:
        """Turn the dataset's targets into what ``score`` compares predictions with."""
        return targets

    @abstractmethod
    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        """Quality metrics by their usual names; ``primary_metric`` among them."""

    def model_quality(self, loaded: LoadedModel, inputs: list[Any], predictions: list[Any],
                      references: list[Any], settings: GenerationSettings, device: Any) -> tuple[dict[str, float], str | None]:
        """Quality figures that need a model (perplexity, CLIP score), computed after measuring.

        Returns the figures and, when they could not be computed, the reason.
        """
        return {}, None

    def resolved_settings(self, loaded: LoadedModel, settings: GenerationSettings) -> dict[str, Any]:
        """The settings that apply, with defaults that only the loaded model knows filled in."""
        return {name: getattr(settings, name) for name in self.settings_params}

    def describe_input(self, value: Any) -> str:
        """The input as text for the prediction sample, which cuts it short."""
        return str(value)

    def packaged_default(self) -> tuple[Path, str] | None:
        """The default model's real weights from an installed package, and the package's name."""
        return None

    @abstractmethod
    def build_tiny_model(self, folder: Path, rows: list[dict[str, Any]]) -> None:
        """Write a randomly initialised model of the task's real architecture with ``save_pretrained``.

        ``rows`` are the built-in sample dataset's, for training a tokenizer on its texts.
        """

    @abstractmethod
    def sample_rows(self, count: int, rng: random.Random, folder: Path) -> list[dict[str, Any]]:
        """Rows of the built-in sample dataset, keyed by ``columns``; media files go in ``folder``."""

    # Multi-purpose models do the task when prompted: tasks that support it set a template with
    # the instruction last, so that truncating a long input from the left keeps it.
    prompt_template: ClassVar[str | None] = None

    def prompt(self, value: Any) -> str:
        return self.prompt_template.format(text=value)  # type: ignore[union-attr]

    def parse_generation(self, text: str) -> Any:
        """A prompted model's generated text as a prediction ``score`` understands."""
        return text.strip()

    def info(self) -> TaskInfo:
        return TaskInfo(
            name=self.name,
            description=self.description,
            default_model=self.default_model,
            default_dataset=self.default_dataset,
            datasets=sorted(self.datasets),
            primary_metric=self.primary_metric,
        )


def texts_of(rows: list[dict[str, Any]]) -> list[str]:
    """Every string in the rows, for training a tiny model's tokenizer."""
    texts: list[str] = []
    for row in rows:
        for value in row.values():
            if isinstance(value, str):
                texts.append(value)
            elif isinstance(value, list):
                texts.extend(v for v in value if isinstance(v, str))
    return texts


def class_name(label: Any, names: tuple[str, ...] | None, aliases: dict[str, str] | None = None) -> str:
    """One spelling per class: lower case, and an index or LABEL_k becomes the k-th class name."""
    import re

    text = str(label).strip().lower().replace("_", " ")
    match = re.fullmatch(r"(?:label )?(\d+)", text)
    if match and names and int(match.group(1)) < len(names):
        return names[int(match.group(1))].strip().lower().replace("_", " ")
    return (aliases or {}).get(text, text)


def input_dtype(model: Any):
    """The dtype of a model's float inputs (pixels, audio): half precision for fp16/bf16 models."""
    import torch

    dtype = next(model.parameters()).dtype
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32


def count_generated(ids: Any, eos_token_id: int | list[int] | None) -> int:
    """Tokens generated per row up to and including the first end-of-sequence token.

    What follows EOS is padding added for the batch; a pad id before it is a token the model
    generated (random tiny models do), so padding cannot be told apart by its id.
    """
    eos = set(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id]) - {None}
    total = 0
    for row in ids.tolist():
        end = next((i for i, token in enumerate(row) if token in eos), None)
        total += len(row) if end is None else end + 1
    return total


def decode_generated(output: Any, loaded: LoadedModel, prompt_length: int | None = None) -> BatchOutput:
    """The new part of ``generate``'s output, decoded and stripped, with its token count.

    A causal model returns its prompt first (``prompt_length`` tokens); an encoder-decoder model
    starts with its decoder start token, which was not generated.
    """
    generated = output[:, 1:] if prompt_length is None else output[:, prompt_length:]
    count = count_generated(generated, loaded.model.generation_config.eos_token_id)
    texts = loaded.tokenizer.batch_decode(generated, skip_special_tokens=True)
    return BatchOutput([t.strip() for t in texts], generated_tokens=count)


def pad_on_the_left(tokenizer: Any) -> Any:
    """A causal model continues from the right end of its input, so batches pad on the left; a
    tokenizer without a pad token (GPT-2, ...) pads with its end-of-sequence token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
