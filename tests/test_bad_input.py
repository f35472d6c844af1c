"""Every bad input: one line naming the value and what is allowed, exit 2, no traceback, no run."""

import socket

import pytest
from conftest import all_runs

BASE = ["run", "--task", "text-classification", "--n-samples", "8", "--no-progress", "--country", "FRA"]


def _override(flag: str, value: str) -> list[str]:
    args = list(BASE)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("flag, value, expected", [
    ("--task", "summarisation", "did you mean 'summarization'"),
    ("--batch-size", "0", "--batch-size must be a positive whole number, got '0'"),
    ("--batch-size", "-3", "got '-3'"),
    ("--batch-size", "abc", "got 'abc'"),
    ("--precision", "fp8", "unknown precision 'fp8': choose one of fp32, fp16, bf16, int8"),
    ("--n-samples", "0", "--n-samples must be a positive whole number, got '0'"),
    ("--device", "tpu", "unknown device 'tpu'"),
    ("--country", "XYZ", "unknown country code 'XYZ'"),
    ("--model", "./no/such/model", "model path './no/such/model' does not exist"),
    ("--dataset", "no_such_dataset", "dataset 'no_such_dataset' not found"),
    ("--model", "someone/not-cached-model", "cannot load model 'someone/not-cached-model'"),
    ("--dataset", "sst2", "cannot load dataset 'sst2'"),  # named explicitly: no fallback
])
def test_bad_input_is_one_clear_line(cli, client, flag, value, expected):
    code, out, err = cli(*_override(flag, value))
    assert code == 2
    assert expected.lower() in err.lower()
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("tracker: error:")] == [err.strip().splitlines()[-1]]
    assert all_runs(client) == []


def test_dataset_without_the_needed_column(cli, client, hermetic):
    path = hermetic / "reviews.csv"
    path.write_text("review,stars\ngreat film,5\nawful film,1\n")
    code, _, err = cli(*_override("--dataset", str(path)), "--n-samples", "2")
    assert code == 2
    assert "has no column 'text' (its columns: review, stars); pass --text-column NAME" in err
    assert all_runs(client) == []


def test_unreachable_tracking_server(cli, monkeypatch):
    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code, _, err = cli(*BASE)
    assert code == 2
    assert f"cannot reach the MLflow tracking server at {uri}" in err
    assert "Traceback" not in err


def test_cuda_without_a_gpu(cli, client):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, _, err = cli(*_override("--device", "cuda"))
    assert code == 2 and "torch sees no CUDA GPU; use --device cpu" in err
    assert all_runs(client) == []


def test_int8_on_a_gpu_is_refused_before_any_run():
    from tracker.errors import PrecisionUnsupportedError
    from tracker.loading.precision import ensure_supported

    with pytest.raises(PrecisionUnsupportedError, match="runs on the CPU only"):
        ensure_supported("cuda:0", "int8")


def test_text_to_image_without_diffusers_is_refused_before_any_run(cli, client, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "diffusers" else real_find_spec(name, *a))
    code, _, err = cli("run", "--task", "text-to-image", "--n-samples", "2", "--no-progress")
    assert code == 2
    [line] = [line for line in err.splitlines() if line.startswith("tracker: error:")]
    assert 'pip install -e ".[diffusion]"' in line
    assert client.search_experiments() == [] or all(
        not client.search_runs([e.experiment_id]) for e in client.search_experiments())
