"""One measured run in a child process (`tracker run`), and finding what it left in MLflow.

Studies and tuning measure each combination this way: a model that kills its process (SIGILL,
a segfault, the OOM killer) then fails alone, and memory is returned between runs.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from tracker.config import RunConfig, flag
from tracker.tracking import end_run, failed_run


@dataclass
class ChildResult:
    run: Any  # its MLflow run, or a FAILED one made for it when it died before making one
    status: str  # FINISHED, FAILED or KILLED
    reason: str  # why it did not finish, "" when it did
    seconds: float


def run_command(config: RunConfig, tags: dict[str, str]) -> list[str]:
    """The `tracker run` command line for a config and extra tags."""
    command = [sys.executable, "-m", "tracker", "run", "--no-progress"]
    for name, value in config.as_dict().items():
        if value is not None and name != "progress":
            command += [flag(name), str(value)]
    for key, value in tags.items():
        command += ["--tag", f"{key}={value}"]
    return command


def measure_in_child(client: Any, config: RunConfig, tags: dict[str, str]) -> ChildResult:
    """Run the config in a child process. Every attempt leaves one run: a run that died with its
    process is closed FAILED, and a process that failed before making its run gets a FAILED one
    with the requested params (``tracker.run.started=false``)."""
    attempt = uuid.uuid4().hex
    tags = tags | {"tracker.attempt": attempt}
    started = time.monotonic()
    code, last_line = _relay(run_command(config, tags))
    seconds = time.monotonic() - started
    run = _find_attempt(client, config, attempt)
    if code == 0 and run is not None:
        return ChildResult(run, "FINISHED", "", seconds)
    reason = (f"the run's process died from {signal.Signals(-code).name}" if code < 0
              else last_line or f"the run's process exited with code {code}")
    if run is None:  # e.g. the model cannot be loaded: refused before its run started
        run_id = _record_failed_start(client, config, tags, reason)
        return ChildResult(client.get_run(run_id), "FAILED", reason, seconds)
    if run.info.status == "RUNNING":  # the process died without closing its run
        end_run(client, run.info.run_id, "FAILED", {"tracker.error": reason})
        return ChildResult(client.get_run(run.info.run_id), "FAILED", reason, seconds)
    status = run.info.status if run.info.status in ("FAILED", "KILLED") else "FAILED"
    return ChildResult(run, status, run.data.tags.get("tracker.error", reason), seconds)


def _record_failed_start(client: Any, config: RunConfig, tags: dict[str, str], reason: str) -> str:
    """A FAILED run for a configuration whose process failed before it could make its run."""
    requested = {k: v for k, v in config.as_dict().items()
                 if v is not None and k not in ("progress", "experiment")}
    return failed_run(client, config.experiment_name,
                      f"{config.model} · {config.dataset or 'default'} (failed to start)",
                      tags | {"tracker.config_key": config.key(), "tracker.run.started": "false"}, requested, reason)


def _relay(command: list[str]) -> tuple[int, str]:
    """Run the child, passing its stderr through but for its one-line error, which the caller
    reports; its exit code and the line that says why it failed (that error, else the last line,
    such as a traceback's exception)."""
    error = last = ""
    with subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1,
                          preexec_fn=_die_with_parent) as child:
        assert child.stderr is not None
        try:
            for line in child.stderr:
                if line.startswith("tracker: error:"):  # the caller says it, with what failed: once
                    error = line.removeprefix("tracker: error:").strip()
                    continue
                sys.stderr.write(line)
                if line.strip():
                    last = line.strip()
        except BaseException:  # interrupted: the child ends its run KILLED, with its energy, then we go
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=120)
            except subprocess.TimeoutExpired:
                child.kill()
            raise
    return child.returncode, error or last


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies (Linux), so a killed study or search does
    not leave a run measuring on its own; the run then ends KILLED with its partial energy."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _find_attempt(client: Any, config: RunConfig, attempt: str) -> Any:
    experiment = client.get_experiment_by_name(config.experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`tracker.attempt` = '{attempt}'", max_results=1)
    return runs[0] if runs else None
