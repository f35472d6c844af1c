"""The structured search strategy on known grids (no inference), and the run knobs it searches
besides batch size and precision: threads, length sorting, attention, compile."""

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


def test_structured_finds_the_best_that_keeps_quality_bisecting_where_it_breaks():
    space = Space(BATCHES, ("int8", "bf16", "fp32"))
    proposals = _search(space, _cpu_grid)
    settings = [(p["batch_size"], p["precision"]) for p, _ in proposals]
    # int8's largest batch loses quality: bisected to the largest batch that keeps it (8)
    assert settings[:4] == [(64, "int8"), (8, "int8"), (32, "int8"), (16, "int8")]
    assert [r for _, r in proposals[:4]] == ["probe", "bisect", "bisect", "bisect"]
    # the other precisions' largest batches; none infeasible, so none bisected
    assert settings[4:6] == [(64, "bf16"), (64, "fp32")]
    best = min((s for s in settings if _cpu_grid({"batch_size": s[0], "precision": s[1]})[2]),
               key=lambda s: _cpu_grid({"batch_size": s[0], "precision": s[1]})[0])
    truth = min(((b, p) for b in BATCHES for p in ("int8", "bf16", "fp32")
                 if _cpu_grid({"batch_size": b, "precision": p})[2]),
                key=lambda s: _cpu_grid({"batch_size": s[0], "precision": s[1]})[0])
    assert best == truth
    assert len(set(settings)) <= 9  # of 21
    assert all(_cpu_grid(p)[2] or r in ("probe", "bisect") for p, r in proposals)


def test_a_precision_dearer_than_the_leader_at_its_largest_batch_is_not_bisected():
    def grid(params):
        carbon, std, feasible = _cpu_grid(params)
        if params["precision"] == "fp32":
            return carbon * 5, std, params["batch_size"] < 4  # fp32 breaks early, and costs far more
        return carbon, std, feasible

    settings = [(p["batch_size"], p["precision"]) for p, _ in _search(Space(BATCHES, ("int8", "bf16", "fp32")), grid)]
    assert (64, "fp32") in settings
    assert not [s for s in settings if s[1] == "fp32" and s[0] != 64]


def test_the_plateau_is_followed_down_while_cheaper_and_the_leaders_are_confirmed_when_close():
    def grid(params):  # cheapest at batch 16; 16 and 32 within each other's spread
        carbon = {64: 1.3, 32: 1.02, 16: 1.0, 8: 1.5}.get(params["batch_size"], 3.0)
        return carbon, 0.05, True

    proposals = _search(Space(BATCHES, ("fp32",)), grid)
    settings = [(p["batch_size"], r) for p, r in proposals]
    assert settings[:4] == [(64, "probe"), (32, "plateau"), (16, "plateau"), (8, "plateau")]
    # 16 and 32 overlap: the runner-up then the leader measured again, interleaved
    assert settings[4:] == [(32, "confirm"), (16, "confirm")]

    apart = lambda params: (1.0 if params["batch_size"] == 64 else 2.0, 0.01, True)  # noqa: E731
    assert [r for _, r in _search(Space(BATCHES, ("fp32",)), apart)] == ["probe", "plateau"]


def test_a_precision_whose_process_dies_is_given_up_and_the_others_go_on():
    def grid(params):
        return None if params["precision"] == "bf16" else _cpu_grid(params)

    proposals = _search(Space(BATCHES, ("bf16", "fp32")), grid)
    assert len([p for p, _ in proposals if p["precision"] == "bf16"]) == 2
    assert any(p["precision"] == "fp32" for p, _ in proposals)


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
    assert space.precisions == ("int8", "bf16", "fp32", "fp16")  # the cheapest expected first
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
