"""Reporters: each formats the aggregated verdicts (aggregate.py) into files in WORKDIR/report/.

REPORTERS is the registry, format name -> module with NAME and write(data, outdir) -> paths:

    html         report.html       self-contained page with charts (inline SVG)
    md           report.md         the same content for a ticket or wiki
    csv          *.csv             one CSV per table, full length, spreadsheet-safe
    json         summary.json      the numbers scripts read (contract.md)
    remediation  remediation.ps1   the Exchange Online PowerShell the remedies call for (never run)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from ..errors import RelayImpactError
from . import csv_tables, html, json_summary, md, remediation
from .aggregate import ReportData, collect
from .period import Period, parse_period
from .summary import build_summary, terminal_summary

REPORTERS: dict[str, ModuleType] = {m.NAME: m for m in (html, md, csv_tables, json_summary, remediation)}
DEFAULT_FORMATS = tuple(REPORTERS)


def report(
    workdir: str | Path, formats: Iterable[str] | None = None, since: str | None = None,
    until: str | None = None,
) -> dict:
    """Write the requested reports into WORKDIR/report/; return the summary and the paths.

    `since` / `until` (a date, an ISO date-time or an age such as 7d) limit the messages reported;
    messages whose log gives no time are kept. summary.json is always written.
    """
    workdir = Path(workdir)
    formats = list(formats or DEFAULT_FORMATS)
    unknown = [f for f in formats if f not in REPORTERS]
    if unknown:
        raise RelayImpactError(
            f"unknown report format(s) {', '.join(unknown)}; expected: {', '.join(REPORTERS)}"
        )
    if "json" not in formats:
        formats.append("json")  # summary.json always exists: scripts read it
    data = collect(workdir, parse_period(since, until))
    outdir = workdir / "report"
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for fmt in dict.fromkeys(formats):
        written.extend(REPORTERS[fmt].write(data, outdir))
    return {"summary": data.summary, "files": [str(p) for p in written], "dir": str(outdir)}


__all__ = [
    "DEFAULT_FORMATS",
    "REPORTERS",
    "Period",
    "ReportData",
    "build_summary",
    "collect",
    "parse_period",
    "report",
    "terminal_summary",
]
