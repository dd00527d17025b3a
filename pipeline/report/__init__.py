"""Reporters: each reads the verdicts dataset (and the ingest accounting) and writes files into
WORKDIR/report/. REPORTERS is the registry: format name -> function(workdir, outdir, summary)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import RelayImpactError
from ..workdir import write_json
from .summary import build_summary, terminal_summary


def _json(workdir: Path, outdir: Path, summary: dict) -> list[Path]:
    path = outdir / "summary.json"
    write_json(path, summary)
    return [path]


REPORTERS: dict[str, Callable[[Path, Path, dict], list[Path]]] = {"json": _json}
DEFAULT_FORMATS = ("json",)


def report(
    workdir: str | Path, formats: Iterable[str] | None = None, since: str | None = None,
    until: str | None = None,
) -> dict:
    """Write the requested reports into WORKDIR/report/; return the summary and the paths.

    `since` / `until` (a date or an age such as 7d) limit the messages reported.
    TODO(issue 5): honour since/until."""
    workdir = Path(workdir)
    formats = list(formats or DEFAULT_FORMATS)
    unknown = [f for f in formats if f not in REPORTERS]
    if unknown:
        raise RelayImpactError(
            f"unknown report format(s) {', '.join(unknown)}; expected: {', '.join(REPORTERS)}"
        )
    summary = build_summary(workdir)
    outdir = workdir / "report"
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if "json" not in formats:
        formats.append("json")  # summary.json always exists: scripts read it
    for fmt in formats:
        written.extend(REPORTERS[fmt](workdir, outdir, summary))
    return {"summary": summary, "files": [str(p) for p in written], "dir": str(outdir)}


__all__ = ["REPORTERS", "build_summary", "report", "terminal_summary"]
