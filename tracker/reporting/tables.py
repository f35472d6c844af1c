"""The report's tables: per model, per task (the paper's table), energy ratings, regional what-ifs."""

from __future__ import annotations

import math
from typing import Any

# Charging an average smartphone takes 0.012 kWh: the paper's comparison (after the US EPA's figure).
PHONE_CHARGE_KWH = 0.012
STAR_BANDS = 5
MODEL_KEY = ["task", "model", "dataset", "batch_size", "precision"]
MODEL_COLUMNS = MODEL_KEY + ["kind", "runs", "contended_runs", "kwh_per_1k_mean", "kwh_per_1k_min", "kwh_per_1k_max",
                             "g_co2_per_1k_mean", "quality", "quality_metric", "quality_meaningful",
                             "phone_charges_per_1k", "stars", "parameters", "energy_scope", "source",
                             "energy_method"]
TASK_COLUMNS = ["task", "models", "runs", "kwh_per_1k_mean", "kwh_per_1k_min", "kwh_per_1k_max",
                "g_co2_per_1k_mean", "phone_charges_per_1k", "kinds", "energy_scope", "energy_method"]
MULTIPURPOSE_COLUMNS = ["task", "model", "family", "dataset", "runs", "kwh_per_1k_mean", "kwh_per_1k_min",
                        "kwh_per_1k_max", "g_co2_per_1k_mean", "x_task_specific", "parameters", "quality",
                        "quality_metric", "energy_method"]
MULTI_PURPOSE = "multi-purpose"
# The families the paper tells apart among multi-purpose models, by model id; others are "base LM".
FAMILIES = (("Flan-T5", r"flan-t5|flan_t5"), ("BLOOMz", r"bloomz"), ("mT0", r"mt0"), ("T0", r"\bt0"),
            ("Llama (chat)", r"llama.*chat"), ("instruction-tuned", r"instruct|chat"))


def models_table(runs: Any) -> Any:
    """One row per task, model, dataset and settings (batch size, precision): means over its runs.

    Settings are part of the key so that a model measured at batch 1 and at batch 64 is two rows,
    never one mean of both.
    """
    grouped = runs.groupby(MODEL_KEY, sort=False, dropna=False)
    table = grouped.agg(
        kind=("kind", _joined), runs=("run_id", "count"), contended_runs=("contended", "sum"),
        kwh_per_1k_mean=("kwh_per_1k", "mean"),
        kwh_per_1k_min=("kwh_per_1k", "min"), kwh_per_1k_max=("kwh_per_1k", "max"),
        g_co2_per_1k_mean=("g_co2_per_1k", "mean"), quality=("quality", "mean"),
        quality_metric=("quality_metric", _joined), quality_meaningful=("quality_meaningful", "all"),
        parameters=("parameters", "max"), energy_scope=("energy_scope", _joined),
        source=("source", _joined), energy_method=("energy_method", _joined),
    ).reset_index()
    table["phone_charges_per_1k"] = table["kwh_per_1k_mean"] / PHONE_CHARGE_KWH
    table["stars"] = math.nan
    for _, rows in table.groupby("task").groups.items():
        ratings = star_ratings(table.loc[rows, "kwh_per_1k_mean"].tolist())
        table.loc[rows, "stars"] = [math.nan if r is None else r for r in ratings]
    table["stars"] = table["stars"].astype("Int64")  # a whole number, or empty when unrated
    task_energy = table.groupby("task")["kwh_per_1k_mean"].transform("mean")  # cheapest task first
    return table.assign(_order=task_energy).sort_values(["_order", "task", "kwh_per_1k_mean"])[
        MODEL_COLUMNS].reset_index(drop=True)


def tasks_table(runs: Any) -> Any:
    """The paper's table: per task, the mean over runs, and the cheapest and dearest model.

    Multi-purpose runs are left out (they have their table, ``multipurpose_table``): the paper's
    table is of task-specific models, and averaging both kinds would hide both. Runs whose kind
    is unknown (imported without one) are kept, and the ``kinds`` column says so.
    """
    import pandas as pd

    runs = runs[runs["kind"] != MULTI_PURPOSE]
    if runs.empty:
        return pd.DataFrame(columns=TASK_COLUMNS)
    per_model = runs.groupby(["task", "model"])["kwh_per_1k"].mean().groupby(level="task")
    table = runs.groupby("task").agg(
        models=("model", "nunique"), runs=("run_id", "count"), kwh_per_1k_mean=("kwh_per_1k", "mean"),
        g_co2_per_1k_mean=("g_co2_per_1k", "mean"), kinds=("kind", _joined),
        energy_scope=("energy_scope", _joined), energy_method=("energy_method", _joined))
    table["kwh_per_1k_min"] = per_model.min()
    table["kwh_per_1k_max"] = per_model.max()
    table["phone_charges_per_1k"] = table["kwh_per_1k_mean"] / PHONE_CHARGE_KWH
    return table.reset_index().sort_values("kwh_per_1k_mean")[TASK_COLUMNS].reset_index(drop=True)


def multipurpose_table(runs: Any) -> Any:
    """Multi-purpose models prompted for a task: one row per task, model and dataset, with its
    family and how many times the task-specific models' mean on the same task and dataset it costs."""
    import pandas as pd

    prompted = runs[runs["kind"] == MULTI_PURPOSE]
    if prompted.empty:
        return pd.DataFrame(columns=MULTIPURPOSE_COLUMNS)
    table = prompted.groupby(["task", "model", "dataset"], sort=False).agg(
        runs=("run_id", "count"), kwh_per_1k_mean=("kwh_per_1k", "mean"), kwh_per_1k_min=("kwh_per_1k", "min"),
        kwh_per_1k_max=("kwh_per_1k", "max"), g_co2_per_1k_mean=("g_co2_per_1k", "mean"),
        parameters=("parameters", "max"), quality=("quality", "mean"), quality_metric=("quality_metric", _joined),
        energy_method=("energy_method", _joined)).reset_index()
    specific = runs[runs["kind"] == "task-specific"].groupby(["task", "dataset"])["kwh_per_1k"].mean()
    table["x_task_specific"] = [row.kwh_per_1k_mean / specific.get((row.task, row.dataset), math.nan)
                                for row in table.itertuples()]
    table["family"] = table["model"].map(model_family)
    return table.sort_values(["task", "dataset", "family", "kwh_per_1k_mean"])[MULTIPURPOSE_COLUMNS].reset_index(drop=True)


def model_family(model: str) -> str:
    """The paper's families of multi-purpose models (Flan-T5, BLOOMz, ...); other models are base LMs."""
    import re

    return next((name for name, pattern in FAMILIES if re.search(pattern, model, re.IGNORECASE)), "base LM")


def star_ratings(energies: list[float]) -> list[int | None]:
    """1 to 5 stars in the manner of AI Energy Score: the range of energy split in five equal bands.

    The lowest band gets 5 stars. A value on the edge between two bands gets the better rating.
    With fewer than two values, or no spread, there is nothing to rate against: None.
    """
    lowest, highest = min(energies, default=math.nan), max(energies, default=math.nan)
    if len(energies) < 2 or not highest > lowest:
        return [None] * len(energies)
    ratings = []
    for energy in energies:
        position = (energy - lowest) / (highest - lowest) * STAR_BANDS
        band = max(1, math.ceil(position - 1e-9))  # the tolerance keeps exact edges in the lower band
        ratings.append(STAR_BANDS + 1 - band)
    return ratings


def rating_basis(models: Any, task: str) -> str:
    """How a task's stars were given, for the runs' tags and the report."""
    energies = models.loc[models["task"] == task, "kwh_per_1k_mean"]
    if models.loc[models["task"] == task, "stars"].isna().all():
        return (f"unrated: {len(energies)} compared model row(s) of {task} without a spread of energy; "
                "stars need at least two that differ")
    band = (energies.max() - energies.min()) / STAR_BANDS
    return (f"{task}: {len(energies)} compared model rows (model, dataset, settings), "
            f"{energies.min():.3g} to {energies.max():.3g} kWh per 1,000 inferences in {STAR_BANDS} bands "
            f"of {band:.3g}; 5 stars is the lowest")


def regional_table(tasks: Any, countries: list[str]) -> Any:
    """Each task's mean energy under other grids: gCO2eq per 1,000 inferences, by CodeCarbon's mix."""
    import pandas as pd

    from tracker.measurement.carbon import country_mixes

    mixes = country_mixes()
    rows = []
    for code in countries:
        mix = mixes[code]
        for task in tasks.itertuples():
            rows.append({"task": task.task, "country_iso_code": code, "country_name": mix["country_name"],
                         "carbon_intensity_g_per_kwh": mix["carbon_intensity"], "year": mix.get("year"),
                         "kwh_per_1k_mean": task.kwh_per_1k_mean,
                         "g_co2_per_1k": task.kwh_per_1k_mean * mix["carbon_intensity"]})
    return pd.DataFrame(rows)


def check_countries(countries: list[str]) -> list[str]:
    """ISO codes as CodeCarbon knows them; an unknown one is refused as `--country` refuses it."""
    from tracker.measurement.carbon import resolve_location

    return [resolve_location(code).country_iso_code for code in countries if code.strip()]


def _joined(values: Any) -> str:
    """The distinct values of a column within a group, so that a mixed group shows as mixed."""
    return "; ".join(sorted({str(v) for v in values if str(v)}))
