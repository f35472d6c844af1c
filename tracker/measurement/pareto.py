"""The Pareto front of cost against quality: shared by the search and the report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

Item = TypeVar("Item")


def pareto_front(items: Sequence[Item], *, cost: Callable[[Item], float], quality: Callable[[Item], float],
                 higher_is_better: bool) -> list[Item]:
    """The items no other item beats on both cost (lower is better) and quality, by ascending cost.

    Items with the same cost and quality are all kept: neither beats the other.
    """
    def point(item: Item) -> tuple[float, float]:
        return cost(item), quality(item) if higher_is_better else -quality(item)

    points = [point(item) for item in items]

    def dominated(p: tuple[float, float]) -> bool:
        return any(o[0] <= p[0] and o[1] >= p[1] and o != p for o in points)

    return sorted((item for item, p in zip(items, points) if not dominated(p)), key=cost)
