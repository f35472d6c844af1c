"""Which part of what the meter saw belongs to this run, and whether other work interfered.

The meter (CodeCarbon) reports the machine: the CPU and RAM energy of a window, whatever ran in
it. Our figures (``energy_kwh`` and everything derived from it) are the part attributed to the run,
from this process tree's CPU seconds read by psutil at the window's edges:

- A *modelled* component (CPU without RAPL: CodeCarbon's load curve over a TDP; RAM: its rule of
  thumb) has no measurement to split, so the model is applied to the run's own CPU time: each
  CPU-second is charged the model's full-load power per logical CPU (TDP / CPUs for the CPU, which
  is CodeCarbon's own process-mode formula; the machine's RAM power / CPUs for RAM). This depends
  on the run's work, not on what else runs: other processes neither stretch it nor share it.
- A *measured* component (RAPL counters) is split by the process tree's share of the machine's
  busy CPU time, the way Scaphandre and Kepler split a host's measured energy.
- GPU: the devices' energy counters, whole: a device counter cannot be split, so other processes
  on the run's GPUs are counted and make the window contended instead.
- Emissions follow the attributed energy at the window's carbon intensity.

A window must see the run's CPU time to charge it. This process's own time comes from the kernel's
nanosecond clock, but its children's come in clock ticks (10 ms): where children's time is in a
window and the run's CPU time is under ``MIN_RESOLVED_TICKS`` ticks, or where a window that took
time shows none at all, the CPU and RAM parts are NaN with the reason (``unresolved``), never a 0.

Two consequences to know. CodeCarbon's machine curve is convex (0.1 + 0.9 L^3), so a run that
leaves cores idle is charged more than the curve gives the whole machine at that load: attributed
can exceed machine energy. And CPU time includes the spin-waiting of thread pools (OpenMP's
barriers), which grows when another process takes the cores the pool expects: beside such work
the attributed figure still rises, less than the machine's; the contended flag marks those windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tracker.measurement.energy import KWH_TO_J, Energy
from tracker.measurement.readings import CLOCK_TICK_S, GpuState, Snapshot, rapl_delta_uj

# Other processes using at least this share of the machine's CPU time make a window contended, where
# the threads that want a CPU could not be counted (no /proc) or where measured CPU energy (RAPL) is
# split by share (others' load changes the package power being split). Elsewhere oversubscription
# is the test: one busy core is under a tenth of a 16-core machine, yet it takes a core from a
# thread pool sized to the machine, whose threads then wait at their barriers, spinning.
CONTENDED_BACKGROUND_SHARE = 0.10
# Demand for CPUs above the CPUs the run may use by more than this many makes a window contended:
# half a CPU on average, above what daemons and the readers themselves ask for.
OVERSUBSCRIPTION_MARGIN_CPUS = 0.5
# ... and at least this many CPU-seconds: the kernel counts in 10 ms ticks, so over a window of a
# few ticks one tick of a daemon's work would read as a large share.
CONTENDED_MIN_BACKGROUND_S = 0.05
# A CPU time read in clock ticks is trusted from this many ticks on: each edge may miss up to a tick
# per process, so below it a third or more of the time could be unseen.
MIN_RESOLVED_TICKS = 3
UJ_PER_KWH = 3.6e12
MJ_PER_KWH = 3.6e9


@dataclass(frozen=True)
class FullLoadRates:
    """The meter's modelled power at full load, charged per CPU-second; None: measured, split by share."""

    cpu_w: float | None
    ram_w: float | None
    logical_cpus: int

    def charged_kwh(self, own_cpu_s: float, watts: float) -> float:
        """A modelled component's charge for ``own_cpu_s`` CPU-seconds: its full-load power per
        logical CPU, per CPU-second."""
        return own_cpu_s * watts / self.logical_cpus / KWH_TO_J

    def describe(self) -> str:
        def part(name: str, watts: float | None) -> str:
            if watts is None:
                return (f"{name}: measured, split by this process tree's share of the machine's busy CPU time "
                        "(Scaphandre's rule)")
            return (f"{name}: modelled, so charged {watts / self.logical_cpus:.3g} W per CPU-second of this "
                    f"process tree ({watts:g} W at full load / {self.logical_cpus} logical CPUs)")
        return (f"{part('cpu', self.cpu_w)}; {part('ram', self.ram_w)}; gpu: the run's devices' energy "
                "counters, whole; CPU seconds from psutil at the window's edges")


@dataclass(frozen=True)
class Window:
    """What the probe saw between the two edges of one measured window."""

    duration_s: float
    own_cpu_s: float
    machine_busy_cpu_s: float
    machine_total_cpu_s: float
    background_gpu_processes: int | None = None  # None: no GPU, or the list was not readable
    gpu_counter_kwh: float | None = None  # NVML's own counter over the window, when readable
    gpu_reason: str = ""
    rapl_cpu_kwh: float | None = None  # RAPL package counters over the window, when readable
    # How far own_cpu_s may be off: a clock tick per edge where children's times (read in ticks) are
    # in it, 0 where it comes from the nanosecond clock alone.
    own_cpu_error_s: float = 0.0
    # CPU time of the measurement's companion (a load generator): neither charged nor background.
    companion_cpu_s: float = 0.0
    # Threads that wanted a CPU, summed over the window's samples (see readings.CpuTimes), and the
    # CPUs the run may use and the machine has (0: unknown).
    own_runnable_sum: float = 0.0
    others_runnable_sum: float = 0.0
    runnable_samples: int = 0
    allowed_cpus: float = 0.0
    logical_cpus: int = 0
    # Of own_cpu_s, what was shared with other windows open in this process at the same time.
    split_by_thread_cpu_s: float = 0.0
    split_equally_cpu_s: float = 0.0
    # NVML's power integrated over the window (None: fewer than two samples in it), and how many
    # samples; the hottest GPU's temperature at both edges; SM utilisation summed over samples, the
    # run's and other processes'; whether the GPU is a MIG instance.
    gpu_integrated_kwh: float | None = None
    gpu_power_samples: int = 0
    gpu_temperature_start_c: float | None = None
    gpu_temperature_end_c: float | None = None
    gpu_own_sm: float = 0.0
    gpu_others_sm: float = 0.0
    gpu_mig: bool = False

    @classmethod
    def between(cls, start: Snapshot, end: Snapshot) -> Window:
        gpu_processes, gpu_kwh, gpu_reason = _gpu_between(start.gpu, end.gpu)
        rapl = (rapl_delta_uj(start.rapl_uj, end.rapl_uj) / UJ_PER_KWH
                if start.rapl_uj and end.rapl_uj else None)
        ticked = end.cpu.children_s != start.cpu.children_s or end.cpu.living_children or start.cpu.living_children
        return cls(duration_s=end.at_s - start.at_s,
                   own_cpu_s=max(end.cpu.own_s - start.cpu.own_s, 0.0),
                   machine_busy_cpu_s=max(end.cpu.machine_busy_s - start.cpu.machine_busy_s, 0.0),
                   machine_total_cpu_s=max(end.cpu.machine_total_s - start.cpu.machine_total_s, 0.0),
                   background_gpu_processes=gpu_processes, gpu_counter_kwh=gpu_kwh, gpu_reason=gpu_reason,
                   rapl_cpu_kwh=rapl,
                   own_cpu_error_s=(CLOCK_TICK_S * max(start.cpu.living_children, end.cpu.living_children, 1)
                                    if ticked else 0.0),
                   companion_cpu_s=max(end.cpu.companion_s - start.cpu.companion_s, 0.0),
                   own_runnable_sum=end.cpu.own_runnable_sum - start.cpu.own_runnable_sum,
                   others_runnable_sum=end.cpu.others_runnable_sum - start.cpu.others_runnable_sum,
                   runnable_samples=end.cpu.runnable_samples - start.cpu.runnable_samples,
                   allowed_cpus=end.cpu.allowed_cpus, logical_cpus=end.cpu.logical_cpus,
                   split_by_thread_cpu_s=end.cpu.split_by_thread_s - start.cpu.split_by_thread_s,
                   split_equally_cpu_s=end.cpu.split_equally_s - start.cpu.split_equally_s,
                   **_gpu_samples_between(start.gpu, end.gpu))

    def __add__(self, other: Window) -> Window:
        """Several windows as one: their times and counters summed, other GPU processes at most."""
        def both(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else a + b

        gpu = [w.background_gpu_processes for w in (self, other) if w.background_gpu_processes is not None]
        return Window(duration_s=self.duration_s + other.duration_s, own_cpu_s=self.own_cpu_s + other.own_cpu_s,
                      machine_busy_cpu_s=self.machine_busy_cpu_s + other.machine_busy_cpu_s,
                      machine_total_cpu_s=self.machine_total_cpu_s + other.machine_total_cpu_s,
                      background_gpu_processes=max(gpu) if gpu else None,
                      gpu_counter_kwh=both(self.gpu_counter_kwh, other.gpu_counter_kwh),
                      gpu_reason="; ".join(filter(None, {self.gpu_reason, other.gpu_reason})),
                      rapl_cpu_kwh=both(self.rapl_cpu_kwh, other.rapl_cpu_kwh),
                      own_cpu_error_s=self.own_cpu_error_s + other.own_cpu_error_s,
                      companion_cpu_s=self.companion_cpu_s + other.companion_cpu_s,
                      own_runnable_sum=self.own_runnable_sum + other.own_runnable_sum,
                      others_runnable_sum=self.others_runnable_sum + other.others_runnable_sum,
                      runnable_samples=self.runnable_samples + other.runnable_samples,
                      allowed_cpus=max(self.allowed_cpus, other.allowed_cpus),
                      logical_cpus=max(self.logical_cpus, other.logical_cpus),
                      split_by_thread_cpu_s=self.split_by_thread_cpu_s + other.split_by_thread_cpu_s,
                      split_equally_cpu_s=self.split_equally_cpu_s + other.split_equally_cpu_s,
                      gpu_integrated_kwh=both(self.gpu_integrated_kwh, other.gpu_integrated_kwh),
                      gpu_power_samples=self.gpu_power_samples + other.gpu_power_samples,
                      gpu_temperature_start_c=self.gpu_temperature_start_c,
                      gpu_temperature_end_c=other.gpu_temperature_end_c,
                      gpu_own_sm=self.gpu_own_sm + other.gpu_own_sm,
                      gpu_others_sm=self.gpu_others_sm + other.gpu_others_sm, gpu_mig=self.gpu_mig or other.gpu_mig)

    @property
    def unresolved(self) -> str | None:
        """Why this window's own CPU time is too coarse to charge, in words; None when it is not."""
        if self.own_cpu_s <= 0 < self.duration_s:
            return (f"the window lasted {self.duration_s * 1000:.1f} ms but read no CPU time of this run: the "
                    "CPU and RAM energy cannot be attributed")
        if self.own_cpu_s < MIN_RESOLVED_TICKS * self.own_cpu_error_s:
            return (f"the window read {self.own_cpu_s * 1000:.1f} ms of CPU time, partly from child processes "
                    f"counted in clock ticks of {CLOCK_TICK_S * 1000:g} ms, so it may be off by "
                    f"{self.own_cpu_error_s * 1000:g} ms: too coarse to attribute CPU and RAM energy; measure "
                    "a longer window")
        return None

    @property
    def host_share(self) -> float:
        """This process tree's share of the CPU time every process used, 0 to 1.

        The kernel counts in clock ticks, so over a very short window own time can exceed the
        machine's by a tick: clipped. A window in which nothing ran at all is wholly ours.
        """
        if self.machine_busy_cpu_s <= 0:
            return 1.0
        return min(self.own_cpu_s / self.machine_busy_cpu_s, 1.0)

    @property
    def own_runnable(self) -> float:
        """The run's threads that wanted a CPU, on average over the window; NaN: not counted."""
        return self.own_runnable_sum / self.runnable_samples if self.runnable_samples else math.nan

    @property
    def others_demand_cpus(self) -> float:
        """What other processes asked of the CPUs the run may use, on average: their runnable
        threads or the CPU time they used, whichever is more, spread over the machine's CPUs as the
        scheduler spreads work not pinned; NaN: not counted."""
        if not self.runnable_samples or self.duration_s <= 0:
            return math.nan
        others = max(self.others_runnable_sum / self.runnable_samples, self.background_cpu_s / self.duration_s)
        if self.logical_cpus and self.allowed_cpus:
            others *= min(self.allowed_cpus / self.logical_cpus, 1.0)
        return others

    @property
    def background_cpu_s(self) -> float:
        return max(self.machine_busy_cpu_s - self.own_cpu_s - self.companion_cpu_s, 0.0)

    @property
    def background_cpu_share(self) -> float:
        """The share of the machine's CPU capacity (all logical CPUs) others used, 0 to 1."""
        if self.machine_total_cpu_s <= 0:
            return 0.0
        return min(self.background_cpu_s / self.machine_total_cpu_s, 1.0)


def attribute(machine: Energy, window: Window, rates: FullLoadRates | None = None,
              gpu_idle_w: float | None = None) -> Energy:
    """The run's part of the meter's ``machine`` energy over ``window`` (see the module's rules)."""
    share = window.host_share

    def host(seen: float, watts: float | None) -> float:
        if window.unresolved:  # neither charge nor share can be read off so coarse a CPU time
            return math.nan
        if watts is None or math.isnan(seen):  # measured (or missing): split what was seen
            return seen * share
        return rates.charged_kwh(window.own_cpu_s, watts)

    cpu = host(machine.cpu_kwh, rates.cpu_w if rates else None)
    ram = host(machine.ram_kwh, rates.ram_w if rates else None)
    gpu = shared_gpu_kwh(machine.gpu_kwh, window, gpu_idle_w)
    total = cpu + ram + gpu
    if machine.total_kwh > 0:
        emissions = machine.emissions_kg * total / machine.total_kwh
    else:
        emissions = machine.emissions_kg * share
    return Energy(cpu_kwh=cpu, gpu_kwh=gpu, ram_kwh=ram, emissions_kg=emissions,
                  duration_s=machine.duration_s)


def gpu_utilisation_share(window: Window) -> float | None:
    """The run's share of the GPU's SM utilisation over the window, where others used it too and
    NVML's per-process samples said how much; None otherwise."""
    total = window.gpu_own_sm + window.gpu_others_sm
    if not window.background_gpu_processes or total <= 0:
        return None
    return window.gpu_own_sm / total


def shared_gpu_kwh(gpu_kwh: float, window: Window, idle_w: float | None) -> float:
    """A GPU's energy as this run's part: whole where the run had it alone; where other processes
    computed on it too, the idle part split evenly among the processes and the active part by the
    run's share of SM utilisation (Kepler's rule), where both are known; else whole (and the window
    is flagged contended either way)."""
    share = gpu_utilisation_share(window)
    if share is None or idle_w is None or math.isnan(gpu_kwh):
        return gpu_kwh
    idle_kwh = min(idle_w * window.duration_s / KWH_TO_J, gpu_kwh)
    return idle_kwh / (1 + window.background_gpu_processes) + (gpu_kwh - idle_kwh) * share


def estimate(window: Window, rates: FullLoadRates) -> float:
    """The attributed kWh of a window still open, from CPU time and counters alone (CodeCarbon
    reports only when a window closes): what a run killed mid-window keeps. NaN where a measured
    component has no counter we can read, or where the window's CPU time is too coarse."""
    if window.unresolved:
        return math.nan
    cpu = (rates.charged_kwh(window.own_cpu_s, rates.cpu_w) if rates.cpu_w is not None
           else window.rapl_cpu_kwh * window.host_share if window.rapl_cpu_kwh is not None else math.nan)
    ram = rates.charged_kwh(window.own_cpu_s, rates.ram_w) if rates.ram_w is not None else math.nan
    if window.gpu_counter_kwh is not None:
        gpu = window.gpu_counter_kwh
    elif window.gpu_integrated_kwh is not None:
        gpu = window.gpu_integrated_kwh
    else:
        gpu = math.nan if window.gpu_reason else 0.0
    return cpu + ram + gpu


def contention(window: Window) -> str | None:
    """Why the window was contended, in words; None when the run had its resources to itself."""
    reasons = []
    oversubscribed = oversubscription(window)
    if oversubscribed:
        reasons.append(oversubscribed)
    share_rule = math.isnan(window.own_runnable) or not window.allowed_cpus or window.rapl_cpu_kwh is not None
    if (share_rule and window.background_cpu_share >= CONTENDED_BACKGROUND_SHARE
            and window.background_cpu_s >= CONTENDED_MIN_BACKGROUND_S):
        reasons.append(f"other processes used {window.background_cpu_share:.0%} of the machine's CPU time "
                       f"({window.background_cpu_s:.1f} CPU-s against this run's {window.own_cpu_s:.1f} "
                       f"in {window.duration_s:.1f} s)")
    if window.background_gpu_processes:
        share = gpu_utilisation_share(window)
        reasons.append(f"{window.background_gpu_processes} other process(es) computed on this run's GPU"
                       + (f" (this run's share of its SM utilisation: {share:.0%}; its idle power split evenly, the "
                          "rest by that share)" if share is not None else
                          " (no per-process utilisation to split by: the GPU's energy is counted whole)"))
    return "; ".join(reasons) or None


def oversubscription(window: Window) -> str | None:
    """Why other processes' demand did not fit beside the run's on the CPUs it may use, in words;
    None when it did, or when threads could not be counted.

    The run's own threads are counted up to the CPUs it may use: a run whose threads outnumber its
    CPUs alone (a thread pool beside a tokenizer's) pays for that itself, measured the same way on
    every try; it is other work that makes a figure unrepeatable."""
    own, others, allowed = window.own_runnable, window.others_demand_cpus, window.allowed_cpus
    if math.isnan(own) or math.isnan(others) or not allowed:
        return None
    if others < OVERSUBSCRIPTION_MARGIN_CPUS or window.background_cpu_s < CONTENDED_MIN_BACKGROUND_S:
        return None
    if _fits(own, others, allowed):
        return None
    return (f"CPUs oversubscribed: this run's threads ({own:.1f} wanting a CPU on average) and other "
            f"processes ({others:.1f} CPUs' worth) asked for {own + others:.1f} of the {allowed:g} CPUs it may "
            f"use (others used {window.background_cpu_s:.1f} CPU-s in {window.duration_s:.1f} s)")


def quiet_enough(window: Window, own_threads: float) -> bool:
    """Whether a run of ``own_threads`` threads would have had its CPUs to itself in this interval
    (the oversubscription rule, or the share rule where threads could not be counted)."""
    others = window.others_demand_cpus
    if math.isnan(others) or not window.allowed_cpus:
        return window.background_cpu_share < CONTENDED_BACKGROUND_SHARE
    return _fits(own_threads, others, window.allowed_cpus)


def _fits(own: float, others: float, allowed: float) -> bool:
    """Whether the run's threads (counted up to its CPUs) and others' demand fit the CPUs it may use,
    give or take the margin: the one test behind both the flag and the wait for quiet."""
    return min(own, allowed) + others <= allowed + OVERSUBSCRIPTION_MARGIN_CPUS


def overlap(window: Window) -> str | None:
    """How this process's CPU time was shared with other measurements open in it at the same time,
    in words; None when the window was open alone."""
    shared = window.split_by_thread_cpu_s + window.split_equally_cpu_s
    if shared <= 0:
        return None
    parts = []
    if window.split_by_thread_cpu_s > 0:
        parts.append(f"{window.split_by_thread_cpu_s:.2f} CPU-s by each measuring thread's own CPU time")
    if window.split_equally_cpu_s > 0:
        parts.append(f"{window.split_equally_cpu_s:.2f} CPU-s equally (the measurements shared a thread, or their "
                     "threads did not run: the split is by overlap, not by work)")
    return ("other measurements were open in this process at the same time: of its CPU time while they "
            f"overlapped, this run was charged {' and '.join(parts)}; the parts of all of them add up to the "
            "process's time, none charged twice")


def gpu_unavailable(window: Window) -> bool:
    """NVML was asked and its energy counter could not be read: the meter's GPU figure is missing."""
    return window.gpu_counter_kwh is None and bool(window.gpu_reason)


def gpu_power_rate_hz(window: Window) -> float:
    return window.gpu_power_samples / window.duration_s if window.duration_s > 0 else math.nan


def _gpu_samples_between(start: GpuState | None, end: GpuState | None) -> dict:
    """The window's GPU power samples, temperatures and utilisation, from two readings."""
    if start is None or end is None:
        return {}
    samples = end.power_samples - start.power_samples
    return {"gpu_integrated_kwh": (end.integrated_mj - start.integrated_mj) / MJ_PER_KWH if samples >= 2 else None,
            "gpu_power_samples": samples, "gpu_temperature_start_c": start.temperature_c,
            "gpu_temperature_end_c": end.temperature_c, "gpu_own_sm": end.own_sm - start.own_sm,
            "gpu_others_sm": end.others_sm - start.others_sm, "gpu_mig": end.mig}


def relative_difference(ours: float, theirs: float) -> float:
    if theirs == 0 or math.isnan(theirs) or math.isnan(ours):
        return math.nan
    return abs(ours - theirs) / abs(theirs)


def gpu_counter_check(pairs: list[tuple[float, float]]) -> str | None:
    """CodeCarbon's GPU kWh against NVML's counter read by us at the same windows' edges, as a tag.

    ``pairs`` holds (CodeCarbon, counter) per window. CodeCarbon's reads enclose ours by a few
    milliseconds, and the counter advances in steps (about every 0.1 s on an H200, measured with
    benchmarks/gpu_check.py), so a window under a second can differ by a step: the figure over
    all windows is the one to judge, the worst window says how coarse a single one is.
    """
    pairs = [(ours, theirs) for ours, theirs in pairs if not (math.isnan(ours) or math.isnan(theirs))]
    if not pairs:
        return None
    total = relative_difference(sum(p[0] for p in pairs), sum(p[1] for p in pairs))
    worst = max(relative_difference(*p) for p in pairs)
    return (f"CodeCarbon's GPU energy differs from NVML's counter read at the window edges by {total:.1%} "
            f"over {len(pairs)} window(s), by at most {worst:.1%} in one (the counter advances in steps: "
            "windows under a second are coarse)")


def _gpu_between(start: GpuState | None, end: GpuState | None) -> tuple[int | None, float | None, str]:
    if start is None or end is None:
        return None, None, ""
    reason = end.reason or start.reason
    others: set[int] = set()
    for pids in (*start.other_pids.values(), *end.other_pids.values()):
        others |= pids
    listed = bool(end.other_pids) or bool(start.other_pids)
    energies = [(start.energy_mj.get(d), end.energy_mj.get(d)) for d in end.energy_mj]
    if not energies or any(a is None or b is None for a, b in energies):
        return (len(others) if listed else None), None, reason or "NVML energy counter not readable"
    return (len(others) if listed else None), sum(b - a for a, b in energies) / MJ_PER_KWH, reason
