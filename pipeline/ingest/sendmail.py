"""Sendmail syslog (`/var/log/maillog`: programs sendmail, sm-mta, sm-msp-queue).

    Nov  2 10:05:12 sm01 sm-mta[2210]: 5A2A5C0x002210: from=<noreply@erp.corp.local>, size=5120, class=0, nrcpts=1, msgid=<ERP.4471@sm01.corp.contoso.com>, proto=ESMTP, daemon=MTA, relay=localhost [127.0.0.1]

One row per message (queue id on the host), from:

- the sender record `from=<p1>, size=N, ..., msgid=<...>, relay=name [ip]` (P1, size,
  Message-ID, client_ip),
- recipient records `to=<r1>,<r2>, [ctladdr=...,] ..., mailer=..., relay=host. [ip], dsn=x.y.z,
  stat=Sent (...)` (recipients, relay_host without the trailing dot, status, response),
- rejects with a queue id `ruleset=check_mail|check_rcpt, arg1=<...>, relay=..., reject=550 ...`
  and `Milter: ..., reject=...` (status `rejected`, response = the reject text),
- DSN lines `<QUEUEID>: <NEW QUEUEID>: DSN: <reason>`: the bounce Sendmail generated is its own
  message with the null sender (p1 '', is_ndr), delivered by `<NEW QUEUEID>: to=...` lines.

Sendmail logs no header From (P2 stays null) and no certificate of its own: a `STARTTLS=client`
line's `cert-subject=` is the *server's* certificate (Exchange Online's), not the one this host
presents, so `tls_cert` stays null and the engine uses the host's configured certificate.
STARTTLS lines, connection-level rejects (check_relay), and session chatter are documented skips.
Sendmail writes no 'removed' line: a message is closed when its last recipient record has a final
status and an hour of log time has passed, or after 6 days (queue lifetime), or at end of input.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..normalize import extract
from ..schema import TS
from .base import IngestContext, Source, decode_head, make_messages
from .postfix import _drop_list_nulls, _mask, _starts, _sub, _target_regex
from .syslog import (
    element,
    file_clock,
    iter_line_blocks,
    order_by_time,
    origin_columns,
    parse_prefix,
)

NAME = "sendmail"
DESCRIPTION = "Sendmail syslog: lines tagged sendmail[pid] / sm-mta[pid] / sm-msp-queue[pid]"

# 'sendmail[123]:' or 'sm-mta[123]:' — not 'postfix/sendmail[123]:' (Postfix's own sendmail).
_DETECT = re.compile(r"(?:^|\s)(?:sendmail|sm-mta|sm-msp-queue|sm-[a-z]+)\[\d+\]: ", re.M)

FROM, TO, REJECT, DSN = 1, 2, 3, 4

SKIP_OTHER_PROGRAM = "not a Sendmail line (other program in the mail log)"
SKIP_TLS = (
    "STARTTLS session line (for STARTTLS=client the cert-subject is the server's certificate, "
    "e.g. Exchange Online's, not the one this host presents: tls_cert stays null)"
)
SKIP_CONN_REJECT = "connection rejected before any message (ruleset=check_relay, no queue id)"
SKIP_DAEMON = "Sendmail daemon message without a queue id (AUTH, alias rebuild, ...)"
SKIP_QID_UNUSED = "queue-id line with no field relay-impact uses (attack notices, EXPN/VRFY, ...)"
SKIP_BLANK = "blank line"

_QUEUE_ID = r"^[0-9A-Za-z]{8,20}$"
_FINAL_IDLE_US = 3600 * 1_000_000  # an hour after a final status, no more lines come
_OPEN_HORIZON_US = 6 * 24 * 3600 * 1_000_000  # Timeout.queuereturn is 5 days by default

_STR = pa.string()
_NULL = pa.scalar(None, _STR)

_EVENT_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("file_idx", pa.int32()),
        ("line", pa.int64()),
        ("ts", TS),
        ("host", _STR),
        ("qid", _STR),
        ("kind", pa.int8()),
        ("p1", _STR),
        ("size", pa.int64()),
        ("message_id", _STR),
        ("client_ip", _STR),
        ("rcpts", _STR),
        ("relay_host", _STR),
        ("status", _STR),
        ("response", _STR),
    ]
)


def detect(head: bytes) -> bool:
    return _DETECT.search(decode_head(head)) is not None


def _status_word(stat: pa.Array) -> pa.Array:
    """stat=Sent (...) / Deferred: ... / queued / User unknown -> sent, deferred, queued, bounced."""
    low = pc.utf8_lower(stat)
    return pc.if_else(
        pc.starts_with(low, "sent"),
        pa.scalar("sent"),
        pc.if_else(
            pc.starts_with(low, "deferred"),
            pa.scalar("deferred"),
            pc.if_else(pc.starts_with(low, "queued"), pa.scalar("queued"), pa.scalar("bounced")),
        ),
    )


def parse_block(lines, first_line, file_idx, seq0, clock, year, tz):
    """One block of lines -> (events table, skip counter, rejects or None)."""
    n = len(lines)
    line_no = np.arange(first_line, first_line + n, dtype=np.int64)
    skipped: Counter = Counter()
    p = parse_prefix(lines, year=year, clock=clock, tz=tz)
    ok = _mask(p.ok)
    blank = _mask(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(lines)), 0))
    skipped[SKIP_BLANK] += int(blank.sum())
    bad = ~ok & ~blank
    rejects = None
    if bad.any():
        idx = np.flatnonzero(bad)
        rejects = (line_no[idx].tolist(), _sub(p.error, idx), _sub(lines, idx))

    is_sm = ok & (_mask(pc.equal(p.program, "sendmail")) | _starts(p.program, "sm-"))
    skipped[SKIP_OTHER_PROGRAM] += int((ok & ~is_sm).sum())
    sm = np.flatnonzero(is_sm)
    msg = _sub(p.message, sm)
    two = pc.split_pattern(msg, ": ", max_splits=1)
    first = element(two, 0)
    rest = element(two, 1)
    is_qid = (
        _mask(pc.is_valid(rest))
        & _mask(pc.match_substring_regex(first, _QUEUE_ID))
        & _mask(pc.match_substring_regex(first, r"\d"))
    )
    other = ~is_qid
    if other.any():
        m = _sub(msg, np.flatnonzero(other))
        tls = _starts(m, "STARTTLS")
        conn = _mask(pc.match_substring(m, "reject=")) & ~tls
        skipped[SKIP_TLS] += int(tls.sum())
        skipped[SKIP_CONN_REJECT] += int(conn.sum())
        skipped[SKIP_DAEMON] += int((~tls & ~conn).sum())

    q = np.flatnonzero(is_qid)
    qrest = _sub(rest, q)
    qid = _sub(first, q)
    kind = np.zeros(len(q), dtype=np.int8)
    kind[_starts(qrest, "from=")] = FROM
    kind[_starts(qrest, "to=")] = TO
    kind[(kind == 0) & _mask(pc.match_substring(qrest, "reject="))] = REJECT
    dsn = _mask(pc.match_substring_regex(qrest, r"^[0-9A-Za-z]{8,20}: DSN: "))
    kind[(kind == 0) & dsn] = DSN
    skipped[SKIP_QID_UNUSED] += int((kind == 0).sum())

    keep = kind > 0
    ev_rest = qrest.filter(pa.array(keep))
    ev_kind = kind[keep]
    ev_qid = qid.filter(pa.array(keep))
    pos = sm[q[keep]]
    ne = len(pos)

    def where(k: int, values: pa.Array) -> pa.Array:
        return pc.if_else(pa.array(ev_kind == k), values, pa.scalar(None, values.type))

    is_from = ev_kind == FROM
    relay = extract(ev_rest, r"relay=(?P<r>[^,]*)")
    p1 = pc.coalesce(
        where(FROM, extract(ev_rest, r"^from=(?P<f><[^>]*>|[^,\s]*)")),
        where(REJECT, extract(ev_rest, r"ruleset=check_mail, arg1=(?P<f><[^>]*>|[^,\s]*)")),
        pc.if_else(pa.array(ev_kind == DSN), pa.scalar("<>"), _NULL),
    )
    size = where(FROM, extract(ev_rest, r"size=(?P<s>\d+)")).cast(pa.int64())
    msgid = where(FROM, extract(ev_rest, r"msgid=(?P<m><[^>]*>|[^,\s]*)"))
    client_ip = pc.if_else(
        pa.array(is_from | (ev_kind == REJECT)), extract(relay, r"\[(?P<ip>[^\]]+)\]"), _NULL
    )
    rcpts = pc.coalesce(
        where(TO, extract(ev_rest, r"^to=(?P<t>.*?), (?:ctladdr|delay|xdelay|mailer|pri)=")),
        where(REJECT, extract(ev_rest, r"ruleset=check_rcpt, arg1=(?P<t><[^>]*>|[^,\s]*)")),
    )
    # A reject has no next hop: 'none' (as Postfix writes it), so it never counts as relayed.
    relay_host = pc.coalesce(
        where(
            TO, pc.utf8_rtrim(element(pc.split_pattern(relay, " ", max_splits=1), 0), characters=".")
        ),
        pc.if_else(pa.array(ev_kind == REJECT), pa.scalar("none"), _NULL),
    )
    stat = extract(ev_rest, r"stat=(?P<s>.*)$")
    dsn_code = extract(ev_rest, r"dsn=(?P<d>[0-9.]+)")
    # stat= keeps a word ('Service unavailable'); with the DSN code it reads like a reply.
    coded = pc.fill_null(pc.match_substring_regex(stat, r"^(\d|Sent|Deferred|queued)"), False)
    to_resp = pc.if_else(
        pc.and_(pc.invert(coded), pc.is_valid(dsn_code)),
        pc.binary_join_element_wise(dsn_code, stat, " "),
        stat,
    )
    response = pc.coalesce(
        where(TO, to_resp),
        where(REJECT, extract(ev_rest, r"reject=(?P<r>.*)$")),
        where(DSN, extract(ev_rest, r": DSN: (?P<r>.*)$")),
    )
    status = pc.coalesce(
        where(TO, _status_word(stat)),
        pc.if_else(pa.array(ev_kind == REJECT), pa.scalar("rejected"), _NULL),
    )
    # '<QUEUEID>: <NEW QUEUEID>: DSN: ...': the event belongs to the new (bounce) message.
    new_qid = extract(ev_rest, r"^(?P<q>[0-9A-Za-z]{8,20}): DSN: ")
    ev_qid = pc.if_else(pa.array(ev_kind == DSN), new_qid, ev_qid)

    pos_take = pa.array(pos, pa.int64())
    events = pa.table(
        {
            "seq": pa.array(seq0 + pos, pa.int64()),
            "file_idx": pa.array(np.full(ne, file_idx, dtype=np.int32)),
            "line": pa.array(line_no[pos]),
            "ts": p.ts.take(pos_take),
            "host": p.host.take(pos_take),
            "qid": ev_qid.cast(_STR),
            "kind": pa.array(ev_kind, pa.int8()),
            "p1": p1,
            "size": size,
            "message_id": msgid,
            "client_ip": client_ip,
            "rcpts": rcpts,
            "relay_host": relay_host,
            "status": status,
            "response": response,
        },
        schema=_EVENT_SCHEMA,
    )
    return n, events, skipped, rejects


class Correlator:
    """Events of messages still open, carried from block to block."""

    def __init__(self, targets: tuple[str, ...]):
        self.pending = _EVENT_SCHEMA.empty_table()
        self.targets = _target_regex(targets)
        self.max_ts: int | None = None

    def feed(self, events: pa.Table, final: bool = False) -> tuple[pa.Table | None, np.ndarray]:
        if len(events):
            mx = pc.max(events.column("ts")).value
            if mx is not None:
                self.max_ts = mx if self.max_ts is None else max(self.max_ts, mx)
        ev = pa.concat_tables([self.pending, events]) if len(self.pending) else events
        if not len(ev):
            return None, np.zeros(0, np.int32)
        key = pc.binary_join_element_wise(ev.column("host"), ev.column("qid"), "\x1f")
        gid = pc.dictionary_encode(pc.fill_null(key, "")).combine_chunks().indices.to_numpy()
        order = np.lexsort((ev.column("seq").to_numpy(), gid))
        ev = ev.take(pa.array(order))
        gid = gid[order]
        boundary = np.ones(len(ev), dtype=bool)
        boundary[1:] = gid[1:] != gid[:-1]
        starts = np.flatnonzero(boundary)
        msg = np.cumsum(boundary) - 1
        ts = ev.column("ts").cast(pa.int64()).fill_null(0).to_numpy()
        last_ts = np.maximum.reduceat(ts, starts)
        st = ev.column("status").combine_chunks()
        # Last status of the message: deferred/queued means Sendmail will try again.
        has_status = _mask(pc.is_valid(st))
        idx = np.where(has_status, np.arange(len(ev)), -1)
        last_status_idx = np.maximum.reduceat(idx, starts)
        last_status = st.take(pa.array(np.where(last_status_idx >= 0, last_status_idx, 0)))
        final_status = (last_status_idx >= 0) & ~_mask(
            pc.is_in(last_status, pa.array(["deferred", "queued"]))
        )
        now = self.max_ts or 0
        closed = (
            final
            | (final_status & (last_ts < now - _FINAL_IDLE_US))
            | (last_ts < now - _OPEN_HORIZON_US)
        )
        kind = ev.column("kind").to_numpy()
        has_from = np.maximum.reduceat(np.isin(kind, (FROM, DSN)).astype(np.int8), starts) > 0
        closed_ev = closed[msg]
        self.pending = ev.filter(pa.array(~closed_ev))
        if not closed.any():
            return None, np.zeros(0, np.int32)
        done = ev.filter(pa.array(closed_ev))
        rejected = _mask(pc.equal(last_status, "rejected"))
        complete = ((has_from | rejected) & final_status)[closed]
        return self._messages(done, msg[closed_ev], complete), done.column("file_idx").to_numpy()

    def _messages(self, ev: pa.Table, msg: np.ndarray, complete: np.ndarray) -> pa.Table:
        boundary = np.ones(len(msg), dtype=bool)
        boundary[1:] = msg[1:] != msg[:-1]
        m = np.cumsum(boundary) - 1
        ev = ev.append_column("m", pa.array(m))
        firsts = ["seq", "file_idx", "line", "ts", "host", "qid", "p1", "size", "message_id",
                  "client_ip"]
        agg = ev.group_by("m", use_threads=False).aggregate(
            [(c, "first") for c in firsts] + [("rcpts", "distinct")]
        ).sort_by("m")
        kinds = ev.column("kind").to_numpy()
        n_msg = len(agg)
        is_dsn = np.zeros(n_msg, dtype=bool)
        is_dsn[m[kinds == DSN]] = True
        # The delivery that stands for the message: the last one to a relay target, else last.
        has = _mask(pc.is_valid(ev.column("status")))
        d = ev.filter(pa.array(has))
        dm = m[has]
        target = _mask(pc.match_substring_regex(d.column("relay_host"), self.targets))
        order = np.lexsort((d.column("seq").to_numpy(), target.astype(np.int8), dm))
        last = np.ones(len(order), dtype=bool)
        last[:-1] = dm[order][1:] != dm[order][:-1]
        where_ = np.full(n_msg, -1, dtype=np.int64)
        where_[dm[order][last]] = order[last]
        have = pa.array(where_ >= 0)
        safe = pa.array(np.where(where_ >= 0, where_, 0))

        def pick(c: str) -> pa.Array:
            if not len(d):
                return pa.nulls(n_msg, _STR)
            return pc.if_else(have, d.column(c).combine_chunks().take(safe), _NULL)

        lists = _drop_list_nulls(agg.column("rcpts_distinct").combine_chunks())
        joined = pc.binary_join(lists, ",")
        parts = pc.split_pattern(joined, ",")
        flat = pc.utf8_trim(pc.list_flatten(parts), characters="<> ")
        rcpts = _drop_list_nulls(
            pa.ListArray.from_arrays(parts.offsets, flat)
        ) if len(flat) else pa.array([[]] * n_msg, pa.list_(_STR))
        p1 = agg.column("p1_first")
        null_sender = pc.fill_null(pc.equal(p1, "<>"), False)
        is_ndr = pc.if_else(
            pa.array(is_dsn), True, pc.if_else(null_sender, pa.scalar(None, pa.bool_()), False)
        )
        return pa.table(
            {
                "seq": agg.column("seq_first"),
                "file_idx": agg.column("file_idx_first"),
                "line": agg.column("line_first"),
                "ts": agg.column("ts_first"),
                "host": agg.column("host_first"),
                "qid": agg.column("qid_first"),
                "p1": p1,
                "size": agg.column("size_first"),
                "message_id": agg.column("message_id_first"),
                "client_ip": agg.column("client_ip_first"),
                "recipients": rcpts,
                "relay_host": pick("relay_host"),
                "status": pick("status"),
                "response": pick("response"),
                "is_ndr": is_ndr,
                "incomplete": pa.array(~complete),
            }
        )


def _to_batch(msgs: pa.Table, sources: list[Source], ctx: IngestContext) -> pa.RecordBatch:
    n = len(msgs)
    return make_messages(
        {
            "ts": msgs.column("ts"),
            **origin_columns(NAME, sources, msgs.column("file_idx"), msgs.column("host"), ctx.options.host),
            "source_line": msgs.column("line"),
            "message_id": msgs.column("message_id"),
            "queue_id": msgs.column("qid"),
            "p1_sender": msgs.column("p1"),
            "client_ip": msgs.column("client_ip"),
            "relay_host": msgs.column("relay_host"),
            "recipients": msgs.column("recipients"),
            "status": msgs.column("status"),
            "response": msgs.column("response"),
            "is_ndr": msgs.column("is_ndr"),
            "size": msgs.column("size"),
            "incomplete": msgs.column("incomplete"),
        },
        n,
    )


def read(sources: list[Source], ctx: IngestContext) -> Iterator[pa.RecordBatch]:
    opts = ctx.options
    ordered = order_by_time(sources, year=opts.year, tz=opts.tz)
    block_bytes = max(1024, min(opts.chunk_bytes, 16 * 1024 * 1024))
    corr = Correlator(tuple(opts.relay_targets))

    def emit(result) -> Iterator[pa.RecordBatch]:
        msgs, files = result
        if msgs is None or not len(msgs):
            return
        for i, c in enumerate(np.bincount(files, minlength=len(ordered))):
            if c:
                ctx.parsed(ordered[i].name, NAME, int(c))
        yield _to_batch(msgs.sort_by("seq"), ordered, ctx)

    seq0 = 0
    for fi, src in enumerate(ordered):
        clock = file_clock(src)
        ctx.lines_read(src.name, NAME, 0)
        for first_line, lines in iter_line_blocks(src, block_bytes):
            n, events, skipped, rejects = parse_block(
                lines, first_line, fi, seq0, clock, opts.year, opts.tz
            )
            seq0 += n
            ctx.lines_read(src.name, NAME, n)
            for why, c in skipped.items():
                ctx.skipped(src.name, NAME, why, c)
            if rejects is not None:
                ctx.reject_lines(NAME, src.name, *rejects)
            yield from emit(corr.feed(events))
    yield from emit(corr.feed(_EVENT_SCHEMA.empty_table(), final=True))
