"""The docs say only what exists: every `tracker` flag they name is one its parser has; every
relative link and anchor resolves; the MLflow contract's names are what a real run logs, both ways;
every one-line error of the CLI has its row in the operations page. (MLproject against the CLI is in
test_options.)"""

from __future__ import annotations

import argparse
import ast
import re
from functools import cache
from pathlib import Path

import pytest
from conftest import REPO, all_runs

from tracker.cli import build_parser

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "experiments" / "README.md"]
CONTRACT = REPO / "docs" / "contract.md"
OPERATIONS = REPO / "docs" / "operations.md"
SOURCES = sorted((REPO / "tracker").rglob("*.py"))


def _flags() -> dict[str, set[str]]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {o for a in sub._actions for o in a.option_strings} for name, sub in commands.choices.items()}


def _commands(text: str) -> list[str]:
    """The `tracker ...` command lines of a page: in code spans and in indented code blocks (with
    their continuation lines)."""
    commands = re.findall(r"`(tracker [^`]+)`", text)
    current = None
    for line in text.splitlines():
        if current is not None:  # the line before ended in a backslash
            current += " " + line.strip()
        elif line.startswith("    ") and (found := re.search(r"(?:^|\s)(tracker [a-z].*)$", line)):
            current = found.group(1)
        if current is not None and not current.endswith("\\"):
            commands.append(current)
            current = None
    return commands


def _unquoted(command: str) -> str:
    """A command without its quoted arguments: a launch template's own flags are the server's."""
    return re.sub(r"\"[^\"]*\"|'[^']*'", "", command.split("#")[0])


FLAG = r"(?<![\w-])(--[a-z][a-z0-9-]*)"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_flag_a_page_names_is_one_the_command_has(page):
    flags = _flags()
    wrong = []
    for command in _commands(page.read_text()):
        words = command.split()
        if words[1] not in flags:
            continue
        wrong += [(words[1], f) for f in re.findall(FLAG, _unquoted(command)) if f not in flags[words[1]]]
    assert not wrong, f"{page.name} names flags its commands do not have: {wrong}"


def _prose_flags(text: str) -> list[str]:
    """Flags a page names outside any command line: in its prose and in code spans of their own
    (`--repeats 3`). Spans and code lines of other programs (`ray start --head`) are theirs."""
    text = re.sub(r"^ {4}.*$", "", text, flags=re.M)  # code blocks: checked per command above
    spans = re.findall(r"`([^`]+)`", text)
    prose = re.sub(r"`[^`]+`", " ", text)
    own = [s for s in spans if s.startswith("--")]
    return re.findall(FLAG, prose) + [f for s in own for f in re.findall(FLAG, _unquoted(s))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_flag_named_in_prose_is_a_tracker_flag(page):
    known = set().union(*_flags().values())
    wrong = sorted({f for f in _prose_flags(page.read_text()) if f not in known})
    assert not wrong, f"{page.name} names flags no tracker command has: {wrong}"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page):
    text = page.read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
            continue
        if anchor and file.suffix == ".md":
            anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", file.read_text(), re.M)}
            if anchor not in anchors:
                broken.append(target)
    assert not broken, f"{page.name}: links that lead nowhere: {broken}"


def test_the_readme_stays_a_guide():
    """The README is what a new user reads in five minutes; the rest has its page in docs/."""
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move the detail to a page in docs/"
    assert max(len(line) for line in lines if not line.startswith("    ")) <= 400, "a README line of a table cell too long"


# -- names in the code ------------------------------------------------------------------------

def _template(node: ast.AST) -> str | None:
    """A string expression as text, each placeholder as '…'; None when it is not built of literals."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "…" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _template(node.left), _template(node.right)
        return None if left is None or right is None else left + right
    return None


@cache
def _code_names() -> tuple[frozenset[str], tuple[re.Pattern, ...]]:
    """Every string literal and keyword argument of tracker/, and its f-strings as patterns (a
    placeholder stands for one name: letters, digits and underscores). Only f-strings that begin
    with a stem of their own count: `f"{name}_p{q}"` would match half the names there are."""
    literals, patterns = set(), []
    for file in SOURCES:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                literals.add(node.value)
            elif isinstance(node, ast.keyword) and node.arg:
                literals.add(node.arg)
            elif isinstance(node, ast.JoinedStr) and (text := _template(node)) and re.match(r"[^…]{4}", text):
                patterns.append(re.compile("".join(r"[a-z0-9_]+" if p == "…" else re.escape(p)
                                                   for p in re.split(r"(…)", text))))
    return frozenset(literals), tuple(patterns)


def _in_code(name: str) -> bool:
    literals, patterns = _code_names()
    if name.endswith(".*"):  # a family: tracker.hardware.*
        prefix = name[:-1]
        return any(p.pattern.startswith(re.escape(prefix)) for p in patterns) or any(
            n.startswith(prefix) for n in literals)
    return name in literals or any(p.fullmatch(name) for p in patterns)


NAME = re.compile(r"`([a-z][A-Za-z0-9_./]*[A-Za-z0-9_*])`")


def test_every_tag_the_docs_name_is_one_the_code_sets():
    unknown = {(page.name, name) for page in PAGES for name in NAME.findall(page.read_text())
               if name.startswith("tracker.") and not _in_code(name)}
    assert not unknown, f"tags named in the docs that no code sets: {sorted(unknown)}"


# -- the MLflow contract against a real run -------------------------------------------------------

def _contract_names() -> set[str]:
    """The names the contract lists (the files of this repository it points to are not names)."""
    return {n for n in NAME.findall(CONTRACT.read_text()) if not (REPO / n).exists()}


def _listed(name: str, listed: set[str]) -> bool:
    return name in listed or any(n.endswith(".*") and name.startswith(n[:-1]) for n in listed)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_contract_lists_what_a_run_logs_and_nothing_the_code_cannot(cli, client):
    code, _, err = cli("run", "--task", "summarization", "--n-samples", "8", "--batch-size", "4", "--repeats", "2",
                       "--min-duration-s", "0.1", "--wait-for-quiet", "1", "--carbon-intensity", "56",
                       "--sort-by-length", "--no-log-inputs", "--no-progress")
    assert code == 0, err
    [run] = all_runs(client)
    listed = _contract_names()
    metrics = {re.sub(r"_(std|ci95_low|ci95_high)$", "", m) for m in run.data.metrics}
    tags = {t for t in run.data.tags if t.startswith("tracker.")}
    logged = set(run.data.params) | metrics | tags
    assert len(run.data.params) >= 15 and len(metrics) >= 30 and len(tags) >= 25  # the run logged its contract
    missing = sorted(n for n in logged if not _listed(n, listed))
    assert not missing, f"docs/contract.md does not list what a run logs: {missing}"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"codecarbon", "config.json", "predictions_sample.csv"} <= artifacts
    assert {"codecarbon/emissions.csv", "config.json", "predictions_sample.csv"} <= listed

    invented = sorted(n for n in listed if n not in logged and not _in_code(n))
    assert not invented, f"docs/contract.md lists names no code logs: {invented}"


# -- every one-line error has its row ------------------------------------------------------------

USER_ERRORS = {"UserError", "ConfigError", "ModelLoadError", "DatasetError", "PrecisionUnsupportedError",
               "TrackingServerError"}


def _error_messages() -> tuple[list[tuple[str, str]], list[str]]:
    """(where, message template) of every user error the package raises, and a task's missing
    requirement; and where a message is not built of literals."""
    found, opaque = [], []
    for file in SOURCES:
        where = str(file.relative_to(REPO))
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                if (func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)) not in USER_ERRORS:
                    continue
                argument = node.exc.args[0] if node.exc.args else None
                if isinstance(argument, ast.Name) and argument.id == "missing":
                    continue  # a task's missing_requirement(), whose messages are read below
                text = _template(argument) if argument is not None else None
                if text is None:
                    opaque.append(f"{where}:{node.lineno}")
                else:
                    found.append((f"{where}:{node.lineno}", text))
            elif isinstance(node, ast.FunctionDef) and node.name == "missing_requirement":
                found += [(f"{where}:{r.lineno}", t) for r in ast.walk(node)
                          if isinstance(r, ast.Return) and r.value is not None and (t := _template(r.value))]
    return found, opaque


def _error_rows() -> list[str]:
    section = OPERATIONS.read_text().partition("\n## Errors\n")[2]
    return re.findall(r"^\| `([^`]+)` \|", section, re.M)


def test_every_error_message_has_its_row_in_the_operations_page():
    rows = _error_rows()
    vague = [r for r in rows if len(r.replace("…", "").strip()) < 12]
    assert not vague, f"rows too vague to name a message: {vague}"
    patterns = [re.compile(".*".join(re.escape(part) for part in row.split("…"))) for row in rows]
    found, opaque = _error_messages()
    assert len(found) > 100  # the scan found the package's errors
    assert not opaque, f"messages built where the scan cannot read them (write them as literals): {opaque}"
    undocumented = [(where, text) for where, text in found if not any(p.match(text) for p in patterns)]
    assert not undocumented, "errors with no row in docs/operations.md#errors:\n" + "\n".join(
        f"  {where}: {text}" for where, text in undocumented)
