"""Text generation: continue a text; energy per generated token, perplexity of the real continuation."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from tracker.loading.builtin import train_tokenizer
from tracker.tasks.base import (BatchOutput, DatasetSpec, GenerationSettings, LoadedModel, Task, decode_generated,
                                pad_on_the_left, texts_of)
from tracker.tasks.prose import paragraph
from tracker.tasks.registry import register

MIN_WORDS = 16  # shorter texts (WikiText's headings and blank lines) are passed over
PART_WORDS = 32  # at most this many words of prompt, and of reference continuation


@register
class TextGeneration(Task):
    name = "text-generation"
    description = ("Continue a text (first half of up to 64 words) with a causal LM; energy per "
                   "generated token, perplexity of the real continuation (lower is better).")
    default_model = "openai-community/gpt2"
    default_dataset = "wikitext"
    datasets = {
        "wikitext": DatasetSpec("wikitext", "Salesforce/wikitext", "test", config="wikitext-103-raw-v1"),
        "bookcorpus": DatasetSpec("bookcorpus", "rojagtap/bookcorpus", "train"),
        "oscar": DatasetSpec("oscar", "oscar-corpus/oscar", "train", config="unshuffled_deduplicated_en"),
    }
    primary_metric = "perplexity"
    higher_is_better = False
    generative = True
    settings_params = ("max_new_tokens",)
    auto_model_class = "AutoModelForCausalLM"

    def example(self, row: dict[str, Any], base: Path | None) -> tuple[Any, Any] | None:
        words = str(row["text"] or "").split()
        if len(words) < MIN_WORDS:
            return None
        half = min(len(words) // 2, PART_WORDS)
        return " ".join(words[:half]), " ".join(words[half:half + PART_WORDS])

    def load_model(self, source: str, *, local_only: bool) -> LoadedModel:
        loaded = super().load_model(source, local_only=local_only)
        pad_on_the_left(loaded.tokenizer)
        return loaded

    def predict(self, loaded: LoadedModel, inputs: list[Any], settings: GenerationSettings,
                device: Any) -> BatchOutput:
        import torch

        tokenizer = loaded.tokenizer
        encoded = tokenizer(inputs, return_tensors="pt", padding=True).to(device)
        with torch.inference_mode():
            output = loaded.model.generate(**encoded, max_new_tokens=settings.max_new_tokens,
                                           do_sample=False, pad_token_id=tokenizer.pad_token_id)
        return decode_generated(output, loaded, prompt_length=encoded["input_ids"].shape[1])

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        return {}  # the quality of a continuation is the model's perplexity on the real one

    def model_quality(self, loaded: LoadedModel, inputs: list[Any], predictions: list[Any],
                      references: list[Any], settings: GenerationSettings, device: Any) -> tuple[dict[str, float], str | None]:
        return {"perplexity": perplexity(loaded, inputs, references, device)}, None

    def build_tiny_model(self, folder: Path, rows: list[dict[str, Any]]) -> None:
        from transformers import GPT2Config, GPT2LMHeadModel

        tokenizer = train_tokenizer(texts_of(rows), "bart")
        config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=256,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
        GPT2LMHeadModel(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    def sample_rows(self, count: int, rng: random.Random, folder: Path) -> list[dict[str, Any]]:
        return [{"text": paragraph(rng, (3, 6))} for _ in range(count)]


def perplexity(loaded: LoadedModel, prompts: list[str], continuations: list[str], device: Any) -> float:
    """exp of the mean negative log-likelihood of the continuations' tokens, each given its prompt."""
    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    total_nll, total_tokens = 0.0, 0
    for prompt, continuation in zip(prompts, continuations):
        context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        target = tokenizer(" " + continuation, add_special_tokens=False)["input_ids"]
        if not target:
            continue
        ids = torch.tensor([context + target], device=device)
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, len(context) - 1:-1].float()
        nll = torch.nn.functional.cross_entropy(logits, ids[0, len(context):], reduction="sum")
        total_nll += float(nll)
        total_tokens += len(target)
    return math.exp(total_nll / total_tokens) if total_tokens else math.nan
