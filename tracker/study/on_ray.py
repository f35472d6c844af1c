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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tracker.execution.cluster import Node, NodeSlots, check_store_for, connect, short, tracking_env
from tracker.execution.scheduler import NodeScheduler, Placed
from tracker.study.definition import Combination, StudyDefinition
from tracker.study.outcomes import Executor, Outcome, Pending, Progress

NODE_LOSS_RETRIES = 1  # a combination whose node died is tried once more, elsewhere
LOST_RUN_WAIT_S = 15.0  # how long a lost node's run has to close itself KILLED before the driver closes it


def measure_on_node(config: dict[str, Any], tags: dict[str, str], attempt: str, env: dict[str, str],
                    remeasure: int) -> dict[str, Any]:
    """In a Ray worker on its node: the combination measured by `tracker run` in a child process."""
    import os

    import ray
    from mlflow import MlflowClient

    from tracker.execution.cluster import cancellable
    from tracker.execution.remeasure import contention_reason
    from tracker.runs.config import RunConfig
    from tracker.study.outcomes import measure_quietly

    os.environ.update(env)
    context = ray.get_runtime_context()
    tags = tags | {"tracker.executor.node": context.get_node_id()}
    gpus = ray.get_gpu_ids()
    if gpus:
        tags["tracker.executor.gpus"] = ",".join(map(str, gpus))
    client, run_config = MlflowClient(), RunConfig(**config)
    result = cancellable(lambda on_start: measure_quietly(client, run_config, tags, remeasure=remeasure,
                                                          attempt=attempt, on_start=on_start))
    return {"status": result.status, "run_id": result.run.info.run_id, "reason": result.reason,
            "seconds": result.seconds, "metrics": dict(result.run.data.metrics) if result.status == "FINISHED" else {},
            "contended": contention_reason(result)}


@dataclass
class _Job:
    number: int  # in the definition
    combination: Combination
    tries: int = 0
    attempt: str = ""  # tag tracker.attempt of its current try: how its run is found if its node is lost


def ray_executor(*, address: str | None, per_node: int, remeasure: int) -> Executor:
    def measure(client: Any, definition: StudyDefinition, pending: Pending,
                progress: Progress) -> Iterator[tuple[int, Outcome]]:
        if not pending:
            return
        ray = connect(address)
        from ray.exceptions import RayTaskError

        slots = NodeSlots(ray, per_node)
        check_store_for(list(slots.nodes.values()), client.tracking_uri)
        env, task = tracking_env(client.tracking_uri), ray.remote(measure_on_node)
        tags = {"tracker.study.name": definition.name, "tracker.executor": "ray",
                "tracker.executor.per_node": str(per_node)}

        def submit(job: _Job, node: Node) -> Any:
            job.attempt = uuid.uuid4().hex
            progress.started(job.combination, f"node {short(node.id)}")
            return task.options(**slots.options(node)).remote(job.combination.config.as_dict(), tags, job.attempt, env,
                                                              remeasure)

        scheduler: NodeScheduler[_Job] = NodeScheduler(ray, slots, submit, what="measure on")
        for number, combination in pending:
            scheduler.add(_Job(number, combination))
        try:
            for placed in scheduler.finished():
                job, where = placed.job, f"node {short(placed.node)}"
                if isinstance(placed.error, RayTaskError):  # our task raised: a fault of this code or the store
                    outcome = _lost(client, placed, tags, f"the task failed on its node: {_first_line(placed.error)}")
                elif placed.error is not None:  # the node or its worker died
                    again = job.tries < NODE_LOSS_RETRIES
                    outcome = _lost(client, placed, tags, f"its Ray node {short(placed.node)} was lost "
                                    f"({type(placed.error).__name__})", record_missing=not again)
                    if again:
                        progress.ended(outcome, retrying=True)
                        job.tries += 1
                        scheduler.add(job, avoid=placed.node, first=True)
                        continue
                else:
                    reply = placed.value
                    outcome = Outcome(job.combination, reply["status"], reply["run_id"], reply["reason"],
                                      reply["seconds"], reply["metrics"], where, reply["contended"])
                progress.ended(outcome)
                yield job.number, outcome
        except BaseException as err:  # Ctrl-C, or the consumer gone: no task measures on unwatched
            for placed in scheduler.stop():  # each task's child gets SIGTERM and ends its run KILLED, with its energy
                _lost(client, placed, tags, f"the study was stopped ({type(err).__name__}) while it measured",
                      record_missing=False)
            raise

    return measure


def _lost(client: Any, placed: Placed[_Job], tags: dict[str, str], reason: str, record_missing: bool = True) -> Outcome:
    """The outcome of a task that returned no result: its run closed with the reason."""
    from tracker.execution.child import close_attempt

    job = placed.job
    run_id = close_attempt(client, job.combination.config, tags | {"tracker.executor.node": placed.node}, job.attempt,
                           reason, wait_s=LOST_RUN_WAIT_S, record_missing=record_missing)
    return Outcome(job.combination, "FAILED", run_id, reason, time.monotonic() - placed.started,
                   node=f"node {short(placed.node)}")


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(err).__name__
