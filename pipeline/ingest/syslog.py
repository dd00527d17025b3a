"""Shared, vectorized reading of syslog files: blocks of lines, and the syslog prefix of each line.

Used by the Postfix and Sendmail ingestors (and free for any other syslog-borne log). One line:

    Jun  3 10:40:57 relay01 postfix/smtpd[9708]: 4AA091855DA0: client=app01[203.0.113.50]
    ^ timestamp     ^ host  ^ program/tag  ^pid  ^ message

Prefixes understood (each line on its own, so a file may mix them):

- RFC 3164 / BSD syslog, the default rsyslog and syslog-ng file output and `journalctl -o short`:
  `Mmm dd HH:MM:SS host tag[pid]: msg`, day space-padded, **no year and local time**. The year
  comes from `--year`, else from the file's modification time: a line whose month is later than
  the month the file was last written belongs to the year before (a log that spans New Year).
  Local time is turned into UTC with `--tz` (default UTC).
- ISO 8601 with an offset, as rsyslog's `RSYSLOG_FileFormat` writes
  (`2016-03-23T01:09:28.962188+01:00 host tag[pid]: msg`) and `journalctl -o short-iso`
  (`2023-01-01T10:00:00+0100 host tag[pid]: msg`). An ISO time without an offset is taken as
  local time (`--tz`), like RFC 3164.
- RFC 5424 on the wire (`<34>1 2023-01-01T10:00:00Z host app procid msgid [sd] msg`) and a
  `<PRI>` in front of an RFC 3164 line (logs captured from the network).

Speed: no regex runs over every line. `parse_prefix` works on a string array: the RFC 3164
timestamp is sliced at constant offsets, host/tag/message come from one `split_pattern` on
spaces; regexes run only on the rare RFC 5424 / `<PRI>` lines. The fast path for big files
(`raw_lines` + `parse_prefix_raw`, used by the Postfix reader) does not copy the text at all for
plain RFC 3164 lines: it reads the time from the first 16 bytes of each line with numpy and
finds host, tag and message as byte offsets (the next space in a 32-byte window after each
field start); the time is read once per run of lines with the same first 16 bytes. Other lines
go through `parse_prefix`, so both give the same answers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import tzinfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputFormatError
from ..normalize import parse_iso_utc
from ..schema import TS
from .base import Source, utf8_replaced, whole_string

_MONTHS = pa.array(["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"])
_MONTH_NUM = pa.array([f"{m:02d}" for m in range(1, 13)])
_NULL_STR = pa.scalar(None, pa.string())

# Why a line is not a syslog line (a reject reason for the caller).
NO_PREFIX = "no syslog prefix (expected 'Mmm dd HH:MM:SS host program[pid]: message' or an ISO 8601 time)"
BAD_TIME = "syslog timestamp is not a valid date/time"
NO_MESSAGE = "syslog line has no 'program[pid]: message' after the host"


# --------------------------------------------------------------------------------------------
# Blocks of lines
# --------------------------------------------------------------------------------------------


def lines_from_block(block: bytes) -> pa.StringArray:
    """Bytes holding whole lines (each ending with '\\n') -> one string per line, without the
    line end. Zero-copy cut with numpy; undecodable bytes become U+FFFD (a line is never lost,
    and a replacement character never creates a new line, so line numbers stay right)."""
    if not block:
        return pa.array([], pa.string())
    buf = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    offsets = np.empty(len(ends) + 1, dtype=np.int32)
    offsets[0] = 0
    offsets[1:] = ends + 1
    arr = pa.StringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(block))
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:
        fixed = block.decode("utf-8", errors="replace").encode("utf-8")
        return lines_from_block(fixed)
    # Drop the '\n' (and a '\r' of CRLF files) at the end of every value.
    trimmed = pc.utf8_rtrim(arr, characters="\r\n") if b"\r" in block else pc.binary_slice(
        arr.cast(pa.binary()), 0, -1
    ).cast(pa.string(), safe=False)
    return trimmed


def iter_line_blocks(source: Source, block_bytes: int) -> Iterator[tuple[int, pa.StringArray]]:
    """(number of the block's first line, its lines) for the whole file, read `block_bytes` at a
    time and cut at the last line end (the partial line is carried into the next block)."""
    for line_no, block, _count in iter_raw_blocks(source, block_bytes):
        yield line_no, lines_from_block(block)


def origin_columns(fmt: str, sources: list[Source], file_idx, logged_host, default_host: str | None) -> dict:
    """source_format, source_file and host of message rows given each row's index into
    `sources`: the host the syslog line names, else the file's (--host / [[hosts]] logs)."""
    fidx = pa.array(file_idx)
    names = pa.array([s.name for s in sources])
    hosts = pa.array([s.host or default_host for s in sources], pa.string())
    return {
        "source_format": pa.array([fmt] * len(fidx)),
        "source_file": names.take(fidx),
        "host": pc.coalesce(logged_host, hosts.take(fidx)),
    }


# --------------------------------------------------------------------------------------------
# Year and time zone
# --------------------------------------------------------------------------------------------


def file_clock(source: Source) -> dt.datetime:
    """When the file was last written (UTC): the anchor for RFC 3164's missing year."""
    try:
        return dt.datetime.fromtimestamp(source.path.stat().st_mtime, tz=dt.UTC)
    except OSError:
        return dt.datetime.now(tz=dt.UTC)


def _tz_name(tz: tzinfo | None) -> str | None:
    """An Arrow time-zone name for a tzinfo (IANA key or fixed offset); None for UTC."""
    if tz is None:
        return None
    key = getattr(tz, "key", None) or getattr(tz, "zone", None)  # zoneinfo / pytz
    if key:
        return None if key in ("UTC", "Etc/UTC") else key
    offset = tz.utcoffset(None)
    if offset is None:
        return None
    minutes = int(offset.total_seconds() // 60)
    if minutes == 0:
        return None
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def local_to_utc(naive: pa.Array, tz: tzinfo | None) -> pa.Array:
    """Naive local timestamps -> timestamp[us, UTC]. In the repeated hour at the end of summer
    time the earlier reading is taken, and a time that does not exist moves forward (never a
    crash; syslog cannot tell which one was meant)."""
    naive = naive.cast(pa.timestamp("us"))
    name = _tz_name(tz)
    if name is None:
        return naive.cast(TS)
    try:
        # As timestamp[us, UTC] (the same instants): callers mix these with UTC timestamps.
        local = pc.assume_timezone(naive, timezone=name, ambiguous="earliest", nonexistent="latest")
        return local.cast(TS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # A tzinfo Arrow does not know by name: let pandas apply it.
        import pandas as pd

        s = pd.Series(naive.to_pandas()).dt.tz_localize(tz, ambiguous="NaT", nonexistent="shift_forward")
        return pa.array(s.dt.tz_convert("UTC"), type=TS)


# --------------------------------------------------------------------------------------------
# The prefix
# --------------------------------------------------------------------------------------------


@dataclass
class SyslogLines:
    """The prefix fields of a block of lines, all arrays of the block's length.

    `error` is null for a good line and holds the reject reason otherwise (then the other
    fields are null)."""

    ts: pa.Array  # timestamp[us, UTC]
    host: pa.Array  # string
    program: pa.Array  # the syslog tag without [pid]: 'postfix/submission/smtpd', 'sm-mta'
    pid: pa.Array  # string, null when the tag has none
    message: pa.Array  # string after 'tag[pid]: '
    error: pa.Array  # string: reject reason, null for a good line

    @property
    def ok(self) -> pa.Array:
        return pc.is_null(self.error)


def element(lists: pa.ListArray, i: int) -> pa.Array:
    """The i-th element of each list, null where the list is shorter (pc.list_element raises)."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    offsets = lists.offsets.to_numpy()
    lengths = np.diff(offsets)
    valid = lengths > i
    idx = np.where(valid, offsets[:-1] + i, 0)
    values = lists.values
    if len(values) == 0:
        return pa.nulls(len(lists), values.type)
    out = values.take(pa.array(idx))
    if valid.all():
        return out
    return pc.if_else(pa.array(valid), out, pa.scalar(None, values.type))


def last_element(lists: pa.ListArray) -> pa.Array:
    """The last element of each list, null for an empty or null list."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    offsets = lists.offsets.to_numpy()
    lengths = np.diff(offsets)
    valid = lengths > 0
    idx = np.where(valid, offsets[1:] - 1, 0)
    values = lists.values
    if len(values) == 0:
        return pa.nulls(len(lists), values.type)
    out = values.take(pa.array(idx))
    return out if valid.all() else pc.if_else(pa.array(valid), out, pa.scalar(None, values.type))


def _scatter(n: int, parts: list[tuple[np.ndarray, pa.Array]], typ: pa.DataType) -> pa.Array:
    """Put per-subset results back at their row positions (rows in no subset are null)."""
    if len(parts) == 1 and len(parts[0][0]) == n:
        return parts[0][1]
    idx = np.concatenate([p[0] for p in parts] + [np.arange(0)]).astype(np.int64)
    covered = np.zeros(n, dtype=bool)
    covered[idx] = True
    rest = np.flatnonzero(~covered)
    values = pa.concat_arrays([p[1].cast(typ) for p in parts] + [pa.nulls(len(rest), typ)])
    order = np.empty(n, dtype=np.int64)
    order[np.concatenate([idx, rest])] = np.arange(n)
    return values.take(pa.array(order))


def _rfc3164_times(head: pa.Array, year: int | None, clock: dt.datetime, tz) -> pa.Array:
    """'Mmm dd HH:MM:SS' (the first 15 characters) -> UTC timestamps, null when invalid."""
    month_idx = pc.index_in(pc.utf8_slice_codeunits(head, 0, 3), value_set=_MONTHS)
    mm = pc.take(_MONTH_NUM, month_idx)
    dd = pc.utf8_lpad(pc.utf8_trim_whitespace(pc.utf8_slice_codeunits(head, 4, 6)), 2, "0")
    if year is not None:
        yyyy = pa.scalar(str(year))
    else:
        # Months after the month the file was last written are from the previous year.
        local_clock = clock.astimezone(tz) if tz is not None else clock
        later = pc.greater(month_idx, local_clock.month - 1)
        yyyy = pc.if_else(later, str(local_clock.year - 1), str(local_clock.year))
    text = pc.binary_join_element_wise(
        yyyy, mm, dd, pc.utf8_slice_codeunits(head, 7, 15), "-"
    )
    # 'YYYY-MM-DD-HH:MM:SS': one strptime; impossible dates (Feb 30) become null.
    naive = pc.strptime(text, format="%Y-%m-%d-%H:%M:%S", unit="us", error_is_null=True)
    # Arrow's strptime rolls 'Feb 30' over into March: such a day is invalid, not March 2.
    day = pc.if_else(pc.fill_null(pc.utf8_is_digit(dd), False), dd, _NULL_STR).cast(pa.int64())
    same_day = pc.equal(pc.day(naive), day)
    naive = pc.if_else(pc.fill_null(same_day, False), naive, pa.scalar(None, naive.type))
    return local_to_utc(naive, tz)


_RFC5424 = (
    r"^<\d{1,3}>1 (\S+) (\S+) (\S+) (\S+) \S+ (?:-|(?:\[(?:[^\]\\]|\\.)*\])+) ?"
)


def _strip_pri(lines: pa.Array) -> pa.Array:
    """RFC 5424 lines -> 'ISO-time host app[procid]: msg'; a bare '<PRI>' is dropped."""
    out = pc.replace_substring_regex(lines, _RFC5424, r"\1 \2 \3[\4]: ")
    return pc.replace_substring_regex(out, r"^<\d{1,3}>", "")


def parse_prefix(
    lines: pa.Array,
    *,
    year: int | None = None,
    clock: dt.datetime | None = None,
    tz: tzinfo | None = None,
) -> SyslogLines:
    """Split syslog lines into time, host, program, pid and message (see the module docstring).

    `year` overrides the RFC 3164 year; `clock` is when the file was last written (its mtime,
    see `file_clock`); `tz` is the zone of local timestamps (None = UTC).
    """
    n = len(lines)
    clock = clock or dt.datetime.now(tz=dt.UTC)
    if n and pc.any(pc.starts_with(lines, "<")).as_py():
        pri = pc.fill_null(pc.starts_with(lines, "<"), False)
        lines = pc.if_else(pri, _strip_pri(lines), lines)
    head = pc.utf8_slice_codeunits(lines, 0, 16)
    # 'Mar 7 02:09:33' (day not space-padded, as some syslog daemons write it): pad it, so
    # every RFC 3164 time sits at the same fixed offsets.
    unpadded = pc.fill_null(
        pc.and_(
            pc.equal(pc.utf8_slice_codeunits(head, 5, 6), " "),
            pc.equal(pc.utf8_slice_codeunits(head, 14, 15), " "),
        ),
        False,
    )
    if n and pc.any(unpadded).as_py():
        padded = pc.binary_join_element_wise(
            pc.utf8_slice_codeunits(lines, 0, 4), pc.utf8_slice_codeunits(lines, 4), " "
        )
        lines = pc.if_else(unpadded, padded, lines)
        head = pc.utf8_slice_codeunits(lines, 0, 16)
    c3 = pc.utf8_slice_codeunits(head, 3, 4)
    c15 = pc.utf8_slice_codeunits(head, 15, 16)
    is_bsd = pc.fill_null(
        pc.and_(
            pc.and_(pc.equal(c3, " "), pc.equal(c15, " ")),
            pc.is_in(pc.utf8_slice_codeunits(head, 0, 3), value_set=_MONTHS),
        ),
        False,
    )
    is_iso = pc.fill_null(
        pc.and_(
            pc.equal(pc.utf8_slice_codeunits(head, 4, 5), "-"),
            pc.equal(pc.utf8_slice_codeunits(head, 10, 11), "T"),
        ),
        False,
    )
    bsd_np = is_bsd.to_numpy(zero_copy_only=False)
    iso_np = is_iso.to_numpy(zero_copy_only=False) & ~bsd_np

    ts_parts, rest_parts = [], []
    if bsd_np.any():
        idx = np.flatnonzero(bsd_np)
        sub_head = head if len(idx) == n else head.take(pa.array(idx))
        sub = lines if len(idx) == n else lines.take(pa.array(idx))
        ts_parts.append((idx, _rfc3164_times(sub_head, year, clock, tz)))
        rest_parts.append((idx, pc.utf8_slice_codeunits(sub, 16)))
    if iso_np.any():
        idx = np.flatnonzero(iso_np)
        sub = lines.take(pa.array(idx))
        two = pc.split_pattern(sub, " ", max_splits=1)
        stamp = element(two, 0)
        ts, bad = parse_iso_utc(stamp)
        has_zone = pc.fill_null(pc.match_substring_regex(stamp, r"(Z|[+-]\d\d:?\d\d)$"), False)
        if not pc.all(has_zone).as_py():  # no offset: local time, like RFC 3164
            naive = ts.cast(pa.timestamp("us"))
            ts = pc.if_else(has_zone, ts, local_to_utc(naive, tz))
        ts = pc.if_else(bad, pa.scalar(None, TS), ts)
        ts_parts.append((idx, ts))
        rest_parts.append((idx, element(two, 1)))

    ts = _scatter(n, ts_parts, TS) if ts_parts else pa.nulls(n, TS)
    rest = _scatter(n, rest_parts, pa.string()) if rest_parts else pa.nulls(n, pa.string())

    # '<mail.notice> host ...': some rsyslog templates write facility.severity before the host.
    if n and pc.any(pc.starts_with(rest, "<")).as_py():
        rest = pc.replace_substring_regex(rest, r"^<[a-z0-9]+\.[a-z]+> ", "")
    parts = pc.split_pattern(rest, " ", max_splits=2)
    host = element(parts, 0)
    tagtok = element(parts, 1)
    message = element(parts, 2)
    tag_ok = pc.fill_null(pc.ends_with(tagtok, ":"), False)
    tag_split = pc.split_pattern(pc.utf8_rtrim(tagtok, characters=":"), "[", max_splits=1)
    program = element(tag_split, 0)
    pid = pc.utf8_rtrim(element(tag_split, 1), characters="]")

    prefixed = pa.array(bsd_np | iso_np)
    error = pc.if_else(
        pc.invert(prefixed),
        pa.scalar(NO_PREFIX),
        pc.if_else(
            pc.is_null(ts),
            pa.scalar(BAD_TIME),
            pc.if_else(pc.and_(tag_ok, pc.is_valid(message)), _NULL_STR, pa.scalar(NO_MESSAGE)),
        ),
    )
    return SyslogLines(ts=ts, host=host, program=program, pid=pid, message=message, error=error)


def first_time(source: Source, *, year=None, tz=None, max_lines: int = 200) -> dt.datetime | None:
    """The first readable timestamp of a file (to put rotated files in time order)."""
    head = source.head(64 * 1024)
    cut = head.rfind(b"\n")
    if cut < 0:
        return None
    lines = lines_from_block(head[: cut + 1])[:max_lines]
    parsed = parse_prefix(lines, year=year, clock=file_clock(source), tz=tz)
    valid = parsed.ts.filter(pc.is_valid(parsed.ts))
    return valid[0].as_py() if len(valid) else None


def order_by_time(sources: list[Source], *, year=None, tz=None) -> list[Source]:
    """Rotated files (maillog, maillog.1, maillog.2.gz) in time order, whatever order they were
    given in: by each file's first timestamp; files without one keep their place at the end."""
    keyed = []
    for i, src in enumerate(sources):
        first = first_time(src, year=year, tz=tz)
        keyed.append((first is None, first or dt.datetime.min.replace(tzinfo=dt.UTC), i, src))
    return [k[-1] for k in sorted(keyed, key=lambda k: k[:3])]


# --------------------------------------------------------------------------------------------
# The fast path: a block kept as one byte buffer plus line offsets
# --------------------------------------------------------------------------------------------
#
# Most of the cost of a syslog reader is copying text: every `split_pattern` / `take` over a
# block rewrites all of its bytes. The fast path keeps the block as ONE buffer and describes
# each field as (start, end) byte offsets computed with numpy (fixed offsets for the RFC 3164
# time, the next space in a short window for host and tag: RawLines.next_byte). Only
# the fields a caller asks for are turned into Arrow strings (RawLines.slices: one filter over
# the buffer for fields in line order, else a `string_view` array cast to strings). Lines that
# are not plain RFC 3164 go through `parse_prefix` above, so both paths give the same answers.
#
# What costs here is memory traffic and the number of calls, not arithmetic: every pass that
# touches each line of a 16 MB block misses the caches once per line, and every numpy / Arrow
# call has a fixed cost. So the passes over all lines are few (the line ends, the time per run,
# host and tag), and a field search looks in a 32-byte window first.

_PAD = 32  # zero bytes after the block: the 12/16/32-byte windows at any line start stay inside
_HEAD = 32  # bytes RawLines.heads keeps of each text
# For a text of length L: a mask that keeps its first L bytes (as _HEAD/8 words).
_HEAD_MASK = (
    ((np.arange(_HEAD)[None, :] < np.arange(_HEAD + 1)[:, None]).astype(np.uint8) * np.uint8(255))
    .view(np.uint64)
)
_WINDOW = 32  # bytes RawLines.next_byte looks at before it falls back to a full search
_WINDOW_STEPS = 8  # windows RawLines.next_byte slides along a record when it knows its end
_MONTH_KEYS = np.array([(ord(m[0]) << 16) | (ord(m[1]) << 8) | ord(m[2]) for m in _MONTHS.to_pylist()])
_MONTH_ORDER = np.argsort(_MONTH_KEYS)
_MONTH_SORTED = _MONTH_KEYS[_MONTH_ORDER]
# For a value of length L <= 12 stored inline: a mask that keeps its L bytes (as 3 words).
_INLINE_MASK = (np.arange(12)[None, :] < np.arange(13)[:, None]).astype(np.uint8) * np.uint8(255)
_INLINE_MASK = _INLINE_MASK.view(np.uint32)
_CUM_DAYS = np.array([0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334], dtype=np.int64)
_MONTH_DAYS = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


def first_true(matrix: np.ndarray, last: bool = False) -> np.ndarray:
    """Column of the first (or last) true value in each row of a bool matrix, its width for a
    row with none. argmax stops at the first true value; whether there was one is read with
    one flat gather (cheaper than indexing by row and column, or than any())."""
    n, width = matrix.shape
    if last:
        matrix = np.ascontiguousarray(matrix[:, ::-1])
    first = matrix.argmax(axis=1)
    found = matrix.reshape(-1)[np.arange(n) * width + first]
    if last:
        first = width - 1 - first
    return np.where(found, first, width)


@dataclass
class RawLines:
    """A block of whole lines as one buffer: line i is `data[starts[i]:ends[i]]` (line end and a
    CRLF '\\r' excluded). `data` is valid UTF-8 (bad bytes were replaced, as in lines_from_block)."""

    data: pa.Buffer
    buf: np.ndarray  # uint8 view of data, _PAD zero bytes longer than the text
    starts: np.ndarray  # int64
    ends: np.ndarray  # int64
    _positions: dict | None = None

    def positions(self, byte: int) -> np.ndarray:
        """Sorted positions of every occurrence of one byte in the block (computed once)."""
        if self._positions is None:
            self._positions = {}
        if byte not in self._positions:
            self._positions[byte] = np.flatnonzero(self.buf == byte)
        return self._positions[byte]

    def spaces(self) -> np.ndarray:
        """Sorted byte positions of every space in the block."""
        return self.positions(32)

    def heads(self, pos: np.ndarray, end: np.ndarray) -> np.ndarray:
        """The first _HEAD bytes of the text from each pos to end (zero past end), as _HEAD/8
        uint64 words a row: prefix tests on byte offsets with `head_starts`, without cutting
        the text out."""
        pos = pos.astype(np.int64, copy=False)
        size = np.clip(end - pos, 0, _HEAD)
        records = np.ndarray((len(self.buf) - _HEAD + 1,), dtype=f"V{_HEAD}", buffer=self.buf, strides=(1,))
        words = records[np.clip(pos, 0, len(self.buf) - _HEAD)].view(np.uint64).reshape(len(pos), _HEAD // 8)
        words &= np.take(_HEAD_MASK, size, axis=0)  # (np.take: much cheaper than [size] here)
        return words

    def next_byte(self, pos: np.ndarray, byte: int, end: np.ndarray | None = None) -> np.ndarray:
        """For each pos, where the first `byte` at or after it is in the block; len(buf) - 1 (a
        padding zero, past every line) when there is none. The syslog fields are short, so it
        looks in a _WINDOW-byte window first and only the rest in the byte's sorted positions
        (finding every byte of a block costs more than the windows).

        With `end` (where each record ends), a byte at or past end counts as none; that lets
        the window slide on along the record (up to _WINDOW_STEPS windows) before the fallback,
        so fields of 32-250 bytes (a relay host, a sender) stay cheap too."""
        last = len(self.buf) - 1
        pos = np.minimum(pos.astype(np.int64, copy=False), last)
        out = np.full(len(pos), last, dtype=np.int64)
        windows = np.ndarray((len(self.buf) - _WINDOW + 1,), dtype=f"V{_WINDOW}", buffer=self.buf, strides=(1,))
        rows, at = np.arange(len(pos)), pos  # the rows still searching, and where they look
        fallback = []
        for _ in range(1 if end is None else _WINDOW_STEPS):
            fits = at < len(self.buf) - _WINDOW
            fallback.append(rows[~fits])
            rows, at = rows[fits], at[fits]
            first = first_true(windows[at].view(np.uint8).reshape(len(rows), _WINDOW) == byte)
            found = first < _WINDOW
            out[rows[found]] = at[found] + first[found]
            rows, at = rows[~found], at[~found] + _WINDOW
            if end is not None:  # only rows whose record goes on past this window
                on = at < end[rows]
                rows, at = rows[on], at[on]
            if not len(rows):
                break
        rest = np.concatenate([*fallback, rows])
        if len(rest):
            at = self.positions(byte)
            k = np.searchsorted(at, pos[rest])
            inside = k < len(at)
            out[rest[inside]] = at[k[inside]]
        if end is not None:
            out[out >= end] = last
        return out

    def __len__(self) -> int:
        return len(self.starts)

    def slices(self, start: np.ndarray, end: np.ndarray) -> pa.StringArray:
        """data[start[i]:end[i]] for each i, as a string array (empty where end <= start)."""
        end = np.maximum(end, start)
        if len(start) and start[0] >= 0 and (start[1:] >= end[:-1]).all():
            return _in_order(self.data, start, end)
        return _views(self.data, self.buf, start, end)

    def lines(self, idx: np.ndarray | None = None) -> pa.StringArray:
        """The text of the lines at positions idx (all lines when None)."""
        if idx is None:
            return self.slices(self.starts, self.ends)
        return self.slices(self.starts[idx], self.ends[idx])


def _in_order(data: pa.Buffer, start: np.ndarray, end: np.ndarray) -> pa.StringArray:
    """Byte ranges that follow one another in the buffer (start[i] >= end[i-1], as the fields
    of lines in line order do) -> string array: the ranges and the gaps between them are
    consecutive values of one string array over the buffer (offsets only, no copy), and one
    filter keeps every second value (a copy of the ranges' bytes only). Cheaper than _views,
    which has to build each 16-byte view with numpy first."""
    n = len(start)
    offsets = np.empty(2 * n + 1, dtype=np.int32)
    offsets[0] = 0
    offsets[1::2] = start
    offsets[2::2] = end
    both = pa.StringArray.from_buffers(2 * n, pa.py_buffer(offsets), data)
    odd = np.full((2 * n + 7) // 8, 0xAA, dtype=np.uint8)  # bits 1, 3, 5, ...: the ranges
    keep = pa.BooleanArray.from_buffers(pa.bool_(), 2 * n, [None, pa.py_buffer(odd)])
    return both.filter(keep)


def _views(data: pa.Buffer, buf: np.ndarray, start: np.ndarray, end: np.ndarray) -> pa.StringArray:
    """Byte ranges of one buffer -> string array, via Arrow's string_view layout (16 bytes per
    value: length, then the value inline when <= 12 bytes, else a 4-byte prefix and the
    buffer offset), cast to a plain string array."""
    n = len(start)
    if n == 0:
        return pa.array([], pa.string())
    start = start.astype(np.int64, copy=False)
    length = (end - start).astype(np.int32)
    # The 12 bytes at each start in one gather (unaligned 12-byte records over the padded
    # buffer): inline bytes for short values, the 4-byte prefix for long ones. The bytes past a
    # short value's length are zeroed with a mask looked up by length (two integer ANDs).
    records = np.ndarray((len(buf) - 11,), dtype="V12", buffer=buf, strides=(1,))
    words = records[start].view(np.uint32).reshape(n, 3)
    words &= np.take(_INLINE_MASK, np.minimum(length, 12), axis=0)
    long = length > 12
    views = np.empty((n, 4), dtype=np.int32)
    views[:, 0] = length
    views[:, 1:] = words.view(np.int32)
    # Long values: buffer 0 and the offset instead of bytes 4..11.
    views[:, 2] = np.where(long, 0, views[:, 2])
    views[:, 3] = np.where(long, start.astype(np.int32), views[:, 3])
    arr = pa.Array.from_buffers(pa.string_view(), n, [None, pa.py_buffer(views), data])
    return arr.cast(pa.string())


def head_starts(heads: np.ndarray, prefix: str) -> np.ndarray:
    """Whether each text (RawLines.heads) starts with prefix (at most _HEAD bytes, no NUL)."""
    raw = prefix.encode()
    size = len(raw)
    pattern = np.zeros(_HEAD, dtype=np.uint8)
    pattern[:size] = np.frombuffer(raw, dtype=np.uint8)
    words = pattern.view(np.uint64)
    mask = _HEAD_MASK[size]
    found = np.ones(len(heads), dtype=bool)
    for j in range((size + 7) // 8):
        found &= (heads[:, j] & mask[j]) == words[j]
    return found


def raw_lines(block: bytes | np.ndarray) -> RawLines:
    """Whole lines (each ending with '\\n') -> RawLines: bytes, or a padded buffer from
    iter_padded_blocks (the text, then _PAD zero bytes), which is used as it is (no copy)."""
    if isinstance(block, np.ndarray):
        padded, size = block, len(block) - _PAD
    else:
        padded, size = None, len(block)
    if whole_string(block, size) is None:
        block = utf8_replaced(block, size)
        padded, size = None, len(block)
    if padded is None:
        padded = np.zeros(size + _PAD, dtype=np.uint8)
        padded[:size] = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(padded[:size] == 10)
    starts = np.empty(len(ends), dtype=np.int64)
    if len(ends):
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
    ends = ends.astype(np.int64)
    # CRLF files: the '\r' is not part of the line (lines_from_block trims it).
    while True:
        cr = (ends > starts) & (padded[np.maximum(ends - 1, 0)] == 13)
        if not cr.any():
            break
        ends = ends - cr
    return RawLines(pa.py_buffer(padded), padded, starts, ends)


def iter_padded_blocks(source: Source, block_bytes: int) -> Iterator[np.ndarray]:
    """The file in blocks of whole lines, each read straight into a buffer that raw_lines takes
    as it is: the text (cut at its last line end, the partial line carried into the next
    block), then _PAD zero bytes. No copy of the text on the reading thread (only the carried
    partial line), and no counting of lines there: raw_lines finds them on a worker."""
    carry = np.zeros(0, dtype=np.uint8)
    with source.open() as fh:
        while True:
            buf = np.empty(len(carry) + block_bytes + _PAD, dtype=np.uint8)
            buf[: len(carry)] = carry
            size = len(carry) + _read_into(source, fh, memoryview(buf)[len(carry) : len(carry) + block_bytes])
            if size == len(carry):
                break
            cut = _last_line_end(buf, size)
            if cut < 0:  # no line end yet: keep reading
                carry = buf[:size].copy()
                continue
            carry = buf[cut + 1 : size].copy()
            buf[cut + 1 : cut + 1 + _PAD] = 0
            yield buf[: cut + 1 + _PAD]
    if len(carry):  # last line without a line end
        buf = np.zeros(len(carry) + 1 + _PAD, dtype=np.uint8)
        buf[: len(carry)] = carry
        buf[len(carry)] = 10
        yield buf


def _read_into(source: Source, fh, view: memoryview) -> int:
    """Fill view from fh (a .gz or .zip stream may return less per call); bytes read."""
    got = 0
    try:
        while got < len(view):
            n = fh.readinto(view[got:])
            if not n:
                break
            got += n
    except (OSError, EOFError) as exc:  # a truncated or corrupt .gz
        raise InputFormatError(f"{source.name}: cannot be read ({exc}); expected a syslog text file") from exc
    return got


def _last_line_end(buf: np.ndarray, size: int) -> int:
    """Position of the last '\\n' in buf[:size], -1 when there is none (looks at the end first)."""
    step = 1 << 16
    stop = size
    while stop > 0:
        start = max(0, stop - step)
        at = np.flatnonzero(buf[start:stop] == 10)
        if len(at):
            return start + int(at[-1])
        stop = start
        step *= 4
    return -1


def iter_raw_blocks(source: Source, block_bytes: int) -> Iterator[tuple[int, bytes, int]]:
    """The blocks of a file: (first line number, bytes of whole lines, number of
    lines) and leaves the cutting into lines (`raw_lines`) to the caller, so it can run on a
    worker thread."""
    line_no = 1
    carry = b""
    with source.open() as fh:
        while True:
            try:
                data = fh.read(block_bytes)
            except (OSError, EOFError) as exc:  # a truncated or corrupt .gz
                raise InputFormatError(
                    f"{source.name}: cannot be read ({exc}); expected a syslog text file"
                ) from exc
            if not data:
                break
            buf = carry + data if carry else data
            cut = buf.rfind(b"\n")
            if cut < 0:
                carry = buf
                continue
            block, carry = buf[: cut + 1], buf[cut + 1 :]
            count = block.count(b"\n")
            yield line_no, block, count
            line_no += count
    if carry:  # last line without a line end
        yield line_no, carry + b"\n", 1


@dataclass
class RawPrefix:
    """The syslog prefix of a RawLines block: like SyslogLines, but the message is given as the
    byte offset where it starts (it always runs to the end of the line)."""

    ts: pa.Array
    programs: pa.DictionaryArray  # the program (syslog tag without [pid]), dictionary-encoded
    msg_start: np.ndarray  # int64, meaningful where ok
    error: pa.Array
    ok: np.ndarray  # bool
    raw: RawLines
    host_start: np.ndarray  # int64, host offsets of the fast (RFC 3164) lines
    host_end: np.ndarray
    fast: np.ndarray  # bool: the line was read by the fast path
    slow_host: pa.Array  # host of the other lines, in line order

    @property
    def program(self) -> pa.Array:
        """The program of each line as strings."""
        return self.programs.cast(pa.string())

    def host(self, idx: np.ndarray) -> pa.Array:
        """Host of the lines at positions idx (cut out only for the lines asked for)."""
        f = self.fast[idx]
        parts = [(np.flatnonzero(f), self.raw.slices(self.host_start[idx[f]], self.host_end[idx[f]]))]
        if not f.all():
            slow_pos = np.cumsum(~self.fast) - 1  # row of each slow line in slow_host
            parts.append((np.flatnonzero(~f), self.slow_host.take(pa.array(slow_pos[idx[~f]]))))
        return _scatter(len(idx), parts, pa.string())


def _time_runs(raw: RawLines) -> tuple[np.ndarray, np.ndarray]:
    """Runs of consecutive lines whose first 16 bytes are the same (a busy log writes many
    lines a second): the first line of each run, and the run of each line. The time is read
    once per run, which gives the same answer as once per line."""
    words = np.ndarray((len(raw.buf) - 7,), dtype=np.uint64, buffer=raw.buf, strides=(1,))
    w0, w1 = words[raw.starts], words[raw.starts + 8]
    long = raw.ends - raw.starts > 16
    new = np.ones(len(raw), dtype=bool)
    new[1:] = (w0[1:] != w0[:-1]) | (w1[1:] != w1[:-1]) | (long[1:] != long[:-1])
    return np.flatnonzero(new), np.cumsum(new) - 1


def _bsd_fast(raw: RawLines, rows: np.ndarray, year: int | None, clock: dt.datetime, tz):
    """Which of the lines `rows` are plain RFC 3164 ('Mmm dd HH:MM:SS ' with a real date), and
    their naive local time in microseconds since the epoch."""
    n = len(rows)
    length = raw.ends[rows] - raw.starts[rows]
    # The first 16 bytes of each line in one gather (unaligned 16-byte records over the buffer).
    records = np.ndarray((len(raw.buf) - 15,), dtype="V16", buffer=raw.buf, strides=(1,))
    head = records[raw.starts[rows]].view(np.uint8).reshape(n, 16).astype(np.int32)
    key = ((head[:, 0] << 16) | (head[:, 1] << 8) | head[:, 2]).astype(np.int64)
    pos = np.minimum(np.searchsorted(_MONTH_SORTED, key), 11)
    known = _MONTH_SORTED[pos] == key
    month0 = _MONTH_ORDER[pos]  # 0..11
    digit = (head >= 48) & (head <= 57)
    val = head - 48
    ok = (
        (length > 16) & known & (head[:, 3] == 32) & (head[:, 6] == 32) & (head[:, 15] == 32)
        & ((head[:, 4] == 32) | digit[:, 4]) & digit[:, 5]
        & digit[:, 7] & digit[:, 8] & (head[:, 9] == 58) & digit[:, 10] & digit[:, 11]
        & (head[:, 12] == 58) & digit[:, 13] & digit[:, 14]
    )
    day = (np.where(head[:, 4] == 32, 0, val[:, 4]) * 10 + val[:, 5]).astype(np.int64)
    hh = (val[:, 7] * 10 + val[:, 8]).astype(np.int64)
    mi = (val[:, 10] * 10 + val[:, 11]).astype(np.int64)
    ss = (val[:, 13] * 10 + val[:, 14]).astype(np.int64)
    if year is not None:
        yyyy = np.full(n, year, dtype=np.int64)
    else:
        local_clock = clock.astimezone(tz) if tz is not None else clock
        yyyy = np.where(month0 > local_clock.month - 1, local_clock.year - 1, local_clock.year)
    leap = ((yyyy % 4 == 0) & (yyyy % 100 != 0)) | (yyyy % 400 == 0)
    dim = _MONTH_DAYS[month0] + ((month0 == 1) & leap)
    # Anything unusual (Feb 30, 24:00:00, a leap second) goes to the general parser instead.
    ok &= (day >= 1) & (day <= dim) & (hh < 24) & (mi < 60) & (ss < 60)
    y1 = yyyy - 1
    days = (
        y1 * 365 + y1 // 4 - y1 // 100 + y1 // 400 - 719162  # days from 1970-01-01 to Jan 1
        + _CUM_DAYS[month0] + ((month0 > 1) & leap) + day - 1
    )
    micros = ((days * 86400 + hh * 3600 + mi * 60 + ss) * 1_000_000)
    return ok, micros


def parse_prefix_raw(
    raw: RawLines,
    *,
    year: int | None = None,
    clock: dt.datetime | None = None,
    tz: tzinfo | None = None,
) -> RawPrefix:
    """parse_prefix for a RawLines block: plain RFC 3164 lines with numpy, the rest (ISO, RFC
    5424, unpadded days, bad lines) with parse_prefix."""
    n = len(raw)
    clock = clock or dt.datetime.now(tz=dt.UTC)
    if n == 0:
        empty, none = pa.array([], pa.string()), np.zeros(0, np.int64)
        return RawPrefix(
            pa.array([], TS), empty.dictionary_encode(), none, empty, np.zeros(0, bool), raw, none, none, np.zeros(0, bool), empty
        )
    run_start, run = _time_runs(raw)
    run_fast, run_micros = _bsd_fast(raw, run_start, year, clock, tz)
    fast = run_fast[run]
    # Host = from offset 16 to the next space; tag = to the space after that, ending in ':'.
    host_start = raw.starts + 16
    host_end = raw.next_byte(host_start, 32)
    tag_end = raw.next_byte(host_end + 1, 32)  # past every line when there is no second space
    fast &= (raw.buf[host_start] != 60)  # '<mail.notice> host': the general parser handles it
    fast &= (tag_end < raw.ends) & (raw.buf[np.maximum(tag_end - 1, 0)] == 58)
    fast &= tag_end - 1 > host_end + 1  # a tag of at least one character before ':'
    fast &= raw.buf[np.maximum(tag_end - 2, 0)] != 58  # 'tag::' (rtrim of all ':'): general parser
    fidx = np.flatnonzero(fast)
    sidx = np.flatnonzero(~fast)

    # To UTC once per run (the zone conversion is the costly part), then to every line.
    ok_runs = np.flatnonzero(run_fast)
    run_ts = local_to_utc(pa.array(run_micros[ok_runs], pa.timestamp("us")), tz)
    ok_run_of = np.cumsum(run_fast) - 1  # row in run_ts of each good run
    ts_fast = run_ts.take(pa.array(ok_run_of[run[fidx]]))
    # Program = the tag up to its first '[' (the pid), else up to the ':' that ends it.
    tag_start, tag_stop = host_end[fidx] + 1, tag_end[fidx] - 1
    b = raw.next_byte(tag_start, 91)
    tag_stop = np.where(b < tag_stop, b, tag_stop)
    programs_fast = raw.slices(tag_start, tag_stop).dictionary_encode()
    msg_start = np.zeros(n, dtype=np.int64)
    msg_start[fidx] = tag_end[fidx] + 1
    if not len(sidx):
        return RawPrefix(
            ts_fast, programs_fast, msg_start, pa.nulls(n, pa.string()), fast, raw, host_start, host_end,
            fast, pa.array([], pa.string()),
        )

    slow = parse_prefix(raw.lines(sidx), year=year, clock=clock, tz=tz)
    slow_ok = _as_bool(pc.is_null(slow.error))
    # The message always runs to the end of the line: its start is the end minus its length.
    msg_len = pc.binary_length(pc.fill_null(slow.message, "")).to_numpy(zero_copy_only=False)
    msg_start[sidx] = raw.ends[sidx] - msg_len
    ts = _scatter(n, [(fidx, ts_fast), (sidx, slow.ts)], TS)
    program = _scatter(n, [(fidx, programs_fast.cast(pa.string())), (sidx, slow.program)], pa.string())
    error = _scatter(n, [(fidx, pa.nulls(len(fidx), pa.string())), (sidx, slow.error)], pa.string())
    ok = fast.copy()
    ok[sidx] = slow_ok
    return RawPrefix(
        ts, program.dictionary_encode(), msg_start, error, ok, raw, host_start, host_end, fast, slow.host
    )


def _as_bool(arr: pa.Array) -> np.ndarray:
    return pc.fill_null(arr, False).to_numpy(zero_copy_only=False)
