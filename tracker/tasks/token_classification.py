"""Token classification (named entities): a tag per word; entity-level F1 as seqeval computes it."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from tracker.loading.builtin import save_tiny_distilbert
from tracker.tasks import quality
from tracker.tasks.base import BatchOutput, DatasetSpec, GenerationSettings, LoadedModel, Task, class_name, texts_of
from tracker.tasks.prose import ORGANISATIONS, PEOPLE, PLACES
from tracker.tasks.registry import register

CONLL_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")


@register
class TokenClassification(Task):
    name = "token-classification"
    description = "Tag the named entities of a sentence word by word; entity-level precision, recall, F1."
    default_model = "dslim/bert-base-NER"
    default_dataset = "conll2003"
    datasets = {
        "conll2003": DatasetSpec("conll2003", "eriktks/conll2003", "test", {"tags": "ner_tags"}),
        "wikiann": DatasetSpec("wikiann", "unimelb-nlp/wikiann", "test", {"tags": "ner_tags"}, config="en"),
        # ReCoRD marks entity spans without types: predictions and references are compared untyped.
        "record": DatasetSpec("record", "aps/super_glue", "validation",
                              {"tokens": "passage", "tags": "entity_spans"}, config="record",
                              layout="untyped-spans"),
    }
    input_column = "tokens"
    target_column = "tags"
    primary_metric = "f1"
    auto_model_class = "AutoModelForTokenClassification"

    def example(self, row: dict[str, Any], base: Path | None) -> tuple[Any, Any] | None:
        tokens, tags = row["tokens"], row["tags"]
        if isinstance(tokens, str):  # a passage with character spans (ReCoRD)
            return _words_and_tags(tokens, tags)
        return (list(tokens), list(tags)) if len(tokens) else None

    def predict(self, loaded: LoadedModel, inputs: list[Any], settings: GenerationSettings,
                device: Any) -> BatchOutput:
        import torch

        encoded = loaded.tokenizer(inputs, is_split_into_words=True, return_tensors="pt",
                                   padding=True, truncation=True)
        with torch.inference_mode():
            logits = loaded.model(**encoded.to(device)).logits
        best = logits.argmax(dim=-1).tolist()
        id2label = loaded.model.config.id2label
        predictions = []
        for row, words in enumerate(inputs):
            tags = ["O"] * len(words)  # words cut off by truncation get no entity
            seen = set()
            for position, word in enumerate(encoded.word_ids(row)):
                if word is not None and word not in seen:  # a word's tag is its first piece's
                    seen.add(word)
                    tags[word] = str(id2label[best[row][position]])
            predictions.append(tags)
        return BatchOutput(predictions)

    def references(self, targets: list[Any], spec: DatasetSpec | None) -> list[Any]:
        names = spec.label_names if spec else None
        self._untyped = bool(spec and spec.layout == "untyped-spans")
        return [[_tag(class_name(t, names)) for t in tags] for tags in targets]

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        predictions = [[_tag(t) for t in tags] for tags in predictions]
        if getattr(self, "_untyped", False):
            predictions = [[re.sub(r"-.*", "-ENT", t) for t in tags] for tags in predictions]
        return quality.entity_f1(predictions, references)

    def describe_input(self, value: Any) -> str:
        return " ".join(value)[:500]

    def build_tiny_model(self, folder: Path, rows: list[dict[str, Any]]) -> None:
        labels = dict(enumerate(CONLL_TAGS))
        save_tiny_distilbert(folder, texts_of(rows), "DistilBertForTokenClassification",
                             id2label=labels, label2id={v: k for k, v in labels.items()})

    def sample_rows(self, count: int, rng: random.Random, folder: Path) -> list[dict[str, Any]]:
        return [_tagged_sentence(rng) for _ in range(count)]


def _tag(tag: str) -> str:
    """Upper-case IOB spelling: datasets' class names and models' labels differ in case."""
    return "O" if tag.upper() == "O" else tag.upper().replace(" ", "-")


def _words_and_tags(passage: str, spans: dict[str, list[int]]) -> tuple[list[str], list[str]]:
    """Whitespace words of a passage, tagged B-ENT/I-ENT where a character span covers them."""
    words, tags = [], []
    ranges = list(zip(spans.get("start", []), spans.get("end", [])))
    for match in re.finditer(r"\S+", passage):
        inside = [(s, e) for s, e in ranges if match.start() <= e and match.end() > s]
        tags.append("O" if not inside else ("B-ENT" if match.start() <= inside[0][0] else "I-ENT"))
        words.append(match.group())
    return words, tags


_FRAMES = ["{per} met officials from {org} in {loc} on Monday .",
           "{per} moved to {loc} to work for {org} .",
           "Reporters in {loc} asked {per} about the plans of {org} .",
           "{org} opened a new office in {loc} , said {per} .",
           "After the match in {loc} , {per} thanked the fans ."]


def _tagged_sentence(rng: random.Random) -> dict[str, Any]:
    fillers = {"per": (rng.choice(PEOPLE), "PER"), "org": (rng.choice(ORGANISATIONS), "ORG"),
               "loc": (rng.choice(PLACES), "LOC")}
    tokens: list[str] = []
    tags: list[str] = []
    for word in rng.choice(_FRAMES).split():
        slot = re.fullmatch(r"\{(\w+)\}", word)
        if slot:
            name, kind = fillers[slot.group(1)]
            parts = name.split()
            if parts[0] == "the":  # "the United Nations": the article is not part of the entity
                tokens.append("the")
                tags.append("O")
                parts = parts[1:]
            tokens += parts
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(parts) - 1)
        else:
            tokens.append(word)
            tags.append("O")
    return {"tokens": tokens, "tags": tags}
