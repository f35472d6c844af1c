"""Runs kept on local disk when the tracking server is lost mid-run, and their upload (`tracker sync`).

A spool file holds one run: a header line (tracking URI, run id, experiment) and then one JSON line
per MLflow call that could not be made, in order, written and flushed one by one so that a process
killed while spooling keeps what it wrote. `tracker sync` replays the calls against the server,
records how far it got beside the file (a sync interrupted halfway resumes without logging
anything twice), and removes the file once the run is ended on the server.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPOOL_ENV = "TRACKER_SPOOL_DIR"


def spool_dir() -> Path:
    """``TRACKER_SPOOL_DIR``, else ``spool`` in the tracker's cache folder."""
    from tracker.loading.builtin import cache_dir

    configured = os.environ.get(SPOOL_ENV)
    return Path(configured) if configured else cache_dir() / "spool"


class Spool:
    """The calls of one run that the tracking server did not take, appended as they come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # the heartbeat thread logs beside the main one

    @classmethod
    def create(cls, tracking_uri: str, run_id: str, experiment_id: str, reason: str) -> Spool:
        folder = spool_dir()
        folder.mkdir(parents=True, exist_ok=True)
        spool = cls(folder / f"{run_id}.jsonl")
        spool.append({"op": "run", "tracking_uri": tracking_uri, "run_id": run_id,
                      "experiment_id": experiment_id, "spooled_at": time.time(), "reason": reason,
                      "host": socket.gethostname(), "pid": os.getpid()})
        return spool

    def append(self, call: dict[str, Any]) -> None:
        line = json.dumps(call, default=str) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as out:
            out.write(line)
            out.flush()
            os.fsync(out.fileno())


@dataclass(frozen=True)
class Pending:
    path: Path
    tracking_uri: str
    run_id: str
    experiment_id: str
    host: str
    pid: int
    spooled_at: float


def pending(tracking_uri: str | None = None) -> list[Pending]:
    """Spooled runs not yet uploaded, for ``tracking_uri`` or for every server."""
    found = []
    folder = spool_dir()
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        try:
            with open(path, encoding="utf-8") as lines:
                header = json.loads(lines.readline())
        except (OSError, ValueError):
            continue  # written by hand or cut short before its header: not ours to upload
        if header.get("op") == "run" and tracking_uri in (None, header.get("tracking_uri")):
            found.append(Pending(path, header["tracking_uri"], header["run_id"], header["experiment_id"],
                                 header["host"], int(header["pid"]), float(header["spooled_at"])))
    return found


def replay(client: Any, item: Pending, apply: Callable[[Any, str, dict[str, Any]], None]) -> str:
    """Make the spooled calls of one run against the server; returns the status the run ended with.

    ``apply`` makes one call (``tracking._apply``, the recorder's own: one module writes and ends runs)."""
    progress = item.path.with_suffix(".done")
    done = int(progress.read_text()) if progress.exists() else 0
    status = "RUNNING"
    for number, call in enumerate(_calls(item.path)):
        if call["op"] == "end":
            status = call["status"]
        if number < done:
            continue
        apply(client, item.run_id, call)
        progress.write_text(str(number + 1))
    if status == "RUNNING" and _process_gone(item):
        status = "FAILED"
        apply(client, item.run_id, {"op": "end", "status": status, "end_ms": None, "tags": {
            "tracker.error": "its process ended while the tracking server was lost, before it could end the "
                             "run; what it had measured was uploaded by `tracker sync`",
            "tracker.error_type": "ProcessGone"}})
    if status != "RUNNING":  # a run still measuring on this host keeps its spool
        item.path.unlink()
        progress.unlink(missing_ok=True)
    return status


def _process_gone(item: Pending) -> bool:
    import psutil

    if item.host != socket.gethostname():
        return True  # spooled here by a process of another host (a shared home folder): long gone
    try:
        return psutil.Process(item.pid).create_time() > item.spooled_at
    except psutil.Error:
        return True


def _calls(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as lines:
        next(lines)  # the header
        for line in lines:
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError:
                    return  # the last line, cut short by a kill: everything before it counts
