"""Attributed against machine energy: the same run alone and beside a CPU burner, interleaved.

Each pair runs `tracker run` once alone and once while another process spins one core (a sibling
of the run, not its child), alternating which comes first, so that drift in the machine's load
falls on both conditions alike. The machine's load average is recorded before every run.

    python benchmarks/attribution.py [--pairs 3] [--task sentence-similarity] [--n-samples 200]
                                     [--batch-size 16] [--extra "--min-duration-s 10"]

The last line is
`attribution_ratio=<median attributed kWh/1k beside the burner / alone> machine_ratio=<the same for
machine_energy_kwh_per_1k> cv=<coefficient of variation of the attributed figure over the runs
alone> flagged=<burner runs flagged contended>/<burner runs> false_alarms=<alone runs flagged>/<alone runs>`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--task", default="sentence-similarity")
    parser.add_argument("--n-samples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--extra", default="", help="more `tracker run` flags, as one string")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="tracker-attribution-")
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{workdir}/mlflow.db", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "tracker", "run", "--task", args.task, "--n-samples", str(args.n_samples),
               "--batch-size", str(args.batch_size), "--country", "FRA", "--no-progress",
               *shlex.split(args.extra)]

    results: dict[str, list[dict]] = {"alone": [], "burner": []}
    for pair in range(args.pairs):
        order = ("alone", "burner") if pair % 2 == 0 else ("burner", "alone")
        for condition in order:
            load = os.getloadavg()[0]
            burner = (subprocess.Popen([sys.executable, "-c", "while True: pass"])
                      if condition == "burner" else None)
            try:
                done = subprocess.run([*command, "--tag", f"bench.condition={condition}"], env=env, cwd=workdir,
                                      capture_output=True, text=True, timeout=1800)
            finally:
                if burner is not None:
                    burner.kill()
                    burner.wait()
            if done.returncode != 0:
                sys.exit(f"tracker run failed:\n{done.stderr[-3000:]}")
            run_id = done.stdout.split()[1]
            figures = _figures(env, run_id) | {"load_1min": load}
            results[condition].append(figures)
            print(f"pair {pair + 1} {condition:<6} load(1 min) {load:4.2f}  attributed {figures['attributed']:.3e} "
                  f"machine {figures['machine']:.3e} kWh/1k  share {figures['share']:.2f}  background "
                  f"{figures['background']:.0%}  own CPU {figures['own_cpu']:.1f} s in {figures['duration']:.1f} s  "
                  f"contended={figures['contended']}", flush=True)

    alone, burner = results["alone"], results["burner"]
    attributed_alone = [r["attributed"] for r in alone]
    ratio = statistics.median(r["attributed"] for r in burner) / statistics.median(attributed_alone)
    machine_ratio = statistics.median(r["machine"] for r in burner) / statistics.median(r["machine"] for r in alone)
    cv = statistics.stdev(attributed_alone) / statistics.fmean(attributed_alone) if len(alone) > 1 else float("nan")
    flagged = sum(r["contended"] == "true" for r in burner)
    false_alarms = sum(r["contended"] == "true" for r in alone)
    print(f"attribution_ratio={ratio:.2f} machine_ratio={machine_ratio:.2f} cv={cv:.3f} "
          f"flagged={flagged}/{len(burner)} false_alarms={false_alarms}/{len(alone)}")


def _figures(env: dict[str, str], run_id: str) -> dict:
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    from mlflow import MlflowClient

    run = MlflowClient().get_run(run_id)
    m, tags = run.data.metrics, run.data.tags
    return {"attributed": m["energy_kwh_per_1k"], "machine": m["machine_energy_kwh_per_1k"],
            "share": m["cpu_time_share"], "background": m["background_cpu_share"],
            "own_cpu": m["own_cpu_seconds"], "duration": m["duration_s"],
            "contended": tags.get("tracker.measurement.contended")}


if __name__ == "__main__":
    main()
