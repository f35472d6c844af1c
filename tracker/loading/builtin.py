"""Built-in tiny models and sample datasets, for running with no Hub access.

They are written once into the cache directory (``TRACKER_CACHE_DIR``, default
``~/.cache/tracker``) and then read back through the same loading code as any local model or
dataset file, so the offline path exercises the real one. Tiny models have random weights: their
quality figures mean nothing, and runs that use them are labelled so.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from tracker.tasks.base import Task

logger = logging.getLogger(__name__)

BUILTIN_MODEL = "builtin-tiny"
BUILTIN_DATASET = "builtin"
# Multi-purpose stand-ins: a tiny T5 (Flan-T5's architecture) and BLOOM (BLOOMz's), prompted for a task.
Architecture = Literal["seq2seq", "causal"]
BUILTIN_SEQ2SEQ = "builtin-tiny-seq2seq"
BUILTIN_CAUSAL = "builtin-tiny-causal"
# A tiny Llama with a chat template: what servers run (transformers serve's continuous batching
# needs an architecture with paged attention, which BLOOM's ALiBi lacks).
BUILTIN_CHAT = "builtin-tiny-chat"
BUILTINS: dict[str, Architecture] = {BUILTIN_SEQ2SEQ: "seq2seq", BUILTIN_CAUSAL: "causal", BUILTIN_CHAT: "causal"}
# The chat template of the tiny chat model: each turn on its own line, the answer after "assistant:".
CHAT_TEMPLATE = ("{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
# Bump when a generator or a tiny model's recipe changes, so stale caches are not reused.
BUILTIN_VERSION = 2


def cache_dir() -> Path:
    """Where built-in artefacts and the precision probe's results are kept."""
    configured = os.environ.get("TRACKER_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "tracker"


def build_once(kind: str, name: str, build: Callable[[Path], None]) -> Path:
    """Return ``cache/kind/name-vN``, building it first if needed.

    The build happens in a private temporary folder that is renamed into place, so two runs
    starting at once never see a half-written model.
    """
    final = cache_dir() / kind / f"{name}-v{BUILTIN_VERSION}"
    if (final / ".complete").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        logger.info("building built-in %s %s in %s", kind, name, final)
        build(staging)
        (staging / ".complete").touch()
        try:
            os.rename(staging, final)
        except OSError:
            if not (final / ".complete").exists():  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def builtin_dataset_file(task: Task) -> Path:
    """The JSON-lines sample dataset of a task, written on first use (media files beside it)."""

    def write(folder: Path) -> None:
        rows = task.sample_rows(task.sample_size, random.Random(f"{task.name}-{BUILTIN_VERSION}"), folder)
        with open(folder / "data.jsonl", "w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row) + "\n")

    return build_once("datasets", task.name, write) / "data.jsonl"


def read_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def train_tokenizer(texts: Iterable[str], style: Literal["bert", "bart"], vocab_size: int = 2000):
    """A fast tokenizer trained on the sample texts, in the style of the task's real model.

    "bert": lower-cased WordPiece with [CLS]/[SEP]; "bart": byte-level BPE with <s>/</s>.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if style == "bert":
        specials = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                    "sep_token": "[SEP]", "mask_token": "[MASK]"}
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(specials.values()))
        start, end = "[CLS]", "[SEP]"
    else:
        specials = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>",
                    "unk_token": "<unk>", "mask_token": "<mask>"}
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(specials.values()),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        start, end = "<s>", "</s>"
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{start} $A {end}",
        pair=f"{start} $A {end} $B:1 {end}:1",
        special_tokens=[(start, tokenizer.token_to_id(start)), (end, tokenizer.token_to_id(end))],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=512, **specials)


def save_tiny_distilbert(folder: Path, texts: list[str], head: str, **config: Any) -> None:
    """A two-layer DistilBERT with the given head class (e.g. "DistilBertForMaskedLM") and a
    WordPiece tokenizer trained on ``texts``, written with save_pretrained."""
    import transformers

    tokenizer = train_tokenizer(texts, "bert")
    settings = transformers.DistilBertConfig(vocab_size=len(tokenizer), dim=64, n_layers=2, n_heads=4,
                                             hidden_dim=128, pad_token_id=tokenizer.pad_token_id, **config)
    getattr(transformers, head)(settings).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def save_tiny_language_model(name: str, folder: Path, texts: list[str]) -> None:
    """A tiny T5 (the Flan-T5 architecture), BLOOM (BLOOMz's) or Llama (with a chat template) with
    random weights."""
    from transformers import (BloomConfig, BloomForCausalLM, LlamaConfig, LlamaForCausalLM, T5Config,
                              T5ForConditionalGeneration)

    tokenizer = train_tokenizer(texts, "bart")
    if name == BUILTIN_CHAT:
        import torch

        # Fixed weights: random ones differ per build, and some builds emit, for some prompts, a
        # token transformers serve stops on before the asked length (seen: 11 of 12, "stop").
        torch.manual_seed(0)
        tokenizer.chat_template = CHAT_TEMPLATE
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                             pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        model = LlamaForCausalLM(config)
    elif BUILTINS[name] == "seq2seq":
        config = T5Config(vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=2,
                          num_decoder_layers=2, num_heads=4, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id,
                          decoder_start_token_id=tokenizer.pad_token_id)
        model = T5ForConditionalGeneration(config)
    else:
        config = BloomConfig(vocab_size=len(tokenizer), hidden_size=64, n_layer=2, n_head=4,
                             pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        model = BloomForCausalLM(config)
    model.generation_config.update(pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
