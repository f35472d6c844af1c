"""Where a study's runs, or a search's workers, happen: on this machine one after another, or spread
over a Ray cluster, one measurement per node (or per GPU) at a time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tracker.errors import ConfigError
from tracker.options import option, parse_values

EXECUTORS = ("local", "ray")


@dataclass(frozen=True, kw_only=True)
class Placement:
    executor: str = option("local", help="local (default: one after another on this machine) or ray (spread over "
                                         "a Ray cluster, one measurement per node at a time)")
    address: str | None = option(help="the Ray cluster's HOST:PORT (default: RAY_ADDRESS, else the cluster "
                                      "`ray start --head` started here)")
    per_node: int = option(1, minimum=1, help="measurements at a time on one Ray node, or per GPU on a GPU node "
                                              "(default 1; more disturb each other's figures, and their runs are "
                                              "tagged tracker.executor.per_node)")
    workers: int = option(1, minimum=1, help="tune workers of one study, started as Ray tasks with --executor ray "
                                             "(default 1)")

    @classmethod
    def parse(cls, **raw: Any) -> Placement:
        """From the flags' raw values, checked together: a Ray address or several per node or several
        workers only with --executor ray."""
        placement = cls(**parse_values(cls, raw))
        if placement.executor not in EXECUTORS:
            raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got '{placement.executor}'")
        if placement.executor == "local" and (placement.address or placement.per_node != 1):
            raise ConfigError("--address and --per-node place runs on a Ray cluster: add --executor ray")
        if placement.executor == "local" and placement.workers > 1:
            raise ConfigError(f"--workers {placement.workers} needs --executor ray: workers on one machine would "
                              "measure at once and disturb each other's figures (or start `tracker tune` by hand "
                              "on other machines)")
        return placement
