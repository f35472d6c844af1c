"""Object detection: boxes and classes per image (DETR, YOLOS, ...); COCO-style mAP."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tracker.tasks import quality
from tracker.tasks.base import BatchOutput, DatasetSpec, GenerationSettings, LoadedModel, Task, class_name, input_dtype
from tracker.tasks.media import SHAPES, load_image, write_scenes
from tracker.tasks.registry import register

# Detections kept per image, as COCO's evaluation does.
MAX_DETECTIONS = 100


@register
class ObjectDetection(Task):
    name = "object-detection"
    description = "Detect objects (boxes and classes) in an image; COCO-style mAP@[.5:.95] and mAP@.5."
    default_model = "facebook/detr-resnet-50"
    default_dataset = "coco"
    datasets = {
        "coco": DatasetSpec("coco", "detection-datasets/coco", "val", layout="xyxy"),
        "cppe5": DatasetSpec("cppe5", "rishitdagli/cppe-5", "test", layout="xywh"),
        "visual_genome": DatasetSpec("visual_genome", "ranjaykrishna/visual_genome", "train",
                                     config="objects_v1.2.0", layout="visual-genome"),
    }
    input_column = "image"
    target_column = "objects"
    primary_metric = "map"
    auto_model_class = "AutoModelForObjectDetection"
    preprocessor_class = "AutoImageProcessor"
    sample_size = 1000

    def example(self, row: dict[str, Any], base: Path | None) -> tuple[Any, Any] | None:
        return load_image(row["image"], base), row["objects"]

    def predict(self, loaded: LoadedModel, inputs: list[Any], settings: GenerationSettings,
                device: Any) -> BatchOutput:
        import torch

        encoded = loaded.processor(images=inputs, return_tensors="pt")
        encoded = {k: v.to(device, input_dtype(loaded.model)) if v.is_floating_point() else v.to(device)
                   for k, v in encoded.items()}
        with torch.inference_mode():
            outputs = loaded.model(**encoded)
        outputs.logits, outputs.pred_boxes = outputs.logits.float(), outputs.pred_boxes.float()
        found = loaded.processor.post_process_object_detection(
            outputs, threshold=0.0, target_sizes=[(image.height, image.width) for image in inputs])
        id2label = loaded.model.config.id2label
        predictions = []
        for result in found:
            order = result["scores"].argsort(descending=True)[:MAX_DETECTIONS]
            predictions.append([(str(id2label[int(result["labels"][i])]), float(result["scores"][i]),
                                 tuple(float(v) for v in result["boxes"][i])) for i in order])
        return BatchOutput(predictions)

    def references(self, targets: list[Any], spec: DatasetSpec | None) -> list[Any]:
        self._names = spec.label_names if spec else None
        layout = spec.layout if spec else ""
        return [[(class_name(label, self._names), box) for label, box in _objects(t, layout)]
                for t in targets]

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        names = getattr(self, "_names", None)
        named = [[(class_name(label, names), score, box) for label, score, box in image]
                 for image in predictions]
        return quality.mean_average_precision(named, references)

    def describe_input(self, value: Any) -> str:
        return f"image {value.width}x{value.height}"

    def build_tiny_model(self, folder: Path, rows: list[dict[str, Any]]) -> None:
        from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

        labels = dict(enumerate(SHAPES))
        backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                out_features=["stage4"])
        config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False,
                            backbone_config=backbone, d_model=32, encoder_layers=1, decoder_layers=1,
                            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                            decoder_ffn_dim=64, num_queries=20, id2label=labels,
                            label2id={v: k for k, v in labels.items()})
        DetrForObjectDetection(config).save_pretrained(folder)
        DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(folder)

    def sample_rows(self, count: int, rng: random.Random, folder: Path) -> list[dict[str, Any]]:
        return [{"image": path, "objects": [{"label": shape, "box": box} for shape, box in objects]}
                for path, objects in write_scenes(folder, count, rng, size=64)]

def _objects(target: Any, layout: str) -> list[tuple[Any, tuple[float, ...]]]:
    """(label, (x0, y0, x1, y1)) pairs from the layouts the study's datasets use."""
    if layout == "visual-genome":  # a list of {x, y, w, h, names}
        return [(o["names"][0], (o["x"], o["y"], o["x"] + o["w"], o["y"] + o["h"])) for o in target]
    if isinstance(target, dict):  # the Hub's columnar layout: {bbox: [...], category: [...]}
        pairs = zip(target["category"], target["bbox"])
        if layout == "xywh":
            return [(c, (b[0], b[1], b[0] + b[2], b[1] + b[3])) for c, b in pairs]
        return [(c, tuple(b)) for c, b in pairs]
    return [(o["label"], tuple(o["box"])) for o in target]  # ours: [{label, box: xyxy}]
