"""Measured runs in child processes, and finding what they left in MLflow.

Studies measure each combination in its own process (`tracker run`): a model that kills its
process (SIGILL, a segfault, the OOM killer) then fails alone, and memory is returned between
runs. A search measures the settings that share a model load (the batch sizes of one precision) in
one longer-lived child (``SharedLoadChild``, this module run as ``python -m tracker.execution.child``): one
load and one start-up for all of them, one run and one set of query windows each, and a crash
still fails only that precision's process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tracker.console import configure_logging, say
from tracker.options import flag
from tracker.recording.lifecycle import end_run, failed_run
from tracker.recording.signals import die_with_parent
from tracker.runs.config import RunConfig


@dataclass
class ChildResult:
    run: Any  # its MLflow run, or a FAILED one made for it when it died before making one
    status: str  # FINISHED, FAILED or KILLED
    reason: str  # why it did not finish, "" when it did
    seconds: float


def run_command(config: RunConfig, tags: dict[str, str]) -> list[str]:
    """The `tracker run` command line for a config and extra tags."""
    command = [sys.executable, "-m", "tracker", "run"]
    for name, value in (config.as_dict() | {"progress": False}).items():
        if value is not None:
            command += [flag(name), str(value)]
    for key, value in tags.items():
        command += ["--tag", f"{key}={value}"]
    return command


def measure_in_child(client: Any, config: RunConfig, tags: dict[str, str], attempt: str | None = None,
                     on_start: Callable[[subprocess.Popen[str]], None] | None = None) -> ChildResult:
    """Run the config in a child process. Every attempt leaves one run: a run that died with its
    process is closed FAILED, and a process that failed before making its run gets a FAILED one
    with the requested params (``tracker.run.started=false``). ``attempt`` (tag ``tracker.attempt``)
    lets a caller that may lose this process find its run (``close_attempt``); ``on_start`` is
    handed the child process once it runs (to stop it: SIGTERM ends its run KILLED)."""
    attempt = attempt or uuid.uuid4().hex
    tags = tags | {"tracker.attempt": attempt}
    started = time.monotonic()
    code, last_line = _relay(run_command(config, tags), on_start)
    return _result(client, config, tags, attempt, code, last_line, time.monotonic() - started)


def _result(client: Any, config: RunConfig, tags: dict[str, str], attempt: str, code: int, last_line: str,
            seconds: float) -> ChildResult:
    """What an attempt left: its run, closed FAILED if its process died with it open."""
    if code == 0 and (run := _find_attempt(client, config, attempt)) is not None:
        return ChildResult(run, "FINISHED", "", seconds)
    reason = (f"the run's process died from {signal.Signals(-code).name}" if code < 0
              else last_line or f"the run's process exited with code {code}")
    run = client.get_run(close_attempt(client, config, tags, attempt, reason))
    status = run.info.status if run.info.status in ("FAILED", "KILLED") else "FAILED"
    return ChildResult(run, status, run.data.tags.get("tracker.error", reason), seconds)


def close_attempt(client: Any, config: RunConfig, tags: dict[str, str], attempt: str, reason: str, *,
                  wait_s: float = 0.0, record_missing: bool = True) -> str | None:
    """Close what ``attempt`` left once its process is gone (it died, or was lost with its machine):
    a run still RUNNING after ``wait_s`` (a child that outlived its parent closes its own run KILLED,
    with its energy, within seconds) is closed FAILED with ``reason``; an ended one keeps its status
    and gets the reason if it has none; with no run (e.g. a model refused before its run started),
    one FAILED with the requested params when ``record_missing``. Returns the run's id."""
    deadline = time.monotonic() + wait_s
    run = _find_attempt(client, config, attempt)
    while run is not None and run.info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(1.0)
        run = client.get_run(run.info.run_id)
    if run is None:
        return _record_failed_start(client, config, tags | {"tracker.attempt": attempt}, reason) if record_missing else None
    if run.info.status == "RUNNING":
        end_run(client, run.info.run_id, "FAILED", {"tracker.error": reason})
    elif "tracker.error" not in run.data.tags:
        client.set_tag(run.info.run_id, "tracker.error", reason)
    return run.info.run_id


def _record_failed_start(client: Any, config: RunConfig, tags: dict[str, str], reason: str) -> str:
    """A FAILED run for a configuration whose process failed before it could make its run."""
    requested = {k: v for k, v in config.as_dict().items()
                 if v is not None and k not in ("progress", "experiment")}
    return failed_run(client, config.experiment_name,
                      f"{config.model} · {config.dataset or 'default'} (failed to start)",
                      tags | {"tracker.config_key": config.key(), "tracker.run.started": "false"}, requested, reason)


def start_child(command: list[str], **options: Any) -> subprocess.Popen[str]:
    """A child process in text mode that gets SIGTERM when this process dies (``die_with_parent``):
    every measuring child is started here."""
    return subprocess.Popen(command, text=True, preexec_fn=die_with_parent, **options)


def _relay(command: list[str], on_start: Callable[[subprocess.Popen[str]], None] | None = None) -> tuple[int, str]:
    """Run the child, passing its stderr through but for its one-line error, which the caller
    reports; its exit code and the line that says why it failed (that error, else the last line,
    such as a traceback's exception)."""
    error = last = ""
    with start_child(command, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, bufsize=1) as child:
        assert child.stderr is not None
        if on_start is not None:
            on_start(child)
        try:
            for line in child.stderr:
                if line.startswith("tracker: error:"):  # the caller says it, with what failed: once
                    error = line.removeprefix("tracker: error:").strip()
                    continue
                sys.stderr.write(line)
                if line.strip():
                    last = line.strip()
        except BaseException:  # interrupted: the child ends its run KILLED, with its energy, then we go
            _terminate(child, signal.SIGTERM)
            raise
    return child.returncode, error or last


def _terminate(process: subprocess.Popen[str], sig: signal.Signals) -> None:
    """Signal a child and wait for it (it ends its open run first); killed if it takes 2 minutes."""
    process.send_signal(sig)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()


class SharedLoadChild:
    """Runs measured one after another in one child process while they share a model load (same
    model, precision, device, attention and compile); a run with another load ends that process
    and starts a new one, so one model is in memory at a time. A process that dies fails the run it
    was measuring (its run closed FAILED with the signal's name) and the next run starts a new one."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.process: subprocess.Popen[str] | None = None
        self.load: tuple[Any, ...] | None = None
        self.last_line = ""

    def __enter__(self) -> SharedLoadChild:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def measure(self, config: RunConfig, tags: dict[str, str]) -> ChildResult:
        load = shared_load_key(config)
        if self.process is None or self.process.poll() is not None or load != self.load:
            self.close()
            self._start()
            self.load = load
        assert self.process is not None and self.process.stdin is not None and self.process.stdout is not None
        attempt = uuid.uuid4().hex
        tags = tags | {"tracker.attempt": attempt}
        started = time.monotonic()
        try:
            self.process.stdin.write(json.dumps({"config": config.as_dict(), "tags": tags}) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        except BrokenPipeError:
            line = ""
        except BaseException:  # interrupted: the child ends its run KILLED, with its energy, then we go
            _terminate(self.process, signal.SIGTERM)
            self.process = None
            raise
        if line:
            reply = json.loads(line)
            code, reason = (0, "") if reply["status"] == "FINISHED" else (1, reply.get("error", ""))
        else:  # the process died while measuring
            code = self.process.wait()
            self._stderr_thread.join(timeout=5)
            reason = self.last_line
            self.process = None
        return _result(self.client, config, tags, attempt, code, reason, time.monotonic() - started)

    def _start(self) -> None:
        self.process = start_child(serve_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, bufsize=1)
        self.last_line = ""
        self._stderr_thread = threading.Thread(target=self._relay_stderr, args=(self.process,), daemon=True)
        self._stderr_thread.start()

    def _relay_stderr(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            sys.stderr.write(line)
            if line.strip():
                self.last_line = line.strip()

    def close(self) -> None:
        """End the process: its input closed, it finishes and exits."""
        if self.process is None:
            return
        try:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=120)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            _terminate(self.process, signal.SIGKILL)
        self.process = None


def serve_command() -> list[str]:
    """The shared-load child's command line: this module, serving runs read from stdin."""
    return [sys.executable, "-m", "tracker.execution.child"]


def shared_load_key(config: RunConfig) -> tuple[Any, ...]:
    """What a loaded model depends on: runs with equal keys can share one process and one load."""
    return (config.task, config.model, config.model_kind, config.device, config.precision, config.attention,
            config.compile, config.trust_remote_code)


def serve() -> int:
    """The child's side: read one run a line ({"config": ..., "tags": ...}) from stdin, measure it
    keeping the model loaded, answer one line on the original stdout ({"status", "run_id" or
    "error"}). Anything else printed to stdout goes to stderr, so it cannot break the exchange."""
    configure_logging()
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    kept: dict[tuple[Any, ...], Any] = {}
    try:
        return _serve(answers, kept)
    except KeyboardInterrupt:  # between runs: nothing open to end
        return 128 + signal.SIGINT


def _serve(answers: Any, kept: dict[tuple[Any, ...], Any]) -> int:
    from tracker.errors import RunInterrupted, TrackerError
    from tracker.runs.session import measure

    for line in sys.stdin:
        request = json.loads(line)
        try:
            config = RunConfig(**request["config"])
            config.validate()
            result = measure(config, tags=request["tags"], kept=kept)
            reply = {"status": "FINISHED", "run_id": result.run_id}
        except RunInterrupted as err:
            say(f"tracker: run {err}; logged as KILLED with the energy measured so far")
            return 128 + getattr(signal, err.signal_name)
        except TrackerError as err:
            reply = {"status": "FAILED", "error": str(err)}
        except Exception as err:  # the run is FAILED with it; the next setting may still work
            logging.getLogger(__name__).exception("run failed")
            reply = {"status": "FAILED", "error": f"{type(err).__name__}: {err}"}
        try:
            answers.write(json.dumps(reply) + "\n")
        except BrokenPipeError:  # the parent is gone (its death signal ends us soon): the run is closed
            return 1
    return 0


def _find_attempt(client: Any, config: RunConfig, attempt: str) -> Any:
    experiment = client.get_experiment_by_name(config.experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`tracker.attempt` = '{attempt}'", max_results=1)
    return runs[0] if runs else None


if __name__ == "__main__":
    sys.exit(serve())
