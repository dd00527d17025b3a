"""Postfix syslog (`/var/log/maillog`, `/var/log/mail.log`, `journalctl -u postfix -o short-iso`).

    Nov  2 08:15:01 relay01 postfix/qmgr[1021]: 4Tq1xY2QZtz9s: from=<noreply@erp.corp.local>, size=2214, nrcpt=1 (queue active)

One row per message as relay01 handled it, correlated by queue id from:

- smtpd `client=host[ip]` (client_ip) and pickup `uid=N from=<p1>` (local submission),
- cleanup `message-id=<...>` and the `info: header From: ...` / `Sender:` / `Subject:` lines that
  `header_checks` INFO or WARN write: the only place P2 appears in a Postfix log,
- qmgr `from=<p1>, size=N, nrcpt=N` (P1, size) and `from=<p1>, status=expired, returned to sender`,
- smtp / lmtp / local / virtual / pipe / error `to=<r>, [orig_to=<o>,] relay=host[ip]:port, ...,
  dsn=x.y.z, status=sent|deferred|bounced|expired|... (reply)` (recipients, relay_host, status,
  response: Exchange Online's `550 5.7.64 TenantAttribution` lands there),
- bounce `<QUEUEID>: sender non-delivery notification: <NDR QUEUEID>`: the NDR Postfix generated is
  its own message (qmgr `from=<>`), marked is_ndr,
- `removed` ends a message. Queue ids are reused, so a `removed` (or a new `client=` / pickup for
  the same id) starts a new message. Messages never seen to end are emitted with incomplete=true.
- `NOQUEUE: reject: RCPT from ...; from=<p1> to=<r>` (and milter-reject, discard) become rows with
  status `rejected` (or `discarded`) and the reject text as response: rejected at this host.

Everything else Postfix writes (connect/disconnect, TLS handshakes, warnings, anvil and scache
statistics, postscreen...) and lines of other programs in the same file (dovecot, amavis,
opendkim) are counted as skips with a reason; only lines without a readable syslog prefix, or
Postfix records too broken to read, are rejects.

Speed: a block (16 MB of whole lines, read straight into one padded buffer) stays one byte
buffer; the syslog prefix, the queue id and the start of each record are byte offsets found with
numpy (syslog.parse_prefix_raw), lines are classified by program on the few distinct tags, record
kinds and daemon noise are told apart on the first bytes of each record (syslog.RawLines.heads:
integer compares, no string cut out). Each record kind is then read on byte offsets in its usual
shape (the _read_* functions: delivery, header_checks, client=, message-id=, qmgr from=) and only
its fields are cut out, once; a record of any other shape goes to the general Arrow reader of its
kind (splits, small regexes), which therefore runs on a few lines only and keeps the answers the
same. Correlation works on integer keys over the events of a block plus the messages still open
(state carried across blocks and files, so memory is bounded by messages in flight) and hands
on row indices: the events are never sorted or copied as a table; each message column is
gathered once, with first-value-per-message picked by numpy. Blocks are parsed, and finished
messages turned into batches, on a two-thread pool (Arrow and numpy release the GIL); reading
and the correlation step stay in order on the main thread. Rotated files are read in time
order, whatever order they are given.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..normalize import extract
from ..schema import TS
from .base import IngestContext, Source, decode_head, make_messages
from .syslog import (
    RawLines,
    element,
    file_clock,
    first_true,
    head_starts,
    iter_padded_blocks,
    last_element,
    order_by_time,
    origin_columns,
    parse_prefix_raw,
    raw_lines,
)

NAME = "postfix"
DESCRIPTION = (
    "Postfix syslog (RFC 3164, ISO 8601/RFC 5424, journald short-iso): lines tagged "
    "postfix/<daemon>[pid] (also postfix-out/smtp, postfix/submission/smtpd)"
)

# A syslog tag of Postfix: syslog_name (postfix, postfix-out, postfix-239.58.50.50, with extra
# parts like postfix/submission) then '/' and the daemon.
_DETECT = re.compile(r"\spostfix(?:-[^\s/\[:]+)?(?:/[^\s\[:]+)+\[\d+\]: ", re.M)

# Queue ids: short (hex, 5+ chars) or long (enable_long_queue_ids: base-52 time, 'z', inode).
_QUEUE_ID = r"^(?:[0-9A-F]{5,}|[0-9A-Za-z]{10,}z[0-9A-Za-z]+)$"

# Event kinds, in the words of the daemons that log them.
CLIENT, PICKUP, MSGID, HEADER, QMGR_FROM, DELIVERY, REJECT, BOUNCE, REMOVED, EXPIRED = range(1, 11)

# Skip reasons (documented in docs/formats/postfix-sendmail.md).
SKIP_OTHER_PROGRAM = "not a Postfix line (other program in the mail log: dovecot, amavis, ...)"
SKIP_CONNECTION = "smtpd/smtp connection event (connect, disconnect, lost connection, timeout)"
SKIP_TLS = "TLS handshake line (no message field; the client certificate is not logged here)"
SKIP_WARNING = "Postfix warning/fatal/panic/error message"
SKIP_STATS = "daemon statistics (anvil, scache, ...)"
SKIP_SCREEN = "postscreen/dnsblog/tlsproxy connection screening"
SKIP_DAEMON = "other Postfix daemon message without a queue id"
SKIP_QID_UNUSED = "queue-id line with no field relay-impact uses"
SKIP_HEADER_UNUSED = "header_checks line for a header other than From:/Sender:/Subject:"
SKIP_NOQUEUE_INFO = "NOQUEUE line that does not end a message (filter, warn, reject_warning, ...)"
SKIP_NOT_MESSAGE = "reject before any message (CONNECT or VRFY/EXPN probe)"
SKIP_BLANK = "blank line"

REJECT_DELIVERY = "Postfix delivery line (to=) without a readable relay=/status="
REJECT_QMGR = "Postfix qmgr from= line that cannot be read"

# A message whose last line is older than this (in log time) is emitted as incomplete: Postfix
# gives up on a message after maximal_queue_lifetime (5 days by default, postconf(5)).
OPEN_HORIZON_US = 6 * 24 * 3600 * 1_000_000

_BLOCK_BYTES = 16 * 1024 * 1024  # per parse task: fewer calls per line, still two tasks in flight

_STR = pa.string()
_NULL = pa.scalar(None, _STR)


def detect(head: bytes) -> bool:
    return _DETECT.search(decode_head(head)) is not None


# --------------------------------------------------------------------------------------------
# Stage 1 (thread pool): one block of lines -> events, skips, rejects
# --------------------------------------------------------------------------------------------


@dataclass
class Block:
    """What one block of lines turned into."""

    file_idx: int
    lines: int
    events: pa.Table  # one row per line that belongs to a message (see _EVENT_COLUMNS)
    noqueue: pa.Table  # NOQUEUE rejects: each is a message on its own (same columns)
    skipped: Counter
    rejects: tuple[np.ndarray, pa.Array, pa.Array] | None  # (line indices, reasons, raw lines)

    def number_lines(self, first_line: int) -> None:
        """Line numbers in the file, now that the lines of the blocks before are counted:
        parse_block numbers the lines of its block from 0 (blocks are parsed out of order)."""
        self.events = _shift_lines(self.events, first_line)
        self.noqueue = _shift_lines(self.noqueue, first_line)
        if self.rejects is not None:
            idx, reasons, raws = self.rejects
            self.rejects = (idx + first_line, reasons, raws)


def _shift_lines(t: pa.Table, by: int) -> pa.Table:
    i = t.schema.get_field_index("line")
    return t.set_column(i, "line", pc.add(t.column("line"), pa.scalar(by, pa.int64())))


_EVENT_COLUMNS = {
    "seq": pa.int64(),
    "file_idx": pa.int32(),
    "line": pa.int64(),
    "ts": TS,
    "host": _STR,
    "inst": _STR,
    "qid": _STR,
    "kind": pa.int8(),
    "client_ip": _STR,
    "message_id": _STR,
    "p1_qmgr": _STR,
    "p1_other": _STR,
    "p2_from": _STR,
    "p2_sender": _STR,
    "subject": _STR,
    "size": pa.int64(),
    "rcpt_delivered": _STR,
    "rcpt_other": _STR,
    "relay_host": _STR,
    "status": _STR,
    "response": _STR,
}
EVENT_SCHEMA = pa.schema(list(_EVENT_COLUMNS.items()))


def _mask(arr: pa.Array) -> np.ndarray:
    return pc.fill_null(arr, False).to_numpy(zero_copy_only=False)


def _starts(s: pa.Array, prefix: str) -> np.ndarray:
    return _mask(pc.starts_with(s, prefix))


def _sub(arr: pa.Array, idx: np.ndarray) -> pa.Array:
    return arr.take(pa.array(idx, pa.int64()))


def _reply_text(reply: pa.Array) -> pa.Array:
    """'host x[ip] said: 550 5.7.64 ... (in reply to RCPT TO command)' -> '550 5.7.64 ...'."""
    said = _mask(pc.match_substring(reply, " said: "))
    if said.any():
        inner = element(pc.split_pattern(reply.filter(pa.array(said)), " said: ", max_splits=1), 1)
        inner = pc.replace_substring_regex(inner, r" \(in reply to [^()]*\)$", "")
        reply = _put(reply, said, inner)
    return reply


def _place(n: int, parts: list[tuple[np.ndarray, pa.Array]], typ: pa.DataType) -> pa.Array:
    """Values for some rows (row indices, values) -> an array of n rows, null elsewhere."""
    if not parts:
        return pa.nulls(n, typ)
    if len(parts) == 1 and typ == _STR:
        return _spread_strings(n, parts[0][0], parts[0][1].cast(_STR))
    idx = np.concatenate([p[0] for p in parts])
    values = pa.concat_arrays([p[1].cast(typ) for p in parts]) if len(parts) > 1 else parts[0][1].cast(typ)
    where = np.full(n, -1, dtype=np.int64)
    where[idx] = np.arange(len(idx))
    missing = where < 0
    if not missing.any():
        return values.take(pa.array(where))
    return values.take(pa.array(where, mask=missing))


def _spread_strings(n: int, idx: np.ndarray, values: pa.StringArray) -> pa.StringArray:
    """Strings for the rows idx (ascending) -> n rows, null elsewhere, without copying the
    text: only new offsets and a validity bitmap around the same data buffer."""
    if values.null_count == len(values):
        return pa.nulls(n, _STR)
    data = values.buffers()[2] or pa.py_buffer(b"")
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32)[values.offset : values.offset + len(values) + 1]
    valid = np.zeros(n, dtype=bool)
    valid[idx] = _mask(pc.is_valid(values))
    lengths = np.zeros(n, dtype=np.int32)
    lengths[idx] = np.diff(offsets)
    new_offsets = np.empty(n + 1, dtype=np.int32)
    new_offsets[0] = offsets[0]
    np.cumsum(lengths, out=new_offsets[1:])
    new_offsets[1:] += offsets[0]
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(_STR, n, [bitmap, pa.py_buffer(new_offsets), data])


def _put(arr: pa.Array, mask: np.ndarray, values: pa.Array) -> pa.Array:
    """arr with the rows where mask is true replaced by values (in order)."""
    idx = np.flatnonzero(mask)
    full = np.zeros(len(arr), dtype=np.int64)
    full[idx] = np.arange(len(idx))
    return pc.if_else(pa.array(mask), values.cast(arr.type).take(pa.array(full)), arr)


def _header_fields(s: pa.Array) -> dict:
    """header_checks INFO/WARN lines (cleanup(8), header_checks(5)):
    'info: header From: App <a@contoso.com> from app01[203.0.113.50]; from=<p1> to=<r> proto=ESMTP'
    -> name, value, p1, to (to is '' when absent) and valid. Splits instead of one regex with
    a greedy '.*': the value is what lies before the last ' from CLIENT; from=<'."""
    around = pc.split_pattern(s, "; from=<", max_splits=1, reverse=True)
    before, after = element(around, 0), element(around, 1)
    three = pc.split_pattern(before, ": ", max_splits=2)
    name = pc.utf8_slice_codeunits(element(three, 1), 7)  # 'header From' -> 'From'
    value_client = pc.split_pattern(element(three, 2), " from ", max_splits=1, reverse=True)
    value, client = element(value_client, 0), element(value_client, 1)
    p1_rest = pc.split_pattern(after, ">", max_splits=1)
    p1, rest = element(p1_rest, 0), element(p1_rest, 1)
    has_to = _mask(pc.starts_with(rest, " to=<"))
    to_parts = pc.split_pattern(pc.utf8_slice_codeunits(rest, 5), ">", max_splits=1)
    to = pc.if_else(
        pa.array(has_to & _mask(pc.is_valid(element(to_parts, 1)))), element(to_parts, 0), ""
    )
    valid = _mask(pc.is_valid(rest)) & _mask(pc.invert(pc.match_substring(client, ";")))
    return {"valid": valid, "name": name, "value": value, "p1": p1, "to": to}


def _delivery_fields(s: pa.Array) -> dict:
    r"""Delivery agent lines (smtp(8), lmtp, local, virtual, pipe, error):
    'to=<r>, [orig_to=<o>, ]relay=host[ip]:25, delay=.., delays=.., dsn=x.y.z, status=sent (reply)'
    -> to, relay, status, reply ('' when none) and valid, the same as the regex
    `^to=<?([^>,]*)>?, (?:orig_to=<?[^>,]*>?, )?relay=([^,]*), (?:.*?, )?status=([A-Za-z-]+)
    (?: \((.*?)\)?)?$`, with splits on ', ' (cheaper than the regex's lazy '.*?')."""
    head_tail = pc.split_pattern(s, ", status=", max_splits=1)
    head, tail = element(head_tail, 0), element(head_tail, 1)
    fields = pc.split_pattern(head, ", ", max_splits=3)
    f0, f1, f2 = element(fields, 0), element(fields, 1), element(fields, 2)
    to = pc.utf8_slice_codeunits(f0, 3)
    to = pc.if_else(pc.starts_with(to, "<"), pc.utf8_slice_codeunits(to, 1), to)
    to = pc.if_else(pc.ends_with(to, ">"), pc.utf8_slice_codeunits(to, 0, -1), to)
    orig = _starts(f1, "orig_to=")
    relay_field = pc.if_else(pa.array(orig), f2, f1)
    relay = pc.utf8_slice_codeunits(relay_field, 6)
    st_reply = pc.split_pattern(tail, " ", max_splits=1)
    status, after = element(st_reply, 0), element(st_reply, 1)
    reply = pc.utf8_slice_codeunits(after, 1)
    reply = pc.if_else(pc.ends_with(reply, ")"), pc.utf8_slice_codeunits(reply, 0, -1), reply)
    valid = (
        _starts(f0, "to=")
        & ~_mask(pc.match_substring_regex(to, "[>,]"))
        & ~(orig & _mask(pc.match_substring(f1, ",")))
        & _starts(relay_field, "relay=")
        & ~_mask(pc.match_substring(relay, ","))
        & _mask(pc.match_substring_regex(status, "^[A-Za-z-]+$"))
        & (~_mask(pc.is_valid(after)) | _starts(after, "("))
    )
    return {"valid": valid, "to": to, "relay": relay, "status": status, "reply": pc.fill_null(reply, "")}


def _host_of_relay(relay: pa.Array) -> pa.Array:
    """relay=host[ip]:port -> host; 'none', 'local', 'dovecot' stay as they are."""
    return element(pc.split_pattern(relay, "[", max_splits=1), 0)


# ---- fast paths on byte offsets ------------------------------------------------------------
#
# The record readers below (_read_*) take the byte range [a, e) of each record of one kind and
# read the usual shape of that record with numpy on byte offsets (RawLines.next_byte, heads):
# only the fields are cut out, once. A record of any other shape (a field missing, a stray
# ',' or '>', an unusual length) goes to the general Arrow reader of that kind, so both give
# the same answers; the general readers then run on a few rows only.


def _literal_at(raw: RawLines, pos: np.ndarray, end: np.ndarray, text: str) -> np.ndarray:
    """Whether the bytes at pos (before end) start with text (at most 16 bytes, no NUL): one
    or two 8-byte words read at pos and compared, cheaper than RawLines.heads' 32 bytes."""
    want = text.encode()
    words = np.ndarray((len(raw.buf) - 7,), dtype=np.uint64, buffer=raw.buf, strides=(1,))
    inside = (pos >= 0) & (end - pos >= len(want))  # then pos + 16 is inside the padded buffer
    at = np.where(inside, pos, 0)
    found = inside
    for k in range(0, len(want), 8):
        part = want[k : k + 8]
        mask = np.uint64((1 << (8 * len(part))) - 1)
        found = found & ((words[at + k] & mask) == np.uint64(int.from_bytes(part, "little")))
    return found


def _byte_at(raw: RawLines, pos: np.ndarray) -> np.ndarray:
    """The byte at each pos (positions past the block read its last padding zero)."""
    return raw.buf[np.clip(pos, 0, len(raw.buf) - 1)]


def _found(at: np.ndarray, end: np.ndarray) -> np.ndarray:
    """next_byte found something before the end of the record."""
    return at < end


def _combine(n: int, fast: np.ndarray, fast_vals: dict, slow_vals: dict) -> dict:
    """Per-field results of the fast rows and of the general reader's rows -> one per row."""
    fi, si = np.flatnonzero(fast), np.flatnonzero(~fast)
    out = {}
    for key, fv in fast_vals.items():
        if isinstance(fv, np.ndarray):
            merged = np.empty(n, dtype=fv.dtype)
            merged[fi] = fv
            if len(si):
                merged[si] = slow_vals[key]
            out[key] = merged
        elif len(si):
            out[key] = _place(n, [(fi, fv), (si, slow_vals[key])], fv.type)
        else:
            out[key] = fv
    return out


# Byte classes for _queue_id_words: 1 = short queue id character (upper-case hex digit), 2 =
# long queue id character (letter or digit).
_ID_CLASS = np.zeros(256, dtype=np.uint8)
_ID_CLASS[[ord(c) for c in "0123456789ABCDEF"]] |= 1
_ID_CLASS[[ord(c) for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"]] |= 2
_ID_WORD = 16  # bytes tested with numpy; longer words go to the regex
# For a word of length L: both class bits set on the bytes past L (they do not count).
_ID_PAST = ((np.arange(_ID_WORD)[None, :] >= np.arange(_ID_WORD + 1)[:, None]) * np.uint8(3)).view(np.uint64)
_SEVEN_BYTES = np.uint64(0x00FFFFFFFFFFFFFF)  # the first 7 bytes of a little-endian word
_NOQUEUE = np.frombuffer(b"NOQUEUE\0", dtype=np.uint64)[0]


def _queue_id_words(raw: RawLines, a: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whether each word [a, e) is a queue id (_QUEUE_ID), and whether it is 'NOQUEUE'. Words of
    up to 16 bytes are tested on their bytes (a class lookup, then one AND over each 8-byte
    half): short ids are 5+ upper-case hex digits, long ids 10+ letters or digits, a 'z',
    then 1+ more. Longer words go to the regex."""
    size = e - a
    fits = size <= _ID_WORD
    cut = np.minimum(size, _ID_WORD)
    records = np.ndarray((len(raw.buf) - _ID_WORD + 1,), dtype=f"V{_ID_WORD}", buffer=raw.buf, strides=(1,))
    word = records[np.minimum(a, len(raw.buf) - _ID_WORD)].view(np.uint8).reshape(len(a), _ID_WORD)
    cls = np.take(_ID_CLASS, word).view(np.uint64) | np.take(_ID_PAST, cut, axis=0)
    both = cls[:, 0] & cls[:, 1]
    short_id = (both & 0x0101010101010101) == 0x0101010101010101
    alnum = (both & 0x0202020202020202) == 0x0202020202020202
    is_qid = fits & (size >= 5) & short_id
    maybe_long = np.flatnonzero(fits & alnum & ~short_id & (size >= 12))
    if len(maybe_long):
        col = np.arange(_ID_WORD)[None, :]
        z_at = (word[maybe_long] == 122) & (col >= 10) & (col <= size[maybe_long, None] - 2)
        is_qid[maybe_long] = z_at.any(axis=1)
    longer = np.flatnonzero(~fits)
    if len(longer):
        is_qid[longer] = _mask(pc.match_substring_regex(raw.slices(a[longer], e[longer]), _QUEUE_ID))
    is_noq = (size == 7) & ((word.view(np.uint64)[:, 0] & _SEVEN_BYTES) == _NOQUEUE)
    return is_qid, is_noq


_HEADER_LINE = r"^[a-z_-]+: header [A-Za-z0-9-]+: "  # cleanup(8) header_checks INFO/WARN/...
_NAME_CHAR = np.zeros(256, dtype=bool)  # [A-Za-z0-9-]: a header name
_NAME_CHAR[[ord(c) for c in "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"]] = True


def _header_name_ends(raw: RawLines, a: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Whether [A-Za-z0-9-]+': ' starts at each a (the rest of _HEADER_LINE after 'info: header
    '): on a 32-byte window; a longer name goes to the regex. The byte at a line's end is
    '\n' or '\r', never a name character, so the window never reads on into the next line."""
    window = raw.heads(a, a + 32).view(np.uint8).reshape(len(a), 32)
    other = ~_NAME_CHAR[window]
    stop = first_true(other)  # the first byte after the name
    rows = np.arange(len(a))
    inside = np.minimum(stop, 30)
    out = (
        (stop >= 1) & (window[rows, inside] == 58) & (window[rows, inside + 1] == 32)
        & (a + inside + 1 < e)
    )
    longer = np.flatnonzero(stop >= 31)  # ': ' not (wholly) inside the window
    if len(longer):
        text = raw.slices(a[longer] - 13, e[longer])
        out[longer] = _mask(pc.match_substring_regex(text, _HEADER_LINE))
    return out


_CLIENT = r"^client=[^\[,]*\[(?P<ip>[^\]]*)\]"  # smtpd(8): client=host[ip]


def _read_client(raw: RawLines, a: np.ndarray, e: np.ndarray) -> pa.Array:
    """client= records -> the client IP (_CLIENT; null when it does not match): on byte
    offsets, the regex for records of another shape."""
    bracket = raw.next_byte(a + 7, 91, e)
    close = raw.next_byte(bracket + 1, 93, e)
    fast = (
        _literal_at(raw, a, e, "client=") & _found(bracket, e)
        & ~_found(raw.next_byte(a + 7, 44, bracket), bracket) & _found(close, e)
    )
    fi, si = np.flatnonzero(fast), np.flatnonzero(~fast)
    ip = raw.slices(bracket[fi] + 1, close[fi])
    if not len(si):
        return ip
    return _place(len(a), [(fi, ip), (si, extract(raw.slices(a[si], e[si]), _CLIENT))], _STR)


def _printable(byte: np.ndarray) -> np.ndarray:
    """Printable ASCII other than space: never whitespace, never part of a UTF-8 sequence."""
    return (byte > 32) & (byte < 127)


def _read_message_id(raw: RawLines, a: np.ndarray, e: np.ndarray) -> pa.Array:
    """message-id=<...> records -> the value after 'message-id=', whitespace trimmed. A value
    that starts and ends with a printable ASCII byte needs no trimming; others are trimmed
    with utf8_trim_whitespace (Unicode spaces too)."""
    start = np.minimum(a + 11, e)  # after 'message-id='
    fast = (e > start) & _printable(_byte_at(raw, start)) & _printable(_byte_at(raw, e - 1))
    fi, si = np.flatnonzero(fast), np.flatnonzero(~fast)
    mid = raw.slices(start[fi], e[fi])
    if not len(si):
        return mid
    trimmed = pc.utf8_trim_whitespace(raw.slices(start[si], e[si]))
    return _place(len(a), [(fi, mid), (si, trimmed)], _STR)


_QMGR = r"^from=<(?P<f>[^>]*)>, (?:size=(?P<size>\d+)|status=(?P<st>[a-z]+))"  # qmgr(8)
_POW10 = 10 ** np.arange(18, dtype=np.int64)  # 10**k, for the digits of a size


def _qmgr_fields(s: pa.Array) -> dict:
    """qmgr from= records (_QMGR) -> valid, from (null unless valid), size (int64, null
    unless logged), expired ('status=expired': returned to sender)."""
    g = pc.extract_regex(s, _QMGR)
    valid = _mask(pc.is_valid(g))
    size = pc.if_else(pa.array(valid), g.field("size"), _NULL)
    return {
        "valid": valid,
        "from": pc.if_else(pa.array(valid), g.field("f"), _NULL),
        "size": pc.if_else(pc.equal(size, ""), _NULL, size).cast(pa.int64()),
        "expired": valid & _mask(pc.equal(g.field("st"), "expired")),
    }


def _read_qmgr(raw: RawLines, a: np.ndarray, e: np.ndarray) -> dict:
    """_qmgr_fields for 'from=<p1>, size=N, ...' on byte offsets (N read with numpy, up to
    18 digits); other shapes (status=, a longer number, no match) with the regex."""
    gt = raw.next_byte(a + 6, 62, e)
    digits_at = gt + 8
    window = raw.heads(digits_at, e).view(np.uint8).reshape(len(a), 32)[:, :18]
    not_digit = (window < 48) | (window > 57)
    count = first_true(not_digit)  # digits before the first other byte (18: maybe more)
    fast = (
        _literal_at(raw, a, e, "from=<") & _found(gt, e) & _literal_at(raw, gt + 1, e, ", size=")
        & (count >= 1) & (count < 18)
    )
    fi, si = np.flatnonzero(fast), np.flatnonzero(~fast)
    # The number: digit j of a count-digit number is worth 10**(count - 1 - j).
    exponent = count[fi, None] - 1 - np.arange(18)[None, :]
    place = np.where(exponent >= 0, np.take(_POW10, np.maximum(exponent, 0)), 0)
    size = ((window[fi].astype(np.int64) - 48) * place).sum(axis=1)
    fast_vals = {
        "valid": np.ones(len(fi), dtype=bool),
        "from": raw.slices(a[fi] + 6, gt[fi]),
        "size": pa.array(size, pa.int64()),
        "expired": np.zeros(len(fi), dtype=bool),
    }
    slow_vals = _qmgr_fields(raw.slices(a[si], e[si])) if len(si) else {}
    return _combine(len(a), fast, fast_vals, slow_vals)


def _read_delivery(raw: RawLines, a: np.ndarray, e: np.ndarray) -> dict:
    """Delivery records -> to, relay (the host: relay=host[ip]:port -> host), status, reply
    ('' when none), valid: _delivery_fields and _host_of_relay, the usual shape
    'to=<r>, relay=R, ..., status=S (reply)' read on byte offsets."""
    gt = raw.next_byte(a + 4, 62, e)  # '>'
    rs = gt + 9  # after '>, relay='
    rc = raw.next_byte(rs, 44, e)  # the ', ' that ends relay=
    fast = (
        _literal_at(raw, a, e, "to=<") & _found(gt, e) & (raw.next_byte(a, 44, e) == gt + 1)
        & _literal_at(raw, gt + 1, e, ", relay=") & _found(rc, e) & (_byte_at(raw, rc + 1) == 32)
    )
    # ', status=' is the first ', ' whose field is status=: try the commas from the relay's on.
    comma = np.where(fast, rc, e)
    found = np.zeros(len(a), dtype=bool)
    for _ in range(8):  # to, relay, delay, delays, dsn, and a few optional fields
        todo = np.flatnonzero(~found & (comma < e))
        if not len(todo):
            break
        hit = _literal_at(raw, comma[todo], e[todo], ", status=")
        found[todo[hit]] = True
        miss = todo[~hit]
        comma[miss] = raw.next_byte(comma[miss] + 1, 44, e[miss])
    fast &= found
    st = comma + 9
    sp = raw.next_byte(st, 32, e)
    has_reply = _found(sp, e)
    st_end = np.where(has_reply, sp, e)
    # status matches ^[A-Za-z-]+$ (at most 32 bytes here).
    st_len = st_end - st
    word = raw.heads(st, st_end).view(np.uint8).reshape(len(a), 32)
    letter = ((word | 32) >= 97) & ((word | 32) <= 122) | (word == 45)
    inside = np.arange(word.shape[1])[None, :] < st_len[:, None]
    fast &= (st_len >= 1) & (st_len <= word.shape[1]) & (letter | ~inside).all(axis=1)
    # ' (reply)': the reply drops its '(' and one closing ')'.
    fast &= ~has_reply | ((sp + 1 < e) & (_byte_at(raw, sp + 1) == 40))
    r0 = np.where(has_reply, sp + 2, e)
    r1 = e - ((e > r0) & (_byte_at(raw, e - 1) == 41))
    bracket = raw.next_byte(rs, 91, rc)
    relay_end = np.where(bracket < rc, bracket, rc)

    fi = np.flatnonzero(fast)
    fast_vals = {
        "valid": np.ones(len(fi), dtype=bool),
        "to": raw.slices(a[fi] + 4, gt[fi]),
        "relay": raw.slices(rs[fi], relay_end[fi]),
        "status": raw.slices(st[fi], st_end[fi]),
        "reply": raw.slices(r0[fi], r1[fi]),
    }
    slow_vals = {}
    si = np.flatnonzero(~fast)
    if len(si):
        d = _delivery_fields(raw.slices(a[si], e[si]))
        slow_vals = {**d, "relay": _host_of_relay(d["relay"])}
    return _combine(len(a), fast, fast_vals, slow_vals)


def _last_space_before(raw: RawLines, end: np.ndarray) -> np.ndarray:
    """The last space in the 64 bytes before each end, -1 when there is none."""
    back = np.maximum(end - 64, 0)
    window = np.concatenate([raw.heads(back, end), raw.heads(back + 32, end)], axis=1)
    last = first_true(window.view(np.uint8).reshape(len(end), 64) == 32, last=True)
    return np.where(last < 64, back + last, -1)


def _read_header(raw: RawLines, a: np.ndarray, e: np.ndarray) -> dict:
    """header_checks records -> name, value, p1, to, valid (_header_fields), the usual shape
    'info: header NAME: VALUE from CLIENT; from=<p1> to=<r> ...' read on byte offsets. The
    record is a HEADER one, so NAME is [A-Za-z0-9-]+ and ends at the first ':'."""
    colon = raw.next_byte(a + 13, 58, e)
    # The value runs to the last '; from=<' of the record: here the record's only ';' (a ';'
    # in the value or client goes to the general reader).
    semi = raw.next_byte(colon + 2, 59, e)
    fast = (
        _literal_at(raw, a, e, "info: header ") & _found(colon, e) & (_byte_at(raw, colon + 1) == 32)
        & _literal_at(raw, semi, e, "; from=<") & ~_found(raw.next_byte(semi + 1, 59, e), e)
    )
    # ' from CLIENT' before it: the client has no space, so ' from ' ends at the last space.
    space = _last_space_before(raw, semi)
    fast &= (space >= colon + 7) & _literal_at(raw, space - 5, e, " from ")
    gt = raw.next_byte(semi + 8, 62, e)
    fast &= _found(gt, e)
    has_to = _literal_at(raw, gt + 1, e, " to=<")
    to_end = raw.next_byte(gt + 6, 62, e)
    to_ok = has_to & _found(to_end, e)

    fi = np.flatnonzero(fast)
    fast_vals = {
        "valid": np.ones(len(fi), dtype=bool),
        "name": raw.slices(a[fi] + 13, colon[fi]),
        "value": raw.slices(colon[fi] + 2, space[fi] - 5),
        "p1": raw.slices(semi[fi] + 8, gt[fi]),
        # No to=<...>: an empty value at the record start (keeps the ranges in line order).
        "to": raw.slices(np.where(to_ok, gt + 6, a)[fi], np.where(to_ok, to_end, a)[fi]),
    }
    si = np.flatnonzero(~fast)
    slow_vals = _header_fields(raw.slices(a[si], e[si])) if len(si) else {}
    return _combine(len(a), fast, fast_vals, slow_vals)


def parse_block(
    block: np.ndarray, file_idx: int, seq0: int, clock, year, tz
) -> Block:
    """Classify and read one block of whole lines (runs on the thread pool).

    Fields are found as byte offsets into the block (see syslog.RawLines); only the parts of
    the lines a record kind needs are turned into Arrow strings."""
    raw = raw_lines(block)
    n = len(raw)
    line_no = np.arange(n, dtype=np.int64)  # in the block; Block.number_lines makes them the file's
    skipped: Counter = Counter()
    p = parse_prefix_raw(raw, year=year, clock=clock, tz=tz)
    ok = p.ok
    rejects_idx: list[np.ndarray] = []
    rejects_reason: list[pa.Array] = []

    blank = np.zeros(n, dtype=bool)
    not_ok = np.flatnonzero(~ok)
    if len(not_ok):  # a blank line never has a syslog prefix
        text = raw.lines(not_ok)
        blank[not_ok] = _mask(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0))
    skipped[SKIP_BLANK] += int(blank.sum())
    bad = ~ok & ~blank
    if bad.any():
        idx = np.flatnonzero(bad)
        rejects_idx.append(idx)
        rejects_reason.append(_sub(p.error, idx))

    # Classify by program on the (few) distinct tags, not on every line.
    programs = p.programs
    tags = programs.dictionary
    tag_idx = pc.fill_null(programs.indices, 0).to_numpy(zero_copy_only=False)
    if len(tags):
        # A tag like 'postfix-script' is Postfix's shell script, not a daemon: no '/' in it.
        tag_pf = _starts(tags, "postfix") & _mask(pc.match_substring(tags, "/"))
        is_pf = ok & tag_pf[tag_idx]
    else:
        is_pf = np.zeros(n, dtype=bool)
    skipped[SKIP_OTHER_PROGRAM] += int((ok & ~is_pf).sum())

    pf = np.flatnonzero(is_pf)
    pf_tag = tag_idx[pf]  # the tag of each Postfix line (a row of tags)
    tag_parts = pc.split_pattern(tags, "/")
    inst_of_tag = element(tag_parts, 0)  # syslog_name: postfix, postfix-out, ...
    daemon_of_tag = last_element(tag_parts)

    def daemon_is(*names: str) -> np.ndarray:
        # Per Postfix line, tested once per distinct tag.
        return _mask(pc.is_in(daemon_of_tag, pa.array(names, _STR)))[pf_tag]

    # 'QUEUEID: rest' / 'NOQUEUE: rest': the first word ends with ':' (the first ': ').
    m0 = p.msg_start[pf]
    e = raw.ends[pf]
    # The first space at or after the message start (a space of a later line fails sp < e).
    sp = raw.next_byte(m0, 32)
    has_colon = (sp < e) & (sp > m0)
    has_colon &= raw.buf[np.maximum(sp - 1, 0)] == 58
    cand = np.flatnonzero(has_colon)
    is_qid = np.zeros(len(pf), dtype=bool)
    is_noq = np.zeros(len(pf), dtype=bool)
    is_qid[cand], is_noq[cand] = _queue_id_words(raw, m0[cand], sp[cand] - 1)

    # ---- lines without a queue id: daemon noise, counted by kind ---------------------------
    other = ~is_qid & ~is_noq
    if other.any():
        o = np.flatnonzero(other)
        om0, oe = m0[o], e[o]
        heads = raw.heads(om0, oe)

        def starts(*prefixes: str) -> np.ndarray:
            # On the first bytes: most of these lines are skipped, their text is never cut out.
            found = np.zeros(len(o), dtype=bool)
            for prefix in prefixes:
                found |= head_starts(heads, prefix)
            return found

        conn = starts(
            "connect ", "disconnect from", "lost connection", "timeout after", "too many errors",
            "improper command pipelining", "SSL_accept error", "SSL_connect error",
        )
        # 'Trusted TLS connection established to ...' / 'Anonymous TLS connection established
        # from ...' (smtp(8), smtpd(8)): right after the first word; anywhere else in the line
        # is checked on the text of the few lines left.
        tls = head_starts(raw.heads(sp[o] + 1, oe), "TLS connection established") & ~conn
        left = np.flatnonzero(~conn & ~tls)
        if len(left):
            text = raw.slices(om0[left], oe[left])
            tls[left] = _mask(pc.match_substring(text, "TLS connection established"))
        warn = starts("warning:", "fatal:", "panic:", "error:") & ~conn & ~tls
        stats = (starts("statistics:") | daemon_is("anvil", "scache")[o]) & ~(conn | tls | warn)
        screen = daemon_is("postscreen", "dnsblog", "tlsproxy")[o] & ~(conn | tls | warn | stats)
        rest_o = ~(conn | tls | warn | stats | screen)
        for mask, why in (
            (conn, SKIP_CONNECTION),
            (tls, SKIP_TLS),
            (warn, SKIP_WARNING),
            (stats, SKIP_STATS),
            (screen, SKIP_SCREEN),
            (rest_o, SKIP_DAEMON),
        ):
            skipped[why] += int(mask.sum())

    # ---- queue-id lines --------------------------------------------------------------------
    q = np.flatnonzero(is_qid)
    # Kinds from the first bytes of each record (RawLines.heads); the text of a record is cut
    # out once, for the rows of its kind only (see subset below).
    qs, qe = sp[q] + 1, e[q]
    qheads = raw.heads(qs, qe)

    def on_text(mask: np.ndarray, test) -> np.ndarray:
        # test(text of the queue-id rows in mask) -> mask over all of them (false elsewhere).
        out = np.zeros(len(q), dtype=bool)
        rows = np.flatnonzero(mask)
        if len(rows):
            out[rows] = test(raw.slices(qs[rows], qe[rows]))
        return out

    def starts(*prefixes: str, heads: np.ndarray = qheads) -> np.ndarray:
        found = np.zeros(len(heads), dtype=bool)
        for prefix in prefixes:
            found |= head_starts(heads, prefix)
        return found

    kind = np.zeros(len(q), dtype=np.int8)
    kind[starts("client=")] = CLIENT
    # Substring searches and regexes run only on the rows they can match.
    kind[on_text(starts("uid="), lambda r: _mask(pc.match_substring(r, " from=<")))] = PICKUP
    kind[starts("message-id=")] = MSGID
    kind[starts("from=<") & daemon_is("qmgr")[q]] = QMGR_FROM
    kind[starts("to=")] = DELIVERY
    kind[starts("removed") & (qe - qs == len("removed"))] = REMOVED
    bounce = daemon_is("bounce")[q]
    kind[on_text(bounce, lambda r: _mask(pc.match_substring(r, " notification: ")))] = BOUNCE
    # header_checks lines: 'info: header NAME: ' on the bytes, the regex on the rest only.
    info = (kind == 0) & starts("info: header ")
    header = np.zeros(len(q), dtype=bool)
    header[info] = _header_name_ends(raw, qs[info] + 13, qe[info])
    header |= on_text((kind == 0) & ~info, lambda r: _mask(pc.match_substring_regex(r, _HEADER_LINE)))
    kind[header] = HEADER
    kind[(kind == 0) & starts("reject: ", "milter-reject: ", "discard: ", "proxy-reject: ")] = REJECT

    # ---- NOQUEUE lines ---------------------------------------------------------------------
    nq = np.flatnonzero(is_noq)
    nrest = raw.slices(sp[nq] + 1, e[nq])
    n_rej = (
        _starts(nrest, "reject: ")
        | _starts(nrest, "milter-reject: ")
        | _starts(nrest, "discard: ")
        | _starts(nrest, "proxy-reject: ")
    )
    n_probe = n_rej & (
        _mask(pc.match_substring_regex(nrest, r"^[a-z-]+: (CONNECT|VRFY|EXPN) from "))
    )
    skipped[SKIP_NOT_MESSAGE] += int(n_probe.sum())
    n_keep = n_rej & ~n_probe
    skipped[SKIP_NOQUEUE_INFO] += int((~n_rej).sum())

    # Rows of all event lines (queue-id and NOQUEUE), then fields per kind.
    ev_pos = np.concatenate([q, nq[n_keep]])  # positions within pf
    ev_kind = np.concatenate([kind, np.full(int(n_keep.sum()), REJECT, dtype=np.int8)])
    ev_start = np.concatenate([qs, sp[nq[n_keep]] + 1])  # the record after 'QUEUEID: '
    ev_end = np.concatenate([qe, e[nq[n_keep]]])
    ev_noq = np.concatenate([np.zeros(len(q), bool), np.ones(int(n_keep.sum()), bool)])
    ne = len(ev_pos)
    filled: dict[str, list[tuple[np.ndarray, pa.Array]]] = {}

    def fill(name: str, k_mask: np.ndarray, values: pa.Array) -> None:
        # Collected here, put in place with one take per column at the end (kinds are disjoint).
        filled.setdefault(name, []).append((np.flatnonzero(k_mask), values))

    def subset(k: int) -> tuple[np.ndarray, pa.Array]:
        m = ev_kind == k
        rows = np.flatnonzero(m)
        return m, raw.slices(ev_start[rows], ev_end[rows])

    unused = np.zeros(ne, dtype=bool)
    broken: list[tuple[np.ndarray, str]] = []

    m = ev_kind == CLIENT
    if m.any():
        rows = np.flatnonzero(m)
        fill("client_ip", m, _read_client(raw, ev_start[rows], ev_end[rows]))
    m, s = subset(PICKUP)
    if m.any():
        fill("p1_other", m, extract(s, r" from=<(?P<f>[^>]*)>"))
    m = ev_kind == MSGID
    if m.any():
        rows = np.flatnonzero(m)
        fill("message_id", m, _read_message_id(raw, ev_start[rows], ev_end[rows]))
    m = ev_kind == HEADER
    if m.any():
        rows = np.flatnonzero(m)
        h = _read_header(raw, ev_start[rows], ev_end[rows])
        valid = h["valid"]
        name = pc.utf8_lower(h["name"])
        value = h["value"]
        is_from = valid & _mask(pc.equal(name, "from"))
        is_sender = valid & _mask(pc.equal(name, "sender"))
        is_subject = valid & _mask(pc.equal(name, "subject"))
        used = is_from | is_sender | is_subject
        # 'root@host (Cron Daemon)': drop the RFC 5322 comment so the address is what remains.
        value = pc.replace_substring_regex(value, r"\s*\([^()]*\)\s*$", "")
        fill("p2_from", m, pc.if_else(pa.array(is_from), value, _NULL))
        fill("p2_sender", m, pc.if_else(pa.array(is_sender), value, _NULL))
        fill("subject", m, pc.if_else(pa.array(is_subject), value, _NULL))
        fill("p1_other", m, pc.if_else(pa.array(used), h["p1"], _NULL))
        fill("rcpt_other", m, pc.if_else(pa.array(used), h["to"], _NULL))
        sub_unused = np.zeros(ne, dtype=bool)
        sub_unused[np.flatnonzero(m)[~used]] = True
        unused |= sub_unused
    m = ev_kind == QMGR_FROM
    if m.any():
        rows = np.flatnonzero(m)
        g = _read_qmgr(raw, ev_start[rows], ev_end[rows])
        valid = g["valid"]
        fill("p1_qmgr", m, g["from"])
        fill("size", m, g["size"])
        expired = g["expired"]
        ev_kind[np.flatnonzero(m)[expired]] = EXPIRED
        fill("status", m, pc.if_else(pa.array(expired), pa.scalar("expired"), _NULL))
        broken.append((np.flatnonzero(m)[~valid], REJECT_QMGR))
    m = ev_kind == DELIVERY
    if m.any():
        rows = np.flatnonzero(m)
        d = _read_delivery(raw, ev_start[rows], ev_end[rows])
        valid = d["valid"]
        vm = pa.array(valid)
        fill("rcpt_delivered", m, pc.if_else(vm, d["to"], _NULL))
        relay = d["relay"]
        # relay=none (no connection made): the host it tried is named in the reply, e.g.
        # 'connect to contoso-com.mail.protection.outlook.com[198.51.100.201]:25: Connection
        # timed out'. That host is the next hop the message was meant for.
        none = _mask(pc.equal(relay, "none"))
        if none.any():
            tried = extract(d["reply"].filter(pa.array(none)), r"(?:connect to|host|with) (?P<h>[A-Za-z0-9.-]+)\[")
            relay = _put(relay, none, pc.coalesce(tried, relay.filter(pa.array(none))))
        fill("relay_host", m, pc.if_else(vm, relay, _NULL))
        fill("status", m, pc.if_else(vm, d["status"], _NULL))
        reply = pc.if_else(vm, d["reply"], _NULL)
        fill("response", m, _reply_text(pc.if_else(pc.equal(reply, ""), _NULL, reply)))
        broken.append((np.flatnonzero(m)[~valid], REJECT_DELIVERY))
    m, s = subset(REJECT)
    if m.any():
        action = element(pc.split_pattern(s, ": ", max_splits=1), 0)
        status = pc.if_else(pc.equal(action, "discard"), pa.scalar("discarded"), pa.scalar("rejected"))
        fill("status", m, status)
        fill("relay_host", m, pc.if_else(pc.is_valid(action), pa.scalar("none"), _NULL))
        fill("client_ip", m, extract(s, r"^[a-z-]+: [A-Z-]+ from [^\[\s]*\[(?P<ip>[^\]]*)\]"))
        fill("response", m, extract(s, r"\]:(?:\d+:)? (?P<t>.*?); (?:from|to|proto)="))
        fill("p1_other", m, extract(s, r"; from=<(?P<f>[^>]*)>"))
        fill("rcpt_other", m, extract(s, r"[;,]? to=<(?P<t>[^>]*)>"))
    m, s = subset(BOUNCE)
    if m.any():
        # '<ORIGINAL>: sender non-delivery notification: <NDR>' (Postfix bounce_notify_service):
        # the event belongs to the NDR, whose own lines carry its queue id.
        ndr_qid = last_element(pc.split_pattern(s, ": "))
        qid_override = (np.flatnonzero(m), ndr_qid)
    else:
        qid_override = None

    unused |= ev_kind == 0
    skipped[SKIP_QID_UNUSED] += int((unused & (ev_kind == 0)).sum())
    skipped[SKIP_HEADER_UNUSED] += int((unused & (ev_kind == HEADER)).sum())
    drop = unused.copy()
    for idx, why in broken:
        if len(idx):
            drop[idx] = True
            rejects_idx.append(pf[ev_pos[idx]])
            rejects_reason.append(pa.array([why] * len(idx), _STR))

    keep = ~drop
    pos = pf[ev_pos]  # line index within the block
    qid_col = pa.concat_arrays(
        [raw.slices(m0[q], sp[q] - 1), pa.nulls(int(n_keep.sum()), _STR)]
    )
    if qid_override is not None:
        bq, ndr_qid = qid_override
        full = np.full(ne, -1, dtype=np.int64)
        full[bq] = np.arange(len(bq))
        qid_col = pc.if_else(
            pa.array(full >= 0), ndr_qid.take(pa.array(np.where(full >= 0, full, 0))), qid_col
        )
    cols = {name: _place(ne, filled.get(name, []), typ) for name, typ in _EVENT_COLUMNS.items()}
    pos_take = pa.array(pos)
    cols.update(
        seq=pa.array(seq0 + raw.starts[pos], pa.int64()),  # where the line starts in the input
        file_idx=pa.array(np.full(ne, file_idx, dtype=np.int32)),
        line=pa.array(line_no[pos]),
        ts=p.ts.take(pos_take),
        host=p.host(pos),
        inst=inst_of_tag.take(pa.array(pf_tag[ev_pos])),
        qid=qid_col,
        kind=pa.array(ev_kind, pa.int8()),
    )
    table = pa.table(cols, schema=EVENT_SCHEMA)
    if not keep.all():
        table = table.filter(pa.array(keep))
    noq = ev_noq[keep]
    if noq.any():
        events, noqueue = table.filter(pa.array(~noq)), table.filter(pa.array(noq))
    else:  # the usual block: no NOQUEUE rejects, no copy
        events, noqueue = table, EVENT_SCHEMA.empty_table()

    rejects = None
    if rejects_idx:
        idx = np.concatenate(rejects_idx)
        reasons = pa.concat_arrays([r.cast(_STR) for r in rejects_reason])
        rejects = (line_no[idx], reasons, raw.lines(idx))
    return Block(file_idx, n, events, noqueue, skipped, rejects)


# --------------------------------------------------------------------------------------------
# Stage 2 (in order): correlate events into messages
# --------------------------------------------------------------------------------------------


def _target_regex(globs: tuple[str, ...]) -> str:
    """relay.targets globs (`*.mail.protection.outlook.com`) as one RE2 pattern."""
    parts = [re.escape(g).replace(r"\*", ".*").replace(r"\?", ".") for g in globs]
    return "(?i)^(?:" + "|".join(parts) + r")\.?$" if parts else "(?!)"


class Correlator:
    """Carries the events of messages still open from one block to the next."""

    def __init__(self, targets: tuple[str, ...]):
        self.pending = EVENT_SCHEMA.empty_table()
        self.targets = _target_regex(targets)
        self.max_ts: int | None = None

    def feed(self, events: pa.Table, final: bool = False) -> Closed | None:
        """Add a block's events; return the events of the messages that are now closed (turned
        into one row each by Closed.messages, which can run on a worker thread).

        This runs in order on the main thread, so it works on integer columns only: the rows
        are never reordered or copied here (Closed keeps row indices into the events)."""
        if len(events):
            mx = pc.max(events.column("ts")).value
            if mx is not None:
                self.max_ts = mx if self.max_ts is None else max(self.max_ts, mx)
        ev = pa.concat_tables([self.pending, events]) if len(self.pending) else events
        if not len(ev):
            return None
        gid = _group_keys(ev)
        order = np.lexsort((ev.column("seq").to_numpy(), gid))
        gid = gid[order]
        kind = ev.column("kind").to_numpy()[order]
        n = len(ev)
        same = np.zeros(n, dtype=bool)
        same[1:] = gid[1:] == gid[:-1]
        starts_here = np.isin(kind, (CLIENT, PICKUP))
        prev_removed = np.zeros(n, dtype=bool)
        prev_removed[1:] = kind[:-1] == REMOVED
        # A new message: a new queue id, or the same id after 'removed' / a new client=/pickup
        # (queue ids are reused; a lost 'removed' must not glue two messages together).
        boundary = ~same | prev_removed | (starts_here & same)
        msg = np.cumsum(boundary) - 1
        n_msg = int(msg[-1]) + 1
        starts = np.flatnonzero(boundary)
        has_removed = np.maximum.reduceat((kind == REMOVED).astype(np.int8), starts) > 0
        has_qmgr = np.maximum.reduceat(np.isin(kind, (QMGR_FROM, EXPIRED)).astype(np.int8), starts) > 0
        msg_gid = gid[starts]
        followed = np.zeros(n_msg, dtype=bool)
        followed[:-1] = msg_gid[1:] == msg_gid[:-1]
        ts = ev.column("ts").cast(pa.int64()).fill_null(0).to_numpy()[order]
        last_ts = np.maximum.reduceat(ts, starts)
        stale = (
            last_ts < (self.max_ts - OPEN_HORIZON_US) if self.max_ts is not None else np.zeros(n_msg, bool)
        )
        closed = has_removed | followed | stale | final
        closed_ev = closed[msg]
        still_open = np.ones(n, dtype=bool)
        still_open[order[closed_ev]] = False
        # Few rows (messages in flight): one compact chunk, so chunks do not pile up.
        self.pending = ev.filter(pa.array(still_open)).combine_chunks()
        if not closed.any():
            return None
        complete = (has_removed & has_qmgr)[closed]
        return Closed(ev, order[closed_ev], msg[closed_ev], complete, self.targets)


def _group_keys(ev: pa.Table) -> np.ndarray:
    """One integer per event for its (host, syslog_name, queue id): the message key, as codes
    of the three columns combined with numpy (cheaper than hashing joined strings)."""
    key = np.zeros(len(ev), dtype=np.int64)
    for name in ("qid", "host", "inst"):
        col = pc.fill_null(ev.column(name).combine_chunks(), "")
        enc = pc.dictionary_encode(col)
        key = key * len(enc.dictionary) + enc.indices.to_numpy().astype(np.int64)
    return key


@dataclass
class Closed:
    """Messages that ended: rows `rows` of `events`, sorted by message, then time; `msg`
    numbers their message (ascending), `complete` says per message whether it was seen to end."""

    events: pa.Table
    rows: np.ndarray
    msg: np.ndarray
    complete: np.ndarray
    targets: str

    @property
    def files(self) -> np.ndarray:
        """File index of each of the events (for ctx.parsed)."""
        return self.events.column("file_idx").to_numpy()[self.rows]

    def messages(self) -> pa.Table:
        return _messages(self.events, self.rows, self.msg, self.complete, self.targets)


def _messages(ev: pa.Table, rows: np.ndarray, msg: np.ndarray, complete: np.ndarray, targets: str) -> pa.Table:
    """Closed events (rows of ev, sorted by message, then time) -> one row per message, in the
    order of each message's first line. Per-message picks are row indices found with numpy;
    each column is gathered once, n_msg values (the events are never sorted as a table)."""
    # Renumber to 0..M-1 in the order of each message's first event (seq), keeping the rows
    # of a message together and in time order (a stable sort of contiguous runs).
    boundary = np.ones(len(msg), dtype=bool)
    boundary[1:] = msg[1:] != msg[:-1]
    starts = np.flatnonzero(boundary)
    n_msg = len(starts)
    first_seq = ev.column("seq").to_numpy()[rows[starts]]
    rank = np.empty(n_msg, dtype=np.int64)
    by_seq = np.argsort(first_seq, kind="stable")
    rank[by_seq] = np.arange(n_msg)
    m = rank[np.cumsum(boundary) - 1]
    regroup = np.argsort(m, kind="stable")
    rows, m = rows[regroup], m[regroup]
    complete = complete[by_seq]
    agg = {
        c: _first_valid(ev.column(c), rows, m, n_msg)
        for c in (
            "seq", "file_idx", "line", "ts", "host", "qid", "client_ip", "message_id",
            "p1_qmgr", "p1_other", "p2_from", "p2_sender", "subject", "size",
        )
    }
    kinds = ev.column("kind").to_numpy()[rows]
    is_ndr = np.zeros(n_msg, dtype=bool)
    is_ndr[m[kinds == BOUNCE]] = True
    expired = np.zeros(n_msg, dtype=bool)
    expired[m[kinds == EXPIRED]] = True
    relay, status, response = _primary_delivery(ev, rows, m, kinds, n_msg, targets)
    status = pc.if_else(pa.array(expired), pa.scalar("expired"), status)
    p1 = pc.coalesce(agg["p1_qmgr"], agg["p1_other"])
    p2 = pc.coalesce(agg["p2_from"], agg["p2_sender"])
    rd = _distinct_lists(ev.column("rcpt_delivered"), rows, m, n_msg)
    ro = _distinct_lists(ev.column("rcpt_other"), rows, m, n_msg)
    rcpts = pc.if_else(pc.greater(pc.list_value_length(rd), 0), rd, ro)
    null_sender = pc.fill_null(pc.equal(p1, ""), False)
    ndr = pc.if_else(
        pa.array(is_ndr), True, pc.if_else(null_sender, pa.scalar(None, pa.bool_()), False)
    )
    return pa.table(
        {
            "seq": agg["seq"],
            "file_idx": agg["file_idx"],
            "line": agg["line"],
            "ts": agg["ts"],
            "host": agg["host"],
            "qid": agg["qid"],
            "client_ip": agg["client_ip"],
            "message_id": agg["message_id"],
            "p1": p1,
            "p2": p2,
            "subject": agg["subject"],
            "size": agg["size"],
            "recipients": rcpts,
            "relay_host": relay,
            "status": status,
            "response": response,
            "is_ndr": ndr,
            "incomplete": pa.array(~complete),
        }
    )


def _last_per_message(at: np.ndarray, m: np.ndarray, n_msg: int) -> np.ndarray:
    """For positions `at` (ascending) whose messages are m[at]: the last one per message, -1
    for a message with none."""
    where = np.full(n_msg, -1, dtype=np.int64)
    gm = m[at]
    last = np.ones(len(at), dtype=bool)
    last[:-1] = gm[1:] != gm[:-1]
    where[gm[last]] = at[last]
    return where


def _primary_delivery(ev: pa.Table, rows: np.ndarray, m: np.ndarray, kinds: np.ndarray, n_msg: int, targets: str):
    """relay_host/status/response of the delivery that represents the message: the last
    one to a relay target (Exchange Online) if any, else the last delivery or reject."""
    at = np.flatnonzero(np.isin(kinds, (DELIVERY, REJECT)))
    if not len(at):
        return [pa.nulls(n_msg, _STR) for _ in range(3)]
    relay_col = ev.column("relay_host")
    # Next hops repeat: the target pattern runs once per distinct relay host.
    enc = pc.dictionary_encode(relay_col.take(pa.array(rows[at]))).combine_chunks()
    hit = _mask(pc.match_substring_regex(enc.dictionary, targets))
    codes = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False)
    target = np.zeros(len(at), dtype=bool)
    target[codes >= 0] = hit[codes[codes >= 0]]
    pick = _last_per_message(at[target], m, n_msg)
    last_any = _last_per_message(at, m, n_msg)
    pick = np.where(pick >= 0, pick, last_any)
    missing = pick < 0
    idx = pa.array(rows[np.where(missing, 0, pick)], mask=missing)
    return [ev.column(c).take(idx).combine_chunks() for c in ("relay_host", "status", "response")]


def _drop_list_nulls(lists: pa.ListArray) -> pa.ListArray:
    """Remove null and empty elements from each list (used by the Sendmail reader too)."""
    flat = lists.flatten()
    parents = pc.list_parent_indices(lists).to_numpy()
    keep = _mask(pc.is_valid(flat)) & _mask(pc.greater(pc.utf8_length(pc.fill_null(flat, "")), 0))
    counts = np.bincount(parents[keep], minlength=len(lists))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), flat.filter(pa.array(keep)))


def _first_valid(col: pa.ChunkedArray, rows: np.ndarray, m: np.ndarray, n_msg: int) -> pa.Array:
    """The first non-null value of col per message, over the rows `rows` of col (sorted by
    message m, then time); null for a message that has none."""
    if col.null_count == 0:  # seq, line, ts, host...: the message's first row
        at = np.flatnonzero(np.r_[True, m[1:] != m[:-1]])
        return col.take(pa.array(rows[at])).combine_chunks()
    valid = _mask(pc.is_valid(col))[rows]
    idx = np.flatnonzero(valid)
    gm = m[idx]
    first = np.ones(len(idx), dtype=bool)
    first[1:] = gm[1:] != gm[:-1]
    where = np.full(n_msg, -1, dtype=np.int64)
    where[gm[first]] = rows[idx[first]]
    missing = where < 0
    return col.take(pa.array(where, mask=missing) if missing.any() else pa.array(where)).combine_chunks()


def _distinct_lists(col: pa.ChunkedArray, rows: np.ndarray, m: np.ndarray, n_msg: int) -> pa.ListArray:
    """The distinct non-empty values of col per message (over the rows `rows` of col, sorted by
    message m), in order of first appearance, as one list per message."""
    nonempty = _mask(pc.greater(pc.binary_length(col), 0))[rows]
    idx = np.flatnonzero(nonempty)
    values = col.take(pa.array(rows[idx])).combine_chunks()
    codes = pc.dictionary_encode(values).indices.to_numpy().astype(np.int64)
    key = m[idx] * (int(codes.max()) + 1 if len(codes) else 1) + codes
    _, first = np.unique(key, return_index=True)
    keep = np.sort(first)
    counts = np.bincount(m[idx[keep]], minlength=n_msg)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values.take(pa.array(keep)))


def _noqueue_messages(noq: pa.Table) -> pa.Table:
    """NOQUEUE rejects: each line is a message of its own, rejected at this host."""
    n = len(noq)
    rcpt = noq.column("rcpt_other").combine_chunks()
    offsets = np.concatenate([[0], np.cumsum(pc.is_valid(rcpt).to_numpy(zero_copy_only=False))])
    rcpts = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), rcpt.drop_null())
    p1 = noq.column("p1_other")
    return pa.table(
        {
            "seq": noq.column("seq"),
            "file_idx": noq.column("file_idx"),
            "line": noq.column("line"),
            "ts": noq.column("ts"),
            "host": noq.column("host"),
            "qid": pa.nulls(n, _STR),
            "client_ip": noq.column("client_ip"),
            "message_id": pa.nulls(n, _STR),
            "p1": p1,
            "p2": pa.nulls(n, _STR),
            "subject": pa.nulls(n, _STR),
            "size": pa.nulls(n, pa.int64()),
            "recipients": rcpts,
            "relay_host": noq.column("relay_host"),
            "status": noq.column("status"),
            "response": noq.column("response"),
            "is_ndr": pc.if_else(
                pc.fill_null(pc.equal(p1, ""), False), pa.scalar(None, pa.bool_()), False
            ),
            "incomplete": pa.array(np.zeros(n, dtype=bool)),
        }
    )


def _to_batch(msgs: pa.Table, sources: list[Source], ctx: IngestContext) -> pa.RecordBatch:
    """Message rows -> a `messages` batch, and the parsed-line accounting per file."""
    n = len(msgs)
    file_idx = msgs.column("file_idx").to_numpy()
    p1 = msgs.column("p1")
    p1 = pc.if_else(pc.is_valid(p1), pc.binary_join_element_wise("<", p1, ">", ""), _NULL)
    p2 = msgs.column("p2")
    return make_messages(
        {
            "ts": msgs.column("ts"),
            **origin_columns(NAME, sources, file_idx, msgs.column("host"), ctx.options.host),
            "source_line": msgs.column("line"),
            "message_id": msgs.column("message_id"),
            "queue_id": msgs.column("qid"),
            "p1_sender": p1,
            "p2_sender": p2,
            "client_ip": msgs.column("client_ip"),
            "relay_host": msgs.column("relay_host"),
            "recipients": msgs.column("recipients"),
            "status": msgs.column("status"),
            "response": msgs.column("response"),
            "is_ndr": msgs.column("is_ndr"),
            "size": msgs.column("size"),
            "subject": msgs.column("subject"),
            "incomplete": msgs.column("incomplete"),
        },
        n,
    )


def _count_parsed(ev_files: np.ndarray, sources: list[Source], ctx: IngestContext) -> None:
    for i, c in enumerate(np.bincount(ev_files, minlength=len(sources))):
        if c:
            ctx.parsed(sources[i].name, NAME, int(c))


# --------------------------------------------------------------------------------------------
# read
# --------------------------------------------------------------------------------------------


def read(sources: list[Source], ctx: IngestContext) -> Iterator[pa.RecordBatch]:
    opts = ctx.options
    ordered = order_by_time(sources, year=opts.year, tz=opts.tz)
    block_bytes = max(1024, min(opts.chunk_bytes, _BLOCK_BYTES))
    corr = Correlator(tuple(opts.relay_targets))

    def tasks(pool: ThreadPoolExecutor) -> Iterator[Future]:
        seq0 = 0  # bytes before the block in all the input: orders lines across blocks and files
        for fi, src in enumerate(ordered):
            clock = file_clock(src)
            ctx.lines_read(src.name, NAME, 0)  # the file is listed even when empty
            for block in iter_padded_blocks(src, block_bytes):
                yield pool.submit(parse_block, block, fi, seq0, clock, opts.year, opts.tz)
                seq0 += len(block)

    def finish(msgs: Closed | pa.Table) -> pa.RecordBatch | None:
        # Message rows and the messages batch: on the pool too, they need no state.
        # Both come in line order already (Closed.messages orders them by first line).
        if isinstance(msgs, Closed):
            msgs = msgs.messages()
        return _to_batch(msgs, ordered, ctx) if len(msgs) else None

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="postfix-parse") as pool:
        in_flight: deque[Future] = deque()
        out: deque[tuple[Future, np.ndarray]] = deque()  # batches in the order they close

        def drain(waiting: int) -> Iterator[pa.RecordBatch]:
            """Yield finished batches in order, waiting while more than `waiting` are queued."""
            while out and (len(out) > waiting or out[0][0].done()):
                fut, files = out.popleft()
                batch = fut.result()
                if batch is not None:
                    _count_parsed(files, ordered, ctx)
                    yield batch

        gen = tasks(pool)
        lines_before: dict[int, int] = {}  # lines of each file in the blocks handled so far
        exhausted = False
        while True:
            while not exhausted and len(in_flight) < 3:
                try:
                    in_flight.append(next(gen))
                except StopIteration:
                    exhausted = True
            if not in_flight:
                break
            block: Block = in_flight.popleft().result()
            src = ordered[block.file_idx]
            block.number_lines(lines_before.get(block.file_idx, 0) + 1)
            lines_before[block.file_idx] = lines_before.get(block.file_idx, 0) + block.lines
            ctx.lines_read(src.name, NAME, block.lines)
            for why, c in block.skipped.items():
                ctx.skipped(src.name, NAME, why, c)
            if block.rejects is not None:
                lines, reasons, raws = block.rejects
                ctx.reject_lines(NAME, src.name, lines.tolist(), reasons, raws)
            if len(block.noqueue):
                files = block.noqueue.column("file_idx").to_numpy()
                out.append((pool.submit(finish, _noqueue_messages(block.noqueue)), files))
            closed = corr.feed(block.events)
            if closed is not None:
                out.append((pool.submit(finish, closed), closed.files))
            yield from drain(2)
        closed = corr.feed(EVENT_SCHEMA.empty_table(), final=True)
        if closed is not None:
            out.append((pool.submit(finish, closed), closed.files))
        yield from drain(0)

