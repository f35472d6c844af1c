"""Image captioning: an image-to-text model writes a caption; BLEU-4 and ROUGE-L against references."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tracker.loading.builtin import train_tokenizer
from tracker.loading.remote_code import pretrained
from tracker.tasks import quality
from tracker.tasks.base import (BatchOutput, DatasetSpec, GenerationSettings, LoadedModel, Task, decode_generated,
                                input_dtype, texts_of)
from tracker.tasks.media import load_image, write_scenes
from tracker.tasks.registry import register


@register
class ImageToText(Task):
    name = "image-to-text"
    description = "Caption an image (vision encoder + text decoder, generate); BLEU-4 and ROUGE-L."
    default_model = "nlpconnect/vit-gpt2-image-captioning"
    default_dataset = "coco"
    datasets = {
        "coco": DatasetSpec("coco", "lmms-lab/COCO-Caption2017", "val", {"captions": "answer"}),
        "redcaps": DatasetSpec("redcaps", "kdexd/red_caps", "train", {"captions": "caption"}),
        "visual_genome": DatasetSpec("visual_genome", "ranjaykrishna/visual_genome", "train",
                                     {"captions": "regions"}, config="region_descriptions_v1.2.0",
                                     layout="visual-genome"),
    }
    input_column = "image"
    target_column = "captions"
    primary_metric = "bleu"
    generative = True
    settings_params = ("max_new_tokens",)

    def example(self, row: dict[str, Any], base: Path | None) -> tuple[Any, Any] | None:
        captions = row["captions"]
        if isinstance(captions, str):
            captions = [captions]
        elif captions and isinstance(captions[0], dict):  # Visual Genome's region descriptions
            captions = [region["phrase"] for region in captions]
        return load_image(row["image"], base), [str(c) for c in captions]

    def load_model(self, source: str, *, local_only: bool) -> LoadedModel:
        import transformers

        processor = pretrained(transformers.AutoImageProcessor, source, local_files_only=local_only)
        tokenizer = pretrained(transformers.AutoTokenizer, source, local_files_only=local_only)
        config = pretrained(transformers.AutoConfig, source, local_files_only=local_only)
        auto_class = (transformers.VisionEncoderDecoderModel if config.model_type == "vision-encoder-decoder"
                      else transformers.AutoModelForImageTextToText)
        model = pretrained(auto_class, source, local_files_only=local_only)
        return LoadedModel(model=model.eval(), tokenizer=tokenizer, processor=processor)

    def predict(self, loaded: LoadedModel, inputs: list[Any], settings: GenerationSettings,
                device: Any) -> BatchOutput:
        import torch

        pixels = loaded.processor(images=inputs, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            output = loaded.model.generate(pixel_values=pixels.to(device, input_dtype(loaded.model)),
                                           max_new_tokens=settings.max_new_tokens)
        return decode_generated(output, loaded)

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        return {"bleu": quality.bleu(predictions, references),
                "rougeL": quality.rouge_l_multi(predictions, references)}

    def describe_input(self, value: Any) -> str:
        return f"image {value.width}x{value.height}"

    def build_tiny_model(self, folder: Path, rows: list[dict[str, Any]]) -> None:
        from transformers import (GPT2Config, GPT2LMHeadModel, VisionEncoderDecoderModel, ViTConfig, ViTImageProcessor,
                                  ViTModel)

        tokenizer = train_tokenizer(texts_of(rows), "bart")
        encoder = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=128), add_pooling_layer=False)
        decoder = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4,
                                             n_positions=128, add_cross_attention=True,
                                             bos_token_id=tokenizer.bos_token_id,
                                             eos_token_id=tokenizer.eos_token_id))
        model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
        # vit-gpt2-image-captioning's generation set-up: start with BOS, stop at EOS, 4 beams.
        model.config.decoder_start_token_id = tokenizer.bos_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.update(decoder_start_token_id=tokenizer.bos_token_id,
                                       pad_token_id=tokenizer.pad_token_id,
                                       eos_token_id=tokenizer.eos_token_id, num_beams=4)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)

    def sample_rows(self, count: int, rng: random.Random, folder: Path) -> list[dict[str, Any]]:
        rows = []
        for path, objects in write_scenes(folder, count, rng, size=64):
            shapes = [shape for shape, _ in objects]
            counted = ", ".join(f"{shapes.count(s)} {s}{'s' if shapes.count(s) > 1 else ''}"
                                for s in sorted(set(shapes)))
            rows.append({"image": path,
                         "captions": [f"a picture of {counted}", f"{counted} on a plain background"]})
        return rows
