"""How a search picks its next setting: the structured strategy, or one of Optuna's samplers.

The structured strategy assumes no table of which precision is cheapest and no shape of cost
against batch size; it learns both from what this machine shows, in four steps:

1. **Probe**: each precision once, at the largest batch that runs. A setting that fails (out of
   memory, a crash) bounds its precision from above: the search bisects below it for the largest
   batch that runs, and gives a precision up only when its smallest batch fails too.
2. **Per precision, most promising first** (the cheapest measured so far): where the largest batch
   that runs loses quality, bisect for the largest that keeps it; then walk from the precision's
   cheapest feasible batch to its neighbours, on both sides, while a neighbour is cheaper. A
   neighbour that loses quality is looked past (a break at one batch does not rule out the next);
   a failure is not (memory grows with the batch).
3. Each other knob asked for, on the leader, and the leader's batch neighbours with those knobs.
4. Leader and runner-up measured again, interleaved, when their intervals overlap, so the summary
   can say whether it is a tie.

What it does assume: cost and quality along the batch sizes of one precision have few local
minima (a rugged landscape can hide a cheaper setting two batches away), and the precision that is
cheapest somewhere is usually cheapest near where it was probed (only the order of the search, not
its answer, depends on that). The precisions' given order only decides which is probed first.

It is an Optuna sampler that reads the study's trials, so a study stays resumable and several
workers on one PostgreSQL study share it (a setting being measured by another worker is not
proposed again). ``plan`` is a pure function of the measurements, also replayed by
``benchmarks/search_efficiency.py``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tracker.errors import ConfigError
from tracker.measurement.stats import Spread, pooled

STRATEGIES = ("structured", "tpe", "gp", "random", "grid")
Strategy = Literal["structured", "tpe", "gp", "random", "grid"]
KNOBS = ("batch_size", "precision", "threads", "sort_by_length", "attention", "compile")
DEFAULT_KNOBS = ("batch_size", "precision")

Role = Literal["probe", "bisect", "neighbour", "knob", "confirm"]


@dataclass(frozen=True)
class Space:
    """The settings a search may measure: each knob's values, the run's default first."""

    batch_sizes: tuple[int, ...]  # ascending
    precisions: tuple[str, ...]  # in the order the structured strategy probes them
    extra: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # other knobs searched

    def choices(self) -> dict[str, tuple[Any, ...]]:
        return {"batch_size": self.batch_sizes, "precision": self.precisions, **self.extra}

    def size(self) -> int:
        return math.prod(len(values) for values in self.choices().values())

    def setting(self, batch_size: int, precision: str, **knobs: Any) -> dict[str, Any]:
        defaults = {name: values[0] for name, values in self.extra.items()}
        return {"batch_size": batch_size, "precision": precision, **defaults, **knobs}


@dataclass(frozen=True)
class Measured:
    """One measurement as the strategy sees it (a trial of the study)."""

    params: dict[str, Any]
    carbon: Spread | None = None  # None: failed, or still being measured
    feasible: bool = False
    pending: bool = False  # another worker is measuring it


def key(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(params.items()))


@dataclass
class _Setting:
    measurements: list[Measured]

    @property
    def finished(self) -> list[Measured]:
        return [m for m in self.measurements if m.carbon is not None]

    @property
    def pending(self) -> bool:
        return any(m.pending for m in self.measurements) and not self.finished

    @property
    def failed(self) -> bool:
        return not self.finished and not self.pending

    @property
    def feasible(self) -> bool:
        return any(m.feasible for m in self.finished)

    @property
    def carbon(self) -> Spread:
        return pooled([m.carbon for m in self.finished if m.carbon is not None])


def plan(space: Space, measured: Sequence[Measured]) -> tuple[dict[str, Any], Role] | None:
    """The next setting to measure and why, or None when the search has nothing left to learn."""
    settings: dict[tuple, _Setting] = {}
    for m in measured:
        settings.setdefault(key(m.params), _Setting([])).measurements.append(m)

    def row(base: dict[str, Any]) -> list[_Setting | None]:
        return [settings.get(key(base | {"batch_size": b})) for b in space.batch_sizes]

    def at(base: dict[str, Any], index: int) -> dict[str, Any]:
        return base | {"batch_size": space.batch_sizes[index]}

    bases = [space.setting(space.batch_sizes[-1], p) for p in space.precisions]
    # 1. Each precision once, where it runs.
    for base in bases:
        index = _runnable_step(row(base))
        if index is not None:
            return at(base, index), "probe"
    # 2. Per precision, the cheapest measured first: bisect where quality breaks, then the neighbours.
    for base in sorted(bases, key=lambda b: _cheapest(row(b))):
        cells = row(base)
        index = _bisect_step(cells)
        if index is not None:
            return at(base, index), "bisect"
        index = _neighbour_step(cells)
        if index is not None:
            return at(base, index), "neighbour"
    ranked = sorted(((dict(k), s) for k, s in settings.items() if _good(s)), key=lambda item: item[1].carbon.mean)
    if not ranked:
        return None
    leader = ranked[0][0]
    # 3. Every other knob asked for, on the leader, and the leader's batch neighbours with its knobs.
    for name, values in space.extra.items():
        for value in values:
            candidate = leader | {name: value}
            if settings.get(key(candidate)) is None:
                return candidate, "knob"
    index = _neighbour_step(row(leader))
    if index is not None:
        return at(leader, index), "neighbour"
    # 4. Leader and runner-up measured again, interleaved, when their intervals overlap.
    if len(ranked) > 1:
        (runner_up, second), (leader, first) = ranked[1], ranked[0]
        if _overlap(first.carbon, second.carbon):
            for params, setting in ((runner_up, second), (leader, first)):
                if len(setting.finished) < 2 and not any(m.pending for m in setting.measurements):
                    return params, "confirm"
    return None


def _good(setting: _Setting | None) -> bool:
    """Measured, kept quality, and has a figure."""
    return setting is not None and bool(setting.finished) and setting.feasible and not math.isnan(setting.carbon.mean)


def _ran(setting: _Setting | None) -> bool:
    return setting is not None and bool(setting.finished)


def _failed(setting: _Setting | None) -> bool:
    return setting is not None and setting.failed


def _cheapest(cells: list[_Setting | None]) -> float:
    """The lowest figure measured in a precision, kept quality or not: its promise."""
    figures = [c.carbon.mean for c in cells if _ran(c) and not math.isnan(c.carbon.mean)]
    return min(figures, default=math.inf)


def _failure_bound(cells: list[_Setting | None]) -> int:
    """The index of the smallest batch that failed above the largest that ran (memory grows with the
    batch: nothing above a failure is tried), or the number of batches."""
    ran = max((i for i, c in enumerate(cells) if _ran(c)), default=-1)
    return min((i for i, c in enumerate(cells) if i > ran and _failed(c)), default=len(cells))


def _runnable_step(cells: list[_Setting | None]) -> int | None:
    """Where to measure a precision that has not run yet: its largest batch, then (after a failure)
    bisection below the failure, then its smallest batch; None once it ran, is being measured, or
    failed even at its smallest batch (given up)."""
    if any(_ran(c) for c in cells) or any(c is not None and c.pending for c in cells) or _failed(cells[0]):
        return None
    failures = [i for i, c in enumerate(cells) if _failed(c)]
    if not failures:
        return len(cells) - 1
    if len(failures) >= 2:  # twice without running: the smallest batch says whether it runs at all
        return 0
    return failures[0] // 2


def _bisect_step(cells: list[_Setting | None]) -> int | None:
    """Between the largest batch that kept quality and the smallest above it that lost it or failed,
    the middle (leaning to the larger batch); None when they are neighbours or it is being measured."""
    if not any(_ran(c) for c in cells):
        return None
    low = max((i for i, c in enumerate(cells) if _good(c)), default=-1)
    high = min((i for i, c in enumerate(cells) if i > low and (_ran(c) or _failed(c))), default=None)
    if high is None or high - low <= 1:
        return None
    middle = (low + high + 1) // 2
    return middle if cells[middle] is None else None


def _neighbour_step(cells: list[_Setting | None]) -> int | None:
    """The unmeasured neighbour of the precision's cheapest feasible batch: the next smaller, and the
    next larger, looking past one that lost quality but not past a failure; None when both are known."""
    good = [i for i, c in enumerate(cells) if _good(c)]
    if not good:
        return None
    best = min(good, key=lambda i: cells[i].carbon.mean)
    bound = _failure_bound(cells)
    sides = [best - 1] if best > 0 else []
    above = best + 1
    if above < bound and _ran(cells[above]) and not cells[above].feasible:
        above += 1  # a break at one batch does not rule out the next
    if above < bound:
        sides.append(above)
    return next((i for i in sides if cells[i] is None), None)


def _overlap(a: Spread, b: Spread) -> bool:
    """Intervals that overlap, or a figure without one (it cannot be told apart)."""
    if a.n < 2 or b.n < 2 or math.isnan(a.std) or math.isnan(b.std):
        return True
    return a.overlaps(b)


def parse_knobs(given: str | Sequence[str] | None) -> tuple[str, ...]:
    if given is None or given == "":
        return DEFAULT_KNOBS
    names = tuple(v.strip() for v in (given.split(",") if isinstance(given, str) else given) if str(v).strip())
    unknown = [n for n in names if n not in KNOBS]
    if unknown or not names:
        raise ConfigError(f"--knobs takes a comma-separated list of {', '.join(KNOBS)}, got '{given}'")
    if "batch_size" not in names or "precision" not in names:
        raise ConfigError("--knobs must include batch_size and precision (the search's first two knobs): "
                          f"got '{given}'")
    return tuple(n for n in KNOBS if n in names)


def knob_values(name: str, *, default_threads: int) -> tuple[Any, ...]:
    """A knob's values to search, the run's default first."""
    if name == "threads":
        values = [default_threads]
        while values[-1] > 1:
            values.append(values[-1] // 2)
        return tuple(values)
    return {"sort_by_length": (False, True), "attention": ("sdpa", "eager"), "compile": (False, True)}[name]


def measured_of(trials: Sequence[Any], *, exclude: int | None = None) -> list[Measured]:
    """The study's trials as the strategy sees them: finished (with their carbon spread and whether
    they kept quality), failed, and running (another worker's)."""
    import optuna

    from tracker.tuning.baseline import trial_spread

    states = optuna.trial.TrialState
    seen = []
    for trial in trials:
        if trial.number == exclude or not trial.params:
            continue
        if trial.state == states.COMPLETE:
            spread = trial_spread(trial)
            feasible = (trial.user_attrs.get("constraint") or [math.inf])[0] <= 0
            seen.append(Measured(dict(trial.params), spread, feasible))
        elif trial.state == states.FAIL:
            seen.append(Measured(dict(trial.params)))
        elif trial.state == states.RUNNING:
            seen.append(Measured(dict(trial.params), pending=True))
    return seen


class StructuredSampler:
    """``plan`` as an Optuna sampler (a subclass of ``optuna.samplers.BaseSampler``, made by
    ``structured_sampler`` so that Optuna is imported only when a search runs)."""


def structured_sampler(space: Space) -> Any:
    import optuna
    from optuna.distributions import CategoricalDistribution

    class _Sampler(optuna.samplers.BaseSampler, StructuredSampler):
        def __init__(self) -> None:
            self.space = space
            self.roles: dict[int, Role] = {}

        def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
            return {name: CategoricalDistribution(values) for name, values in space.choices().items()}

        def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
            trials = study.get_trials(deepcopy=False)
            step = plan(space, measured_of(trials, exclude=trial.number))
            if step is None:  # nothing left: the leader again, pruned as a duplicate, and the search stops
                ranked = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
                if not ranked:
                    return {}
                return dict(min(ranked, key=lambda t: t.values[0]).params)
            params, self.roles[trial.number] = step
            return params

        def sample_independent(self, study: Any, trial: Any, param_name: str, distribution: Any) -> Any:
            return distribution.choices[0]

        def done(self, study: Any) -> bool:
            return plan(space, measured_of(study.get_trials(deepcopy=False))) is None

        def role(self, number: int) -> Role | None:
            return self.roles.get(number)

    return _Sampler()


def make_sampler(strategy: str, space: Space, *, seed: int | None, n_trials: int, pareto: bool) -> Any:
    """The strategy's Optuna sampler. All of them read the constraint each trial sets."""
    import optuna

    if pareto:  # two objectives: carbon and quality, no single leader to structure around
        return optuna.samplers.NSGAIISampler(seed=seed)
    if strategy == "structured":
        return structured_sampler(space)
    if strategy == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, n_trials))
    if strategy == "gp":
        with warnings.catch_warnings():  # marked experimental in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=min(5, n_trials))
    if strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if strategy == "grid":
        return optuna.samplers.GridSampler({k: list(v) for k, v in space.choices().items()}, seed=seed)
    raise ConfigError(f"unknown strategy '{strategy}': use {', '.join(STRATEGIES)}")
