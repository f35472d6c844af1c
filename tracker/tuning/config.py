"""A search's settings, checked, and the constraint a trial must meet to keep quality."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from tracker.errors import ConfigError
from tracker.loading.precision import PRECISIONS
from tracker.options import option, parse_values
from tracker.runs.config import RunConfig
from tracker.tuning.strategies import DEFAULT_KNOBS, STRATEGIES, Space, knob_values, parse_knobs

Objective = Literal["carbon", "pareto"]
TUNE_SEARCHES = ("batch_size", "precision")  # run options the search sets itself: not tune's flags
DEFAULT_STORAGE = "sqlite:///optuna.db"


@dataclass(frozen=True, kw_only=True)
class TuneConfig:
    run: RunConfig  # what every trial measures; batch_size and precision are the search's
    n_trials: int = option(20, minimum=1, help="trials in the study, all workers together (default 20)")
    max_batch_size: int = option(64, minimum=1, help="largest batch size tried; powers of two up to it (default 64)")
    precisions: tuple[str, ...] = option(  # empty: every precision that can apply to the device
        (), help="comma-separated precisions to try (default: all that apply to the device)")
    max_quality_drop: float = option(0.01, help="allowed quality loss against fp32 at batch 1, a fraction "
                                                "(default 0.01)")
    objective: Objective = option("carbon", help="carbon (lowest gCO2eq per output, quality as a constraint) or "
                                                 "pareto (default carbon)")
    study_name: str | None = option(help="Optuna study name; the same name and storage continue a study "
                                         "(default: derived)")
    storage: str = option(DEFAULT_STORAGE, help="sqlite:///FILE (one worker, default sqlite:///optuna.db) or "
                                                "postgresql://... (several)")
    min_window_s: float = option(3.0, help="repeat the query phase until the baseline fills this many seconds "
                                           "(default 3)")
    heartbeat_s: int = option(30, minimum=1, help="seconds between a worker's heartbeats; a trial silent 3x as "
                                                  "long is retried (default 30)")
    sampler_seed: int | None = option(minimum=0, help="seed of the sampler (default: random)")
    baseline_every: int = option(4, minimum=1,  # each worker measures the baseline again after this many trials
                                 help="measure the baseline (batch 1, fp32) again after this many trials of a "
                                      "worker (default 4)")
    strategy: str = option("structured",  # how the next setting is picked (tracker.tuning.strategies)
                           help="structured (default: largest batch first per precision, bisect where quality "
                                "breaks, confirm the leaders), tpe, gp, random or grid")
    knobs: tuple[str, ...] = option(DEFAULT_KNOBS,  # what is searched; the others stay as the run sets them
                                    help="comma-separated knobs to search: batch_size, precision, threads, "
                                         "sort_by_length, attention, compile (default: batch_size,precision)")

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
        if any(p not in PRECISIONS for p in self.precisions):
            raise ConfigError(f"--precisions takes a comma-separated list of {', '.join(PRECISIONS)}, "
                              f"got '{','.join(self.precisions)}'")
        object.__setattr__(self, "knobs", parse_knobs(self.knobs))  # checked, in the search's order
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
        if self.precisions:
            return list(self.precisions)
        return [p for p in PRECISIONS if not (p == "int8" and device != "cpu")]

    def space(self, device: str) -> Space:
        """The settings searched: batch sizes, precisions in the order given (the structured strategy
        probes them in that order and then ranks them by what it measured), and each other knob asked
        for (its values, the run's default first)."""
        precisions = self.search_precisions(device)
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
    if "run" in raw:
        raise ConfigError("unknown search parameter(s): run")
    return TuneConfig(run=run, **parse_values(TuneConfig, raw, what="search parameter"))


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
