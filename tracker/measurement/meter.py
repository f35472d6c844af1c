"""Energy measurement with CodeCarbon: one tracker per run, one CodeCarbon task per measured phase.

A phase is a context manager that always closes its window, also when the body raises or the run
is interrupted, so partial energy is never lost. At both edges of a window the GPU is synchronized
(work queued inside the window ends inside it) and the probe reads CPU times and counters, so each
reading holds what the meter saw (``machine``) and the part attributed to the run (``energy``,
see ``tracker.measurement.attribution``). Nothing is written to the working directory and no lock is taken:
CodeCarbon's records are kept in memory and logged to MLflow as artifacts.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from tracker.measurement.attribution import (FullLoadRates, Window, attribute, contention, estimate, gpu_unavailable,
                                             quiet_enough)
from tracker.measurement.carbon import Location
from tracker.measurement.energy import Energy
from tracker.measurement.readings import Probe, Snapshot, SystemProbe, visible_gpu

logger = logging.getLogger(__name__)

TrackingMode = Literal["machine", "process"]
# CodeCarbon samples power about once a second during a task; a window of only a few samples
# gives a poor average, so shorter query phases are flagged.
MIN_RELIABLE_WINDOW_S = 3.0
# On a GPU each window lasts at least this long (unless --min-duration-s says otherwise): NVML's
# energy counter advances in steps of about 0.1 s, and over 0.3-0.5 s windows it differed from the
# meter by up to 51% (H200, benchmarks/gpu_check.py).
GPU_MIN_WINDOW_S = 5.0
# Before its first window a run waits for the GPU to stop cooling (readings follow the starting
# temperature, ML.ENERGY measured): until it fell less than GPU_COOL_STEP_C over GPU_COOL_STABLE_S,
# at most GPU_COOL_MAX_S; then it reads the idle power over GPU_IDLE_S.
GPU_COOL_STEP_C = 1.0
GPU_COOL_STABLE_S = 3.0
GPU_COOL_MAX_S = 120.0
GPU_IDLE_S = 1.0
CPU_KINDS = ("CPU", "AppleSiliconChip", "Raspberry")  # CodeCarbon's classes that meter a CPU


@dataclass
class PhaseReading:
    name: str
    energy: Energy | None = None  # attributed to the run: every per-output figure derives from it
    machine: Energy | None = None  # everything the meter saw; None where only one figure exists (imports)
    window: Window | None = None  # CPU times and counters read at the window's edges
    contended: str | None = None  # why other work interfered, when it did
    reason: str = ""  # why the energy is NaN, when it is
    record: dict[str, Any] = field(default_factory=dict)  # CodeCarbon's row for this phase

    @property
    def seen(self) -> Energy | None:
        """What the meter saw: the machine figure where there is one."""
        return self.machine if self.machine is not None else self.energy


@dataclass(frozen=True)
class GpuIdle:
    """The GPU before the run's first window: how long it took to stop cooling, then its power and
    temperature at rest."""

    cooldown_s: float
    cooled: bool  # False: still cooling when GPU_COOL_MAX_S ran out
    power_w: float | None
    temperature_c: float | None


@dataclass(frozen=True)
class QuietWait:
    """How the wait for a quiet machine before a window ended."""

    waited_s: float
    quiet: bool
    background_cpu_share: float
    others_demand_cpus: float = math.nan  # what other processes asked of the run's CPUs at the end


def default_probe(gpus: list[int | str]) -> Probe:
    """The machine's own readings; tests replace this factory to feed fakes through real runs."""
    return SystemProbe(gpus=gpus)


class EnergyMeter:
    """Measures named phases of one run."""

    def __init__(self, *, location: Location, device: str = "cpu", tracking_mode: TrackingMode = "machine",
                 project_name: str = "tracker", probe: Probe | None = None,
                 other_process_gpus: list[int | str] | None = None) -> None:
        """``device`` is this process's torch device; ``other_process_gpus`` the GPUs another measured
        process uses (a server's), read through NVML but never synchronized from here."""
        from codecarbon import OfflineEmissionsTracker

        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        gpu = visible_gpu(device)
        gpus = list(other_process_gpus) if other_process_gpus else [] if gpu is None else [gpu]
        # CodeCarbon measures only the GPUs the run uses; None (all) is moot off the GPU.
        gpu_ids = gpus or None
        self.device = device
        self.probe = probe if probe is not None else default_probe(gpus)
        self.location = location
        self.readings: list[PhaseReading] = []
        options: dict[str, Any] = {}
        if location.intensity_override_g_per_kwh is not None:
            options["force_carbon_intensity_g_co2e_kwh"] = location.intensity_override_g_per_kwh
        self._tracker = OfflineEmissionsTracker(
            country_iso_code=location.country_iso_code,
            project_name=project_name,
            output_methods=[],  # records go to MLflow, not to files in the working directory
            allow_multiple_runs=True,  # no lock file: concurrent runs must not block each other
            tracking_mode=tracking_mode,
            gpu_ids=gpu_ids,
            log_level="error",  # its fallbacks are reported as provenance tags instead
            **options,
        )
        self.tracking_mode = tracking_mode
        self.gpu_ids = gpu_ids
        self._rates: FullLoadRates | None = None
        self._open_since: Snapshot | None = None
        self.gpu_idle: GpuIdle | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[PhaseReading]:
        reading = PhaseReading(name)
        if self.gpu_idle is None and getattr(self.probe, "gpus", None) and hasattr(self.probe, "gpu_power_w"):
            self.gpu_idle = settle_gpu(self.probe)
        self.synchronize()
        self._tracker.start_task(name)
        # A probe that shares this process's CPU time among windows open at once (tests' fakes do not).
        open_window, close_window = getattr(self.probe, "open_window", None), getattr(self.probe, "close_window", None)
        if open_window is not None:
            open_window()
        start = self._open_since = self.probe.snapshot()
        try:
            yield reading
        finally:
            self._open_since = None
            self.synchronize()
            end = self.probe.snapshot()
            if close_window is not None:
                close_window()
            try:
                # Unnamed: CodeCarbon renames a task whose name was used before (repeats).
                data = self._tracker.stop_task()
            except Exception as err:  # a meter failure must not hide the run's own outcome
                logger.warning("CodeCarbon failed to close phase %s: %s", name, err)
                data = None
            window = Window.between(start, end)
            reading.window = window
            reading.contended = contention(window)
            if data is None:
                reading.machine = reading.energy = Energy.unavailable(window.duration_s)
                reading.reason = "CodeCarbon returned no reading for this phase (see its log)"
            else:
                machine = Energy.from_codecarbon(data)
                if gpu_unavailable(window):  # CodeCarbon reports 0 for a counter it cannot read
                    if window.gpu_integrated_kwh is not None:  # our own power samples, integrated
                        machine = dataclasses.replace(machine, gpu_kwh=window.gpu_integrated_kwh)
                    else:
                        machine = dataclasses.replace(machine, gpu_kwh=math.nan)
                        reading.reason = f"GPU energy missing: {window.gpu_reason}"
                if window.unresolved:
                    reading.reason = "; ".join(filter(None, (reading.reason, window.unresolved)))
                reading.machine = machine
                reading.energy = attribute(machine, window, self.rates(),
                                           gpu_idle_w=self.gpu_idle.power_w if self.gpu_idle else None)
                reading.record = {"task_name": name, **dataclasses.asdict(data)}
            self.readings.append(reading)

    def open_window_kwh(self) -> float | None:
        """An estimate of the attributed energy of the window now open (None when none is):
        CodeCarbon reports only when a window closes, so this is what a heartbeat can log."""
        start = self._open_since
        if start is None:
            return None
        return estimate(Window.between(start, self.probe.snapshot()), self.rates())

    def rates(self) -> FullLoadRates:
        """What CodeCarbon models at full load, per component (None where it measures); known once
        its hardware is set up, at the first window."""
        if self._rates is None:
            cpu, ram = self._device(*CPU_KINDS), self._device("RAM")
            cpu_w = None
            if cpu is not None and getattr(cpu, "_mode", None) == "cpu_load":
                cpu_w = float(cpu._tdp)  # the load curve at full load: 0.1 + 0.9 x 1^3 = 1
            elif cpu is not None and getattr(cpu, "_mode", None) == "constant":
                cpu_w = float(cpu._tdp) * 0.5  # CodeCarbon's constant mode: half of TDP, whatever the load
            self._rates = FullLoadRates(cpu_w=cpu_w, ram_w=_machine_ram_watts(ram),
                                        logical_cpus=self.probe.logical_cpus)
        return self._rates

    def _device(self, *kinds: str) -> Any:
        """CodeCarbon's meter of one kind of hardware (its class name), or None."""
        return next((d for d in getattr(self._tracker, "_hardware", []) if type(d).__name__ in kinds), None)

    def synchronize(self) -> None:
        """Wait for the GPU's queued work, so that a window's edge is where the work's edge is."""
        if not self.device.startswith("cuda"):
            return
        try:
            import torch

            torch.cuda.synchronize(self.device)
        except Exception as err:  # a failing device shows in the run itself; the window still closes
            logger.warning("could not synchronize %s at a window edge: %s", self.device, err)

    def wait_for_quiet(self, timeout_s: float, own_threads: float | None = None,
                       interval_s: float = 0.5) -> QuietWait:
        """Wait until a run of ``own_threads`` threads (default: as many as the CPUs it may use)
        would have its CPUs to itself (``attribution.quiet_enough``), or time is up."""
        return wait_for_quiet(self.probe, timeout_s, own_threads, interval_s)

    def gpu_figures(self) -> dict[str, float]:
        """The GPU at rest before the first window, as metrics (none off the GPU)."""
        idle = self.gpu_idle
        if idle is None:
            return {}
        figures = {"gpu_cooldown_s": idle.cooldown_s}
        if idle.power_w is not None:
            figures["gpu_idle_power_w"] = idle.power_w
        if idle.temperature_c is not None:
            figures["gpu_idle_temperature_c"] = idle.temperature_c
        return figures

    def hardware(self) -> dict[str, Any]:
        return self._tracker.get_detected_hardware()

    def provenance(self) -> dict[str, str]:
        """How each energy component and the carbon figure were obtained, as tag values."""
        cpu, ram, gpu = self._device(*CPU_KINDS), self._device("RAM"), self._device("GPU")
        tags = {
            "tracker.energy.cpu.method": _cpu_method(cpu, self.hardware(), self.tracking_mode),
            "tracker.energy.ram.method": _ram_method(ram, self.tracking_mode,
                                                     self._last_record_value("ram_power")),
            "tracker.energy.gpu.method": (
                f"measured: NVML energy counter via CodeCarbon (GPU ids: "
                f"{'all visible' if self.gpu_ids is None else ','.join(map(str, self.gpu_ids))}), read after "
                "torch.cuda.synchronize at both window edges"
                if gpu is not None else "absent: no GPU visible to this process, so 0 kWh"),
            "tracker.energy.tracking_mode": self.tracking_mode,
            "tracker.energy.meter": "codecarbon",
            "tracker.carbon.country_source": self.location.country_source,
            "tracker.carbon.intensity_source": self.location.intensity_source,
        }
        return tags

    def records_csv(self, readings: list[PhaseReading] | None = None) -> str:
        """Every phase's CodeCarbon row (or those of ``readings``), in CodeCarbon's own layout with a
        leading task_name."""
        rows = [r.record for r in (self.readings if readings is None else readings) if r.record]
        if not rows:
            return ""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()

    def close(self) -> None:
        closing = getattr(self.probe, "close", None)
        if closing is not None:
            closing()
        try:
            self._tracker.stop()
        except Exception as err:  # pragma: no cover - CodeCarbon's stop already swallows most errors
            logger.warning("CodeCarbon failed to stop: %s", err)

    def _last_record_value(self, key: str) -> float | None:
        for reading in reversed(self.readings):
            if key in reading.record:
                return float(reading.record[key])
        return None


def settle_gpu(probe: Any) -> GpuIdle:
    """Wait for the GPU to stop cooling (see GPU_COOL_*), then read its idle power and temperature."""
    started = time.perf_counter()
    history: list[tuple[float, float]] = []
    cooled = False
    while True:
        now, temperature = time.perf_counter(), probe.gpu_temperature_c()
        if temperature is None:
            cooled = True  # no sensor: nothing to wait for
            break
        history.append((now, temperature))
        past = [t for at, t in history if now - at >= GPU_COOL_STABLE_S]
        if past and past[-1] - temperature < GPU_COOL_STEP_C:
            cooled = True
            break
        if now - started >= GPU_COOL_MAX_S:
            break
        time.sleep(0.5)  # temperature moves in seconds: a sampling interval, not a wait for an event
    cooldown = time.perf_counter() - started
    powers = []
    idle_until = time.perf_counter() + GPU_IDLE_S
    while time.perf_counter() < idle_until:
        power = probe.gpu_power_w()
        if power is not None:
            powers.append(power)
        time.sleep(0.1)
    return GpuIdle(cooldown, cooled, sum(powers) / len(powers) if powers else None, probe.gpu_temperature_c())


def wait_for_quiet(probe: Probe, timeout_s: float, own_threads: float | None = None,
                   interval_s: float = 0.5) -> QuietWait:
    """Sample the machine every ``interval_s`` until other processes leave a run of ``own_threads``
    threads its CPUs (see ``EnergyMeter.wait_for_quiet``), or ``timeout_s`` has passed."""
    started = time.perf_counter()
    previous = probe.snapshot()
    while True:
        time.sleep(interval_s)  # a sampling interval: CPU times move in clock ticks
        current = probe.snapshot()
        window = Window.between(previous, current)
        threads = own_threads if own_threads is not None else (window.allowed_cpus or probe.logical_cpus)
        quiet = quiet_enough(window, threads)
        waited = time.perf_counter() - started
        if quiet or waited >= timeout_s:
            return QuietWait(waited, quiet, window.background_cpu_share, window.others_demand_cpus)
        previous = current


def _cpu_method(cpu: Any, hardware: dict[str, Any], tracking_mode: str) -> str:
    """CodeCarbon's CPU method in words, as its code computes it (codecarbon/external/hardware.py)."""
    if cpu is None:
        return "unknown: CodeCarbon set up no CPU meter"
    mode = getattr(cpu, "_mode", None)
    tdp = getattr(cpu, "_tdp", None)
    model = hardware.get("cpu_model") or "unknown CPU"
    # CodeCarbon falls back to 4 W per logical CPU for a model missing from its table; it keeps
    # no flag of that on the path runs take, so it is recognised by the value.
    import psutil

    default = getattr(cpu, "_is_generic_tdp", False) or tdp == 4 * (psutil.cpu_count() or 0)
    tdp_source = ("CodeCarbon's default of 4 W per logical CPU for a model missing from its table"
                  if default else "from CodeCarbon's CPU table")
    if mode in ("intel_rapl", "windows_emi"):
        return f"measured: RAPL energy counter ({model}); the whole package, every process"
    if mode in ("intel_power_gadget",) or type(cpu).__name__ == "AppleSiliconChip":
        return f"measured: vendor power tool ({model})"
    if mode == "cpu_load" and tracking_mode == "process":
        return (f"modelled: TDP x this process tree's CPU load / logical CPUs (CodeCarbon's process mode; "
                f"TDP {tdp} W for {model}, {tdp_source}); no RAPL counter readable")
    if mode == "cpu_load":
        return (f"modelled: TDP x (0.1 + 0.9 x L^3), L the whole machine's CPU load over each sample "
                f"(CodeCarbon's machine mode; TDP {tdp} W for {model}, {tdp_source}); no RAPL counter "
                "readable")
    if mode == "constant":
        return f"modelled: constant half of TDP ({tdp} W for {model}, {tdp_source}); no RAPL counter readable"
    return f"unknown: CodeCarbon CPU mode {mode!r}"


def _machine_ram_watts(ram: Any) -> float | None:
    """CodeCarbon's RAM power for the installed memory (what its machine mode reports), in either
    tracking mode; None when it set up no RAM meter."""
    if ram is None:
        return None
    forced = getattr(ram, "_force_ram_power", None)
    if forced is not None:
        return float(forced)
    try:
        return float(ram._calculate_ram_power(ram.machine_memory_GB))
    except Exception as err:  # a private API of CodeCarbon's: if it changes, split by share instead
        logger.warning("could not read CodeCarbon's RAM power for the machine: %s", err)
        return None


def _ram_method(ram: Any, tracking_mode: str, watts: float | None) -> str:
    """CodeCarbon's RAM rule in words (codecarbon/external/ram.py): 5 W per DIMM on x86 (1.5 W on
    ARM), the DIMM count guessed from a memory size, at least two DIMMs' worth."""
    if ram is None:
        return "unknown: CodeCarbon set up no RAM meter"
    power = f" ({watts:.1f} W)" if watts is not None else ""
    if getattr(ram, "_force_ram_power", None) is not None:
        return f"given: a RAM power set in CodeCarbon's configuration{power}"
    if tracking_mode == "process":
        return ("modelled: CodeCarbon's rule of thumb (5 W per guessed DIMM) applied to this process "
                f"tree's resident memory, with a floor of two DIMMs (10 W) however little it uses{power}; "
                "constant over the window, so it scales with wall time")
    return ("modelled: CodeCarbon's rule of thumb (5 W per guessed DIMM) from the installed RAM size"
            f"{power}, whatever the load; constant over the window, so it scales with wall time")
