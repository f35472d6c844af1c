"""A load level's figures from its request records and its measured windows.

Energy is what the windows measured of the server's process tree (attributed) and of the machine.
It is divided by what the server did inside the windows: output tokens that *arrived* in them
(each chunk timed), requests that *ended* in them, input tokens of requests whose first token came
in them (their prefill ran there). In a steady state those counts are the server's rates over the
window, so a per-request or per-token figure is the energy of the work done, not of the requests
that happen to start and end inside. Latencies are those of every request sent inside the windows,
whenever it ended. Each window gives one value per figure; the run logs their mean, ``_std`` and a
95% interval for the per-token energy.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from tracker.measurement.energy import KWH_TO_J, Energy
from tracker.measurement.stats import Spread, percentile
from tracker.serving.loadgen import RequestRecord

PERCENTILES = (50, 90, 99)
# Window figures a level logs summed over its windows; every other one is their mean.
WINDOW_TOTALS = frozenset({"energy_kwh", "energy_cpu_kwh", "energy_gpu_kwh", "energy_ram_kwh", "emissions_kg",
                           "machine_energy_kwh", "duration_s", "output_tokens", "input_tokens", "requests_ended",
                           "server_cpu_s", "client_cpu_s"})


@dataclass(frozen=True)
class WindowFigures:
    """One measured window of one level."""

    start_s: float
    end_s: float
    energy: Energy  # attributed to the server's process tree
    machine: Energy  # everything the meter saw
    server_cpu_s: float
    client_cpu_s: float
    machine_busy_cpu_s: float
    contended: str | None = None
    reason: str = ""  # why an energy figure is NaN, when one is

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def window_counts(records: Sequence[RequestRecord], window: WindowFigures) -> dict[str, float]:
    """What the server did inside one window, and the energy per unit of it."""
    start, end = window.start_s, window.end_s
    ok = [r for r in records if r.ok]
    output_tokens = sum(r.tokens_between(start, end) for r in ok)
    ended = [r for r in ok if r.done_s is not None and start <= r.done_s < end]
    prefilled = [r for r in ok if r.first_token_s is not None and start <= r.first_token_s < end]
    input_tokens = sum(r.input_tokens or 0 for r in prefilled)
    joules = window.energy.total_kwh * KWH_TO_J
    grams = window.energy.emissions_kg * 1000

    def per(value: float, count: float) -> float:
        return value / count if count > 0 else math.nan

    return {
        "energy_kwh": window.energy.total_kwh,
        "energy_cpu_kwh": window.energy.cpu_kwh,
        "energy_gpu_kwh": window.energy.gpu_kwh,
        "energy_ram_kwh": window.energy.ram_kwh,
        "emissions_kg": window.energy.emissions_kg,
        "machine_energy_kwh": window.machine.total_kwh,
        "duration_s": window.duration_s,
        "output_tokens": output_tokens,
        "input_tokens": float(input_tokens) if all(r.input_tokens is not None for r in prefilled) else math.nan,
        "requests_ended": float(len(ended)),
        "energy_j_per_request": per(joules, len(ended)),
        "energy_j_per_output_token": per(joules, output_tokens),
        "energy_j_per_input_token": per(joules, input_tokens),
        "emissions_g_per_output_token": per(grams, output_tokens),
        "emissions_g_per_request": per(grams, len(ended)),
        "output_tokens_per_s": per(output_tokens, window.duration_s),
        "requests_per_s": per(len(ended), window.duration_s),
        "server_attributed_share": per(window.energy.total_kwh, window.machine.total_kwh),
        "client_cpu_share": per(window.client_cpu_s, window.machine_busy_cpu_s),
        "server_cpu_s": window.server_cpu_s,
        "client_cpu_s": window.client_cpu_s,
        "mean_in_flight": per(_busy_time(records, start, end), window.duration_s),
    }


def _busy_time(records: Sequence[RequestRecord], start: float, end: float) -> float:
    """Request-seconds in flight inside [start, end): its mean over the window is the load really held."""
    total = 0.0
    for r in records:
        done = r.done_s if r.done_s is not None else end
        total += max(0.0, min(done, end) - max(r.sent_s, start))
    return total


def level_figures(records: Sequence[RequestRecord], windows: Sequence[WindowFigures], *,
                  slo_ttft_ms: float | None, slo_tpot_ms: float | None) -> dict[str, float]:
    """The level's metrics: each window's figures averaged (``_std`` beside them), latency
    percentiles, failures by kind, goodput under the latency targets."""
    per_window = [window_counts(records, w) for w in windows]
    metrics: dict[str, float] = {}
    for name in per_window[0] if per_window else ():
        values = [w[name] for w in per_window]
        if name in WINDOW_TOTALS:
            metrics[name] = sum(values)
            continue
        spread = Spread.of(values)
        metrics[name] = spread.mean
        if len(per_window) > 1 and name.startswith(("energy_j_per", "emissions_g_per", "output_tokens_per_s")):
            metrics[f"{name}_std"] = spread.std
    if per_window:
        token = Spread.of([w["energy_j_per_output_token"] for w in per_window])
        metrics["energy_j_per_output_token_ci95_low"], metrics["energy_j_per_output_token_ci95_high"] = token.ci95
        busy = sum(w.machine_busy_cpu_s for w in windows)  # the share over all windows, not their mean
        metrics["client_cpu_share"] = metrics["client_cpu_s"] / busy if busy > 0 else math.nan
        metrics["windows"] = float(len(windows))
    start = windows[0].start_s if windows else math.inf
    end = windows[-1].end_s if windows else -math.inf
    sent = [r for r in records if start <= r.sent_s < end]
    metrics.update(latency_figures([r for r in sent if r.ok]))
    metrics.update(failure_figures(sent))
    metrics.update(goodput_figures(sent, end - start, slo_ttft_ms=slo_ttft_ms, slo_tpot_ms=slo_tpot_ms))
    return metrics


def ttft_ms(record: RequestRecord) -> float:
    first = record.first_token_s
    return (first - record.sent_s) * 1000 if first is not None else math.nan


def tpot_ms(record: RequestRecord) -> float:
    """Time per output token after the first, as vLLM's benchmark defines it; NaN for one token."""
    first = record.first_token_s
    if first is None or record.done_s is None or record.tokens < 2:
        return math.nan
    return (record.done_s - first) * 1000 / (record.tokens - 1)


def latency_figures(ok: Sequence[RequestRecord]) -> dict[str, float]:
    series = {
        "ttft_ms": [ttft_ms(r) for r in ok],
        "tpot_ms": [tpot_ms(r) for r in ok],
        "e2e_latency_s": [(r.done_s - r.sent_s) for r in ok if r.done_s is not None],
    }
    metrics = {}
    for name, values in series.items():
        values = [v for v in values if not math.isnan(v)]
        for q in PERCENTILES:
            metrics[f"{name}_p{q}"] = percentile(values, q)
    metrics["output_tokens_mean"] = (sum(r.tokens for r in ok) / len(ok)) if ok else math.nan
    return metrics


def failure_figures(sent: Sequence[RequestRecord]) -> dict[str, float]:
    """Requests sent and how many failed, by kind (``requests_failed_http_503``, ``requests_timed_out``...)."""
    kinds = Counter(r.outcome for r in sent if not r.ok)
    metrics = {"requests_sent": float(len(sent)), "requests_failed": float(sum(kinds.values()))}
    for kind, count in kinds.items():
        name = "requests_timed_out" if kind == "timeout" else f"requests_failed_{kind}"
        metrics[name] = float(count)
    return metrics


def goodput_figures(sent: Sequence[RequestRecord], duration_s: float, *, slo_ttft_ms: float | None,
                    slo_tpot_ms: float | None) -> dict[str, float]:
    """Requests per second that succeeded within the latency targets (DistServe's goodput)."""
    if slo_ttft_ms is None and slo_tpot_ms is None:
        return {}

    def good(r: RequestRecord) -> bool:
        if not r.ok:
            return False
        if slo_ttft_ms is not None and not ttft_ms(r) <= slo_ttft_ms:
            return False
        tpot = tpot_ms(r)
        return slo_tpot_ms is None or math.isnan(tpot) or tpot <= slo_tpot_ms

    count = sum(1 for r in sent if good(r))
    return {"goodput_requests_per_s": count / duration_s if duration_s > 0 else math.nan,
            "goodput_share": count / len(sent) if sent else math.nan}


def meets_targets(metrics: dict[str, float], *, slo_ttft_ms: float | None, slo_tpot_ms: float | None) -> bool:
    """Whether a level keeps the latency targets at its 90th percentile (a target not set is kept)."""
    ttft, tpot = metrics.get("ttft_ms_p90", math.nan), metrics.get("tpot_ms_p90", math.nan)
    if slo_ttft_ms is not None and not ttft <= slo_ttft_ms:
        return False
    return slo_tpot_ms is None or (not math.isnan(tpot) and tpot <= slo_tpot_ms)
