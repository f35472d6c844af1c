"""What a task is: how to load its model and data, run a batch, and score the outputs."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset of the study, by short name: where it lives on the Hub and which columns to read."""

    name: str
    hub_id: str
    split: str
    text_column: str
    target_column: str
    config: str | None = None
    # For classification: the class names in label-index order.
    label_names: tuple[str, ...] | None = None


@dataclass
class LoadedModel:
    """A model and its tokenizer, as loaded (fp32, on the CPU) before precision and device."""

    model: Any
    tokenizer: Any


@dataclass
class GenerationSettings:
    """Knobs of generative tasks; recorded as params so differing runs are never compared blindly."""

    max_new_tokens: int


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
    """One inference task. Subclasses live one per file and register with ``@register``."""

    name: ClassVar[str]
    description: ClassVar[str]
    default_model: ClassVar[str]
    default_dataset: ClassVar[str]
    datasets: ClassVar[dict[str, DatasetSpec]]
    # Column names read from local files and the built-in sample data.
    text_column: ClassVar[str] = "text"
    target_column: ClassVar[str]
    primary_metric: ClassVar[str]
    generative: ClassVar[bool] = False
    # The transformers Auto class that loads the task's models, e.g. "AutoModelForSeq2SeqLM".
    auto_model_class: ClassVar[str]

    def load_model(self, source: str, *, local_only: bool) -> LoadedModel:
        """Load model and tokenizer from a Hub id or a local folder (fp32, CPU, eval mode)."""
        import transformers

        tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        auto_class = getattr(transformers, self.auto_model_class)
        model = auto_class.from_pretrained(source, local_files_only=local_only)
        return LoadedModel(model=model.eval(), tokenizer=tokenizer)

    @abstractmethod
    def predict(self, loaded: LoadedModel, texts: list[str], settings: GenerationSettings,
                device: Any) -> BatchOutput:
        """Run one batch of inferences."""

    @abstractmethod
    def references(self, targets: list[Any], spec: DatasetSpec | None) -> list[Any]:
        """Turn the dataset's target column into what ``score`` compares predictions with."""

    @abstractmethod
    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        """Quality metrics by their usual names; ``primary_metric`` among them."""

    @abstractmethod
    def build_tiny_model(self, folder: Path, sample_texts: list[str]) -> None:
        """Write a randomly initialised model of the task's real architecture with ``save_pretrained``."""

    @abstractmethod
    def sample_rows(self, count: int, rng: random.Random) -> list[dict[str, Any]]:
        """Rows of the built-in sample dataset, with ``text_column`` and ``target_column``."""

    def info(self) -> TaskInfo:
        return TaskInfo(
            name=self.name,
            description=self.description,
            default_model=self.default_model,
            default_dataset=self.default_dataset,
            datasets=sorted(self.datasets),
            primary_metric=self.primary_metric,
        )
