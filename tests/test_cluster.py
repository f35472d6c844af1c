"""Studies and searches on a real Ray cluster: a head and a second node, each its own raylet and
processes, on this machine, everything bound to 127.0.0.1 (Ray's usage reports off)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import REPO, all_runs, mlflow_server, started, subprocess_env

# One worker runs this module: Ray's clusters on one machine share ports and /tmp/ray.
pytestmark = pytest.mark.xdist_group("ray")


@pytest.fixture
def ray_cluster(hermetic, monkeypatch):
    """A head node and a second node; the nodes' workers inherit this environment (the test's cache,
    a short heartbeat so that a run is seen mid-measurement)."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray binds loopback, not the machine's address
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("TRACKER_HEARTBEAT_S", "0.5")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    loopback = {"node_ip_address": "127.0.0.1", "num_cpus": 1}
    cluster = Cluster(initialize_head=True, head_node_args=loopback | {"include_dashboard": False})
    try:
        second = cluster.add_node(**loopback)
        yield cluster, cluster.head_node, second
    finally:
        cluster.shutdown()


def user_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell has: without the variable that keeps the test's own Ray on
    loopback (the driver must keep a loopback --address on loopback by itself)."""
    env = subprocess_env(**extra)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    return env


def _study(definition: Path | str, uri: str, address: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracker", "study", "--remeasure", "0", str(definition), "--executor", "ray",
                           "--address", address, *extra], env=user_env(MLFLOW_TRACKING_URI=uri),
                          capture_output=True, text=True, timeout=900)


def _experiment_runs(client, name):
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []


def _wait_for_measuring(client, driver, where, count=1, deadline_s=300):
    """The RUNNING runs of the study's experiment that ``where`` picks, once ``count`` of them are
    inside their query phase (their heartbeat logged inferences)."""
    deadline = time.monotonic() + deadline_s
    while True:
        assert driver.poll() is None and time.monotonic() < deadline, "no run reached its query phase"
        measuring = [r for r in _experiment_runs(client, "cluster-loss") if r.info.status == "RUNNING"
                     and r.data.metrics.get("partial_inferences", 0) > 0 and where(r)]
        if len(measuring) >= count:
            return measuring
        time.sleep(0.5)


@pytest.mark.slow
def test_a_study_spreads_over_two_nodes_one_at_a_time_skips_stops_resumes_and_survives_a_lost_node(ray_cluster, hermetic, tmp_path):
    from mlflow import MlflowClient

    cluster, head, second = ray_cluster
    with mlflow_server(hermetic) as uri:
        client = MlflowClient(tracking_uri=uri)

        # A store on this machine is refused before any run: the second node could not reach it.
        refused = subprocess.run([sys.executable, "-m", "tracker", "study", "--remeasure", "0", str(REPO / "experiments/smoke.yaml"),
                                  "--executor", "ray", "--address", cluster.address],
                                 env=user_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/local.db"),
                                 capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2 and "every node reaches" in refused.stderr.strip().splitlines()[-1]

        done = _study(REPO / "experiments/smoke.yaml", uri, cluster.address)
        assert done.returncode == 1, done.stderr[-3000:]  # its model that cannot be loaded fails alone
        runs = _experiment_runs(client, "study-smoke")
        by_config = defaultdict(list)
        for run in runs:
            by_config[run.data.tags["tracker.config_key"]].append(run)
        assert len(by_config) == 4 and all(len(found) == 1 for found in by_config.values())
        assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED", "FINISHED", "FINISHED"], done.stdout
        [failed] = [r for r in runs if r.info.status == "FAILED"]
        assert "cannot load model" in failed.data.tags["tracker.error"]
        assert {r.data.tags["tracker.executor"] for r in runs} == {"ray"}
        assert {r.data.tags["tracker.executor.node"] for r in runs} == {head.node_id, second.node_id}
        measured = [r for r in runs if r.info.status == "FINISHED"]
        for node in (head.node_id, second.node_id):  # never two measured at once on one node
            spans = sorted((r.info.start_time, r.info.end_time) for r in measured
                           if r.data.tags["tracker.executor.node"] == node)
            assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))
        assert "[4/4 done, 0 running, 1 failed]" in done.stderr

        again = _study(REPO / "experiments/smoke.yaml", uri, cluster.address)
        assert again.returncode == 1
        assert again.stdout.count("SKIPPED") == 3
        assert len(_experiment_runs(client, "study-smoke")) == 5  # only the failed one measured again

        # Ctrl-C on the driver mid-study: the runs measuring end KILLED with their energy so far.
        definition = tmp_path / "long.yaml"
        definition.write_text("task: summarization\nexperiment: cluster-loss\ndatasets: [builtin]\n"
                              "params: {n_samples: 80, batch_size: 1, warmup: 0, country: FRA}\n"
                              "models: [builtin-tiny, {model: builtin-tiny, seed: 1}]\n")
        stopped = subprocess.Popen([sys.executable, "-m", "tracker", "study", "--remeasure", "0", str(definition), "--executor", "ray",
                                    "--address", cluster.address], env=user_env(MLFLOW_TRACKING_URI=uri),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _wait_for_measuring(client, stopped, lambda r: True, count=2)
            stopped.send_signal(signal.SIGINT)
            _, err = stopped.communicate(timeout=300)
        finally:
            if stopped.poll() is None:
                stopped.kill()
        assert stopped.returncode == 130 and "same command resumes" in err.strip().splitlines()[-1], err[-3000:]
        interrupted = _experiment_runs(client, "cluster-loss")
        assert sorted(r.info.status for r in interrupted) == ["KILLED", "KILLED"]
        assert all(r.data.metrics["energy_kwh"] > 0 and r.data.tags["tracker.interrupted_by"] == "SIGTERM"
                   for r in interrupted)

        # Resumed, with a node stopped mid-study: its run is closed, not left RUNNING, and its
        # combination measured elsewhere.
        study = subprocess.Popen([sys.executable, "-m", "tracker", "study", "--remeasure", "0", str(definition), "--executor", "ray",
                                  "--address", cluster.address], env=user_env(MLFLOW_TRACKING_URI=uri),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            hit = _wait_for_measuring(client, study, lambda r: r.data.tags.get("tracker.executor.node") == second.node_id)
            cluster.remove_node(second, allow_graceful=False)
            out, err = study.communicate(timeout=600)
        finally:
            if study.poll() is None:
                study.kill()
        assert study.returncode == 0, err[-3000:]
        assert "trying it once more elsewhere" in err
        runs = _experiment_runs(client, "cluster-loss")
        assert not [r for r in runs if r.info.status == "RUNNING"]
        lost = client.get_run(hit[0].info.run_id)
        assert lost.info.status in ("KILLED", "FAILED") and "was lost" in lost.data.tags["tracker.error"]
        finished = [r for r in runs if r.info.status == "FINISHED"]
        assert len(runs) == 5  # the 2 stopped, the 1 lost with its node, the 2 measured in the end
        assert len(finished) == 2 and {r.data.tags["tracker.executor.node"] for r in finished} == {head.node_id}
        assert hit[0].data.tags["tracker.config_key"] in {r.data.tags["tracker.config_key"] for r in finished}


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TRACKER_TEST_POSTGRES_URL"),
                    reason="set TRACKER_TEST_POSTGRES_URL (.ci/run starts a PostgreSQL server)")
def test_two_tune_workers_on_the_cluster_share_one_study(ray_cluster, hermetic):
    import optuna

    cluster, head, second = ray_cluster
    url = os.environ["TRACKER_TEST_POSTGRES_URL"]
    name = f"ray-{os.getpid()}-{int(time.time())}"
    with mlflow_server(hermetic) as uri:
        tune = subprocess.run(
            [sys.executable, "-m", "tracker", "tune", "--task", "text-classification", "--model", "builtin-tiny",
             "--dataset", "builtin", "--n-samples", "16", "--country", "FRA", "--warmup", "0", "--min-window-s", "0",
             "--n-trials", "6", "--max-batch-size", "8", "--precisions", "fp32,int8", "--study-name", name,
             "--storage", url, "--workers", "2", "--executor", "ray", "--address", cluster.address],
            env=user_env(MLFLOW_TRACKING_URI=uri), capture_output=True, text=True, timeout=900)
        assert tune.returncode == 0, tune.stderr[-3000:]
        assert "carbon_reduction_x" in tune.stdout  # the summary of the worker that ended last
        started = [line for line in tune.stderr.splitlines() if "tune worker" in line and "started on node" in line]
        assert {line.rsplit(" ", 1)[-1] for line in started} == {head.node_id[:8], second.node_id[:8]}
        study = optuna.load_study(study_name=name, storage=url)
        assert len([t for t in study.trials if t.state.name == "COMPLETE"]) >= 2
        from mlflow import MlflowClient

        assert not [r for r in all_runs(MlflowClient(tracking_uri=uri)) if r.info.status == "RUNNING"]


@pytest.mark.parametrize("flags, message", [
    (["--executor", "slurm"], "--executor must be one of local, ray"),
    (["--per-node", "2"], "add --executor ray"),
    (["--executor", "ray", "--per-node", "0"], "--per-node must be a positive whole number"),
    (["--executor", "ray", "--address", "127.0.0.1:1"], "no Ray cluster answers at --address 127.0.0.1:1"),
])
def test_executor_flags_are_checked_in_one_line_before_any_run(cli, client, flags, message):
    code, _, err = cli("study", "--remeasure", "0", str(REPO / "experiments/smoke.yaml"), *flags)
    assert code == 2
    [line] = [line for line in err.splitlines() if line.startswith("tracker: error:")]
    assert message in line
    assert all_runs(client) == []


class NotRay:
    """A loopback port that accepts connections and answers nothing Ray understands, as a wrong port
    or a head whose services are not up: ``connections`` counts who came, ``connected`` fires once
    Ray itself (after the driver's reachability check) has come."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.connections, self.connected = 0, threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.held.append(client)
            self.connections += 1
            if self.connections >= 2:
                self.connected.set()

    def close(self) -> None:
        for client in [*self.held, self.server]:
            client.close()


@pytest.fixture
def not_ray():
    pytest.importorskip("ray")
    server = NotRay()
    yield server
    server.close()


def test_a_head_that_answers_but_is_not_ray_is_refused_in_one_line(not_ray, hermetic):
    """Ray alone retries such a head for minutes; the driver gives it CONNECT_S and says what to do."""
    done = subprocess.run([sys.executable, "-m", "tracker", "study", "--remeasure", "0", str(REPO / "experiments/smoke.yaml"),
                           "--executor", "ray", "--address", not_ray.address], env=user_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-3000:]
    [line] = [line for line in done.stderr.splitlines() if line.strip()]  # Ray's retry lines kept out
    assert line.startswith("tracker: error: the Ray cluster at") and "did not connect" in line
    assert "--node-ip-address 127.0.0.1" in line and not_ray.connections >= 2


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_connecting_ends_the_command_at_once(not_ray, hermetic, client, sig, code):
    command = [sys.executable, "-m", "tracker", "study", "--remeasure", "0", str(REPO / "experiments/smoke.yaml"), "--executor", "ray",
               "--address", not_ray.address]
    with started(command, user_env()) as driver:
        assert not_ray.connected.wait(120), "Ray never tried to connect"
        driver.send_signal(sig)
        _, err = driver.communicate(timeout=15)  # at once, not after Ray's retries
    assert driver.returncode == code, err[-3000:]
    assert all_runs(client) == []


def test_several_tune_workers_need_the_ray_executor(cli, client):
    code, _, err = cli("tune", "--task", "text-classification", "--model", "builtin-tiny", "--workers", "2")
    assert code == 2 and "--workers 2 needs --executor ray" in err
    assert all_runs(client) == []


class _FakeRay:
    """What NodeSlots reads of a cluster: ray.nodes(), as Ray returns them."""

    def __init__(self, nodes):
        self.list = nodes

    def nodes(self):
        return self.list


def _node(node_id, cpus=2, gpus=0, alive=True):
    resources = {"CPU": cpus} | ({"GPU": gpus} if gpus else {})
    return {"NodeID": node_id, "Alive": alive, "NodeManagerAddress": "127.0.0.1", "Resources": resources}


CPU_A, GPU_B, CPU_C = "aa" * 28, "bb" * 28, "ee" * 28  # node ids as Ray writes them (hex)


def test_slots_are_one_per_node_or_per_gpu_and_follow_the_alive_nodes():
    pytest.importorskip("ray")
    from tracker.execution.cluster import NodeSlots

    ray = _FakeRay([_node(CPU_A), _node(GPU_B, gpus=2), _node("cc" * 28, alive=False), _node("dd" * 28, cpus=0)])
    slots = NodeSlots(ray, per_node=1)
    assert {n.id: n.slots for n in slots.nodes.values()} == {CPU_A: 1, GPU_B: 2}  # no work on a dead or 0-CPU node
    taken = [slots.take() for _ in range(4)]
    assert [n.id if n else None for n in taken] == [CPU_A, GPU_B, GPU_B, None]  # least busy first, then full
    assert slots.options(taken[1])["num_gpus"] == 1 and slots.options(taken[0])["num_gpus"] == 0
    assert slots.options(taken[0])["scheduling_strategy"].node_id == CPU_A
    slots.give_back(GPU_B)
    ray.list = [_node(GPU_B, gpus=2), _node(CPU_C)]  # cpu-a died, cpu-c joined: what gpu-b holds is kept
    slots.refresh()
    assert {n.id: n.running for n in slots.nodes.values()} == {GPU_B: 1, CPU_C: 0}
    assert slots.take(avoid=CPU_C).id == GPU_B  # a retry goes elsewhere while elsewhere has room
    assert slots.take(avoid=GPU_B).id == CPU_C
    assert slots.take() is None

    wider = NodeSlots(_FakeRay([_node(CPU_A), _node(GPU_B, gpus=2)]), per_node=2)
    assert {n.id: n.slots for n in wider.nodes.values()} == {CPU_A: 2, GPU_B: 4}
    alone = NodeSlots(_FakeRay([_node("ff" * 28)]), per_node=1)
    assert alone.take(avoid="ff" * 28).id == "ff" * 28  # with one node, a retry goes where it can
