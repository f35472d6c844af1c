"""What a server is sent: prompts from a task's dataset, a data file, or ShareGPT-style conversations,
each with the number of output tokens it asks for and, where the data has one, its reference."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracker.errors import DatasetError
from tracker.serving.loadgen import Prompt


@dataclass
class Workload:
    prompts: list[Prompt]
    dataset: str  # as the param says it
    source: str  # where the prompts came from, for the provenance tag
    scored: bool  # whether outputs are scored as the task scores them
    output_length: str  # how the requested output length was chosen
    sample_data: bool = False  # the built-in sample data: its quality figures mean nothing


def load_workload(config: Any) -> Workload:
    """The prompts of a ``ServeConfig``: its task's dataset (prompted as the task prompts a language
    model), a CSV/JSONL file read by the task's columns, or a ShareGPT-style JSON file."""
    path = Path(config.dataset) if config.dataset else None
    if path is not None and path.suffix == ".json" and path.is_file() and _is_sharegpt(path):
        return _sharegpt(path, config)
    return _task_dataset(config)


def _output_tokens(config: Any, reference: Any) -> int:
    if config.output_tokens != "data":
        return int(config.output_tokens)
    text = reference if isinstance(reference, str) else " ".join(map(str, reference or []))
    # About 4 tokens per 3 words of English (the server's tokenizer is not at hand): a cap, not a count.
    return max(1, math.ceil(len(text.split()) * 4 / 3))


def _length_how(config: Any) -> str:
    if config.output_tokens == "data":
        return ("from each reference's length: 4/3 tokens per word, as a cap (the server's tokenizer is not "
                "at hand here)")
    return f"{config.output_tokens} tokens asked per request"


def _task_dataset(config: Any) -> Workload:
    from tracker.loading import hub
    from tracker.sources.data import load_dataset
    from tracker.tasks import get_task

    task = get_task(config.task)
    if task.prompt_template is None:
        from tracker.errors import ConfigError
        from tracker.tasks import task_names

        prompted = [n for n in task_names() if get_task(n).prompt_template is not None]
        raise ConfigError(f"task '{task.name}' cannot be asked of a language model in a prompt: use "
                          f"{', '.join(prompted)}, or a ShareGPT-style --dataset")
    reachable = hub.prepare()
    loaded = load_dataset(task, config.dataset, config.n_prompts, hub_reachable=reachable)
    references = task.references(loaded.targets, loaded.spec)
    prompts = [Prompt(task.prompt(value), _output_tokens(config, ref), ref)
               for value, ref in zip(loaded.inputs, references, strict=True)]
    if not prompts:
        raise DatasetError(f"dataset {loaded.name} has no usable rows for task {task.name}")
    source = f"{loaded.source}: {loaded.location}"
    if loaded.fallback_reason:
        source += f" ({loaded.fallback_reason})"
    return Workload(prompts, loaded.name, source, scored=True, output_length=_length_how(config),
                    sample_data=loaded.source == "builtin")


def _is_sharegpt(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read {path} as JSON ({err}); give a ShareGPT-style list of conversations, "
                           "or a CSV/JSONL file") from None
    return isinstance(data, list) and bool(data) and isinstance(data[0], dict) and "conversations" in data[0]


def _sharegpt(path: Path, config: Any) -> Workload:
    """The first human turn of each conversation as the prompt, the answer after it as its reference
    (for the output length only: a conversation has no task metric)."""
    prompts = []
    for item in json.loads(path.read_text(encoding="utf-8")):
        turns = item.get("conversations") or []
        human = next((i for i, t in enumerate(turns) if t.get("from") in ("human", "user")), None)
        if human is None or not str(turns[human].get("value", "")).strip():
            continue
        answer = turns[human + 1].get("value", "") if human + 1 < len(turns) else ""
        prompts.append(Prompt(str(turns[human]["value"]), _output_tokens(config, answer), None))
        if len(prompts) >= config.n_prompts:
            break
    if not prompts:
        raise DatasetError(f"{path} has no conversation with a human turn: expected "
                           "[{\"conversations\": [{\"from\": \"human\", \"value\": ...}, ...]}, ...]")
    return Workload(prompts, str(path), f"ShareGPT-style conversations: {path}", scored=False,
                    output_length=_length_how(config))


def score(config: Any, workload: Workload, texts: list[str], references: list[Any]) -> dict[str, float]:
    """The outputs scored as the task scores a prompted model's outputs."""
    from tracker.tasks import get_task

    if not workload.scored or not texts:
        return {}
    task = get_task(config.task)
    metrics = task.score([task.parse_generation(t) for t in texts], references)
    if task.primary_metric in metrics:
        metrics["quality"] = metrics[task.primary_metric]
    return metrics
