"""Exchange Server SMTP protocol logs: `SmtpSend\\SEND*.LOG` and `SmtpReceive\\RECV*.LOG`.

    2026-11-02T08:15:02.301Z,Outbound to Office 365 - 6f1d2c4e-...,08DE1A2B3C4D5E01,7,10.0.0.10:52044,52.101.194.18:25,*, CN=mail.contoso.com CN=R12, O=Let's Encrypt, C=US 04A1B2 9F3B2C 2026-09-01T00:00:00.000Z 2026-11-30T00:00:00.000Z mail.contoso.com;autodiscover.contoso.com,Sending certificate Subject Issuer name Serial number Thumbprint Not before Not after Subject alternate names

One line per SMTP event (`+` connect, `-` disconnect, `>` sent by this server, `<` received,
`*` information); `session-id` + `sequence-number` order the lines of one SMTP session, and
sessions interleave (Microsoft Learn, "Protocol logging"). A session is rebuilt from its lines and
cut into messages at `*,sending message with RecordId <n> and InternetMessageId <id>` (send logs)
or `MAIL FROM` (receive logs). Per message: MAIL FROM (P1, `<>` null sender), RCPT TO, the
`Sending certificate` line (subject CN and SAN names, parsed from the right because the DNs
contain spaces and commas, as ExchangeLogs' Expand-LogRecordSmtp.ps1 does), the remote's banner
host and endpoint, and the reply that decided the message (`550 5.7.64 TenantAttribution; Relay
Access Denied [...]`).

Send-log messages go to the next hop the session connected to: the host name in the remote's
`220` banner (Exchange Online greets as `*.mail.protection.outlook.com`), else the remote address.
Receive-log messages were received by this server; their `relay_host` is this server's own
banner name, so the engine counts them as not relayed (the send log or tracking log shows where
they went next). When tracking logs are ingested in the same run, `exchange_tracking` reads the
protocol logs itself and joins them (see `messages_for_join`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..normalize import extract
from ..workdir import ROW_GROUP
from ._exchange_common import (
    glob_regex,
    header_lines,
    iter_blocks,
    null_if_empty,
    parse_utc,
    split_fields,
    stand_in_target,
)
from .base import IngestContext, Source, decode_head, make_messages

NAME = "exchange-protocol"
DESCRIPTION = (
    "Exchange Server SMTP send/receive protocol log: '#Log-type: SMTP Send|Receive Protocol Log' "
    "or a #Fields line with session-id,sequence-number"
)

FIELDS = [
    "date-time", "connector-id", "session-id", "sequence-number", "local-endpoint",
    "remote-endpoint", "event", "data", "context",
]
EXPECTED = "an Exchange SMTP protocol log (#Fields: " + ",".join(FIELDS) + ")"
HOLD_SECONDS = 3600  # a session idle this long (in log time) is finished even without '-'

# Line kinds (int8) kept for the session rebuild.
OTHER, CONNECT, DISCONNECT, MSGID, MAIL, RCPT, REPLY, CERT, BANNER = range(9)

_MSGID_RE = r"(?i)^sending message with RecordId (?P<r>\d+) and InternetMessageId (?P<m>.*)$"
# Subject Issuer Serial Thumbprint NotBefore NotAfter SANs, read from the right.
_CERT_RE = (
    r"^\s*(?P<dn>.*\S)\s+(?P<serial>\S+)\s+(?P<thumb>\S+)\s+\d{4}-\d\d-\d\dT\S+\s+"
    r"\d{4}-\d\d-\d\dT\S+(?:\s+(?P<san>\S*))?\s*$"
)


def detect(head: bytes) -> bool:
    hdr = header_lines(head)
    if "protocol log" in hdr.get("log-type", "").lower():
        return True
    if "fields" in hdr:
        return split_fields(hdr["fields"])[:4] == FIELDS[:4]
    # A headerless excerpt: 9 fields with the session-id/sequence-number shape.
    first = decode_head(head).lstrip("\ufeff").split("\n", 1)[0]
    parts = first.split(",")
    return (
        len(parts) >= 9 and len(parts[0]) >= 20 and parts[0][4] == "-"
        and parts[3].isdigit() and parts[6] in ("+", "-", ">", "<", "*")
    )


def _classify(t: pa.Table, direction: str) -> pa.Array:
    """Kind of each line, vectorized. In a send log this server is the SMTP client: it sends
    commands ('>') and receives replies ('<'); in a receive log it is the other way round."""
    ev = t.column("event").combine_chunks()
    data = pc.utf8_trim_whitespace(t.column("data").combine_chunks())
    ctxt = t.column("context").combine_chunks()
    client, server = (">", "<") if direction == "send" else ("<", ">")
    is_cmd = pc.equal(ev, client)
    is_reply = pc.and_(pc.equal(ev, server), pc.match_substring_regex(data, r"^\d{3}([ -]|$)"))
    upper = pc.utf8_upper(pc.utf8_slice_codeunits(data, 0, 10))
    kind = np.full(t.num_rows, OTHER, dtype=np.int8)

    def put(mask: pa.Array, code: int) -> None:
        kind[pc.fill_null(mask, False).to_numpy(zero_copy_only=False)] = code

    put(pc.equal(ev, "+"), CONNECT)
    put(pc.equal(ev, "-"), DISCONNECT)
    put(is_reply, REPLY)
    put(pc.and_(is_reply, pc.starts_with(data, "220")), BANNER)
    put(pc.and_(is_cmd, pc.starts_with(upper, "MAIL FROM:")), MAIL)
    put(pc.and_(is_cmd, pc.starts_with(upper, "RCPT TO:")), RCPT)
    info = pc.equal(ev, "*")
    # Information lines carry their text in `context` ('*,,sending message with RecordId ...').
    put(pc.and_(info, pc.starts_with(ctxt, "sending message with RecordId", ignore_case=True)),
        MSGID)
    # Our certificate as presented to the peer: what Exchange Online's connector checks.
    which = "Sending certificate" if direction == "send" else "Remote certificate"
    put(pc.and_(info, pc.starts_with(ctxt, which)), CERT)
    return pa.array(kind)


def _direction(headers: dict[str, str], t: pa.Table) -> str:
    lt = headers.get("log-type", "").lower()
    if "send" in lt:
        return "send"
    if "receive" in lt:
        return "receive"
    # No header: the side that sends MAIL FROM is the client.
    data = pc.utf8_upper(pc.utf8_slice_codeunits(t.column("data").combine_chunks(), 0, 10))
    mail = pc.starts_with(data, "MAIL FROM:")
    sent = pc.sum(pc.and_(mail, pc.equal(t.column("event"), ">")).cast(pa.int64())).as_py() or 0
    return "send" if sent else "receive"


def _group_of(src: Source) -> str:
    # Session ids are unique per server; logs of several servers are told apart by host or folder.
    return src.host or str(src.path.parent)


def _lines_of_block(block, src: Source, ctx: IngestContext) -> pa.Table | None:
    t = block.table
    for f in FIELDS:
        if f not in t.column_names:
            t = t.append_column(f, pa.array([""] * t.num_rows, pa.string()))
    ts, bad_ts = parse_utc(t.column("date-time"))
    seq_s = t.column("sequence-number").combine_chunks()
    bad_seq = pc.invert(pc.fill_null(pc.match_substring_regex(seq_s, r"^\d+$"), False))
    sid = t.column("session-id").combine_chunks()
    bad_sid = pc.equal(pc.utf8_length(sid), 0)
    bad = pc.or_(pc.or_(bad_ts, bad_seq), bad_sid).to_numpy(zero_copy_only=False)
    lines, nlines = block.lines, block.nlines
    if bad.any():
        idx = np.flatnonzero(bad)
        reasons = np.where(
            bad_ts.to_numpy(zero_copy_only=False)[idx], "date-time is not an ISO 8601 UTC time",
            "session-id or sequence-number missing or not a number",
        )
        raws = [",".join(r) for r in zip(*[t.column(f).take(idx).to_pylist() for f in FIELDS],
                                         strict=True)]
        ctx.reject_lines(NAME, src.name, lines[idx].tolist(), reasons.tolist(), raws)
        ctx.skipped(src.name, NAME, "continuation line of a rejected row",
                    int(nlines[idx].sum()) - len(idx))
        keep = pa.array(~bad)
        t, ts, seq_s, sid = t.filter(keep), ts.filter(keep), seq_s.filter(keep), sid.filter(keep)
        lines, nlines = lines[~bad], nlines[~bad]
    if not t.num_rows:
        return None
    direction = _direction(block.headers, t)
    kind = _classify(t, direction)
    useful = pc.not_equal(kind, OTHER)
    none = pa.scalar(None, pa.string())
    n = t.num_rows
    return pa.table({
        "session": pc.binary_join_element_wise(pa.array([_group_of(src)] * n), sid, "|"),
        "session_id": sid,
        "seq": seq_s.cast(pa.int64()),
        "ts": ts,
        "kind": kind,
        "direction": pa.array([direction] * n),
        "data": pc.if_else(
            useful,
            pc.utf8_trim_whitespace(pc.if_else(pc.equal(kind, MSGID),
                                               t.column("context").combine_chunks(),
                                               t.column("data").combine_chunks())),
            none,
        ),
        "remote": null_if_empty(t.column("remote-endpoint").combine_chunks()),
        "connector": null_if_empty(t.column("connector-id").combine_chunks()),
        "file": pa.array([src.name] * n),
        "host": pa.array([src.host or ctx.options.host] * n, pa.string()),
        "line": pa.array(lines),
        "nlines": pa.array(nlines),
    })


def _read_lines(sources: list[Source], ctx: IngestContext) -> Iterator[pa.Table]:
    """Session lines in file order, ready for `_sessions_to_messages`, flushed as sessions end."""
    pending: pa.Table | None = None
    for src in sorted(sources, key=lambda s: (_group_of(s), s.name)):
        for block in iter_blocks(src, ctx, NAME, {9: FIELDS}, EXPECTED):
            t = _lines_of_block(block, src, ctx)
            if t is None:
                continue
            pending = t if pending is None else pa.concat_tables([pending, t])
            done, pending = _split_finished(pending)
            if done is not None:
                yield done
    if pending is not None and pending.num_rows:
        yield pending


def _split_finished(t: pa.Table) -> tuple[pa.Table | None, pa.Table]:
    """Sessions that disconnected, or went quiet for an hour of log time, are finished."""
    g = t.group_by("session").aggregate([("ts", "max")])
    disc = t.filter(pc.equal(t.column("kind"), DISCONNECT)).column("session").unique()
    newest = pc.max(t.column("ts")).as_py()
    if newest is None:
        return None, t
    cutoff = pa.scalar(newest, t.schema.field("ts").type).value - HOLD_SECONDS * 1_000_000
    idle = pc.less(g.column("ts_max").cast(pa.int64()), cutoff)
    closed = pc.or_(pc.is_in(g.column("session"), value_set=disc), idle)
    finished = g.column("session").filter(closed)
    if not len(finished):
        return None, t
    mask = pc.is_in(t.column("session"), value_set=finished.combine_chunks())
    return t.filter(mask), t.filter(pc.invert(mask))


def _message_starts(t: pa.Table) -> np.ndarray:
    """A message starts at 'sending message with RecordId' or at a MAIL FROM that does not
    directly follow one (receive logs have no RecordId line)."""
    kind = t.column("kind").to_numpy()
    sess = t.column("session").combine_chunks()
    new_sess = np.ones(len(kind), dtype=bool)
    if len(kind) > 1:
        new_sess[1:] = pc.not_equal(sess[1:], sess[:-1]).to_numpy(zero_copy_only=False)
    boundary = np.flatnonzero((kind == MSGID) | (kind == MAIL))
    start = np.zeros(len(kind), dtype=bool)
    if len(boundary):
        bk = kind[boundary]
        # previous boundary in the same session
        prev_kind = np.concatenate([[OTHER], bk[:-1]])
        sess_id = np.cumsum(new_sess)
        same = np.concatenate([[False], sess_id[boundary][1:] == sess_id[boundary][:-1]])
        follows_msgid = same & (prev_kind == MSGID) & (bk == MAIL)
        start[boundary[~follows_msgid]] = True
    return start, new_sess


def _sessions_to_messages(t: pa.Table, ctx: IngestContext) -> pa.Table | None:
    """Finished sessions -> one row per message (plus the session key for joins)."""
    t = t.sort_by([("session", "ascending"), ("seq", "ascending"), ("line", "ascending")])
    start, new_sess = _message_starts(t)
    seg = np.cumsum(start | new_sess)
    has_msg_seg = np.zeros(seg.max() + 1 if len(seg) else 1, dtype=bool)
    has_msg_seg[seg[start]] = True
    in_msg = has_msg_seg[seg]  # line belongs to a message segment (not the session preamble)
    t = t.append_column("seg", pa.array(seg)).append_column("in_msg", pa.array(in_msg))
    _account(t, ctx)
    if not start.any():
        return None
    kind = t.column("kind")
    data = t.column("data")
    # Session-level facts: certificate, banner host, endpoint, connector, whether it ended.
    cert = _cert_names(data.filter(pc.equal(kind, CERT)))
    certs = pa.table({"session": t.column("session").filter(pc.equal(kind, CERT)), "cert": cert})
    banner = extract(data.filter(pc.equal(kind, BANNER)).combine_chunks(), r"^220[ -](?P<h>[^\s]+)")
    banners = pa.table({"session": t.column("session").filter(pc.equal(kind, BANNER)),
                        "banner": banner})
    t = t.append_column("ended", pc.equal(kind, DISCONNECT))
    sess = t.group_by("session", use_threads=False).aggregate([
        ("remote", "first"), ("connector", "first"), ("ended", "any"), ("host", "first"),
        ("direction", "first"), ("session_id", "first"),
    ])
    sess = lookup_join(sess, "session", certs.group_by("session", use_threads=False).aggregate(
        [("cert", "first")]))
    sess = lookup_join(sess, "session", banners.group_by("session", use_threads=False).aggregate(
        [("banner", "first")]))
    # Message-level facts.
    m = t.filter(pa.array(in_msg))
    mk = m.column("kind")
    md = m.column("data")
    seg_m = m.column("seg")
    mails = m.filter(pc.equal(mk, MAIL))
    mail_d = mails.column("data").combine_chunks()
    p1 = pa.table({
        "seg": mails.column("seg"),
        "p1": extract(mail_d, r"(?i)^MAIL FROM:\s*(?P<a><[^>]*>|[^\s]+)"),
        "size": extract(mail_d, r"(?i)\sSIZE=(?P<s>\d+)"),
    }).group_by("seg", use_threads=False).aggregate([("p1", "first"), ("size", "first")])
    rc = m.filter(pc.equal(mk, RCPT))
    rcpt = pa.table({
        "seg": rc.column("seg"),
        "rcpt": extract(rc.column("data").combine_chunks(), r"(?i)^RCPT TO:\s*<?(?P<a>[^<>\s]+)>?"),
    }).group_by("seg", use_threads=False).aggregate([("rcpt", "list")])
    ids = m.filter(pc.equal(mk, MSGID))
    idx = pc.extract_regex(ids.column("data").combine_chunks(), _MSGID_RE)
    mid = pa.table({"seg": ids.column("seg"), "record": idx.field("r"), "mid": idx.field("m")})
    mid = mid.group_by("seg", use_threads=False).aggregate([("record", "first"), ("mid", "first")])
    rep = m.filter(pc.equal(mk, REPLY))
    rep_d = rep.column("data").combine_chunks()
    code = pc.utf8_slice_codeunits(rep_d, 0, 1)
    failing = pc.is_in(code, value_set=pa.array(["4", "5"]))
    final_ok = pc.and_(pc.starts_with(rep_d, "250"),
                       pc.invert(pc.match_substring(rep_d, "Resetting", ignore_case=True)))
    replies = pa.table({"seg": rep.column("seg"), "reply": rep_d, "fail": failing, "ok": final_ok})
    fail = replies.filter(failing).group_by("seg", use_threads=False).aggregate([("reply", "last")])
    ok = replies.filter(final_ok).group_by("seg", use_threads=False).aggregate([("reply", "last")])
    fail = fail.rename_columns(["seg", "fail_reply_last"])
    ok = ok.rename_columns(["seg", "ok_reply_last"])
    base = m.group_by("seg", use_threads=False).aggregate([
        ("ts", "min"), ("session", "first"), ("file", "first"), ("line", "min"),
    ])
    del seg_m, md
    out = base
    for right in (p1, rcpt, mid, fail, ok):
        out = lookup_join(out, "seg", right)
    out = lookup_join(out, "session_first", sess.rename_columns(
        ["session_first" if c == "session" else c for c in sess.column_names]))
    out = out.sort_by([("file_first", "ascending"), ("line_min", "ascending")])
    return _to_columns(out, ctx)


def lookup_join(left: pa.Table, key: str, right: pa.Table) -> pa.Table:
    """Left join on a unique key, keeping left's order; works for list columns too (Acero's
    join does not carry list columns)."""
    pos = pc.index_in(left.column(key), value_set=right.column(key).combine_chunks())
    for name in right.column_names:
        if name != key:
            left = left.append_column(name, right.column(name).take(pos))
    return left


def _account(t: pa.Table, ctx: IngestContext) -> None:
    """Lines of sessions that carried a message are part of those messages; sessions without
    one (probes, failed connects, AUTH failures) are documented skips."""
    has = t.group_by("session").aggregate([("in_msg", "any")])
    t = t.join(has, "session", join_type="left outer")
    per = t.group_by(["file", "in_msg_any"]).aggregate([("nlines", "sum")])
    for f, used, n in zip(per.column("file").to_pylist(), per.column("in_msg_any").to_pylist(),
                          per.column("nlines_sum").to_pylist(), strict=True):
        if used:
            ctx.parsed(f, NAME, n)
        else:
            ctx.skipped(f, NAME, "SMTP session without a message (probe, failed connect or AUTH)", n)


def _cert_names(data: pa.ChunkedArray | pa.Array) -> pa.Array:
    """'CN=a, O=x CN=ca, O=y <serial> <thumb> <from> <to> a;b' -> 'a;b' (subject CN first)."""
    data = data.combine_chunks() if isinstance(data, pa.ChunkedArray) else data
    if not len(data):
        return pa.array([], pa.string())
    parts = pc.extract_regex(data, _CERT_RE)
    dn = pc.if_else(pc.is_valid(parts), parts.field("dn"), pa.scalar(None, pa.string()))
    san = pc.if_else(pc.is_valid(parts), parts.field("san"), pa.scalar(None, pa.string()))
    # The issuer DN starts at the last ' CN='; the subject is what comes before it.
    subject = pc.coalesce(extract(dn, r"^(?P<s>.*\S)\s+CN=.*$"), dn)
    cn = extract(subject, r"(?:^|,\s*)CN=(?P<cn>[^,]+)")
    names = pc.binary_join_element_wise(
        pc.fill_null(pc.utf8_trim_whitespace(cn), ""), pc.fill_null(san, ""), ";"
    )
    lists = pc.split_pattern(names, ";")
    flat = pc.utf8_lower(pc.utf8_trim_whitespace(pc.list_flatten(lists)))
    parents = pc.list_parent_indices(lists)
    # distinct names per certificate, subject CN first
    t = pa.table({"p": parents, "n": flat, "i": pa.array(np.arange(len(flat)))})
    t = t.filter(pc.greater(pc.utf8_length(t.column("n")), 0))
    t = t.group_by(["p", "n"]).aggregate([("i", "min")]).sort_by("i_min")
    joined = t.group_by("p", use_threads=False).aggregate([("n", "list")])
    joined = pa.table({"p": joined.column("p"), "names": pc.binary_join(joined.column("n_list"), ";")})
    pos = pa.table({"p": pa.array(np.arange(len(data)), pa.int64())})
    res = pos.join(joined.cast(pa.schema([("p", pa.int64()), ("names", pa.string())])), "p",
                   join_type="left outer").sort_by("p")
    return res.column("names").combine_chunks()


def _to_columns(out: pa.Table, ctx: IngestContext) -> pa.Table:
    n = out.num_rows
    direction = out.column("direction_first").combine_chunks()
    send = pc.equal(direction, "send")
    remote_ip = extract(out.column("remote_first").combine_chunks(),
                        r"^\[?(?P<ip>[^\]]*?)\]?:\d+$")
    remote_ip = pc.coalesce(remote_ip, out.column("remote_first").combine_chunks())
    connector = out.column("connector_first").combine_chunks()
    o365 = pc.fill_null(pc.match_substring_regex(connector, r"(?i)office ?365"), False)
    banner = out.column("banner_first").combine_chunks()
    targets = ctx.options.relay_targets
    stand_in = pa.scalar(stand_in_target(targets))
    banner_is_target = pc.fill_null(pc.match_substring_regex(banner, glob_regex(targets)), False)
    send_hop = pc.if_else(
        banner_is_target, banner,
        pc.if_else(o365, stand_in, pc.coalesce(banner, remote_ip)),
    )
    # Receive logs: this server received the message; its own banner names it.
    recv_hop = pc.coalesce(banner, out.column("host_first").combine_chunks(), pa.scalar("local"))
    fail = out.column("fail_reply_last").combine_chunks()
    ok = out.column("ok_reply_last").combine_chunks()
    code = pc.utf8_slice_codeunits(fail, 0, 1)
    status = pc.if_else(
        pc.is_valid(fail), pc.if_else(pc.equal(code, "5"), "rejected", "deferred"),
        pc.if_else(pc.is_valid(ok), "sent", pa.scalar(None, pa.string())),
    )
    status = pc.if_else(send, status, pc.if_else(pc.is_valid(fail), status, "received"))
    p1 = out.column("p1_first").combine_chunks()
    recipients = out.column("rcpt_list").combine_chunks()
    recipients = pc.if_else(pc.is_null(recipients), pa.scalar([], recipients.type), recipients)
    ended = pc.fill_null(out.column("ended_any").combine_chunks(), False)
    return pa.table({
        "ts": out.column("ts_min"),
        "source_format": pa.array([NAME] * n),
        "source_file": out.column("file_first"),
        "source_line": out.column("line_min"),
        "host": out.column("host_first"),
        # Send logs name it before MAIL FROM; receive logs only in the reply to DATA.
        "message_id": pc.if_else(send, out.column("mid_first").combine_chunks(),
                                 extract(ok, r"^250[ -]2\.6\.0 (?P<m><[^>\s]+>)")),
        "queue_id": out.column("record_first"),
        "p1_sender": pc.if_else(pc.is_null(p1), pa.scalar(None, pa.string()), p1),
        "client_ip": pc.if_else(send, pa.scalar(None, pa.string()), remote_ip),
        "tls_cert": pc.if_else(send, out.column("cert_first").combine_chunks(),
                               pa.scalar(None, pa.string())),
        "relay_host": pc.if_else(send, send_hop, recv_hop),
        "recipients": recipients,
        "status": status,
        "response": pc.coalesce(fail, ok),
        "is_ndr": pc.fill_null(pc.equal(p1, "<>"), False),
        "size": out.column("size_first").combine_chunks().cast(pa.int64()),
        "incomplete": pc.invert(ended),
        # for the tracking join (not messages columns)
        "_session": out.column("session_id_first"),
        "_direction": direction,
    })


def _messages(sources: list[Source], ctx: IngestContext) -> Iterator[pa.Table]:
    for lines in _read_lines(sources, ctx):
        msgs = _sessions_to_messages(lines, ctx)
        if msgs is not None and msgs.num_rows:
            yield msgs


def to_batch(t: pa.Table) -> pa.RecordBatch:
    cols = {c: t.column(c).combine_chunks() for c in t.column_names if not c.startswith("_")}
    return make_messages(cols, t.num_rows)


def messages_for_join(sources: list[Source], ctx: IngestContext) -> pa.Table | None:
    """Every protocol-log message of `sources` (lines accounted as usual), with `_session` and
    `_direction` for exchange_tracking's join. Memory: one row per message."""
    tables = list(_messages(sources, ctx))
    return pa.concat_tables(tables) if tables else None


def read(sources: list[Source], ctx: IngestContext) -> Iterator[pa.RecordBatch]:
    all_sources = getattr(ctx, "all_sources", None) or {}
    if all_sources.get("exchange-tracking"):
        # The tracking reader owns these files in this run: it joins certificates and replies
        # into its rows and emits the protocol-only messages itself (no double counting).
        return
    if not _both_directions(sources):
        for t in _messages(sources, ctx):
            yield to_batch(t)
        return
    tables = list(_messages(sources, ctx))  # one row per message, as for the tracking join
    if tables:
        merged = _merge_directions(pa.concat_tables(tables))
        for batch in merged.to_batches(max_chunksize=ROW_GROUP):
            yield to_batch(pa.Table.from_batches([batch]))


def _both_directions(sources: list[Source]) -> bool:
    """Receive and send logs among the sources (from their '#Log-type' headers)."""
    kinds = {d for src in sources for d in ("Send", "Receive") if f"SMTP {d} Protocol Log".encode() in src.head(4096)}
    return len(kinds) == 2


def _merge_directions(t: pa.Table) -> pa.Table:
    """A message an Exchange server received (receive log) and passed on (send log) appears
    in both logs, under the same Message-ID: keep the send-log row, which is the one relayed
    onwards, and give it the client IP the receive log saw; drop the receive-log row."""
    send = pc.equal(t.column("_direction"), "send")
    mid = t.column("message_id").combine_chunks()
    received = t.filter(pc.invert(send))
    from_client = received.column("client_ip").take(pc.index_in(mid, value_set=received.column("message_id").combine_chunks()))
    client = pc.if_else(send, pc.coalesce(t.column("client_ip").combine_chunks(), from_client), t.column("client_ip").combine_chunks())
    t = t.set_column(t.schema.get_field_index("client_ip"), "client_ip", client)
    passed_on = pc.is_in(mid, value_set=pc.unique(mid.filter(send)).drop_null())
    return t.filter(pc.invert(pc.and_(pc.invert(send), pc.fill_null(passed_on, False))))
