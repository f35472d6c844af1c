"""Every fault and bad input of the faults issue, done for real, each against a fresh store.

Each fault is what a user meets: a model folder with its own code and a "y" piped in, eight runs
at once on a new SQLite file, a tracking server killed mid-run, SIGKILL, one and two Ctrl-C,
Ctrl-C under `mlflow run`, SIGTERM to a search, a baseline that fails, impossible numbers, empty
cells, broken model folders, a read-only store, a report written onto a file, a study file of the
wrong shape, Ctrl-C before a run; and for `serve-bench`, a server that dies mid-window, Ctrl-C
mid-window, an endpoint that is no OpenAI API, a launch command that exits. A fault *survived*
when the command did what the README promises: the run FINISHED, FAILED or KILLED with its energy,
or one line and no run.

    python benchmarks/faults.py [--only NAME ...]

The last line is `faults_survived=<n>/<tried> not_tried=<faults this machine cannot produce, e.g.
chattr refused> runs_left_running=<runs RUNNING in any store at the end> measurements_lost=<interrupted
runs without their energy> tracebacks=<tracebacks printed>`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN = ["--dataset", "builtin", "--no-progress", "--country", "FRA"]
LONG_RUN = ["run", "--task", "summarization", "--model", "builtin-tiny", "--n-samples", "1000", *RUN]
SERVER_RUN = ["run", "--task", "summarization", "--model", "builtin-tiny", "--n-samples", "600", *RUN]


class Bench:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="tracker-faults-"))
        self.stores: list[str] = []
        self.tracebacks = 0
        self.lost = 0

    def env(self, fault: str, **extra: str) -> dict[str, str]:
        folder = self.root / fault
        folder.mkdir(exist_ok=True)
        uri = extra.pop("MLFLOW_TRACKING_URI", f"sqlite:///{folder}/mlflow.db")
        self.stores.append(uri)
        env = dict(os.environ, MLFLOW_TRACKING_URI=uri, HF_HUB_OFFLINE="1", TRACKER_HEARTBEAT_S="0.5",
                   TRACKER_SPOOL_DIR=str(folder / "spool"), TRACKER_CACHE_DIR=str(self.root / "cache"))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return env | extra

    def tracker(self, env: dict[str, str], *args: str, stdin: str = "",
                timeout: float = 600) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "tracker", *args], input=stdin, capture_output=True, text=True,
                              env=env, cwd=self.root, timeout=timeout)
        self.tracebacks += done.stderr.count("Traceback")
        return done

    def start(self, env: dict[str, str], command: list[str]) -> subprocess.Popen:
        return subprocess.Popen(command, env=env, cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)

    def finish(self, process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
        try:
            _, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            _, err = process.communicate()
            raise RuntimeError(f"still running after {timeout:.0f} s; its stderr ended: {err[-1500:]}") from None
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.tracebacks += err.count("Traceback")
        return process.returncode, err

    def client(self, env: dict[str, str]):
        from mlflow import MlflowClient

        return MlflowClient(env["MLFLOW_TRACKING_URI"])

    def runs(self, env: dict[str, str]) -> list:
        client = self.client(env)
        experiments = client.search_experiments()
        return client.search_runs([e.experiment_id for e in experiments]) if experiments else []

    def measuring(self, env: dict[str, str], process: subprocess.Popen, deadline_s: float = 300):
        """The run once its heartbeat logged inferences from inside the query phase."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline and process.poll() is None:
            try:
                runs = [r for r in self.runs(env) if r.data.metrics.get("partial_inferences", 0) > 0]
            except Exception:  # the store is being created by the process
                runs = []
            if runs:
                return runs[0]
            time.sleep(0.3)
        raise RuntimeError("the run never reached its query phase")

    def kept_energy(self, run) -> bool:
        """An interrupted run that kept what it measured; counted as lost otherwise."""
        m = run.data.metrics
        kept = m.get("energy_kwh", 0) > 0 or m.get("partial_energy_kwh", 0) > 0
        self.lost += not kept
        return kept

    def left_running(self) -> int:
        from mlflow import MlflowClient

        from tracker.recording.store import unreachable

        count = 0
        for uri in dict.fromkeys(self.stores):
            if uri.startswith("http") and unreachable(uri):
                continue  # a server that is gone again: its runs were counted while it ran
            try:
                client = MlflowClient(uri)
                experiments = client.search_experiments()
                if experiments:
                    count += len(client.search_runs([e.experiment_id for e in experiments],
                                                    filter_string="attributes.status = 'RUNNING'"))
            except Exception:  # a server that is gone again: its runs were counted while it ran
                pass
        return count


def one_line(done: subprocess.CompletedProcess | tuple[int, str], code: int, words: str) -> bool:
    returncode, err = (done.returncode, done.stderr) if hasattr(done, "stderr") else done
    lines = [line for line in err.splitlines() if line.startswith("tracker: error:")]
    return returncode == code and len(lines) == 1 and words in lines[0] and "Traceback" not in err


def tiny_model(bench: Bench, env: dict[str, str], name: str) -> Path:
    """A copy of the built-in tiny classifier, to break (built by a run in a store of its own)."""
    bench.tracker(bench.env("build_tiny_model"), "run", "--task", "text-classification", "--model", "builtin-tiny",
                  "--n-samples", "1", *RUN)
    source = next((bench.root / "cache" / "models").glob("text-classification-*"))
    folder = bench.root / f"{name}-model"
    shutil.copytree(source, folder)
    return folder


# ---- the faults ---------------------------------------------------------------------------------

def custom_code(bench: Bench) -> bool:
    env = bench.env("custom_code")
    folder = tiny_model(bench, env, "model-with-code")
    marker = bench.root / "marker.txt"
    (folder / "modeling_evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    done = bench.tracker(env, "run", "--task", "text-classification", "--model", str(folder), "--n-samples", "4",
                         *RUN, stdin="y\n" * 20)
    return one_line(done, 2, "--trust-remote-code") and not marker.exists()


def fresh_store_eight(bench: Bench) -> bool:
    env = bench.env("fresh_store_eight")
    processes = [bench.start(env, [sys.executable, "-m", "tracker", "run", "--task", "text-classification",
                                   "--model", "builtin-tiny", "--n-samples", "4", *RUN]) for _ in range(8)]
    codes = [bench.finish(p)[0] for p in processes]
    return codes == [0] * 8 and len(bench.runs(env)) == 8


def server_lost(bench: Bench) -> bool:
    folder = bench.root / "server_lost"
    folder.mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"

    def serve() -> subprocess.Popen:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                                   str(port), "--backend-store-uri", f"sqlite:///{folder}/server.db",
                                   "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"],
                                  env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),  # no job consumers
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(uri + "/health", timeout=1).close()
                return server
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not start")

    server = serve()
    env = bench.env("server_lost", MLFLOW_TRACKING_URI=uri)
    try:
        process = bench.start(env, [sys.executable, "-m", "tracker", *SERVER_RUN])
        run = bench.measuring(env, process)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        lost = bench.finish(process)
        server = serve()
        synced = bench.tracker(env, "sync")
        uploaded = bench.client(env).get_run(run.info.run_id)
        return (lost[0] == 1 and "tracker sync" in lost[1].strip().splitlines()[-1] and synced.returncode == 0
                and uploaded.info.status == "FINISHED" and bench.kept_energy(uploaded))
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def interrupted(signals: tuple[signal.Signals, ...], status: str, *,
                default_heartbeat: bool = False) -> Callable[[Bench], bool]:
    """A run hit mid-measurement. With ``default_heartbeat``, at the heartbeat period users have (30 s,
    not the 0.5 s that makes the other faults quick): a run long enough to be measuring after it."""
    name = "signal_" + "_".join(s.name for s in signals) + ("_default_heartbeat" if default_heartbeat else "")

    def fault(bench: Bench) -> bool:
        env = bench.env(name)
        command = LONG_RUN
        if default_heartbeat:
            env.pop("TRACKER_HEARTBEAT_S")
            command = [*LONG_RUN, "--repeats", "100"]  # far longer than one heartbeat
        process = bench.start(env, [sys.executable, "-m", "tracker", *command])
        run = bench.measuring(env, process)
        for sig in signals:
            os.kill(process.pid, sig)
        code, _ = bench.finish(process)
        if signals == (signal.SIGKILL,):  # nothing ran to close it: the next command does
            bench.tracker(env, "run", "--task", "summarization", "--model", "builtin-tiny", "--n-samples", "2", *RUN)
        after = bench.client(env).get_run(run.info.run_id)
        expected_code = -signal.SIGKILL if signals == (signal.SIGKILL,) else 128 + signals[0]
        return code == expected_code and after.info.status == status and bench.kept_energy(after)
    fault.__name__ = name
    return fault


def mlflow_run_ctrl_c(bench: Bench) -> bool:
    env = bench.env("mlflow_run_ctrl_c")
    process = bench.start(env, [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local",
                                "-P", "task=summarization", "-P", "n_samples=1000", "-P", "country=FRA"])
    run = bench.measuring(env, process)
    os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
    bench.finish(process)
    after = bench.client(env).get_run(run.info.run_id)
    return after.info.status == "KILLED" and bench.kept_energy(after)


def _tune_args(storage: str, model: str = "builtin-tiny") -> list[str]:
    return ["tune", "--task", "summarization", "--model", model, "--n-samples", "200", "--warmup", "0",
            "--min-window-s", "0", "--n-trials", "2", "--max-batch-size", "1", "--precisions", "fp32",
            "--storage", storage, "--dataset", "builtin", "--country", "FRA"]


def tune_sigterm(bench: Bench) -> bool:
    env = bench.env("tune_sigterm")
    process = bench.start(env, [sys.executable, "-m", "tracker",
                                *_tune_args(f"sqlite:///{bench.root}/tune_sigterm/optuna.db")])
    bench.measuring(env, process)
    process.send_signal(signal.SIGTERM)
    code, _ = bench.finish(process)
    runs = bench.runs(env)
    parent = [r for r in runs if r.data.tags.get("tracker.tune.role") == "parent"]
    measured = [r for r in runs if r.data.tags.get("tracker.tune.role") in ("baseline", "trial")]
    return (code == 128 + signal.SIGTERM and [r.info.status for r in parent] == ["KILLED"]
            and all(r.info.status == "KILLED" and bench.kept_energy(r) for r in measured
                    if r.data.tags.get("tracker.interrupted_by")))


def failed_baseline(bench: Bench) -> bool:
    env = bench.env("failed_baseline")
    folder = tiny_model(bench, env, "model-broken-later")
    config = folder / "config.json"
    saved = config.read_text()
    storage = f"sqlite:///{bench.root}/failed_baseline/optuna.db"
    args = _tune_args(storage, str(folder))
    args[args.index("summarization")] = "text-classification"
    # Weights that no longer fit their config: tune's own checks read the weights alone, so the
    # baseline's child is the first to fail, when it loads the model.
    fields = json.loads(saved)
    config.write_text(json.dumps(fields | {"vocab_size": 2 * fields["vocab_size"]}))
    first = bench.tracker(env, *args)
    config.write_text(saved)  # repaired: the same command measures the baseline again
    second = bench.tracker(env, *args)
    if not (one_line(first, 1, "baseline run (batch 1, fp32)") and second.returncode == 0):
        print(f"  first: exit {first.returncode}: {first.stderr[-800:]}\n  second: exit {second.returncode}: "
              f"{second.stderr[-800:]}")
        return False
    return True


def bad_input(name: str, args: list[str], code: int, words: str, prepare: Callable[[Path], None] | None = None):
    def fault(bench: Bench) -> bool:
        env = bench.env(name)
        if prepare:
            prepare(bench.root / name)
        done = bench.tracker(env, *[a.replace("{dir}", str(bench.root / name)) for a in args])
        return one_line(done, code, words) and not bench.runs(env)
    fault.__name__ = name
    return fault


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text(text)


def broken_model(fault: str) -> Callable[[Bench], bool]:
    words = {"config_only": "holds no weights", "corrupt_safetensors": "model.safetensors is unreadable",
             "unsafe_pickle": "torch's safe loader refuses"}[fault]

    def run(bench: Bench) -> bool:
        import torch
        from safetensors.torch import load_file

        env = bench.env(fault)
        folder = tiny_model(bench, env, fault)
        weights = folder / "model.safetensors"
        if fault == "config_only":
            weights.unlink()
        elif fault == "corrupt_safetensors":
            weights.write_bytes(weights.read_bytes()[:100])
        else:
            state = load_file(str(weights)) | {"extra": argparse.Namespace(code="any")}
            weights.unlink()
            torch.save(state, folder / "pytorch_model.bin")
        done = bench.tracker(env, "run", "--task", "text-classification", "--model", str(folder),
                             "--n-samples", "2", *RUN)
        return one_line(done, 2, words) and "weights_only" not in done.stderr and not bench.runs(env)
    run.__name__ = fault
    return run


def nan_inputs(bench: Bench) -> bool:
    env = bench.env("nan_inputs")
    path = bench.root / "nan_inputs" / "reviews.csv"
    path.write_text("text,label\ngreat film,1\n,0\nNaN,1\nawful film,0\nfine film,1\n")
    done = bench.tracker(env, "run", "--task", "text-classification", "--model", "builtin-tiny", "--dataset",
                         str(path), "--target-column", "label", "--n-samples", "3", "--no-progress")
    [run] = bench.runs(env) or [None]
    return (done.returncode == 0 and run is not None and run.data.tags.get("tracker.dataset.skipped_rows") == "2"
            and run.data.metrics.get("inferences_measured") == 3)


def read_only_store(bench: Bench) -> bool | None:
    env = bench.env("read_only_store")
    bench.tracker(env, "run", "--task", "text-classification", "--model", "builtin-tiny", "--n-samples", "1", *RUN)
    database = bench.root / "read_only_store" / "mlflow.db"
    if subprocess.run(["chattr", "+i", str(database)], capture_output=True).returncode != 0:
        print("  (chattr not allowed here: the read-only store is not tried)")
        return NOT_TRIED
    try:
        done = bench.tracker(env, "run", "--task", "text-classification", "--model", "builtin-tiny",
                             "--n-samples", "1", *RUN)
    finally:
        subprocess.run(["chattr", "-i", str(database)], capture_output=True)
    return one_line(done, 2, "cannot be written")


def ctrl_c_before_run(bench: Bench) -> bool:
    env = bench.env("ctrl_c_before_run")
    fifo = bench.root / "ctrl_c_before_run" / "reviews.jsonl"
    os.mkfifo(fifo)
    process = bench.start(env, [sys.executable, "-m", "tracker", "run", "--task", "text-classification", "--model",
                                "builtin-tiny", "--dataset", str(fifo), "--target-column", "label",
                                "--n-samples", "2", "--no-progress"])
    with open(fifo, "w"):  # returns once the command opened its dataset, before any run
        os.kill(process.pid, signal.SIGINT)
        code, err = bench.finish(process, timeout=120)
    return code == 128 + signal.SIGINT and "nothing was recorded" in err and not bench.runs(env)


FAKE_SERVER = f"{sys.executable} {REPO / 'tests' / 'fake_openai.py'} {{port}}"
SERVE = ["serve-bench", "--concurrency", "2", "--windows", "3", "--output-tokens", "8", "--n-prompts", "12",
         "--country", "FRA"]


def serve_server_dies(bench: Bench) -> bool:
    """The server measured by serve-bench exits mid-window: a FAILED level run with its energy so far."""
    env = bench.env("serve_server_dies")
    done = bench.tracker(env, *SERVE, "--min-window-s", "5", "--launch", f"{FAKE_SERVER} --die-after 400")
    levels = [r for r in bench.runs(env) if "tracker.serve.level" in r.data.tags]
    return (one_line(done, 1, "ended during the measurement") and len(levels) == 1
            and levels[0].info.status == "FAILED" and bench.kept_energy(levels[0]))


def serve_ctrl_c(bench: Bench) -> bool:
    """Ctrl-C mid-window: the level run KILLED with its energy, and the server it launched stopped."""
    env = bench.env("serve_ctrl_c")
    mark = bench.root / "serve_ctrl_c" / "server.pid"
    process = bench.start(env, [sys.executable, "-m", "tracker", *SERVE, "--min-window-s", "20", "--launch",
                                f"{FAKE_SERVER} --mark-after 300 {mark}"])
    deadline = time.monotonic() + 300
    while not mark.exists():  # written by the server at its 300th request: the first window is open
        if process.poll() is not None or time.monotonic() > deadline:
            bench.finish(process)
            return False
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGINT)
    code, _ = bench.finish(process, timeout=120)
    levels = [r for r in bench.runs(env) if "tracker.serve.level" in r.data.tags]
    try:
        os.kill(int(mark.read_text()), 0)
        server_stopped = False
    except ProcessLookupError:
        server_stopped = True
    return (code == 128 + signal.SIGINT and len(levels) == 1 and levels[0].info.status == "KILLED"
            and bench.kept_energy(levels[0]) and server_stopped)


def serve_not_openai(bench: Bench) -> bool:
    """An endpoint that answers HTTP but is no OpenAI API: one line, no run."""
    env = bench.env("serve_not_openai")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(REPO / "tests" / "fake_openai.py"), str(port), "--not-openai"],
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
        done = bench.tracker(env, *SERVE, "--endpoint", f"http://127.0.0.1:{port}")
        return one_line(done, 2, "does not speak the OpenAI API") and not bench.runs(env)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


NOT_TRIED = None  # what a fault returns where this machine cannot produce it: neither survived nor failed

FAULTS: list[Callable[[Bench], bool | None]] = [
    custom_code, fresh_store_eight, server_lost,
    interrupted((signal.SIGKILL,), "FAILED"), interrupted((signal.SIGINT,), "KILLED"),
    interrupted((signal.SIGINT, signal.SIGINT), "KILLED"),
    interrupted((signal.SIGKILL,), "FAILED", default_heartbeat=True),
    interrupted((signal.SIGINT,), "KILLED", default_heartbeat=True), mlflow_run_ctrl_c, tune_sigterm, failed_baseline,
    bad_input("intensity_inf", ["run", "--task", "text-classification", "--model", "builtin-tiny", "--n-samples",
                                "2", "--carbon-intensity", "inf", *RUN], 2, "--carbon-intensity"),
    bad_input("import_negative", ["import-codecarbon", "{dir}/emissions.csv", "--task", "text-classification",
                                  "--dataset", "imdb", "--n-samples", "1000"], 2, "an impossible value in cpu_energy",
              _write("emissions.csv", "timestamp,project_name,run_id,duration,emissions,energy_consumed,cpu_energy,"
                     "gpu_energy,ram_energy\n2024-01-01T00:00:00,m,r1,10,0.001,0.002,-0.001,0,0.001\n")),
    nan_inputs,
    bad_input("header_only", ["run", "--task", "text-classification", "--model", "builtin-tiny", "--dataset",
                              "{dir}/data.csv", "--target-column", "label", "--n-samples", "2", "--no-progress"],
              2, "no usable rows", _write("data.csv", "text,label\n")),
    broken_model("config_only"), broken_model("corrupt_safetensors"), broken_model("unsafe_pickle"),
    read_only_store,
    bad_input("report_onto_file", ["report", "--output", "{dir}/notes.txt"], 2, "is a file, not a folder",
              _write("notes.txt", "someone's notes")),
    bad_input("study_models_string", ["study", "{dir}/study.yaml"], 2, "models",
              _write("study.yaml", "task: text-classification\nmodels: some-model-id\ndatasets: [builtin]\n")),
    ctrl_c_before_run,
    serve_server_dies, serve_ctrl_c, serve_not_openai,
    bad_input("serve_launch_exits", [*SERVE, "--launch", f"{sys.executable} -c 'import sys; sys.exit(3)'"], 2,
              "exited with code 3"),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=[], help="names of faults to run (default: all)")
    args = parser.parse_args()
    # Ctrl-C as a terminal delivers it: started in the background of a script (`cmd &`, nohup) this
    # process inherits SIGINT ignored, and so would every command it starts, which then never sees it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    bench = Bench()
    chosen = [f for f in FAULTS if not args.only or f.__name__ in args.only]
    survived = not_tried = 0
    for fault in chosen:
        started = time.monotonic()
        tracebacks = bench.tracebacks
        try:
            ok = fault(bench)
        except Exception as err:  # a fault that broke the benchmark itself did not survive
            ok = False
            print(f"  {fault.__name__}: {type(err).__name__}: {err}")
        survived += ok is True
        not_tried += ok is NOT_TRIED
        verdict = "not tried" if ok is NOT_TRIED else "survived" if ok else "FAILED"
        print(f"{fault.__name__:<24} {verdict:<9} {time.monotonic() - started:6.1f} s"
              f"{'  tracebacks: ' + str(bench.tracebacks - tracebacks) if bench.tracebacks > tracebacks else ''}",
              flush=True)
    print(f"faults_survived={survived}/{len(chosen) - not_tried} not_tried={not_tried} "
          f"runs_left_running={bench.left_running()} measurements_lost={bench.lost} tracebacks={bench.tracebacks}")

if __name__ == "__main__":
    main()
