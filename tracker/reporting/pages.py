"""The report as pages: one list of sections, written as Markdown and as a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPEN_ROWS = 15  # longer tables are folded on the HTML page


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    table: Any = None  # a DataFrame, shown with its columns as they are
    figure: Path | None = None
    missing_figure: str = ""  # why a figure could not be drawn


def cell(value: Any) -> str:
    """A table cell: three significant figures, n/a for a missing number, an empty setting as '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or _is_na(value):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() and abs(value) < 1e6 else f"{value:.3g}"
    return str(value) if str(value) else "-"


def stars(value: Any) -> str:
    if _is_na(value):
        return "unrated"
    return "★" * int(value) + "☆" * (5 - int(value))


def markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for paragraph in section.paragraphs:
            lines += [paragraph, ""]
        if section.figure is not None:
            lines += [f"![{section.title}]({section.figure.name})", ""]
        if section.missing_figure:
            lines += [f"*No figure: {section.missing_figure}.*", ""]
        if section.table is not None:
            lines += _markdown_table(section.table) + [""]
    return "\n".join(lines)


def html_page(title: str, sections: list[Section]) -> str:
    """One file with everything in it: the figures are embedded as data URIs."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        body += [f"<p>{_inline_html(p)}</p>" for p in section.paragraphs]
        if section.figure is not None:
            data = base64.b64encode(section.figure.read_bytes()).decode()
            body.append(f'<img alt="{html.escape(section.title)}" src="data:image/png;base64,{data}">')
        if section.missing_figure:
            body.append(f"<p><em>No figure: {html.escape(section.missing_figure)}.</em></p>")
        if section.table is not None:
            table = _html_table(section.table)
            if len(section.table) > OPEN_ROWS:  # a long table waits, folded, below the figure
                table = (f"<details><summary>Table: {len(section.table)} rows (click to open)</summary>"
                         f"{table}</details>")
            body.append(table)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0;display:block;overflow-x:auto}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}"
             "img{max-width:100%}code{background:#f3f3f3}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _markdown_table(table: Any) -> list[str]:
    header = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v).replace("|", "\\|") for v in row) + " |")
    return lines


def _html_table(table: Any) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell(v))}</td>" for v in row) + "</tr>"
                   for row in table.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _inline_html(text: str) -> str:
    """Markdown's `code` spans as <code>; everything else escaped."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _is_na(value: Any) -> bool:
    import pandas as pd

    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
