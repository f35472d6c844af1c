"""Image classification: a vision classifier picks a class; top-1 accuracy."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tracker.tasks import quality
from tracker.tasks.base import BatchOutput, DatasetSpec, GenerationSettings, LoadedModel, Task, class_name, input_dtype
from tracker.tasks.media import SHAPES, load_image, write_scenes
from tracker.tasks.registry import register


@register
class ImageClassification(Task):
    name = "image-classification"
    description = "Classify an image with a vision model (ViT, ResNet, ...); top-1 accuracy."
    default_model = "google/vit-base-patch16-224"
    default_dataset = "cifar10"
    datasets = {
        "cifar10": DatasetSpec("cifar10", "uoft-cs/cifar10", "test", {"image": "img"}),
        "cifar100": DatasetSpec("cifar100", "uoft-cs/cifar100", "test", {"image": "img", "label": "fine_label"}),
        # Gated on the Hub: accept its terms and log in once, then it loads from the cache.
        "imagenet": DatasetSpec("imagenet", "ILSVRC/imagenet-1k", "validation"),
    }
    input_column = "image"
    target_column = "label"
    primary_metric = "accuracy"
    auto_model_class = "AutoModelForImageClassification"
    preprocessor_class = "AutoImageProcessor"
    sample_size = 1000

    def example(self, row: dict[str, Any], base: Path | None) -> tuple[Any, Any] | None:
        return load_image(row["image"], base), row["label"]

    def predict(self, loaded: LoadedModel, inputs: list[Any], settings: GenerationSettings,
                device: Any) -> BatchOutput:
        import torch

        pixels = loaded.processor(images=inputs, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            logits = loaded.model(pixel_values=pixels.to(device, input_dtype(loaded.model))).logits
        id2label = loaded.model.config.id2label
        return BatchOutput([id2label[int(i)] for i in logits.argmax(dim=-1)])

    def references(self, targets: list[Any], spec: DatasetSpec | None) -> list[Any]:
        self._names = spec.label_names if spec else None
        return [class_name(t, self._names) for t in targets]

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        names = getattr(self, "_names", None)
        return {"accuracy": quality.accuracy([class_name(p, names) for p in predictions], references)}

    def describe_input(self, value: Any) -> str:
        return f"image {value.width}x{value.height}"

    def build_tiny_model(self, folder: Path, rows: list[dict[str, Any]]) -> None:
        from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

        labels = dict(enumerate(SHAPES))
        config = ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=128, id2label=labels,
                           label2id={v: k for k, v in labels.items()})
        ViTForImageClassification(config).save_pretrained(folder)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)

    def sample_rows(self, count: int, rng: random.Random, folder: Path) -> list[dict[str, Any]]:
        return [{"image": path, "label": objects[0][0]}
                for path, objects in write_scenes(folder, count, rng, size=48, objects=1)]
