"""What Exchange Server's own log files share: a `#`-header block (W3C style) naming the columns in
a `#Fields:` line, then comma-separated rows with CSV quoting. Message tracking logs
(`MSGTRK*.LOG`) and SMTP protocol logs (`SEND*.LOG`, `RECV*.LOG`) both look like this:

    #Software: Microsoft Exchange Server
    #Version: 15.0.0.0
    #Log-type: SMTP Send Protocol Log
    #Date: 2026-11-02T08:00:00.000Z
    #Fields: date-time,connector-id,session-id,sequence-number,local-endpoint,remote-endpoint,event,data,context
    2026-11-02T08:15:02.114Z,Outbound to Office 365 - 6f1d...,08DE1A2B3C4D5E01,0,,52.101.194.18:25,+,,

`iter_blocks` streams such a file in blocks of at most 16 MiB (`chunk_bytes` if smaller): the
block is cut at a line end that is also a record end (quotes balanced, so a quoted value may hold
a newline). A block of plain one-line records (the normal case: no header, blank or multi-line
row inside) is handed to pyarrow's CSV reader as it is, and row i is line first+i, which the
reader confirms by returning exactly one row per line. Any other block takes the careful path:
header lines are found with numpy on the raw bytes and each run of data lines is parsed on its
own. Columns are read as strings; a reader may project only the columns it needs (`CsvSpec`),
read empty cells as null and dictionary-encode low-cardinality columns at parse time. Each parsed
row keeps the number of its first physical line and how many physical lines it spans, so a
format module can account for every line.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..errors import InputFormatError
from ..normalize import parse_iso_utc
from ..schema import TS
from .base import IngestContext, Source, sniff_encoding, utf8_replaced, whole_string

T = TypeVar("T")
NL, QUOTE, HASH, CR = 10, 34, 35, 13
# Blocks larger than this only cost memory: the CSV reader is as fast on 16 MiB as on 64 MiB,
# and a smaller block keeps a reader's peak RSS flat whatever the file size.
MAX_BLOCK_BYTES = 16 << 20
_CSV_BLOCK = 1 << 20  # pyarrow's own default: lets both cores parse one block in parallel


@dataclass(frozen=True)
class CsvSpec:
    """How a reader wants its rows: which columns (None = all of #Fields), empty cells as null
    or as '', and which columns to dictionary-encode while parsing (event-id and the like)."""

    columns: tuple[str, ...] | None = None
    empty_is_null: bool = False
    dictionary: frozenset[str] = frozenset()


@dataclass
class Block:
    """Parsed data rows of one stretch of a file that shares one `#Fields:` line."""

    table: pa.Table  # string columns, named as in #Fields (lower-case)
    lines: np.ndarray  # first physical line (1-based) of each row
    nlines: np.ndarray  # physical lines each row spans (1 unless a quoted value holds a newline)
    headers: dict[str, str] = field(default_factory=dict)  # '#Log-type' -> 'SMTP Send Protocol Log'
    data: bytes | memoryview = b""  # the raw bytes the rows were parsed from
    data_line: int = 1  # line number of the first line of `data`

    def raw_rows(self, rows: np.ndarray) -> list[str]:
        """The raw text of the given rows (for rejects; a projected table no longer has it)."""
        arr = np.frombuffer(self.data, dtype=np.uint8)
        nl = np.flatnonzero(arr == NL)
        starts = np.concatenate([[0], nl + 1])
        ends = np.concatenate([nl, [len(arr)]])
        first = self.lines[rows] - self.data_line
        last = first + self.nlines[rows] - 1
        raw = bytes(self.data)
        return [raw[starts[a] : ends[b]].decode("utf-8", errors="replace").rstrip("\r")
                for a, b in zip(first.tolist(), last.tolist(), strict=True)]


def header_lines(head: bytes) -> dict[str, str]:
    """The `#Name: value` lines at the top of a file, keys lower-cased ('log-type', 'fields')."""
    from .base import decode_head

    out: dict[str, str] = {}
    for line in decode_head(head).splitlines()[:20]:
        line = line.lstrip("\ufeff")
        if not line.startswith("#"):
            break
        name, _, value = line[1:].partition(":")
        out[name.strip().lower()] = value.strip()
    return out


def split_fields(value: str) -> list[str]:
    return [f.strip().lower() for f in value.split(",")]


def _utf8_chunks(src: Source, chunk_bytes: int) -> Iterator[bytes]:
    """The file as UTF-8 bytes in chunks: a UTF-8 BOM is dropped, UTF-16 is transcoded (rare for
    these logs, but a file re-saved by an editor may be)."""
    enc = sniff_encoding(src.head(4096))
    with src.open() as fh:
        if enc.startswith("utf-16"):
            text = io.TextIOWrapper(fh, encoding=enc, errors="replace", newline="")
            while chunk := text.read(max(chunk_bytes // 2, 1)):
                yield chunk.lstrip("\ufeff").encode("utf-8")
            return
        first = True
        while chunk := fh.read(chunk_bytes):
            if first and chunk.startswith(codecs.BOM_UTF8):
                chunk = chunk[3:]
            first = False
            yield chunk


def _line_table(buf: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start offset, end offset (without CR/LF) and quote count of every line in `buf`."""
    arr = np.frombuffer(buf, dtype=np.uint8)
    nl = np.flatnonzero(arr == NL)
    starts = np.concatenate([[0], nl + 1])
    ends = np.concatenate([nl, [len(arr)]])
    if len(arr) and arr[-1] == NL:  # no empty line after the final newline
        starts, ends = starts[:-1], ends[:-1]
    quotes = np.flatnonzero(arr == QUOTE)
    qcount = np.bincount(np.searchsorted(starts, quotes, side="right") - 1, minlength=len(starts))
    # drop the CR of CRLF line ends from the visible end
    has_cr = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == CR)
    return starts, ends - has_cr, qcount[: len(starts)]


def _cut_at_record_end(buf: bytes) -> int:
    """Offset just after the last newline that ends a record (quotes balanced up to it); 0 if none."""
    arr = np.frombuffer(buf, dtype=np.uint8)
    nl = np.flatnonzero(arr == NL)
    if not len(nl):
        return 0
    quotes = np.flatnonzero(arr == QUOTE)
    before = np.searchsorted(quotes, nl)  # quotes before each newline
    even = np.flatnonzero(before % 2 == 0)
    return int(nl[even[-1]]) + 1 if len(even) else 0


def block_bytes(ctx: IngestContext) -> int:
    return max(1, min(ctx.options.chunk_bytes, MAX_BLOCK_BYTES))


def _record_end(buf: bytes, limit: int) -> int:
    """Offset just after the last newline of `buf` that ends a record; 0 if none. The last line
    end is the answer unless a quoted value is still open there (odd number of quotes before
    it), which one vectorized count tells without finding every line."""
    cut = buf.rfind(b"\n") + 1
    if cut and np.count_nonzero(np.frombuffer(buf, dtype=np.uint8, count=cut) == QUOTE) % 2:
        cut = _cut_at_record_end(buf)
    if cut == 0 and len(buf) > 4 * limit:
        # An unbalanced stray quote must not make us hold the rest of the file: fall back to
        # the last line end (the run parser then rejects what it cannot align).
        cut = buf.rfind(b"\n") + 1
    return cut


def iter_blocks(
    src: Source,
    ctx: IngestContext,
    fmt: str,
    default_fields: dict[int, list[str]],
    expected: str,
    spec: CsvSpec | None = None,
) -> Iterator[Block]:
    """Stream `src` as Blocks. Header, comment and blank lines are accounted here (skipped);
    rows with the wrong number of fields are rejected here; every other line is in a Block and
    the caller accounts for it (parsed or skipped) using `Block.nlines`."""
    state = {"fields": None, "headers": {}, "line": 1, "seen_data": False,
             "spec": spec or CsvSpec()}
    carry = b""
    limit = block_bytes(ctx)
    for chunk in _utf8_chunks(src, limit):
        buf = carry + chunk if carry else chunk
        cut = _record_end(buf, limit)
        if cut == 0:
            carry = buf
            continue
        carry = buf[cut:]
        if whole_string(buf, cut) is None:  # pyarrow's CSV reader cannot even hand such a
            buf = utf8_replaced(buf, cut)    # row to the invalid-row handler
            cut = len(buf)
        yield from _blocks_of_piece(buf, cut, src, ctx, fmt, default_fields, expected, state)
        del buf, chunk  # only the carried tail (usually part of one line) outlives the block
    if carry:
        if whole_string(carry, len(carry)) is None:
            carry = utf8_replaced(carry, len(carry))
        yield from _blocks_of_piece(carry, len(carry), src, ctx, fmt, default_fields, expected,
                                    state)
    if not state["seen_data"] and state["fields"] is None:
        raise InputFormatError(f"{src.name}: no #Fields: line and no data; expected {expected}")


def _plain_lines(buf: bytes, end: int) -> int:
    """Number of lines in buf[:end] if none of them is a header/comment line (those must not
    reach the CSV reader as data), else 0. Blank lines need no test: the reader skips them, so
    the row count then falls short of the line count."""
    arr = np.frombuffer(buf, dtype=np.uint8, count=end)
    nl = np.flatnonzero(arr == NL)
    if arr[0] == HASH or (arr[nl[nl < end - 1] + 1] == HASH).any():
        return 0
    return len(nl) + (0 if arr[-1] == NL else 1)


def _blocks_of_piece(
    buf: bytes, end: int, src: Source, ctx: IngestContext, fmt: str,
    default_fields: dict[int, list[str]], expected: str, state: dict,
) -> Iterator[Block]:
    """buf[:end] (whole records) as Blocks: the fast path when it is plain one-line records,
    else the careful line-by-line path."""
    if end == 0:
        return
    fields = state["fields"]
    n = _plain_lines(buf, end) if fields is not None else 0
    if n:
        piece = memoryview(buf)[:end]  # no copy of the block
        try:
            # An invalid row (wrong field count) stops the parse: the careful path numbers it.
            # Values are read as one line each: a record with a newline inside quotes then
            # shows as rows with too few fields, and the careful path takes over.
            table = _read_csv(piece, fields, True, lambda row: "error", state["spec"],
                              newlines=False)
        except pa.ArrowInvalid:  # an invalid row: the careful path numbers it
            table = None
        # One row per line: row i is line first+i (a blank line, which the reader skips, would
        # give fewer rows and send the piece to the careful path).
        if table is not None and table.num_rows == n:
            first = state["line"]
            state["line"] += n
            state["seen_data"] = True
            ctx.lines_read(src.name, fmt, n)
            yield Block(table, np.arange(first, first + n, dtype=np.int64),
                        np.ones(n, dtype=np.int64), dict(state["headers"]), piece, first)
            return
        del table
    piece = buf if end == len(buf) else buf[:end]
    yield from _blocks_of(piece, src, ctx, fmt, default_fields, expected, state)


def _blocks_of(
    buf: bytes, src: Source, ctx: IngestContext, fmt: str,
    default_fields: dict[int, list[str]], expected: str, state: dict,
) -> Iterator[Block]:
    starts, ends, qcount = _line_table(buf)
    n = len(starts)
    first_line = state["line"]
    state["line"] += n
    ctx.lines_read(src.name, fmt, n)
    # A line begins a record when the quotes before it are balanced.
    parity_before = np.concatenate([[0], np.cumsum(qcount)[:-1]]) % 2 if n else np.zeros(0, int)
    rec_start = parity_before == 0
    arr = np.frombuffer(buf, dtype=np.uint8)
    first_byte = np.where(ends > starts, arr[np.minimum(starts, len(arr) - 1)], 0)
    blank = rec_start & (ends == starts)
    header = rec_start & (first_byte == HASH)
    ctx.skipped(src.name, fmt, "blank line", int(blank.sum()))
    ctx.skipped(src.name, fmt, "header line (#Software, #Version, #Log-type, #Date, #Fields)",
                int(header.sum()))
    data_start = rec_start & ~blank & ~header
    # Runs of data between header lines share one #Fields mapping.
    cuts = np.flatnonzero(header)
    bounds = np.concatenate([[-1], cuts, [n]])
    for k in range(len(bounds) - 1):
        lo, hi = bounds[k] + 1, bounds[k + 1]
        if k > 0:
            _apply_header(buf[starts[cuts[k - 1]] : ends[cuts[k - 1]]], state)
        if hi <= lo:
            continue
        # Lines with text: every one is in a record. Those before the run's first record start
        # are there only because a stray quote (say in a header line) left the quotes unbalanced.
        body = np.flatnonzero(ends[lo:hi] > starts[lo:hi]) + lo
        if not len(body):
            continue
        recs = np.flatnonzero(data_start[lo:hi]) + lo
        stray = not len(recs) or body[0] < recs[0]
        if not stray:
            # physical lines per record: up to the next record start / blank / header in the run
            nxt = np.concatenate([recs[1:], [hi]])
            span = nxt - recs
            # blank lines between records inside a run were counted as skipped already
            span = span - np.add.reduceat(blank[lo:hi].astype(np.int64), recs - lo)
        data = buf[starts[body[0]] : (starts[hi] if hi < n else len(buf))]
        data_line = first_line + int(body[0])
        fields = state["fields"]
        if fields is None:
            fields = _guess_fields(buf[starts[body[0]] : ends[body[0]]], default_fields)
            if fields is None:
                raise InputFormatError(
                    f"{src.name}: line {data_line}: data before any #Fields: line; "
                    f"expected {expected}"
                )
        state["seen_data"] = True
        # If a stray quote fooled the record finder, parse the run one line per record instead
        # (the reader then skips empty lines that seemed to be inside a quoted value).
        per_line = _OnePerLine(body + first_line, int((hi - lo) - len(body) - blank[lo:hi].sum()))
        records = None if stray else (recs + first_line, span)
        yield from _parse_run(data, fields, records, src, ctx, fmt, state, per_line, data_line)
    if len(cuts) and cuts[-1] >= 0:
        _apply_header(buf[starts[cuts[-1]] : ends[cuts[-1]]], state)


def _apply_header(raw: bytes, state: dict) -> None:
    text = raw.decode("utf-8", errors="replace").lstrip("\ufeff")
    name, _, value = text[1:].partition(":")
    key = name.strip().lower()
    if key == "fields":
        state["fields"] = split_fields(value)
    else:
        state["headers"] = {**state["headers"], key: value.strip()}


def _guess_fields(first_row: bytes, default_fields: dict[int, list[str]]) -> list[str] | None:
    """A file without its header (a copied excerpt): choose the layout by the field count."""
    try:
        row = next(csv.reader([first_row.decode("utf-8", errors="replace")]))
    except (csv.Error, StopIteration):
        return None
    return default_fields.get(len(row))


_DICT = pa.dictionary(pa.int32(), pa.string())


def _read_csv(
    data: bytes | memoryview, fields: list[str], threads: bool, on_invalid, spec: CsvSpec,
    newlines: bool = True,
) -> pa.Table:
    wanted = fields if spec.columns is None else [f for f in spec.columns if f in fields]
    return pacsv.read_csv(
        pa.py_buffer(data),
        read_options=pacsv.ReadOptions(
            column_names=fields, use_threads=threads, block_size=_CSV_BLOCK
        ),
        parse_options=pacsv.ParseOptions(
            newlines_in_values=newlines, invalid_row_handler=on_invalid
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={f: _DICT if f in spec.dictionary else pa.string() for f in wanted},
            include_columns=wanted,
            null_values=[""],
            strings_can_be_null=spec.empty_is_null,
            quoted_strings_can_be_null=spec.empty_is_null,
        ),
    )


class _OnePerLine(NamedTuple):
    """A run read one line per record: its lines with text, and the empty lines the reader
    then drops (they had seemed to be inside a quoted value, so nobody counted them)."""

    lines: np.ndarray
    dropped_blank: int


def _parse_run(
    data: bytes, fields: list[str], records: tuple[np.ndarray, np.ndarray] | None,
    src: Source, ctx: IngestContext, fmt: str, state: dict, per_line: _OnePerLine,
    data_line: int,
) -> Iterator[Block]:
    """One run of records under one #Fields line as a Block. `records` is (first line, lines
    spanned) per record as the quotes delimit them; when None (quotes unbalanced before the
    first record), or when the reader's rows do not come out as counted, the run is read
    one line per record instead (`per_line`). `data` is valid UTF-8 (iter_blocks)."""
    invalid: list = []
    spec = state["spec"]

    def on_invalid(row) -> str:
        invalid.append(row)
        return "skip"

    def read_per_line() -> tuple[pa.Table, bytes, np.ndarray, np.ndarray]:
        ctx.skipped(src.name, fmt, "blank line", per_line.dropped_blank)
        text, lines = _drop_unbalanced(data, data_line, per_line.lines, src, ctx, fmt)
        invalid.clear()
        table = _read_csv(text, fields, True, on_invalid, spec, newlines=False)
        return table, text, lines, np.ones(len(lines), dtype=np.int64)

    newlines = records is not None
    if newlines:
        rec_lines, span = records
        table = _read_csv(data, fields, True, on_invalid, spec)
        if table.num_rows + len(invalid) != len(rec_lines):
            newlines = False
    if not newlines:
        table, data, rec_lines, span = read_per_line()
    keep = np.ones(len(rec_lines), dtype=bool)
    if invalid:
        # Threaded parsing does not number invalid rows; parse again in one thread to get them.
        invalid.clear()
        table = _read_csv(data, fields, False, on_invalid, spec, newlines)
        idx = np.array([r.number - 1 for r in invalid], dtype=np.int64)
        idx = idx[(idx >= 0) & (idx < len(rec_lines))]
        keep[idx] = False
        reasons = [
            f"expected {len(fields)} comma-separated fields as in the #Fields line" for _ in idx
        ]
        ctx.reject_lines(fmt, src.name, rec_lines[idx].tolist(), reasons,
                         [r.text for r in invalid][: len(idx)])
        extra = int(span[idx].sum()) - len(idx)
        ctx.skipped(src.name, fmt, "continuation line of a rejected row", extra)
    lines, nlines = rec_lines[keep], span[keep]
    if len(lines) != table.num_rows:
        # Defensive: never mis-attribute lines. Should not happen (counted the same way).
        raise InputFormatError(
            f"{src.name}: could not align CSV rows with lines near line {int(rec_lines[0])}"
        )
    yield Block(table, lines, nlines, dict(state["headers"]), data, data_line)


def _drop_unbalanced(data: bytes | memoryview, data_line: int, lines: np.ndarray,
                     src: Source, ctx: IngestContext, fmt: str) -> tuple[bytes, np.ndarray]:
    """Read one line per record: a line with an odd number of quotes opens a value it never
    closes (the CSV reader would run it on into the next lines), so it is rejected and emptied
    in `data`, which keeps its line numbering. Returns (data, the other lines)."""
    raw = bytes(data)
    starts, ends, qcount = _line_table(raw)
    rel = lines - data_line
    odd = qcount[rel] % 2 == 1
    if not odd.any():
        return raw, lines
    bad = rel[odd]
    ctx.reject_lines(fmt, src.name, lines[odd].tolist(),
                     "unbalanced double quote: a quoted value that never closes",
                     [raw[a:b].decode("utf-8", errors="replace")
                      for a, b in zip(starts[bad].tolist(), ends[bad].tolist(), strict=True)])
    # Bytes of the rejected lines (not their line ends) drop out: an empty line stays.
    delta = np.zeros(len(raw) + 1, dtype=np.int8)
    np.add.at(delta, starts[bad], 1)
    np.add.at(delta, ends[bad], -1)
    keep = np.cumsum(delta[:-1]) == 0
    return np.frombuffer(raw, dtype=np.uint8)[keep].tobytes(), lines[~odd]


def read_ahead(items: Iterator[T]) -> Iterator[T]:
    """`items`, computed one step ahead in a worker thread: reading and parsing the next block
    overlaps the grouping of this one (pyarrow and numpy release the GIL, so both cores work).
    Memory: one extra block. An exception in the worker is raised here, in order."""
    end = object()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="exchange-read") as pool:
        ahead = pool.submit(next, items, end)
        while (item := ahead.result()) is not end:
            ahead = pool.submit(next, items, end)
            yield item


# --- vectorized helpers shared by the Exchange readers ---------------------------------------


def null_if_empty(arr: pa.Array) -> pa.Array:
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    return pc.if_else(pc.equal(pc.utf8_length(arr), 0), pa.scalar(None, pa.string()), arr)


def parse_utc(arr: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Exchange's `2026-11-02T08:15:02.114Z`: Arrow's ISO cast directly (fast path), else the
    careful parser that flags bad values."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    try:
        ts = pc.cast(arr, TS)
        return ts, pc.fill_null(pc.is_null(ts), False) if ts.null_count else pa.array(
            np.zeros(len(arr), dtype=bool))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return parse_iso_utc(arr)


def glob_regex(globs: tuple[str, ...]) -> str:
    """relay.targets globs (`*.mail.protection.outlook.com`) as one case-insensitive regex."""
    parts = [
        re.escape(g.strip().rstrip(".")).replace(r"\*", ".*").replace(r"\?", ".")
        for g in globs if g.strip()
    ]
    # RE2 (Arrow's regex engine) has no lookahead: a never-matching class stands for "none".
    return "(?i)^(?:" + "|".join(parts) + r")\.?$" if parts else r"[^\x00-\x{10FFFF}]"


def stand_in_target(globs: tuple[str, ...]) -> str:
    """A host name that matches the configured relay targets, for a hop the log names only by
    its send connector ('Outbound to Office 365 - <guid>' without a server-hostname)."""
    first = next((g for g in globs if g.strip()), "*.mail.protection.outlook.com")
    return re.sub(r"[*?]", "office365-connector", first).replace("[", "").replace("]", "")
