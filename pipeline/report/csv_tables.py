"""One CSV per report table, full length (report.html and report.md show the first rows).

Cells are attacker-controlled mail data opened in a spreadsheet: a text cell that starts with
=, +, -, @, tab or carriage return gets a leading single quote so Excel / LibreOffice show it
as text instead of running it as a formula (OWASP, "CSV Injection").

    affected_senders.csv:  p1_domain,p2_domain,host,source_ip,scenario,...,example_message_ids
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..workdir import atomic_write_bytes
from .aggregate import ReportData
from .present import ingest_files, remedies, sections, warnings_table, wide_by_day, wide_scenarios

NAME = "csv"
_FORMULA_START = r"^[=+\-@\t\r]"


def neutralise(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Prefix ' to text cells a spreadsheet would read as a formula (vectorized)."""
    risky = pc.fill_null(pc.match_substring_regex(column, _FORMULA_START), False)
    return pc.if_else(risky, pc.binary_join_element_wise("'", column, ""), column)


def spreadsheet_safe(table: pa.Table) -> pa.Table:
    """Lists joined with spaces, times as ISO 8601 UTC, every text cell neutralised."""
    cols = {}
    for name in table.column_names:
        col = table[name]
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            col = pc.binary_join(col, " ")
        elif pa.types.is_timestamp(col.type):
            seconds = pc.cast(col, pa.timestamp("s", tz="UTC"), safe=False)
            col = pc.strftime(seconds, format="%Y-%m-%dT%H:%M:%SZ")
        elif pa.types.is_dictionary(col.type) or pa.types.is_large_string(col.type):
            col = col.cast(pa.string())
        if pa.types.is_string(col.type):
            col = neutralise(col)
        cols[name] = col
    return pa.table(cols)


def tables(data: ReportData) -> dict[str, pa.Table]:
    """CSV file name -> full table."""
    out = {
        "messages_by_day.csv": wide_by_day(data),
        "scenarios.csv": wide_scenarios(data),
        "remedies.csv": remedies(data),
    }
    out.update({s.csv_name: s.table for s in sections(data)})
    out["ingest_files.csv"] = ingest_files(data)
    out["rejected_line_examples.csv"] = data.reject_examples
    out["warnings.csv"] = warnings_table(data)
    return out


def to_csv_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pacsv.write_csv(spreadsheet_safe(table), buf, write_options=pacsv.WriteOptions(quoting_style="needed"))
    return buf.getvalue()


def write(data: ReportData, outdir: Path) -> list[Path]:
    written = []
    for name, table in tables(data).items():
        path = outdir / name
        atomic_write_bytes(path, to_csv_bytes(table))
        written.append(path)
    return written
