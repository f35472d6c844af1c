"""Each option declared once: a config dataclass field carries its flag's help, its bounds, and
whether it counts in the configuration key and in the logged params.

``RunConfig``, ``TuneConfig`` and the executor's options are declared with ``option(...)``; the
CLI's flags (``add_flags``), the parsing of raw values from the CLI, MLproject and the Python API
(``parse_values``), the configuration key and the logged params are built from those fields, and a
test checks MLproject against them. A field's type says how its raw value is read: a whole number,
a number, true|false, a comma-separated list, or text.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal

from tracker.errors import ConfigError

# When a field counts (in the configuration key, in the logged params): always, only when it differs
# from its default (settings added after keys were first logged: earlier runs keep matching), or never.
Counts = Literal["always", "when_set", "never"]


def option(default: Any = None, *, help: str, minimum: int | None = None, key: Counts = "always",
           param: Counts = "never", param_name: str | None = None, negative: str | None = None,
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field with what its flag, its parsing, the key and the params need to know.

    Args:
        help: the flag's help text (its default said in it).
        minimum: the least whole number allowed, for integer fields.
        key: whether the field counts in the configuration key (``tracker.config_key``).
        param: whether it is logged as an MLflow param, under ``param_name`` (default: its name).
        negative: a ``--no-...`` flag that sets a true|false field to false.
    """
    metadata = {"help": help, "minimum": minimum, "key": key, "param": param, "param_name": param_name,
                "negative": negative}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def options_of(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` declared with ``option`` (those that are flags), in declaration order."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def kind_of(cls: type, field: dataclasses.Field) -> str:
    """How a field's raw value is read: int, float, bool, list or str."""
    hint = _hints(cls)[field.name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None: read as X
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    base = typing.get_origin(hint) or hint
    if base is tuple:
        return "list"
    return {int: "int", float: "float", bool: "bool"}.get(base, "str")


def add_flags(parser: argparse.ArgumentParser, cls: type, *, exclude: Iterable[str] = (),
              required: Iterable[str] = ()) -> None:
    """One flag per option of ``cls``: ``--name VALUE``, or ``--name [true|false]`` for a true|false
    field (and its ``--no-...`` form where it has one). Values stay raw: ``parse_values`` reads them."""
    excluded, required = set(exclude), set(required)
    for field in options_of(cls):
        if field.name in excluded:
            continue
        if kind_of(cls, field) == "bool":
            parser.add_argument(flag(field.name), dest=field.name, nargs="?", const="true", default=None,
                                metavar="true|false", help=field.metadata["help"])
            if field.metadata["negative"]:
                parser.add_argument(field.metadata["negative"], dest=field.name, action="store_const",
                                    const="false", help=f"the same as {flag(field.name)} false")
        else:
            parser.add_argument(flag(field.name), dest=field.name, help=field.metadata["help"],
                                required=field.name in required)


def parse_values(cls: type, raw: dict[str, Any], *, what: str = "parameter") -> dict[str, Any]:
    """Raw values (the CLI's strings, or the API's numbers, booleans and lists) read by each field's
    type; empty strings and None mean "default". Each bad value gets a one-line error naming its flag."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {k: v for k, v in raw.items() if v is not None and not (isinstance(v, str) and v.strip() == "")}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"unknown {what}(s): {', '.join(sorted(unknown))}")
    for name, value in values.items():
        field = fields[name]
        if "help" not in field.metadata:
            continue
        kind = kind_of(cls, field)
        if kind == "int":
            values[name] = integer(name, value, field.metadata["minimum"] or 0)
        elif kind == "float":
            values[name] = number(name, value)
        elif kind == "bool":
            values[name] = boolean(flag(name), value)
        elif kind == "list":
            values[name] = listed(value)
    return values


def counted(config: Any, rule: str) -> dict[str, Any]:
    """The fields of ``config`` that count under ``rule`` ("key" or "param"), by their names there."""
    out = {}
    for field in dataclasses.fields(config):
        counts = field.metadata.get(rule, "never")
        value = getattr(config, field.name)
        if counts == "always" or (counts == "when_set" and value != field.default):
            out[field.metadata.get(f"{rule}_name") or field.name] = value
    return out


def boolean(name: str, value: Any) -> bool:
    """true/false, 1/0, yes/no (any case), or a bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{name} takes true or false, got '{value}'")
    return text in ("true", "1", "yes")


def integer(name: str, value: Any, minimum: int) -> int:
    text = str(value).strip()
    try:
        parsed = float(text)
    except ValueError:
        parsed = None
    if parsed is None or not parsed.is_integer() or parsed < minimum:
        kind = "a positive whole number" if minimum == 1 else f"a whole number >= {minimum}"
        raise ConfigError(f"{flag(name)} must be {kind}, got '{text}'")
    return int(parsed)


def number(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag(name)} must be a number, got '{value}'") from None


def listed(value: Any) -> tuple[str, ...]:
    """A comma-separated flag's values (or a list's), blanks dropped."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(v).strip() for v in items if str(v).strip())
