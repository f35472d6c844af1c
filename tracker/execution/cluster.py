"""A Ray cluster as a place to measure: connecting, the nodes' measurement slots, and the checks a
cluster needs before any run.

Two measured runs on one node (or one GPU) disturb each other's figures: CodeCarbon's CPU and RAM
models split one machine's load, and a GPU's counter reads the whole card. So the driver (this
process) places every measurement itself, on a node it names (Ray's NodeAffinitySchedulingStrategy,
hard), at most ``per_node`` at a time on a CPU node and ``per_node`` per GPU on a GPU node. A task
on a GPU node asks Ray for one GPU, and Ray's CUDA_VISIBLE_DEVICES makes the run see, and measure,
that GPU alone. Ray's own CPU accounting is left out (tasks ask for no CPU): the slots are the
limit, whatever number of CPUs a node advertises.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlparse

from tracker.errors import ConfigError

T = TypeVar("T")
CLOSE_S = 120  # for a cancelled task's child to close what it measures
CONNECT_S = 10.0  # for Ray to connect to a head that answers

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Stores every node reaches by their address; anything else (sqlite, a folder) lives on this machine.
SHARED_STORES = ("http://", "https://", "postgresql", "mysql", "mssql", "databricks")


def connect(address: str | None) -> Any:
    """Ray, connected to the cluster at ``address`` (else RAY_ADDRESS, else the one `ray start
    --head` started on this machine), within CONNECT_S; a signal meanwhile ends the command at once.

    A loopback address stays on loopback: Ray otherwise swaps 127.0.0.1 for this machine's
    interface address and retries a head that is not there for minutes. Ray connects in a thread
    while this one waits in Python, where SIGINT and SIGTERM land (Ray's wait is in C++, and from
    the main thread it would also take SIGTERM over); its retry warnings are kept off the terminal.
    """
    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    host = _host_and_port(address)[0]
    if host in LOOPBACK:  # read by Ray when it is imported
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray on this machine and every node: pip install 'tracker[ray]'") from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing is sent anywhere on the user's behalf
    if ray.is_initialized():
        return ray
    if host in LOOPBACK and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":
        from ray._private import ray_constants  # imported before the variable was set (a notebook)

        ray_constants.ENABLE_RAY_CLUSTER = False
    if address != "auto":
        _check_reachable(address)
    _stop_on_sigterm()
    outcome: dict[str, BaseException | None] = {}

    def init() -> None:
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, configure_logging=False)
            outcome["error"] = None
        except BaseException as err:
            outcome["error"] = err

    with _QuietRay() as quiet:
        thread = threading.Thread(target=init, name="tracker-ray-connect", daemon=True)
        thread.start()
        deadline = time.monotonic() + CONNECT_S
        while "error" not in outcome and time.monotonic() < deadline:
            thread.join(0.2)
        if "error" not in outcome:
            quiet.for_good()  # Ray goes on retrying in its thread until this process exits
    if "error" not in outcome:
        raise ConfigError(f"the Ray cluster at {address} answers but Ray did not connect in {CONNECT_S:.0f} s: start "
                          "the head with `ray start --head` and pass the address it prints; on one machine, start "
                          "every node with --node-ip-address 127.0.0.1 and RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0")
    if isinstance(outcome["error"], ConnectionError):
        raise ConfigError(f"no Ray cluster found ({str(outcome['error']).splitlines()[0]}); start one with "
                          "`ray start --head` and pass its address with --address HOST:PORT") from None
    if outcome["error"] is not None:
        raise outcome["error"]
    return ray


def _host_and_port(address: str) -> tuple[str, str]:
    """HOST:PORT (or ray://HOST:PORT, [::1]:PORT) split; the port as written."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return host.strip("[]"), port


def _stop_on_sigterm() -> None:
    """SIGTERM as an exception that unwinds (runs being measured are stopped on the way), with the
    shell's exit status for it; in the main thread only, where Python handles signals."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
            signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


class _QuietRay:
    """Ray's Python warnings, and its C++ core's lines on stderr, kept off the terminal while it
    connects; ``for_good``: also after, where Ray goes on retrying (our own lines still get out)."""

    def __enter__(self) -> _QuietRay:
        self.logger = logging.getLogger("ray")
        self.level, self.logger.level = self.logger.level, logging.CRITICAL
        self.saved, self.kept = os.dup(2), False
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        return self

    def for_good(self) -> None:
        sys.stderr.flush()
        sys.stderr = os.fdopen(os.dup(self.saved), "w", buffering=1)
        self.kept = True

    def __exit__(self, *exc: Any) -> None:
        if not self.kept:
            os.dup2(self.saved, 2)
            self.logger.setLevel(self.level)
        os.close(self.saved)


def _check_reachable(address: str) -> None:
    """A wrong address is answered at once: Ray itself retries one for minutes."""
    host, port = _host_and_port(address)
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except (OSError, ValueError) as err:
        raise ConfigError(f"no Ray cluster answers at --address {address} ({err}); start one with "
                          "`ray start --head` and pass the address it prints") from None


@dataclass
class Node:
    id: str
    address: str
    slots: int  # measurements it may hold at once
    gpus: int
    running: int = 0


class NodeSlots:
    """The alive nodes and the measurements each holds now, as the driver placed them."""

    def __init__(self, ray: Any, per_node: int) -> None:
        self.ray, self.per_node = ray, per_node
        self.nodes: dict[str, Node] = {}
        self.refresh()

    def refresh(self) -> None:
        alive = {}
        for info in self.ray.nodes():
            resources = info.get("Resources", {})
            if not info.get("Alive") or not (resources.get("CPU", 0) or resources.get("GPU", 0)):
                continue  # gone, or a node that takes no work (a head started with --num-cpus 0)
            gpus = int(resources.get("GPU", 0))
            known = self.nodes.get(info["NodeID"])
            alive[info["NodeID"]] = Node(info["NodeID"], info.get("NodeManagerAddress", ""),
                                         self.per_node * max(gpus, 1), gpus, known.running if known else 0)
        self.nodes = alive

    def take(self, avoid: str | None = None) -> Node | None:
        """The least busy node with a free slot, another than ``avoid`` where there is one; None when all are full."""
        free = sorted((n for n in self.nodes.values() if n.running < n.slots), key=lambda n: (n.running, n.id))
        others = [n for n in free if n.id != avoid]
        node = (others or ([] if len(self.nodes) > 1 else free) or [None])[0]
        if node is not None:
            node.running += 1
        return node

    def give_back(self, node_id: str) -> None:
        if node_id in self.nodes:
            self.nodes[node_id].running -= 1

    def options(self, node: Node) -> dict[str, Any]:
        """Ray task options that put a task on ``node``, with one of its GPUs if it has any."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node.id, soft=False),
                "num_cpus": 0, "num_gpus": 1 if node.gpus else 0, "max_retries": 0}


TRACKING_FIX = ("start a tracking server every node reaches (mlflow server --host 0.0.0.0 --port 5000) and set "
                "MLFLOW_TRACKING_URI=http://THIS-HOST:5000")


def check_store_for(nodes: list[Node], uri: str, what: str = "MLflow store", fix: str = TRACKING_FIX) -> None:
    """Every node must reach the store at ``uri``: one on this machine (a SQLite file, a folder, a
    server on loopback) is refused when the cluster has several nodes or a node elsewhere."""
    remote = [n for n in nodes if n.address not in LOOPBACK and n.address != _this_address()]
    if len(nodes) <= 1 and not remote:
        return
    where = f"{len(nodes)} nodes" if len(nodes) > 1 else f"a node at {remote[0].address}"
    if not uri.startswith(SHARED_STORES):
        raise ConfigError(f"the {what} {uri} is on this machine and the Ray cluster has {where}: {fix}")
    host = urlparse(uri).hostname or ""
    if host in LOOPBACK and remote:
        raise ConfigError(f"the {what} {uri} is on loopback, which the node at {remote[0].address} cannot reach: "
                          f"{fix}")


def _this_address() -> str:
    try:
        from ray.util import get_node_ip_address

        return get_node_ip_address()
    except Exception:  # (only used to tell this machine's nodes apart)
        return ""


def tracking_env(uri: str) -> dict[str, str]:
    """What a task on another node needs to log where this driver logs: the URI and its credentials."""
    return {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_TRACKING_")} | {"MLFLOW_TRACKING_URI": uri}


def short(node_id: str) -> str:
    return node_id[:8]


def cancellable(work: Callable[[Callable[[subprocess.Popen[str]], None]], T]) -> T:
    """In a Ray task: ``work`` (which hands each child process it starts to its argument) runs in a
    thread while the task waits in Python, where Ray's cancel (a KeyboardInterrupt) can land; the
    children then get SIGTERM and close what they measure (a run KILLED, with its energy) before the
    task ends. A task blocked reading its child would never see the cancel, and a forced one kills
    the worker's children outright (SIGKILL), leaving their runs RUNNING."""
    children: list[subprocess.Popen[str]] = []
    done: dict[str, Any] = {}

    def run() -> None:
        try:
            done["value"] = work(children.append)
        except BaseException as err:
            done["error"] = err

    thread = threading.Thread(target=run, name="tracker-cancellable", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        thread.join(CLOSE_S)
        raise
    if "error" in done:
        raise done["error"]
    return done["value"]


def stop(ray: Any, refs: list[Any]) -> None:
    """Stop running tasks made with ``cancellable``: cancelled (their children close their runs
    KILLED), and after CLOSE_S, killed with their workers."""
    for ref in refs:
        ray.cancel(ref)
    if refs:
        for ref in ray.wait(refs, num_returns=len(refs), timeout=CLOSE_S)[1]:
            ray.cancel(ref, force=True)
