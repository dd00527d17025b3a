"""The canonical CSV: any log relay-impact does not parse yet, or test cases stated plainly.

    ts,host,p1_sender,p2_sender,relay_ip,tls_cert,recipients,relay_host
    2026-11-02T08:15:00Z,app01,<>,postmaster@contoso.com,203.0.113.25,,user@fabrikam.com,

The header names `messages` columns (any subset, any order; at least `p1_sender`). An empty cell
is unknown; `<>` in p1_sender is the null sender; `recipients` and `tls_cert` hold several values
separated by ';'; `ts` is ISO 8601, UTC when it has no offset.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..errors import InputFormatError
from ..normalize import parse_iso_utc, split_list
from ..schema import MESSAGES
from .base import IngestContext, Source, decode_head, make_messages, utf8_stream

NAME = "csv"
DESCRIPTION = "canonical CSV: a header row naming messages columns, including p1_sender"

_DERIVED = {"recipient_domains"}  # always recomputed from recipients
_BOOL_TRUE = ["true", "1", "yes", "y", "t"]
_BOOL_FALSE = ["false", "0", "no", "n", "f"]


def _header(head: bytes) -> list[str]:
    text = decode_head(head)
    first = text.splitlines()[0] if text else ""
    try:
        return [c.strip().lower() for c in next(csv.reader(io.StringIO(first)))]
    except (StopIteration, csv.Error):
        return []


def detect(head: bytes) -> bool:
    cols = _header(head)
    return "p1_sender" in cols and all(c in MESSAGES.names or not c for c in cols)


def _to_bool(arr: pa.Array) -> tuple[pa.Array, pa.Array]:
    s = pc.utf8_lower(pc.utf8_trim_whitespace(arr))
    t = pc.is_in(s, value_set=pa.array(_BOOL_TRUE))
    f = pc.is_in(s, value_set=pa.array(_BOOL_FALSE))
    empty = pc.fill_null(pc.equal(pc.utf8_length(s), 0), True)
    out = pc.if_else(t, True, pc.if_else(f, False, pa.scalar(None, pa.bool_())))
    bad = pc.and_(pc.invert(empty), pc.invert(pc.or_(t, f)))
    return out, pc.fill_null(bad, False)


def _to_int(arr: pa.Array) -> tuple[pa.Array, pa.Array]:
    s = pc.utf8_trim_whitespace(arr)
    ok = pc.fill_null(pc.match_substring_regex(s, r"^-?\d+$"), False)
    empty = pc.fill_null(pc.equal(pc.utf8_length(s), 0), True)
    out = pc.if_else(ok, s, pa.scalar(None, pa.string())).cast(pa.int64())
    return out, pc.and_(pc.invert(empty), pc.invert(ok))


def _convert(table: pa.Table) -> tuple[dict[str, pa.Array], pa.Array, pa.Array]:
    """String columns -> typed message columns, plus a per-row 'bad' mask and its reason."""
    n = table.num_rows
    cols: dict[str, pa.Array] = {}
    bad = pa.array(np.zeros(n, dtype=bool))
    reason = pa.nulls(n, pa.string())

    def flag(mask: pa.Array, why: str) -> None:
        nonlocal bad, reason
        new = pc.and_(mask, pc.invert(bad))
        reason = pc.if_else(new, pa.scalar(why), reason)
        bad = pc.or_(bad, mask)

    for name in table.column_names:
        if name in _DERIVED or not name:
            continue
        raw = table.column(name).combine_chunks()
        ftype = MESSAGES.field(name).type
        if name == "ts":
            cols[name], mask = parse_iso_utc(raw)
            flag(mask, "ts is not an ISO 8601 date-time")
        elif name in ("recipients",):
            cols[name] = split_list(raw)
        elif name == "tls_cert":
            names = split_list(raw)
            cols[name] = pc.if_else(
                pc.equal(pc.list_value_length(names), 0),
                pa.scalar(None, pa.string()),
                pc.binary_join(names, ";"),
            )
        elif pa.types.is_boolean(ftype):
            cols[name], mask = _to_bool(raw)
            flag(mask, f"{name} is not true/false")
        elif pa.types.is_integer(ftype):
            cols[name], mask = _to_int(raw)
            flag(mask, f"{name} is not a whole number")
        else:
            s = raw
            if name != "p1_sender":  # p1: '' would be the null sender; only '<>' says so
                s = pc.if_else(pc.equal(pc.utf8_length(s), 0), pa.scalar(None, pa.string()), s)
            cols[name] = s
    return cols, bad, reason


def _line_numbers(cursor: int, n: int, invalid: set[int]) -> tuple[np.ndarray, int]:
    """The next n physical line numbers from `cursor` that are not invalid rows."""
    out = np.empty(n, dtype=np.int64)
    i, line = 0, cursor
    # Invalid rows are rare: jump over runs of valid lines with arange, not one by one.
    blockers = sorted(x for x in invalid if x >= cursor)
    for b in blockers + [None]:
        stop = n - i if b is None else min(n - i, b - line)
        if stop > 0:
            out[i : i + stop] = np.arange(line, line + stop)
            i += stop
            line += stop
        if i >= n:
            break
        line = b + 1
    return out, line


def read(sources: list[Source], ctx: IngestContext) -> Iterator[pa.RecordBatch]:
    for src in sources:
        yield from _read_one(src, ctx)


def _read_one(src: Source, ctx: IngestContext) -> Iterator[pa.RecordBatch]:
    head = src.head()
    cols = _header(head)
    if "p1_sender" not in cols:
        raise InputFormatError(
            f"{src.name}: not a canonical CSV; expected a header row naming messages columns "
            "including p1_sender"
        )
    unknown = [c for c in cols if c and c not in MESSAGES.names]
    if unknown:
        raise InputFormatError(
            f"{src.name}: unknown column(s) {', '.join(unknown)}; the canonical CSV takes "
            f"messages columns: {', '.join(MESSAGES.names)}"
        )
    invalid: dict[int, str] = {}

    def on_invalid(row) -> str:
        invalid[row.number] = row.text
        return "skip"

    reader = pacsv.open_csv(
        utf8_stream(src),
        read_options=pacsv.ReadOptions(
            use_threads=False, block_size=8 << 20
        ),
        parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in cols},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    reader_names = reader.schema.names
    cursor, total_rows, reported = 2, 0, set()
    ctx.lines_read(src.name, NAME, 1)
    ctx.skipped(src.name, NAME, "header", 1)
    for batch in reader:
        table = pa.Table.from_batches([batch]).rename_columns([c.strip().lower() for c in reader_names])
        lines, cursor = _line_numbers(cursor, table.num_rows, set(invalid))
        total_rows += table.num_rows
        conv, bad, reason = _convert(table)
        bad_idx = np.flatnonzero(bad.to_numpy(zero_copy_only=False))
        if len(bad_idx):
            raw = _raw_rows(table, bad_idx)
            ctx.lines_read(src.name, NAME, len(bad_idx))
            ctx.reject_lines(NAME, src.name, lines[bad_idx].tolist(), reason.take(bad_idx), raw)
        keep = pc.invert(bad)
        conv = {k: v.filter(keep) for k, v in conv.items()}
        n = int(pc.sum(keep.cast(pa.int64())).as_py() or 0)
        conv["source_line"] = pa.array(lines[~bad.to_numpy(zero_copy_only=False)])
        conv["source_format"] = pa.array([NAME] * n)
        conv["source_file"] = pa.array([src.name] * n)
        if "host" not in conv and src.host:
            conv["host"] = pa.array([src.host] * n)
        elif src.host:
            conv["host"] = pc.coalesce(conv["host"], pa.scalar(src.host))
        ctx.lines_read(src.name, NAME, n)
        ctx.parsed(src.name, NAME, n)
        if n:
            yield make_messages(conv, n)
        new_invalid = [k for k in invalid if k not in reported]
        _reject_invalid(ctx, src, {k: invalid[k] for k in new_invalid}, len(cols))
        reported.update(new_invalid)
    rest = {k: v for k, v in invalid.items() if k not in reported}
    _reject_invalid(ctx, src, rest, len(cols))


def _raw_rows(table: pa.Table, idx: np.ndarray) -> list[str]:
    sub = table.take(pa.array(idx))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for row in zip(*[c.to_pylist() for c in sub.columns], strict=True):
        w.writerow(row)
    return buf.getvalue().splitlines()


def _reject_invalid(ctx: IngestContext, src: Source, rows: dict[int, str], ncols: int) -> None:
    if not rows:
        return
    ctx.lines_read(src.name, NAME, len(rows))
    ctx.reject_lines(
        NAME, src.name, list(rows), f"expected {ncols} columns as in the header", list(rows.values())
    )
