"""A measurement other work contended, measured again: one rule for searches and studies.

A contended figure is never kept silently. The measurement is taken again, up to ``tries`` more
times, each after waiting (up to ``wait_s``) for the machine to leave the run its CPUs; the least
contended FINISHED measurement is kept and the others are tagged ``tracker.measurement.remeasured_by``
with the kept run's id, so that reports and skipped combinations use the kept one. Where every
measurement stayed contended, the kept run keeps its ``tracker.measurement.contended`` tag and
reason, and the caller says so.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tracker.options import option, parse_values

logger = logging.getLogger(__name__)

REMEASURE_TRIES = 1  # a contended measurement is taken once more by default (--remeasure)
REMEASURED_BY = "tracker.measurement.remeasured_by"
CONTENDED = "tracker.measurement.contended"
CONTENDED_REASON = "tracker.measurement.contended_reason"


@dataclass(frozen=True, kw_only=True)
class Remeasure:
    """How often a study measures a contended combination again."""

    remeasure: int = option(REMEASURE_TRIES, minimum=0, help=(
        f"measure a contended combination again up to this many times, each after waiting for quiet up to "
        f"--wait-for-quiet seconds, keeping the least contended (default {REMEASURE_TRIES}; 0: never)"))

    @classmethod
    def parse(cls, **raw: Any) -> Remeasure:
        return cls(**parse_values(cls, raw))


def contended(result: Any) -> bool:
    return result.status == "FINISHED" and result.run.data.tags.get(CONTENDED) == "true"


def contention_reason(result: Any) -> str:
    return result.run.data.tags.get(CONTENDED_REASON, "") if contended(result) else ""


def measure_until_quiet(client: Any, measure: Callable[[], Any], *, tries: int, wait_s: float,
                        threads: float | None = None) -> tuple[Any, list[Any]]:
    """``measure()`` (a ``ChildResult``), and again while it is contended, at most ``tries`` more
    times, waiting up to ``wait_s`` for quiet before each; returns (kept, dropped)."""
    results = [measure()]
    while contended(results[-1]) and len(results) <= tries:
        logger.info("run %s was contended (%s); measuring it again%s", results[-1].run.info.run_id,
                    contention_reason(results[-1]), f" after waiting up to {wait_s:g} s for quiet" if wait_s else "")
        if wait_s > 0:
            _wait_for_quiet(wait_s, threads)
        again = measure()
        if again.status != "FINISHED":  # a failure is not a quieter figure: keep what was measured
            logger.warning("measuring run %s again failed (%s); keeping it", results[-1].run.info.run_id, again.reason)
            break
        results.append(again)
    finished = [r for r in results if r.status == "FINISHED"]
    if len(finished) < 2:
        return results[0], []
    kept = min(finished, key=_disturbance)
    dropped = [r for r in finished if r is not kept]
    for result in dropped:
        client.set_tag(result.run.info.run_id, REMEASURED_BY, kept.run.info.run_id)
    return kept, dropped


def _disturbance(result: Any) -> tuple[bool, float]:
    """Quiet before contended; then the smaller share of the machine others used."""
    return contended(result), result.run.data.metrics.get("background_cpu_share", math.inf)


def _wait_for_quiet(wait_s: float, threads: float | None) -> None:
    from tracker.measurement.meter import wait_for_quiet
    from tracker.measurement.readings import SystemProbe

    waited = wait_for_quiet(SystemProbe(), wait_s, own_threads=threads)
    logger.info("waited %.1f s: the machine was %s", waited.waited_s, "quiet" if waited.quiet else "still busy")
