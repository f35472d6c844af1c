"""Which torch device a run uses: ``auto`` resolved, and a device that is not there refused in one line."""

from __future__ import annotations

from tracker.errors import ConfigError


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{requested}' requested but torch sees no CUDA GPU; use --device cpu")
        index = int(requested.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device '{requested}' does not exist: torch sees "
                              f"{torch.cuda.device_count()} GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        return f"cuda:{index}"
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but it is not available; use --device cpu")
    return requested
