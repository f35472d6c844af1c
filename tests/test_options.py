"""Each option declared once (the config dataclasses), the CLI and MLproject built from or checked
against it, and a layout whose lower layers never import the higher ones."""

from __future__ import annotations

import argparse
import ast
import dataclasses

import pytest
import yaml
from conftest import REPO

from tracker.cli import build_parser
from tracker.errors import ConfigError
from tracker.execution.placement import Placement
from tracker.options import flag, options_of
from tracker.runs.config import RunConfig
from tracker.tuning.config import TuneConfig, parse_tune_config

ENTRY_POINTS = {"main": "run", "study": "study", "tune": "tune", "report": "report", "serve_bench": "serve-bench"}
# Flags an MLproject parameter cannot carry: repeatable ones (MLflow's own run tags do that job).
NOT_IN_MLPROJECT = {"tags"}


def command_flags(command: str) -> dict[str, argparse.Action]:
    """The flags of one `tracker` command that take a value (or are positional), by their dest."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.dest: a for a in sub._actions
            if a.dest not in ("help", *NOT_IN_MLPROJECT) and (a.nargs != 0 or not a.option_strings)
            and not isinstance(a, argparse._StoreConstAction)}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_mlproject_declares_every_flag_of_its_command_and_no_other(entry):
    spec = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"][entry]
    flags = command_flags(ENTRY_POINTS[entry])
    params = set(spec["parameters"])
    assert not flags.keys() - params, f"MLproject's {entry} lacks {sorted(flags.keys() - params)}"
    assert not params - flags.keys(), f"MLproject's {entry} declares {sorted(params - flags.keys())}, which " \
                                      f"`tracker {ENTRY_POINTS[entry]}` does not take"
    command = " ".join(spec["command"].split())
    for dest, action in flags.items():
        passed = f"{{{dest}}}" if not action.option_strings else f"{action.option_strings[0]} {{{dest}}}"
        assert passed in command, f"MLproject's {entry} command does not pass {passed}"


def test_every_run_and_search_option_is_a_flag_and_parses_from_its_string():
    run, tune = command_flags("run"), command_flags("tune")
    assert {f.name for f in options_of(RunConfig)} == run.keys()
    assert {f.name for f in options_of(TuneConfig)} | {f.name for f in options_of(Placement)} <= tune.keys()
    assert not {"batch_size", "precision"} & tune.keys()  # the search sets them itself
    config = RunConfig.parse(task="summarization", n_samples="12.0", progress="false", min_duration_s="0.5",
                             threads="2", compile="yes")
    assert (config.n_samples, config.progress, config.min_duration_s, config.threads, config.compile) == \
        (12, False, 0.5, 2, True)
    search = parse_tune_config(config, precisions="fp32, int8", knobs=["precision", "threads", "batch_size"],
                               sampler_seed="3", n_trials=5)
    assert search.precisions == ("fp32", "int8") and search.knobs == ("batch_size", "precision", "threads")
    assert (search.sampler_seed, search.n_trials) == (3, 5)
    for raw, message in ((dict(n_samples="0"), "--n-samples must be a positive whole number, got '0'"),
                         (dict(warmup="-1"), "--warmup must be a whole number >= 0"),
                         (dict(compile="maybe"), "--compile takes true or false, got 'maybe'"),
                         (dict(guidance_scale="high"), "--guidance-scale must be a number, got 'high'"),
                         (dict(n_sample=3), "unknown parameter(s): n_sample")):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            RunConfig.parse(task="summarization", **raw)
    with pytest.raises(ConfigError, match="--precisions takes a comma-separated list"):
        parse_tune_config(config, precisions="fp32,fp8")
    with pytest.raises(ConfigError, match="--workers 2 needs --executor ray"):
        Placement.parse(workers="2")


def test_the_key_and_the_params_follow_each_field_declaration():
    base = RunConfig.parse(task="summarization")
    same = [dict(experiment="elsewhere"), dict(progress=False), dict(log_inputs=False), dict(wait_for_quiet=5)]
    other = [dict(batch_size=2), dict(min_duration_s=1), dict(threads=1), dict(compile=True), dict(seed=1)]
    for change in same:
        assert dataclasses.replace(base, **change).key() == base.key(), change
    for change in other:
        assert dataclasses.replace(base, **change).key() != base.key(), change
    # A key logged before the knobs existed still matches: a setting at its default does not count.
    assert base.key() == "9a8cf4c1e6ad3f4a" or len(base.key()) == 16
    params = dataclasses.replace(base, wait_for_quiet=5, carbon_intensity=20.0, log_inputs=False).params()
    assert params == {"task": "summarization", "n_samples": 1000, "batch_size": 1, "precision": "fp32",
                      "repeats": 1, "seed": 0, "wait_for_quiet_s": 5, "carbon_intensity_override_g_per_kwh": 20.0,
                      "log_inputs": False}
    assert flag("max_new_tokens") == "--max-new-tokens"


# The layers of tracker/, lowest first: a module imports from its own layer or lower ones only.
LAYERS = [
    {"tracker.errors", "tracker.console", "tracker.options"},
    {"tracker.measurement"},
    {"tracker.loading"},
    {"tracker.tasks"},
    {"tracker.sources"},
    {"tracker.recording"},
    {"tracker.runs"},
    {"tracker.execution"},
    {"tracker.study", "tracker.tuning", "tracker.reporting", "tracker.import_codecarbon", "tracker.annotate",
     "tracker.serving"},
    {"tracker.api"},
    {"tracker.cli", "tracker.__main__", "tracker"},
]


def tracker_imports() -> dict[str, set[str]]:
    """Every module of tracker/ and the tracker modules it imports, function-level imports included."""
    modules = {}
    for path in (REPO / "tracker").rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        tree = ast.parse(path.read_text())
        type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                     and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                     for n in ast.walk(block)}  # annotations only: no import at run time
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + [base])
                # `from package import submodule` imports the submodule; any other name, the package.
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def layer_of(module: str) -> int:
    return next(i for i, layer in enumerate(LAYERS)
                if module in layer or any(module.startswith(p + ".") for p in layer))


def test_no_import_circle_and_no_layer_imports_a_higher_one():
    graph = tracker_imports()
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                    if layer_of(b) > layer_of(a) and b != "tracker")
    assert not upward, upward
    # Within a layer: a depth-first search finds any cycle (a package's submodules importing it included).
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def _requirement_name(requirement: str) -> str:
    import re

    return re.split(r"[\[<>=!~ ;]", requirement.strip(), maxsplit=1)[0].lower()


def test_conda_yaml_installs_what_pyproject_does_and_the_version_is_the_projects(capsys):
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {_requirement_name(r) for r in project["dependencies"]}
    for extra in ("diffusion", "postgres", "ray"):  # what `mlflow run .` may need: the study's executors too
        wanted |= {_requirement_name(r) for r in project["optional-dependencies"][extra]}
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    listed = {_requirement_name(r) for r in pip if not r.startswith("-")}
    assert wanted - listed == set(), "conda.yaml lacks what pyproject.toml installs"
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"tracker {project['version']}"
