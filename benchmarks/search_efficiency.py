"""How many measurements a search needs: Optuna's TPE against random search and the exhaustive grid.

Replays a recorded table of measurements (batch size x precision -> carbon per output, quality), so
no inference runs: each sampler proposes settings, reads their figures from the table, and we count
the distinct settings it measures before one is feasible (quality within 1% of the fp32, batch 1
reference) and within 5% of the best feasible carbon per output. Median over seeds.

    python benchmarks/search_efficiency.py                 # replay benchmarks/data/<table>.csv
    python benchmarks/search_efficiency.py --record        # measure the table first (minutes)

The table is recorded with `tracker study` on the built-in summarization model: every batch size
and precision of the search space as one run each, on the same samples.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TABLE = HERE / "data" / "summarization-builtin-grid.csv"
BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64]
PRECISIONS = ["fp32", "fp16", "bf16", "int8"]


def record(n_samples: int) -> None:
    """Measure every setting once (a study of one model with per-run settings), write the table."""
    import yaml

    work = Path(tempfile.mkdtemp(prefix="search-efficiency-"))
    definition = {"task": "summarization", "experiment": "search-efficiency", "datasets": ["builtin"],
                  "params": {"n_samples": n_samples, "country": "USA"},
                  "models": [{"model": "builtin-tiny", "batch_size": b, "precision": p}
                             for p in PRECISIONS for b in BATCH_SIZES]}
    (work / "grid.yaml").write_text(yaml.safe_dump(definition))
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work}/mlflow.db", HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, "-m", "tracker", "study", str(work / "grid.yaml")], env=env, check=False)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("search-efficiency")
    lines = ["batch_size,precision,status,emissions_g_per_output,energy_kwh_per_1k,quality,duration_s"]
    for run in client.search_runs([experiment.experiment_id]):
        m, p = run.data.metrics, run.data.params
        lines.append(",".join(str(v) for v in (p["batch_size"], p["precision"], run.info.status,
                                               m.get("emissions_g_per_output", math.nan),
                                               m.get("energy_kwh_per_1k", math.nan),
                                               m.get("quality", math.nan), m.get("duration_s", math.nan))))
    TABLE.parent.mkdir(exist_ok=True)
    TABLE.write_text("\n".join(lines) + "\n")
    print(f"recorded {len(lines) - 1} settings in {TABLE}")


def load_table() -> dict[tuple[int, str], tuple[float, float] | None]:
    """(batch size, precision) -> (carbon per output, quality), or None for a setting that failed."""
    import pandas as pd

    frame = pd.read_csv(TABLE)
    return {(int(r.batch_size), r.precision): ((r.emissions_g_per_output, r.quality)
                                                if r.status == "FINISHED" else None)
            for r in frame.itertuples()}


def measurements_needed(sampler_name: str, seed: int, table: dict, budget: int) -> int:
    """Distinct settings measured until a feasible one within 5% of the best feasible is found."""
    import optuna

    from tracker.tuning import feasibility

    reference = table[(1, "fp32")][1]
    feasible = {k: v[0] for k, v in table.items() if v and feasibility(v[1], reference, 0.01, True) <= 0}
    target = min(feasible.values()) * 1.05
    sampler = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=5),
               "random": lambda: optuna.samplers.RandomSampler(seed=seed),
               "grid": lambda: optuna.samplers.GridSampler(
                   {"batch_size": BATCH_SIZES, "precision": PRECISIONS}, seed=seed)}[sampler_name]()
    study = optuna.create_study(sampler=sampler)
    measured: set[tuple[int, str]] = set()
    for _ in range(budget):
        trial = study.ask()
        key = (trial.suggest_categorical("batch_size", BATCH_SIZES),
               trial.suggest_categorical("precision", PRECISIONS))
        measured.add(key)  # a repeat costs nothing: the search reuses the first measurement
        figures = table.get(key)
        if figures is None:
            trial.set_constraint("quality", 1e12)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        carbon, quality = figures
        trial.set_constraint("quality", feasibility(quality, reference, 0.01, True))
        study.tell(trial, carbon)
        if key in feasible and carbon <= target:
            return len(measured)
    return budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="measure the table first")
    parser.add_argument("--n-samples", type=int, default=200, help="inferences per recorded setting")
    parser.add_argument("--seeds", type=int, default=25)
    args = parser.parse_args()
    if args.record or not TABLE.exists():
        record(args.n_samples)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    table = load_table()
    budget = len(BATCH_SIZES) * len(PRECISIONS) * 4
    print(f"table: {TABLE.name}, {len(table)} settings, {sum(v is None for v in table.values())} failed")
    for name in ("tpe", "random", "grid"):
        counts = [measurements_needed(name, seed, table, budget) for seed in range(args.seeds)]
        print(f"measurements_to_within_5pct_{name}={statistics.median(counts):g} "
              f"(median of {args.seeds} seeds; min {min(counts)}, max {max(counts)})")


if __name__ == "__main__":
    main()
