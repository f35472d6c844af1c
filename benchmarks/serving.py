"""Energy per output token of a real server at concurrency 8 against 1, measured by serve-bench.

Starts `transformers serve` with continuous batching on the built-in tiny chat model (a Llama with
random weights: BLOOM, the built-in causal model, has no paged attention for continuous batching)
on 127.0.0.1, then measures concurrency 1 and 8 in turn, `--rounds` times, the order swapped each
round so that load that comes and goes weighs on both. Each measurement is a `serve-bench` sweep of
one level (the API, as a user calls it) with `--windows` windows of `--min-window-s` seconds.

    python benchmarks/serving.py [--rounds 3] [--windows 2] [--min-window-s 5] [--output-tokens 32]

The machine's load average is printed before and after. The last line is
`token_energy_ratio_c8_c1=<J per output token at 8 over at 1> [<95% interval>] client_cpu_share=<load
generator's CPU over all busy CPU in the windows> server_attributed_share=<attributed over machine
energy> cv=<spread of J/token at 8 over the rounds>`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--min-window-s", type=float, default=5.0)
    parser.add_argument("--output-tokens", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = Path(tempfile.mkdtemp(prefix="tracker-serving-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"

    from tracker.api import serve_bench
    from tracker.measurement.stats import Spread, ratio_interval
    from tracker.serving.server import launch
    from tracker.sources.models import builtin_multipurpose

    model = builtin_multipurpose("builtin-tiny-chat").location
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    # Started once and attached to by every measurement: the server keeps its warm state across rounds.
    server = launch("transformers serve --host {host} --port {port} --continuous-batching {model}", model=model,
                    log_dir=folder)
    url = server.endpoint
    per_level: dict[int, list[dict[str, float]]] = {1: [], 8: []}
    try:
        for round_number in range(args.rounds):
            order = (1, 8) if round_number % 2 == 0 else (8, 1)
            for users in order:
                result = serve_bench(endpoint=url, concurrency=[users], windows=args.windows,
                                     min_window_s=args.min_window_s, output_tokens=str(args.output_tokens),
                                     n_prompts=64, country="FRA", experiment="serving-benchmark")
                metrics = result.levels[0].metrics
                per_level[users].append(metrics)
                print(f"round {round_number + 1} concurrency {users}: "
                      f"{metrics['energy_j_per_output_token']:.4g} J/token, "
                      f"{metrics['output_tokens_per_s']:.0f} tokens/s, TTFT p90 {metrics['ttft_ms_p90']:.1f} ms, "
                      f"client CPU share {metrics['client_cpu_share']:.2f}, "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        server.stop()
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    token = {users: Spread.of([m["energy_j_per_output_token"] for m in runs]) for users, runs in per_level.items()}
    ratio, low, high = ratio_interval(token[8], token[1])
    runs = per_level[1] + per_level[8]
    client_share = (sum(m["client_cpu_s"] for m in runs)
                    / sum(m["client_cpu_s"] / m["client_cpu_share"] for m in runs if m["client_cpu_share"] > 0))
    attributed = statistics.fmean(m["server_attributed_share"] for m in runs)
    cv = token[8].std / token[8].mean
    print(f"token_energy_ratio_c8_c1={ratio:.3f} [{low:.3f}, {high:.3f}] client_cpu_share={client_share:.3f} "
          f"server_attributed_share={attributed:.3f} cv={cv:.3f}")


if __name__ == "__main__":
    main()
