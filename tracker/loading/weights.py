"""Whether a model folder's weights can be loaded, and safely: checked before any run is made.

A folder with a config but no weights, a damaged safetensors file, or pickled weights holding
objects that torch's safe loader refuses would otherwise fail deep inside ``from_pretrained`` with
a traceback (and, for pickles, torch's advice to turn the safe loader off, which we never repeat:
such a file can run code when loaded). ``load_error`` turns the same failures into one line when
they surface at load time instead (a Hub model, a file changed since the check).
"""

from __future__ import annotations

import re
from pathlib import Path

# What transformers and diffusers load: safetensors first; pickles only where no safetensors is.
SAFETENSORS = ("model*.safetensors", "diffusion_pytorch_model*.safetensors")
PICKLES = ("pytorch_model*.bin", "diffusion_pytorch_model*.bin")
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def weights_problem(folder: Path) -> str | None:
    """What stops the weights of a save_pretrained folder (or a pipeline's subfolders) from loading."""
    folders = [folder, *(p for p in sorted(folder.iterdir()) if p.is_dir())]
    found = False
    for place in folders:
        safetensors = sorted(f for pattern in SAFETENSORS for f in place.glob(pattern))
        pickles = [] if safetensors else sorted(f for pattern in PICKLES for f in place.glob(pattern))
        found = found or bool(safetensors or pickles)
        checks = [(f, _safetensors_problem) for f in safetensors] + [(f, _pickle_problem) for f in pickles]
        for file, check in checks:
            problem = check(file)
            if problem:
                return f"{file.relative_to(folder)} {problem}"
    if not found:
        return ("holds no weights (model.safetensors or pytorch_model.bin, or a pipeline's subfolders "
                "with them): copy the weights beside its config.json")
    return None


def load_error(err: BaseException) -> str | None:
    """One line for a load failure that is about the weights, or None for any other failure."""
    text = str(err)
    if type(err).__name__ == "UnpicklingError" or "Weights only load failed" in text:
        return "its weights hold " + _refused(text)
    if type(err).__name__ == "SafetensorError":
        return f"its weights are unreadable ({text.splitlines()[0]}): the file is damaged or not safetensors"
    if isinstance(err, OSError) and "no file named" in text:
        return f"it holds no weights ({text.splitlines()[0]})"
    if "ignore_mismatched_sizes" in text or "size mismatch" in text:
        return ("its weights do not fit its config.json (some tensors' shapes differ from the ones it describes): "
                "fix config.json or copy the model folder again")
    return None


def _safetensors_problem(file: Path) -> str | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as weights:
            weights.keys()
    except (SafetensorError, OSError) as err:
        return (f"is unreadable ({str(err).splitlines()[0]}): the file is damaged or not safetensors; "
                "copy or download it again")
    return None


def _pickle_problem(file: Path) -> str | None:
    import pickle

    import torch

    try:
        try:  # mmap reads no tensor data: only the pickle's objects are checked
            torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            torch.load(file, map_location="cpu", weights_only=True)  # the legacy format cannot be mapped
    except pickle.UnpicklingError as err:
        return "holds " + _refused(str(err))
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        return f"is unreadable ({str(err).splitlines()[0]}): the file is damaged; copy or download it again"
    return None


def _refused(text: str) -> str:
    refused = _REFUSED_GLOBAL.search(text)
    what = f" ({refused.group(1)})" if refused else ""
    return (f"pickled objects{what} that torch's safe loader refuses: loading such a file can run code. "
            "Use a safetensors copy of the weights (e.g. from the model's publisher), or another model")
