"""What the executors of a study share: a combination's outcome, the pending list, the progress line."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from tracker.study.definition import Combination, StudyDefinition

logger = logging.getLogger("tracker.study")

Status = Literal["FINISHED", "FAILED", "KILLED", "SKIPPED"]


@dataclass
class Outcome:
    combination: Combination
    status: Status
    run_id: str | None = None
    reason: str = ""
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    node: str = ""  # where it was measured, for executors with several machines


Pending = list[tuple[int, Combination]]  # (number in the definition, combination)
Executor = Callable[[Any, StudyDefinition, Pending, "Progress"], Iterator[tuple[int, Outcome]]]


class Progress:
    """The study's progress in the log: combinations done, running and failed, as each one moves."""

    def __init__(self, total: int, done: int) -> None:
        self.total, self.done, self.running, self.failed = total, done, 0, 0

    def started(self, combination: Combination, where: str = "") -> None:
        self.running += 1
        logger.info("%s %s: running%s", self._counts(), combination.label, f" on {where}" if where else "")

    def ended(self, outcome: Outcome, retrying: bool = False) -> None:
        self.running -= 1
        if not retrying:
            self.done += 1
            self.failed += outcome.status in ("FAILED", "KILLED")
        logger.info("%s %s: %s in %.0f s%s%s%s", self._counts(), outcome.combination.label, outcome.status,
                    outcome.seconds, f" on {outcome.node}" if outcome.node else "",
                    f" ({outcome.reason})" if outcome.reason else "", "; trying it once more elsewhere" if retrying else "")

    def _counts(self) -> str:
        return f"[{self.done}/{self.total} done, {self.running} running, {self.failed} failed]"


def outcome_of(combination: Combination, result: Any, node: str = "") -> Outcome:
    """A study outcome from a child's result (``tracker.execution.child.ChildResult``)."""
    metrics = result.run.data.metrics if result.status == "FINISHED" else {}
    return Outcome(combination, result.status, result.run.info.run_id, result.reason, result.seconds, metrics, node)
