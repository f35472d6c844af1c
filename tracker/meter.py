"""Energy measurement with CodeCarbon: one tracker per run, one CodeCarbon task per measured phase.

A phase is a context manager that always closes its window, also when the body raises or the run
is interrupted, so partial energy is never lost. Nothing is written to the working directory and
no lock is taken: CodeCarbon's records are kept in memory and logged to MLflow as artifacts.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from tracker.carbon import Location
from tracker.energy import Energy

logger = logging.getLogger(__name__)

TrackingMode = Literal["machine", "process"]
# CodeCarbon samples power about once a second during a task; a window of only a few samples
# gives a poor average, so shorter query phases are flagged.
MIN_RELIABLE_WINDOW_S = 3.0


@dataclass
class PhaseReading:
    name: str
    energy: Energy | None = None
    reason: str = ""  # why the energy is NaN, when it is
    record: dict[str, Any] = field(default_factory=dict)  # CodeCarbon's row for this phase


class EnergyMeter:
    """Measures named phases of one run."""

    def __init__(self, *, location: Location, gpu_ids: list[int | str] | None,
                 tracking_mode: TrackingMode = "machine", project_name: str = "tracker") -> None:
        from codecarbon import OfflineEmissionsTracker

        logging.getLogger("codecarbon").setLevel(logging.ERROR)
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

    @contextmanager
    def phase(self, name: str) -> Iterator[PhaseReading]:
        reading = PhaseReading(name)
        started = time.perf_counter()
        self._tracker.start_task(name)
        try:
            yield reading
        finally:
            duration = time.perf_counter() - started
            try:
                # Unnamed: CodeCarbon renames a task whose name was used before (repeats).
                data = self._tracker.stop_task()
            except Exception as err:  # a meter failure must not hide the run's own outcome
                logger.warning("CodeCarbon failed to close phase %s: %s", name, err)
                data = None
            if data is None:
                reading.energy = Energy.unavailable(duration)
                reading.reason = "CodeCarbon returned no reading for this phase (see its log)"
            else:
                reading.energy = Energy.from_codecarbon(data)
                reading.record = {"task_name": name, **dataclasses.asdict(data)}
            self.readings.append(reading)

    def hardware(self) -> dict[str, Any]:
        return self._tracker.get_detected_hardware()

    def provenance(self) -> dict[str, str]:
        """How each energy component and the carbon figure were obtained, as tag values."""
        cpu = ram = gpu = None
        for device in getattr(self._tracker, "_hardware", []):
            kind = type(device).__name__
            cpu = device if kind in ("CPU", "AppleSiliconChip", "Raspberry") and cpu is None else cpu
            ram = device if kind == "RAM" else ram
            gpu = device if kind == "GPU" else gpu
        ram_watts = self._last_record_value("ram_power")
        tags = {
            "tracker.energy.cpu.method": _cpu_method(cpu, self.hardware()),
            "tracker.energy.ram.method": (
                "modelled: CodeCarbon's rule of thumb from installed RAM size"
                + (f" ({ram_watts:.1f} W)" if ram_watts is not None else "")
                if ram is not None else "unknown: CodeCarbon set up no RAM meter"),
            "tracker.energy.gpu.method": (
                f"measured: NVML energy counter via CodeCarbon (GPU ids: "
                f"{'all visible' if self.gpu_ids is None else ','.join(map(str, self.gpu_ids))})"
                if gpu is not None else "absent: no GPU visible to this process, so 0 kWh"),
            "tracker.energy.tracking_mode": self.tracking_mode,
            "tracker.energy.meter": "codecarbon",
            "tracker.carbon.country_source": self.location.country_source,
            "tracker.carbon.intensity_source": self.location.intensity_source,
        }
        return tags

    def records_csv(self) -> str:
        """Every phase's CodeCarbon row, in CodeCarbon's own layout with a leading task_name."""
        rows = [r.record for r in self.readings if r.record]
        if not rows:
            return ""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()

    def close(self) -> None:
        try:
            self._tracker.stop()
        except Exception as err:  # pragma: no cover - CodeCarbon's stop already swallows most errors
            logger.warning("CodeCarbon failed to stop: %s", err)

    def _last_record_value(self, key: str) -> float | None:
        for reading in reversed(self.readings):
            if key in reading.record:
                return float(reading.record[key])
        return None


def _cpu_method(cpu: Any, hardware: dict[str, Any]) -> str:
    if cpu is None:
        return "unknown: CodeCarbon set up no CPU meter"
    mode = getattr(cpu, "_mode", None)
    tdp = getattr(cpu, "_tdp", None)
    model = hardware.get("cpu_model") or "unknown CPU"
    if mode in ("intel_rapl", "windows_emi"):
        return f"measured: RAPL energy counter ({model})"
    if mode in ("intel_power_gadget",) or type(cpu).__name__ == "AppleSiliconChip":
        return f"measured: vendor power tool ({model})"
    if mode == "cpu_load":
        return f"modelled: TDP x CPU load (TDP {tdp} W for {model}; no RAPL counter readable)"
    if mode == "constant":
        return f"modelled: constant half of TDP ({tdp} W for {model}; no RAPL counter readable)"
    return f"unknown: CodeCarbon CPU mode {mode!r}"
