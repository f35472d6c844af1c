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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

RAPL_ROOT = Path("/sys/class/powercap")


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


@dataclass(frozen=True)
class GpuState:
    """NVML's view of the GPUs a run uses, at one instant."""

    energy_mj: dict[str, float | None]  # cumulative energy counter per device; None: not readable
    other_pids: dict[str, frozenset[int]]  # compute processes on each device that are not ours
    reason: str = ""  # why a counter or the process list could not be read


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
    _handles: dict[str, Any] | None = None
    _gpu_reason: str = ""
    _last_seen: dict[int, float] = field(default_factory=dict)  # the measured tree's, by process
    _last_reaped: float = 0.0

    def __post_init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self._root = self._process if self.root_pid is None else psutil.Process(self.root_pid)
        self.logical_cpus = self.logical_cpus or psutil.cpu_count() or 1
        if self.gpus:
            self._open_nvml()

    def snapshot(self) -> Snapshot:
        return Snapshot(at_s=time.perf_counter(), cpu=self._cpu(), gpu=self._gpu(), rapl_uj=self._rapl())

    def _cpu(self) -> CpuTimes:
        if self.root_pid is not None:
            return self._other_tree_cpu()
        import psutil

        # CLOCK_PROCESS_CPUTIME_ID: every thread of this process, to the nanosecond. psutil's
        # user + system come in clock ticks, so a window of a few ticks could read 0 own time.
        seconds = time.process_time()
        own = self._process.cpu_times()
        try:
            children, listed = _descendants_cpu_s(self._process)
        except psutil.Error:
            children, listed = {}, 0
        # Reaped children count in this process's own figures, living ones in theirs.
        children_s = own.children_user + own.children_system + sum(children.values())
        busy, total = _machine_cpu_s()
        return CpuTimes(own_s=seconds + children_s, machine_busy_s=busy, machine_total_s=total,
                        children_s=children_s, living_children=listed)

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
                        living_children=len(self._last_seen), companion_s=time.process_time())

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
        return GpuState(energy, others, "; ".join(reasons))

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
