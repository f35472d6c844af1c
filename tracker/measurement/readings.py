"""Hardware and OS readings taken at the edges of a measured window: the one seam for them.

CodeCarbon is the meter. What it does not tell us is read here, directly, at the same edges: the
CPU time of this process tree and of the whole machine (psutil), the GPUs' own energy counters and
the processes running on them (NVML), and the RAPL package counters when the kernel exposes them.
Tests hand in fakes through the same classes (an NVML module, a RAPL folder, scripted CPU times),
as Zeus's tests do, so the arithmetic downstream is the one real readings go through.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

RAPL_ROOT = Path("/sys/class/powercap")
PROC_ROOT = Path("/proc")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# How often the threads that want a CPU are counted while the probe lives: often enough that a
# window of a few seconds has tens of samples, rarely enough to cost nothing (a /proc read each).
RUNNABLE_SAMPLE_S = 0.1
# How often a GPU's power is read, for integrating where its energy counter is not supported
# (before Volta, some MIG slices): at least 10 Hz, as the issue of codecarbon #1316 asks.
GPU_SAMPLE_S = 0.05
# Per-process GPU utilisation is read every this many power samples (NVML keeps its own history).
UTILISATION_EVERY = 10


# The kernel counts a process's CPU time in /proc in clock ticks (10 ms where USER_HZ is 100).
CLOCK_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative CPU seconds at one instant."""

    own_s: float  # user + system of this process (all its threads) and its children, living or reaped
    machine_busy_s: float  # every logical CPU's non-idle time: all processes and the kernel
    machine_total_s: float  # every logical CPU's time, idle included
    # The part of own_s read in clock ticks (the children's; this process's own time is read from
    # the kernel's nanosecond clock), and how many living children it covers: each of them may hold
    # up to a tick not counted yet.
    children_s: float = 0.0
    living_children: int = 0
    # CPU time of work that is part of the measurement but not charged to it: the load generator
    # that drives a server. Neither the run's nor other work that contends with it.
    companion_s: float = 0.0
    # Threads that wanted a CPU (state R: running or waiting for one), counted every
    # RUNNABLE_SAMPLE_S and summed: the measured tree's, and every other process's. Their means over
    # a window are the demand for CPUs that oversubscription is judged by.
    own_runnable_sum: float = 0.0
    others_runnable_sum: float = 0.0
    runnable_samples: int = 0
    # The CPUs the measured work may use (affinity, capped by a cgroup quota), and the machine's
    # logical CPUs; 0: unknown.
    allowed_cpus: float = 0.0
    logical_cpus: int = 0
    # Of own_s, the seconds this process spent while another measurement's window was open in it
    # too, split by each measuring thread's own CPU time, or equally where that could not tell them
    # apart (see ``OpenWindows``).
    split_by_thread_s: float = 0.0
    split_equally_s: float = 0.0


@dataclass(frozen=True)
class GpuState:
    """NVML's view of the GPUs a run uses, at one instant."""

    energy_mj: dict[str, float | None]  # cumulative energy counter per device; None: not readable
    other_pids: dict[str, frozenset[int]]  # compute processes on each device that are not ours
    reason: str = ""  # why a counter or the process list could not be read
    # Power read every GPU_SAMPLE_S and integrated (trapezoid), summed over the devices, and how
    # many samples: the energy where the counter is not supported.
    integrated_mj: float = 0.0
    power_samples: int = 0
    temperature_c: float | None = None  # the hottest device's, now
    # Streaming-multiprocessor utilisation summed over samples: this tree's processes and others'.
    own_sm: float = 0.0
    others_sm: float = 0.0
    mig: bool = False  # a MIG instance: NVML's counter and power are the whole physical GPU's


@dataclass(frozen=True)
class Snapshot:
    at_s: float  # time.perf_counter()
    cpu: CpuTimes
    gpu: GpuState | None = None
    rapl_uj: dict[str, tuple[int, int]] | None = None  # package domain: (energy_uj, max_energy_range_uj)


class Probe(Protocol):
    """Where readings come from; ``SystemProbe`` in real runs, fakes in tests."""

    logical_cpus: int

    def snapshot(self) -> Snapshot: ...


@dataclass
class SystemProbe:
    """Readings from this machine: psutil, NVML (pynvml) for ``gpus``, RAPL under ``rapl_root``.

    ``gpus`` are the devices as CUDA_VISIBLE_DEVICES names them (an NVML index or a UUID), see
    ``visible_gpu``. ``nvml`` may be a stand-in for the pynvml module.

    ``root_pid`` names another process tree as the one measured (a server's): its CPU time is the
    run's, read in clock ticks, and this process's own CPU time (the load generator's) is kept
    apart as the companion's. The last reading is remembered, so a tree whose root dies mid-window
    keeps the time it used until then (``remember`` reads it between the window's edges).
    """

    gpus: list[int | str] = field(default_factory=list)
    nvml: Any = None
    rapl_root: Path = RAPL_ROOT
    logical_cpus: int = 0
    root_pid: int | None = None
    proc_root: Path = PROC_ROOT
    cgroup_root: Path = CGROUP_ROOT
    allowed_cpus: float = 0.0  # 0: read from affinity and the cgroup quota
    _handles: dict[str, Any] | None = None
    _gpu_reason: str = ""
    _last_seen: dict[int, float] = field(default_factory=dict)  # the measured tree's, by process
    _last_reaped: float = 0.0
    _runnable: list[float] = field(default_factory=lambda: [0.0, 0.0, 0])  # own sum, others' sum, samples
    _sampler: threading.Thread | None = None
    _window: int | None = None  # this probe's window in OPEN_WINDOWS, while one is open
    _gpu_sums: list[float] = field(default_factory=lambda: [0.0, 0, 0.0, 0.0])  # mJ, samples, own SM, others' SM
    _last_power: tuple[float, float] | None = None
    _util_since: int = 0
    _mig: bool = False
    _closed: bool = False
    _pids_seen: set[int] | None = None  # the measured tree's processes, as the runnable count last listed them

    def __post_init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self._root = self._process if self.root_pid is None else psutil.Process(self.root_pid)
        self.logical_cpus = self.logical_cpus or psutil.cpu_count() or 1
        self.allowed_cpus = self.allowed_cpus or allowed_cpus(self.cgroup_root)
        self._lock = threading.Lock()
        if self.gpus:
            self._open_nvml()

    def snapshot(self) -> Snapshot:
        if self._sampler is None:  # from the first reading on, while the probe lives
            self._sampler = threading.Thread(
                target=_sample_while_alive, name="tracker-runnable", daemon=True,
                args=(weakref.ref(self), SystemProbe.sample_runnable, RUNNABLE_SAMPLE_S, "runnable threads"))
            self._sampler.start()
            if self._handles is not None:  # on a thread of its own: a slow /proc scan never delays it
                threading.Thread(target=_sample_while_alive, name="tracker-gpu-power", daemon=True,
                                 args=(weakref.ref(self), SystemProbe.sample_gpu, GPU_SAMPLE_S, "GPU power")).start()
        return Snapshot(at_s=time.perf_counter(), cpu=self._cpu(), gpu=self._gpu(), rapl_uj=self._rapl())

    def close(self) -> None:
        """Stop sampling (the sampling thread ends at its next tick)."""
        self._closed = True
        self.close_window()

    def open_window(self) -> None:
        """A measured window opens in this thread: from now until ``close_window``, this process's
        CPU time is shared with any other window open in it at the same time."""
        if self.root_pid is None:
            self._window = OPEN_WINDOWS.open()

    def close_window(self) -> None:
        if self._window is not None:
            OPEN_WINDOWS.close(self._window)
            self._window = None

    def sample_runnable(self, tick: int = 0) -> None:
        """Count the threads that want a CPU now: the measured tree's, and everyone else's (the
        machine's runnable count less ours, the companion's and the reader's: this thread). The
        tree's processes are listed again every tenth tick (listing reads every process on the
        machine)."""
        reader = threading.get_native_id()
        companion = [] if self.root_pid is None else [self._process.pid]
        if tick % 10 == 0 or self._pids_seen is None:
            self._pids_seen = self.own_pids()
        own = runnable_threads(self._pids_seen, self.proc_root, skip_tid=reader)
        beside = runnable_threads(companion, self.proc_root, skip_tid=reader)
        machine = machine_runnable(self.proc_root)
        if machine is None:
            return
        with self._lock:
            self._runnable[0] += own
            self._runnable[1] += max(machine - own - beside - 1, 0)
            self._runnable[2] += 1

    def _demand(self) -> dict[str, Any]:
        with self._lock:
            own, others, samples = self._runnable
        return {"own_runnable_sum": own, "others_runnable_sum": others, "runnable_samples": int(samples),
                "allowed_cpus": self.allowed_cpus, "logical_cpus": self.logical_cpus}

    def _cpu(self) -> CpuTimes:
        if self.root_pid is not None:
            return self._other_tree_cpu()
        import psutil

        # CLOCK_PROCESS_CPUTIME_ID: every thread of this process, to the nanosecond. psutil's
        # user + system come in clock ticks, so a window of a few ticks could read 0 own time. In a
        # window, this window's part of it: all of it unless other windows overlap it.
        seconds, by_thread, equally = (time.process_time(), 0.0, 0.0) if self._window is None else \
            OPEN_WINDOWS.charged(self._window)
        own = self._process.cpu_times()
        try:
            children, listed = _descendants_cpu_s(self._process)
        except psutil.Error:
            children, listed = {}, 0
        # Reaped children count in this process's own figures, living ones in theirs.
        children_s = own.children_user + own.children_system + sum(children.values())
        busy, total = _machine_cpu_s()
        return CpuTimes(own_s=seconds + children_s, machine_busy_s=busy, machine_total_s=total,
                        children_s=children_s, living_children=listed, split_by_thread_s=by_thread,
                        split_equally_s=equally, **self._demand())

    def _other_tree_cpu(self) -> CpuTimes:
        """The measured tree's CPU time (another process's), this process's own as the companion's."""
        import psutil

        try:
            root = self._root.cpu_times()
            children, _ = _descendants_cpu_s(self._root)
        except psutil.Error:  # the root is gone: the tree's time stands at its last reading
            root = None
        if root is not None:
            # Its children that ended and were reaped count in the root's own figures.
            self._last_seen = {self._root.pid: root.user + root.system, **children}
            self._last_reaped = root.children_user + root.children_system
        own = sum(self._last_seen.values()) + self._last_reaped
        busy, total = _machine_cpu_s()
        # Every second of it is read in clock ticks: the error rule of children applies to all of it.
        return CpuTimes(own_s=own, machine_busy_s=busy, machine_total_s=total, children_s=own,
                        living_children=len(self._last_seen), companion_s=time.process_time(), **self._demand())

    def remember(self) -> None:
        """Read the measured tree's CPU time now, so that if it dies before the window closes, the
        time it used up to here is kept (a process that ended cannot be read)."""
        if self.root_pid is not None:
            self._other_tree_cpu()

    def root_alive(self) -> bool:
        """Whether the measured tree's root process still runs (a zombie does not)."""
        import psutil

        try:
            return self._root.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def own_pids(self) -> set[int]:
        import psutil

        pids = {self._root.pid}
        try:
            pids.update(child.pid for child in self._root.children(recursive=True))
        except psutil.Error:
            pass
        return pids

    # -- NVML ---------------------------------------------------------------------------------

    def _open_nvml(self) -> None:
        nvml = self.nvml
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError:
                self._gpu_reason = "pynvml is not installed"
                return
            self.nvml = nvml
        try:
            nvml.nvmlInit()
            handles = {}
            for gpu in self.gpus:
                name = str(gpu)
                if isinstance(gpu, int) or name.isdigit():
                    handles[name] = nvml.nvmlDeviceGetHandleByIndex(int(name))
                else:
                    handles[name] = nvml.nvmlDeviceGetHandleByUUID(name)
            self._handles = handles
        except Exception as err:  # NVMLError and its many subclasses, or a driver that is absent
            self._gpu_reason = f"NVML could not be opened: {err}"
            return
        self._mig = any(str(g).startswith("MIG-") for g in self.gpus) or any(
            _mig_enabled(nvml, h) for h in handles.values())

    def _gpu(self) -> GpuState | None:
        if not self.gpus:
            return None
        if self._handles is None:
            return GpuState({str(g): None for g in self.gpus}, {}, self._gpu_reason)
        energy: dict[str, float | None] = {}
        others: dict[str, frozenset[int]] = {}
        reasons = []
        ours = self.own_pids()
        for name, handle in self._handles.items():
            try:
                energy[name] = float(self.nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
            except Exception as err:
                energy[name] = None
                reasons.append(f"GPU {name}: NVML energy counter not readable ({err})")
            try:
                running = self.nvml.nvmlDeviceGetComputeRunningProcesses(handle)
                others[name] = frozenset(p.pid for p in running if p.pid not in ours)
            except Exception as err:
                reasons.append(f"GPU {name}: NVML process list not readable ({err})")
        with self._lock:
            integrated, samples, own_sm, others_sm = self._gpu_sums
        return GpuState(energy, others, "; ".join(reasons), integrated, int(samples), self.gpu_temperature_c(),
                        own_sm, others_sm, self._mig)

    def gpu_temperature_c(self) -> float | None:
        """The hottest device's temperature now; None where no sensor can be read."""
        readings = []
        for handle in (self._handles or {}).values():
            try:
                readings.append(float(self.nvml.nvmlDeviceGetTemperature(handle, 0)))  # NVML_TEMPERATURE_GPU
            except Exception:  # noqa: BLE001 - a sensor NVML cannot read: no temperature, not a failure
                pass
        return max(readings) if readings else None

    def gpu_power_w(self) -> float | None:
        """The devices' power now, summed (NVML's power reading); None where unreadable."""
        total = 0.0
        for handle in (self._handles or {}).values():
            try:
                total += self.nvml.nvmlDeviceGetPowerUsage(handle) / 1000
            except Exception:  # noqa: BLE001 - unsupported or gone: no reading
                return None
        return total if self._handles else None

    def sample_gpu(self, tick: int) -> None:
        """One power sample, integrated since the last; every UTILISATION_EVERY ticks, who used the SMs."""
        power, now = self.gpu_power_w(), time.perf_counter()
        with self._lock:
            if power is not None and self._last_power is not None:
                before, at = self._last_power
                self._gpu_sums[0] += (before + power) / 2 * (now - at) * 1000  # W x s = J; in mJ
                self._gpu_sums[1] += 1
            self._last_power = (power, now) if power is not None else None
        if tick % UTILISATION_EVERY == 0:
            own, others = self._utilisation()
            with self._lock:
                self._gpu_sums[2] += own
                self._gpu_sums[3] += others

    def _utilisation(self) -> tuple[float, float]:
        """SM utilisation of this tree's processes and of others, from NVML's samples since the last read."""
        ours, own, others = self._pids_seen or self.own_pids(), 0.0, 0.0
        for handle in (self._handles or {}).values():
            try:
                samples = self.nvml.nvmlDeviceGetProcessUtilization(handle, self._util_since)
            except Exception:  # noqa: BLE001 - no samples yet, or not supported: nothing to split by
                continue
            for sample in samples:
                self._util_since = max(self._util_since, int(getattr(sample, "timeStamp", 0)))
                if sample.pid in ours:
                    own += sample.smUtil
                else:
                    others += sample.smUtil
        return own, others

    # -- RAPL ---------------------------------------------------------------------------------

    def _rapl(self) -> dict[str, tuple[int, int]] | None:
        """Package domains (intel-rapl:N, not their sub-zones), when readable; None otherwise."""
        readings = {}
        try:
            zones = sorted(self.rapl_root.glob("intel-rapl:*"))
        except OSError:
            return None
        for zone in zones:
            if zone.name.count(":") != 1:
                continue
            try:
                energy = int((zone / "energy_uj").read_text())
                limit = int((zone / "max_energy_range_uj").read_text())
            except (OSError, ValueError):
                continue  # unreadable (root only on recent kernels): CodeCarbon models instead
            readings[zone.name] = (energy, limit)
        return readings or None


@dataclass
class _Open:
    thread: int  # threading.get_ident() of the thread that opened the window
    thread_s: float  # that thread's CPU time at the last edge
    charged_s: float = 0.0
    split_by_thread_s: float = 0.0
    split_equally_s: float = 0.0


class OpenWindows:
    """The measured windows open in this process, so that two at once (two ``tracker.measure``
    blocks in two threads, requests of one server) share its CPU time instead of each being
    charged all of it.

    The process's CPU time is one figure for all its threads. At every edge of any window (and
    every reading), the time since the last edge goes to the windows open over it: all of it to a
    window open alone; where several are open, in proportion to the CPU time each window's own
    thread used meanwhile (work a thread does itself, or as the caller of a thread pool), else,
    where they share a thread or none of their threads ran, equally. The parts add up to the
    process's time: nothing is charged twice.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, _Open] = {}
        self._next = 0
        self._process_s = time.process_time()

    def open(self) -> int:
        with self._lock:
            self._advance()
            self._next += 1
            thread = threading.get_ident()
            self._open[self._next] = _Open(thread, _thread_cpu_s(thread) or 0.0)
            return self._next

    def charged(self, window: int) -> tuple[float, float, float]:
        """The window's CPU seconds so far, and how many of them were split by thread and equally."""
        with self._lock:
            self._advance()
            w = self._open[window]
            return w.charged_s, w.split_by_thread_s, w.split_equally_s

    def close(self, window: int) -> None:
        with self._lock:
            self._advance()
            self._open.pop(window, None)

    def _advance(self) -> None:
        now = time.process_time()
        elapsed, self._process_s = now - self._process_s, now
        if not self._open:
            return
        if len(self._open) == 1:
            next(iter(self._open.values())).charged_s += elapsed
            return
        living = {t.ident for t in threading.enumerate()}  # a thread that ended has no clock to read
        used = {}
        for key, w in self._open.items():
            seconds = _thread_cpu_s(w.thread) if w.thread in living else None
            used[key] = max(seconds - w.thread_s, 0.0) if seconds is not None else 0.0
            w.thread_s = seconds if seconds is not None else w.thread_s
        apart = len({w.thread for w in self._open.values()}) == len(self._open) and sum(used.values()) > 0
        for key, w in self._open.items():
            if apart:
                part = elapsed * used[key] / sum(used.values())
                w.split_by_thread_s += part
            else:
                part = elapsed / len(self._open)
                w.split_equally_s += part
            w.charged_s += part


def _thread_cpu_s(ident: int) -> float | None:
    """A living thread's own CPU seconds (its CPU-time clock), None where they cannot be read."""
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (AttributeError, OSError, OverflowError, ValueError):
        return None


OPEN_WINDOWS = OpenWindows()


def _sample_while_alive(probe_ref: Any, sample: Any, interval_s: float, what: str) -> None:
    """A probe's sampling thread: ``sample(probe, tick)`` every ``interval_s`` until the probe is
    gone or closed. A sample lost is a sample fewer, never a failed run."""
    tick = 0
    while (probe := probe_ref()) is not None and not probe._closed:
        try:
            sample(probe, tick)
        except Exception as err:
            logger.debug("%s not sampled: %s", what, err)
        del probe
        tick += 1
        time.sleep(interval_s)


def _mig_enabled(nvml: Any, handle: Any) -> bool:
    try:
        current, _ = nvml.nvmlDeviceGetMigMode(handle)
        return bool(current)
    except Exception:  # noqa: BLE001 - no MIG support: not a MIG device
        return False


def runnable_threads(pids: Iterable[int], proc_root: Path = PROC_ROOT, skip_tid: int | None = None) -> int:
    """How many threads of these processes are in state R (running, or ready and waiting for a CPU)."""
    count = 0
    for pid in pids:
        try:
            tasks = list((proc_root / str(pid) / "task").iterdir())
        except OSError:
            continue
        for task in tasks:
            if task.name == str(skip_tid):
                continue
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue
            count += stat[stat.rindex(")") + 2:][:1] == "R"  # after the name, which may hold spaces
    return count


def machine_runnable(proc_root: Path = PROC_ROOT) -> int | None:
    """The machine's threads in state R now (the fourth field of /proc/loadavg); None: unreadable."""
    try:
        return int((proc_root / "loadavg").read_text().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None


def allowed_cpus(cgroup_root: Path = CGROUP_ROOT) -> float:
    """The CPUs this process may use: its affinity, capped by a cgroup CPU quota (v2 cpu.max, or v1
    cfs_quota_us / cfs_period_us), as a container's limit is."""
    try:
        cpus = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cpus = float(os.cpu_count() or 1)
    quota = None
    try:
        limit, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        quota = None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        for folder in (cgroup_root / "cpu", cgroup_root / "cpu,cpuacct"):
            try:
                limit = int((folder / "cpu.cfs_quota_us").read_text())
                quota = limit / int((folder / "cpu.cfs_period_us").read_text()) if limit > 0 else None
                break
            except (OSError, ValueError):
                continue
    return min(cpus, quota) if quota else cpus


def _descendants_cpu_s(process: Any) -> tuple[dict[int, float], int]:
    """The user + system seconds of each living descendant of a psutil process, by pid, and how
    many were listed. A child that ends between being listed and being read has no seconds here:
    once reaped, its time is in its parent's children figures. Raises psutil.Error where the
    process itself is gone."""
    import psutil

    seconds = {}
    listed = process.children(recursive=True)
    for child in listed:
        try:
            times = child.cpu_times()
            seconds[child.pid] = times.user + times.system
        except psutil.Error:
            pass
    return seconds, len(listed)


def _machine_cpu_s() -> tuple[float, float]:
    """Every logical CPU's busy and total seconds so far."""
    import psutil

    machine = psutil.cpu_times()
    # As CodeCarbon's load meter: guest time is already in user and nice time on Linux.
    total = sum(machine) - getattr(machine, "guest", 0) - getattr(machine, "guest_nice", 0)
    return total - machine.idle - getattr(machine, "iowait", 0), total


def visible_gpu(device: str, environ: dict[str, str] | None = None) -> int | str | None:
    """The physical GPU behind a torch device, as NVML and CodeCarbon name it; None off the GPU.

    Under CUDA_VISIBLE_DEVICES=2,3 torch's cuda:1 is the machine's GPU 3; the variable may also
    name GPUs by UUID (GPU-..., MIG-...), which NVML resolves by UUID.
    """
    if not device.startswith("cuda"):
        return None
    env = os.environ if environ is None else environ
    index = int(device.partition(":")[2] or 0)
    visible = [v.strip() for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if not visible:
        return index
    if index >= len(visible):
        raise IndexError(f"{device} is not among CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}")
    chosen = visible[index]
    return int(chosen) if chosen.isdigit() else chosen


def rapl_delta_uj(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> float:
    """Energy between two readings of the package counters, across a wrap of any counter."""
    total = 0.0
    for zone, (start, _) in before.items():
        if zone not in after:
            continue
        end, limit = after[zone]
        total += end - start if end >= start else end + limit - start
    return total
