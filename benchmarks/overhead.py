"""Overhead of tracking: the same inferences measured as a user's run and run bare, side by side.

The tracked arm is a whole measured run as `tracker run` makes one (the session, the meter's
windows, per-batch timing, the progress bar, the heartbeat thread at its default period, MLflow
logging), with the model kept loaded from run to run (as a search's shared-load child keeps it) so
that both arms time inference, not loading. Its query windows repeat until they cover
``--min-duration-s`` (30 s by default: long enough for a heartbeat to land in it). The bare arm
runs the same batches through the same model in a plain loop for as many inferences. The arms
alternate in order (bare first, then tracked first), and the ratio is the median of the pairs'
ratios of time per inference, so load that comes and goes weighs on both.

    python benchmarks/overhead.py [--task summarization] [--n-samples 200] [--batch-size 8] [--pairs 3]

The last line is `overhead_ratio=<tracked time per inference / bare time per inference>`.
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
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--min-duration-s", type=float, default=30.0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp(prefix='tracker-overhead-')}/mlflow.db"

    from tracker.runs.config import RunConfig
    from tracker.runs.session import measure
    from tracker.tasks import get_task
    from tracker.tasks.base import GenerationSettings

    config = RunConfig.parse(task=args.task, model="builtin-tiny", dataset="builtin", n_samples=args.n_samples,
                             batch_size=args.batch_size, country="FRA", min_duration_s=args.min_duration_s,
                             progress=True)
    kept: dict = {}
    measure(RunConfig.parse(**config.as_dict() | {"min_duration_s": 0, "progress": False}), kept=kept)  # loads it
    [loaded] = kept.values()
    task = get_task(args.task)
    from tracker.sources.data import load_dataset

    inputs = load_dataset(task, "builtin", args.n_samples, hub_reachable=False).inputs
    batches = [inputs[i:i + args.batch_size] for i in range(0, len(inputs), args.batch_size)]
    settings = GenerationSettings(max_new_tokens=config.max_new_tokens)

    def bare(inferences: int) -> float:
        """Seconds per inference of the plain loop over ``inferences`` inferences."""
        done, started = 0, time.perf_counter()
        while done < inferences:
            for batch in batches:
                task.predict(loaded, batch, settings, "cpu")
                done += len(batch)
        return (time.perf_counter() - started) / done

    def tracked() -> tuple[float, int]:
        """Seconds per inference of the measured run's query windows, and its inferences."""
        metrics = measure(config, kept=kept).metrics
        inferences = int(metrics["inferences_measured"] * metrics["windows"])
        return metrics["duration_s"] * metrics["windows"] / inferences, inferences

    load_before, ratios = os.getloadavg()[0], []
    for i in range(args.pairs):
        if i % 2 == 0:
            untracked = bare(int(args.min_duration_s / bare(len(inputs))) + len(inputs))
            ours, inferences = tracked()
        else:
            ours, inferences = tracked()
            untracked = bare(inferences)
        ratios.append(ours / untracked)
        print(f"pair {i + 1} ({'bare' if i % 2 == 0 else 'tracked'} first): tracked {ours * 1000:.2f} ms per "
              f"inference over {inferences}, bare {untracked * 1000:.2f} ms, ratio {ours / untracked:.4f}", flush=True)
    print(f"task={args.task} n_samples={args.n_samples} batch_size={args.batch_size} pairs={args.pairs} "
          f"min_duration_s={args.min_duration_s:g}; load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after; {os.cpu_count()} CPUs")
    print(f"overhead_ratio={statistics.median(ratios):.4f}")


if __name__ == "__main__":
    main()
