"""Attribution, contention and spread, fed with faked hardware through the paths real readings take.

A fake NVML module (energy counter, process list), a fake RAPL folder and scripted CPU times go
through ``SystemProbe``, ``EnergyMeter`` and whole ``tracker run`` commands, as Zeus's tests do;
one test puts a real CPU burner beside a real run.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from conftest import all_runs

from tracker.measurement.attribution import (
    FullLoadRates,
    Window,
    attribute,
    contention,
    estimate,
    gpu_unavailable,
    quiet_enough,
)
from tracker.measurement.energy import Energy
from tracker.measurement.readings import (
    CpuTimes,
    Snapshot,
    SystemProbe,
    allowed_cpus,
    machine_runnable,
    rapl_delta_uj,
    runnable_threads,
    visible_gpu,
)
from tracker.measurement.stats import Spread, percentile, pooled, ratio_interval


class NVMLError(Exception):
    pass


class FakeNvml:
    """The part of pynvml the probe uses: devices by index or UUID, an energy counter in mJ that
    advances by ``step_mj`` a read, and a process list per device."""

    def __init__(self, *, step_mj: float = 3600.0, pids: dict[int, list[int]] | None = None,
                 counter: bool = True, power_mw: float | None = None, temperatures: list[float] | None = None,
                 utilisation: dict[int, float] | None = None, mig: bool = False) -> None:
        self.step_mj, self.pids, self.counter = step_mj, pids or {}, counter
        self.energy: dict[int, float] = {}
        self.uuids = {"GPU-aaaa-1111": 0, "GPU-bbbb-2222": 1}
        self.power_mw, self.temperatures, self.utilisation, self.mig = power_mw, list(temperatures or []), utilisation, mig

    def nvmlDeviceGetPowerUsage(self, handle: int) -> float:
        if self.power_mw is None:
            raise NVMLError("Not Supported")
        return self.power_mw

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> float:
        if not self.temperatures:
            raise NVMLError("Not Supported")
        return self.temperatures.pop(0) if len(self.temperatures) > 1 else self.temperatures[0]  # then it stays

    def nvmlDeviceGetProcessUtilization(self, handle: int, since: int) -> list:
        if self.utilisation is None:
            raise NVMLError("Not Supported")
        return [SimpleNamespace(pid=pid, smUtil=util, timeStamp=since + 1) for pid, util in self.utilisation.items()]

    def nvmlDeviceGetMigMode(self, handle: int) -> tuple[int, int]:
        return (1, 1) if self.mig else (0, 0)

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        return self.uuids[uuid]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> float:
        if not self.counter:
            raise NVMLError("Not Supported")
        self.energy[handle] = self.energy.get(handle, 1e6) + self.step_mj
        return self.energy[handle]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list:
        return [SimpleNamespace(pid=pid, usedGpuMemory=1) for pid in self.pids.get(handle, [])]


class ScriptedProbe:
    """CPU times that advance by fixed steps at each snapshot: this run's CPU seconds, the other
    processes', and the machine's capacity (logical CPUs x seconds)."""

    logical_cpus = 2

    def __init__(self, own_step: float, background_step: float, total_step: float) -> None:
        self.own_step, self.background_step, self.total_step = own_step, background_step, total_step
        self.calls = 0

    def snapshot(self) -> Snapshot:
        self.calls += 1
        n = self.calls
        return Snapshot(at_s=time.perf_counter(), cpu=CpuTimes(
            own_s=n * self.own_step, machine_busy_s=n * (self.own_step + self.background_step),
            machine_total_s=n * self.total_step))


def test_attribution_arithmetic_on_known_figures():
    window = Window(duration_s=4.0, own_cpu_s=3.0, machine_busy_cpu_s=6.0, machine_total_cpu_s=8.0)
    machine = Energy(cpu_kwh=2.0, gpu_kwh=1.0, ram_kwh=4.0, emissions_kg=0.7, duration_s=4.0)
    ours = attribute(machine, window)
    assert window.host_share == 0.5 and window.background_cpu_share == pytest.approx(3 / 8)
    # CPU and RAM by the share of busy CPU time; the GPU's counter whole; emissions follow energy.
    assert (ours.cpu_kwh, ours.ram_kwh, ours.gpu_kwh) == (1.0, 2.0, 1.0)
    assert ours.emissions_kg == pytest.approx(0.7 * 4 / 7)
    assert "38% of the machine's CPU time" in contention(window)
    quiet = Window(duration_s=4.0, own_cpu_s=7.5, machine_busy_cpu_s=7.8, machine_total_cpu_s=8.0)
    assert contention(quiet) is None and attribute(machine, quiet).cpu_kwh == pytest.approx(2.0 * 7.5 / 7.8)


def test_modelled_components_are_charged_per_cpu_second_whatever_else_runs():
    rates = FullLoadRates(cpu_w=8.0, ram_w=20.0, logical_cpus=2)
    machine = Energy(cpu_kwh=2e-6, gpu_kwh=0.0, ram_kwh=5e-6, emissions_kg=1e-7, duration_s=1.0)
    alone = Window(duration_s=3.0, own_cpu_s=3.0, machine_busy_cpu_s=3.1, machine_total_cpu_s=6.0)
    beside = Window(duration_s=3.0, own_cpu_s=3.0, machine_busy_cpu_s=6.0, machine_total_cpu_s=6.0)
    for window in (alone, beside):  # the same work: the same charge, 4 W and 10 W per CPU-second
        ours = attribute(machine, window, rates)
        assert ours.cpu_kwh == pytest.approx(3.0 * 4.0 / 3.6e6) and ours.ram_kwh == pytest.approx(3.0 * 10.0 / 3.6e6)
    measured_cpu = FullLoadRates(cpu_w=None, ram_w=20.0, logical_cpus=2)  # RAPL: split what it measured
    assert attribute(machine, beside, measured_cpu).cpu_kwh == pytest.approx(1e-6)
    missing = Energy(cpu_kwh=math.nan, gpu_kwh=0.0, ram_kwh=5e-6, emissions_kg=1e-7, duration_s=1.0)
    assert math.isnan(attribute(missing, alone, rates).cpu_kwh)  # a missing reading is not modelled back in
    assert "4 W per CPU-second" in rates.describe() and "Scaphandre" in measured_cpu.describe()


def _demand_window(cpus: int, pool: int, busy_others: float, seconds: float = 10.0, samples: int = 100,
                   allowed: float | None = None) -> Window:
    """A window as the probe reads it on a machine of ``cpus`` CPUs: the run's ``pool`` threads all
    wanting a CPU at every sample, and other processes keeping ``busy_others`` CPUs busy (runnable
    and using that CPU time); the run gets what is left."""
    allowed = cpus if allowed is None else allowed
    own_cpu = min(pool, allowed, cpus - busy_others) * seconds
    start = CpuTimes(own_s=0.0, machine_busy_s=0.0, machine_total_s=0.0, allowed_cpus=allowed, logical_cpus=cpus)
    end = CpuTimes(own_s=own_cpu, machine_busy_s=own_cpu + busy_others * seconds, machine_total_s=cpus * seconds,
                   own_runnable_sum=pool * samples, others_runnable_sum=busy_others * samples,
                   runnable_samples=samples, allowed_cpus=allowed, logical_cpus=cpus)
    return Window.between(Snapshot(0.0, start), Snapshot(seconds, end))


@pytest.mark.parametrize("cpus", [2, 16, 64])
def test_one_busy_core_beside_a_pool_of_as_many_threads_as_cpus_is_contended_on_a_machine_of_any_size(cpus):
    beside_pool = _demand_window(cpus, pool=cpus, busy_others=1)
    reason = contention(beside_pool)
    assert reason and "oversubscribed" in reason and f"of the {cpus} CPUs" in reason
    # a tenth of the machine is no longer the test: on 16 and 64 CPUs one core is under it
    assert beside_pool.background_cpu_share < 0.1 or cpus == 2
    # one thread beside the same busy core: its CPUs are its own, nothing to flag
    assert contention(_demand_window(cpus, pool=1, busy_others=1)) is None
    # the pool alone, and the pool beside daemons asking for a fifth of a CPU: quiet
    assert contention(_demand_window(cpus, pool=cpus, busy_others=0)) is None
    assert contention(_demand_window(cpus, pool=cpus, busy_others=0.2)) is None
    # waiting for quiet asks the same question for the run about to start
    assert not quiet_enough(_demand_window(cpus, pool=0, busy_others=1), own_threads=cpus)
    assert quiet_enough(_demand_window(cpus, pool=0, busy_others=1), own_threads=1)


def test_a_cgroup_quota_or_affinity_narrower_than_the_machine_is_what_the_run_may_use(tmp_path):
    # 8 threads in a container allowed 4 CPUs of 64, with nobody else: the run's own cost, the same on
    # every try, not contention; beside one busy core of its 4, contended
    assert contention(_demand_window(64, pool=8, busy_others=0, allowed=4)) is None
    assert "of the 4 CPUs it may use" in contention(_demand_window(4, pool=8, busy_others=1, allowed=4))
    # others busy on the rest of a 64-CPU host weigh on its 4 CPUs in proportion: 16 busy is one of its 4
    assert contention(_demand_window(64, pool=4, busy_others=16, allowed=4)) is not None
    assert contention(_demand_window(64, pool=4, busy_others=4, allowed=4)) is None  # a sixteenth: 0.25
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert allowed_cpus(tmp_path) == min(1.5, len(os.sched_getaffinity(0)))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert allowed_cpus(tmp_path) == len(os.sched_getaffinity(0))
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert allowed_cpus(v1) == 0.5


def _fake_proc(root, pid: int, states: str, machine_running: int):
    """A /proc with one process of threads in ``states`` (one letter each) and a loadavg."""
    for tid, state in enumerate(states, start=9_000_000):  # above any real thread id (pid_max is 2**22)
        task = root / str(pid) / "task" / str(tid)
        task.mkdir(parents=True)
        task.joinpath("stat").write_text(f"{tid} (py (worker) 1) {state} 1 2 3 4\n")
    (root / "loadavg").write_text(f"1.00 1.00 1.00 {machine_running}/300 12345\n")


def test_the_probe_counts_the_threads_that_want_a_cpu_from_proc(tmp_path):
    _fake_proc(tmp_path, os.getpid(), "RRRRSSRR", machine_running=8)  # 6 ours, the reader, 1 other
    assert runnable_threads([os.getpid()], tmp_path) == 6 and machine_runnable(tmp_path) == 8
    probe = SystemProbe(proc_root=tmp_path, allowed_cpus=4, logical_cpus=4)
    before = probe.snapshot().cpu
    for _ in range(10):
        probe.sample_runnable()
    after = probe.snapshot().cpu
    samples = after.runnable_samples - before.runnable_samples
    assert samples >= 10  # the probe's own sampling thread may have added some
    assert (after.own_runnable_sum - before.own_runnable_sum) / samples == 6
    assert (after.others_runnable_sum - before.others_runnable_sum) / samples == 1
    assert after.allowed_cpus == 4 and after.logical_cpus == 4
    assert machine_runnable(tmp_path / "absent") is None  # unreadable: no sample, never a 0


def test_clock_ticks_never_give_a_share_above_one_or_an_empty_window_a_nan():
    ticked = Window(duration_s=0.01, own_cpu_s=0.02, machine_busy_cpu_s=0.01, machine_total_cpu_s=0.02)
    idle = Window(duration_s=0.01, own_cpu_s=0.0, machine_busy_cpu_s=0.0, machine_total_cpu_s=0.0)
    assert ticked.host_share == 1.0 and idle.host_share == 1.0 and idle.background_cpu_share == 0.0


class TickedProbe:
    """CPU times as the kernel counts a child process's: the run's own time is a child's, advancing
    by ``own_step`` in clock ticks, with one living child."""

    logical_cpus = 2

    def __init__(self, own_step: float) -> None:
        self.own_step, self.calls = own_step, 0

    def snapshot(self) -> Snapshot:
        self.calls += 1
        own = self.calls * self.own_step
        return Snapshot(at_s=time.perf_counter(), cpu=CpuTimes(
            own_s=own, machine_busy_s=own, machine_total_s=self.calls * 2.0, children_s=own, living_children=1))


def test_a_cpu_time_too_coarse_to_read_is_nan_with_its_reason_never_zero():
    rates = FullLoadRates(cpu_w=8.0, ram_w=20.0, logical_cpus=2)
    machine = Energy(cpu_kwh=2e-6, gpu_kwh=1e-6, ram_kwh=5e-6, emissions_kg=1e-7, duration_s=0.02)
    nothing = Window(duration_s=0.02, own_cpu_s=0.0, machine_busy_cpu_s=0.0, machine_total_cpu_s=0.04)
    one_tick = Window(duration_s=0.02, own_cpu_s=0.01, machine_busy_cpu_s=0.01, machine_total_cpu_s=0.04,
                      own_cpu_error_s=0.01)
    for window in (nothing, one_tick):
        for share_rates in (rates, None, FullLoadRates(cpu_w=None, ram_w=None, logical_cpus=2)):
            ours = attribute(machine, window, share_rates)  # charged or split by share: neither can be 0
            assert math.isnan(ours.cpu_kwh) and math.isnan(ours.ram_kwh) and math.isnan(ours.total_kwh)
            assert ours.gpu_kwh == 1e-6  # the GPU's own counter does not depend on CPU time
        assert math.isnan(estimate(window, rates)) and window.unresolved
    assert "read no CPU time" in nothing.unresolved and "clock ticks of" in one_tick.unresolved
    # Three ticks of a child, or any CPU time read off the nanosecond clock, are charged.
    for window in (Window(duration_s=0.05, own_cpu_s=0.03, machine_busy_cpu_s=0.03, machine_total_cpu_s=0.1,
                          own_cpu_error_s=0.01),
                   Window(duration_s=0.002, own_cpu_s=0.0015, machine_busy_cpu_s=0.0, machine_total_cpu_s=0.0)):
        assert window.unresolved is None and attribute(machine, window, rates).total_kwh > 0
    both = one_tick + Window(duration_s=0.1, own_cpu_s=0.09, machine_busy_cpu_s=0.09, machine_total_cpu_s=0.2,
                             own_cpu_error_s=0.01)
    assert both.own_cpu_error_s == 0.02 and both.unresolved is None  # summed windows: their errors add up


def test_a_window_of_a_few_milliseconds_is_charged_its_own_cpu_time_not_zero():
    """This process's CPU time is read off the kernel's nanosecond clock: a window far shorter than
    a clock tick still sees the work in it (psutil's ticks read 0 or 10 ms for it)."""
    from tracker.measurement.carbon import resolve_location
    from tracker.measurement.meter import EnergyMeter

    meter = EnergyMeter(location=resolve_location("FRA"))
    try:
        with meter.phase("query model") as reading:
            deadline = time.thread_time() + 0.002  # 2 ms of this thread's own CPU time, on any machine
            while time.thread_time() < deadline:
                pass
    finally:
        meter.close()
    assert 0.002 <= reading.window.own_cpu_s < 0.5, reading.window
    assert reading.window.unresolved is None and reading.reason == ""
    assert reading.energy.cpu_kwh > 0 and reading.energy.ram_kwh > 0 and reading.energy.total_kwh > 0


def test_a_child_of_coarse_cpu_time_through_a_real_meter_gives_nan_and_says_why():
    from tracker.measurement.carbon import resolve_location
    from tracker.measurement.meter import EnergyMeter

    readings = []
    for step in (0.01, 0.05):  # one tick of a child's time, then five
        meter = EnergyMeter(location=resolve_location("FRA"), probe=TickedProbe(step))
        try:
            with meter.phase("query model") as reading:
                readings.append(reading)
        finally:
            meter.close()
    unresolved, resolved = readings
    assert math.isnan(unresolved.energy.total_kwh) and "too coarse to attribute" in unresolved.reason
    assert unresolved.machine.total_kwh > 0  # what the meter saw is kept beside it
    assert resolved.energy.total_kwh > 0 and resolved.reason == ""


def test_a_measure_block_too_coarse_to_read_logs_nan_and_the_reason(client, monkeypatch):
    import tracker
    import tracker.measurement.meter

    monkeypatch.setattr(tracker.measurement.meter, "default_probe", lambda gpus: TickedProbe(0.01))
    with tracker.measure(task="coarse", model="child-process", country="FRA") as m:
        m.count(2)
    run = client.get_run(m.run_id)
    metrics, tags = run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED"
    assert math.isnan(metrics["energy_kwh"]) and math.isnan(metrics["energy_kwh_per_1k"])
    assert metrics["machine_energy_kwh"] > 0
    assert "too coarse to attribute" in tags["tracker.energy.unavailable"]
    assert tags["tracker.measurement.short_window"] == "true"


def test_cuda_visible_devices_maps_torch_devices_to_physical_gpus():
    assert visible_gpu("cpu", {}) is None
    assert visible_gpu("cuda", {}) == 0 and visible_gpu("cuda:1", {}) == 1
    assert visible_gpu("cuda:1", {"CUDA_VISIBLE_DEVICES": "2,3"}) == 3
    assert visible_gpu("cuda:0", {"CUDA_VISIBLE_DEVICES": "GPU-bbbb-2222"}) == "GPU-bbbb-2222"
    with pytest.raises(IndexError, match="CUDA_VISIBLE_DEVICES"):
        visible_gpu("cuda:2", {"CUDA_VISIBLE_DEVICES": "0,1"})


def test_fake_nvml_counter_and_process_list_through_the_probe():
    nvml = FakeNvml(step_mj=7200.0, pids={1: [424242, 515151]})
    probe = SystemProbe(gpus=["GPU-bbbb-2222"], nvml=nvml)  # by UUID, as CUDA_VISIBLE_DEVICES may say
    window = Window.between(probe.snapshot(), probe.snapshot())
    assert window.gpu_counter_kwh == pytest.approx(7200.0 / 3.6e9)  # one step of the counter, mJ to kWh
    assert window.background_gpu_processes == 2
    assert "2 other process(es) computed on this run's GPU" in contention(window)
    assert not gpu_unavailable(window)


def test_our_own_processes_on_the_gpu_are_not_background():
    probe = SystemProbe(gpus=[0], nvml=FakeNvml(pids={0: [os.getpid()]}))
    window = Window.between(probe.snapshot(), probe.snapshot())
    assert window.background_gpu_processes == 0
    assert "GPU" not in (contention(window) or "")  # the CPU may be busy here; the GPU is ours


def test_a_missing_gpu_counter_gives_nan_with_a_reason_never_zero():
    from tracker.measurement.carbon import resolve_location
    from tracker.measurement.meter import EnergyMeter

    probe = SystemProbe(gpus=[0], nvml=FakeNvml(counter=False))
    meter = EnergyMeter(location=resolve_location("FRA"), probe=probe)
    try:
        with meter.phase("query model") as reading:
            sum(range(10000))
    finally:
        meter.close()
    assert math.isnan(reading.machine.gpu_kwh) and math.isnan(reading.energy.total_kwh)
    assert "NVML energy counter not readable" in reading.reason
    assert reading.energy.cpu_kwh > 0 and reading.energy.ram_kwh > 0  # the components measured keep their figures


def _hold(seconds: float) -> None:
    """Work on the CPU until ``seconds`` of wall time have passed (a window's length, not a wait)."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        sum(range(1000))


def _one_window(meter, seconds: float):
    """One query window of ``seconds`` of work through the meter, which is closed after it."""
    try:
        with meter.phase("query model") as reading:
            _hold(seconds)
    finally:
        meter.close()
    return reading


def test_a_gpu_without_an_energy_counter_is_integrated_from_power_samples_never_zero():
    from tracker.measurement.carbon import resolve_location
    from tracker.measurement.meter import EnergyMeter

    probe = SystemProbe(gpus=[0], nvml=FakeNvml(counter=False, power_mw=150_000.0))  # a Titan X: power, no counter
    meter = EnergyMeter(location=resolve_location("FRA"), probe=probe)
    reading = _one_window(meter, 1.0)
    window = reading.window
    assert window.gpu_counter_kwh is None and window.gpu_power_samples / window.duration_s >= 10  # >= 10 Hz
    assert window.gpu_integrated_kwh == pytest.approx(150 * window.duration_s / 3.6e6, rel=0.15)
    assert reading.machine.gpu_kwh == window.gpu_integrated_kwh and reading.energy.gpu_kwh > 0
    assert not reading.reason  # not missing: measured another way
    assert meter.gpu_figures()["gpu_idle_power_w"] == pytest.approx(150.0)


def test_the_gpu_cools_before_the_first_window_and_its_temperature_is_read_at_every_edge(monkeypatch):
    from tracker.measurement import meter as meter_module
    from tracker.measurement.carbon import resolve_location

    monkeypatch.setattr(meter_module, "GPU_COOL_STABLE_S", 0.6)
    # still cooling from an earlier run, 72 to 61 C, then steady at 60
    nvml = FakeNvml(power_mw=55_000.0, temperatures=[72, 70, 68, 66, 64, 62, 61, 60])
    meter = meter_module.EnergyMeter(location=resolve_location("FRA"), probe=SystemProbe(gpus=[0], nvml=nvml))
    reading = _one_window(meter, 0.2)
    idle = meter.gpu_idle
    assert idle.cooled and idle.cooldown_s >= 0.6 * 6 / 2  # it waited through the cooling readings
    assert idle.temperature_c == 60 and idle.power_w == pytest.approx(55.0)
    assert reading.window.gpu_temperature_start_c == 60 and reading.window.gpu_temperature_end_c == 60
    figures = meter.gpu_figures()
    assert figures["gpu_idle_temperature_c"] == 60 and figures["gpu_cooldown_s"] == idle.cooldown_s


def test_a_gpu_shared_with_other_processes_is_split_by_utilisation_over_its_idle_power():
    window = Window(duration_s=10.0, own_cpu_s=1.0, machine_busy_cpu_s=1.0, machine_total_cpu_s=20.0,
                    background_gpu_processes=1, gpu_own_sm=300.0, gpu_others_sm=100.0)
    machine = Energy(cpu_kwh=0.0, gpu_kwh=3000 / 3.6e6, ram_kwh=0.0, emissions_kg=1e-4, duration_s=10.0)  # 300 W
    ours = attribute(machine, window, gpu_idle_w=60.0)
    # idle 600 J split between the two processes, the 2,400 J above idle by the run's 75% of the SMs
    assert ours.gpu_kwh * 3.6e6 == pytest.approx(600 / 2 + 2400 * 0.75)
    assert "share of its SM utilisation: 75%" in contention(window)
    unknown = Window(duration_s=10.0, own_cpu_s=1.0, machine_busy_cpu_s=1.0, machine_total_cpu_s=20.0,
                     background_gpu_processes=1)
    assert attribute(machine, unknown, gpu_idle_w=60.0).gpu_kwh == machine.gpu_kwh  # nothing to split by: whole
    assert "counted whole" in contention(unknown)
    # through the probe: NVML's per-process samples, ours and another's
    nvml = FakeNvml(pids={0: [424242]}, power_mw=100_000.0, utilisation={os.getpid(): 60.0, 424242: 20.0})
    probe = SystemProbe(gpus=[0], nvml=nvml)
    start = probe.snapshot()
    for tick in range(0, 30, 10):
        probe.sample_gpu(tick)
    window = Window.between(start, probe.snapshot())
    assert window.gpu_own_sm >= 180 and window.gpu_others_sm >= 60
    assert window.gpu_own_sm / (window.gpu_own_sm + window.gpu_others_sm) == pytest.approx(0.75)


def test_a_mig_instance_says_its_figure_is_the_whole_gpus():
    from tracker.measurement.outcome import QueryReading, RunOutcome
    from tracker.measurement.meter import PhaseReading
    from tracker.recording.provenance import measurement_tags

    nvml = FakeNvml(mig=True)
    nvml.uuids["MIG-1234-abcd"] = 0  # CUDA_VISIBLE_DEVICES names the instance
    probe = SystemProbe(gpus=["MIG-1234-abcd"], nvml=nvml)
    window = Window.between(probe.snapshot(), probe.snapshot())
    reading = PhaseReading("query model", energy=Energy(cpu_kwh=0.0, gpu_kwh=1e-6, ram_kwh=0.0, emissions_kg=1e-7,
                                                      duration_s=1.0), window=window)
    outcome = RunOutcome()
    outcome.queries = [QueryReading(reading, inferences=1)]
    tags = measurement_tags(outcome, expected_inferences=None)
    assert "whole physical GPU's" in tags["tracker.energy.gpu.mig"]


def test_on_a_gpu_each_window_lasts_five_seconds_unless_the_user_says(cli, client, monkeypatch):
    from tracker.runs import session

    assert session.min_window_s("cuda:0", 0.0) == 5.0 and session.min_window_s("cuda", 2.0) == 2.0
    assert session.min_window_s("cpu", 0.0) == 0.0
    # the rule through a real run (on this CPU, with the GPU's minimum forced to 1 s): one input, so
    # each window passes over it again until it lasts 1 s; quality from the first pass only
    monkeypatch.setattr(session, "min_window_s", lambda device, given: 1.0)
    code, _, err = cli("run", "--task", "text-classification", "--n-samples", "1", "--country", "FRA",
                       "--no-progress")
    assert code == 0, err
    [run] = all_runs(client)
    metrics = run.data.metrics
    assert metrics["duration_s"] >= 1.0
    assert metrics["inferences_measured"] > 1 and metrics["energy_kwh_per_1k"] == pytest.approx(
        metrics["energy_kwh"] / metrics["inferences_measured"] * 1000)
    assert 0 <= metrics["quality"] <= 1


def test_the_gpu_counter_check_judges_all_windows_and_names_the_worst():
    from tracker.measurement.attribution import gpu_counter_check

    # as on the H200: one short window caught an extra step of the counter, the others agree
    tag = gpu_counter_check([(1.3e-5, 1.0e-5), (1.0e-5, 1.0e-5), (1.0e-5, 1.0e-5), (math.nan, 1.0e-5)])
    assert "by 10.0% over 3 window(s)" in tag and "at most 30.0% in one" in tag
    assert gpu_counter_check([(math.nan, 1.0)]) is None and gpu_counter_check([]) is None


def test_fake_rapl_folder_is_read_across_a_counter_wrap(tmp_path):
    zone = tmp_path / "intel-rapl:0"
    sub = tmp_path / "intel-rapl:0:0"  # a sub-zone (core) is inside the package: not counted again
    for folder in (zone, sub):
        folder.mkdir()
        (folder / "max_energy_range_uj").write_text("1000000000\n")
    (zone / "energy_uj").write_text("999000000\n")
    (sub / "energy_uj").write_text("5\n")
    probe = SystemProbe(rapl_root=tmp_path)
    before = probe.snapshot()
    (zone / "energy_uj").write_text("500000\n")  # wrapped past its range
    after = probe.snapshot()
    assert set(before.rapl_uj) == {"intel-rapl:0"}
    assert rapl_delta_uj(before.rapl_uj, after.rapl_uj) == 1_500_000
    assert Window.between(before, after).rapl_cpu_kwh == pytest.approx(1.5 / 3.6e6)
    assert SystemProbe(rapl_root=tmp_path / "absent").snapshot().rapl_uj is None


def test_scripted_cpu_times_through_a_real_meter():
    from tracker.measurement.carbon import resolve_location
    from tracker.measurement.meter import EnergyMeter

    meter = EnergyMeter(location=resolve_location("FRA"), probe=ScriptedProbe(1.0, 3.0, 8.0))
    try:
        with meter.phase("query model") as reading:
            sum(range(10000))
    finally:
        meter.close()
    assert reading.window.host_share == 0.25
    rates = meter.rates()
    for part, watts in (("cpu_kwh", rates.cpu_w), ("ram_kwh", rates.ram_w)):
        expected = (1.0 * watts / 2 / 3.6e6 if watts is not None  # modelled: 1 CPU-second at the full-load rate
                    else getattr(reading.machine, part) / 4)  # measured: a quarter of the busy CPU time
        assert getattr(reading.energy, part) == pytest.approx(expected)
    assert "38% of the machine's CPU time" in reading.contended


def test_wait_for_quiet_waits_until_the_time_is_up_on_a_busy_machine():
    from tracker.measurement.carbon import resolve_location
    from tracker.measurement.meter import EnergyMeter

    busy = EnergyMeter(location=resolve_location("FRA"), probe=ScriptedProbe(0.0, 1.0, 2.0))
    quiet = EnergyMeter(location=resolve_location("FRA"), probe=ScriptedProbe(0.0, 0.01, 2.0))
    try:
        waited = busy.wait_for_quiet(0.2, interval_s=0.05)
        calm = quiet.wait_for_quiet(30, interval_s=0.05)
    finally:
        busy.close()
        quiet.close()
    assert not waited.quiet and waited.waited_s >= 0.2 and waited.background_cpu_share == 0.5
    assert calm.quiet and calm.waited_s < 30


def test_a_run_on_a_busy_machine_is_tagged_contended_with_its_share(cli, client, monkeypatch):
    import tracker.measurement.meter

    monkeypatch.setattr(tracker.measurement.meter, "default_probe", lambda gpus: ScriptedProbe(1.0, 1.0, 2.0))
    code, out, err = cli("run", "--task", "text-classification", "--n-samples", "8", "--no-progress")
    assert code == 0, err
    [run] = all_runs(client)
    metrics, tags = run.data.metrics, run.data.tags
    assert tags["tracker.measurement.contended"] == "true"
    assert "50% of the machine's CPU time" in tags["tracker.measurement.contended_reason"]
    assert "CONTENDED" in tags["mlflow.note.content"] and "FALLBACK" in tags["mlflow.note.content"]
    assert "CONTENDED" in out
    assert metrics["background_cpu_share"] == 0.5 and metrics["cpu_time_share"] == 0.5
    assert metrics["own_cpu_seconds"] == 1.0
    if tags["tracker.energy.cpu.method"].startswith("modelled: TDP x (0.1"):
        tdp = float(re.search(r"TDP (\d+(\.\d+)?) W", tags["tracker.energy.cpu.method"]).group(1))
        assert metrics["energy_cpu_kwh"] == pytest.approx(1.0 * tdp / 2 / 3.6e6)  # 1 CPU-s, TDP / 2 CPUs
    else:  # measured (RAPL): the machine's CPU energy split by the run's half of the busy CPU time
        assert metrics["energy_cpu_kwh"] == pytest.approx(metrics["machine_energy_cpu_kwh"] * 0.5)
    assert metrics["energy_kwh"] == pytest.approx(
        metrics["energy_cpu_kwh"] + metrics["energy_ram_kwh"] + metrics["energy_gpu_kwh"])
    assert "per CPU-second" in tags["tracker.energy.attribution"]


@contextlib.contextmanager
def cpu_burner() -> Iterator[int]:
    """A process spinning one core that is not in this process's tree (the shell that starts it
    exits, so it is re-parented): other work, as another user's job would be."""
    started = subprocess.run(["sh", "-c", f"'{sys.executable}' -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
                             capture_output=True, text=True, check=True, timeout=60)
    pid = int(started.stdout.strip())
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_real_cpu_burner_beside_a_real_run_is_flagged(cli, client):
    cpus = len(os.sched_getaffinity(0))  # a pool as wide as the CPUs the run may use: one busy core oversubscribes it
    with cpu_burner():
        code, _, err = cli("run", "--task", "text-classification", "--n-samples", "64", "--min-duration-s", "2",
                           "--threads", str(cpus), "--no-progress")
    assert code == 0, err
    [run] = all_runs(client)
    metrics, tags = run.data.metrics, run.data.tags
    # One core spun by another process beside a pool that wants every CPU: oversubscribed.
    assert tags["tracker.measurement.contended"] == "true", metrics
    assert "oversubscribed" in tags["tracker.measurement.contended_reason"]
    assert metrics["energy_kwh"] < metrics["machine_energy_kwh"]
    assert metrics["windows"] >= 1 and metrics["duration_s"] * metrics["windows"] >= 2 * 0.99


def test_min_duration_measures_windows_until_they_cover_it(cli, client):
    # One tiny inference a window, 1.5 s to cover: several windows however busy the machine (a window of
    # 8 took 2 s here beside a test suite, and covered the 0.5 s asked before alone), and under the 3 s
    # below which the windows are flagged short.
    code, _, err = cli("run", "--task", "text-classification", "--n-samples", "1", "--min-duration-s", "1.5",
                       "--no-progress")
    assert code == 0, err
    [run] = all_runs(client)
    metrics, tags = run.data.metrics, run.data.tags
    assert metrics["windows"] > 1
    assert metrics["duration_s"] * metrics["windows"] >= 1.5
    assert metrics["energy_kwh_ci95_low"] <= metrics["energy_kwh"] <= metrics["energy_kwh_ci95_high"]
    assert tags["tracker.measurement.short_window"] == "true"
    assert "--min-duration-s 10" in tags["tracker.measurement.short_window_reason"]


def test_student_t_interval_pooled_spread_and_ratio_on_known_figures():
    spread = Spread.of([1.0, 2.0, 3.0])
    assert (spread.mean, spread.std, spread.n) == (2.0, 1.0, 3)
    low, high = spread.ci95
    assert (low, high) == pytest.approx((2 - 4.3027 / 3 ** 0.5, 2 + 4.3027 / 3 ** 0.5), rel=1e-4)
    assert math.isnan(Spread.of([5.0]).ci95[0])
    assert math.isnan(Spread.of([1.0, math.nan]).mean)  # a reading that could not be taken stays missing
    both = pooled([Spread.of([1.0, 2.0, 3.0]), Spread.of([5.0, 6.0, 7.0])])
    every = Spread.of([1.0, 2.0, 3.0, 5.0, 6.0, 7.0])
    assert (both.mean, both.std, both.n) == pytest.approx((every.mean, every.std, every.n))
    ratio, low, high = ratio_interval(Spread.of([10.0, 11.0, 9.0]), Spread.of([1.0, 1.1, 0.9]))
    assert ratio == pytest.approx(10.0) and low < 10.0 < high
    assert Spread.of([1.0, 1.1]).overlaps(Spread.of([1.05, 1.15]))
    assert not Spread.of([1.0, 1.01, 0.99]).overlaps(Spread.of([2.0, 2.01, 1.99]))
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and percentile([7.0], 99) == 7.0


def _spin(cpu_s: float) -> None:
    """Plain Python work on this thread until it has used ``cpu_s`` of its own CPU time."""
    until = time.thread_time() + cpu_s
    while time.thread_time() < until:
        sum(i * i for i in range(2000))


def test_windows_open_at_once_in_one_process_share_its_cpu_time_by_thread_or_else_equally():
    import threading

    from tracker.measurement.readings import OpenWindows

    windows = OpenWindows()
    both_open, done = threading.Barrier(2), threading.Barrier(2)
    charged = {}

    def measure(name: str, cpu_s: float) -> None:
        window = windows.open()
        both_open.wait(timeout=60)
        _spin(cpu_s)
        done.wait(timeout=60)  # both still open while either works
        charged[name] = windows.charged(window)
        windows.close(window)

    threads = [threading.Thread(target=measure, args=("small", 0.2)), threading.Thread(target=measure, args=("big", 0.6))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    small, big = charged["small"][0], charged["big"][0]
    # each charged its own thread's work, not the process's: 0.2 and 0.6 CPU-s, not 0.8 each
    assert small == pytest.approx(0.2, abs=0.1) and big == pytest.approx(0.6, abs=0.15)
    assert charged["big"][1] > 0 and charged["big"][2] == 0  # split by thread, said so

    # two windows in one thread (async tasks of a server): the thread cannot tell them apart
    first, second = windows.open(), windows.open()
    _spin(0.3)
    a, b = windows.charged(first), windows.charged(second)
    windows.close(first)
    windows.close(second)
    assert a[0] == pytest.approx(b[0], rel=0.05) and a[0] + b[0] == pytest.approx(0.3, abs=0.1)
    assert a[2] > 0 and a[1] == 0  # split equally, said so


def test_two_measured_blocks_at_once_in_one_process_add_up_to_what_they_cost_apart(client):
    import threading

    import tracker

    def block(name: str, cpu_s: float, gate: threading.Barrier | None, out: dict) -> None:
        with tracker.measure(task="overlap", model=name, country="FRA") as m:
            if gate is not None:
                gate.wait(timeout=120)  # both blocks open before either works
            _spin(cpu_s)
            m.count(1)
            if gate is not None:
                gate.wait(timeout=120)
        out[name] = m

    apart, together = {}, {}
    for name, cpu_s in (("a", 0.8), ("b", 0.4)):
        block(name, cpu_s, None, apart)
    gate = threading.Barrier(2)
    threads = [threading.Thread(target=block, args=(name, cpu_s, gate, together)) for name, cpu_s in (("a", 0.8),
                                                                                                      ("b", 0.4))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    cpu = lambda runs, name: client.get_run(runs[name].run_id).data.metrics["own_cpu_seconds"]
    alone_sum = cpu(apart, "a") + cpu(apart, "b")
    together_sum = cpu(together, "a") + cpu(together, "b")
    # before, each block was charged the whole process: together about 1.6 times apart
    assert together_sum == pytest.approx(alone_sum, rel=0.25), (apart, together)
    assert cpu(together, "a") > cpu(together, "b")  # each its own work
    tags = client.get_run(together["a"].run_id).data.tags
    assert "by each measuring thread's own CPU time" in tags["tracker.measurement.overlap"]
    assert "tracker.measurement.overlap" not in client.get_run(apart["a"].run_id).data.tags
