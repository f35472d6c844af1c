"""What a measured run returns to its caller (the CLI, the Python API, a study or a search)."""

from __future__ import annotations

from dataclasses import dataclass

from tracker.runs.config import RunConfig


@dataclass
class RunResult:
    """A finished measured run: its id, experiment, every metric and tag logged, and its config."""

    run_id: str
    experiment: str
    metrics: dict[str, float]
    tags: dict[str, str]
    config: RunConfig

    @property
    def energy_kwh_per_1k(self) -> float:
        return self.metrics.get("energy_kwh_per_1k", float("nan"))

    @property
    def quality(self) -> float:
        return self.metrics.get("quality", float("nan"))
