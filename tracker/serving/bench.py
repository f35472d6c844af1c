"""``tracker serve-bench``: a server's energy per request and per token, with its latency, at each
load level; one MLflow run per level under a parent run for the sweep.

For each level the load generator starts, warm-up requests end unmeasured, and then ``windows``
measured windows follow back to back while the level's load is held (the steady state: at a
concurrency of C, C requests are in flight throughout, which ``mean_in_flight`` shows). The
meter's windows are CodeCarbon phases whose attributed part is the server's process tree
(``SystemProbe(root_pid=...)``); this process's CPU time, the load generator's, is measured beside
it and never charged to the server. A level ends FAILED with the energy measured so far when the
server dies, KILLED on Ctrl-C; a launched server is stopped either way.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tracker.errors import RunInterrupted
from tracker.measurement.energy import KWH_TO_J
from tracker.measurement.meter import EnergyMeter, PhaseReading
from tracker.runs.session import short_model_name
from tracker.serving.config import BUILTIN_SERVE_MODEL, ServeConfig
from tracker.serving.figures import WindowFigures, level_figures, meets_targets, tpot_ms, ttft_ms, window_counts
from tracker.serving.levels import LevelResult, level_plan, settings_slug, summarize
from tracker.serving.loadgen import Client, Level, Load, Prompt, RequestRecord, choose_length_dialect
from tracker.serving.server import Server, ServerError, ServerLost, attach, launch, server_gpus
from tracker.serving.workload import Workload, load_workload, score

logger = logging.getLogger(__name__)

POLL_S = 0.2  # how often a window checks that the server lives and whether it may end
DRAIN_ON_ERROR_S = 2.0


@dataclass
class ServeResult:
    parent_run_id: str
    experiment: str
    model: str
    levels: list[LevelResult]
    summary: dict[str, Any]


def serve_bench(config: ServeConfig, *, tags: dict[str, str] | None = None) -> ServeResult:
    from tracker.measurement.carbon import resolve_location
    from tracker.recording.signals import interrupts_raise
    from tracker.recording.store import check_tracking_server

    check_tracking_server()
    sweep = _Sweep(config, tags or {}, resolve_location(config.country, config.carbon_intensity),
                   load_workload(config))
    try:
        with ExitStack() as stack:
            stack.enter_context(interrupts_raise())
            for settings in config.setting_grid():
                sweep.measure_server(settings, stack)
            summary = summarize(sweep.results)
            _log_summary(sweep.mlflow, sweep.parent_id, summary)
    except RunInterrupted:
        if sweep.parent_id is None:  # before any run: nothing to end KILLED (the CLI says so)
            raise KeyboardInterrupt from None
        raise
    return ServeResult(sweep.parent_id, config.experiment, sweep.model, sweep.results, summary)


class _Sweep:
    """One server per combination of launch settings, each measured at every level of the plan; the
    parent run is opened with the first server that answers."""

    def __init__(self, config: ServeConfig, tags: dict[str, str], location: Any, workload: Workload) -> None:
        from mlflow import MlflowClient

        self.config, self.tags, self.location, self.workload = config, tags, location, workload
        self.mlflow = MlflowClient()
        self.log_root = server_log_dir()
        self.results: list[LevelResult] = []
        self.parent_id: str | None = None
        self.model = ""

    def measure_server(self, settings: dict[str, str], sweep: ExitStack) -> None:
        from tracker.recording.lifecycle import resumed_run
        from tracker.recording.provenance import version_tags

        config = self.config
        with ExitStack() as one_server:
            server = self._start(settings)
            if server is None:
                return
            one_server.callback(server.stop)
            client = _client(config, server, self.workload)
            meter = _meter(server, self.location)
            one_server.callback(meter.close)
            base_tags = self.tags | version_tags() | _server_tags(server, client, self.workload, config)
            params = config.params() | {"model": server.model, "dataset": self.workload.dataset}
            if self.parent_id is None:
                self.model = server.model
                self.parent_id = _open_sweep(self.mlflow, config, server.model, base_tags, params)
                sweep.enter_context(resumed_run(self.mlflow, self.parent_id))
            try:
                measured: list[LevelResult] = []
                for level in level_plan(config, measured):
                    measured.append(_measure_level(config, level, server, client, meter, self.workload,
                                                   self.parent_id, base_tags, params, settings))
                self.results.extend(measured)
            finally:
                if server.log_path is not None and server.log_path.exists():
                    folder = f"server/{settings_slug(settings)}" if settings else "server"
                    self.mlflow.log_artifact(self.parent_id, str(server.log_path), folder)

    def _start(self, settings: dict[str, str]) -> Server | None:
        """The server for these settings; None where a later combination cannot start (a FAILED run
        says why: it bounds the search, the other combinations go on)."""
        from tracker.recording.lifecycle import failed_run

        log_dir = self.log_root / settings_slug(settings) if settings else self.log_root
        try:
            return _server(self.config, log_dir, settings)
        except ServerError as err:
            if self.parent_id is None:
                raise  # nothing measured yet: the one line is the answer
            slug = settings_slug(settings)
            failed_run(self.mlflow, self.config.experiment, f"{short_model_name(self.model)} · {slug}",
                       {"mlflow.parentRunId": self.parent_id, "tracker.serve.settings": slug},
                       {f"server.{k}": v for k, v in settings.items()}, str(err))
            logger.warning("settings %s: %s", slug, err)
            return None


def _open_sweep(mlflow: Any, config: ServeConfig, model: str, tags: dict[str, str], params: dict[str, Any]) -> str:
    """The sweep's parent run; under `mlflow run -e serve_bench`, the launcher's run points to it."""
    from tracker.recording.lifecycle import open_run

    launcher = os.environ.get("MLFLOW_RUN_ID")
    tags = tags | {"tracker.serve.sweep": "true"} | ({"tracker.launcher_run_id": launcher} if launcher else {})
    parent_id = open_run(mlflow, config.experiment, _sweep_name(config, model), tags, params)
    if launcher:
        mlflow.set_tag(launcher, "mlflow.note.content", f"Launcher of `mlflow run -e serve_bench`: the sweep's "
                       f"parent run is {parent_id}, with a run per load level nested below it.")
        mlflow.set_tag(launcher, "tracker.serve.parent_run_id", parent_id)
    return parent_id


def _sweep_name(config: ServeConfig, model: str) -> str:
    levels = ",".join(level.slug for level in config.levels()) or "auto"
    grid = len(config.setting_grid())
    return f"serve · {short_model_name(model)} · {levels}" + (f" · {grid} settings" if grid > 1 else "")


def server_log_dir() -> Path:
    """Where a launched server's log is written (kept: an error names it), one folder per launch."""
    from tracker.loading.builtin import cache_dir

    return cache_dir() / "server-logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def _server(config: ServeConfig, log_dir: Path, settings: dict[str, str]) -> Server:
    if config.endpoint is not None:
        return attach(config.endpoint, config.server_pid)
    model = config.model
    if model == BUILTIN_SERVE_MODEL:
        from tracker.sources.models import builtin_multipurpose

        model = builtin_multipurpose(BUILTIN_SERVE_MODEL).location
    return launch(config.launch or "", model=model, log_dir=log_dir, settings=settings,
                  startup_timeout_s=config.startup_timeout_s)


def _client(config: ServeConfig, server: Server, workload: Workload) -> Client:
    """A client that the server answers, asking for exact output lengths where the server can."""
    client = Client(server.endpoint, server.model, api=config.api, timeout_s=config.request_timeout_s)
    first = client.send(Prompt(workload.prompts[0].text, 2))
    if not first.ok:
        raise ServerError(f"{server.endpoint} refused a {config.api} request ({first.outcome}: "
                          f"{first.detail.strip()[:300]}); check --api (completions or chat) and the model")
    client.length_dialect = choose_length_dialect(client, workload.prompts[0])
    if client.length_dialect is None:
        logger.warning("the server takes no way to fix the output length (vLLM's min_tokens, transformers' "
                       "generation_config): outputs end where the model stops; their lengths are the server's")
    return client


def _meter(server: Server, location: Any) -> EnergyMeter:
    import psutil

    from tracker.measurement.readings import SystemProbe

    gpus = server_gpus(server)
    try:
        probe = SystemProbe(gpus=gpus, root_pid=server.pid)
    except psutil.Error:
        raise ServerLost(f"the server (process {server.pid}) ended before it could be measured") from None
    return EnergyMeter(location=location, probe=probe, other_process_gpus=gpus)


def _server_tags(server: Server, client: Client, workload: Workload, config: ServeConfig) -> dict[str, str]:
    tags = {}
    if workload.sample_data or config.model == BUILTIN_SERVE_MODEL and config.launch is not None:
        tags["tracker.quality.meaningful"] = "false"
        tags["tracker.quality.unavailable"] = ("built-in sample data or the built-in tiny model (random weights): "
                                               "the quality figures mean nothing")
    elif workload.scored:
        tags["tracker.quality.meaningful"] = "true"
    return tags | {
        "tracker.serve.server": server.how,
        "tracker.serve.endpoint": server.endpoint,
        "tracker.serve.output_length": (f"{workload.output_length}; exact, through the server's "
                                        f"{client.length_dialect} request fields" if client.length_dialect
                                        else f"{workload.output_length}; the server stops where the model "
                                             "stops (it takes no way to fix the length)"),
        "tracker.dataset.source": workload.source,
        "tracker.serve.window": ("steady state: windows open once the warm-up requests ended with the level's "
                                 "load held, and close after --min-window-s and --min-window-requests; "
                                 "tokens are counted by their arrival inside each window"),
        "tracker.serve.attribution": ("the server's process tree (its CPU time, read in clock ticks) and its "
                                      "GPUs; the load generator's CPU time is measured apart "
                                      "(client_cpu_share) and never charged to it"),
    }


def _measure_level(config: ServeConfig, level: Level, server: Server, client: Client, meter: EnergyMeter,
                   workload: Workload, parent_id: str, base_tags: dict[str, str], params: dict[str, Any],
                   settings: dict[str, str]) -> LevelResult:
    from tracker.recording.lifecycle import recorded_run

    # tracker.attempt: the sweep describes its launcher itself (lifecycle leaves it alone then).
    tags = base_tags | {"mlflow.parentRunId": parent_id, "tracker.serve.level": level.name,
                        "tracker.attempt": f"serve:{parent_id}:{level.slug}:{settings_slug(settings)}"}
    if settings:
        tags["tracker.serve.settings"] = settings_slug(settings)
    level_params = params | {f"server.{k}": v for k, v in settings.items()}
    level_params |= ({"concurrency": level.concurrency} if level.concurrency is not None
                     else {"request_rate": level.rate})
    name = f"{short_model_name(server.model)} · {level.name}" + (f" · {settings_slug(settings)}" if settings else "")
    with recorded_run(experiment=config.experiment, run_name=name, tags=tags) as recorder:
        recorder.log(params=level_params)
        first_reading = len(meter.readings)
        load = Load(client, workload.prompts, level, seed=config.seed)
        windows: list[WindowFigures] = []
        try:
            _run_windows(config, level, server, meter, load, windows, phase=level.slug)
            metrics = level_figures(load.records, windows, slo_ttft_ms=config.slo_ttft_ms,
                                    slo_tpot_ms=config.slo_tpot_ms)
            if config.prefill_split:
                metrics.update(_prefill_split(config, level, server, client, meter, workload, metrics))
            metrics.update(_quality(config, workload, load.records, windows))
        except BaseException as err:
            # The energy measured so far, also of the window the fault cut short, is logged before the
            # run ends FAILED or KILLED (recorded_run); ServerLost says the server died.
            windows = _windows_of(meter.readings[first_reading:], windows)
            partial = level_figures(load.records, windows, slo_ttft_ms=config.slo_ttft_ms,
                                    slo_tpot_ms=config.slo_tpot_ms)
            recorder.log(metrics=_loggable(partial), tags=_measurement_tags(meter, first_reading) | {
                "tracker.run.partial": (f"stopped during window {len(windows)} of {config.windows}" if windows
                                        else "stopped before the first window") + f": {err}"[:5000]})
            recorder.log_text(_requests_csv(load.records), "requests.csv")
            raise
        feasible = meets_targets(metrics, slo_ttft_ms=config.slo_ttft_ms, slo_tpot_ms=config.slo_tpot_ms)
        recorder.log(metrics=_loggable(metrics), tags=_measurement_tags(meter, first_reading) | {
            "tracker.serve.keeps_targets": str(feasible).lower()})
        recorder.log_text(_requests_csv(load.records), "requests.csv")
        records = meter.records_csv(meter.readings[first_reading:])
        if records:
            recorder.log_text(records, "codecarbon/emissions.csv")
        per_window = [window_counts(load.records, w)["energy_j_per_output_token"] for w in windows]
        return LevelResult(level, recorder.run_id, metrics, feasible, per_window, settings)


def _run_windows(config: ServeConfig, level: Level, server: Server, meter: EnergyMeter, load: Load,
                 windows: list[WindowFigures], *, phase: str) -> None:
    """Warm up, then measure ``config.windows`` windows back to back; the load stops at the end."""
    load.start()
    finished_ok = False
    try:
        warm = max(config.warmup_requests, level.concurrency or 0)
        _wait_for(load, server, meter.probe, warm, config.request_timeout_s + config.max_window_s,
                  what=f"{warm} warm-up request(s) to end")
        for number in range(config.windows):
            with meter.phase(f"{phase}-w{number + 1}") as reading:
                start_s = time.perf_counter()
                base = load.finished_count()
                while True:
                    elapsed = time.perf_counter() - start_s
                    enough = load.finished_count() - base >= config.min_window_requests
                    if elapsed >= config.max_window_s or (enough and elapsed >= config.min_window_s):
                        break
                    _check_server(server, meter.probe)
                    if enough:  # only the window's length is left to wait for
                        time.sleep(min(POLL_S, config.min_window_s - elapsed))
                    else:
                        load.wait_finished(base + config.min_window_requests, timeout_s=POLL_S)
                end_s = time.perf_counter()
            windows.append(_window(reading, start_s, end_s))
        finished_ok = True
    finally:
        drained = load.stop(config.request_timeout_s + 5 if finished_ok else DRAIN_ON_ERROR_S)
        if finished_ok and not drained:
            logger.warning("requests of %s still in flight %g s after the load stopped", level.name,
                           config.request_timeout_s + 5)


def _wait_for(load: Load, server: Server, probe: Any, count: int, timeout_s: float, *, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not load.wait_finished(count, timeout_s=POLL_S):
        _check_server(server, probe)
        if time.monotonic() > deadline:
            raise ServerError(f"the server did not let {what} within {timeout_s:g} s "
                              f"({load.finished_count()} ended); raise --request-timeout-s, or check the server")
    failed = [r for r in load.records if not r.ok]
    if load.records and len(failed) == len(load.records):
        _check_server(server, probe)
        raise ServerError(f"every warm-up request failed ({failed[-1].outcome}: {failed[-1].detail.strip()[:200]})")


def _check_server(server: Server, probe: Any) -> None:
    """Raise ServerLost once the server's process has ended (``probe`` is the meter's, on its tree);
    first, the probe reads the tree's CPU time, which a process that ended no longer shows."""
    probe.remember()
    if not probe.root_alive():
        code = server.launched.poll() if server.launched is not None else None
        detail = f" (exit code {code})" if code is not None else ""
        log = (f"; its log: {server.log_path} (also the sweep run's artifact server/server.log)"
               if server.log_path else "")
        raise ServerLost(f"the server (process {server.pid}) ended during the measurement{detail}{log}")


def _window(reading: PhaseReading, start_s: float, end_s: float) -> WindowFigures:
    window = reading.window
    nan = math.nan
    return WindowFigures(start_s=start_s, end_s=end_s, energy=reading.energy, machine=reading.seen,
                         server_cpu_s=window.own_cpu_s if window else nan,
                         client_cpu_s=window.companion_cpu_s if window else nan,
                         machine_busy_cpu_s=window.machine_busy_cpu_s if window else nan,
                         contended=reading.contended, reason=reading.reason)


def _windows_of(readings: list[PhaseReading], complete: list[WindowFigures]) -> list[WindowFigures]:
    """The complete windows, and the one a fault cut short (its edges from its own duration)."""
    if len(readings) <= len(complete):
        return complete
    cut = readings[len(complete)]
    end = time.perf_counter()
    duration = cut.window.duration_s if cut.window else 0.0
    return complete + [_window(cut, end - duration, end)]


def _prefill_split(config: ServeConfig, level: Level, server: Server, client: Client, meter: EnergyMeter,
                   workload: Workload, full: dict[str, float]) -> dict[str, float]:
    """The level again with one output token per request: its energy per input token is prefill's;
    decode's per output token is the full level's energy less that prefill, over its output tokens."""
    prompts = [replace(p, max_tokens=1) for p in workload.prompts]
    load = Load(client, prompts, level, seed=config.seed)
    windows: list[WindowFigures] = []
    _run_windows(config, level, server, meter, load, windows, phase=f"{level.slug}-prefill")
    prefill = level_figures(load.records, windows, slo_ttft_ms=None, slo_tpot_ms=None)
    per_input = prefill.get("energy_j_per_input_token", math.nan)
    joules = full.get("energy_kwh", math.nan) * KWH_TO_J
    decode = ((joules - per_input * full.get("input_tokens", math.nan)) / full["output_tokens"]
              if full.get("output_tokens") else math.nan)
    return {"prefill_energy_j_per_input_token": per_input, "decode_energy_j_per_output_token": decode,
            "prefill_ttft_ms_p50": prefill.get("ttft_ms_p50", math.nan)}


def _quality(config: ServeConfig, workload: Workload, records: list[RequestRecord],
             windows: list[WindowFigures]) -> dict[str, float]:
    if not windows:
        return {}
    start, end = windows[0].start_s, windows[-1].end_s
    scored = [r for r in records if r.ok and start <= r.sent_s < end
              and workload.prompts[r.prompt_index].reference is not None]
    return score(config, workload, [r.text for r in scored],
                 [workload.prompts[r.prompt_index].reference for r in scored])


def _measurement_tags(meter: EnergyMeter, first: int) -> dict[str, str]:
    from tracker.recording.provenance import meter_tags

    readings = meter.readings[first:]
    tags = meter_tags(meter, readings)
    tags["tracker.energy.attribution"] = meter.rates().describe().replace("this process tree", "the server's tree")
    contended = [f"{r.name}: {r.contended}" for r in readings if r.contended]
    tags["tracker.measurement.contended"] = str(bool(contended)).lower()
    if contended:
        tags["tracker.measurement.contended_reason"] = "; ".join(contended)[:5000]
    return tags


def _requests_csv(records: list[RequestRecord]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["prompt_index", "sent_s", "ttft_ms", "tpot_ms", "e2e_s", "output_tokens", "input_tokens",
                     "outcome", "detail"])
    origin = min((r.sent_s for r in records), default=0.0)
    for r in sorted(records, key=lambda r: r.sent_s):
        writer.writerow([r.prompt_index, f"{r.sent_s - origin:.4f}", f"{ttft_ms(r):.2f}", f"{tpot_ms(r):.3f}",
                         f"{(r.done_s or r.sent_s) - r.sent_s:.4f}", r.tokens,
                         "" if r.input_tokens is None else r.input_tokens, r.outcome, r.detail[:200]])
    return out.getvalue()


def _loggable(metrics: dict[str, float]) -> dict[str, float]:
    """MLflow takes NaN; it is kept (a figure that could not be taken), infinities are not."""
    return {k: float(v) for k, v in metrics.items() if v is not None and not math.isinf(v)}


def _log_summary(mlflow: Any, run_id: str, summary: dict[str, Any]) -> None:
    from mlflow.entities import Metric, RunTag
    from mlflow.utils.time import get_current_time_millis

    now = get_current_time_millis()
    metrics = [Metric(k, float(v), now, 0) for k, v in summary.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isinf(v)]
    tags = [RunTag(f"tracker.serve.{k}", str(v)) for k, v in summary.items() if isinstance(v, str)]
    if summary.get("tie"):
        tags.append(RunTag("tracker.serve.tie", f"within the 95% interval of the best: {summary['tie']}"))
    mlflow.log_batch(run_id, metrics=metrics, tags=tags)
