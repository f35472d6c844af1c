"""Summarization: a seq2seq model generates a short summary; ROUGE against the reference."""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

from tracker.loading.builtin import train_tokenizer
from tracker.tasks import quality
from tracker.tasks.base import (BatchOutput, DatasetSpec, GenerationSettings, LoadedModel, Task, decode_generated,
                                texts_of)
from tracker.tasks.registry import register


@register
class Summarization(Task):
    name = "summarization"
    description = "Summarize a document with a seq2seq model (generate); ROUGE-1/2/L."
    default_model = "sshleifer/distilbart-cnn-12-6"
    default_dataset = "cnn_dailymail"
    datasets = {
        "cnn_dailymail": DatasetSpec("cnn_dailymail", "abisee/cnn_dailymail", "test",
                                     {"text": "article", "summary": "highlights"}, config="3.0.0"),
        "samsum": DatasetSpec("samsum", "Samsung/samsum", "test", {"text": "dialogue"}),
        "xsum": DatasetSpec("xsum", "EdinburghNLP/xsum", "test", {"text": "document"}),
    }
    target_column = "summary"
    primary_metric = "rougeL"
    generative = True
    settings_params = ("max_new_tokens",)
    auto_model_class = "AutoModelForSeq2SeqLM"
    prompt_template = "{text}\n\nSummarize the text above in one sentence:"

    def predict(self, loaded: LoadedModel, texts: list[Any], settings: GenerationSettings,
                device: Any) -> BatchOutput:
        import torch

        tokenizer, model = loaded.tokenizer, loaded.model
        inputs = tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                           max_length=_max_input_length(tokenizer, model)).to(device)
        with torch.inference_mode(), warnings.catch_warnings():
            # Real summarizers ask for min_length > max_new_tokens (distilbart-cnn: 56 > 15, the
            # paper's cap): generation then stops at the cap, which is what we measure.
            warnings.filterwarnings("ignore", message="Unfeasible length constraints")
            output = model.generate(**inputs, max_new_tokens=settings.max_new_tokens)
        return decode_generated(output, loaded)

    def references(self, targets: list[Any], spec: DatasetSpec | None) -> list[Any]:
        return [str(t) for t in targets]

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        return quality.rouge(predictions, references)

    def build_tiny_model(self, folder: Path, rows: list[dict[str, Any]]) -> None:
        from transformers import BartConfig, BartForConditionalGeneration

        tokenizer = train_tokenizer(texts_of(rows), "bart")
        config = BartConfig(
            vocab_size=len(tokenizer), d_model=64, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
            decoder_ffn_dim=128, max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
            forced_eos_token_id=tokenizer.eos_token_id,
        )
        model = BartForConditionalGeneration(config)
        # The generation settings of sshleifer/distilbart-cnn-12-6, so that the tiny model's
        # generate loop does the same work per summary as the real one (full-length outputs).
        model.generation_config.update(num_beams=4, min_length=56, max_length=142,
                                       length_penalty=2.0, no_repeat_ngram_size=3,
                                       early_stopping=True)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    def sample_rows(self, count: int, rng: random.Random, folder: Path) -> list[dict[str, Any]]:
        return [_news_story(rng) for _ in range(count)]


def _max_input_length(tokenizer: Any, model: Any) -> int:
    limits = [tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", None)]
    return min(limit for limit in limits if isinstance(limit, int) and 0 < limit < 1_000_000)


_WHO = ["The mayor of Lyon", "A retired teacher", "The city council", "A team of engineers",
        "Local volunteers", "The national museum", "A young chef", "The football club",
        "Researchers at the university", "The harbour authority", "A group of farmers",
        "The regional hospital"]
_WHAT = [("opened a new public library", "opens new library"),
         ("announced a plan to plant ten thousand trees", "plans to plant trees"),
         ("won a national award for innovation", "wins innovation award"),
         ("repaired the old stone bridge", "repairs stone bridge"),
         ("launched a free bus service for students", "launches free student buses"),
         ("cancelled the summer festival because of floods", "cancels festival after floods"),
         ("raised funds for a new children's ward", "raises funds for children's ward"),
         ("found a rare species of orchid", "finds rare orchid")]
_WHERE = ["in Lyon", "near the river", "in the old town", "on the coast", "in the northern valley",
          "at the market square"]
_WHEN = ["on Monday", "on Tuesday", "last week", "on Friday", "this morning", "over the weekend"]
_MORE = ["Officials said the work took two years to complete.",
         "Residents gathered to watch the ceremony despite the rain.",
         "The project was paid for by donations and a regional grant.",
         "Critics argued that the money could have been spent elsewhere.",
         "Several schools have already asked to take part.",
         "A spokesperson said more details would follow next month.",
         "Similar schemes have been tried in three other cities.",
         "The decision was welcomed by shop owners in the area."]


def _news_story(rng: random.Random) -> dict[str, str]:
    who, (did, headline), where, when = (rng.choice(_WHO), rng.choice(_WHAT),
                                         rng.choice(_WHERE), rng.choice(_WHEN))
    details = " ".join(rng.sample(_MORE, k=rng.randint(3, 5)))
    return {"text": f"{who} {did} {where} {when}. {details}",
            "summary": f"{who} {headline} {where}."}
