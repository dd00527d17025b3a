"""Exchange Online message trace, as admins export it.

    "Received","SenderAddress","RecipientAddress","Subject","Status","ToIP","FromIP","Size","MessageId","MessageTraceId"
    "11/13/2026 9:02:11 AM","bounces+4123-ab12=fabrikam.com@em123.sendgrid.net","jane@fabrikam.com","Newsletter","Delivered","","203.0.113.90","18211","<n1@contoso.com>","5b0c..."

Read by header name (any order, any subset):
- `Get-MessageTrace(V2) | Export-Csv`: with or without the `#TYPE` line and the PowerShell
  remoting columns (PSComputerName, RunspaceId, PSShowComputerName); `Received` in the exporting
  machine's culture (`11/13/2026 9:02:11 AM`, `13.11.2026 09:02:11`) or ISO; UTC (Microsoft Learn,
  Get-MessageTrace: "The time stamps on the output are in UTC time format").
- `Get-MessageTraceDetail(V2) | Export-Csv`: one row per event (Date, Event, Detail, Data).
- EAC / Start-HistoricalSearch reports: enhanced summary (`origin_timestamp_utc`,
  `recipient_status` as `addr##Receive, Send;addr2##...`) and extended (`date_time_utc`,
  `event_id`, `return_path`, `sender_address`, `connector_id`, `original_client_ip`), UTF-16LE
  with or without BOM.
- The Reporting Web Service / Graph JSON, one object per line.

Senders (log-formats.md §1.4): `return_path` is P1 (`<>` null sender) and the report's
`sender_address` is P2. The cmdlets' single `SenderAddress` is taken as P1 and P2 stays unknown
(never guessed); a generator address there (`MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@`,
`postmaster@`, `MAILER-DAEMON@`) stands for an NDR whose P1 is really `<>`: P1 is unknown.

A message came in through an inbound connector when the report names one (`connector_id`) or its
client IP (`original_client_ip`, else `FromIP`) is in a configured connector range; such rows get
`relay_ip` and `connector`. One row per recipient (and event) becomes one message row; rows
repeated by overlapping exports are counted once (message id + trace / network message id +
recipient + event + time).
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from ..errors import InputFormatError
from ..normalize import extract, parse_iso_utc
from ..schema import TS
from .base import (
    IngestContext,
    Source,
    decode_head,
    make_messages,
    sniff_encoding,
    text_stream,
    utf8_stream,
)

NAME = "exo-trace"
DESCRIPTION = (
    "Exchange Online message trace: Get-MessageTrace(V2)/-Detail Export-Csv, EAC enhanced "
    "summary or extended report (CSV header with Received/date_time_utc and sender/recipient "
    "columns; UTF-8 or UTF-16), or trace JSON lines"
)

# Our column -> header names that hold it, in order of preference (lower-case).
COLUMNS: dict[str, list[str]] = {
    "ts": ["date_time_utc", "origin_timestamp_utc", "origin_timestamp", "received", "date",
           "receiveddatetime", "datetime"],
    "message_id": ["message_id", "messageid"],
    "trace_id": ["network_message_id", "messagetraceid", "networkmessageid"],
    "sender_cmdlet": ["senderaddress"],  # Get-MessageTrace(V2): P1 (see module docstring)
    "sender_report": ["sender_address"],  # EAC reports: Sender:/From: header, P2
    "return_path": ["return_path", "returnpath"],
    "recipient": ["recipient_address", "recipientaddress"],
    "recipient_status": ["recipient_status"],
    "subject": ["message_subject", "subject"],
    "event": ["event_id", "event"],
    "status": ["status"],
    "detail": ["detail"],
    "data": ["data"],
    "size": ["total_bytes", "size"],
    "original_ip": ["original_client_ip"],
    "from_ip": ["fromip"],
    "client_ip": ["client_ip"],
    "connector": ["connector_id"],
}
_TS_NAMES = set(COLUMNS["ts"])
_SENDER_NAMES = {"senderaddress", "sender_address", "return_path", "returnpath"}
_RECIPIENT_NAMES = {"recipientaddress", "recipient_address", "recipient_status"}
_GENERATOR_RE = r"(?i)^(microsoftexchange329e71ec88ae4615bbc36ab6ce41109e|postmaster|mailer-daemon)@"
_DATE_HINT = "pass --dayfirst (day before month) or --date-format (e.g. '%d.%m.%Y %H:%M:%S')"


# --- detection ---------------------------------------------------------------------------------


def _first_lines(head: bytes) -> list[str]:
    text = decode_head(head).lstrip("\ufeff")
    return [ln for ln in text.splitlines()[:3]]


def _header_of(lines: list[str]) -> tuple[list[str], int]:
    """Column names (lower-case) and how many lines precede the header (#TYPE line)."""
    skip = 1 if lines and lines[0].startswith("#TYPE") else 0
    if len(lines) <= skip:
        return [], skip
    try:
        cols = next(csv.reader(io.StringIO(lines[skip])))
    except (csv.Error, StopIteration):
        return [], skip
    return [c.strip().lower() for c in cols], skip


def detect(head: bytes) -> bool:
    lines = _first_lines(head)
    if lines and lines[0].lstrip().startswith("{"):
        first = lines[0]
        return '"RecipientAddress"' in first and ('"SenderAddress"' in first or
                                                  '"MessageTraceId"' in first)
    cols, _ = _header_of(lines)
    names = set(cols)
    return bool(names & _TS_NAMES) and bool(names & _SENDER_NAMES) and bool(
        names & _RECIPIENT_NAMES
    )


# --- reading -----------------------------------------------------------------------------------


def read(sources: list[Source], ctx: IngestContext) -> Iterator[pa.RecordBatch]:
    """Messages of all the exports at once (rows of one message, or repeated by overlapping
    exports, may sit in different files). Exports larger than PARTITION_BYTES in all are
    spilled to temporary files by message key and collapsed a partition at a time, so memory
    follows the partition size, not the size of the exports."""
    n_parts = -(-sum(_input_bytes(src) for src in sources) // PARTITION_BYTES)
    rules: dict[str, bool | None] = {}
    if n_parts <= 1:
        tables = [t for src in sources for t in _read_file(src, ctx, rules)]
        yield from _messages(tables, rules, ctx)
        return
    with _Spill(n_parts) as spill:
        for src in sources:
            for t in _read_file(src, ctx, rules):
                spill.add(t)
        for tables in spill.partitions():
            yield from _messages(tables, rules, ctx)


# Input bytes per partition when the exports are spilled: collapsing a partition takes about
# 15 times its input size in memory (recipient rows, sort and group-by copies).
PARTITION_BYTES = 32 << 20


def _input_bytes(src: Source) -> int:
    """Size of the decompressed content, estimated for .gz (text logs compress about 8:1)."""
    try:
        if src.member is not None:
            with zipfile.ZipFile(src.path) as zf:
                size = zf.getinfo(src.member).file_size
        else:
            size = src.path.stat().st_size
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return 0
    return size * (8 if src.name.lower().endswith(".gz") else 1)


def _messages(tables: list[pa.Table], rules: dict[str, bool | None],
              ctx: IngestContext) -> Iterator[pa.RecordBatch]:
    """Raw canonical rows (each table from one file) -> message batches."""
    parts = [_dates(t, rules, ctx) for t in tables if t.num_rows]
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return
    rows = pa.concat_tables(parts, promote_options="permissive")
    del parts
    messages = _collapse(rows, ctx)
    for i in range(0, messages.num_rows, 100_000):
        yield _batch(messages.slice(i, 100_000))


class _Spill:
    """Raw canonical rows written to `n` temporary Arrow IPC files by a hash of their message
    key, so that all rows of one message (whatever file they came from) meet in one
    partition. The temporary folder goes away with the context, crash or not."""

    def __init__(self, n: int):
        self.n = n
        self.dir: Path | None = None
        self.writers: list = []

    def __enter__(self) -> _Spill:
        self.dir = Path(tempfile.mkdtemp(prefix="relay-impact-trace-"))
        self.writers = [None] * self.n
        return self

    def __exit__(self, *exc) -> None:
        self._close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _close(self) -> None:
        for w in self.writers:
            if w is not None:
                w.close()
        self.writers = [None] * self.n

    def add(self, t: pa.Table) -> None:
        if not t.num_rows:
            return
        t = t.cast(_RAW_SCHEMA)
        part = _partition_of(t, self.n)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(self.n + 1))
        for k in np.flatnonzero(np.diff(bounds)):
            if self.writers[k] is None:
                self.writers[k] = pa.ipc.new_stream(self.dir / f"{k}.arrows", _RAW_SCHEMA)
            # One batch per source file (the date rule is the file's).
            self.writers[k].write_table(t.take(order[bounds[k]:bounds[k + 1]]))

    def partitions(self) -> Iterator[list[pa.Table]]:
        self._close()
        for k in range(self.n):
            path = self.dir / f"{k}.arrows"
            if not path.exists():
                continue
            with pa.ipc.open_stream(path) as reader:
                tables = [pa.Table.from_batches([b]) for b in reader]
            path.unlink()
            yield tables


_RAW_SCHEMA = pa.schema(
    [(c, pa.string()) for c in COLUMNS]
    + [("line", pa.int64()), ("nlines", pa.int64()), ("file", pa.string()),
       ("host", pa.string()), ("rich", pa.int8())])


def _partition_of(t: pa.Table, n: int) -> np.ndarray:
    """Partition of each row: a hash of the message key _collapse groups by (message id and
    trace id as normalised there), computed once per distinct key."""
    keys = _message_key(t.column("message_id").combine_chunks(),
                        t.column("trace_id").combine_chunks())
    enc = pc.dictionary_encode(keys)
    hashes = pd.util.hash_array(enc.dictionary.to_numpy(zero_copy_only=False))
    return (hashes % np.uint64(n)).astype(np.int64)[enc.indices.to_numpy(zero_copy_only=False)]


def _message_key(mid: pa.Array, tid: pa.Array) -> pa.Array:
    """'message id|trace id', lower case, without the Message-ID's angle brackets."""
    mid_n = pc.utf8_lower(pc.replace_substring_regex(pc.fill_null(mid, ""), r"^<|>$", ""))
    tid_n = pc.utf8_lower(pc.fill_null(tid, ""))
    return pc.binary_join_element_wise(mid_n, tid_n, "|")


def _read_file(src: Source, ctx: IngestContext, rules: dict[str, bool | None]
               ) -> Iterator[pa.Table]:
    """Raw canonical rows of one export, a reader batch at a time (times still as text); the
    file's date rule goes into `rules` once the whole file has been seen."""
    head = src.head()
    lines = _first_lines(head)
    if lines and lines[0].lstrip().startswith("{"):
        yield from _read_json(src, ctx, rules)
        return
    cols, skip = _header_of(lines)
    if not detect(head):
        raise InputFormatError(
            f"{src.name}: not an Exchange Online message trace export; expected a CSV header with "
            "Received (or date_time_utc), SenderAddress/sender_address/return_path and "
            "RecipientAddress/recipient_status"
        )
    pos = {name: i for i, name in reversed(list(enumerate(cols)))}
    # Duplicate or empty header names would break the reader: name columns by position.
    names = [f"c{i}" for i in range(len(cols))]
    invalid: list = []

    def on_invalid(row) -> str:
        invalid.append(row)
        return "skip"

    reader = pacsv.open_csv(
        utf8_stream(src),
        read_options=pacsv.ReadOptions(
            use_threads=False, block_size=8 << 20,
            skip_rows=skip + 1, column_names=names,
        ),
        parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names},
            strings_can_be_null=False, quoted_strings_can_be_null=False,
        ),
    )
    ctx.lines_read(src.name, NAME, skip + 1)
    ctx.skipped(src.name, NAME, "header line (#TYPE and column names)", skip + 1)
    total_lines, blanks = _scan_lines(src)
    numbering = _Numbering(first_line=skip + 2, blanks=blanks[blanks > skip + 1])
    evidence = DateEvidence()
    for batch in reader:
        t = pa.Table.from_batches([batch])
        nl = _newlines_per_row(t)
        line, bad_lines, bad_raw = numbering.assign(nl, invalid)
        invalid.clear()
        _reject_invalid(src, ctx, bad_lines, bad_raw)
        ctx.lines_read(src.name, NAME, int(t.num_rows + nl.sum()))
        rows = _canonical(t, pos, line, nl, src)
        _observe_dates(rows, evidence, ctx)
        yield rows
    if invalid:
        bad_lines, bad_raw = numbering.rest(invalid)
        _reject_invalid(src, ctx, bad_lines, bad_raw)
    _account_blank_lines(src, ctx, total_lines)
    rules[src.name] = _date_rule(evidence, src, ctx)


def _observe_dates(rows: pa.Table, evidence: DateEvidence, ctx: IngestContext) -> None:
    if ctx.options.date_format is None and ctx.options.dayfirst is None:
        evidence.observe(_DateParts(rows.column("ts").combine_chunks()))


def _date_rule(evidence: DateEvidence, src: Source, ctx: IngestContext) -> bool | None:
    """The file's day-first rule: --dayfirst, else its dates' evidence (an error when they fit
    both ways); irrelevant with --date-format."""
    if ctx.options.date_format is not None:
        return None
    if ctx.options.dayfirst is not None:
        return ctx.options.dayfirst
    return evidence.decide(src.name)


_SCAN_PIECE = 1 << 20  # characters per read of _scan_lines


def _scan_lines(src: Source) -> tuple[int, np.ndarray]:
    """(physical lines in the file, line numbers of its empty lines), streamed in 1 MiB
    pieces: pyarrow's CSV reader drops empty lines without a word, so they are found here to
    count them and to keep every row's source_line the physical one."""
    stream, _enc = text_stream(src)
    total, blanks = 0, []
    carry_len, carry_last = 0, 0  # length and last character of a line left open by a piece
    with stream:
        while piece := stream.read(_SCAN_PIECE):
            chars = np.frombuffer(piece.encode("utf-32-le"), dtype=np.uint32)
            ends = np.flatnonzero(chars == 10)
            if len(ends):
                lengths = ends - np.concatenate([[0], ends[:-1] + 1])
                lengths[0] += carry_len
                before = np.where(ends > 0, chars[np.maximum(ends - 1, 0)], carry_last)
                # a line of nothing, or of a lone CR (Windows line ends), is empty
                empty = (lengths == 0) | ((lengths == 1) & (before == 13))
                blanks.append(total + 1 + np.flatnonzero(empty))
                total += len(ends)
                carry_len = len(chars) - int(ends[-1]) - 1
            else:
                carry_len += len(chars)
            carry_last = int(chars[-1])
    if carry_len:
        total += 1  # a last line without a line end
    return total, np.concatenate(blanks) if blanks else np.zeros(0, dtype=np.int64)


def _account_blank_lines(src: Source, ctx: IngestContext, total: int) -> None:
    """Book the physical lines the CSV reader never reported (empty lines) as skipped."""
    entry = ctx.accounting.file(src.name, NAME)
    missing = total - entry["lines"]
    if missing > 0:
        ctx.lines_read(src.name, NAME, missing)
        ctx.skipped(src.name, NAME, "blank line", missing)


def _newlines_per_row(t: pa.Table) -> np.ndarray:
    """Extra physical lines of each row (quoted values with newlines: EAC subjects)."""
    nl = np.zeros(t.num_rows, dtype=np.int64)
    for col in t.columns:
        nl += pc.fill_null(pc.count_substring(col, "\n"), 0).to_numpy(zero_copy_only=False)
    return nl


class _Numbering:
    """Physical line numbers for CSV records: pyarrow numbers invalid rows by record, valid
    rows come in order between them, and quoted newlines make a record span lines."""

    def __init__(self, first_line: int, blanks: np.ndarray):
        self.record = 1  # next record number (pyarrow counts the header as record 1... below)
        self.line = first_line  # counted without the empty lines the reader drops
        # The j-th empty line (0-based) at physical line b_j comes before every line numbered
        # b_j - j or more without them, so a line's physical number is its number plus how
        # many of these thresholds it reaches.
        self._thresholds = np.asarray(blanks, dtype=np.int64) - np.arange(len(blanks))

    def _physical(self, lines: np.ndarray) -> np.ndarray:
        return lines + np.searchsorted(self._thresholds, lines, side="right")

    def assign(self, nl: np.ndarray, invalid: list) -> tuple[np.ndarray, list[int], list[str]]:
        k = len(nl)
        bad = sorted(((r.number or 0), r.text) for r in invalid)
        # records of this batch: k valid + the invalid ones reported while reading it
        total = k + len(bad)
        recs = np.arange(self.record, self.record + total)
        bad_set = {n - 1 for n, _ in bad}  # pyarrow counts the skipped header row as record 1
        is_bad = np.isin(recs, list(bad_set)) if bad_set else np.zeros(total, dtype=bool)
        if is_bad.sum() != len(bad):
            # numbering disagreed (should not happen): attribute bad rows after the valid ones
            is_bad = np.zeros(total, dtype=bool)
            is_bad[k:] = True
        extra = np.zeros(total, dtype=np.int64)
        extra[~is_bad] = nl
        extra[is_bad] = [t.count("\n") for _, t in bad]
        starts = self._physical(self.line + np.concatenate([[0], np.cumsum(1 + extra)[:-1]]))
        self.line += int((1 + extra).sum())
        self.record += total
        return starts[~is_bad], starts[is_bad].tolist(), [t for _, t in bad]

    def rest(self, invalid: list) -> tuple[list[int], list[str]]:
        _, lines, raws = self.assign(np.zeros(0, dtype=np.int64), invalid)
        return lines, raws


def _reject_invalid(src: Source, ctx: IngestContext, lines: list[int], raws: list[str]) -> None:
    if not lines:
        return
    ctx.lines_read(src.name, NAME, sum(1 + r.count("\n") for r in raws))
    ctx.skipped(src.name, NAME, "continuation line of a rejected row",
                sum(r.count("\n") for r in raws))
    ctx.reject_lines(NAME, src.name, lines, "the row does not have as many fields as the header",
                     raws)


def _pick(t: pa.Table, pos: dict[str, int], key: str) -> pa.Array | None:
    for name in COLUMNS[key]:
        if name in pos and pos[name] < t.num_columns:
            col = t.column(pos[name]).combine_chunks()
            return pc.if_else(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0),
                              pa.scalar(None, pa.string()), pc.utf8_trim_whitespace(col))
    return None


def _canonical(t: pa.Table, pos: dict[str, int], line: np.ndarray, nl: np.ndarray,
               src: Source) -> pa.Table:
    n = t.num_rows
    out = {}
    for key in COLUMNS:
        col = _pick(t, pos, key)
        out[key] = col if col is not None else pa.nulls(n, pa.string())
    out["line"] = pa.array(line, pa.int64())
    out["nlines"] = pa.array(1 + nl, pa.int64())
    out["file"] = pa.array([src.name] * n, pa.string())
    out["host"] = pa.array([src.host] * n, pa.string())
    # How rich the file is: reports with return_path beat cmdlet summaries for the same message.
    rich = 2 if "return_path" in pos else (1 if "sender_address" in pos else 0)
    out["rich"] = pa.array([rich] * n, pa.int8())
    return pa.table(out)


def _read_json(src: Source, ctx: IngestContext, rules: dict[str, bool | None]
               ) -> Iterator[pa.Table]:
    """Reporting Web Service / Graph records, one JSON object per line (ConvertTo-Json
    -Compress per record). Field names are the cmdlet's (Received, SenderAddress, ...)."""
    with src.open() as fh:
        raw = fh.read()
    text = raw.decode(sniff_encoding(raw[:4096]).replace("utf-8", "utf-8-sig"), errors="replace")
    # Records glued together without a newline (seen in copied samples) are split apart.
    text = re.sub(r"\}\s*\{", "}\n{", text)
    lines = [ln for ln in text.split("\n")]
    keep = [i for i, ln in enumerate(lines) if ln.strip()]
    ctx.lines_read(src.name, NAME, len(keep))
    try:
        t = pajson.read_json(io.BytesIO("\n".join(lines[i] for i in keep).encode()),
                             read_options=pajson.ReadOptions(use_threads=False))
    except pa.ArrowInvalid as exc:
        raise InputFormatError(
            f"{src.name}: not message trace JSON lines ({exc}); expected one JSON object per line "
            "with Received, SenderAddress and RecipientAddress"
        ) from exc
    pos = {name.lower(): i for i, name in enumerate(t.column_names)}
    t = pa.table([c.cast(pa.string()) if not pa.types.is_string(c.type) else c
                  for c in t.columns], names=t.column_names)
    line = np.array(keep, dtype=np.int64) + 1
    rows = _canonical(t, pos, line, np.zeros(len(keep), dtype=np.int64), src)
    evidence = DateEvidence()
    _observe_dates(rows, evidence, ctx)
    rules[src.name] = _date_rule(evidence, src, ctx)
    yield rows


# --- dates -------------------------------------------------------------------------------------

_CULTURE_RE = (
    r"^(?P<a>\d{1,2})[./-](?P<b>\d{1,2})[./-](?P<y>\d{4}),?[ T]+(?P<H>\d{1,2}):(?P<M>\d{2})"
    r"(?::(?P<S>\d{2}))?(?:[.,]\d+)?\s*(?P<ampm>[AaPp]\.?\s?[Mm]\.?)?$"
)
_YMD_RE = (
    r"^(?P<y>\d{4})/(?P<a>\d{1,2})/(?P<b>\d{1,2})[ T]+(?P<H>\d{1,2}):(?P<M>\d{2})"
    r"(?::(?P<S>\d{2}))?\s*(?P<ampm>[AaPp]\.?\s?[Mm]\.?)?$"
)


def _dates(t: pa.Table, rules: dict[str, bool | None], ctx: IngestContext) -> pa.Table:
    """Parse the timestamps of one file's rows with the rule decided for that file (`rules`,
    by file name), reject rows whose time is unreadable, account the rest as parsed."""
    name = t.column("file")[0].as_py()
    raw = t.column("ts").combine_chunks()
    ts, bad, why = parse_dates(raw, rules[name], ctx.options.date_format, name)
    bad_np = bad.to_numpy(zero_copy_only=False)
    if bad_np.any():
        idx = np.flatnonzero(bad_np)
        ctx.reject_lines(NAME, name, t.column("line").take(idx).to_pylist(), why,
                         pc.fill_null(raw.take(idx), "").to_pylist())
        extra = int(pc.sum(t.column("nlines").take(idx)).as_py()) - len(idx)
        ctx.skipped(name, NAME, "continuation line of a rejected row", extra)
        t = t.filter(pa.array(~bad_np))
        ts = ts.filter(pa.array(~bad_np))
    ctx.parsed(name, NAME, int(pc.sum(t.column("nlines")).as_py() or 0))
    return t.set_column(t.column_names.index("ts"), "ts", ts)


class _DateParts:
    """A column of exported times split into ISO 8601 ones and culture ones (`11/13/2026
    9:02:11 AM`, `13.11.2026 09:02:11`, `2026/11/13 9:02`), the latter into their fields."""

    def __init__(self, raw: pa.Array):
        self.s = s = pc.utf8_trim_whitespace(raw)
        self.iso_like = pc.fill_null(pc.match_substring_regex(s, r"^\d{4}-\d{2}-\d{2}"), False)
        not_iso = pc.if_else(self.iso_like, pa.scalar(None, pa.string()), s)
        self.cult = pc.extract_regex(not_iso, _CULTURE_RE)
        self.ymd = pc.extract_regex(not_iso, _YMD_RE)
        self.is_cult = pc.is_valid(self.cult)
        self.is_ymd = pc.and_(pc.invert(self.is_cult), pc.is_valid(self.ymd))
        self.a = self.field("a").cast(pa.int64())
        self.b = self.field("b").cast(pa.int64())

    def field(self, f: str) -> pa.Array:
        a = pc.if_else(self.is_cult, self.cult.field(f), self.ymd.field(f))
        return pc.if_else(pc.or_(self.is_cult, self.is_ymd), a, pa.scalar(None, pa.string()))

    def to_utc(self, dayfirst: bool) -> tuple[pa.Array, pa.Array]:
        """(UTC timestamps, unreadable) with culture dates read day first or month first."""
        a, b, is_cult = self.a, self.b, self.is_cult
        day = pc.if_else(is_cult, b if not dayfirst else a, b)
        month = pc.if_else(is_cult, a if not dayfirst else b, a)
        hour = self.field("H").cast(pa.int64())
        ampm = pc.utf8_lower(pc.utf8_slice_codeunits(pc.fill_null(self.field("ampm"), ""), 0, 1))
        # 12-hour clock: 12 AM is 00, 12 PM is 12, 1 PM is 13.
        base = pc.if_else(pc.equal(hour, 12), 0, hour)
        hour = pc.if_else(pc.equal(ampm, "p"), pc.add(base, 12),
                          pc.if_else(pc.equal(ampm, "a"), base, hour))
        iso = pc.binary_join_element_wise(
            self.field("y"), "-", _pad(month), "-", _pad(day), "T", _pad(hour), ":",
            self.field("M"), ":", pc.fill_null(self.field("S"), "00"), "Z", "",
        )
        iso_ts, iso_bad = parse_iso_utc(pc.if_else(self.iso_like, self.s,
                                                   pa.scalar(None, pa.string())))
        cult_ts, cult_bad = parse_iso_utc(iso)
        ts = pc.if_else(self.iso_like, iso_ts, cult_ts)
        nonempty = pc.fill_null(pc.greater(pc.utf8_length(self.s), 0), False)
        bad = pc.or_(pc.and_(nonempty, pc.is_null(ts)), pc.invert(nonempty))
        bad = pc.or_(bad, pc.fill_null(pc.or_(iso_bad, cult_bad), False))
        return ts, pc.fill_null(bad, True)


class DateEvidence:
    """Day first or month first, decided for a whole file from all its culture dates (which
    may come in several batches): a first number above 12 means day first, a second number
    above 12 means month first. A file whose dates fit both ways is an error, not a guess."""

    def __init__(self) -> None:
        self.a_day = self.b_day = False
        self.example: str | None = None  # a date that reads differently the two ways

    def observe(self, parts: _DateParts) -> None:
        if not pc.any(parts.is_cult).as_py():
            return
        a_c, b_c = parts.a.filter(parts.is_cult), parts.b.filter(parts.is_cult)
        self.a_day |= bool(pc.any(pc.greater(a_c, 12)).as_py())
        self.b_day |= bool(pc.any(pc.greater(b_c, 12)).as_py())
        if self.example is None and pc.any(pc.not_equal(a_c, b_c)).as_py():
            self.example = _example(parts.s, parts.is_cult, parts.a, parts.b)

    def decide(self, name: str) -> bool:
        if self.a_day and self.b_day:
            raise InputFormatError(
                f"{name}: the dates mix day-first and month-first forms; {_DATE_HINT}")
        if self.a_day or self.b_day:
            return self.a_day
        if self.example is not None:
            raise InputFormatError(
                f"{name}: dates like {self.example} are ambiguous (day/month or month/day) and "
                f"no date in the file settles it; {_DATE_HINT}")
        return True  # every date has day == month: both readings agree


def parse_dates(
    raw: pa.Array, dayfirst: bool | None, date_format: str | None, name: str
) -> tuple[pa.Array, pa.Array, str]:
    """Timestamps as exported -> UTC. ISO 8601 as is; culture dates (`11/13/2026 9:02:11 AM`,
    `13.11.2026 09:02:11`) by a rule decided for the whole file: `date_format`, else `dayfirst`,
    else the evidence of these dates (DateEvidence)."""
    if date_format:
        s = pc.utf8_trim_whitespace(raw)
        ts = pc.strptime(s, format=date_format, unit="us", error_is_null=True)
        ts = pc.cast(pc.cast(ts, pa.timestamp("us")), TS)
        bad = pc.fill_null(pc.and_(pc.is_valid(s), pc.is_null(ts)), True)
        return ts, bad, f"date is not in the --date-format {date_format!r}"
    parts = _DateParts(raw)
    if dayfirst is None:
        evidence = DateEvidence()
        evidence.observe(parts)
        dayfirst = evidence.decide(name)
    ts, bad = parts.to_utc(dayfirst)
    return ts, bad, "time is not a date the export could have written"


def _pad(a: pa.Array) -> pa.Array:
    return pc.utf8_lpad(a.cast(pa.string()), 2, "0")


def _example(s: pa.Array, is_cult: pa.Array, a: pa.Array, b: pa.Array) -> str:
    cand = pc.filter(s, pc.and_(is_cult, pc.not_equal(a, b)))
    return repr(cand[0].as_py()) if len(cand) else "these"


# --- one message per trace -------------------------------------------------------------------


def _recipient_rows(t: pa.Table) -> pa.Table:
    """One row per recipient: split `recipient_address` (`;` in reports) or, without it,
    `recipient_status` (`addr##Receive, Send;addr2##...`)."""
    rc = t.column("recipient").combine_chunks()
    rs = t.column("recipient_status").combine_chunks()
    from_status = pc.and_(pc.is_null(rc), pc.is_valid(rs))
    src = pc.if_else(from_status, rs, rc)
    lists = pc.split_pattern(pc.fill_null(src, ""), ";")
    flat = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    parents = pc.list_parent_indices(lists)
    addr = pc.utf8_trim_whitespace(
        pc.coalesce(extract(flat, r"^(?P<a>[^#]*)##"), flat)
    )
    st = extract(flat, r"##(?P<s>.*)$")
    out = t.take(parents)
    out = out.set_column(out.column_names.index("recipient"), "recipient",
                         pc.if_else(pc.equal(pc.utf8_length(addr), 0),
                                    pa.scalar(None, pa.string()), addr))
    return out.append_column("rcpt_status", st)


def _collapse(rows: pa.Table, ctx: IngestContext) -> pa.Table:
    rows = _recipient_rows(rows)

    def col(name: str) -> pa.Array:
        return rows.column(name).combine_chunks()

    n = rows.num_rows
    mid = col("message_id")
    tid = col("trace_id")
    key = _message_key(mid, tid)
    # Rows with neither id stay separate messages.
    lonely = pc.equal(key, "|")
    uniq = pc.binary_join_element_wise(pa.array(np.arange(n).astype(str)), pa.scalar("#"), "")
    key = pc.if_else(lonely, uniq, key)
    rows = rows.append_column("key", key)
    # De-duplicate rows repeated by overlapping exports (richest file first).
    rows = rows.append_column("order", pa.array(np.arange(n)))
    rows = rows.sort_by([("rich", "descending"), ("order", "ascending")])
    dedup_key = pc.binary_join_element_wise(
        col("key"), pc.utf8_lower(pc.fill_null(col("recipient"), "")),
        pc.fill_null(col("event"), ""),
        pc.fill_null(col("ts").cast(pa.int64()).cast(pa.string()), ""), "|",
    )
    rows = rows.append_column("dedup", dedup_key).append_column(
        "pos", pa.array(np.arange(rows.num_rows)))
    first = rows.group_by("dedup", use_threads=False).aggregate([("pos", "min")])
    rows = rows.take(np.sort(first.column("pos_min").to_numpy()))
    # Per-event facts that only count on some events.
    event = pc.utf8_upper(pc.fill_null(col("event"), ""))
    has_events = pc.any(pc.greater(pc.utf8_length(event), 0)).as_py()
    receive = pc.or_(pc.equal(event, "RECEIVE"), pc.equal(event, "")) if has_events else None
    conn = col("connector")
    if receive is not None:
        conn = pc.if_else(receive, conn, pa.scalar(None, pa.string()))
    conn_data = extract(pc.fill_null(col("data"), ""),
                        r'(?i)Name="(?:InboundConnectorData|Connector(?:Id|Name)?)"\s+String="'
                        r'(?:Name=)?(?P<c>[^";]+)')
    rows = rows.append_column("conn", pc.coalesce(conn, conn_data))
    detail = pc.fill_null(col("detail"), "")
    reply = pc.coalesce(
        # Get-MessageTraceDetail: 'Reason: [{LED=550 5.7.64 TenantAttribution; ...};{MSG=};...]'
        extract(detail, r"LED=(?P<r>[245]\d\d[^}]*)"),
        extract(detail, r"(?P<r>[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}.*)$"),
        extract(pc.fill_null(col("rcpt_status"), ""), r"(?P<r>[245]\d\d .*)$"),
    )
    rows = rows.append_column("reply", reply)
    status = pc.coalesce(col("status"), col("event"))
    rows = rows.append_column("st", status)
    ip = pc.coalesce(col("original_ip"), col("from_ip"), col("client_ip"))
    rows = rows.append_column("ip", ip)
    rows = rows.sort_by([("key", "ascending"), ("rich", "descending"), ("ts", "ascending"),
                         ("order", "ascending")])
    g = rows.group_by("key", use_threads=False).aggregate([
        ("ts", "min"), ("message_id", "first"), ("trace_id", "first"),
        ("return_path", "first"), ("sender_cmdlet", "first"), ("sender_report", "first"),
        ("recipient", "distinct"), ("subject", "first"), ("st", "last"), ("reply", "last"),
        ("size", "max"), ("ip", "first"), ("conn", "first"), ("file", "first"),
        ("line", "min"), ("host", "first"), ("rich", "max"),
    ])
    g = g.sort_by([("file_first", "ascending"), ("line_min", "ascending")])
    return _message_columns(g, ctx)


def ipv4_to_int(ip: pa.Array) -> pa.Array:
    """'203.0.113.10' -> 3405803786 (int64); null when not a dotted IPv4 address."""
    ok = pc.fill_null(pc.match_substring_regex(ip, r"^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$"), False)
    parts = pc.split_pattern(pc.if_else(ok, ip, "0.0.0.0"), ".")
    total = pa.array(np.zeros(len(ip), dtype=np.int64))
    in_range = ok
    for i in range(4):
        octet = pc.list_element(parts, i).cast(pa.int64())
        in_range = pc.and_(in_range, pc.less_equal(octet, 255))
        total = pc.add(pc.multiply(total, 256), octet)
    return pc.if_else(in_range, total, pa.scalar(None, pa.int64()))


def _in_ranges(ip: pa.Array, ranges: tuple) -> pa.Array:
    n = ipv4_to_int(ip)
    hit = pa.array(np.zeros(len(ip), dtype=bool))
    for lo, hi in ranges:
        hit = pc.or_(hit, pc.and_(pc.greater_equal(n, int(lo)), pc.less_equal(n, int(hi))))
    return pc.fill_null(hit, False)


def _message_columns(g: pa.Table, ctx: IngestContext) -> pa.Table:
    n = g.num_rows
    rp = g.column("return_path_first").combine_chunks()
    cmdlet = g.column("sender_cmdlet_first").combine_chunks()
    generator = pc.fill_null(pc.match_substring_regex(cmdlet, _GENERATOR_RE), False)
    p1 = pc.coalesce(rp, pc.if_else(generator, pa.scalar(None, pa.string()), cmdlet))
    p2 = g.column("sender_report_first").combine_chunks()
    ip = g.column("ip_first").combine_chunks()
    conn = g.column("conn_first").combine_chunks()
    relayed = pc.or_(pc.is_valid(conn), _in_ranges(ip, ctx.options.connector_ranges))
    null_rp = pc.fill_null(pc.match_substring_regex(rp, r"^\s*<\s*>\s*$"), False)
    is_ndr = pc.or_(null_rp, pc.and_(pc.is_null(rp), generator))
    size = g.column("size_max").combine_chunks()
    size = pc.if_else(pc.fill_null(pc.match_substring_regex(size, r"^\d+$"), False), size,
                      pa.scalar(None, pa.string())).cast(pa.int64())
    host = g.column("host_first").combine_chunks()
    if ctx.options.host:
        host = pc.fill_null(host, ctx.options.host)
    recipients = g.column("recipient_distinct").combine_chunks()
    return pa.table({
        "ts": g.column("ts_min"),
        "source_format": pa.array([NAME] * n),
        "source_file": g.column("file_first"),
        "source_line": g.column("line_min"),
        "host": host,
        "message_id": g.column("message_id_first"),
        "queue_id": g.column("trace_id_first"),
        "p1_sender": p1,
        "p2_sender": p2,
        "client_ip": ip,
        "relay_ip": pc.if_else(relayed, ip, pa.scalar(None, pa.string())),
        "connector": conn,
        "recipients": recipients,
        "status": g.column("st_last"),
        "response": g.column("reply_last"),
        "is_ndr": is_ndr,
        "size": size,
        "subject": g.column("subject_first"),
        "logged_by_exo": pa.array([True] * n),
        "incomplete": pa.array([False] * n),
    })


def _batch(t: pa.Table) -> pa.RecordBatch:
    cols = {c: t.column(c).combine_chunks() for c in t.column_names}
    return make_messages(cols, t.num_rows)
