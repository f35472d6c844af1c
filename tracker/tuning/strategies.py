"""How a search picks its next setting: the structured strategy, or one of Optuna's samplers.

The structured strategy uses what is known of the space (Power Hungry Processing's measurements,
and ours): carbon per output falls as the batch grows, until a plateau, and a precision's quality
loss, when it has one, grows with the batch (int8's dynamic quantization scales activations per
batch). So, per precision, it measures the largest batch first; where that loses too much quality
it bisects for the largest batch that keeps it (a precision whose largest batch already costs more
than the leader is not searched further: its smaller batches cost more still). Then it steps down
from the leader while that is cheaper (the plateau), tries each other knob asked for on the
leader, and, when the leader's and runner-up's intervals overlap, measures both again,
interleaved, so the summary can say whether it is a tie.

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
MAX_FAILURES_PER_PRECISION = 2  # a precision whose measurements die this often (e.g. SIGILL) is given up

# The precisions in the order the structured strategy tries them: the cheapest expected first, so
# that the leader is known early and costlier precisions can be cut short. On CPUs here int8 cost
# least, bf16 about a fifth of fp32 from batch 16, fp16 the most (README, "What it has measured").
PRECISION_ORDER = {"cpu": ("int8", "bf16", "fp32", "fp16"), "cuda": ("fp16", "bf16", "fp32", "int8")}

Role = Literal["probe", "bisect", "plateau", "knob", "confirm"]


@dataclass(frozen=True)
class Space:
    """The settings a search may measure: each knob's values, the run's default first."""

    batch_sizes: tuple[int, ...]  # ascending
    precisions: tuple[str, ...]  # in the order the structured strategy tries them
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
    known = lambda params: settings.get(key(params))  # noqa: E731

    def leaders() -> list[tuple[dict[str, Any], _Setting]]:
        ranked = [(dict(k), s) for k, s in settings.items() if s.finished and s.feasible
                  and not math.isnan(s.carbon.mean)]
        return sorted(ranked, key=lambda item: item[1].carbon.mean)

    # 1. Per precision: the largest batch, then bisection for the largest batch that keeps quality.
    batches = space.batch_sizes
    for precision in space.precisions:
        states = [known(space.setting(b, precision)) for b in batches]
        if sum(1 for s in states if s is not None and s.failed) >= MAX_FAILURES_PER_PRECISION:
            continue
        top = states[-1]
        if top is None:
            return space.setting(batches[-1], precision), "probe"
        if top.pending or top.feasible:
            continue
        ranked = leaders()
        if top.finished and ranked and top.carbon.mean >= ranked[0][1].carbon.mean:
            continue  # infeasible and already dearer than the leader: its smaller batches cost more
        low = max((i for i, s in enumerate(states) if s is not None and s.finished and s.feasible), default=-1)
        high = min(i for i, s in enumerate(states) if i > low and s is not None and not s.pending
                   and not (s.finished and s.feasible))
        if high - low <= 1:
            continue
        middle = (low + high + 1) // 2  # leaning to the larger batch: it is the cheaper one
        if states[middle] is None:
            return space.setting(batches[middle], precision), "bisect"

    ranked = leaders()
    if not ranked:
        return None
    leader, _ = ranked[0]
    # 2. The plateau: a smaller batch of the leader's settings, while that is cheaper.
    index = batches.index(leader["batch_size"])
    if index > 0:
        smaller = leader | {"batch_size": batches[index - 1]}
        if known(smaller) is None:
            return smaller, "plateau"
    # 3. Every other knob asked for, on the leader.
    for name, values in space.extra.items():
        for value in values:
            candidate = leader | {name: value}
            if known(candidate) is None:
                return candidate, "knob"
    # 4. Leader and runner-up measured again, interleaved, when their intervals overlap.
    if len(ranked) > 1:
        (runner_up, second), (_, first) = ranked[1], ranked[0]
        if _overlap(first.carbon, second.carbon):
            for params, setting in ((runner_up, second), (leader, first)):
                if len(setting.finished) < 2 and not any(m.pending for m in setting.measurements):
                    return params, "confirm"
    return None


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
