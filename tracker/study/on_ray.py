"""The Ray executor: a study's combinations spread over a Ray cluster, one measurement per node (or
per GPU) at a time (``tracker.execution.cluster`` places them).

Each combination is a Ray task that runs `tracker run` in a child process on its node, exactly as
the local executor does on this machine (``measure_in_child``), logging to the tracking store this
driver uses. Its runs are tagged ``tracker.executor=ray``, ``tracker.executor.node`` (the Ray node
id), ``tracker.executor.per_node`` and, on a GPU node, ``tracker.executor.gpus``. A task lost with
its node or its worker leaves its run closed (KILLED by the run itself, which gets SIGTERM when its
parent dies, or FAILED with the reason by this driver) and is tried once more on another node.
Stopping the driver stops the running tasks: their runs end KILLED with their energy, and the same
command resumes the study, skipping what is FINISHED.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tracker.errors import TrackerError
from tracker.execution.cluster import (
    NodeSlots,
    check_store_for,
    connect,
    short,
    stop,
    tracking_env,
)
from tracker.study.definition import Combination, StudyDefinition
from tracker.study.outcomes import Executor, Outcome, Pending, Progress

NODE_LOSS_RETRIES = 1  # a combination whose node died is tried once more, elsewhere
WAIT_S = 2.0  # how often the driver looks at the cluster while tasks run


def measure_on_node(config: dict[str, Any], tags: dict[str, str], attempt: str, env: dict[str, str]) -> dict[str, Any]:
    """In a Ray worker on its node: the combination measured by `tracker run` in a child process."""
    import os

    import ray
    from mlflow import MlflowClient

    from tracker.execution.child import measure_in_child
    from tracker.execution.cluster import cancellable
    from tracker.runs.config import RunConfig

    os.environ.update(env)
    context = ray.get_runtime_context()
    tags = tags | {"tracker.executor.node": context.get_node_id()}
    gpus = ray.get_gpu_ids()
    if gpus:
        tags["tracker.executor.gpus"] = ",".join(map(str, gpus))
    client, run_config = MlflowClient(), RunConfig(**config)
    result = cancellable(lambda on_start: measure_in_child(client, run_config, tags, attempt=attempt, on_start=on_start))
    return {"status": result.status, "run_id": result.run.info.run_id, "reason": result.reason,
            "seconds": result.seconds, "metrics": dict(result.run.data.metrics) if result.status == "FINISHED" else {}}


@dataclass
class _Flight:
    number: int
    combination: Combination
    node: str
    attempt: str
    tries: int
    started: float


def ray_executor(*, address: str | None, per_node: int) -> Executor:
    def measure(client: Any, definition: StudyDefinition, pending: Pending,
                progress: Progress) -> Iterator[tuple[int, Outcome]]:
        if not pending:
            return
        ray = connect(address)
        from ray.exceptions import RayError, RayTaskError

        slots = NodeSlots(ray, per_node)
        check_store_for(list(slots.nodes.values()), client.tracking_uri)
        env = tracking_env(client.tracking_uri)
        task = ray.remote(measure_on_node)
        tags = {"tracker.study.name": definition.name, "tracker.executor": "ray",
                "tracker.executor.per_node": str(per_node)}
        queue = deque((number, combination, 0, "") for number, combination in pending)
        running: dict[Any, _Flight] = {}
        try:
            while queue or running:
                slots.refresh()
                if not slots.nodes:
                    raise TrackerError(f"no node of the Ray cluster is alive to measure on; {len(queue) + len(running)} "
                                       "combination(s) left: start nodes (ray start --address ...) and run the "
                                       "same command again")
                while queue:
                    number, combination, tries, avoid = queue[0]
                    node = slots.take(avoid=avoid or None)
                    if node is None:
                        break
                    queue.popleft()
                    attempt = uuid.uuid4().hex
                    ref = task.options(**slots.options(node)).remote(combination.config.as_dict(), tags, attempt, env)
                    running[ref] = _Flight(number, combination, node.id, attempt, tries, time.monotonic())
                    progress.started(combination, f"node {short(node.id)}")
                ready, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_S)
                for ref in ready:
                    flight = running.pop(ref)
                    slots.give_back(flight.node)
                    try:
                        reply = ray.get(ref)
                    except RayTaskError as err:  # our task raised: a fault of this code or the store, not of the node
                        outcome = _lost(client, flight, tags, f"the task failed on its node: {_first_line(err)}")
                    except RayError as err:  # the node or its worker died
                        reason = f"its Ray node {short(flight.node)} was lost ({type(err).__name__})"
                        again = flight.tries < NODE_LOSS_RETRIES
                        outcome = _lost(client, flight, tags, reason, record_missing=not again)
                        if again:
                            progress.ended(outcome, retrying=True)
                            queue.appendleft((flight.number, flight.combination, flight.tries + 1, flight.node))
                            continue
                    else:
                        outcome = Outcome(flight.combination, reply["status"], reply["run_id"], reply["reason"],
                                          reply["seconds"], reply["metrics"], f"node {short(flight.node)}")
                    progress.ended(outcome)
                    yield flight.number, outcome
        except BaseException as err:  # Ctrl-C, or the consumer gone: no task measures on unwatched
            stop(ray, list(running))  # each task's child gets SIGTERM and ends its run KILLED, with its energy
            for flight in running.values():
                _lost(client, flight, tags, f"the study was stopped ({type(err).__name__}) while it measured",
                      record_missing=False)
            raise

    return measure


def _lost(client: Any, flight: _Flight, tags: dict[str, str], reason: str, record_missing: bool = True) -> Outcome:
    """The outcome of a task that returned no result: its run closed with the reason."""
    from tracker.execution.child import close_lost_attempt

    run_id = close_lost_attempt(client, flight.combination.config,
                                tags | {"tracker.executor.node": flight.node}, flight.attempt, reason,
                                record_missing=record_missing)
    return Outcome(flight.combination, "FAILED", run_id, reason, time.monotonic() - flight.started,
                   node=f"node {short(flight.node)}")


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(err).__name__
