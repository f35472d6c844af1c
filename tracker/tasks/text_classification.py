"""Text classification: a sequence classifier picks a label; accuracy and macro-F1."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from tracker.loading.builtin import save_tiny_distilbert
from tracker.tasks import quality
from tracker.tasks.base import BatchOutput, DatasetSpec, GenerationSettings, LoadedModel, Task, texts_of
from tracker.tasks.registry import register

SENTIMENT = ("negative", "positive")
# Spellings of the same class in model configs and datasets.
_ALIASES = {"neg": "negative", "pos": "positive"}


@register
class TextClassification(Task):
    name = "text-classification"
    description = "Classify a text (sentiment) with a sequence classifier; accuracy and macro-F1."
    default_model = "distilbert/distilbert-base-uncased-finetuned-sst-2-english"
    default_dataset = "imdb"
    datasets = {
        "imdb": DatasetSpec("imdb", "stanfordnlp/imdb", "test", label_names=SENTIMENT),
        # SST-2's test labels are hidden (-1): the validation split is the one with labels.
        "sst2": DatasetSpec("sst2", "stanfordnlp/sst2", "validation", {"text": "sentence"},
                            label_names=SENTIMENT),
        "rotten_tomatoes": DatasetSpec("rotten_tomatoes", "cornell-movie-review-data/rotten_tomatoes",
                                       "test", label_names=SENTIMENT),
    }
    target_column = "label"
    primary_metric = "accuracy"
    auto_model_class = "AutoModelForSequenceClassification"
    prompt_template = "{text}\n\nIs the sentiment of this review positive or negative?"

    def __init__(self) -> None:
        self._label_names: tuple[str, ...] = SENTIMENT

    def predict(self, loaded: LoadedModel, texts: list[Any], settings: GenerationSettings,
                device: Any) -> BatchOutput:
        import torch

        inputs = loaded.tokenizer(texts, return_tensors="pt", padding=True, truncation=True).to(device)
        with torch.inference_mode():
            logits = loaded.model(**inputs).logits
        id2label = loaded.model.config.id2label
        return BatchOutput([self._normalise(id2label[int(i)]) for i in logits.argmax(dim=-1)])

    def references(self, targets: list[Any], spec: DatasetSpec | None) -> list[Any]:
        if spec is not None and spec.label_names:
            self._label_names = spec.label_names
        return [self._normalise(t) for t in targets]

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        return {"accuracy": quality.accuracy(predictions, references),
                "f1": quality.macro_f1(predictions, references)}

    def parse_generation(self, text: str) -> Any:
        """The first class name the model wrote; "unanswered" (always wrong) when it wrote none."""
        words = re.findall(r"[a-z]+", text.lower())
        names = {name: name for name in self._label_names} | {
            alias: name for alias, name in _ALIASES.items() if name in self._label_names}
        return next((names[w] for w in words if w in names), "unanswered")

    def _normalise(self, label: Any) -> str:
        """One spelling per class: an index or LABEL_k becomes the dataset's k-th class name."""
        text = str(label).strip().lower()
        match = re.fullmatch(r"(?:label_)?(\d+)", text)
        if match and int(match.group(1)) < len(self._label_names):
            return self._label_names[int(match.group(1))]
        return _ALIASES.get(text, text)

    def build_tiny_model(self, folder: Path, rows: list[dict[str, Any]]) -> None:
        labels = {0: "NEGATIVE", 1: "POSITIVE"}
        save_tiny_distilbert(folder, texts_of(rows), "DistilBertForSequenceClassification",
                             id2label=labels, label2id={v: k for k, v in labels.items()})

    def sample_rows(self, count: int, rng: random.Random, folder: Path) -> list[dict[str, Any]]:
        return [_review(rng) for _ in range(count)]


_THINGS = ["film", "movie", "story", "plot", "script", "soundtrack", "ending", "cast", "director's work",
           "dialogue", "camera work", "lead performance"]
_PRAISE = ["wonderful", "moving", "brilliant", "delightful", "gripping", "charming", "superb",
           "heartfelt", "funny", "beautiful", "clever", "unforgettable"]
_SCORN = ["dull", "tedious", "clumsy", "boring", "shallow", "predictable", "awful", "lifeless",
          "confusing", "forgettable", "lazy", "painful"]
_OPENERS = ["Honestly,", "I have to say", "From start to finish", "In my opinion", "Sadly,", "Frankly,",
            "All in all,", "Without a doubt"]
_GOOD_CLOSE = ["I would watch it again.", "Highly recommended.", "Worth every minute.",
               "It stayed with me for days."]
_BAD_CLOSE = ["I would not watch it again.", "Save your money.", "A waste of an evening.",
              "I left halfway through."]


def _review(rng: random.Random) -> dict[str, Any]:
    label = rng.randint(0, 1)
    words, close = (_PRAISE, _GOOD_CLOSE) if label else (_SCORN, _BAD_CLOSE)
    first, second = rng.sample(_THINGS, 2)
    text = (f"{rng.choice(_OPENERS)} the {first} was {rng.choice(words)} and the {second} "
            f"felt {rng.choice(words)}. {rng.choice(close)}")
    return {"text": text, "label": label}
