"""The run's figures, named as in the MLflow contract (units in the names).

Query-phase figures are the mean over repeats, with ``<name>_std`` beside each when there were
several. A reading that could not be taken stays NaN.
"""

from __future__ import annotations

import math
import statistics

from tracker.runner import QueryReading, RunOutcome


def query_figures(query: QueryReading, *, generative: bool) -> dict[str, float]:
    """Figures of one query-phase window."""
    energy = query.reading.energy
    n = query.inferences
    figures = {
        "energy_kwh": energy.total_kwh,
        "energy_cpu_kwh": energy.cpu_kwh,
        "energy_gpu_kwh": energy.gpu_kwh,
        "energy_ram_kwh": energy.ram_kwh,
        "emissions_kg": energy.emissions_kg,
        "duration_s": energy.duration_s,
        # kWh per 1,000 inferences is also Wh per output (per image, per summary).
        "energy_kwh_per_1k": energy.per_1k(n).total_kwh if n else math.nan,
        "emissions_g_per_output": energy.emissions_kg * 1000 / n if n else math.nan,
        "throughput_per_s": n / energy.duration_s if energy.duration_s > 0 else math.nan,
        "carbon_intensity_g_per_kwh": (energy.emissions_kg * 1000 / energy.total_kwh
                                       if energy.total_kwh > 0 else math.nan),
    }
    if generative:
        figures["energy_j_per_token"] = (energy.total_j / query.generated_tokens
                                         if query.generated_tokens else math.nan)
        figures["generated_tokens"] = float(query.generated_tokens)
    return figures


def run_metrics(outcome: RunOutcome, *, generative: bool) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if outcome.load is not None and outcome.load.energy is not None:
        load = outcome.load.energy
        metrics.update(load_energy_kwh=load.total_kwh, load_duration_s=load.duration_s,
                       load_emissions_kg=load.emissions_kg)
    windows = [query_figures(q, generative=generative) for q in outcome.complete_queries]
    if windows:
        for name in windows[0]:
            values = [w[name] for w in windows]
            metrics[name] = statistics.fmean(values)
            if len(values) > 1:
                metrics[f"{name}_std"] = statistics.stdev(values)
        metrics["inferences_measured"] = float(outcome.complete_queries[-1].inferences)
    if outcome.model_parameters:
        metrics["model_parameters"] = float(outcome.model_parameters)
    metrics.update(outcome.quality)
    return metrics
