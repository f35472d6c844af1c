"""The structured search strategy on known grids of several shapes (no inference), and the run knobs it searches
besides batch size and precision: threads, length sorting, attention, compile."""

import itertools
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tracker.errors import ConfigError
from tracker.measurement.stats import Spread
from tracker.runs.config import RunConfig
from tracker.tuning.strategies import Measured, Space, parse_knobs, plan

BATCHES = (1, 2, 4, 8, 16, 32, 64)


def _search(space, figures, *, limit=40):
    """Follow the strategy to its end over ``figures`` ((batch, precision, extras...) -> (carbon, std,
    keeps quality) or None for a crash); returns the proposals in order, with their roles."""
    seen, proposals = [], []
    for _ in range(limit):
        step = plan(space, seen)
        if step is None:
            return proposals
        params, role = step
        proposals.append((params, role))
        figure = figures(params)
        if figure is None:
            seen.append(Measured(params))
        else:
            carbon, std, feasible = figure
            seen.append(Measured(params, Spread(carbon, std, 3), feasible))
    raise AssertionError(f"the strategy did not end in {limit} proposals: {proposals}")


def _cpu_grid(params):
    """Carbon falls with the batch to a plateau at 32; int8 is cheapest but loses quality above
    batch 8; bf16 about half of fp32."""
    batch, precision = params["batch_size"], params["precision"]
    per_precision = {"fp32": 10.0, "bf16": 5.0, "int8": 3.0}[precision]
    carbon = per_precision * (1 + 8 / min(batch, 32))
    feasible = not (precision == "int8" and batch > 8)
    return carbon, carbon * 0.01, feasible


def _settings(proposals):
    return [(p["batch_size"], p["precision"]) for p, _ in proposals]


def _reported(proposals, grid):
    """The cheapest feasible setting the search measured, as the summary reports it."""
    kept = [s for s in _settings(proposals) if grid({"batch_size": s[0], "precision": s[1]}) is not None
            and grid({"batch_size": s[0], "precision": s[1]})[2]]
    return min(kept, key=lambda s: grid({"batch_size": s[0], "precision": s[1]})[0])


def _truth(grid, precisions):
    cells = [(b, p) for b in BATCHES for p in precisions]
    kept = [s for s in cells if grid({"batch_size": s[0], "precision": s[1]}) is not None
            and grid({"batch_size": s[0], "precision": s[1]})[2]]
    return min(kept, key=lambda s: grid({"batch_size": s[0], "precision": s[1]})[0])


def test_structured_probes_every_precision_then_bisects_the_most_promising_where_quality_breaks():
    space = Space(BATCHES, ("fp32", "bf16", "int8"))
    proposals = _search(space, _cpu_grid)
    settings = _settings(proposals)
    # each precision once, at its largest batch, in the order given
    assert proposals[:3] == [({"batch_size": 64, "precision": p}, "probe") for p in ("fp32", "bf16", "int8")]
    # int8 measured cheapest (though it lost quality): bisected first, to the largest batch that keeps it
    assert settings[3:6] == [(8, "int8"), (32, "int8"), (16, "int8")]
    assert [r for _, r in proposals[3:6]] == ["bisect"] * 3
    assert _reported(proposals, _cpu_grid) == _truth(_cpu_grid, space.precisions) == (8, "int8")
    assert len(set(settings)) <= 12  # of 21


@pytest.mark.parametrize("order", list(itertools.permutations(("fp32", "bf16", "int8"))))
def test_the_order_the_precisions_are_given_in_changes_what_is_measured_first_never_the_answer(order):
    proposals = _search(Space(BATCHES, order), _cpu_grid)
    assert _reported(proposals, _cpu_grid) == (8, "int8")
    assert [r for _, r in proposals[:3]] == ["probe"] * 3


def test_a_cost_that_rises_with_the_batch_is_followed_down_even_in_a_precision_dearer_at_its_probe():
    def grid(params):  # int8 flat at 1.0; fp32 dearer at 64 (2.0) but U-shaped, cheapest at batch 8 (0.5)
        batch, precision = params["batch_size"], params["precision"]
        if precision == "int8":
            return 1.0 + 1 / batch, 0.01, True
        return 0.5 * (1 + abs(math.log2(batch / 8)) ** 2 / 3), 0.01, True

    proposals = _search(Space(BATCHES, ("int8", "fp32")), grid)
    assert _reported(proposals, grid) == _truth(grid, ("int8", "fp32")) == (8, "fp32")
    assert (4, "fp32") in _settings(proposals)  # the neighbour below the best, seen dearer
    assert {r for _, r in proposals} >= {"probe", "neighbour"}


def test_a_precision_that_breaks_quality_at_its_largest_batch_is_bisected_even_when_it_looks_dearer():
    def grid(params):  # bf16 loses quality above 16 and costs more at 64, yet is cheapest at 16
        batch, precision = params["batch_size"], params["precision"]
        if precision == "fp32":
            return 1.0, 0.01, True
        return (3.0 if batch > 16 else 0.4 + 1 / batch), 0.01, batch <= 16

    proposals = _search(Space(BATCHES, ("fp32", "bf16")), grid)
    assert _reported(proposals, grid) == (16, "bf16")


def test_quality_that_breaks_at_one_batch_does_not_rule_out_the_next():
    def grid(params):  # int8 keeps quality at 32 (the cheapest) but not at 16 nor 64
        batch, precision = params["batch_size"], params["precision"]
        carbon = {"fp32": 2.0, "int8": 1.0}[precision] * (1 + 4 / batch)
        return carbon, 0.01, not (precision == "int8" and batch in (16, 64))

    proposals = _search(Space(BATCHES, ("fp32", "int8")), grid)
    assert _reported(proposals, grid) == (32, "int8")


def test_a_failure_bounds_its_precision_from_above_and_nothing_above_it_is_tried():
    def grid(params):  # out of memory above batch 16 for fp32
        if params["precision"] == "fp32" and params["batch_size"] > 16:
            return None
        return _cpu_grid(params)

    proposals = _search(Space(BATCHES, ("fp32",)), grid)
    settings = _settings(proposals)
    assert settings[:4] == [(64, "fp32"), (8, "fp32"), (32, "fp32"), (16, "fp32")]
    assert _reported(proposals, grid) == (16, "fp32")
    assert [s for s in settings if s[0] > 16] == [(64, "fp32"), (32, "fp32")]  # tried once each, no more


def test_a_precision_whose_process_dies_at_every_batch_is_given_up_and_the_others_go_on():
    def grid(params):
        return None if params["precision"] == "bf16" else _cpu_grid(params)

    proposals = _search(Space(BATCHES, ("bf16", "fp32")), grid)
    # the largest batch, the middle one, the smallest: dead at all three, given up
    assert [p["batch_size"] for p, _ in proposals if p["precision"] == "bf16"] == [64, 8, 1]
    assert _reported(proposals, grid) == (32, "fp32") or _reported(proposals, grid) == (64, "fp32")


def test_neighbours_are_followed_while_cheaper_and_the_leaders_are_confirmed_when_close():
    def grid(params):  # cheapest at batch 16; 16 and 32 within each other's spread
        carbon = {64: 1.3, 32: 1.02, 16: 1.0, 8: 1.5}.get(params["batch_size"], 3.0)
        return carbon, 0.05, True

    proposals = _search(Space(BATCHES, ("fp32",)), grid)
    settings = [(p["batch_size"], r) for p, r in proposals]
    assert settings[:4] == [(64, "probe"), (32, "neighbour"), (16, "neighbour"), (8, "neighbour")]
    # 16 and 32 overlap: the runner-up then the leader measured again, interleaved
    assert settings[4:] == [(32, "confirm"), (16, "confirm")]

    apart = lambda params: (1.0 if params["batch_size"] == 64 else 2.0, 0.01, True)  # noqa: E731
    assert [r for _, r in _search(Space(BATCHES, ("fp32",)), apart)] == ["probe", "neighbour"]


def test_settings_another_worker_is_measuring_are_not_proposed_again():
    space = Space(BATCHES, ("int8", "bf16"))
    running = [Measured({"batch_size": 64, "precision": "int8"}, pending=True)]
    assert plan(space, running) == ({"batch_size": 64, "precision": "bf16"}, "probe")
    both = running + [Measured({"batch_size": 64, "precision": "bf16"}, pending=True)]
    assert plan(space, both) is None  # nothing to learn until one of them ends


def test_other_knobs_are_tried_on_the_leader():
    space = Space((1, 2), ("fp32",), {"threads": (2, 1), "sort_by_length": (False, True)})

    def grid(params):
        carbon = 1.0 / params["batch_size"] * (0.8 if params["sort_by_length"] else 1.0)
        return carbon, 0.001, True

    proposals = _search(space, grid)
    assert proposals[0] == ({"batch_size": 2, "precision": "fp32", "threads": 2, "sort_by_length": False}, "probe")
    knobs = [p for p, r in proposals if r == "knob"]
    assert {"batch_size": 2, "precision": "fp32", "threads": 1, "sort_by_length": False} in knobs
    assert {"batch_size": 2, "precision": "fp32", "threads": 2, "sort_by_length": True} in knobs


def test_knobs_and_strategies_are_checked():
    assert parse_knobs(None) == ("batch_size", "precision")
    assert parse_knobs("precision, batch_size,threads") == ("batch_size", "precision", "threads")
    with pytest.raises(ConfigError, match="--knobs takes"):
        parse_knobs("batch_size,precision,speed")
    with pytest.raises(ConfigError, match="must include batch_size and precision"):
        parse_knobs("threads")
    from tracker.tuning.config import parse_tune_config

    run = RunConfig.parse(task="text-classification")
    with pytest.raises(ConfigError, match="unknown strategy 'annealing'"):
        parse_tune_config(run, strategy="annealing")
    config = parse_tune_config(run, knobs="batch_size,precision,sort_by_length", max_batch_size="4")
    space = config.space("cpu")
    assert space.precisions == ("fp32", "fp16", "bf16", "int8")  # no order fitted to a machine: the list's
    assert config.space("cuda").precisions == ("fp32", "fp16", "bf16")
    assert parse_tune_config(run, precisions="int8,fp32").space("cpu").precisions == ("int8", "fp32")  # as given
    assert space.extra == {"sort_by_length": (False, True)}
    assert config.name.endswith("-sort_by_length")  # another space: another study


def test_run_knobs_are_validated_and_keep_earlier_config_keys():
    config = RunConfig.parse(task="text-classification", threads="2", sort_by_length="true", attention="eager",
                             compile="false")
    assert (config.threads, config.sort_by_length, config.attention, config.compile) == (2, True, "eager", False)
    for bad, message in [({"threads": "0"}, "--threads must be a positive whole number"),
                         ({"attention": "flash"}, "unknown attention 'flash'"),
                         ({"sort_by_length": "maybe"}, "--sort-by-length takes true or false")]:
        with pytest.raises(ConfigError, match=message):
            RunConfig.parse(task="text-classification", **bad)
    # a run without the knobs keeps the key it had before they existed: studies still skip it
    plain = RunConfig.parse(task="text-classification")
    assert plain.key() == RunConfig.parse(task="text-classification", threads="", attention="").key()
    assert plain.key() != RunConfig.parse(task="text-classification", threads="1").key()


def test_sorting_by_length_puts_predictions_back_in_order():
    from tracker.runs.loop import length_order, text_length, unsort
    from tracker.tasks import get_task

    inputs = ["a longer sentence", "hi", ("two", "parts here"), "mid length"]
    order = length_order(get_task("text-classification"), inputs)
    assert [text_length(inputs[i]) for i in order] == sorted(text_length(v) for v in inputs)
    predictions = [f"out:{inputs[i]}" for i in order]  # what a model gives for the sorted inputs
    assert unsort(predictions, order) == [f"out:{v}" for v in inputs]
    with pytest.raises(ConfigError, match="--sort-by-length needs text inputs"):
        length_order(get_task("image-classification"), [object()])


RUN = ["--task", "text-classification", "--model", "builtin-tiny", "--dataset", "builtin", "--n-samples", "24",
       "--batch-size", "4", "--country", "FRA", "--no-progress"]


def _predictions(client, run):
    import pathlib

    return pathlib.Path(client.download_artifacts(run.info.run_id, "predictions_sample.csv")).read_text()


def test_run_knobs_are_applied_logged_and_sorting_keeps_predictions_beside_their_inputs(cli, client):
    from conftest import all_runs

    code, _, err = cli("run", *RUN)
    assert code == 0, err
    code, _, err = cli("run", *RUN, "--threads", "1", "--sort-by-length", "--attention", "eager")
    assert code == 0, err
    plain, knobs = sorted(all_runs(client), key=lambda r: r.info.start_time)
    assert knobs.data.params["threads"] == "1" and knobs.data.params["attention"] == "eager"
    assert knobs.data.params["sort_by_length"] == "True"
    assert plain.data.params["attention"] == "sdpa" and "sort_by_length" not in plain.data.params
    # sorted batches, predictions put back: the same predictions beside the same inputs, the same quality
    assert _predictions(client, knobs) == _predictions(client, plain)
    assert knobs.data.metrics["accuracy"] == plain.data.metrics["accuracy"]
    assert knobs.data.tags["tracker.config_key"] != plain.data.tags["tracker.config_key"]


def test_compile_happens_in_the_warm_up_and_the_run_says_so(cli, client):
    from conftest import all_runs

    code, _, err = cli("run", *RUN, "--compile")
    assert code == 0, err
    [run] = all_runs(client)
    assert run.data.params["compile"] == "True"
    assert run.data.params["warmup"] == "3"  # first call, then the first new shape: both before measuring
    assert run.data.metrics["energy_kwh"] > 0 and 0 <= run.data.metrics["quality"] <= 1


def test_sorting_inputs_that_are_not_text_is_refused_before_any_run(cli, client):
    from conftest import all_runs

    code, _, err = cli("run", "--task", "image-classification", "--model", "builtin-tiny", "--dataset", "builtin",
                       "--n-samples", "4", "--sort-by-length", "--no-progress")
    assert code == 2
    [line] = [line for line in err.splitlines() if line.startswith("tracker: error:")]
    assert "--sort-by-length needs text inputs" in line
    assert not all_runs(client)


BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "search_efficiency.py"


def _benchmark(*args):
    return subprocess.run([sys.executable, str(BENCHMARK), *args], capture_output=True, text=True, timeout=300)


def test_the_search_benchmark_replays_a_grid_a_user_passes_and_judges_the_search_by_that_grid(tmp_path):
    # a synthetic grid written out (out of memory above a batch) and replayed as a user's file
    done = _benchmark("--write-synthetic", str(tmp_path), "--per-shape", "1")
    assert done.returncode == 0, done.stderr
    user_grid = tmp_path / "oom-0.csv"
    text = user_grid.read_text()
    assert "FAILED" in text  # the failures travel in the layout
    done = _benchmark("--grid", str(user_grid), "--strategies", "structured,random", "--seeds", "1", "--workers", "1")
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    figures = dict(item.split("=") for item in last.split())
    assert set(figures) == {"search_measurements_median", "best_right", "random", "grids"}
    assert figures["grids"] == "1"
    assert 1 <= float(figures["search_measurements_median"]) <= 21 and float(figures["best_right"]) == 1.0

    # a grid whose cheapest setting is changed by hand is judged by what it now says
    rows = text.splitlines()
    cheap = [i for i, row in enumerate(rows) if ",1,fp32," not in row and ",FINISHED," in row][-1]
    cells = rows[cheap].split(",")
    cells[3] = str(float(cells[3]) / 100)  # now far the cheapest
    cells[4] = str(float(cells[3]) * 1.01)
    rows[cheap] = ",".join(cells)
    user_grid.write_text("\n".join(rows) + "\n")
    done = _benchmark("--grid", str(user_grid), "--strategies", "structured", "--seeds", "1", "--workers", "1")
    assert done.returncode == 0, done.stderr
    figures = dict(item.split("=") for item in done.stdout.strip().splitlines()[-1].split())
    assert float(figures["best_right"]) == 1.0  # the structured search still reports the true best


def test_the_search_benchmark_refuses_a_grid_without_a_column_in_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("batch_size,precision,status,emissions_g_per_output\n1,fp32,FINISHED,1.0\n")
    done = _benchmark("--grid", str(bad))
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [f"grid {bad}: missing column(s) quality: see the layout in "
                                                "benchmarks/search_efficiency.py's docstring"]
