"""The server under measurement: attached to one that runs, or launched from a command template.

Energy is attributed to the server's process tree, so the process is found first: the one that
listens on the endpoint's port (or ``--server-pid``, checked against it). A launched server runs in
a process group of its own, its output kept in a log file, and is stopped at the end (SIGTERM to
the group, then SIGKILL). Every way this can go wrong is one ``ServerError`` line.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tracker.errors import ConfigError, TrackerError

logger = logging.getLogger(__name__)

STOP_GRACE_S = 10.0


class ServerError(ConfigError):
    """The server cannot be measured: unreachable, not OpenAI-compatible, not the process named, or
    a launch that exited or never became healthy."""


class ServerLost(TrackerError):
    """The server's process ended while it was being measured."""


@dataclass
class Server:
    """A server measured by ``serve-bench``: where it answers, which process tree it is, and the
    model it serves (the first of ``/v1/models``)."""

    endpoint: str  # http://host:port, without /v1
    pid: int
    model: str
    launched: subprocess.Popen | None = None
    log_path: Path | None = None
    how: str = ""  # how it was found, for the provenance tag
    _stopped: bool = field(default=False, repr=False)

    @property
    def port(self) -> int:
        return port_of(self.endpoint)

    def stop(self) -> None:
        """Stop a launched server (its whole process group); an attached one is left running."""
        if self.launched is None or self._stopped:
            return
        self._stopped = True
        stop_group(self.launched)


def server_gpus(server: Server, nvml: Any = None) -> list[int]:
    """The GPUs (NVML indices) on which the server's processes compute; [] without NVML or GPUs.
    ``nvml`` may be a stand-in for the pynvml module."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return []
    try:
        pids = _tree(server.pid)
        nvml.nvmlInit()
        found = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            if any(p.pid in pids for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)):
                found.append(index)
        return found
    except Exception as err:  # no driver, no permission: the GPU tags say it was not read
        logger.debug("NVML not readable (%s): no GPU energy for the server", err)
        return []


def port_of(endpoint: str) -> int:
    parts = urlsplit(endpoint)
    return parts.port or (443 if parts.scheme == "https" else 80)


def normalized_endpoint(url: str) -> str:
    """``http://host:port`` from what a user may type (a trailing /v1 or slash, no scheme)."""
    text = url.strip().rstrip("/")
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServerError(f"--endpoint must be an http URL such as http://127.0.0.1:8000, got '{url}'")
    path = parts.path.removesuffix("/v1")
    return f"{parts.scheme}://{parts.netloc}{path}"


def get_json(url: str, timeout_s: float = 5.0) -> tuple[int, object]:
    """(HTTP status, parsed body or None) of a GET; status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        return err.code, None
    except (OSError, ValueError):
        return 0, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def served_model(endpoint: str, timeout_s: float = 5.0) -> str:
    """The model an OpenAI-compatible server serves (the first of ``GET /v1/models``)."""
    status, body = get_json(f"{endpoint}/v1/models", timeout_s)
    if status == 0:
        raise ServerError(f"nothing answers at {endpoint}: start the server first, or check the host and port "
                          "(or use --launch to start one)")
    models = body.get("data") if isinstance(body, dict) else None
    if status != 200 or not isinstance(models, list) or not models or "id" not in models[0]:
        raise ServerError(f"{endpoint} does not speak the OpenAI API: GET /v1/models answered HTTP {status} "
                          "without a list of models; point --endpoint at an OpenAI-compatible server")
    return str(models[0]["id"])


def listener_pid(port: int) -> int | None:
    """The process listening on ``port`` on this machine, or None when none is (or it cannot be seen)."""
    import psutil

    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return None
    pids = {c.pid for c in connections
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid}
    if not pids:
        return None
    # Several workers may share a port (SO_REUSEPORT): their common ancestor is the server.
    return min(pids, key=lambda pid: _depth(pid))


def _depth(pid: int) -> int:
    import psutil

    try:
        return len(psutil.Process(pid).parents())
    except psutil.Error:
        return 0


def attach(endpoint: str, server_pid: int | None = None) -> Server:
    """A server that runs already, found by the port it listens on (or checked against ``server_pid``)."""
    import psutil

    endpoint = normalized_endpoint(endpoint)
    host = urlsplit(endpoint).hostname or ""
    if not _is_local(host):
        raise ServerError(f"{endpoint} is not on this machine: serve-bench measures a server's processes here, "
                          "so run it on the server's machine and use its local address")
    model = served_model(endpoint)
    port = port_of(endpoint)
    listener = listener_pid(port)
    if server_pid is not None:
        if not psutil.pid_exists(server_pid):
            raise ServerError(f"--server-pid {server_pid}: no such process")
        tree = _tree(server_pid)
        if os.getpid() in tree:
            raise ServerError(f"--server-pid {server_pid} is serve-bench's own process or one above it (a shell?): "
                              "its tree holds the load generator; pass the server's process id")
        if listener is not None and listener not in tree:
            raise ServerError(f"--server-pid {server_pid} is not the server at {endpoint}: port {port} is "
                              f"listened on by process {listener}; pass that one, or leave --server-pid out")
        return Server(endpoint, server_pid, model, how=f"attached to process {server_pid} (--server-pid)")
    if listener is None:
        raise ServerError(f"cannot see which process listens on port {port} (another user's, or a container's): "
                          "pass its process id with --server-pid")
    return Server(endpoint, listener, model, how=f"attached: process {listener}, which listens on port {port}")


def _is_local(host: str) -> bool:
    if host in ("localhost", "127.0.0.1", "::1", "0.0.0.0"):
        return True
    try:
        address = socket.gethostbyname(host)
    except OSError:
        return False
    return address.startswith("127.") or address in _local_addresses()


def _local_addresses() -> set[str]:
    import psutil

    return {a.address for addresses in psutil.net_if_addrs().values() for a in addresses}


def _tree(pid: int) -> set[int]:
    import psutil

    try:
        process = psutil.Process(pid)
        return {pid, *(c.pid for c in process.children(recursive=True))}
    except psutil.Error:
        return {pid}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(template: str, *, model: str, log_dir: Path, host: str = "127.0.0.1", port: int | None = None,
           settings: dict[str, object] | None = None, startup_timeout_s: float = 300.0) -> Server:
    """Start a server from ``template`` (``{host}``, ``{port}``, ``{model}`` and any ``settings``
    filled in), wait until it answers ``/v1/models``, and return it; its output goes to a log file.

    Raises ServerError, one line, when the template is bad, the command exits, or it is not
    healthy within ``startup_timeout_s`` (the process group is stopped then).
    """
    port = port or free_port()
    values = {"host": host, "port": port, "model": model, **(settings or {})}
    try:
        command = template.format(**values)
    except (KeyError, IndexError) as err:
        raise ServerError(f"--launch names {{{err.args[0]}}}, which has no value: use {{host}}, {{port}}, "
                          f"{{model}} or a setting given with --server-setting NAME=VALUE") from None
    argv = shlex.split(command)
    if not argv:
        raise ServerError("--launch is empty: give the server's command, e.g. "
                          "'transformers serve --host {host} --port {port} {model}'")
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "server.log"
    with open(log_path, "ab") as log:
        try:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        except OSError as err:
            raise ServerError(f"--launch could not start '{argv[0]}': {err.strerror or err}") from None
    endpoint = f"http://{host}:{port}"
    deadline = time.monotonic() + startup_timeout_s
    try:
        while True:
            code = process.poll()
            if code is not None:
                raise ServerError(f"the launched server exited with code {code} before it answered at {endpoint}; "
                                  f"its log: {log_path} ({_last_line(log_path)})")
            status, body = get_json(f"{endpoint}/v1/models", timeout_s=2.0)
            if status == 200 and isinstance(body, dict) and body.get("data"):
                break
            if time.monotonic() > deadline:
                raise ServerError(f"the launched server did not answer GET {endpoint}/v1/models within "
                                  f"{startup_timeout_s:g} s (--startup-timeout-s; it answered "
                                  f"HTTP {status or 'nothing'}); "
                                  f"its log: {log_path} ({_last_line(log_path)})")
            time.sleep(0.25)  # a poll interval: the server gives no event to wait on
        model_id = served_model(endpoint)
    except BaseException:
        stop_group(process)
        raise
    return Server(endpoint, process.pid, model_id, launched=process, log_path=log_path,
                  how=f"launched: {command}")


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "unreadable"
    return lines[-1][:300] if lines else "empty"


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process's group, SIGKILL after ``STOP_GRACE_S``; reaped either way."""
    for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
    logger.warning("the launched server (process %s) did not end after SIGKILL", process.pid)
