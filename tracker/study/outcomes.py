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
    contended: str = ""  # why its kept measurement is still contended, after measuring it again


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
    from tracker.execution.remeasure import contention_reason

    metrics = result.run.data.metrics if result.status == "FINISHED" else {}
    return Outcome(combination, result.status, result.run.info.run_id, result.reason, result.seconds, metrics, node,
                   contention_reason(result))


def measure_quietly(client: Any, config: Any, tags: dict[str, str], *, remeasure: int, attempt: str | None = None,
                    on_start: Callable[[Any], None] | None = None) -> Any:
    """One combination measured in a child process, and again while other work contends it (at
    most ``remeasure`` more times, each after waiting for quiet up to the run's --wait-for-quiet):
    the kept ``ChildResult``. Every executor measures through this."""
    from tracker.execution.child import measure_in_child
    from tracker.execution.remeasure import measure_until_quiet

    attempts = iter([attempt])
    kept, _ = measure_until_quiet(
        client, lambda: measure_in_child(client, config, tags, attempt=next(attempts, None), on_start=on_start),
        tries=remeasure, wait_s=config.wait_for_quiet, threads=config.threads)
    return kept
