"""Fill-mask: predict a masked word; top-1 accuracy. The project chooses the word to mask."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from tracker.loading.builtin import save_tiny_distilbert
from tracker.tasks import quality
from tracker.tasks.base import BatchOutput, DatasetSpec, GenerationSettings, LoadedModel, Task, texts_of
from tracker.tasks.prose import paragraph
from tracker.tasks.registry import register

MASK = "<mask>"  # replaced by the model's own mask token at prediction time
WINDOW_WORDS = 100  # the text around the masked word, so every input fits the model


@register
class FillMask(Task):
    name = "fill-mask"
    description = ("Predict a masked word (the alphabetic word of 4+ letters nearest the middle of "
                   "the first 100 words); top-1 accuracy.")
    default_model = "google-bert/bert-base-uncased"
    default_dataset = "bookcorpus"
    datasets = {
        "bookcorpus": DatasetSpec("bookcorpus", "rojagtap/bookcorpus", "train"),
        "c4": DatasetSpec("c4", "allenai/c4", "validation", config="en"),
        "oscar": DatasetSpec("oscar", "oscar-corpus/oscar", "train", config="unshuffled_deduplicated_en"),
    }
    primary_metric = "accuracy"
    auto_model_class = "AutoModelForMaskedLM"

    def example(self, row: dict[str, Any], base: Path | None) -> tuple[Any, Any] | None:
        return mask_word(str(row["text"] or ""))

    def predict(self, loaded: LoadedModel, inputs: list[Any], settings: GenerationSettings,
                device: Any) -> BatchOutput:
        import torch

        tokenizer = loaded.tokenizer
        texts = [text.replace(MASK, tokenizer.mask_token) for text in inputs]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, truncation=True).to(device)
        with torch.inference_mode():
            logits = loaded.model(**encoded).logits
        rows, positions = (encoded["input_ids"] == tokenizer.mask_token_id).nonzero(as_tuple=True)
        words = [""] * len(texts)  # a mask lost to truncation predicts nothing
        for row, position in zip(rows.tolist(), positions.tolist()):
            if not words[row]:
                token = int(logits[row, position].argmax())
                words[row] = tokenizer.decode([token]).strip().lower()
        return BatchOutput(words)

    def references(self, targets: list[Any], spec: DatasetSpec | None) -> list[Any]:
        return [str(t).lower() for t in targets]

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        return {"accuracy": quality.accuracy(predictions, references)}

    def build_tiny_model(self, folder: Path, rows: list[dict[str, Any]]) -> None:
        save_tiny_distilbert(folder, texts_of(rows), "DistilBertForMaskedLM")

    def sample_rows(self, count: int, rng: random.Random, folder: Path) -> list[dict[str, Any]]:
        return [{"text": paragraph(rng, (1, 3))} for _ in range(count)]


def mask_word(text: str) -> tuple[str, str] | None:
    """The first WINDOW_WORDS words with one word masked, and that word; None if none qualifies.

    The masked word is the alphabetic word of four letters or more nearest the middle: long enough
    to carry meaning, the same choice for every model, so their accuracies compare.
    """
    words = text.split()[:WINDOW_WORDS]
    middle = len(words) / 2
    candidates = sorted((abs(i - middle), i) for i, w in enumerate(words) if re.fullmatch(r"[A-Za-z]{4,}", w))
    if not candidates:
        return None
    index = candidates[0][1]
    target = words[index]
    words[index] = MASK
    return " ".join(words), target
