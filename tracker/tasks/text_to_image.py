"""Text-to-image with diffusers: energy per image; CLIP score when a CLIP model can be loaded.

Needs the `diffusion` extra (pip install -e ".[diffusion]"). The CLIP model that scores the images
is openai/clip-vit-base-patch16 from the Hub or its cache, or the one named by TRACKER_CLIP_MODEL
(a Hub id or a local folder). When none can be loaded the quality is NaN and the run says why.
"""

from __future__ import annotations

import importlib.util
import math
import os
import random
from pathlib import Path
from typing import Any

from tracker.loading.builtin import train_tokenizer
from tracker.loading.remote_code import pretrained
from tracker.tasks.base import BatchOutput, DatasetSpec, GenerationSettings, LoadedModel, Task, texts_of
from tracker.tasks.registry import register

CLIP_MODEL = "openai/clip-vit-base-patch16"

_SUBJECTS = ["a red fox", "an old lighthouse", "a bowl of ramen", "a futuristic city", "a sailing ship",
             "a snowy mountain village", "a cat wearing a hat", "a robot reading a book",
             "a field of sunflowers", "a dragon made of glass"]
_STYLES = ["oil painting", "watercolor", "digital art, trending on artstation", "photograph, 35mm",
           "pencil sketch", "isometric render", "ukiyo-e woodblock print", "cinematic lighting, 4k"]
_SETTINGS = ["at sunset", "in the rain", "under a starry sky", "in a misty forest", "on a busy street",
             "by the sea", "in winter", "at dawn"]


@register
class TextToImage(Task):
    name = "text-to-image"
    description = ("Generate an image from a prompt with a diffusers pipeline; energy per image, "
                   "CLIP score (prompt-image agreement) when a CLIP model is available.")
    default_model = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    default_dataset = "sd_prompts"
    datasets = {
        "diffusiondb": DatasetSpec("diffusiondb", "poloclub/diffusiondb", "train", config="2m_random_1k"),
        "imagereward": DatasetSpec("imagereward", "THUDM/ImageRewardDB", "test", config="1k"),
        "sd_prompts": DatasetSpec("sd_prompts", "Gustavosta/Stable-Diffusion-Prompts", "test",
                                  {"prompt": "Prompt"}),
    }
    input_column = "prompt"
    primary_metric = "clip_score"
    settings_params = ("image_size", "num_inference_steps", "guidance_scale")
    sample_size = 1000

    def missing_requirement(self) -> str | None:
        if importlib.util.find_spec("diffusers") is None:
            return 'text-to-image needs diffusers: pip install -e ".[diffusion]"'
        return None

    def example(self, row: dict[str, Any], base: Path | None) -> tuple[Any, Any] | None:
        prompt = str(row["prompt"] or "").strip()
        return (prompt, prompt) if prompt else None

    def import_code(self) -> None:
        # Imported for this task only: about 3 CPU-seconds that no other task should pay.
        import diffusers

        diffusers.utils.logging.disable_progress_bar()
        diffusers.utils.logging.set_verbosity_error()

    def load_model(self, source: str, *, local_only: bool) -> LoadedModel:
        from diffusers import DiffusionPipeline

        pipeline = pretrained(DiffusionPipeline, source, local_files_only=local_only)
        pipeline.set_progress_bar_config(disable=True)
        return LoadedModel(model=pipeline)

    def resolved_settings(self, loaded: LoadedModel, settings: GenerationSettings) -> dict[str, Any]:
        resolved = super().resolved_settings(loaded, settings)
        if resolved["image_size"] is None:
            pipeline = loaded.model
            resolved["image_size"] = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
        return resolved

    def predict(self, loaded: LoadedModel, inputs: list[Any], settings: GenerationSettings,
                device: Any) -> BatchOutput:
        import torch

        pipeline = loaded.model
        size = settings.image_size or pipeline.unet.config.sample_size * pipeline.vae_scale_factor
        with torch.inference_mode():
            images = pipeline(list(inputs), height=size, width=size,
                              num_inference_steps=settings.num_inference_steps,
                              guidance_scale=settings.guidance_scale, output_type="pil").images
        return BatchOutput(images)

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        return {}  # scored by CLIP in model_quality

    def model_quality(self, loaded: LoadedModel, inputs: list[Any], predictions: list[Any],
                      references: list[Any], settings: GenerationSettings, device: Any) -> tuple[dict[str, float], str | None]:
        source = os.environ.get("TRACKER_CLIP_MODEL") or CLIP_MODEL
        try:
            scores = clip_scores(source, predictions, inputs)
        except Exception as err:  # noqa: BLE001 - any failure to load leaves quality unavailable
            return {"clip_score": math.nan}, (
                f"no CLIP model to score the images ({source}: {type(err).__name__}); set "
                "TRACKER_CLIP_MODEL to a local CLIP folder or a Hub id")
        return {"clip_score": sum(scores) / len(scores)}, None

    def build_tiny_model(self, folder: Path, rows: list[dict[str, Any]]) -> None:
        """A tiny Stable Diffusion: UNet, VAE and CLIP text encoder built from configs (as in
        diffusers' own tests), saved as a pipeline and loaded back like any other."""
        from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        tokenizer = train_tokenizer(texts_of(rows), "bart")
        tokenizer.model_max_length = 77
        unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=32,
                                    in_channels=4, out_channels=4, norm_num_groups=16,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                    cross_attention_dim=32, attention_head_dim=8)
        vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                            down_block_types=["DownEncoderBlock2D"] * 2,
                            up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4,
                            norm_num_groups=16)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_attention_heads=4,
            num_hidden_layers=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
        scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  skip_prk_steps=True, steps_offset=1)  # Stable Diffusion v1.5's
        pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                           unet=unet, scheduler=scheduler, safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
        pipeline.save_pretrained(folder)

    def sample_rows(self, count: int, rng: random.Random, folder: Path) -> list[dict[str, Any]]:
        return [{"prompt": f"{rng.choice(_SUBJECTS)} {rng.choice(_SETTINGS)}, {rng.choice(_STYLES)}"}
                for _ in range(count)]


def clip_scores(source: str, images: list[Any], prompts: list[str], batch_size: int = 16) -> list[float]:
    """CLIP score per image, as torchmetrics defines it: 100 x max(cosine(image, prompt), 0)."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model = pretrained(CLIPModel, source).eval()
    processor = pretrained(CLIPProcessor, source)
    scores: list[float] = []
    for i in range(0, len(images), batch_size):
        encoded = processor(text=prompts[i:i + batch_size], images=images[i:i + batch_size],
                            return_tensors="pt", padding=True, truncation=True)
        with torch.inference_mode():
            out = model(**encoded)
        cosine = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds, dim=-1)
        scores += (100 * cosine.clamp(min=0)).tolist()
    return scores
