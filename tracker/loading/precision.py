"""Numeric precision: which ones run on a device, found safely, and how to apply one to a model.

Some precisions kill the process rather than raise: on CPUs that advertise AMX inside a virtual
machine that forbids it, a bf16 matrix multiply dies with SIGILL. So each precision is first tried
in a child process (the probe), with the same conversion code a run uses; the verdict is cached per
machine, torch version and device. When bf16 dies but works with oneDNN capped below AMX
(ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16), the run applies that cap and says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from tracker.errors import PrecisionUnsupportedError
from tracker.loading.builtin import cache_dir

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8")
ISA_CAP = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}
PROBE_TIMEOUT_S = 120


@dataclass(frozen=True)
class ProbeResult:
    device: str
    precision: str
    ok: bool
    reason: str = ""
    env: dict[str, str] = field(default_factory=dict)  # environment the precision needs


def convert(model: Any, precision: str, device: str) -> Any:
    """The model moved to ``device`` in ``precision``; int8 is dynamic quantization on the CPU.

    A diffusers pipeline is converted component by component (UNet, VAE, text encoder).
    """
    import torch

    if model is not None and not isinstance(model, torch.nn.Module) and hasattr(model, "components"):
        for name, component in model.components.items():
            if isinstance(component, torch.nn.Module):
                setattr(model, name, convert(component, precision, device))
        return model

    if precision == "int8":
        if device != "cpu":
            raise PrecisionUnsupportedError(
                f"int8 (dynamic quantization) runs on the CPU only, not on {device}; "
                "use --device cpu, or --precision fp16 or bf16 on a GPU"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated, still works
            from torch.ao.quantization import quantize_dynamic

            return quantize_dynamic(model.to("cpu"), {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    return model.to(device=device, dtype=dtype)


def ensure_supported(device: str, precision: str) -> ProbeResult:
    """The probe's verdict; raises PrecisionUnsupportedError with the alternatives when it fails.

    Applies the environment the precision needs (the oneDNN cap) to this process.
    """
    if precision == "fp32":
        return ProbeResult(device, precision, ok=True)
    if precision == "int8" and device != "cpu":
        convert(None, precision, device)  # raises the explanatory error
    result = probe(device, precision)
    if not result.ok:
        working = [p for p in PRECISIONS if p == "fp32" or (
            p != precision and not (p == "int8" and device != "cpu") and probe(device, p).ok)]
        raise PrecisionUnsupportedError(
            f"precision {precision} cannot run on {device} here ({result.reason}); "
            f"use one of: {', '.join(working)}"
        )
    for name, value in result.env.items():
        if os.environ.get(name) != value:
            logger.warning("%s on %s needs %s=%s (AMX is advertised but not usable); setting it",
                           precision, device, name, value)
            os.environ[name] = value
    return result


def probe(device: str, precision: str) -> ProbeResult:
    """Try ``precision`` on ``device`` in a child process; cached."""
    cache = cache_dir() / "precision-probe.json"
    key = _cache_key(device, precision)
    known = _read_json(cache)
    if key in known:
        return ProbeResult(**known[key])
    result = _run_probe(device, precision, env={})
    if not result.ok and result.reason.startswith("killed by SIGILL") and device == "cpu":
        capped = _run_probe(device, precision, env=ISA_CAP)
        if capped.ok:
            result = capped
    known[key] = asdict(result)
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = cache.with_suffix(f".{os.getpid()}.tmp")
    staging.write_text(json.dumps(known, indent=1))
    os.replace(staging, cache)
    return result


def probe_command(device: str, precision: str) -> list[str]:
    """The child process that tries a precision (tests replace it with one that really dies)."""
    return [sys.executable, "-m", "tracker.loading.precision", device, precision]


def _run_probe(device: str, precision: str, env: dict[str, str]) -> ProbeResult:
    command = probe_command(device, precision)
    try:
        done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return ProbeResult(device, precision, False, f"probe timed out after {PROBE_TIMEOUT_S} s")
    if done.returncode == 0:
        return ProbeResult(device, precision, True, env=env)
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        return ProbeResult(device, precision, False, f"killed by {name} in a test matrix multiply")
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return ProbeResult(device, precision, False, f"failed in a test matrix multiply: {last}")


def _cache_key(device: str, precision: str) -> str:
    import importlib.metadata

    parts = [platform.node(), _cpu_model(), importlib.metadata.version("torch"), sys.executable,
             device, precision, os.environ.get("CUDA_VISIBLE_DEVICES", ""),
             os.environ.get("ONEDNN_MAX_CPU_ISA", "")]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _read_json(path: Any) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _probe_main(device: str, precision: str) -> None:
    """Child process: convert a small model and run it; dies or raises if the precision cannot run."""
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 512))
    model = convert(model, precision, device)
    dtype = next(model.parameters(), torch.empty(0)).dtype if precision != "int8" else torch.float32
    inputs = torch.randn(16, 64, 512, device=device if precision != "int8" else "cpu", dtype=dtype)
    with torch.inference_mode():
        out = model(inputs)
        square = out[0] @ out[0].T
    if not torch.isfinite(square.float()).all():
        raise SystemExit("non-finite result")


if __name__ == "__main__":
    _probe_main(sys.argv[1], sys.argv[2])
