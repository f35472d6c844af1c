"""The docs say only what exists: every `tracker` flag they name is one its parser has, and every
relative link and anchor resolves. (Part of issue 26; MLproject against the CLI is in test_options.)"""

from __future__ import annotations

import argparse
import re

import pytest
from conftest import REPO

from tracker.cli import build_parser

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "experiments" / "README.md"]


def _flags() -> dict[str, set[str]]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {o for a in sub._actions for o in a.option_strings} for name, sub in commands.choices.items()}


def _commands(text: str) -> list[str]:
    """The `tracker ...` command lines of a page: in code spans and in indented code blocks."""
    return re.findall(r"`(tracker [^`]+)`", text) + re.findall(r"^ {4}(tracker .+)$", text, re.M)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_flag_a_page_names_is_one_the_command_has(page):
    flags = _flags()
    wrong = []
    for command in _commands(page.read_text()):
        words = command.split()
        if words[1] not in flags:
            continue
        unquoted = re.sub(r"\"[^\"]*\"|'[^']*'", "", command)  # a launch template's own flags are the server's
        wrong += [(words[1], f) for f in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", unquoted)
                  if f not in flags[words[1]]]
    assert not wrong, f"{page.name} names flags its commands do not have: {wrong}"


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
