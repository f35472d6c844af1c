"""A record's model kind (task-specific or multi-purpose), by rules on its model id.

``--model-kind-map`` takes rules ``PATTERN=KIND``, inline (repeatable) or as lines of a file (``#``
starts a comment). PATTERN is a regular expression searched, case-insensitively, in the record's
``project_name`` (its model id); the first rule that matches decides. A record no rule matches
gets ``--model-kind`` when given, and otherwise no kind (the report counts it as unknown, and says so).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tracker.errors import ConfigError

KINDS = ("task-specific", "multi-purpose")


@dataclass(frozen=True)
class KindRule:
    pattern: str
    kind: str

    def matches(self, model: str) -> bool:
        return re.search(self.pattern, model, re.IGNORECASE) is not None


def parse_rules(values: tuple[str, ...]) -> tuple[KindRule, ...]:
    """Rules from ``--model-kind-map`` values: each a file of rules or one ``PATTERN=KIND``."""
    rules: list[KindRule] = []
    for value in values:
        path = Path(value)
        if path.is_file():
            lines = [(f"{path}:{n}", line.split("#", 1)[0].strip())
                     for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)]
            rules += [_rule(text, where) for where, text in lines if text]
        else:
            rules.append(_rule(value, "--model-kind-map"))
    return tuple(rules)


def check_kind(kind: str | None, flag: str = "--model-kind") -> None:
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"{flag} takes {' or '.join(KINDS)}, got '{kind}'")


def kind_of(model: str, rules: tuple[KindRule, ...], default: str | None) -> tuple[str | None, str]:
    """The kind and why: the first rule that matches, else the default."""
    for rule in rules:
        if rule.matches(model):
            return rule.kind, f"--model-kind-map rule '{rule.pattern}={rule.kind}' at import"
    if default:
        return default, "given with --model-kind at import"
    return None, ""


def _rule(text: str, where: str) -> KindRule:
    pattern, sep, kind = text.rpartition("=")
    if not sep or not pattern.strip():
        raise ConfigError(f"{where}: '{text}' is not a rule PATTERN=KIND (e.g. 'flan-t5|bloomz|gpt2=multi-purpose'), "
                          "nor a file of such rules")
    check_kind(kind.strip(), where)
    try:
        re.compile(pattern.strip())
    except re.error as err:
        raise ConfigError(f"{where}: '{pattern.strip()}' is not a regular expression ({err})") from None
    return KindRule(pattern.strip(), kind.strip())
