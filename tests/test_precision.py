"""Precisions that kill the process are found in a child process, never in the run itself."""

import os
import sys

import pytest
from conftest import all_runs

from tracker.errors import PrecisionUnsupportedError
from tracker.loading import precision

DIES_BY_SIGILL = "import os, signal; os.kill(os.getpid(), signal.SIGILL)"
DIES_UNLESS_CAPPED = ("import os, signal\n"
                      "if os.environ.get('ONEDNN_MAX_CPU_ISA') != 'AVX512_CORE_BF16':\n"
                      "    os.kill(os.getpid(), signal.SIGILL)")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKER_CACHE_DIR", str(tmp_path / "probe-cache"))
    before = os.environ.pop("ONEDNN_MAX_CPU_ISA", None)
    yield
    # ensure_supported sets the cap for the whole process, as a run needs: not for the next tests
    os.environ.pop("ONEDNN_MAX_CPU_ISA", None)
    if before is not None:
        os.environ["ONEDNN_MAX_CPU_ISA"] = before


def _child(monkeypatch, code):
    monkeypatch.setattr(precision, "probe_command", lambda device, p: [sys.executable, "-c", code])


def test_real_probe_of_int8_on_cpu(fresh_cache):
    assert precision.probe("cpu", "int8").ok


def test_a_child_killed_by_sigill_is_reported_and_cached(fresh_cache, monkeypatch):
    _child(monkeypatch, DIES_BY_SIGILL)
    result = precision.probe("cpu", "bf16")
    assert not result.ok and "SIGILL" in result.reason
    # cached: a child that would now succeed is not even started
    _child(monkeypatch, "pass")
    assert not precision.probe("cpu", "bf16").ok


def test_bf16_that_works_with_the_onednn_cap_gets_it(fresh_cache, monkeypatch):
    _child(monkeypatch, DIES_UNLESS_CAPPED)
    result = precision.ensure_supported("cpu", "bf16")
    assert result.ok and result.env == {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE_BF16"


def test_unsupported_precision_is_refused_with_alternatives(fresh_cache, monkeypatch):
    _child(monkeypatch, DIES_BY_SIGILL)
    with pytest.raises(PrecisionUnsupportedError, match=r"bf16 cannot run on cpu here \(killed by SIGILL"):
        precision.ensure_supported("cpu", "bf16")


def test_cli_refuses_a_dying_precision_and_leaves_no_run(cli, client, fresh_cache, monkeypatch):
    _child(monkeypatch, DIES_BY_SIGILL)
    code, _, err = cli("run", "--task", "text-classification", "--precision", "bf16", "--n-samples", "4",
                       "--country", "FRA", "--no-progress")
    assert code == 2
    assert "precision bf16 cannot run on cpu here" in err and "use one of: fp32" in err
    assert all_runs(client) == []
