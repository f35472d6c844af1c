"""Overhead of tracking: the same inference loop with and without the meter and MLflow logging.

Steady state: the query loop alone, timed with and without a CodeCarbon phase around it and the
per-batch progress callback; median over alternating repeats. The fixed start-up cost (meter set-up,
MLflow run creation, logging at the end) is measured and reported separately.

    python benchmarks/overhead.py [--task summarization] [--n-samples 200] [--batch-size 8] [--repeats 7]

The last line is `overhead_ratio=<tracked time / untracked time>`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="summarization")
    parser.add_argument("--n-samples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    workdir = tempfile.mkdtemp(prefix="tracker-overhead-")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir}/mlflow.db"

    import transformers

    transformers.utils.logging.set_verbosity_error()
    from tracker.measurement.carbon import resolve_location
    from tracker.measurement.meter import EnergyMeter
    from tracker.recording.lifecycle import recorded_run
    from tracker.sources.data import load_dataset
    from tracker.sources.models import builtin_model
    from tracker.tasks import get_task
    from tracker.tasks.base import GenerationSettings

    task = get_task(args.task)
    loaded = task.load_model(builtin_model(task).location, local_only=True)
    data = load_dataset(task, "builtin", args.n_samples, hub_reachable=False)
    batches = [data.inputs[i:i + args.batch_size] for i in range(0, len(data.inputs), args.batch_size)]
    settings = GenerationSettings(max_new_tokens=15)
    counted = [0]

    def loop(progress=None) -> None:
        for batch in batches:
            task.predict(loaded, batch, settings, "cpu")
            if progress:
                progress(len(batch))

    def progress(n: int) -> None:
        counted[0] += n

    loop()  # warm-up, as in a run

    started = time.perf_counter()
    meter = EnergyMeter(location=resolve_location("FRA"))
    with meter.phase("warm meter"):  # CodeCarbon detects hardware on first use
        pass
    setup_s = time.perf_counter() - started

    untracked, tracked = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        loop()
        untracked.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with meter.phase("query model"):
            loop(progress)
        tracked.append(time.perf_counter() - t0)

    started = time.perf_counter()
    with recorded_run(experiment="overhead-benchmark", run_name="overhead", tags={}) as recorder:
        recorder.log(params={"n_samples": args.n_samples},
                     metrics={"energy_kwh": meter.readings[-1].energy.total_kwh})
        recorder.log_text(meter.records_csv(), "codecarbon/emissions.csv")
    logging_s = time.perf_counter() - started
    meter.close()

    u, t = statistics.median(untracked), statistics.median(tracked)
    print(f"task={args.task} n_samples={args.n_samples} batch_size={args.batch_size} repeats={args.repeats}")
    print(f"untracked_loop_s median={u:.4f} all={[round(x, 4) for x in untracked]}")
    print(f"tracked_loop_s   median={t:.4f} all={[round(x, 4) for x in tracked]}")
    print(f"fixed_startup_s meter_setup={setup_s:.3f} mlflow_run_and_logging={logging_s:.3f}")
    print(f"overhead_ratio={t / u:.4f}")


if __name__ == "__main__":
    main()
