"""The local executor: a study's combinations measured one after another on this machine."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tracker.study.definition import StudyDefinition
from tracker.study.outcomes import Outcome, Pending, Progress, measure_quietly, outcome_of


def measure_locally(client: Any, definition: StudyDefinition, pending: Pending, progress: Progress, *,
                    remeasure: int) -> Iterator[tuple[int, Outcome]]:
    for number, combination in pending:
        progress.started(combination)
        result = measure_quietly(client, combination.config, {"tracker.study.name": definition.name},
                                 remeasure=remeasure)
        outcome = outcome_of(combination, result)
        progress.ended(outcome)
        yield number, outcome
