"""Extractive question answering: the answer is a span of the context; SQuAD exact match and F1."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tracker.loading.builtin import save_tiny_distilbert
from tracker.tasks import quality
from tracker.tasks.base import BatchOutput, DatasetSpec, GenerationSettings, LoadedModel, Task, texts_of
from tracker.tasks.prose import ORGANISATIONS, PEOPLE, PLACES
from tracker.tasks.registry import register

MAX_ANSWER_TOKENS = 30  # as in the SQuAD reference implementations
MAX_INPUT_TOKENS = 384


@register
class QuestionAnswering(Task):
    name = "question-answering"
    description = "Answer a question with a span of its context (extractive); exact match and F1."
    default_model = "distilbert/distilbert-base-cased-distilled-squad"
    default_dataset = "squad"
    datasets = {
        "squad": DatasetSpec("squad", "rajpurkar/squad", "validation"),
        "squad_v2": DatasetSpec("squad_v2", "rajpurkar/squad_v2", "validation"),
        "sciq": DatasetSpec("sciq", "allenai/sciq", "test",
                            {"context": "support", "answers": "correct_answer"}),
    }
    input_column = "question"
    extra_columns = ("context",)
    target_column = "answers"
    primary_metric = "f1"
    auto_model_class = "AutoModelForQuestionAnswering"
    prompt_template = "{context}\n\nAnswer this question from the text above: {question}"

    def example(self, row: dict[str, Any], base: Path | None) -> tuple[Any, Any] | None:
        answers = row["answers"]
        if isinstance(answers, dict):  # SQuAD: {text: [...], answer_start: [...]}
            answers = answers["text"]
        elif isinstance(answers, str):
            answers = [answers]
        return {"question": str(row["question"]), "context": str(row["context"] or "")}, list(answers)

    def prompt(self, value: Any) -> str:
        return self.prompt_template.format(**value)  # type: ignore[union-attr]

    def predict(self, loaded: LoadedModel, inputs: list[Any], settings: GenerationSettings,
                device: Any) -> BatchOutput:
        import torch

        encoded = loaded.tokenizer([x["question"] for x in inputs], [x["context"] for x in inputs],
                                   truncation="only_second", max_length=MAX_INPUT_TOKENS,
                                   padding=True, return_offsets_mapping=True, return_tensors="pt")
        offsets = encoded.pop("offset_mapping")
        model_inputs = {k: v.to(device) for k, v in encoded.items()
                        if k in ("input_ids", "attention_mask", "token_type_ids")}
        if "token_type_ids" in model_inputs and loaded.model.config.model_type == "distilbert":
            model_inputs.pop("token_type_ids")
        with torch.inference_mode():
            out = loaded.model(**model_inputs)
        answers = [_best_span(out.start_logits[i].float(), out.end_logits[i].float(),
                              encoded.sequence_ids(i), offsets[i], x["context"])
                   for i, x in enumerate(inputs)]
        return BatchOutput(answers)

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        return quality.squad(predictions, references)

    def describe_input(self, value: Any) -> str:
        return value["question"][:500]

    def build_tiny_model(self, folder: Path, rows: list[dict[str, Any]]) -> None:
        save_tiny_distilbert(folder, texts_of(rows), "DistilBertForQuestionAnswering")

    def sample_rows(self, count: int, rng: random.Random, folder: Path) -> list[dict[str, Any]]:
        return [_fact(rng) for _ in range(count)]


def _best_span(start: Any, end: Any, sequence_ids: list[int | None], offsets: Any, context: str) -> str:
    """The highest-scoring span of the context (start <= end, at most MAX_ANSWER_TOKENS), or ""
    when "no answer" (both logits on the first token, as SQuAD 2.0 models are trained) scores higher."""
    import torch

    in_context = [i for i, s in enumerate(sequence_ids) if s == 1]
    if not in_context:
        return ""
    first, last = in_context[0], in_context[-1]
    starts = start[first:last + 1]
    ends = end[first:last + 1]
    # Score every (start, end) pair at once; mask pairs that run backwards or too long.
    scores = starts[:, None] + ends[None, :]
    length = len(starts)
    rows = torch.arange(length)[:, None]
    cols = torch.arange(length)[None, :]
    scores = scores.masked_fill((cols < rows) | (cols - rows >= MAX_ANSWER_TOKENS), float("-inf"))
    best = int(scores.argmax())
    i, j = divmod(best, length)
    if float(start[0] + end[0]) > float(scores.flatten()[best]):
        return ""
    return context[int(offsets[first + i][0]):int(offsets[first + j][1])]


_THINGS = ["bridge", "museum", "library", "stadium", "hospital", "lighthouse", "school", "market hall"]


def _fact(rng: random.Random) -> dict[str, Any]:
    thing, place, who = rng.choice(_THINGS), rng.choice(PLACES), rng.choice(PEOPLE)
    year, org = str(rng.randint(1850, 2020)), rng.choice(ORGANISATIONS)
    context = (f"The {thing} of {place} was built in {year} by {who}. It was later bought by {org}, "
               f"which still runs it today. Visitors come from far away to see it.")
    question, answer = rng.choice([(f"When was the {thing} of {place} built?", year),
                                   (f"Who built the {thing} of {place}?", who),
                                   (f"Who runs the {thing} of {place} today?", org)])
    return {"question": question, "context": context, "answers": [answer]}
