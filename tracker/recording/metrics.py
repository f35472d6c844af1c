"""The run's figures, named as in the MLflow contract (units in the names).

Query-phase figures are the mean over its windows (repeats); with several windows each also gets
``<name>_std`` and a Student-t 95% interval of the mean, ``<name>_ci95_low`` and ``_ci95_high``.
``energy_*`` and everything per output derive from the energy attributed to the run;
``machine_energy_*`` is everything the meter saw. A reading that could not be taken stays NaN.
"""

from __future__ import annotations

import math
import re

from tracker.measurement.outcome import QueryReading, RunOutcome
from tracker.measurement.stats import Spread, percentile


def metric_name_part(text: str, empty: str) -> str:
    """Text as part of an MLflow metric name: 'transfer model to GPU' -> 'transfer_model_to_gpu',
    'f1, has answer' -> 'f1_has_answer'; ``empty`` when nothing is left."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or empty


def query_figures(query: QueryReading, *, generative: bool) -> dict[str, float]:
    """Figures of one query-phase window."""
    energy, machine, window = query.reading.energy, query.reading.seen, query.reading.window
    n = query.inferences
    figures = {
        "energy_kwh": energy.total_kwh,
        "energy_cpu_kwh": energy.cpu_kwh,
        "energy_gpu_kwh": energy.gpu_kwh,
        "energy_ram_kwh": energy.ram_kwh,
        "emissions_kg": energy.emissions_kg,
        "machine_energy_kwh": machine.total_kwh,
        "machine_energy_cpu_kwh": machine.cpu_kwh,
        "machine_energy_gpu_kwh": machine.gpu_kwh,
        "machine_energy_ram_kwh": machine.ram_kwh,
        "machine_emissions_kg": machine.emissions_kg,
        "duration_s": energy.duration_s,
        # kWh per 1,000 inferences is also Wh per output (per image, per summary).
        "energy_kwh_per_1k": energy.per_1k(n).total_kwh if n else math.nan,
        "machine_energy_kwh_per_1k": machine.per_1k(n).total_kwh if n else math.nan,
        "emissions_g_per_output": energy.emissions_kg * 1000 / n if n else math.nan,
        "throughput_per_s": n / energy.duration_s if energy.duration_s > 0 else math.nan,
        "carbon_intensity_g_per_kwh": (machine.emissions_kg * 1000 / machine.total_kwh
                                       if machine.total_kwh > 0 else math.nan),
    }
    if window is not None:
        figures.update(own_cpu_seconds=window.own_cpu_s, background_cpu_share=window.background_cpu_share,
                       cpu_time_share=window.host_share)
        if window.background_gpu_processes is not None:
            figures["background_gpu_processes"] = float(window.background_gpu_processes)
        if window.gpu_counter_kwh is not None:
            figures["nvml_energy_kwh"] = window.gpu_counter_kwh  # NVML read by us, for checking the meter
        if window.rapl_cpu_kwh is not None:
            figures["rapl_package_energy_kwh"] = window.rapl_cpu_kwh
        if window.gpu_integrated_kwh is not None:
            figures["nvml_power_integrated_kwh"] = window.gpu_integrated_kwh
        for edge in ("start", "end"):
            temperature = getattr(window, f"gpu_temperature_{edge}_c")
            if temperature is not None:
                figures[f"gpu_temperature_{edge}_c"] = temperature
    if generative:
        figures["energy_j_per_token"] = (energy.total_j / query.generated_tokens
                                         if query.generated_tokens else math.nan)
        figures["generated_tokens"] = float(query.generated_tokens)
    return figures


def run_metrics(outcome: RunOutcome, *, generative: bool) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if outcome.load is not None and outcome.load.energy is not None:
        load, seen = outcome.load.energy, outcome.load.seen
        metrics.update(load_energy_kwh=load.total_kwh, load_duration_s=load.duration_s,
                       load_emissions_kg=load.emissions_kg, load_machine_energy_kwh=seen.total_kwh)
    windows = [query_figures(q, generative=generative) for q in outcome.complete_queries]
    if windows:
        for name in windows[0]:
            spread = Spread.of(w.get(name, math.nan) for w in windows)
            metrics[name] = spread.mean
            if len(windows) > 1:
                low, high = spread.ci95
                metrics.update({f"{name}_std": spread.std, f"{name}_ci95_low": low, f"{name}_ci95_high": high})
        metrics["windows"] = float(len(windows))
        metrics["inferences_measured"] = float(outcome.complete_queries[-1].inferences)
        latencies = [ms for q in outcome.complete_queries for ms in q.batch_latencies_ms]
        if latencies:
            for q in (50, 90, 99):
                metrics[f"batch_latency_ms_p{q}"] = percentile(latencies, q)
    if outcome.quiet_waits:
        metrics["quiet_wait_s"] = sum(w.waited_s for w in outcome.quiet_waits)
    if outcome.model_parameters:
        metrics["model_parameters"] = float(outcome.model_parameters)
    metrics.update(outcome.quality)
    return metrics
