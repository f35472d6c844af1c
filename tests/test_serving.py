"""tracker serve-bench: a real `transformers serve` (with and without continuous batching) on the
built-in tiny chat model, and a small real HTTP server of the tests' own (tests/fake_openai.py)
that errors, stalls, dies or is not an OpenAI API at all."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from unittest import mock

import mlflow
import pytest
from conftest import REPO, all_runs, started, subprocess_env

from tracker.measurement.attribution import Window
from tracker.measurement.readings import SystemProbe
from tracker.serving.figures import WindowFigures, level_figures, window_counts
from tracker.serving.loadgen import RequestRecord

FAKE = f"{sys.executable} {REPO / 'tests' / 'fake_openai.py'}"
# Short windows: what is checked is the bookkeeping, not a precise figure.
QUICK = ["--windows", "2", "--min-window-s", "1", "--min-window-requests", "2", "--n-prompts", "12",
         "--country", "FRA"]
# The tests that use the session's transformers server run on one worker, which starts it once.
serve_group = pytest.mark.xdist_group("transformers-serve")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_models(url: str, alive, deadline_s: float, log: Path) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert alive(), f"the server exited: {log.read_text()[-2000:]}"
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)  # a poll interval: the server has no event to wait on
    raise AssertionError(f"{url} did not answer within {deadline_s} s")


@pytest.fixture(scope="session")
def chat_model(builtin_cache: Path) -> str:
    with mock.patch.dict(os.environ, {"TRACKER_CACHE_DIR": str(builtin_cache)}):
        from tracker.sources.models import builtin_multipurpose

        return builtin_multipurpose("builtin-tiny-chat").location


@pytest.fixture(scope="session")
def transformers_server(chat_model: str, tmp_path_factory: pytest.TempPathFactory):
    """One real `transformers serve` with continuous batching for the session (about 20 s to start).

    Started detached (its starter exits at once), so that it is no child of this test process: a
    run measured in this process charges its living children's CPU time as its own, and would be
    charged the server's."""
    import psutil

    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    command = [str(Path(sys.executable).parent / "transformers"), "serve", "--host", "127.0.0.1", "--port",
               str(port), "--continuous-batching", chat_model]
    starter = ("import subprocess, sys; log = open(sys.argv[1], 'w'); print(subprocess.Popen(sys.argv[2:], "
               "stdout=log, stderr=subprocess.STDOUT, start_new_session=True).pid)")
    pid = int(subprocess.run([sys.executable, "-c", starter, str(log), *command], env=subprocess_env(
        HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"), capture_output=True, text=True, check=True, timeout=60).stdout)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_models(url, lambda: psutil.pid_exists(pid), 180, log)
        yield url, pid
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def level_runs(client) -> list:
    return sorted((r for r in all_runs(client) if "tracker.serve.level" in r.data.tags),
                  key=lambda r: r.data.params.get("concurrency", ""))


def parent_run(client):
    parents = [r for r in all_runs(client) if r.data.tags.get("tracker.serve.sweep") == "true"]
    assert len(parents) == 1, parents
    return parents[0]


@serve_group
@pytest.mark.slow
def test_a_sweep_of_a_continuous_batching_server_leaves_a_run_per_level(transformers_server, cli, client):
    url, pid = transformers_server
    code, out, err = cli("serve-bench", "--endpoint", url, "--concurrency", "1,4", "--output-tokens", "12",
                         "--slo-ttft-ms", "60000", *QUICK)
    assert code == 0, err
    parent = parent_run(client)
    runs = level_runs(client)
    assert parent.info.status == "FINISHED" and [r.info.status for r in runs] == ["FINISHED"] * 2
    for run, users in zip(runs, (1, 4), strict=True):
        m, tags = run.data.metrics, run.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params["concurrency"] == str(users)
        assert f"process {pid}, which listens on port" in tags["tracker.serve.server"]
        # Exactly the tokens asked for: the random weights would stop at EOS after one or two.
        assert m["output_tokens_mean"] == 12 and "transformers" in tags["tracker.serve.output_length"]
        assert m["requests_failed"] == 0 and m["requests_ended"] >= 4
        assert 0 < m["energy_j_per_output_token"] < math.inf and 0 < m["energy_j_per_request"] < math.inf
        assert m["energy_j_per_output_token_ci95_low"] <= m["energy_j_per_output_token"] \
            <= m["energy_j_per_output_token_ci95_high"]
        assert m["ttft_ms_p50"] <= m["ttft_ms_p90"] <= m["ttft_ms_p99"]
        assert 0 < m["tpot_ms_p50"] and m["e2e_latency_s_p50"] * 1000 > m["ttft_ms_p50"]
        # The steady state: the level's users kept a request in flight through the windows.
        assert abs(m["mean_in_flight"] - users) < 0.15 * users, m["mean_in_flight"]
        assert m["server_cpu_s"] > 0 and m["client_cpu_s"] > 0 and 0 < m["client_cpu_share"] < 1
        assert 0 < m["server_attributed_share"]
        assert m["goodput_share"] == 1.0  # a target of a minute: every request keeps it
        assert "rougeL" in m and tags["tracker.quality.meaningful"] == "false"  # sample data
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"requests.csv", "codecarbon"} <= artifacts
    best = parent.data.tags["tracker.serve.best_level"]
    assert best in ("concurrency 1", "concurrency 4") and parent.data.metrics["carbon_reduction_x"] > 0
    assert "lowest carbon per output token within the targets" in out


@pytest.mark.slow
def test_a_launched_server_without_batching_is_stopped_at_the_end_and_its_log_kept(cli, client, chat_model):
    launch = "transformers serve --host {host} --port {port} --no-continuous-batching {model}"
    code, out, err = cli("serve-bench", "--launch", launch, "--concurrency", "2", "--output-tokens", "6", *QUICK)
    assert code == 0, err
    parent = parent_run(client)
    (run,) = level_runs(client)
    assert run.info.status == "FINISHED" and run.data.metrics["output_tokens_mean"] == 6
    assert parent.data.tags["tracker.serve.server"].startswith("launched: transformers serve")
    log = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="server/server.log")
    assert "/v1/completions" in Path(log).read_text()
    port = int(parent.data.tags["tracker.serve.endpoint"].rsplit(":", 1)[1])
    with pytest.raises(OSError):  # stopped: nothing listens there any more
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_the_load_generator_is_never_charged_to_the_server():
    """This process burns CPU (as the load generator does) while the measured tree, another process,
    sleeps: the window charges the tree nothing of it, and does not take it for contention."""
    with started([sys.executable, "-c", "import time; time.sleep(60)"]) as server:
        probe = SystemProbe(root_pid=server.pid)
        start = probe.snapshot()
        end_at = time.process_time() + 0.4
        while time.process_time() < end_at:
            sum(range(1000))
        window = Window.between(start, probe.snapshot())
    assert window.own_cpu_s < 0.05, window
    assert window.companion_cpu_s >= 0.4 and window.background_cpu_s < window.machine_busy_cpu_s - 0.35


def test_a_busy_server_tree_is_charged_its_cpu_time_and_kept_when_it_dies():
    code = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass"
    with started([sys.executable, "-c", code]) as server:
        probe = SystemProbe(root_pid=server.pid)
        start = probe.snapshot()
        while server.poll() is None:
            probe.remember()  # as serve-bench does between its checks
            time.sleep(0.05)
        window = Window.between(start, probe.snapshot())  # the process is gone (reaped) by now
    assert 0.3 <= window.own_cpu_s <= 0.7, window
    assert not probe.root_alive()


def test_tokens_and_requests_are_counted_by_when_they_happened_in_the_window():
    from tracker.measurement.energy import Energy

    inside = RequestRecord(0, 0.5, chunk_times=[1.5, 2.5, 3.5, 4.5], done_s=4.6, output_tokens=8, input_tokens=10)
    late = RequestRecord(1, 3.0, chunk_times=[3.5, 5.5], done_s=5.6, output_tokens=2, input_tokens=7)
    failed = RequestRecord(2, 2.0, done_s=2.1, outcome="http_503")
    energy = Energy(cpu_kwh=1e-6, gpu_kwh=0.0, ram_kwh=1e-6, emissions_kg=1e-7, duration_s=3.0)
    window = WindowFigures(start_s=2.0, end_s=5.0, energy=energy, machine=energy * 2, server_cpu_s=1.0,
                           client_cpu_s=0.5, machine_busy_cpu_s=2.0)
    counts = window_counts([inside, late, failed], window)
    # 3 of inside's 4 chunks (2 tokens each) and 1 of late's 2 chunks (1 token each) arrived inside.
    assert counts["output_tokens"] == 7 and counts["requests_ended"] == 1
    assert counts["input_tokens"] == 7  # only late's first token came inside: its prefill ran there
    assert counts["energy_j_per_output_token"] == pytest.approx(7.2 / 7)
    assert counts["client_cpu_share"] == 0.25 and counts["server_attributed_share"] == 0.5
    figures = level_figures([inside, late, failed], [window], slo_ttft_ms=None, slo_tpot_ms=None)
    assert figures["requests_sent"] == 2 and figures["requests_failed_http_503"] == 1  # sent inside
    assert figures["ttft_ms_p50"] == pytest.approx(500)


@pytest.mark.slow
def test_http_errors_and_timeouts_are_counted_by_kind_never_dropped(cli, client):
    launch = f"{FAKE} {{port}} --fail-every 4 --stall-every 9"
    code, out, err = cli("serve-bench", "--launch", launch, "--concurrency", "3", "--request-timeout-s", "1.5",
                         "--output-tokens", "8", *QUICK)
    assert code == 0, err
    (run,) = level_runs(client)
    m = run.data.metrics
    assert run.info.status == "FINISHED"
    assert m["requests_failed_http_503"] >= 1 and m["requests_timed_out"] >= 1
    assert m["requests_failed"] == m["requests_failed_http_503"] + m["requests_timed_out"]
    rows = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="requests.csv"))
    outcomes = [line.split(",")[7] for line in rows.read_text().splitlines()[1:]]
    assert {"ok", "http_503", "timeout"} <= set(outcomes)
    # The fake takes vLLM's length fields: every successful request has the tokens asked for.
    assert m["output_tokens_mean"] == 8 and "vllm" in run.data.tags["tracker.serve.output_length"]


@pytest.mark.slow
def test_poisson_arrivals_hold_the_asked_rate(cli, client):
    code, out, err = cli("serve-bench", "--launch", f"{FAKE} {{port}}", "--request-rate", "20",
                         "--output-tokens", "4", *QUICK)
    assert code == 0, err
    (run,) = level_runs(client)
    assert run.data.params["request_rate"] == "20.0"
    assert 5 < run.data.metrics["requests_per_s"] < 40, run.data.metrics  # about 20, by chance either way


@pytest.mark.slow
def test_a_server_that_dies_mid_run_leaves_a_failed_run_with_the_energy_so_far(cli, client, monkeypatch):
    """The launched server is SIGKILLed one second into the first window (on the window's own event,
    whatever the machine's load): a FAILED run with what the window measured until then."""
    import threading
    from contextlib import contextmanager

    from tracker.serving import bench

    launched, timers = [], []
    real_launch, real_phase = bench.launch, bench.EnergyMeter.phase

    def launch(*args, **kwargs):
        launched.append(real_launch(*args, **kwargs))
        return launched[-1]

    @contextmanager
    def phase(self, name):
        with real_phase(self, name) as reading:
            if not timers:  # the first window is open now
                timers.append(threading.Timer(1.0, os.killpg, (launched[0].pid, signal.SIGKILL)))
                timers[0].start()
            yield reading

    monkeypatch.setattr(bench, "launch", launch)
    monkeypatch.setattr(bench.EnergyMeter, "phase", phase)
    code, out, err = cli("serve-bench", "--launch", f"{FAKE} {{port}}", "--concurrency", "2", "--windows", "3",
                         "--min-window-s", "5", "--output-tokens", "8", "--country", "FRA")
    timers[0].join()
    assert code == 1
    (line,) = err.strip().splitlines()[-1:]
    assert "ended during the measurement (exit code -9)" in line and "server.log" in line
    (run,) = level_runs(client)
    assert run.info.status == "FAILED" and "ended during the measurement" in run.data.tags["tracker.error"]
    assert run.data.metrics["energy_kwh"] > 0 and run.data.metrics["server_cpu_s"] > 0
    assert 0.9 < run.data.metrics["duration_s"] < 5, run.data.metrics["duration_s"]  # cut short by the death
    assert run.data.tags["tracker.run.partial"].startswith("stopped during window 1 of 3")
    parent = parent_run(client)
    assert parent.info.status == "FAILED"
    assert "server" in {a.path for a in client.list_artifacts(parent.info.run_id)}


@pytest.mark.slow
def test_ctrl_c_ends_the_level_killed_with_its_energy_and_stops_the_launched_server(tmp_path, client):
    mark = tmp_path / "server.pid"
    command = [sys.executable, "-m", "tracker", "serve-bench", "--launch", f"{FAKE} {{port}} --mark-after 300 {mark}",
               "--concurrency", "2", "--windows", "3", "--min-window-s", "20", "--country", "FRA"]
    with started(command) as process:
        deadline = time.monotonic() + 240
        while not mark.exists():  # the 300th request: the first window is open by then
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the server never saw 300 requests"
            time.sleep(0.1)
        server_pid = int(mark.read_text())
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, err[-2000:]
    (run,) = level_runs(client)
    assert run.info.status == "KILLED" and run.data.tags["tracker.interrupted_by"] == "SIGINT"
    assert run.data.metrics["energy_kwh"] > 0
    with pytest.raises(ProcessLookupError):
        os.kill(server_pid, 0)


@pytest.mark.parametrize("case", ["unreachable", "not_openai", "exits", "never_healthy", "not_the_listener",
                                  "own_shell", "both", "unfilled_setting", "two_kinds_of_level", "unprompted_task"])
def test_a_server_that_cannot_be_measured_is_refused_in_one_line_with_no_run(case, cli, client):
    port = free_port()
    args = {
        "unreachable": ["--endpoint", f"http://127.0.0.1:{port}"],
        "not_openai": ["--endpoint", f"127.0.0.1:{port}/v1"],
        "exits": ["--launch", f"{sys.executable} -c 'import sys; print(\"bad flag\"); sys.exit(3)'"],
        "never_healthy": ["--launch", f"{sys.executable} -m http.server {{port}} --bind {{host}}",
                          "--startup-timeout-s", "3"],
        "not_the_listener": ["--endpoint", f"http://127.0.0.1:{port}", "--server-pid", "SLEEPER"],
        "own_shell": ["--endpoint", f"http://127.0.0.1:{port}", "--server-pid", str(os.getppid())],
        "both": ["--endpoint", f"http://127.0.0.1:{port}", "--launch", "x"],
        "unfilled_setting": ["--launch", "serve {port} {dtype}", "--server-setting", "batch=4"],
        "two_kinds_of_level": ["--launch", "serve {port}", "--concurrency", "2", "--request-rate", "3"],
        "unprompted_task": ["--launch", "serve {port}", "--task", "image-classification"],
    }[case]
    expected = {
        "unreachable": "nothing answers at", "not_openai": "does not speak the OpenAI API",
        "exits": "exited with code 3 before it answered", "never_healthy": "did not answer GET",
        "not_the_listener": "is not the server at", "own_shell": "serve-bench's own process or one above it",
        "both": "not both", "unfilled_setting": "--launch has no {batch} to fill",
        "two_kinds_of_level": "(--request-rate), not both", "unprompted_task": "cannot be asked of a language model",
    }[case]
    server = [sys.executable, str(REPO / "tests" / "fake_openai.py"), str(port)]
    if case == "not_openai":
        server.append("--not-openai")
    with started(server), started([sys.executable, "-c", "import time; time.sleep(60)"]) as sleeper:
        if case in ("not_openai", "not_the_listener", "own_shell"):
            wait_for_listening(port)
        args = [str(sleeper.pid) if a == "SLEEPER" else a for a in args]
        if case == "unreachable":
            args[1] = f"http://127.0.0.1:{free_port()}"
        code, out, err = cli("serve-bench", *args, "--country", "FRA")
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("tracker: error:")]
    assert len(lines) == 1 and expected in lines[0], err
    assert not [r for r in all_runs(client) if "tracker.serve.endpoint" in r.data.tags]
    if case == "exits":
        assert "(bad flag)" in lines[0]  # the log's last line, with the log's path


def wait_for_listening(port: int, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)  # a poll interval: the server gives no event to wait on
    raise AssertionError(f"nothing listened on {port} within {deadline_s} s")


def test_sharegpt_conversations_give_prompts_with_their_answers_length(tmp_path):
    from tracker.serving.config import ServeConfig
    from tracker.serving.workload import load_workload

    data = [{"conversations": [{"from": "human", "value": "Tell me about bees"},
                               {"from": "gpt", "value": "Bees make honey and pollinate flowers."}]},
            {"conversations": [{"from": "gpt", "value": "no human turn"}]},
            {"conversations": [{"from": "human", "value": "Hi"}]}]
    path = tmp_path / "chats.json"
    path.write_text(json.dumps(data))
    config = ServeConfig.parse(launch="x", dataset=str(path), output_tokens="data")
    workload = load_workload(config)
    assert [p.text for p in workload.prompts] == ["Tell me about bees", "Hi"]
    assert [p.max_tokens for p in workload.prompts] == [8, 1]  # 6 words x 4/3; an empty answer: 1
    assert not workload.scored and "ShareGPT" in workload.source


@pytest.mark.slow
def test_a_grid_of_launch_settings_is_searched_and_a_setting_that_cannot_start_bounds_it(cli, client):
    """--server-setting NAME=A|B launches a server per value and sweeps each; the best level within
    the targets is named with its settings; a value the server refuses is a FAILED run, not the end."""
    launch = f"{FAKE} {{port}} {{extra}}"
    code, out, err = cli("serve-bench", "--launch", launch, "--server-setting", "extra=--fail-every 50|--bogus",
                         "--concurrency", "1,2", "--output-tokens", "6", *QUICK)
    assert code == 0, err
    runs = [r for r in all_runs(client) if "tracker.serve.sweep" not in r.data.tags]
    by_status = sorted((r.info.status, r.data.params.get("server.extra"), r.data.params.get("concurrency"))
                       for r in runs)
    assert by_status == [("FAILED", "--bogus", None), ("FINISHED", "--fail-every 50", "1"),
                         ("FINISHED", "--fail-every 50", "2")]
    failed = next(r for r in runs if r.info.status == "FAILED")
    # The reason names the log's last line: what the server said when it refused the setting.
    assert "exited with code 2" in failed.data.tags["tracker.error"]
    assert "unrecognized arguments: --bogus" in failed.data.tags["tracker.error"]
    parent = parent_run(client)
    assert parent.data.tags["tracker.serve.best_settings"] == "extra=--fail-every 50"


def simulate_search(cost, feasible, limit: int = 256) -> tuple[list[int], int | None]:
    """The concurrencies `--concurrency auto` measures against a server whose J/token at c is
    ``cost(c)`` (windows 1% either side) and which keeps the targets where ``feasible(c)``."""
    from tracker.serving.config import ServeConfig
    from tracker.serving.levels import LevelResult, best_of, level_plan

    config = ServeConfig.parse(launch="x", concurrency="auto", max_concurrency=limit)
    measured: list[LevelResult] = []
    for level in level_plan(config, measured):
        c = level.concurrency
        j = cost(c)
        measured.append(LevelResult(level, f"run{c}", {"emissions_g_per_output_token": j * 1e-4,
                                                       "energy_j_per_output_token": j},
                                    feasible(c), [j * 0.99, j * 1.01]))
    best = best_of(measured)
    return [r.level.concurrency for r in measured], best.level.concurrency if best else None


@pytest.mark.parametrize("shape", ["falls_until_latency_breaks", "u_shaped", "rises", "flat", "never_feasible"])
def test_the_concurrency_search_finds_the_cheapest_level_within_the_targets(shape):
    cost, feasible, best = {
        # Batching amortizes the weights until the latency target breaks above 24 users.
        "falls_until_latency_breaks": (lambda c: 1 / c, lambda c: c <= 24, 24),
        # Memory bandwidth or padding: cheapest at 6 users, dearer on both sides.
        "u_shaped": (lambda c: (c - 6) ** 2 + 10, lambda c: True, 6),
        "rises": (lambda c: c, lambda c: True, 1),
        "flat": (lambda c: 5.0, lambda c: True, None),  # any: within the noise
        "never_feasible": (lambda c: 1 / c, lambda c: False, None),
    }[shape]
    tried, found = simulate_search(cost, feasible)
    assert tried[0] == 1 and len(tried) == len(set(tried)) and len(tried) <= 16, tried
    if shape == "never_feasible":
        assert found is None and tried == [1]
    elif shape == "flat":
        assert found in tried and len(tried) <= 4, tried  # two misses in a row end the doubling
    else:
        assert found == best, tried


@pytest.mark.slow
def test_concurrency_auto_searches_a_real_server_and_names_its_best(cli, client):
    code, out, err = cli("serve-bench", "--launch", f"{FAKE} {{port}}", "--concurrency", "auto",
                         "--max-concurrency", "4", "--output-tokens", "6", *QUICK)
    assert code == 0, err
    runs = level_runs(client)
    tried = sorted(int(r.data.params["concurrency"]) for r in runs)
    assert tried[0] == 1 and set(tried) <= {1, 2, 3, 4} and len(tried) >= 2, tried
    parent = parent_run(client)
    assert int(parent.data.metrics["best_concurrency"]) in tried
    assert parent.data.params["concurrency"] == "auto"


def test_the_servers_gpus_are_those_its_processes_compute_on_and_others_there_contend():
    """NVML (a stand-in) lists the server's worker on GPU 1 and another process on GPU 1 and 0: the
    server's GPU is 1, its counter is read, and the other process is counted as contention there."""
    from test_attribution import FakeNvml

    from tracker.measurement.attribution import contention
    from tracker.serving.server import Server, server_gpus

    with started([sys.executable, "-c", "import subprocess, sys, time; "
                  "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"]) as root:
        deadline = time.monotonic() + 30
        import psutil

        while not psutil.Process(root.pid).children():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (worker,) = psutil.Process(root.pid).children()
        nvml = FakeNvml(pids={0: [99999], 1: [worker.pid, 99998]})
        nvml.nvmlDeviceGetCount = lambda: 2
        server = Server("http://127.0.0.1:1", root.pid, "m")
        assert server_gpus(server, nvml) == [1]
        probe = SystemProbe(gpus=[1], nvml=nvml, root_pid=root.pid)
        window = Window.between(probe.snapshot(), probe.snapshot())
    assert window.gpu_counter_kwh > 0 and window.background_gpu_processes == 1
    assert "1 other process(es) computed on this run's GPU" in contention(window)


@pytest.mark.slow
def test_the_prefill_split_measures_one_token_requests_beside_the_full_ones(cli, client):
    code, out, err = cli("serve-bench", "--launch", f"{FAKE} {{port}}", "--concurrency", "2", "--prefill-split",
                         "--output-tokens", "12", *QUICK)
    assert code == 0, err
    (run,) = level_runs(client)
    m = run.data.metrics
    assert 0 < m["prefill_energy_j_per_input_token"] < math.inf
    # Decode's share is what the full requests cost beyond their prefill: less than the whole per token.
    assert 0 < m["decode_energy_j_per_output_token"] < m["energy_j_per_output_token"]
    phases = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                      artifact_path="codecarbon/emissions.csv")).read_text()
    assert "c2-prefill-w1" in phases and "c2-w1" in phases


@pytest.mark.slow
def test_the_mlproject_entry_point_sweeps_and_points_its_launcher_to_the_sweep(client, hermetic):
    """`mlflow run -e serve_bench` with a launch template (braces and all) through MLflow's parameters."""
    command = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "serve_bench", "--env-manager", "local",
               "-P", f"launch={FAKE} {{port}}", "-P", "concurrency=1,2", "-P", "windows=1", "-P", "min_window_s=1",
               "-P", "output_tokens=4", "-P", "n_prompts=8", "-P", "country=FRA"]
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300, cwd=hermetic)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = all_runs(client)
    launcher = next(r for r in runs if "tracker.serve.parent_run_id" in r.data.tags)
    parent = client.get_run(launcher.data.tags["tracker.serve.parent_run_id"])
    assert parent.data.tags["tracker.launcher_run_id"] == launcher.info.run_id
    levels = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["concurrency"] for r in levels) == ["1", "2"]
    assert {r.info.status for r in (launcher, parent, *levels)} == {"FINISHED"}
    assert "tracker.measured_run_id" not in launcher.data.tags  # the sweep, not its last level
