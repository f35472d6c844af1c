"""A model's own code (``auto_map`` in its config, a custom pipeline) runs only when the user asks.

Off unless a run is started with --trust-remote-code. Every ``from_pretrained`` of the package goes
through ``pretrained``, which always passes ``trust_remote_code`` explicitly: transformers then
never asks on stdin, and a folder's code never runs on a "y" typed or piped in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from tracker.errors import ModelLoadError
from tracker.loading.weights import load_error

TRUST_FLAG = "--trust-remote-code"
# Files in which a model folder names code of its own for transformers or diffusers to import.
_CODE_MAPS = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")

_REMOTE_CODE: ContextVar[bool] = ContextVar("tracker_remote_code", default=False)


@contextmanager
def remote_code(allowed: bool) -> Iterator[None]:
    """Allow (or not) models' own code for the loads inside this block."""
    token = _REMOTE_CODE.set(allowed)
    try:
        yield
    finally:
        _REMOTE_CODE.reset(token)


def pretrained(cls: Any, source: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(source, ...)`` with ``trust_remote_code`` always explicit; a refusal
    names the flag to use instead of transformers' advice to edit code."""
    allowed = _REMOTE_CODE.get()
    try:
        return cls.from_pretrained(source, trust_remote_code=allowed, **kwargs)
    except ValueError as err:
        if not allowed and "trust_remote_code" in str(err):
            raise ModelLoadError(f"model '{source}' needs its own code to load, which runs only with "
                                 f"{TRUST_FLAG}: pass it only for a model whose code you trust") from None
        raise
    except Exception as err:
        problem = load_error(err)
        if problem:  # from None: torch's own advice (turn its safe loader off) is never shown
            raise ModelLoadError(f"model '{source}' cannot be loaded: {problem}") from None
        raise


def custom_code(folder: Path) -> str | None:
    """What own code a model folder declares (an ``auto_map`` entry), or None."""
    for name in _CODE_MAPS:
        try:
            mapping = json.loads((folder / name).read_text()).get("auto_map")
        except (OSError, ValueError, AttributeError):
            continue
        if mapping:
            first = next(iter(mapping.values())) if isinstance(mapping, dict) else mapping
            return f"{name} auto_map -> {first}"
    return None


