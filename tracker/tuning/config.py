"""A search's settings, checked, and the constraint a trial must meet to keep quality."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from tracker.errors import ConfigError
from tracker.runs.config import RunConfig
from tracker.tuning.strategies import (
    DEFAULT_KNOBS,
    PRECISION_ORDER,
    STRATEGIES,
    Space,
    knob_values,
    parse_knobs,
)

Objective = Literal["carbon", "pareto"]
DEFAULT_STORAGE = "sqlite:///optuna.db"


@dataclass(frozen=True, kw_only=True)
class TuneConfig:
    run: RunConfig  # what every trial measures; batch_size and precision are the search's
    n_trials: int = 20
    max_batch_size: int = 64
    precisions: tuple[str, ...] = ()  # empty: every precision that can apply to the device
    max_quality_drop: float = 0.01
    objective: Objective = "carbon"
    study_name: str | None = None
    storage: str = DEFAULT_STORAGE
    min_window_s: float = 3.0
    heartbeat_s: int = 30
    seed: int | None = None
    baseline_every: int = 4  # each worker measures the baseline again after this many trials
    strategy: str = "structured"  # how the next setting is picked (tracker.tuning.strategies)
    knobs: tuple[str, ...] = DEFAULT_KNOBS  # what is searched; the others stay as the run sets them

    def __post_init__(self) -> None:
        if self.n_trials < 1:
            raise ConfigError(f"--n-trials must be a positive whole number, got {self.n_trials}")
        if self.baseline_every < 1:
            raise ConfigError(f"--baseline-every must be a positive whole number, got {self.baseline_every}")
        if self.max_batch_size < 1:
            raise ConfigError(f"--max-batch-size must be a positive whole number, got {self.max_batch_size}")
        if not 0 <= self.max_quality_drop < 1:
            raise ConfigError(f"--max-quality-drop must be in [0, 1), got {self.max_quality_drop:g}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy '{self.strategy}': use {', '.join(STRATEGIES)}")
        parse_knobs(self.knobs)
        if self.objective not in ("carbon", "pareto"):
            raise ConfigError(f"unknown objective '{self.objective}': use carbon or pareto")
        if not self.storage.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg2://", "mysql")):
            raise ConfigError(f"--storage '{self.storage}' is not a database URL: use "
                              "sqlite:///FILE (one worker) or postgresql://USER:PASS@HOST/DB (several)")

    @property
    def name(self) -> str:
        if self.study_name:
            return self.study_name
        run = self.run
        model = (run.model or "default").rstrip("/").split("/")[-1]
        extra = [k for k in self.knobs if k not in DEFAULT_KNOBS]  # another space: another study
        return (f"tune-{run.task}-{model}-{run.dataset or 'default'}-{run.n_samples}"
                + "".join(f"-{k}" for k in extra))

    def batch_sizes(self) -> list[int]:
        """Powers of two up to the maximum."""
        return [2 ** i for i in range(int(math.log2(self.max_batch_size)) + 1)]

    def search_precisions(self, device: str) -> list[str]:
        from tracker.loading.precision import PRECISIONS

        if self.precisions:
            return list(self.precisions)
        return [p for p in PRECISIONS if not (p == "int8" and device != "cpu")]

    def space(self, device: str) -> Space:
        """The settings searched: batch sizes, precisions in the order the structured strategy
        tries them, and each other knob asked for (its values, the run's default first)."""
        order = PRECISION_ORDER["cpu" if device == "cpu" else "cuda"]
        precisions = sorted(self.search_precisions(device), key=lambda p: order.index(p) if p in order else len(order))
        extra = {}
        for name in self.knobs:
            if name in ("batch_size", "precision"):
                continue
            values = knob_values(name, default_threads=default_threads())
            fixed = getattr(self.run, name)  # a value given for the run goes first: it is the default
            if fixed not in (None, False) and fixed in values:
                values = (fixed, *[v for v in values if v != fixed])
            extra[name] = values
        return Space(tuple(self.batch_sizes()), tuple(precisions), extra)


def parse_tune_config(run: RunConfig, **raw: Any) -> TuneConfig:
    """A TuneConfig from raw values (the CLI's strings, or the API's numbers and lists); empty and
    None mean "default". Each bad value gets a one-line error naming its flag."""
    from tracker.loading.precision import PRECISIONS
    from tracker.runs.config import _integer, _number, flag

    raw = {k: v for k, v in raw.items() if v not in (None, "")}
    known = {"n_trials", "max_batch_size", "precisions", "max_quality_drop", "objective", "study_name", "storage",
             "min_window_s", "heartbeat_s", "sampler_seed", "baseline_every", "strategy", "knobs"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"unknown search parameter(s): {', '.join(flag(k) for k in sorted(unknown))}")
    options: dict[str, Any] = {"run": run}
    for name, minimum in (("n_trials", 1), ("max_batch_size", 1), ("heartbeat_s", 1), ("sampler_seed", 0),
                          ("baseline_every", 1)):
        if name in raw:
            options["seed" if name == "sampler_seed" else name] = _integer(name, raw[name], minimum)
    for name in ("max_quality_drop", "min_window_s"):
        if name in raw:
            options[name] = _number(name, raw[name])
    if "precisions" in raw:
        given = raw["precisions"]
        chosen = tuple(v.strip() for v in (given.split(",") if isinstance(given, str) else given) if str(v).strip())
        if not chosen or any(p not in PRECISIONS for p in chosen):
            raise ConfigError(f"--precisions takes a comma-separated list of {', '.join(PRECISIONS)}, got '{given}'")
        options["precisions"] = chosen
    if "knobs" in raw:
        options["knobs"] = parse_knobs(raw["knobs"])
    options.update({k: raw[k] for k in ("objective", "study_name", "storage", "strategy") if k in raw})
    return TuneConfig(**options)


def default_threads() -> int:
    """torch's CPU threads by default (the physical cores)."""
    import torch

    return torch.get_num_threads()


def feasibility(quality: float, reference: float, max_drop: float, higher_is_better: bool) -> float:
    """Optuna's constraint value: <= 0 when the quality is good enough, > 0 by how much it is not.

    A quality that could not be computed (NaN) is infeasible: it cannot be shown to keep quality.
    """
    if math.isnan(quality) or math.isnan(reference):
        return math.inf
    if higher_is_better:
        return reference * (1 - max_drop) - quality
    return quality - reference * (1 + max_drop)
