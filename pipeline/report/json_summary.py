"""summary.json: the numbers scripts read (contract.md), plus the accounting, the warnings and
the period the report covers.

    {"messages": 40, "rejected_lines": 3, "impact": {"newly_rejected": 20, ...}, ...}
"""

from __future__ import annotations

from pathlib import Path

from ..workdir import write_json
from .aggregate import ReportData

NAME = "json"
FILE = "summary.json"


def write(data: ReportData, outdir: Path) -> list[Path]:
    path = outdir / FILE
    write_json(path, data.summary)
    return [path]
