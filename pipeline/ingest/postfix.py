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

Speed: a block (8 MB of whole lines) stays one byte buffer; the syslog prefix, the queue id and
the start of each record are byte offsets found with numpy (syslog.parse_prefix_raw), lines are
classified by program on the few distinct tags, record kinds and daemon noise are told apart on
the first 32 bytes of each record (syslog.RawLines.heads: integer compares, no string cut out),
and only the text a record kind needs is cut out, once (through an Arrow string_view). Delivery (`to=`) and header_checks lines are read with
`split_pattern` on ', ' / '; from=<' rather than one big regex; the remaining small regexes run
only on the lines of their record kind. Correlation is a sort over the events of a block plus
the messages still open (state carried across blocks and files, so memory is bounded by
messages in flight), with first-value-per-message picked by numpy on the sorted rows. Blocks are
parsed, and finished messages turned into batches, on a two-thread pool (Arrow and numpy release
the GIL); the correlation step stays in order on the main thread. Rotated files are read in time
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
    element,
    file_clock,
    head_starts,
    iter_raw_blocks,
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

_BLOCK_BYTES = 8 * 1024 * 1024  # per parse task: small enough to keep both cores busy

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
    rejects: tuple[list, list, pa.Array] | None  # (line numbers, reasons, raw lines)


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


def parse_block(
    block: bytes, first_line: int, file_idx: int, seq0: int, clock, year, tz
) -> Block:
    """Classify and read one block of whole lines (runs on the thread pool).

    Fields are found as byte offsets into the block (see syslog.RawLines); only the parts of
    the lines a record kind needs are turned into Arrow strings."""
    raw = raw_lines(block)
    n = len(raw)
    line_no = np.arange(first_line, first_line + n, dtype=np.int64)
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
    programs = p.program.dictionary_encode()
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
    tag_parts = pc.split_pattern(tags, "/")
    pf_tags = pa.array(tag_idx[pf])
    inst = element(tag_parts, 0).take(pf_tags)
    daemon = last_element(tag_parts).take(pf_tags)

    # 'QUEUEID: rest' / 'NOQUEUE: rest': the first word ends with ':' (the first ': ').
    m0 = p.msg_start[pf]
    e = raw.ends[pf]
    # The first space at or after the message start (a space of a later line fails sp < e).
    sp = raw.next_byte(m0, 32)
    has_colon = (sp < e) & (sp > m0)
    has_colon &= raw.buf[np.maximum(sp - 1, 0)] == 58
    cand = np.flatnonzero(has_colon)
    first_word = raw.slices(m0[cand], sp[cand] - 1)
    is_qid = np.zeros(len(pf), dtype=bool)
    is_noq = np.zeros(len(pf), dtype=bool)
    is_qid[cand] = _mask(pc.match_substring_regex(first_word, _QUEUE_ID))
    is_noq[cand] = _mask(pc.equal(first_word, "NOQUEUE"))
    cand_pos = np.zeros(len(pf), dtype=np.int64)  # row of first_word for each Postfix line
    cand_pos[cand] = np.arange(len(cand))

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

        d = _sub(daemon, o)
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
        stats = (starts("statistics:") | _mask(pc.is_in(d, pa.array(["anvil", "scache"])))) & ~(
            conn | tls | warn
        )
        screen = _mask(pc.is_in(d, pa.array(["postscreen", "dnsblog", "tlsproxy"]))) & ~(
            conn | tls | warn | stats
        )
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
    qd = _sub(daemon, q)

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
    kind[starts("from=<") & _mask(pc.equal(qd, "qmgr"))] = QMGR_FROM
    kind[starts("to=")] = DELIVERY
    kind[starts("removed") & (qe - qs == len("removed"))] = REMOVED
    bounce = _mask(pc.equal(qd, "bounce"))
    kind[on_text(bounce, lambda r: _mask(pc.match_substring(r, " notification: ")))] = BOUNCE
    header = on_text(
        kind == 0, lambda r: _mask(pc.match_substring_regex(r, r"^[a-z_-]+: header [A-Za-z0-9-]+: "))
    )
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

    m, s = subset(CLIENT)
    if m.any():
        fill("client_ip", m, extract(s, r"^client=[^\[,]*\[(?P<ip>[^\]]*)\]"))
    m, s = subset(PICKUP)
    if m.any():
        fill("p1_other", m, extract(s, r" from=<(?P<f>[^>]*)>"))
    m, s = subset(MSGID)
    if m.any():
        mid = pc.utf8_trim_whitespace(pc.utf8_slice_codeunits(s, 11))
        fill("message_id", m, mid)
    m, s = subset(HEADER)
    if m.any():
        h = _header_fields(s)
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
    m, s = subset(QMGR_FROM)
    if m.any():
        g = pc.extract_regex(
            s, r"^from=<(?P<f>[^>]*)>, (?:size=(?P<size>\d+)|status=(?P<st>[a-z]+))"
        )
        valid = _mask(pc.is_valid(g))
        fill("p1_qmgr", m, pc.if_else(pa.array(valid), g.field("f"), _NULL))
        size = pc.if_else(pa.array(valid), g.field("size"), _NULL)
        fill("size", m, pc.if_else(pc.equal(size, ""), _NULL, size).cast(pa.int64()))
        expired = valid & _mask(pc.equal(g.field("st"), "expired"))
        ev_kind[np.flatnonzero(m)[expired]] = EXPIRED
        fill("status", m, pc.if_else(pa.array(expired), pa.scalar("expired"), _NULL))
        broken.append((np.flatnonzero(m)[~valid], REJECT_QMGR))
    m, s = subset(DELIVERY)
    if m.any():
        d = _delivery_fields(s)
        valid = d["valid"]
        vm = pa.array(valid)
        fill("rcpt_delivered", m, pc.if_else(vm, d["to"], _NULL))
        relay = _host_of_relay(d["relay"])
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
        [first_word.take(pa.array(cand_pos[q])), pa.nulls(int(n_keep.sum()), _STR)]
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
        seq=pa.array(seq0 + pos, pa.int64()),
        file_idx=pa.array(np.full(ne, file_idx, dtype=np.int32)),
        line=pa.array(line_no[pos]),
        ts=p.ts.take(pos_take),
        host=p.host(pos),
        inst=inst.take(pa.array(ev_pos)),
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
        rejects = (line_no[idx].tolist(), reasons, raw.lines(idx))
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
        into one row each by Closed.messages, which can run on a worker thread)."""
        if len(events):
            mx = pc.max(events.column("ts")).value
            if mx is not None:
                self.max_ts = mx if self.max_ts is None else max(self.max_ts, mx)
        ev = pa.concat_tables([self.pending, events]) if len(self.pending) else events
        if not len(ev):
            return None
        key = pc.binary_join_element_wise(
            pc.fill_null(ev.column("host"), ""), pc.fill_null(ev.column("inst"), ""),
            pc.fill_null(ev.column("qid"), ""), "\x1f",
        )
        gid = pc.dictionary_encode(key).combine_chunks().indices.to_numpy()
        seq = ev.column("seq").to_numpy()
        order = np.lexsort((seq, gid))
        ev = ev.take(pa.array(order))
        gid = gid[order]
        kind = ev.column("kind").to_numpy()
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
        ts = ev.column("ts").cast(pa.int64()).fill_null(0).to_numpy()
        last_ts = np.maximum.reduceat(ts, starts)
        stale = (
            last_ts < (self.max_ts - OPEN_HORIZON_US) if self.max_ts is not None else np.zeros(n_msg, bool)
        )
        closed = has_removed | followed | stale | final
        closed_ev = closed[msg]
        self.pending = ev.filter(pa.array(~closed_ev))
        if not closed.any():
            return None
        done = ev.filter(pa.array(closed_ev))
        complete = (has_removed & has_qmgr)[closed]
        return Closed(done, msg[closed_ev], complete, self.targets)


@dataclass
class Closed:
    """The events of messages that ended (sorted by message, then time)."""

    events: pa.Table
    msg: np.ndarray
    complete: np.ndarray
    targets: str

    def messages(self) -> pa.Table:
        return _messages(self.events, self.msg, self.complete, self.targets)


def _messages(ev: pa.Table, msg: np.ndarray, complete: np.ndarray, targets: str) -> pa.Table:
    """Closed events (sorted by message, then time) -> one row per message."""
    # Renumber to 0..M-1 in event order.
    boundary = np.ones(len(msg), dtype=bool)
    boundary[1:] = msg[1:] != msg[:-1]
    m = np.cumsum(boundary) - 1
    n_msg = int(m[-1]) + 1 if len(m) else 0
    # The first non-null value of each field per message (what hash 'first' would give),
    # with numpy on the sorted rows instead of a hash group-by.
    agg = {
        c: _first_valid(ev.column(c), m, n_msg)
        for c in (
            "seq", "file_idx", "line", "ts", "host", "qid", "client_ip", "message_id",
            "p1_qmgr", "p1_other", "p2_from", "p2_sender", "subject", "size",
        )
    }
    kinds = ev.column("kind").to_numpy()
    is_ndr = np.zeros(n_msg, dtype=bool)
    is_ndr[m[kinds == BOUNCE]] = True
    expired = np.zeros(n_msg, dtype=bool)
    expired[m[kinds == EXPIRED]] = True
    relay, status, response = _primary_delivery(ev, m, n_msg, targets)
    status = pc.if_else(pa.array(expired), pa.scalar("expired"), status)
    p1 = pc.coalesce(agg["p1_qmgr"], agg["p1_other"])
    p2 = pc.coalesce(agg["p2_from"], agg["p2_sender"])
    rd = _distinct_lists(ev.column("rcpt_delivered"), m, n_msg)
    ro = _distinct_lists(ev.column("rcpt_other"), m, n_msg)
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

def _primary_delivery(ev: pa.Table, m: np.ndarray, n_msg: int, targets: str):
    """relay_host/status/response of the delivery that represents the message: the last
    one to a relay target (Exchange Online) if any, else the last delivery or reject."""
    kinds = ev.column("kind").to_numpy()
    is_del = np.isin(kinds, (DELIVERY, REJECT))
    out = [pa.nulls(n_msg, _STR) for _ in range(3)]
    if not is_del.any():
        return out
    d = ev.filter(pa.array(is_del))
    dm = m[is_del]
    target = _mask(pc.match_substring_regex(d.column("relay_host"), targets)).astype(np.int8)
    seq = d.column("seq").to_numpy()
    order = np.lexsort((seq, target, dm))
    dm = dm[order]
    last = np.ones(len(dm), dtype=bool)
    last[:-1] = dm[1:] != dm[:-1]
    pick = order[last]
    where = np.full(n_msg, -1, dtype=np.int64)
    where[dm[last]] = pick
    have = pa.array(where >= 0)
    safe = pa.array(np.where(where >= 0, where, 0))
    res = []
    for c in ("relay_host", "status", "response"):
        col = d.column(c).combine_chunks().take(safe)
        res.append(pc.if_else(have, col, _NULL))
    return res


def _drop_list_nulls(lists: pa.ListArray) -> pa.ListArray:
    """Remove null and empty elements from each list (used by the Sendmail reader too)."""
    flat = lists.flatten()
    parents = pc.list_parent_indices(lists).to_numpy()
    keep = _mask(pc.is_valid(flat)) & _mask(pc.greater(pc.utf8_length(pc.fill_null(flat, "")), 0))
    counts = np.bincount(parents[keep], minlength=len(lists))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), flat.filter(pa.array(keep)))


def _first_valid(col: pa.ChunkedArray | pa.Array, m: np.ndarray, n_msg: int) -> pa.Array:
    """The first non-null value of col in each message (rows sorted by message m), null for a
    message that has none."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    idx = np.flatnonzero(_mask(pc.is_valid(col)))
    gm = m[idx]
    first = np.ones(len(idx), dtype=bool)
    first[1:] = gm[1:] != gm[:-1]
    where = np.full(n_msg, -1, dtype=np.int64)
    where[gm[first]] = idx[first]
    missing = where < 0
    return col.take(pa.array(where, mask=missing) if missing.any() else pa.array(where))


def _distinct_lists(col: pa.ChunkedArray | pa.Array, m: np.ndarray, n_msg: int) -> pa.ListArray:
    """The distinct non-empty values of col per message (rows sorted by message m), in order of
    first appearance, as one list per message."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    idx = np.flatnonzero(_mask(pc.greater(pc.binary_length(col), 0)))
    codes = pc.dictionary_encode(col.take(pa.array(idx))).indices.to_numpy().astype(np.int64)
    key = m[idx] * (int(codes.max()) + 1 if len(codes) else 1) + codes
    _, first = np.unique(key, return_index=True)
    keep = idx[np.sort(first)]
    counts = np.bincount(m[keep], minlength=n_msg)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), col.take(pa.array(keep)))


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
        seq0 = 0
        for fi, src in enumerate(ordered):
            clock = file_clock(src)
            ctx.lines_read(src.name, NAME, 0)  # the file is listed even when empty
            for first_line, block, count in iter_raw_blocks(src, block_bytes):
                yield pool.submit(parse_block, block, first_line, fi, seq0, clock, opts.year, opts.tz)
                seq0 += count

    def finish(msgs: Closed | pa.Table) -> pa.RecordBatch | None:
        # Message rows and the messages batch: on the pool too, they need no state.
        if isinstance(msgs, Closed):
            msgs = msgs.messages()
        return _to_batch(msgs.sort_by("seq"), ordered, ctx) if len(msgs) else None

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
            ctx.lines_read(src.name, NAME, block.lines)
            for why, c in block.skipped.items():
                ctx.skipped(src.name, NAME, why, c)
            if block.rejects is not None:
                lines, reasons, raws = block.rejects
                ctx.reject_lines(NAME, src.name, lines, reasons, raws)
            if len(block.noqueue):
                files = block.noqueue.column("file_idx").to_numpy()
                out.append((pool.submit(finish, _noqueue_messages(block.noqueue)), files))
            before = corr.pending
            closed = corr.feed(block.events)
            if closed is not None:
                files = _closed_files(before, block.events, corr.pending)
                out.append((pool.submit(finish, closed), files))
            yield from drain(2)
        before = corr.pending
        closed = corr.feed(EVENT_SCHEMA.empty_table(), final=True)
        if closed is not None:
            out.append((pool.submit(finish, closed), before.column("file_idx").to_numpy()))
        yield from drain(0)


def _closed_files(before: pa.Table, new: pa.Table, after: pa.Table) -> np.ndarray:
    """File index of every event that left the correlator in this round (for ctx.parsed)."""
    all_files = np.concatenate(
        [before.column("file_idx").to_numpy(), new.column("file_idx").to_numpy()]
    )
    counts = np.bincount(all_files, minlength=1) if len(all_files) else np.zeros(1, np.int64)
    left = after.column("file_idx").to_numpy()
    still = np.bincount(left, minlength=len(counts)) if len(left) else np.zeros_like(counts)
    closed = counts - still[: len(counts)]
    return np.repeat(np.arange(len(closed)), closed)
