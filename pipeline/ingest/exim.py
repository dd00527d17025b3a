"""Exim mainlog: one row per message, correlated by Exim message id.

    2026-03-02 09:41:07 1vQx2a-000A1b-3C <= noreply@erp.corp.local H=erp01.corp.local [203.0.113.61]:52110 P=esmtp S=4312 id=20260302094107.4411@erp01.corp.local T="Invoice 4411" for billing@fabrikam.com
    2026-03-02 09:41:08 1vQx2a-000A1b-3C ** billing@fabrikam.com R=smarthost T=remote_smtp H=contoso-com.mail.protection.outlook.com [52.101.68.10] : SMTP error from remote mail server after RCPT TO:<billing@fabrikam.com>: 550 5.7.64 TenantAttribution; Relay Access Denied
    2026-03-02 09:41:08 1vQx2a-000A1b-3C Completed

Line shape (Exim spec, "Log line flags" and "Summary of fields in log lines"):
`YYYY-MM-DD HH:MM:SS[.mmm] [+ZZZZ] [[pid]] [<message id>] <flag> <address> field=value ...`,
local time unless `log_timezone` adds the offset. Message ids are `6-6-2` before Exim 4.97 and
`6-11-4` from 4.97 on. The same lines may arrive through syslog (`Mar  2 09:41:07 mailhub
exim[4411]: ...`), where Exim splits lines longer than 870 characters into `[n/m]` parts.

Correlation: lines are grouped by message id; `Completed` (or a rejection after DATA) closes a
message, so an id that reappears later starts a new one. Messages still open at the end of a
block are carried to the next block and the next file of the same host (files are read in the
order of their first timestamp, whatever the order on the command line); what is still open at
the very end is emitted with `incomplete = true`.

Decisions (see docs/formats/exim-iis.md):
- `relay_host` is the `H=` host of the last remote delivery attempt; `local` when every delivery
  was local (no `H=`, like Postfix's `relay=local`), `none` when the message only failed without
  reaching a host or was rejected at this host (like Postfix's `relay=none`).
- `tls_cert` stays null: `DN=` on a delivery line is the *server's* certificate (Exchange Online's),
  not the client certificate this host presented.
- `rejected RCPT` lines with `F=<sender>` become rows with status `rejected`; other lines without
  a message id (connections, AUTH failures, queue runs) are documented skips.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, tzinfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputFormatError
from ..normalize import extract
from ..schema import TS
from .base import IngestContext, Source, decode_head, make_messages, sniff_encoding, whole_string

NAME = "exim"
DESCRIPTION = (
    "Exim mainlog (plain or through syslog): 'YYYY-MM-DD HH:MM:SS <message id> <= sender ...' "
    "lines, or Exim daemon lines / an exim[pid] syslog tag"
)

# --- line shapes --------------------------------------------------------------------------------
_DATE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
# Exim message ids: base-62 "1vQx2a-000A1b-3C" (< 4.97) and "1vQx2a-00000000A1b-0000" (>= 4.97).
_MSGID = r"[0-9A-Za-z]{6}-(?:[0-9A-Za-z]{6}-[0-9A-Za-z]{2}|[0-9A-Za-z]{11}-[0-9A-Za-z]{4})"
# What detect() takes as Exim: a message line, or daemon phrases no other MTA writes this way.
_DETECT_LINE = re.compile(
    rf"^{_DATE}(?:\.\d{{3}})? (?:[+-]\d{{4}} )?(?:\[\d+\] )?"
    rf"(?:{_MSGID} (?:<=|=>|->|\*\*|==|Completed)|.*(?:authenticator failed for|SMTP connection from"
    r"|SMTP call from|Start queue run|exim \S+ daemon started|H=.*\[[0-9a-fA-F.:]+\]))"
)
_DETECT_TAG = re.compile(r"(?:^|\s)exim\d?(?:\[\d+\])?: (?:\[\d+[/\\]\d+\] )?" + _DATE)
# Syslog header in front of an Exim line: "[timestamp ]host exim[pid]: " (RFC 3164, ISO or none).
_SYSLOG = (
    r"^(?P<pre>(?:.*? )?)(?:(?P<host>[^\s\[\]]+) )?exim\d?(?:\[(?P<pid>\d+)\])?: "
    r"(?:\[(?P<part>\d+)(?P<sep>[/\\])(?P<parts>\d+)\] )?(?P<body>.*)$"
)
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

# Line kinds (one small int per line keeps the per-message aggregation cheap).
ARRIVAL, DELIVERED, ALSO_DELIVERED, FAILED, DEFERRED, COMPLETED, REJECTED, OTHER = range(8)
_FLAGS = {"<=": ARRIVAL, "=>": DELIVERED, "->": ALSO_DELIVERED, ">>": DELIVERED, "*>": DELIVERED,
          "**": FAILED, "==": DEFERRED}

# Daemon lines without a message id: documented skips, first matching phrase wins.
_NOISE = [
    ("authenticator failed", "SMTP AUTH failure (no message)"),
    ("SMTP connection from", "SMTP connection open/close (no message)"),
    ("SMTP call from", "SMTP connection dropped (no message)"),
    ("no MAIL in SMTP connection", "SMTP connection without MAIL (no message)"),
    ("SMTP protocol", "SMTP protocol error (no message)"),
    ("queue run", "queue run start/end"),
    ("daemon started", "daemon start"),
    ("TLS error", "TLS negotiation error (no message)"),
    ("rejected", "connection or sender rejected before RCPT (no message)"),
]
_NOISE_DEFAULT = "daemon or connection line without a message id"

_STR = pa.string()
# Smallest read: tests use tiny blocks to exercise what is carried between them.
MIN_READ = 256


# --- reading ------------------------------------------------------------------------------------
def iter_line_blocks(src: Source, chunk_bytes: int) -> Iterator[tuple[int, pa.Array]]:
    """(first line number, StringArray of lines) blocks of about chunk_bytes, split at newlines.

    UTF-8 blocks are split with numpy over the raw bytes (newline positions become the offsets of
    one StringArray, no per-line Python objects); a trailing '\\r' (Windows line ends) is dropped.
    A block with undecodable bytes, or another encoding, goes through Python's decoder with
    replacement characters: never fatal, line numbers stay right."""
    enc = sniff_encoding(src.head(4096))
    line_no = 1
    rest = b""
    first = True
    with src.open() as fh:
        while True:
            try:
                data = fh.read(max(chunk_bytes, MIN_READ))
            except (OSError, EOFError) as exc:
                raise InputFormatError(f"{src.name}: cannot be read ({exc})") from exc
            if not data:
                break
            if first and enc == "utf-8-sig" and data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]
            first = False
            data = rest + data if rest else data
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            rest = data[cut + 1 :]
            lines = _split(data[: cut + 1], enc)
            del data
            yield line_no, lines
            line_no += len(lines)
    if rest:
        lines = _split(rest + b"\n", enc)
        yield line_no, lines


def _split(block: bytes, enc: str) -> pa.Array:
    """Whole lines (the block ends with a newline) as a StringArray."""
    if enc in ("utf-8", "utf-8-sig"):
        lines = _split_utf8(block)
        if lines is not None:
            return lines
    text = block.decode(enc if not enc.startswith("utf-16") else "utf-8", errors="replace")
    if enc == "utf-8-sig":
        text = text.lstrip("\ufeff")
    parts = pc.list_flatten(pc.split_pattern(pa.array([text], _STR), "\n"))
    parts = parts.slice(0, len(parts) - 1)  # the block ends with "\n": drop the empty tail
    return pc.replace_substring_regex(parts, r"\r$", "") if "\r" in text else parts


def _split_utf8(block: bytes) -> pa.Array | None:
    """Byte-level split: newline positions -> offsets; the newline (and a '\\r' before it) are
    dropped from the data (blocks without '\\r\\n' take _split_lf). None when the block is not
    valid UTF-8 (the caller decodes it)."""
    if len(block) >= (1 << 31):
        return None
    if b"\r\n" not in block:
        return _split_lf(block)
    raw = np.frombuffer(block, np.uint8)
    nl = np.flatnonzero(raw == 10)
    n = len(nl)
    begin = np.empty(n, np.int64)
    begin[0] = 0
    begin[1:] = nl[:-1] + 1
    end = nl.copy()
    cr = (end > begin) & (raw[np.maximum(end - 1, 0)] == 13)
    end[cr] -= 1
    keep = np.ones(len(raw), dtype=bool)
    keep[nl] = False
    keep[end[cr]] = False
    data = raw[keep]
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(end - begin, out=offsets[1:])
    lines = pa.Array.from_buffers(_STR, n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    try:
        lines.validate(full=True)  # UTF-8 check
    except pa.ArrowInvalid:
        return None
    return lines


def _split_lf(block: bytes) -> pa.Array | None:
    """The usual case, '\\n' line ends only: Arrow's split of the block as one binary value
    (one pass in C++, twice as fast as a numpy mask and compress), UTF-8 checked first."""
    whole = whole_string(block, len(block) - 1)  # without the final line end
    return None if whole is None else pc.list_flatten(pc.split_pattern(whole, "\n"))


def local_to_utc(naive: pa.Array, tz: tzinfo | None) -> pa.Array:
    """Naive local timestamps -> UTC with the zone of --tz (UTC when none is given)."""
    naive = naive.cast(pa.timestamp("us"))
    key = getattr(tz, "key", None)
    if tz is None:
        return naive.cast(TS)
    if key:
        return pc.assume_timezone(naive, timezone=key, ambiguous="earliest",
                                  nonexistent="earliest").cast(TS)
    offset = datetime.now(tz).utcoffset() or timedelta(0)  # a fixed-offset zone
    shifted = pc.subtract(naive, pa.scalar(offset, pa.duration("us")))
    return shifted.cast(TS)


def detect(head: bytes) -> bool:
    text = decode_head(head)
    if "postfix/" in text[:4096] or "sendmail[" in text[:4096] or "sm-mta[" in text[:4096]:
        return False
    for line in text.splitlines()[:200]:
        if _DETECT_LINE.match(line) or _DETECT_TAG.search(line):
            return True
    return False


# --- per-line parsing ---------------------------------------------------------------------------
def _mask(arr: pa.Array) -> pa.Array:
    return pc.fill_null(arr, False)


def _strip_syslog(lines: pa.Array, year: int) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array]:
    """Remove a syslog header where there is one.

    Returns (plain lines, syslog host, syslog pid, split part 'n/m' marker). A line without its
    own Exim timestamp (syslog_timestamp = false) gets the header's time in Exim's layout."""
    n = len(lines)
    host = pa.nulls(n, _STR)
    pid = pa.nulls(n, _STR)
    part = pa.nulls(n, _STR)
    # Cheap screen first: only lines naming "exim" near the start can carry a syslog tag.
    maybe = _mask(pc.match_substring(pc.utf8_slice_codeunits(lines, 0, 120), "exim"))
    idx = np.flatnonzero(maybe.to_numpy(zero_copy_only=False))
    if not len(idx):
        return lines, host, pid, part
    sub = lines.take(pa.array(idx))
    m = pc.extract_regex(sub, _SYSLOG)
    ok = pc.is_valid(m).to_numpy(zero_copy_only=False)
    if not ok.any():
        return lines, host, pid, part
    idx, sub, m = idx[ok], sub.filter(pa.array(ok)), m.filter(pa.array(ok))
    body, pre = m.field("body"), pc.utf8_trim_whitespace(m.field("pre"))
    has_date = _mask(pc.match_substring_regex(body, "^" + _DATE))
    stamp = _syslog_stamp(pre, year)
    body = pc.if_else(has_date, body, pc.binary_join_element_wise(stamp, body, " "))
    # A continuation part ([2/2]...) has no timestamp of its own: keep it as text, joined later.
    is_cont = pc.invert(pc.is_in(m.field("part"), value_set=pa.array(["", "1"])))
    body = pc.if_else(_mask(is_cont), m.field("body"), body)
    marker = pc.if_else(
        pc.equal(m.field("part"), ""), pa.scalar(None, _STR),
        pc.binary_join_element_wise(m.field("part"), m.field("sep"), m.field("parts"), ""),
    )
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    pmask = pa.array(mask)
    lines = pc.replace_with_mask(lines, pmask, body.cast(_STR))
    host = pc.replace_with_mask(host, pmask, _blank_to_null(m.field("host")))
    pid = pc.replace_with_mask(pid, pmask, _blank_to_null(m.field("pid")))
    part = pc.replace_with_mask(part, pmask, marker.cast(_STR))
    return lines, host, pid, part


def _blank_to_null(arr: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(pc.utf8_length(arr), 0), pa.scalar(None, _STR), arr).cast(_STR)


def _syslog_stamp(pre: pa.Array, year: int) -> pa.Array:
    """Syslog header time -> 'YYYY-MM-DD HH:MM:SS' (ISO 8601 / RFC 5424, or RFC 3164 + year)."""
    iso = extract(pre, r"^(?P<t>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d)")
    iso = pc.replace_substring(iso, "T", " ")
    rfc = pc.extract_regex(pre, r"^(?P<mon>[A-Z][a-z]{2}) +(?P<day>\d{1,2}) (?P<t>\d\d:\d\d:\d\d)")
    mon = pc.index_in(rfc.field("mon"), value_set=pa.array(list(_MONTHS))).cast(pa.int64())
    mon_txt = pc.utf8_lpad(pc.cast(pc.add(mon, 1), _STR), 2, "0")
    day_txt = pc.utf8_lpad(rfc.field("day"), 2, "0")
    rfc_txt = pc.binary_join_element_wise(
        pa.scalar(str(year)), mon_txt, day_txt, "-"
    )
    rfc_txt = pc.binary_join_element_wise(rfc_txt, rfc.field("t"), " ")
    rfc_txt = pc.if_else(pc.is_valid(rfc), rfc_txt, pa.scalar(None, _STR))
    return pc.coalesce(iso, rfc_txt, pa.scalar("-", _STR))


def _join_split_parts(lines: pa.Array, host: pa.Array, pid: pa.Array, part: pa.Array
                      ) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Glue syslog [n/m] parts back onto part 1 (Exim log.c write_syslog: 870-character pieces;
    a '\\' separator means the piece ended at an embedded newline). Only the few split lines
    are touched, so a Python loop over them is cheap.

    Returns (lines, continuation joined to its part 1, continuation whose part 1 was not seen)."""
    is_part = pc.is_valid(part).to_numpy(zero_copy_only=False)
    joined = np.zeros(len(lines), dtype=bool)
    lost = np.zeros(len(lines), dtype=bool)
    if not is_part.any():
        return lines, joined, lost
    idx = np.flatnonzero(is_part)
    take = pa.array(idx)
    texts = lines.take(take).to_pylist()
    marks = part.take(take).to_pylist()
    keys = zip(host.take(take).to_pylist(), pid.take(take).to_pylist(), strict=True)
    glued: dict[int, str] = {}
    # Parse slices never cut a group (_whole_split_groups), so its parts are all in this one.
    state: dict[tuple, tuple[int, str]] = {}
    for i, text, mark, key in zip(idx.tolist(), texts, marks, keys, strict=True):
        n, sep, m = re.match(r"(\d+)([/\\])(\d+)", mark).groups()
        if n == "1":
            glued[i] = text
            state[key] = (i, sep)
        elif key in state:
            j, prev_sep = state[key]
            glued[j] += ("\\n" if prev_sep == "\\" else "") + text
            state[key] = (j, sep)
            joined[i] = True
        else:
            lost[i] = True
        if n == m:  # the last part closes the group: a later stray part is not glued on
            state.pop(key, None)
    first = np.array(sorted(glued), dtype=np.int64)
    mask = np.zeros(len(lines), dtype=bool)
    mask[first] = True
    lines = pc.replace_with_mask(lines, pa.array(mask), pa.array([glued[k] for k in first.tolist()], _STR))
    return lines, joined, lost


def _parse_lines(lines: pa.Array, tz: tzinfo | None) -> tuple[dict, np.ndarray, pa.Array]:
    """Classify and extract fields from plain Exim lines.

    Returns (columns per line, kind code per line [-1 = no message, -2 = not Exim], reasons for
    lines that are not Exim lines)."""
    n = len(lines)
    stamp = pc.utf8_slice_codeunits(lines, 0, 19)
    naive = pc.strptime(stamp, format="%Y-%m-%d %H:%M:%S", unit="s", error_is_null=True)
    valid = pc.is_valid(naive)
    after = pc.utf8_slice_codeunits(lines, 19)
    # +millisec / log_timezone / pid selectors put extra fields between the time and the rest.
    decorated = _mask(pc.or_(pc.starts_with(after, "."), pc.or_(
        pc.match_substring_regex(pc.utf8_slice_codeunits(after, 0, 2), r"^ [-+\[]"),
        pc.invert(pc.starts_with(after, " ")))))
    body = pc.utf8_slice_codeunits(after, 1)
    offset_min = pa.nulls(n, pa.int64())
    dec_idx = np.flatnonzero(pc.and_(decorated, _mask(valid)).to_numpy(zero_copy_only=False))
    if len(dec_idx):
        sub = after.take(pa.array(dec_idx))
        m = pc.extract_regex(
            sub, r"^(?:\.\d+)? (?:(?P<z>[+-]\d{4}) )?(?:\[[\d:]+\] )?(?P<body>.*)$")
        good = pc.is_valid(m)
        mask = np.zeros(n, dtype=bool)
        mask[dec_idx] = True
        body = pc.replace_with_mask(body, pa.array(mask),
                                    pc.if_else(good, m.field("body"), pa.scalar(None, _STR)))
        has_z = pc.and_(good, pc.greater(pc.utf8_length(m.field("z")), 0))
        z = pc.if_else(has_z, m.field("z"), pa.scalar("+0000"))
        sign = pc.if_else(pc.starts_with(z, "-"), -1, 1)
        zmin = pc.multiply(sign, pc.add(
            pc.multiply(pc.cast(pc.utf8_slice_codeunits(z, 1, 3), pa.int64()), 60),
            pc.cast(pc.utf8_slice_codeunits(z, 3, 5), pa.int64())))
        zmin = pc.if_else(has_z, zmin, pa.scalar(None, pa.int64()))
        offset_min = pc.replace_with_mask(offset_min, pa.array(mask), zmin)
    # Explicit +ZZZZ wins over --tz.
    ts_local = local_to_utc(naive.cast(pa.timestamp("us")), tz)
    explicit = pc.subtract(naive.cast(pa.timestamp("us")),
                           pc.cast(pc.multiply(pc.fill_null(offset_min, 0), 60_000_000),
                                   pa.duration("us"))).cast(TS)
    ts = pc.if_else(pc.is_valid(offset_min), explicit, ts_local)

    head = pc.utf8_slice_codeunits(body, 0, 24)
    has_mid = _mask(pc.match_substring_regex(head, "^" + _MSGID + " "))
    long_id = _mask(pc.not_equal(pc.utf8_slice_codeunits(body, 16, 17), " "))  # 6-11-4 (4.97+)
    mid = pc.if_else(has_mid, pc.if_else(long_id, pc.utf8_slice_codeunits(body, 0, 23),
                                         pc.utf8_slice_codeunits(body, 0, 16)),
                     pa.scalar(None, _STR))
    text = pc.if_else(has_mid, pc.if_else(long_id, pc.utf8_slice_codeunits(body, 24),
                                          pc.utf8_slice_codeunits(body, 17)), body)
    flag = pc.utf8_slice_codeunits(text, 0, 3)
    kind = np.full(n, OTHER, dtype=np.int8)
    for f, code in _FLAGS.items():
        kind[_mask(pc.equal(flag, f + " ")).to_numpy(zero_copy_only=False)] = code
    kind[_mask(pc.equal(text, "Completed")).to_numpy(zero_copy_only=False)] = COMPLETED
    has_mid_np = has_mid.to_numpy(zero_copy_only=False)
    # Rejections that name the sender (F=): after DATA / by local_scan for a message id, or
    # "rejected RCPT" at SMTP time (no message id). Cheap substring screen, regex on the few.
    rejected = np.zeros(n, dtype=bool)
    rcpt_reject = np.zeros(n, dtype=bool)
    screen = np.flatnonzero(_mask(pc.match_substring(text, "rejected ")).to_numpy(zero_copy_only=False))
    if len(screen):
        sub = text.take(pa.array(screen))
        with_sender = _mask(pc.match_substring_regex(sub, r"(?:^|\s)F=")).to_numpy(zero_copy_only=False)
        rcpt = _mask(pc.match_substring(sub, " rejected RCPT ")).to_numpy(zero_copy_only=False)
        rejected[screen] = with_sender
        rcpt_reject[screen] = with_sender & rcpt
    kind[(kind == OTHER) & rejected & (has_mid_np | rcpt_reject)] = REJECTED
    valid_np = valid.to_numpy(zero_copy_only=False) & pc.is_valid(body).to_numpy(zero_copy_only=False)
    kind[~has_mid_np & ~rcpt_reject] = -1
    kind[~valid_np] = -2
    cols = {"ts": ts, "queue_id": mid, "text": text}
    return cols, kind, body


# --- byte kernels: fixed offsets and key=value fields over the raw bytes of a StringArray ---------
# Exim's own lines have a fixed layout: a 19-character timestamp, a space, a 16- (< 4.97) or
# 23-character (>= 4.97) message id, a space, then a two-character flag ("<=", "=>", "**" ...).
# Reading bytes at fixed offsets classifies them without slicing whole lines; what does not fit
# (syslog wrappers, +ZZZZ / [pid] / .mmm selectors, lines without a message id) takes the
# general path above.
_WIDTH = 53  # enough bytes for timestamp + long message id + "Completed"
_ALNUM = np.zeros(256, dtype=bool)
for _c in b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz":
    _ALNUM[_c] = True
_DIGIT = np.zeros(256, dtype=bool)
_DIGIT[48:58] = True
_STAMP_DIGITS = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
_BYTE_FLAGS = {(ord(f[0]), ord(f[1])): code for f, code in _FLAGS.items()}


def _buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, data) of a StringArray as numpy views (no copy)."""
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], np.int32, len(arr) + 1, arr.offset * 4)
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(1, np.uint8)
    return offsets, data if len(data) else np.zeros(1, np.uint8)


def _gather(data: np.ndarray, start: np.ndarray, stop: np.ndarray) -> pa.Array:
    """StringArray of data[start:stop] per row; null where start < 0. Built as a string view
    array over `data` (16 bytes per row, no per-byte index) and compacted by Arrow's cast. Cuts
    are at ASCII bytes (keys, spaces, quotes, row ends), so every value stays valid UTF-8."""
    n = len(start)
    valid = start >= 0
    length = np.where(valid, stop - start, 0)
    length[length < 0] = 0
    start = np.where(valid, start, 0)
    views = np.zeros((n, 4), np.int32)
    views[:, 0] = length
    raw = views.view(np.uint8)
    short = length <= 12
    if len(data) < 16:
        data = np.concatenate([data, np.zeros(16, np.uint8)])
    # Inline bytes (short values) or a 4-byte prefix + offset (long ones), per the Arrow spec.
    rows = np.flatnonzero(length > 0)
    head = _windows(data, start[rows], 12).view(np.uint32)
    head &= _HEAD_MASKS[np.where(short[rows], length[rows], 4)]
    raw[rows, 4:16] = head.view(np.uint8)
    views[~short, 2] = 0
    views[~short, 3] = start[~short]
    validity = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    arr = pa.Array.from_buffers(pa.string_view(), n, [validity, pa.py_buffer(views),
                                                      pa.py_buffer(data)],
                                null_count=int(n - valid.sum()))
    return arr.cast(_STR)


# Per value length 0..12: which of the 12 inline bytes of a string view it keeps, as 3 words.
_HEAD_MASKS = (np.arange(12)[None, :] < np.arange(13)[:, None]).astype(np.uint8) * 255
_HEAD_MASKS = np.ascontiguousarray(_HEAD_MASKS).view(np.uint32)


def _windows(data: np.ndarray, start: np.ndarray, width: int) -> np.ndarray:
    """(len(start), width) bytes data[start + k], the last byte repeated past the end. Rows of
    a sliding window view are gathered whole: one index per row, not one per byte."""
    last = len(data) - width
    if last < 0:
        return data[np.minimum(start[:, None] + np.arange(width), len(data) - 1)]
    out = np.lib.stride_tricks.sliding_window_view(data, width)[np.minimum(start, last)]
    near_end = np.flatnonzero(start > last)
    if len(near_end):
        out[near_end] = data[np.minimum(start[near_end, None] + np.arange(width), len(data) - 1)]
    return out


def _fixed_bytes(offsets: np.ndarray, data: np.ndarray, width: int) -> np.ndarray:
    """(rows, width) matrix of each row's first bytes. Past a row's end it holds the next row's
    bytes: callers check the row length for every position they read."""
    return _windows(data, offsets[:-1], width)


def _plain_exim(lines: pa.Array, tz: tzinfo | None) -> dict | None:
    """Lines in Exim's plain layout with a message id: mask, text offset, kind, time, id."""
    n = len(lines)
    if n == 0 or lines.null_count:
        return None
    offsets, data = _buffers(lines)
    m = _fixed_bytes(offsets, data, _WIDTH)
    ok = _DIGIT[m[:, _STAMP_DIGITS]].all(axis=1)
    ok &= (m[:, 4] == 45) & (m[:, 7] == 45) & (m[:, 10] == 32) & (m[:, 13] == 58)
    ok &= (m[:, 16] == 58) & (m[:, 19] == 32)
    ok &= _ALNUM[m[:, 20:26]].all(axis=1) & (m[:, 26] == 45)
    short = (_ALNUM[m[:, 27:33]].all(axis=1) & (m[:, 33] == 45)
             & _ALNUM[m[:, 34:36]].all(axis=1) & (m[:, 36] == 32))
    long_ = (_ALNUM[m[:, 27:38]].all(axis=1) & (m[:, 38] == 45)
             & _ALNUM[m[:, 39:43]].all(axis=1) & (m[:, 43] == 32))
    length = np.diff(offsets)
    ok &= (short & (length >= 37)) | (long_ & (length >= 44))
    if not ok.any():
        return None
    tstart = np.where(long_, 44, 37).astype(np.int64)
    stamp_buf = np.ascontiguousarray(m[:, :19]).reshape(-1)
    stamps = pa.Array.from_buffers(_STR, n, [None, pa.py_buffer(
        np.arange(0, 19 * (n + 1), 19, dtype=np.int32)), pa.py_buffer(stamp_buf)])
    naive = pc.strptime(stamps, format="%Y-%m-%d %H:%M:%S", unit="s", error_is_null=True)
    ok &= pc.is_valid(naive).to_numpy(zero_copy_only=False)
    # Flag at the text start: "<= ", "=> ", ... or the whole text "Completed".
    rows = np.arange(n)
    b0, b1, b2 = (m[rows, np.minimum(tstart + k, _WIDTH - 1)] for k in range(3))
    kind = np.full(n, OTHER, dtype=np.int8)
    flagged = length >= tstart + 3
    for (c0, c1), code in _BYTE_FLAGS.items():
        kind[(b0 == c0) & (b1 == c1) & (b2 == 32) & flagged] = code
    completed = length == tstart + 9
    for k, c in enumerate(b"Completed"):
        completed &= m[rows, np.minimum(tstart + k, _WIDTH - 1)] == c
    kind[completed] = COMPLETED
    begin = offsets[:-1].astype(np.int64)
    qid = _gather(data, np.where(ok, begin + 20, -1), begin + tstart - 1)
    ts = local_to_utc(naive.cast(pa.timestamp("us")), tz)
    return {"ok": ok, "tstart": tstart, "kind": kind, "ts": ts, "queue_id": qid}


# "Not found" for byte searches: past any text, yet callers may still add a few bytes to it
# (int64's maximum would wrap to a negative index).
NEVER = 1 << 62


class _Text:
    """Rows of Exim text (from `begin`, to the row end) as bytes, with the quoted values
    (`key="..."`, '\\\\' escapes) that hide spaces, '=' and ' for ' from the field search."""

    def __init__(self, arr: pa.Array, tstart: np.ndarray):
        self.arr = arr
        offsets, self.data = _buffers(arr)
        self.begin = offsets[:-1].astype(np.int64) + tstart
        self.end = offsets[1:].astype(np.int64)
        d = self.data
        q = np.flatnonzero(d == 34)
        esc = q > 0
        esc[esc] = d[q[esc] - 1] == 92
        self.quotes = q[~esc]  # unescaped '"'
        openers = self.quotes[(self.quotes > 0) & (d[np.maximum(self.quotes - 1, 0)] == 61)]
        j = np.searchsorted(self.quotes, openers + 1)
        has_close = j < len(self.quotes)
        closers = np.where(has_close, self.quotes[np.minimum(j, len(self.quotes) - 1)], -1)
        row = self.row_of(openers)
        good = has_close & (closers < self.end[row])
        openers, closers = openers[good], closers[good]
        # A '="' inside an earlier quoted value is no opener (regions never overlap).
        keep = np.ones(len(openers), dtype=bool)
        keep[1:] = openers[1:] > closers[:-1]
        self.openers, self.closers = openers[keep], closers[keep]
        self._spaces: np.ndarray | None = None
        self._at: dict[int, np.ndarray] = {}

    def positions(self, byte: int) -> np.ndarray:
        """Where `byte` occurs in the data (cached: keys share their last byte, '=')."""
        if byte not in self._at:
            self._at[byte] = np.flatnonzero(self.data == byte)
        return self._at[byte]

    def row_of(self, pos: np.ndarray) -> np.ndarray:
        return np.maximum(np.searchsorted(self.begin, pos, side="right") - 1, 0)

    def quoted(self, pos: np.ndarray) -> np.ndarray:
        """Positions inside a quoted value (the opening quote itself included)."""
        i = np.searchsorted(self.openers, pos, side="right") - 1
        return (i >= 0) & (pos <= self.closers[np.maximum(i, 0)]) if len(self.openers) else (
            np.zeros(len(pos), dtype=bool))

    @property
    def spaces(self) -> np.ndarray:
        return self.positions(32)

    def find(self, key: bytes) -> np.ndarray:
        """Per row: position of the first `key` outside quoted values, else -1."""
        d = self.data
        c = self.positions(key[-1]) - (len(key) - 1)
        c = c[c >= 0]
        for k, b in enumerate(key[:-1]):
            c = c[d[c + k] == b]
        row = self.row_of(c)
        inside = (c >= self.begin[row]) & (c + len(key) <= self.end[row])
        c, row = c[inside], row[inside]
        free = ~self.quoted(c)
        c, row = c[free], row[free]
        out = np.full(len(self.begin), -1, dtype=np.int64)
        first = np.ones(len(row), dtype=bool)
        first[1:] = row[1:] != row[:-1]
        out[row[first]] = c[first]
        return out

    def starts_with(self, prefix: bytes) -> np.ndarray:
        ok = self.end - self.begin >= len(prefix)
        for k, b in enumerate(prefix):
            ok &= self.data[np.minimum(self.begin + k, len(self.data) - 1)] == b
        return ok

    def next_at(self, byte: int, start: np.ndarray) -> np.ndarray:
        """Per position: where `byte` next occurs at or after it (a large number if never)."""
        at = self.positions(byte)
        if not len(at):
            return np.full(len(start), NEVER, dtype=np.int64)
        j = np.searchsorted(at, start)
        return np.where(j < len(at), at[np.minimum(j, len(at) - 1)], NEVER)

    def until_space(self, start: np.ndarray) -> np.ndarray:
        """End of the value that starts at `start`: the next space or the row end."""
        sp = self.spaces
        if not len(sp):
            return self.end.copy()
        j = np.searchsorted(sp, start)
        nxt = np.where(j < len(sp), sp[np.minimum(j, len(sp) - 1)], NEVER)
        return np.minimum(nxt, self.end)

    def word_after(self, key: bytes, rows: np.ndarray) -> pa.Array:
        """`key(?P<v>\\S+)`: the value after the first key, up to the next space, in the rows
        of the `rows` mask (null elsewhere: no value is cut out only to be dropped)."""
        pos = np.where(rows, self.find(key), -1)
        start = np.where(pos >= 0, pos + len(key), -1)
        stop = self.until_space(np.maximum(start, 0))
        return _gather(self.data, np.where(stop > start, start, -1), stop)

    def quoted_after(self, key: bytes, rows: np.ndarray) -> pa.Array:
        """`key="(?P<v>...)"` (key without the quote): the quoted value's content, in the rows
        of the `rows` mask (null elsewhere)."""
        pos = np.where(rows, self.find(key), -1)
        opener = np.where(pos >= 0, pos + len(key), -1)
        i = np.searchsorted(self.openers, opener)
        hit = (pos >= 0) & (i < len(self.openers))
        hit &= self.openers[np.minimum(i, max(len(self.openers) - 1, 0))] == opener if len(
            self.openers) else False
        close = self.closers[np.minimum(i, max(len(self.openers) - 1, 0))] if len(
            self.openers) else np.zeros(len(pos), np.int64)
        return _gather(self.data, np.where(hit, opener + 1, -1), close)

    def sub(self, start: np.ndarray, stop: np.ndarray) -> pa.Array:
        return _gather(self.data, start, stop)


def _unquoted(text: pa.Array) -> pa.Array:
    """Quoted values (T="subject", C="reply", DN="...") emptied, for the regex fallbacks."""
    return pc.replace_substring_regex(text, r'(^|\s)([A-Za-z]+)="(?:[^"\\]|\\.)*"', r'\1\2=""')


def _scatter(n: int, rows: np.ndarray, values: pa.Array, base: pa.Array | None = None
             ) -> pa.Array:
    """An n-row array holding `values` at `rows` (null, or `base`, elsewhere)."""
    if base is None:
        base = pa.nulls(n, _STR)
    if not len(rows):
        return base
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return pc.replace_with_mask(base, pa.array(mask), values.cast(_STR))


def _by_regex(t: _Text, rows: np.ndarray, pattern: str, unquote: bool) -> pa.Array:
    """The old way, for the few rows the byte kernels leave: the regex over the text."""
    text = t.sub(t.begin[rows], t.end[rows])
    return extract(_unquoted(text) if unquote else text, pattern)


def _address_at(t: _Text, rows: np.ndarray, quoted_pattern: str, nonempty: bool) -> pa.Array:
    """The address right after the flag ('<= a@b', '=> a@b'); '"local part"@domain' by regex."""
    n = len(t.begin)
    first = t.begin[rows] + 3
    last = np.minimum(t.next_at(32, first), t.end[rows])  # until_space, for `rows` only
    quoted = np.zeros(n, dtype=bool)
    quoted[rows] = (t.data[np.minimum(first, len(t.data) - 1)] == 34) & (last > first)
    start = np.full(n, -1, dtype=np.int64)
    stop = np.zeros(n, dtype=np.int64)
    start[rows] = np.where(last > first, first, -1) if nonempty else first
    stop[rows] = last
    out = _gather(t.data, np.where(quoted, -1, start), stop)
    qrows = np.flatnonzero(quoted)
    if len(qrows):
        out = _scatter(n, qrows, _by_regex(t, qrows, quoted_pattern, False), out)
    return out


def _for_list(t: _Text, rows: np.ndarray) -> pa.Array:
    """`\\sfor (?P<v>[^=]+)$` on the unquoted text: the first ' for ' after the last '='."""
    d = t.data
    n = len(t.begin)
    eq = t.positions(61)
    eq = eq[~t.quoted(eq)]
    # Per row, the last unquoted '=' before its end: one search per row, not one per '='.
    last_eq = np.full(n, -1, dtype=np.int64)
    if len(eq):
        j = np.searchsorted(eq, t.end) - 1
        before = eq[np.maximum(j, 0)]
        last_eq = np.where((j >= 0) & (before >= t.begin), before, -1)
    c = t.spaces
    c = c[c + 5 < len(d)]
    c = c[(d[c + 1] == 102) & (d[c + 2] == 111) & (d[c + 3] == 114) & (d[c + 4] == 32)]
    row = t.row_of(c)
    ok = (c >= t.begin[row]) & (c + 5 < t.end[row]) & (c > last_eq[row]) & ~t.quoted(c)
    c, row = c[ok], row[ok]
    start = np.full(n, -1, dtype=np.int64)
    first = np.ones(len(row), dtype=bool)
    first[1:] = row[1:] != row[:-1]
    start[row[first]] = c[first] + 5
    wanted = np.zeros(n, dtype=bool)
    wanted[rows] = True
    return _gather(d, np.where(wanted, start, -1), t.end)


_CLIENT_IP = r"(?:^|\s)H=(?:\S+ )?(?:\([^)]*\) )?\[(?P<v>[0-9A-Fa-f.:]+)\]"
_RELAY_HOST = r"\sH=(?P<v>[^\s\[]+)(?: \([^)]*\))? \["


def _host_field(t: _Text, pos: np.ndarray, rows: np.ndarray, want_ip: bool) -> pa.Array:
    """From ' H=' at `pos`: the host name (_RELAY_HOST) or the final [ip] (_CLIENT_IP).

    The usual shapes 'H=name [ip]', 'H=(helo) [ip]', 'H=name (helo) [ip]' and 'H=[ip]' are
    read by byte positions; any other shape gets the regex."""
    n = len(t.begin)
    sel = rows[pos[rows] >= 0]
    p = pos[sel] + 3  # first byte after "H="
    end = t.end[sel]
    br = t.next_at(ord("["), p)  # the '[' that opens the address
    sp = t.next_at(32, p)
    first = t.data[np.minimum(p, len(t.data) - 1)]
    paren_at = np.where(first == 40, p, np.where(t.data[np.minimum(sp + 1, len(t.data) - 1)]
                                                 == 40, sp + 1, -1))
    close = t.next_at(ord(")"), np.maximum(paren_at, 0))
    plain = (sp == br - 1) & (first != 40) & (sp > p)  # name [ip]
    bare = br == p  # [ip]
    helo = (paren_at >= 0) & (close == br - 2) & (t.data[np.minimum(br - 1, len(t.data) - 1)]
                                                     == 32)
    if want_ip:
        shape_ok = (plain | bare | helo) & (br < end)
        rb = t.next_at(ord("]"), br + 1)
        shape_ok &= rb < end
        vals = _gather(t.data, np.where(shape_ok, br + 1, -1), rb)
        good = pc.fill_null(pc.match_substring_regex(vals, r"^[0-9A-Fa-f.:]+$"), False
                            ).to_numpy(zero_copy_only=False)
    else:
        name_end = np.where(first == 40, -1, np.minimum(sp, br))
        good = (plain | (helo & (paren_at == sp + 1))) & (br < end) & (name_end > p)
        vals = _gather(t.data, np.where(good, p, -1), name_end)
    out = _scatter(n, sel[good], vals.filter(pa.array(good)))
    odd = sel[~good]
    if len(odd):
        out = _scatter(n, odd, _by_regex(t, odd, _CLIENT_IP if want_ip else _RELAY_HOST, True),
                       out)
    return out


def _fields_fast(t: _Text, kind: np.ndarray) -> dict[str, pa.Array]:
    """The message fields (same meaning as the per-field regexes of _fields), found with the
    byte kernels; regexes run only on failures/deferrals, rejections and odd rows."""
    n = len(kind)
    arrival = np.flatnonzero(kind == ARRIVAL)
    delivery = np.flatnonzero(np.isin(kind, [DELIVERED, ALSO_DELIVERED, FAILED, DEFERRED]))
    failed_or_deferred = np.flatnonzero(np.isin(kind, [FAILED, DEFERRED]))
    rejected = np.flatnonzero(kind == REJECTED)
    is_arrival = kind == ARRIVAL
    is_delivery = np.isin(kind, [DELIVERED, ALSO_DELIVERED, FAILED, DEFERRED])

    out: dict[str, pa.Array] = {}
    out["p1_sender"] = _address_at(t, arrival, r'^<= (?P<v>"[^"]*"@\S+|\S*)', nonempty=False)
    out["bounce_of"] = t.word_after(b" R=", is_arrival)
    size = t.word_after(b" S=", is_arrival)
    digits = pc.fill_null(pc.utf8_is_decimal(size), True).to_numpy(zero_copy_only=False)
    if not digits.all():  # "S=12abc": the regex took the leading digits only
        odd = np.flatnonzero(~digits)
        size = _scatter(n, odd, extract(size.take(pa.array(odd)), r"^(?P<v>\d+)"), size)
    out["size"] = size
    out["message_id"] = t.word_after(b" id=", is_arrival)
    out["subject"] = t.quoted_after(b" T=", is_arrival)
    out["for_list"] = _for_list(t, arrival)
    # H= on arrivals is the client; only the final [ip] is reliable (Exim spec, "Reception").
    h_pos = t.find(b" H=")
    at_start = t.starts_with(b"H=")
    client = np.concatenate([arrival, rejected])
    out["client_ip"] = _host_field(t, np.where(at_start, -1, h_pos), client, want_ip=True)
    start_rows = client[at_start[client]]
    if len(start_rows):
        out["client_ip"] = _scatter(n, start_rows, _by_regex(t, start_rows, _CLIENT_IP, True),
                                    out["client_ip"])
    out["address"] = _address_at(t, delivery, r'^.. (?P<v>"[^"]*"@\S+|\S+)', nonempty=True)
    # "<original>" after the address (local, pipe and file deliveries): few rows, by regex.
    addr_end = t.until_space(t.begin + 3)
    nxt = np.minimum(addr_end + 1, len(t.data) - 1)
    orig_rows = delivery[(addr_end[delivery] + 1 < t.end[delivery]) & (t.data[nxt[delivery]] == 60)]
    out["original"] = _scatter(n, orig_rows, _by_regex(
        t, orig_rows, r"^.. (?:\"[^\"]*\"@\S+|\S+) <(?P<v>[^>]*)>", False))
    out["relay_host"] = _host_field(t, h_pos, delivery, want_ip=False)
    # F=<sender> / P=<return path> (sender_on_delivery, return_path_on_delivery): up to '>'.
    f_pos, p_pos = t.find(b" F=<"), t.find(b" P=<")
    fp = np.where((f_pos >= 0) & ((p_pos < 0) | (f_pos < p_pos)), f_pos, p_pos)
    gt = t.next_at(ord(">"), np.maximum(fp + 4, 0))
    wanted = np.zeros(n, dtype=bool)
    wanted[delivery] = True
    out["delivery_sender"] = _gather(t.data, np.where(wanted & (fp >= 0) & (gt < t.end), fp + 4,
                                                      -1), gt)
    out["confirmation"] = t.quoted_after(b" C=", is_delivery)
    # Failures and deferrals (a minority): their reply text by the regexes of _fields.
    fd_text = _unquoted(t.sub(t.begin[failed_or_deferred], t.end[failed_or_deferred]))
    out["error"] = _scatter(n, failed_or_deferred,
                            extract(fd_text, r"(?:^|: )(?P<v>[2-5]\d\d[- ].*)$"))
    out["error_text"] = _scatter(n, failed_or_deferred,
                                 extract(fd_text, r"(?:\]\*? |\S):? ?: (?P<v>.*)$"))
    # Rejections at this host: "H=... F=<sender> rejected RCPT <rcpt>: reason"
    rj = t.sub(t.begin[rejected], t.end[rejected])
    out["reject_sender"] = _scatter(n, rejected, extract(rj, r"(?:^|\s)F=<?(?P<v>[^\s>]*)>?"))
    out["reject_rcpt"] = _scatter(n, rejected, extract(rj, r"rejected RCPT <?(?P<v>[^\s>:]+)>?"))
    out["reject_reason"] = _scatter(n, rejected, extract(rj, r"rejected [^:]*: (?P<v>.*)$"))
    return out



# --- correlation --------------------------------------------------------------------------------
def _records(cols: dict, f: dict, kind: np.ndarray, keep: np.ndarray, file_idx: int,
             numbers: np.ndarray, host: pa.Array) -> pa.Table:
    """The per-line records that take part in correlation (message lines and reject rows)."""
    n = len(kind)
    address = pc.if_else(_mask(pc.match_substring(f["address"], "@")), f["address"],
                         pc.coalesce(f["original"], f["address"]))
    address = pc.replace_substring_regex(address, r":$", "")
    recipient = pc.coalesce(address, f["reject_rcpt"])
    sel = pa.array(keep)
    fail = pc.coalesce(f["confirmation"], f["error"], f["error_text"])
    is_fail = pa.array(kind == FAILED)
    is_defer = pa.array(kind == DEFERRED)
    null = pa.scalar(None, _STR)
    table = pa.table({
        "file": pa.array(np.full(n, file_idx, dtype=np.int32)),
        "line": pa.array(numbers),
        "ts": cols["ts"],
        "queue_id": cols["queue_id"],
        "kind": pa.array(kind),
        "host": host,
        "p1_sender": pc.coalesce(f["p1_sender"], f["reject_sender"]),
        "bounce_of": f["bounce_of"],
        "size": f["size"],
        "message_id": f["message_id"],
        "subject": f["subject"],
        "for_list": f["for_list"],
        "client_ip": f["client_ip"],
        "recipient": recipient,
        "relay_host": f["relay_host"],
        "delivery_sender": f["delivery_sender"],
        # A failure's reply wins (it is what a relay analysis needs); otherwise the latest
        # reply, so a deferral followed by a delivery ends with the 250.
        "response_fail": pc.coalesce(pc.if_else(is_fail, fail, null), f["reject_reason"]),
        "response_other": pc.if_else(is_fail, null,
                                     pc.if_else(is_defer, fail, f["confirmation"])),
    })
    return table.filter(sel)


def _group_ids(records: pa.Table) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Sort records by (message id, file, line) and number the messages.

    A message ends at `Completed` or at a rejection after DATA; reject rows without a message
    id are messages of their own. Returns (sorted records, group id per row, closed per group)."""
    key = pc.fill_null(records["queue_id"], "")
    order = pc.sort_indices(pa.table({"k": key, "f": records["file"], "l": records["line"]}),
                            sort_keys=[("k", "ascending"), ("f", "ascending"), ("l", "ascending")])
    rec = records.take(order)
    k = pc.fill_null(rec["queue_id"], "").combine_chunks()
    kind = rec["kind"].to_numpy()
    n = rec.num_rows
    if n == 0:
        return rec, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    codes = pc.dictionary_encode(k).indices.to_numpy()
    ends = (kind == COMPLETED) | (kind == REJECTED)
    no_id = (pc.equal(k, "")).to_numpy(zero_copy_only=False)
    new = np.ones(n, dtype=bool)
    new[1:] = (codes[1:] != codes[:-1]) | ends[:-1] | no_id[1:]
    gid = np.cumsum(new) - 1
    closed = np.zeros(gid[-1] + 1, dtype=bool)
    closed[gid[ends | no_id]] = True
    return rec, gid, closed


def _first_valid(col: pa.Array, starts: np.ndarray, stops: np.ndarray, last: bool = False
                 ) -> pa.Array:
    """Per group [start, stop): the first (or last) non-null value; null when there is none."""
    valid = np.flatnonzero(pc.is_valid(col).to_numpy(zero_copy_only=False))
    if last:
        j = np.searchsorted(valid, stops) - 1
        ok = (j >= 0) & (valid[np.maximum(j, 0)] >= starts) if len(valid) else np.zeros(
            len(starts), dtype=bool)
    else:
        j = np.searchsorted(valid, starts)
        ok = (j < len(valid)) & (valid[np.minimum(j, max(len(valid) - 1, 0))] < stops) if len(
            valid) else np.zeros(len(starts), dtype=bool)
    idx = np.where(ok, valid[np.clip(j, 0, max(len(valid) - 1, 0))] if len(valid) else 0, 0)
    return col.take(pa.array(idx, mask=~ok))


def _distinct_lists(col: pa.Array, gid: np.ndarray, n_groups: int) -> pa.Array:
    """Per group: its distinct non-null values in order of first appearance."""
    valid = pc.is_valid(col).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(valid)
    codes = pc.dictionary_encode(col.take(pa.array(rows))).indices.to_numpy().astype(np.int64)
    key = gid[rows].astype(np.int64) * (int(codes.max()) + 1 if len(codes) else 1) + codes
    _, first = np.unique(key, return_index=True)
    first.sort()
    keep = rows[first]
    counts = np.bincount(gid[keep], minlength=n_groups)
    offsets = np.zeros(n_groups + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), col.take(pa.array(keep)))


def _aggregate(rec: pa.Table, gid: np.ndarray) -> pa.Table:
    """One row per message group (rec is sorted so that each group's rows are contiguous and
    in log order): the columns the old hash group-by gave, by numpy over group boundaries."""
    kind = rec["kind"].to_numpy()
    n = rec.num_rows
    new = np.diff(gid, prepend=-1) != 0
    starts = np.flatnonzero(new)
    stops = np.append(starts[1:], n)
    n_groups = len(starts)
    local = np.cumsum(new) - 1  # 0..n_groups-1
    col = {name: rec[name].combine_chunks() for name in rec.column_names}
    order = (rec["file"].to_numpy().astype(np.int64) << 40) + rec["line"].to_numpy()
    ts_us = pc.fill_null(col["ts"].cast(pa.int64()), np.iinfo(np.int64).max).to_numpy()
    out = {
        "gid": pa.array(gid[starts]),
        "order_min": pa.array(np.minimum.reduceat(order, starts)),
        "ts_min": pa.array(np.minimum.reduceat(ts_us, starts)).cast(TS),
    }
    for name in ("queue_id", "host", "p1_sender", "bounce_of", "size", "message_id", "subject",
                 "for_list", "client_ip", "delivery_sender"):
        out[f"{name}_first"] = _first_valid(col[name], starts, stops)
    for name in ("relay_host", "response_fail", "response_other"):
        out[f"{name}_last"] = _first_valid(col[name], starts, stops, last=True)
    out["recipient_distinct"] = _distinct_lists(col["recipient"], local, n_groups)
    flags = {"is_arrival": kind == ARRIVAL,
             "is_delivered": np.isin(kind, [DELIVERED, ALSO_DELIVERED]),
             "is_failed": kind == FAILED, "is_deferred": kind == DEFERRED,
             "is_completed": kind == COMPLETED, "is_rejected": kind == REJECTED}
    for name, flag in flags.items():
        out[f"{name}_any"] = pa.array(np.logical_or.reduceat(flag, starts))
    out["gid_count"] = pa.array(stops - starts)
    return pa.table(out)


def _status(g: pa.Table, final: bool) -> tuple[pa.Array, pa.Array]:
    """Status in Exim's words and the next hop when no H= says it."""
    failed, delivered = g["is_failed_any"], g["is_delivered_any"]
    deferred, completed = g["is_deferred_any"], g["is_completed_any"]
    rejected, arrived = g["is_rejected_any"], g["is_arrival_any"]
    status = pc.case_when(
        pc.make_struct(pc.and_(rejected, pc.invert(arrived)), failed,
                       pc.and_(deferred, pc.invert(completed)), delivered, arrived),
        "rejected", "bounced", "deferred", "delivered", "received")
    status = pc.fill_null(pc.coalesce(status, pa.scalar("completed")), "completed")
    no_host = pc.case_when(
        pc.make_struct(pc.and_(rejected, pc.invert(arrived)), delivered, failed),
        "none", "local", "none")
    relay = pc.coalesce(g["relay_host_last"], no_host)
    return status, relay


def _emit(g: pa.Table, files: list[Source], ctx: IngestContext, final: bool) -> pa.RecordBatch:
    n = g.num_rows
    order = g["order_min"].to_numpy()
    file_idx = order >> 40
    names = pa.array([files[i].name for i in range(len(files))], _STR)
    source_file = names.take(pa.array(file_idx))
    src_hosts = pa.array([files[i].host or ctx.options.host for i in range(len(files))], _STR)
    host = pc.coalesce(g["host_first"], src_hosts.take(pa.array(file_idx)))
    # P1: the arrival's sender; else F=/P= on a delivery line (sender_on_delivery /
    # return_path_on_delivery) for messages whose arrival is before the log starts.
    p1 = pc.coalesce(g["p1_sender_first"], g["delivery_sender_first"])
    p1 = pc.if_else(pc.equal(p1, ""), pa.scalar("<>"), p1)
    is_ndr = pc.or_kleene(pc.equal(p1, "<>"), pc.is_valid(g["bounce_of_first"]))
    recipients = g["recipient_distinct"]
    for_list = pc.split_pattern(pc.utf8_trim_whitespace(g["for_list_first"]), " ")
    no_rcpt = pc.equal(pc.list_value_length(recipients), 0)
    recipients = pc.if_else(pc.and_(no_rcpt, pc.is_valid(for_list)), for_list, recipients)
    status, relay = _status(g, final)
    response = pc.coalesce(g["response_fail_last"], g["response_other_last"])
    response = pc.replace_substring(response, "\\n", " ")
    incomplete = pc.invert(pc.or_(g["is_completed_any"], g["is_rejected_any"]))
    return make_messages({
        "ts": g["ts_min"],
        "source_format": pa.array([NAME] * n, _STR),
        "source_file": source_file,
        "source_line": pa.array(order & ((1 << 40) - 1)),
        "host": host,
        "message_id": g["message_id_first"],
        "queue_id": g["queue_id_first"],
        "p1_sender": p1,
        "client_ip": g["client_ip_first"],
        "relay_host": relay,
        "recipients": recipients,
        "status": status,
        "response": response,
        "is_ndr": pc.fill_null(is_ndr, False),
        "size": pc.cast(g["size_first"], pa.int64()),
        "subject": g["subject_first"],
        "logged_by_exo": pa.array(np.zeros(n, dtype=bool)),
        "incomplete": incomplete if final else pa.array(np.zeros(n, dtype=bool)),
    }, n)


def _account_parsed(rec: pa.Table, files: list[Source], ctx: IngestContext) -> None:
    if rec.num_rows == 0:
        return
    counts = np.bincount(rec["file"].to_numpy(), minlength=len(files))
    for i, c in enumerate(counts):
        if c:
            ctx.parsed(files[i].name, NAME, int(c))


def _correlate(records: pa.Table, files: list[Source], ctx: IngestContext, final: bool
               ) -> tuple[pa.Table, pa.RecordBatch | None, pa.Table]:
    """Emit closed messages (all, when final); return (open records to carry, batch, orphans).

    At the end, a group with no arrival, delivery or rejection (a lone `Completed`, a
    spam-scanner note) describes no message that this log shows: its lines are returned as
    orphans, to be skipped with a reason rather than becoming an empty row."""
    rec, gid, closed = _group_ids(records)
    if rec.num_rows == 0:
        return rec, None, rec
    row_closed = closed[gid] | final
    keep = rec.filter(pa.array(~row_closed))
    done = rec.filter(pa.array(row_closed))
    if done.num_rows == 0:
        return keep, None, done.slice(0, 0)
    g = _aggregate(done, gid[row_closed])
    substantive = pc.or_(pc.or_(g["is_arrival_any"], g["is_delivered_any"]),
                         pc.or_(pc.or_(g["is_failed_any"], g["is_deferred_any"]),
                                g["is_rejected_any"])).to_numpy(zero_copy_only=False)
    orphan_g = np.flatnonzero(~substantive)
    done_gid = gid[row_closed]
    # groups come back sorted by gid; map gid -> position
    gids = g["gid"].to_numpy()
    orphan_rows = np.isin(done_gid, gids[orphan_g])
    orphans = done.filter(pa.array(orphan_rows))
    parsed = done.filter(pa.array(~orphan_rows))
    _account_parsed(parsed, files, ctx)
    g = g.filter(pa.array(substantive))
    batch = _emit(g, files, ctx, final) if g.num_rows else None
    return keep, batch, orphans


# --- driver -------------------------------------------------------------------------------------
def _first_timestamp(src: Source) -> str:
    head = decode_head(src.head(HEAD_SCAN))
    m = re.search(_DATE, head)
    return m.group(0) if m else ""


HEAD_SCAN = 16 * 1024
# Two cores are the norm on a relay host; one block parsing ahead of correlation keeps both busy.
PARSE_THREADS = 2
PARSE_AHEAD = 2
PARSE_BYTES = 8 << 20


def _year_of(src: Source, ctx: IngestContext) -> int:
    if ctx.options.year:
        return ctx.options.year
    try:
        return datetime.fromtimestamp(os.path.getmtime(src.path)).year
    except OSError:
        return datetime.now().year


def read(sources: list[Source], ctx: IngestContext) -> Iterator[pa.RecordBatch]:
    """Read all mainlogs; files of one host are correlated together in time order."""
    by_host: dict[str | None, list[Source]] = {}
    for src in sources:
        by_host.setdefault(src.host or ctx.options.host, []).append(src)
    for _host, files in by_host.items():
        files = sorted(files, key=_first_timestamp)
        yield from _read_host(files, ctx)


def _read_host(files: list[Source], ctx: IngestContext) -> Iterator[pa.RecordBatch]:
    """Blocks are parsed on a small thread pool (pyarrow and numpy kernels release the GIL) and
    correlated in order on this thread; at most PARSE_AHEAD blocks are in flight, so memory
    stays bounded by the block size whatever the file size."""
    carry: pa.Table | None = None
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=PARSE_THREADS) as pool:
        def settle() -> Iterator[pa.RecordBatch]:
            nonlocal carry
            future, events = pending.popleft()
            records = future.result()
            events.replay(ctx)
            if carry is not None and carry.num_rows:
                records = pa.concat_tables([carry, records])
            carry, batch, orphans = _correlate(records, files, ctx, final=False)
            _skip_orphans(orphans, files, ctx)
            if batch is not None:
                yield batch

        for file_idx, src in enumerate(files):
            year = _year_of(src, ctx)
            blocks = iter_line_blocks(src, ctx.options.chunk_bytes)
            for first_line, lines in _whole_split_groups(blocks):
                events = _Deferred(ctx.options)
                events.lines_read(src.name, NAME, len(lines))
                pending.append((pool.submit(_parse_block, lines, first_line, file_idx, src,
                                            events, year), events))
                del lines
                while len(pending) >= PARSE_AHEAD:
                    yield from settle()
        while pending:
            yield from settle()
    if carry is not None and carry.num_rows:
        _carry, batch, orphans = _correlate(carry, files, ctx, final=True)
        if batch is not None:
            yield batch
        _skip_orphans(orphans, files, ctx)


def _slices(block: pa.Array) -> Iterator[tuple[int, pa.Array]]:
    """Zero-copy pieces of about PARSE_BYTES: parsing needs a few times its input in scratch
    memory, so small pieces keep the peak low whatever chunk_bytes is."""
    size = block.nbytes
    step = max(1, int(len(block) * PARSE_BYTES / size)) if size > PARSE_BYTES else len(block)
    for offset in range(0, len(block), max(step, 1)):
        yield offset, block.slice(offset, step)


# How far back from a slice end an open syslog [n/m] group is looked for. Exim writes the parts
# of one line back to back; only lines of other processes can come between them.
SPLIT_TAIL = 1024


def _whole_split_groups(blocks: Iterator[tuple[int, pa.Array]]
                        ) -> Iterator[tuple[int, pa.Array]]:
    """(first line number, lines) parse slices of one file, cut so that no syslog [n/m] group
    straddles two of them: slices are parsed apart on worker threads, and the parts can only be
    joined within one. The lines from the start of a group still open at a slice end are
    carried to the front of the next slice (at most SPLIT_TAIL lines; a copy only then)."""
    carry: pa.Array | None = None
    carry_line = 1
    for first_line, block in blocks:
        for offset, lines in _slices(block):
            start = first_line + offset
            if carry is not None:
                lines, start = pa.concat_arrays([carry, lines]), carry_line
            cut = _open_split_group(lines)
            if cut:
                yield start, lines.slice(0, cut)
            carry = lines.slice(cut) if cut < len(lines) else None
            carry_line = start + cut
    if carry is not None:
        yield carry_line, carry


def _open_split_group(lines: pa.Array) -> int:
    """Index of the first line of the earliest [n/m] group whose last part is not among the
    last SPLIT_TAIL lines (len(lines) when none is open). Groups are keyed by syslog host and
    pid as _join_split_parts keys them; a loop over the few split lines of the tail only."""
    first = max(0, len(lines) - SPLIT_TAIL)
    tail = lines.slice(first)
    marked = _mask(pc.match_substring_regex(tail, r"exim\d?(?:\[\d+\])?: \[\d+[/\\]\d+\] "))
    idx = np.flatnonzero(marked.to_numpy(zero_copy_only=False))
    if not len(idx):
        return len(lines)
    m = pc.extract_regex(tail.take(pa.array(idx)), _SYSLOG)
    ok = pc.is_valid(m).to_numpy(zero_copy_only=False)
    idx, m = idx[ok], m.filter(pa.array(ok))
    opened: dict[tuple, int] = {}
    for i, host, pid, part, parts in zip(idx.tolist(), *(
            m.field(f).to_pylist() for f in ("host", "pid", "part", "parts")), strict=True):
        if part == "1":
            opened[(host, pid)] = first + i
        if part == parts:
            opened.pop((host, pid), None)
    return min(opened.values(), default=len(lines))


class _Deferred:
    """Accounting calls of a block parsed on a worker thread, replayed in block order."""

    def __init__(self, options):
        self.options = options
        self.calls: list[tuple[str, tuple]] = []

    def lines_read(self, *args) -> None:
        self.calls.append(("lines_read", args))

    def skipped(self, *args) -> None:
        self.calls.append(("skipped", args))

    def reject_lines(self, *args) -> None:
        self.calls.append(("reject_lines", args))

    def replay(self, ctx: IngestContext) -> None:
        for name, args in self.calls:
            getattr(ctx, name)(*args)


def _skip_orphans(orphans: pa.Table, files: list[Source], ctx: IngestContext) -> None:
    if orphans.num_rows == 0:
        return
    counts = np.bincount(orphans["file"].to_numpy(), minlength=len(files))
    for i, c in enumerate(counts):
        ctx.skipped(files[i].name, NAME,
                    "message lines without arrival or delivery (lone Completed, frozen or "
                    "scanner notes of a message outside the log)", int(c))


def _parse_block(lines: pa.Array, first_line: int, file_idx: int, src: Source,
                 ctx: IngestContext, year: int) -> pa.Table:
    """Per-line records of one block: plain Exim lines by fixed offsets, the rest (syslog,
    decorated timestamps, lines without a message id) by the general path."""
    n = len(lines)
    numbers = np.arange(first_line, first_line + n, dtype=np.int64)
    plain = _plain_exim(lines, ctx.options.tz)
    fast = plain["ok"] if plain is not None else np.zeros(n, dtype=bool)
    texts, tstarts, kinds, stamps, qids, nums, hosts, raws = [], [], [], [], [], [], [], []
    if fast.any():
        sel = pa.array(fast)
        text = lines.filter(sel)
        kind = plain["kind"][fast]
        _mark_rejected_after_data(text, kind)
        texts.append(text)
        tstarts.append(plain["tstart"][fast])
        kinds.append(kind)
        stamps.append(plain["ts"].filter(sel))
        qids.append(plain["queue_id"].filter(sel))
        nums.append(numbers[fast])
        hosts.append(pa.nulls(len(text), _STR))
        raws.append(np.flatnonzero(fast))
    if not fast.all():
        idx = np.flatnonzero(~fast)
        slow = _parse_slow(lines.take(pa.array(idx)), numbers[idx], src, ctx, year)
        texts.append(slow["text"])
        tstarts.append(np.zeros(len(slow["kind"]), dtype=np.int64))
        kinds.append(slow["kind"])
        stamps.append(slow["ts"])
        qids.append(slow["queue_id"])
        nums.append(numbers[idx[slow["keep"]]])
        hosts.append(slow["host"])
        raws.append(idx[slow["keep"]])
    if not kinds:
        return _records({"ts": pa.nulls(0, TS), "queue_id": pa.nulls(0, _STR)},
                        _fields_fast(_Text(pa.array([], _STR), np.zeros(0, np.int64)),
                                     np.zeros(0, np.int8)),
                        np.zeros(0, np.int8), np.zeros(0, dtype=bool), file_idx,
                        np.zeros(0, np.int64), pa.nulls(0, _STR))
    text = _concat_pieces(texts)
    kind = np.concatenate(kinds)
    numbers = np.concatenate(nums)
    raw_idx = np.concatenate(raws)
    f = _fields_fast(_Text(text, np.concatenate(tstarts)), kind)
    # A line that claims to be an arrival but names no sender cannot be a message row.
    broken = (kind == ARRIVAL) & ~pc.is_valid(f["p1_sender"]).to_numpy(zero_copy_only=False)
    if broken.any():
        bad = np.flatnonzero(broken)
        ctx.reject_lines(NAME, src.name, numbers[bad].tolist(),
                         "arrival line '<=' without a sender address",
                         lines.take(pa.array(raw_idx[bad])))
        kind[broken] = -5
    cols = {"ts": _concat_pieces(stamps), "queue_id": _concat_pieces(qids)}
    host = _concat_pieces(hosts)
    return _records(cols, f, kind, kind >= 0, file_idx, numbers, host)


def _concat_pieces(pieces: list[pa.Array]) -> pa.Array:
    """The fast-path and general-path pieces of one column as one array. Without a copy when
    only one piece has rows: in a plain mainlog the general path keeps no line (its daemon
    lines are skipped), and copying the text of a whole slice again costs as much as a field."""
    typ = pieces[0].type if pa.types.is_timestamp(pieces[0].type) else _STR
    pieces = [p.cast(typ) for p in pieces]
    filled = [p for p in pieces if len(p)]
    return filled[0] if len(filled) == 1 else pa.concat_arrays(pieces)


def _mark_rejected_after_data(text: pa.Array, kind: np.ndarray) -> None:
    """A message line naming F= and 'rejected ' (after DATA, or by local_scan) closes it."""
    other = np.flatnonzero(kind == OTHER)
    if not len(other):
        return
    sub = text.take(pa.array(other))
    hit = _mask(pc.match_substring(sub, "rejected ")).to_numpy(zero_copy_only=False)
    hit &= _mask(pc.match_substring_regex(sub, r"(?:^|\s)F=")).to_numpy(zero_copy_only=False)
    kind[other[hit]] = REJECTED


def _parse_slow(lines: pa.Array, numbers: np.ndarray, src: Source, ctx: IngestContext,
                year: int) -> dict:
    """The general path: syslog wrappers, split parts, decorated timestamps, daemon lines.
    Accounts for the lines that take no part in correlation; returns the message lines."""
    blank = _mask(pc.equal(pc.utf8_trim_whitespace(lines), "")).to_numpy(zero_copy_only=False)
    plain, host, pid, part = _strip_syslog(lines, year)
    plain, cont, lost = _join_split_parts(plain, host, pid, part)
    cols, kind, _body = _parse_lines(plain, ctx.options.tz)
    kind[blank] = -3
    kind[cont | lost] = -4
    ctx.skipped(src.name, NAME, "blank line", int(blank.sum()))
    ctx.skipped(src.name, NAME, "syslog continuation part [n/m] (joined to part 1)",
                int(cont.sum()))
    ctx.skipped(src.name, NAME, "syslog continuation part [n/m] whose part 1 is not in the log",
                int(lost.sum()))
    bad = np.flatnonzero(kind == -2)
    if len(bad):
        ctx.reject_lines(NAME, src.name, numbers[bad].tolist(),
                         "not an Exim log line (no 'YYYY-MM-DD HH:MM:SS' timestamp)",
                         lines.take(pa.array(bad)))
    _skip_noise(cols["text"], kind == -1, src, ctx)
    keep = kind >= 0
    sel = pa.array(keep)
    return {"keep": keep, "kind": kind[keep], "text": cols["text"].filter(sel),
            "ts": cols["ts"].filter(sel), "queue_id": cols["queue_id"].filter(sel),
            "host": host.filter(sel)}


def _skip_noise(text: pa.Array, mask: np.ndarray, src: Source, ctx: IngestContext) -> None:
    idx = np.flatnonzero(mask)
    if not len(idx):
        return
    sub = text.take(pa.array(idx))
    left = np.ones(len(idx), dtype=bool)
    for phrase, reason in _NOISE:
        hit = _mask(pc.match_substring(sub, phrase)).to_numpy(zero_copy_only=False) & left
        ctx.skipped(src.name, NAME, reason, int(hit.sum()))
        left &= ~hit
    ctx.skipped(src.name, NAME, _NOISE_DEFAULT, int(left.sum()))
