"""Attributed against machine energy: the same run alone and beside a CPU burner, interleaved.

Each pair runs `tracker run` once alone and once while another process spins one core (a sibling
of the run, not its child), alternating which comes first, so that drift in the machine's load
falls on both conditions alike; pairs at one thread (the run leaves the burner a core) and at
torch's default threads (a pool as wide as the machine, which the burner oversubscribes) are
interleaved too. The machine's load average is recorded before every run. Then the pool case on
faked large machines: the real probe reads a fake /proc of 16 and 64 CPUs, with a pool of as many
threads beside one busy core (must be flagged), and beside nothing or with one thread (must not).

    python benchmarks/attribution.py [--pairs 3] [--task sentence-similarity] [--n-samples 200]
                                     [--batch-size 16] [--extra "--min-duration-s 10"]

The last line is
`attribution_ratio=<median attributed kWh/1k beside the burner / alone, at one thread>
pool_ratio=<the same at the default threads> flagged=<pool runs beside the burner flagged
contended>/<those runs> false_alarms=<runs alone flagged>/<runs alone>
oversubscription_flagged=<faked pool cases flagged>/<faked pool cases>`.
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

    results: dict[tuple[str, str], list[dict]] = {}
    for pair in range(args.pairs):
        order = ("alone", "burner") if pair % 2 == 0 else ("burner", "alone")
        for threads in ("1", "default"):
            for condition in order:
                load = os.getloadavg()[0]
                burner = (subprocess.Popen([sys.executable, "-c", "while True: pass"])
                          if condition == "burner" else None)
                flags = [] if threads == "default" else ["--threads", threads]
                try:
                    done = subprocess.run([*command, *flags, "--tag", f"bench.condition={condition}"], env=env,
                                          cwd=workdir, capture_output=True, text=True, timeout=1800)
                finally:
                    if burner is not None:
                        burner.kill()
                        burner.wait()
                if done.returncode != 0:
                    sys.exit(f"tracker run failed:\n{done.stderr[-3000:]}")
                run_id = done.stdout.split()[1]
                figures = _figures(env, run_id) | {"load_1min": load}
                results.setdefault((threads, condition), []).append(figures)
                print(f"pair {pair + 1} threads {threads:<7} {condition:<6} load(1 min) {load:4.2f}  attributed "
                      f"{figures['attributed']:.3e} machine {figures['machine']:.3e} kWh/1k  share "
                      f"{figures['share']:.2f}  background {figures['background']:.0%}  own CPU "
                      f"{figures['own_cpu']:.1f} s in {figures['duration']:.1f} s  contended={figures['contended']}",
                      flush=True)

    def ratio(threads: str, key: str = "attributed") -> float:
        return (statistics.median(r[key] for r in results[(threads, "burner")])
                / statistics.median(r[key] for r in results[(threads, "alone")]))

    alone = results[("1", "alone")] + results[("default", "alone")]
    pool = results[("default", "burner")]
    flagged = sum(r["contended"] == "true" for r in pool)
    false_alarms = sum(r["contended"] == "true" for r in alone)
    one_thread_flagged = sum(r["contended"] == "true" for r in results[("1", "burner")])
    print(f"machine_ratio: one thread {ratio('1', 'machine'):.2f}, default threads {ratio('default', 'machine'):.2f}; "
          f"one thread beside the burner (a core left to it) flagged {one_thread_flagged}/{len(results[('1', 'burner')])}")
    faked_flagged, faked_cases, faked_false = faked_large_machines()
    print(f"attribution_ratio={ratio('1'):.2f} pool_ratio={ratio('default'):.2f} flagged={flagged}/{len(pool)} "
          f"false_alarms={false_alarms}/{len(alone)} oversubscription_flagged={faked_flagged}/{faked_cases}"
          + (f" (faked false alarms {faked_false})" if faked_false else ""))


def faked_large_machines() -> tuple[int, int, int]:
    """The real probe over a fake /proc: on 16 and 64 CPUs, a pool of as many threads beside one busy
    core, and, as controls, the pool alone and one thread beside the busy core. Returns (pool cases
    flagged, pool cases, controls flagged)."""
    import tempfile as tmp
    import time

    from tracker.measurement import readings
    from tracker.measurement.attribution import Window, contention
    from tracker.measurement.readings import SystemProbe

    flagged = cases = false = 0
    real_machine = readings._machine_cpu_s
    for cpus in (16, 64):
        for pool, busy, disturbed in ((cpus, 1, True), (cpus, 0, False), (1, 1, False)):
            with tmp.TemporaryDirectory() as root:
                proc = Path(root)
                for tid in range(pool):
                    task = proc / str(os.getpid()) / "task" / str(9_000_000 + tid)
                    task.mkdir(parents=True)
                    (task / "stat").write_text(f"{tid} (python) R 1 2 3\n")
                (proc / "loadavg").write_text(f"1.0 1.0 1.0 {pool + busy + 1}/500 1\n")  # + the reader itself
                # The faked machine's CPU time: this process's own, plus the busy cores all along.
                began = time.perf_counter()
                readings._machine_cpu_s = lambda busy=busy, began=began, cpus=cpus: (
                    time.process_time() + busy * (time.perf_counter() - began), cpus * (time.perf_counter() - began))
                try:
                    probe = SystemProbe(proc_root=proc, allowed_cpus=cpus, logical_cpus=cpus)
                    start = probe.snapshot()
                    until = time.perf_counter() + 0.5  # a window of half a second, sampled every 10 ms
                    while time.perf_counter() < until:
                        probe.sample_runnable()
                        time.sleep(0.01)
                    reason = contention(Window.between(start, probe.snapshot()))
                finally:
                    readings._machine_cpu_s = real_machine
                flagged += disturbed and reason is not None
                false += not disturbed and reason is not None
                cases += disturbed
                print(f"faked {cpus} CPUs, pool {pool}, busy cores beside {busy}: "
                      f"{'flagged: ' + reason if reason else 'not flagged'}")
    return flagged, cases, false


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
