"""report.md: the same content as report.html, for a ticket or a wiki page.

Charts become small tables. Values from the logs are escaped twice over: HTML-escaped (most
Markdown renderers pass inline HTML through) and Markdown punctuation backslash-escaped, so a
sender cannot inject a link, an image, a table cell or a heading.
"""

from __future__ import annotations

import re
from html import escape
from pathlib import Path

import pyarrow as pa

from ..workdir import atomic_write_text
from .aggregate import ReportData
from .present import (
    IMPACT_LABELS,
    SCENARIO_LABELS,
    TOP_ROWS,
    cell,
    daily_series,
    headline,
    ingest_files,
    period_note,
    remedies,
    scenario_series,
    sections,
    title_of,
    top_bars,
    warnings_table,
)

NAME = "md"
FILE = "report.md"
# Characters that start Markdown syntax inside a table cell; "://" and "www." would autolink.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
_AUTOLINK = re.compile(r"(?i)(:)(//)|\b(www)(\.)")
_BREAKS = re.compile(r"[\r\n\t\x0b\x0c\u2028\u2029\x85]+")


def md_text(value) -> str:
    """A value made inert in Markdown: one line, HTML-escaped, punctuation escaped."""
    text = _BREAKS.sub(" ", cell(value) if not isinstance(value, str) else value)
    text = _MD_SPECIAL.sub(r"\\\1", escape(text, quote=True))
    return _AUTOLINK.sub(lambda m: f"{m[1]}\\/\\/" if m[1] else f"{m[3]}\\.", text)


def _table(table: pa.Table, csv_name: str | None, limit: int = TOP_ROWS) -> list[str]:
    if table.num_rows == 0:
        return ["none", ""]
    cols = table.column_names
    out = ["| " + " | ".join(md_text(title_of(c)) for c in cols) + " |",
           "|" + "|".join("---:" if table.schema.field(c).type in (pa.int64(), pa.int32()) else "---" for c in cols) + "|"]
    for record in table.slice(0, limit).to_pylist():
        out.append("| " + " | ".join(md_text(cell(v)) for v in record.values()) + " |")
    out.append("")
    if table.num_rows > limit and csv_name:
        out += [f"Showing {limit} of {table.num_rows:,} rows; the full table is in `{csv_name}`.", ""]
    elif csv_name:
        out += [f"Also in `{csv_name}`.", ""]
    return out


def _series_table(first: str, categories: list[str], series: dict[str, list[int]]) -> pa.Table:
    cols = {first: pa.array(categories, pa.string())}
    for name, values in series.items():
        cols[IMPACT_LABELS.get(name, name)] = pa.array(values, pa.int64())
    return pa.table(cols)


def render(data: ReportData) -> str:
    pack = data.summary.get("rule_pack") or "unknown"
    out = ["# Exchange Online relay impact", "",
           f"Rule pack {md_text(pack)}; {md_text(period_note(data))}.  ",
           f"Generated {data.generated:%Y-%m-%d %H:%M} UTC by relay-impact.", ""]
    out += ["| " + " | ".join(md_text(label) for _k, label, _v in headline(data)) + " |",
            "|" + "---:|" * len(headline(data)),
            "| " + " | ".join(f"**{v:,}**" for _k, _l, v in headline(data)) + " |", ""]
    days, per_day = daily_series(data)
    out += ["## Messages per day by impact", ""]
    if data.messages_without_ts:
        out += [f"{data.messages_without_ts:,} message(s) without a time in their log are not counted here.", ""]
    out += _table(_series_table("day (UTC)", days, per_day), "messages_by_day.csv", limit=62)
    scen, per_scen = scenario_series(data)
    out += ["## Rejected messages by scenario", ""]
    out += _table(_series_table("scenario", scen, per_scen), "scenarios.csv")
    out += [f"- **{md_text(k)}**: {md_text(v)}" for k, v in SCENARIO_LABELS.items() if k in scen] + [""]
    bars = top_bars(data)
    for key, title in (("senders", "Top affected senders (P1 domain)"), ("hosts", "Top affected hosts"),
                       ("services", "Top affected third-party services")):
        labels, values = bars[key]
        out += [f"## {title}", ""]
        out += _table(pa.table({"name": pa.array(labels, pa.string()), "rejected messages": pa.array(values, pa.int64())}), None)
    out += ["## What to change", "",
            "remediation.ps1 has the Exchange Online PowerShell for these remedies, to review and run "
            "yourself; relay-impact never runs it.", ""]
    out += _table(remedies(data), "remedies.csv")
    for section in sections(data):
        out += [f"## {section.title}", "", md_text(section.intro), ""]
        out += _table(section.table, section.csv_name)
    lines = data.summary["lines"]
    out += ["## Ingest accounting", "",
            f"{lines['read']:,} lines read, {lines['parsed']:,} in messages, "
            f"{sum(lines['skipped'].values()):,} skipped, {data.summary['rejected_lines']:,} not parsed.", ""]
    out += _table(ingest_files(data), "ingest_files.csv")
    out += ["### Examples of lines not parsed", ""]
    out += _table(data.reject_examples, "rejected_line_examples.csv")
    out += ["## Warnings", ""]
    out += _table(warnings_table(data), "warnings.csv")
    return "\n".join(out).rstrip() + "\n"


def write(data: ReportData, outdir: Path) -> list[Path]:
    path = outdir / FILE
    atomic_write_text(path, render(data))
    return [path]
