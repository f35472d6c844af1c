"""A search's settings, checked, and the constraint a trial must meet to keep quality."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from tracker.config import RunConfig
from tracker.errors import ConfigError

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

    def __post_init__(self) -> None:
        if self.n_trials < 1:
            raise ConfigError(f"--n-trials must be a positive whole number, got {self.n_trials}")
        if self.baseline_every < 1:
            raise ConfigError(f"--baseline-every must be a positive whole number, got {self.baseline_every}")
        if self.max_batch_size < 1:
            raise ConfigError(f"--max-batch-size must be a positive whole number, got {self.max_batch_size}")
        if not 0 <= self.max_quality_drop < 1:
            raise ConfigError(f"--max-quality-drop must be in [0, 1), got {self.max_quality_drop:g}")
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
        return f"tune-{run.task}-{model}-{run.dataset or 'default'}-{run.n_samples}"

    def batch_sizes(self) -> list[int]:
        """Powers of two up to the maximum."""
        return [2 ** i for i in range(int(math.log2(self.max_batch_size)) + 1)]

    def search_precisions(self, device: str) -> list[str]:
        from tracker.precision import PRECISIONS

        if self.precisions:
            return list(self.precisions)
        return [p for p in PRECISIONS if not (p == "int8" and device != "cpu")]


def feasibility(quality: float, reference: float, max_drop: float, higher_is_better: bool) -> float:
    """Optuna's constraint value: <= 0 when the quality is good enough, > 0 by how much it is not.

    A quality that could not be computed (NaN) is infeasible: it cannot be shown to keep quality.
    """
    if math.isnan(quality) or math.isnan(reference):
        return math.inf
    if higher_is_better:
        return reference * (1 - max_drop) - quality
    return quality - reference * (1 + max_drop)
