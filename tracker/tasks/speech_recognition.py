"""Automatic speech recognition: transcribe audio (CTC like wav2vec2, or seq2seq like Whisper); WER."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tracker.loading.remote_code import pretrained
from tracker.tasks import quality
from tracker.tasks.base import BatchOutput, DatasetSpec, GenerationSettings, LoadedModel, Task, input_dtype
from tracker.tasks.media import SAMPLING_RATE, load_audio, speak, write_wav
from tracker.tasks.prose import sentence
from tracker.tasks.registry import register

SAMPLE_RATE_ON_DISK = 8_000  # the built-in clips are stored at 8 kHz and resampled, to stay small


@register
class SpeechRecognition(Task):
    name = "automatic-speech-recognition"
    description = "Transcribe speech; word error rate (lower is better). An AI Energy Score task."
    default_model = "facebook/wav2vec2-base-960h"
    default_dataset = "librispeech"
    datasets = {
        "librispeech": DatasetSpec("librispeech", "openslr/librispeech_asr", "test", config="clean"),
    }
    input_column = "audio"
    target_column = "text"
    primary_metric = "wer"
    higher_is_better = False
    sample_size = 1000

    def example(self, row: dict[str, Any], base: Path | None) -> tuple[Any, Any] | None:
        return load_audio(row["audio"], base, SAMPLING_RATE), str(row["text"])

    def load_model(self, source: str, *, local_only: bool) -> LoadedModel:
        import transformers

        processor = pretrained(transformers.AutoProcessor, source, local_files_only=local_only)
        config = pretrained(transformers.AutoConfig, source, local_files_only=local_only)
        auto_class = (transformers.AutoModelForSpeechSeq2Seq if config.is_encoder_decoder
                      else transformers.AutoModelForCTC)
        model = pretrained(auto_class, source, local_files_only=local_only)
        return LoadedModel(model=model.eval(), processor=processor)

    def predict(self, loaded: LoadedModel, inputs: list[Any], settings: GenerationSettings,
                device: Any) -> BatchOutput:
        import torch

        processor, model = loaded.processor, loaded.model
        encoded = processor(inputs, sampling_rate=SAMPLING_RATE, return_tensors="pt", padding=True)
        encoded = {k: v.to(device, input_dtype(model)) if v.is_floating_point() else v.to(device)
                   for k, v in encoded.items()}
        with torch.inference_mode():
            if model.config.is_encoder_decoder:  # Whisper and kin generate the transcript
                ids = model.generate(**encoded, max_new_tokens=settings.max_new_tokens * 8)
                texts = processor.batch_decode(ids, skip_special_tokens=True)
            else:  # CTC: the best character at each frame, repeats and blanks collapsed
                ids = model(**encoded).logits.argmax(dim=-1)
                texts = processor.batch_decode(ids)
        return BatchOutput([t.strip() for t in texts])

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        return {"wer": quality.word_error_rate(predictions, [str(r) for r in references])}

    def describe_input(self, value: Any) -> str:
        return f"audio {len(value) / SAMPLING_RATE:.2f} s"

    def build_tiny_model(self, folder: Path, rows: list[dict[str, Any]]) -> None:
        import json

        from transformers import (Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC,
                                  Wav2Vec2Processor)

        # A character vocabulary, as wav2vec2-base-960h has ("|" separates words).
        letters = sorted({c for row in rows for c in row["text"].upper() if c.isalpha() or c == "'"})
        vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4} | {c: i + 5 for i, c in enumerate(letters)}
        (folder / "vocab.json").write_text(json.dumps(vocab))
        tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), word_delimiter_token="|")
        extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLING_RATE,
                                             padding_value=0.0, do_normalize=True,
                                             return_attention_mask=False)
        config = Wav2Vec2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64, conv_dim=(32, 32, 32),
                                conv_stride=(5, 4, 4), conv_kernel=(10, 8, 8), num_conv_pos_embeddings=16,
                                num_conv_pos_embedding_groups=4, pad_token_id=0, ctc_loss_reduction="mean")
        Wav2Vec2ForCTC(config).save_pretrained(folder)
        Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)

    def sample_rows(self, count: int, rng: random.Random, folder: Path) -> list[dict[str, Any]]:
        import numpy as np

        (folder / "audio").mkdir()
        rows = []
        step = SAMPLING_RATE // SAMPLE_RATE_ON_DISK
        for i in range(count):
            # LibriSpeech style: upper case, no punctuation.
            words = sentence(rng).rstrip(".").upper().split()[:rng.randint(3, 6)]
            text = " ".join(words)
            write_wav(folder / "audio" / f"{i:05d}.wav", np.asarray(speak(text, rng))[::step],
                      SAMPLE_RATE_ON_DISK)
            rows.append({"audio": f"audio/{i:05d}.wav", "text": text})
        return rows
