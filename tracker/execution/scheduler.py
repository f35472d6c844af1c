"""One driver loop for work on a Ray cluster: each job placed on a free measurement slot of a node
(never more at once than the slots allow), watched until it ends, and stopped with its children
when the driver stops. A study's combinations and a search's tune workers both run through it;
what a job is, and what its end means, stay theirs.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tracker.errors import TrackerError
from tracker.execution.cluster import Node, NodeSlots, stop

J = TypeVar("J")
WAIT_S = 2.0  # how often the driver looks at the cluster while jobs run


@dataclass
class Placed(Generic[J]):
    """A job that ran: where, since when, and what its task returned, or the RayError that ended it
    (its node or its worker died, or the task raised)."""

    job: J
    node: str
    started: float  # time.monotonic() when it was placed
    value: Any = None
    error: BaseException | None = None


class NodeScheduler(Generic[J]):
    """Jobs placed on ``slots`` through ``submit(job, node)`` (which starts the job's Ray task and
    returns its reference); ``finished()`` yields each as it ends. ``what`` names the work in the
    error said when no node is left alive."""

    def __init__(self, ray: Any, slots: NodeSlots, submit: Callable[[J, Node], Any], *, what: str,
                 wait_s: float = WAIT_S) -> None:
        self.ray, self.slots, self.submit, self.what, self.wait_s = ray, slots, submit, what, wait_s
        self.queue: deque[tuple[J, str | None]] = deque()
        self.running: dict[Any, Placed[J]] = {}
        self._stopped = False

    def add(self, job: J, *, avoid: str | None = None, first: bool = False) -> None:
        """Queue a job; ``avoid``: a node it should not run on while another can take it (a retry)."""
        (self.queue.appendleft if first else self.queue.append)((job, avoid))

    def finished(self) -> Iterator[Placed[J]]:
        """Each job as it ends, until none is queued or running. If this is left by an exception
        (Ctrl-C, no node left, the consumer gone), the running jobs are stopped first."""
        from ray.exceptions import RayError

        try:
            while self.queue or self.running:
                self.slots.refresh()
                if not self.slots.nodes:
                    raise TrackerError(f"no node of the Ray cluster is alive to {self.what}; "
                                       f"{len(self.queue) + len(self.running)} left: start nodes (ray start --address "
                                       "...) and run the same command again")
                self._place()
                ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=self.wait_s)
                for ref in ready:
                    placed = self.running.pop(ref)
                    self.slots.give_back(placed.node)
                    try:
                        placed.value = self.ray.get(ref)
                    except RayError as err:
                        placed.error = err
                    yield placed
        except BaseException:
            self.stop()
            raise

    def stop(self) -> list[Placed[J]]:
        """Stop the running jobs (each task's child gets SIGTERM and closes what it measures);
        returns them. Done once, whoever asks first."""
        if not self._stopped:
            self._stopped = True
            stop(self.ray, list(self.running))
        return list(self.running.values())

    def _place(self) -> None:
        while self.queue:
            job, avoid = self.queue[0]
            node = self.slots.take(avoid=avoid)
            if node is None:
                return
            self.queue.popleft()
            ref = self.submit(job, node)
            self.running[ref] = Placed(job, node.id, time.monotonic())
