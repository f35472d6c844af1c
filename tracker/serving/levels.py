"""Which load levels a sweep measures, and which of them is best.

Given levels are measured in their order. ``--concurrency auto`` searches instead: it doubles the
concurrency from 1 while the latency targets hold and the carbon per token keeps falling (it stops
once a level is clearly dearer than the best, its 95% interval above the best's, or two levels in a
row are not the best: a rise within the noise does not end the search at once), then bisects the
gaps on both sides of the best while a midpoint beats it. It assumes no shape: the cost may fall,
flatten or rise with concurrency, and a level that breaks the targets bounds the search from above.

The best is the measured level with the lowest carbon per output token among those that keep the
targets; levels whose 95% intervals overlap it are named as ties. ``carbon_reduction_x`` is against
concurrency 1 of the first settings (one request at a time), with its 95% interval from the windows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tracker.measurement.stats import Spread, ratio_interval
from tracker.serving.loadgen import Level

MAX_REFINE_ROUNDS = 4


@dataclass
class LevelResult:
    level: Level
    run_id: str
    metrics: dict[str, float]
    feasible: bool  # keeps the latency targets
    per_window_token_j: list[float] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)  # the launch settings of its server

    @property
    def name(self) -> str:
        return self.level.name + (f" ({settings_slug(self.settings)})" if self.settings else "")

    @property
    def cost(self) -> tuple[float, float]:
        """What is minimized: carbon per output token (energy per token breaks ties, as at 0 gCO2eq/kWh)."""
        return (self.metrics.get("emissions_g_per_output_token", math.nan),
                self.metrics.get("energy_j_per_output_token", math.nan))

    @property
    def spread(self) -> Spread:
        return Spread.of(self.per_window_token_j)


def settings_slug(settings: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in settings.items())


def best_of(results: list[LevelResult]) -> LevelResult | None:
    """The feasible level with the lowest cost; None when no level kept the targets."""
    feasible = [r for r in results if r.feasible and not any(math.isnan(v) for v in r.cost)]
    return min(feasible, key=lambda r: r.cost) if feasible else None


def level_plan(config: Any, measured: list[LevelResult]) -> Iterator[Level]:
    """The levels to measure, in turn; ``measured`` holds the results of those yielded so far (the
    caller appends each before asking for the next), from which a search decides."""
    if not config.searches_concurrency:
        yield from config.levels()
        return
    yield from _concurrency_search(config.max_concurrency, measured)


def _concurrency_search(limit: int, measured: list[LevelResult]) -> Iterator[Level]:
    users = 1
    yield Level(concurrency=users)
    misses = 0  # levels in a row that were not the best
    while users < limit:
        last, best = measured[-1], best_of(measured)
        if not last.feasible or best is None:
            break
        misses = 0 if last is best else misses + 1
        if misses >= 2 or (last is not best and _clearly_dearer(last, best)):
            break
        users = min(users * 2, limit)
        yield Level(concurrency=users)
    for _ in range(MAX_REFINE_ROUNDS):
        best = best_of(measured)
        if best is None:
            return
        done = {r.level.concurrency for r in measured}
        here = best.level.concurrency
        below = max((c for c in done if c < here), default=None)
        above = min((c for c in done if c > here), default=None)
        midpoints = [m for m in ((below + here) // 2 if below else None, (here + above) // 2 if above else None)
                     if m is not None and m not in done]
        if not midpoints:
            return
        for users in midpoints:
            yield Level(concurrency=users)
        if best_of(measured) is best:
            return


def _clearly_dearer(result: LevelResult, best: LevelResult) -> bool:
    low, _ = result.spread.ci95
    _, high = best.spread.ci95
    return not math.isnan(low) and not math.isnan(high) and low > high


def summarize(results: list[LevelResult]) -> dict[str, Any]:
    """The best level within the targets, its ties, and its reduction against concurrency 1."""
    best = best_of(results)
    summary: dict[str, Any] = {"levels": len(results),
                               "levels_within_targets": sum(1 for r in results if r.feasible)}
    if best is None:
        return summary
    first = [r for r in results if r.settings == results[0].settings]
    baseline = next((r for r in first if r.level.concurrency == 1), first[0])
    ratio, low, high = ratio_interval(baseline.spread, best.spread)
    ties = [r.name for r in results if r is not best and r.feasible and r.spread.overlaps(best.spread)]
    if best.settings:
        summary["best_settings"] = settings_slug(best.settings)
    summary.update(best_level=best.name, best_run_id=best.run_id, baseline_level=baseline.name,
                   best_emissions_g_per_output_token=best.metrics["emissions_g_per_output_token"],
                   best_energy_j_per_output_token=best.metrics["energy_j_per_output_token"],
                   carbon_reduction_x=ratio, carbon_reduction_x_ci95_low=low, carbon_reduction_x_ci95_high=high,
                   tie=", ".join(ties) or None)
    if best.level.concurrency is not None:
        summary["best_concurrency"] = best.level.concurrency
    return summary
