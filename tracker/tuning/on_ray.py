"""Tune workers on a Ray cluster: ``tracker tune --workers N --executor ray`` starts N workers of
one study (PostgreSQL, as for workers started by hand) as Ray tasks, placed one per node (or per
GPU) like a study's measurements, each running `tracker tune` in a child process on its node."""

from __future__ import annotations

import logging
from typing import Any

from tracker.errors import ConfigError
from tracker.execution.cluster import Node, NodeSlots, check_store_for, connect, short, tracking_env
from tracker.execution.scheduler import NodeScheduler

logger = logging.getLogger(__name__)

OUTPUT_KEPT = 20_000  # characters of a worker's stdout and stderr that come back


def run_worker(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """In a Ray worker on its node: one tune worker (`tracker` with ``argv``, by this node's Python)
    in a child process; its exit code and output."""
    import os
    import subprocess
    import sys

    import ray

    from tracker.execution.child import start_child
    from tracker.execution.cluster import cancellable

    def work(started: Any) -> tuple[int, str, str]:
        process = start_child([sys.executable, "-m", "tracker", *argv], env=dict(os.environ) | env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started(process)
        out, err = process.communicate()
        return process.returncode, out, err

    code, out, err = cancellable(work)  # cancelled: the worker gets SIGTERM and ends its runs KILLED
    return {"code": code, "stdout": out[-OUTPUT_KEPT:], "stderr": err[-OUTPUT_KEPT:],
            "node": ray.get_runtime_context().get_node_id()}


def run_workers(argv: list[str], *, workers: int, storage: str, tracking_uri: str, address: str | None,
                per_node: int) -> tuple[int, str]:
    """Run ``workers`` copies of `tracker` ``argv`` (a tune) on the cluster; returns the worst
    exit code and the output of the worker that ended last (its summary saw the whole study)."""
    if workers > 1 and not storage.startswith("postgresql"):
        raise ConfigError(f"--workers {workers} share one study, which needs a database every node reaches: "
                          "pass --storage postgresql://USER:PASSWORD@HOST/DB")
    ray = connect(address)
    slots = NodeSlots(ray, per_node)
    check_store_for(list(slots.nodes.values()), tracking_uri)
    check_store_for(list(slots.nodes.values()), storage, "Optuna storage",
                    "pass --storage postgresql://USER:PASSWORD@HOST/DB, a database every node reaches")
    task, env = ray.remote(run_worker), tracking_env(tracking_uri)

    def submit(number: int, node: Node) -> Any:
        logger.info("tune worker %d of %d started on node %s", number, workers, short(node.id))
        return task.options(**slots.options(node)).remote(argv, env)

    scheduler: NodeScheduler[int] = NodeScheduler(ray, slots, submit, what="run a tune worker on")
    for number in range(1, workers + 1):
        scheduler.add(number)
    results: list[dict[str, Any]] = []
    for placed in scheduler.finished():  # stopped: each worker gets SIGTERM and ends its runs KILLED
        # A worker whose node died: Optuna fails its trial by heartbeat, and the other workers go on.
        result = placed.value if placed.error is None else {
            "code": 1, "stdout": "", "stderr": f"its Ray node was lost ({type(placed.error).__name__})",
            "node": placed.node}
        logger.info("tune worker %d of %d on node %s ended with exit code %d", placed.job, workers,
                    short(result["node"]), result["code"])
        results.append(result)
    last = results[-1]
    for result in results:
        if result["code"] != 0:
            logger.error("tune worker on node %s failed: %s", short(result["node"]),
                         (result["stderr"].strip().splitlines() or ["(no output)"])[-1])
    return max(r["code"] for r in results), last["stdout"]
