"""How a run's figures were obtained, as tags: the meter's methods, the hardware, the package
versions, attribution, contention and window length; and CodeCarbon's own rows as an artifact.
Shared by every kind of run (``tracker run``, ``tracker.measure``).
"""

from __future__ import annotations

import platform
from importlib import metadata

from tracker.measurement.attribution import contention, gpu_counter_check, gpu_power_rate_hz, overlap
from tracker.measurement.meter import MIN_RELIABLE_WINDOW_S, EnergyMeter, PhaseReading
from tracker.measurement.outcome import RunOutcome
from tracker.recording.lifecycle import RunRecorder

VERSIONED_PACKAGES = ("tracker", "torch", "transformers", "codecarbon", "mlflow", "datasets")


def outcome_tags(meter: EnergyMeter, outcome: RunOutcome, *, expected_inferences: int | None,
                 note: str) -> dict[str, str]:
    """How every figure was obtained: the meter's methods, the hardware, unreadable components,
    attribution and contention, and why quality is missing where it is."""
    tags = meter_tags(meter, meter.readings)
    if outcome.quality_unavailable:
        tags["tracker.quality.unavailable"] = outcome.quality_unavailable
        tags["tracker.quality.meaningful"] = "false"
    tags.update(measurement_tags(outcome, expected_inferences=expected_inferences, note=note,
                                 attribution=meter.rates().describe()))
    return tags


def meter_tags(meter: EnergyMeter, readings: list[PhaseReading]) -> dict[str, str]:
    """The meter's methods, the hardware, and which of ``readings`` could not be taken, and why."""
    tags = meter.provenance()
    tags.update({f"tracker.hardware.{k}": str(v) for k, v in meter.hardware().items() if v not in (None, "")})
    unreadable = [r for r in readings if r.reason]
    if unreadable:
        tags["tracker.energy.unavailable"] = "; ".join(f"{r.name}: {r.reason}" for r in unreadable)[:5000]
    return tags


def log_records(recorder: RunRecorder, meter: EnergyMeter) -> None:
    """CodeCarbon's own rows for every phase, as an artifact."""
    records = meter.records_csv()
    if records:
        recorder.log_text(records, "codecarbon/emissions.csv")


def version_tags() -> dict[str, str]:
    tags = {"tracker.python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            tags[f"tracker.version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return tags


def measurement_tags(outcome: RunOutcome, *, expected_inferences: int | None, note: str = "",
                     attribution: str = "") -> dict[str, str]:
    """How the query figures were obtained: attribution, contention, window length, quiet waits."""
    queries = outcome.complete_queries
    if not queries:
        return {}
    windows = [q.reading.window for q in queries if q.reading.window is not None]
    tags: dict[str, str] = {}
    if windows:
        shares = ", ".join(f"{w.host_share:.2f}" for w in windows)
        tags["tracker.energy.attribution"] = f"{attribution}; share of busy CPU time per window: {shares}"
    # Judged over the whole query phase: a window of a few clock ticks is too short to judge alone.
    overall = contention(sum(windows[1:], windows[0])) if windows else None
    tags["tracker.measurement.contended"] = str(overall is not None).lower()
    if overall:
        single = sum(q.reading.contended is not None for q in queries)
        reason = (f"over the {len(queries)} query window(s), {overall} ({single} window(s) contended on their "
                  "own). energy_kwh is attributed to this run; machine_energy_kwh is all the meter saw. For a "
                  "cleaner figure, measure on a quiet machine or pass --wait-for-quiet SECONDS")
        tags["tracker.measurement.contended_reason"] = reason
        tags["mlflow.note.content"] = (note + "\n\n" if note else "") + f"CONTENDED: {reason}."
    shared = overlap(sum(windows[1:], windows[0])) if windows else None
    if shared:
        tags["tracker.measurement.overlap"] = shared
    integrated = [w for w in windows if w.gpu_counter_kwh is None and w.gpu_integrated_kwh is not None]
    if integrated:
        rate = min(gpu_power_rate_hz(w) for w in integrated)
        tags["tracker.energy.gpu.integrated"] = (
            f"NVML's energy counter is not supported on this GPU: its energy is NVML's power read at {rate:.0f} Hz "
            "or more and integrated over each window (trapezoid), not CodeCarbon's 0")
    if any(w.gpu_mig for w in windows):
        tags["tracker.energy.gpu.mig"] = (
            "a MIG instance: NVML's energy counter and power are the whole physical GPU's, shared by every "
            "instance on it, so the GPU figure is the whole GPU's and includes other instances' work")
    covered = sum(q.reading.energy.duration_s for q in queries)
    short = covered < MIN_RELIABLE_WINDOW_S
    tags["tracker.measurement.short_window"] = str(short).lower()
    if short:
        tags["tracker.measurement.short_window_reason"] = (
            f"the query windows lasted {covered:.2f} s in all, under {MIN_RELIABLE_WINDOW_S:g} s: clock ticks, "
            "counter updates and timer noise weigh on so short a measurement; raise --n-samples, or pass "
            "--min-duration-s 10 to measure windows until they cover 10 s (with a 95% interval over them)")
    if outcome.quiet_waits:
        quiet = sum(w.quiet for w in outcome.quiet_waits)
        tags["tracker.measurement.quiet_wait"] = (
            f"waited {sum(w.waited_s for w in outcome.quiet_waits):.1f} s in all before {len(outcome.quiet_waits)} "
            f"window(s); the machine was quiet before {quiet} of them (other processes left the run's "
            "threads their CPUs: no oversubscription)")
    if expected_inferences is not None and queries[-1].inferences < expected_inferences:
        tags["tracker.run.partial"] = (f"{queries[-1].inferences} of {expected_inferences} "
                                       "inferences measured before the run stopped")
    check = gpu_counter_check([(q.reading.seen.gpu_kwh, q.reading.window.gpu_counter_kwh) for q in queries
                               if q.reading.window is not None and q.reading.window.gpu_counter_kwh is not None])
    if check:
        tags["tracker.energy.gpu.counter_check"] = check
    return tags
