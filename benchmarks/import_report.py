"""Import and report at the scale of the paper's released records.

Writes N synthetic CodeCarbon records in the study's layout (``complete/`` one row per run,
``base/`` three phase rows per run: load, transfer to GPU, query), imports them into a fresh SQLite
store with ``tracker.import_codecarbon`` (several tasks, half of them multi-purpose by a kind
rule), attaches a quality and a parameter table with ``tracker.annotate``, and builds the report
over every run, rating tags included. Times are wall clock in this process, the machine's load
average printed beside them.

    python benchmarks/import_report.py [--records 5000]

The last line is `import_records_per_s=<x> report_s_per_1k_runs=<y>`.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COLUMNS = ["timestamp", "project_name", "run_id", "duration", "emissions", "emissions_rate", "cpu_power",
           "gpu_power", "ram_power", "cpu_energy", "gpu_energy", "ram_energy", "energy_consumed", "country_name",
           "country_iso_code", "region", "cloud_provider", "cloud_region", "os", "python_version",
           "codecarbon_version", "cpu_count", "cpu_model", "gpu_count", "gpu_model", "longitude", "latitude",
           "ram_total_size", "tracking_mode", "on_cloud", "pue"]
TASKS = {"text-classification": ["imdb", "sst2", "tomatoes"], "summarization": ["cnn", "samsum", "xsum"]}
PHASES = (("load model", 0.1), ("transfer model to GPU", 0.05), ("query model", 0.85))


def write_records(folder: Path, n: int) -> dict[tuple[str, str], Path]:
    """N records spread over the tasks' datasets; returns (task, dataset): complete file."""
    rng = random.Random(0)
    (folder / "complete").mkdir(parents=True)
    (folder / "base").mkdir()
    files, combos = {}, [(t, d) for t, ds in TASKS.items() for d in ds]
    per_combo = -(-n // len(combos))
    for task, dataset in combos:
        path = folder / "complete" / f"{task}_{dataset}.csv"
        files[(task, dataset)] = path
        with path.open("w", newline="") as complete, (folder / "base" / f"{task}_{dataset}.csv").open(
                "w", newline="") as base:
            rows = csv.DictWriter(complete, COLUMNS)
            phases = csv.DictWriter(base, ["task_name"] + COLUMNS)
            rows.writeheader()
            phases.writeheader()
            for i in range(per_combo):
                model = f"org/{'flan-t5' if i % 2 else 'model'}-{i % 20}"
                row = _row(rng, model, total=rng.uniform(0.001, 0.1))
                rows.writerow(row)
                for name, share in PHASES:
                    phases.writerow(_row(rng, model, total=float(row["energy_consumed"]) * share, like=row)
                                    | {"task_name": name})
    return files


def _row(rng: random.Random, model: str, total: float, like: dict | None = None) -> dict:
    base = like or {"timestamp": f"2023-10-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00",
                    "project_name": model, "run_id": str(uuid.UUID(int=rng.getrandbits(128)))}
    return {**{c: "" for c in COLUMNS}, **{k: base[k] for k in ("timestamp", "project_name", "run_id")},
            "duration": f"{total * 1e4:.6f}", "emissions": f"{total * 0.3:.8E}", "cpu_power": "42.5",
            "gpu_power": "500.0", "ram_power": "430.8", "cpu_energy": f"{total * 0.05:.10f}",
            "gpu_energy": f"{total * 0.55:.10f}", "ram_energy": f"{total * 0.4:.10f}",
            "energy_consumed": f"{total:.10f}", "country_name": "United States", "country_iso_code": "USA",
            "codecarbon_version": "2.3.1", "gpu_count": "8", "gpu_model": "8 x NVIDIA A100-SXM4-80GB"}


def write_tables(folder: Path) -> tuple[Path, Path]:
    quality, parameters = folder / "quality.csv", folder / "parameters.csv"
    with quality.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["model", "dataset", "metric", "value"])
        for i in range(20):
            for ds in [d for ds in TASKS.values() for d in ds]:
                for name in ("model", "flan-t5"):
                    writer.writerow([f"org/{name}-{i}", ds, "acc", 0.5 + i / 50])
    with parameters.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["model_name", "num_parameters"])
        for i in range(20):
            for name in ("model", "flan-t5"):
                writer.writerow([f"org/{name}-{i}", 10_000_000 * (i + 1)])
    return quality, parameters


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=5000)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tracker-import-report-"))
    os.chdir(workdir)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir}/mlflow.db"
    from tracker.annotate import AnnotateConfig, annotate
    from tracker.import_codecarbon import ImportConfig, import_records
    from tracker.import_codecarbon.kinds import parse_rules
    from tracker.recording.store import check_tracking_server
    from tracker.reporting import ReportConfig, build_report

    files = write_records(workdir / "records", args.records)
    quality, parameters = write_tables(workdir)
    check_tracking_server()  # the store's schema is made before the clock starts
    load = os.getloadavg()[0]
    started, imported = time.perf_counter(), 0
    for (task, dataset), path in files.items():
        summary = import_records(ImportConfig(
            files=(path,), phases=(workdir / "records" / "base",), task=task, dataset=dataset, n_samples=1000,
            experiment=f"bench-{task}", model_kind="task-specific",
            model_kind_map=parse_rules(("flan-t5=multi-purpose",))))
        imported += len(summary.imported)
    import_s = time.perf_counter() - started
    experiments = tuple(f"bench-{t}" for t in TASKS)
    started = time.perf_counter()
    annotated = annotate(AnnotateConfig(quality=quality, parameters=parameters, experiments=experiments))
    annotate_s = time.perf_counter() - started
    started = time.perf_counter()
    result = build_report(ReportConfig(output=workdir / "report", experiments=experiments))
    report_s = time.perf_counter() - started
    runs = int(result.tasks["runs"].sum()) + int(result.multipurpose["runs"].sum())
    print(f"records={imported} import_s={import_s:.1f} annotate_s={annotate_s:.1f} "
          f"(runs annotated {annotated.runs_with_quality}) report_s={report_s:.1f} over {runs} runs; "
          f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after; {os.cpu_count()} CPUs; store {workdir}")
    print(f"import_records_per_s={imported / import_s:.1f} report_s_per_1k_runs={report_s / runs * 1000:.2f}")


if __name__ == "__main__":
    main()
