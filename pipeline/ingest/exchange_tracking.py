"""Exchange Server message tracking logs (`TransportRoles\\Logs\\MessageTracking\\MSGTRK*.LOG`).

    2026-11-02T08:21:41.377Z,10.0.0.10,exch01,52.101.194.18,contoso-com.mail.protection.outlook.com,,Apps to Office 365,SMTP,FAIL,1004,<20261102082139.5E2A1C0F@erp01.corp.local>,...,orders@fabrikam.com,550 5.7.64 TenantAttribution; Relay Access Denied [...],48211,1,,,Purchase order PO-48211,erp-alerts@contoso.com,scanner@erp.corp.local,...

UTF-8 with BOM, CSV quoting, columns named by the file's `#Fields:` line (Exchange 2010 writes 26
fields, 2013 and later 30: Microsoft Learn, "Message tracking"). `return-path` is the envelope
sender P1 (`<>` for the null sender), `sender-address` the Sender:/From: header P2.

The events of one message (same `internal-message-id` on one server) collapse into one row. The
row describes the hop that matters for relay: the SEND / SENDEXTERNAL (or its FAIL / DEFER) to
Exchange Online — a send connector named `Outbound to Office 365 - <guid>` (the Hybrid wizard's
name) or a next hop matching relay.targets. A message that never went there still becomes a row,
with its real next hop (another server, or this server for local delivery), so the engine counts
it as not relayed. A message whose events end before it left (still queued at the end of the
logs) is `incomplete` with no next hop. Server-generated NDRs (source DSN, `<>` return-path) are
`is_ndr`.

When SMTP send protocol logs of the server are in the same run, the rows gain the certificate
exch01 presented (`tls_cert`) and the remote reply (`response`) from them, joined on the
Internet Message-ID nearest in time; protocol-log messages that match no tracking row are emitted
as they are (exchange_protocol rows).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import exchange_protocol
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

NAME = "exchange-tracking"
DESCRIPTION = (
    "Exchange Server message tracking log (MSGTRK*.LOG): '#Log-type: Message Tracking Log' or a "
    "#Fields line starting date-time,client-ip,...,event-id"
)

FIELDS_2013 = [
    "date-time", "client-ip", "client-hostname", "server-ip", "server-hostname", "source-context",
    "connector-id", "source", "event-id", "internal-message-id", "message-id",
    "network-message-id", "recipient-address", "recipient-status", "total-bytes",
    "recipient-count", "related-recipient-address", "reference", "message-subject",
    "sender-address", "return-path", "message-info", "directionality", "tenant-id",
    "original-client-ip", "original-server-ip", "custom-data", "transport-traffic-type",
    "log-id", "schema-version",
]
_NOT_2010 = {"network-message-id", "transport-traffic-type", "log-id", "schema-version"}
FIELDS_2010 = [f for f in FIELDS_2013 if f not in _NOT_2010]
EXPECTED = "an Exchange message tracking log (#Fields: date-time,client-ip,...,event-id,...)"
HOLD_US = 2 * 3600 * 1_000_000  # a message quiet for 2 h of log time is finished
SETTLE_US = 10 * 60 * 1_000_000  # one that already left (sent/delivered/failed): 10 min
JOIN_TOLERANCE = pd.Timedelta(minutes=15)

# How far a message got, best first: the row describes its events of the lowest rank.
RANK_TO_EXO, RANK_SENT, RANK_DELIVERED, RANK_ENDED, RANK_OPEN = 1, 2, 3, 4, 9
_SEND = ["SEND", "SENDEXTERNAL"]
_ATTEMPT = ["SEND", "SENDEXTERNAL", "FAIL", "DEFER"]
_DELIVER = ["DELIVER", "DUPLICATEDELIVER"]
_ENDED = ["FAIL", "DROP", "BADMAIL", "POISONMESSAGE", "DELIVERFAIL", "SUBMITFAIL", "HADISCARD",
          "RESUBMITFAIL", "MODERATORREJECT", "MODERATIONEXPIRE"]
# Hybrid Configuration Wizard names its send connector like this (elastic sample, Microsoft Learn).
_O365_CONNECTOR = r"(?i)office ?365|mail\.protection\.outlook\.com"


def detect(head: bytes) -> bool:
    hdr = header_lines(head)
    if hdr.get("log-type", "").lower().startswith("message tracking"):
        return True
    if "fields" in hdr:
        f = split_fields(hdr["fields"])
        return f[:2] == ["date-time", "client-ip"] and "event-id" in f
    # A headerless excerpt: 26 or 30 fields, ISO time first, a known source/event pair.
    first = decode_head(head).lstrip("\ufeff").split("\n", 1)[0]
    return len(first) > 24 and first[4:5] == "-" and first[10:11] == "T" and any(
        f",{s}," in first for s in ("SMTP", "STOREDRIVER", "DSN", "ROUTING", "AGENT", "QUEUE")
    ) and first.count(",") >= 25


def _group_of(src: Source) -> str:
    # internal-message-id is a per-server counter: logs of several servers are told apart by
    # --host / [[hosts]] or, failing that, by folder (one folder per server is the norm).
    return src.host or str(src.path.parent)


def _col(t: pa.Table, name: str) -> pa.Array:
    if name in t.column_names:
        return t.column(name).combine_chunks()
    return pa.array([""] * t.num_rows, pa.string())


def _events(block, src: Source, ctx: IngestContext, seq0: int) -> pa.Table | None:
    """Block rows -> compact event table; accounts parsed/skipped/rejected lines."""
    t = block.table
    lines, nlines = block.lines, block.nlines
    ts, bad = parse_utc(_col(t, "date-time"))
    bad_np = bad.to_numpy(zero_copy_only=False)
    if bad_np.any():
        idx = np.flatnonzero(bad_np)
        raws = pc.binary_join_element_wise(*[_col(t, f).take(idx) for f in t.column_names], ",")
        ctx.reject_lines(NAME, src.name, lines[idx].tolist(), "date-time is not an ISO 8601 UTC time",
                         raws)
        ctx.skipped(src.name, NAME, "continuation line of a rejected row",
                    int(nlines[idx].sum()) - len(idx))
    imid = pc.utf8_trim_whitespace(_col(t, "internal-message-id"))
    has_id = pc.greater(pc.utf8_length(imid), 0).to_numpy(zero_copy_only=False)
    keep = has_id & ~bad_np
    noise = ~has_id & ~bad_np
    ctx.skipped(src.name, NAME,
                "event without internal-message-id (NOTIFYMAPI, AGENTINFO and similar)",
                int(nlines[noise].sum()))
    ctx.parsed(src.name, NAME, int(nlines[keep].sum()))
    if not keep.any():
        return None
    k = pa.array(keep)
    t, ts, imid = t.filter(k), ts.filter(k), imid.filter(k)
    n = t.num_rows
    group = _group_of(src)
    return pa.table({
        "key": pc.binary_join_element_wise(pa.array([group] * n), imid, "|"),
        "seq": pa.array(np.arange(seq0, seq0 + n, dtype=np.int64)),
        "ts": ts,
        "event": pc.utf8_upper(pc.utf8_trim_whitespace(_col(t, "event-id"))),
        "source": pc.utf8_upper(pc.utf8_trim_whitespace(_col(t, "source"))),
        "server_host": null_if_empty(_col(t, "server-hostname")),
        "connector": null_if_empty(_col(t, "connector-id")),
        "context": null_if_empty(_col(t, "source-context")),
        "recipients": null_if_empty(_col(t, "recipient-address")),
        "rcpt_status": null_if_empty(_col(t, "recipient-status")),
        "message_id": null_if_empty(_col(t, "message-id")),
        "imid": imid,
        "subject": null_if_empty(_col(t, "message-subject")),
        "size": null_if_empty(_col(t, "total-bytes")),
        "p2": null_if_empty(_col(t, "sender-address")),
        "p1": null_if_empty(_col(t, "return-path")),
        "client_ip": pc.coalesce(null_if_empty(_col(t, "original-client-ip")),
                                 null_if_empty(_col(t, "client-ip"))),
        "file": pa.array([src.name] * n),
        "line": pa.array(block.lines[keep]),
        "host": pa.array([src.host or ctx.options.host] * n, pa.string()),
    })


def _rank(ev: pa.Table, targets: tuple[str, ...]) -> pa.Array:
    event = ev.column("event")
    hop = pc.fill_null(pc.match_substring_regex(ev.column("server_host"), glob_regex(targets)),
                       False)
    o365 = pc.fill_null(pc.match_substring_regex(ev.column("connector"), _O365_CONNECTOR), False)
    to_exo = pc.and_(pc.is_in(event, value_set=pa.array(_ATTEMPT)), pc.or_(hop, o365))
    rank = pc.if_else(to_exo, RANK_TO_EXO,
           pc.if_else(pc.is_in(event, value_set=pa.array(_SEND)), RANK_SENT,
           pc.if_else(pc.is_in(event, value_set=pa.array(_DELIVER)), RANK_DELIVERED,
           pc.if_else(pc.is_in(event, value_set=pa.array(_ENDED)), RANK_ENDED, RANK_OPEN))))
    return rank.cast(pa.int8())


def _collapse(ev: pa.Table, ctx: IngestContext) -> pa.Table:
    """Events of finished messages -> one row per message (order: first line)."""
    targets = ctx.options.relay_targets
    ev = ev.sort_by([("key", "ascending"), ("seq", "ascending")])
    ev = ev.append_column("rank", _rank(ev, targets))
    dsn = pc.equal(ev.column("source"), "DSN")
    ev = ev.append_column("ndr", pc.or_(dsn, pc.fill_null(
        pc.match_substring_regex(ev.column("p1"), r"^\s*<\s*>\s*$"), False)))
    receive = pc.equal(ev.column("event"), "RECEIVE")
    ev = ev.append_column("recv_ip", pc.if_else(receive, ev.column("client_ip"),
                                                pa.scalar(None, pa.string())))
    ev = ev.append_column("recv_host", pc.if_else(receive, ev.column("server_host"),
                                                  pa.scalar(None, pa.string())))
    msg = ev.group_by("key", use_threads=False).aggregate([
        ("ts", "min"), ("p1", "first"), ("p2", "first"), ("message_id", "first"),
        ("subject", "first"), ("size", "max"), ("recv_ip", "first"), ("client_ip", "first"),
        ("recv_host", "first"), ("host", "first"), ("imid", "first"), ("file", "first"),
        ("line", "min"), ("ndr", "any"), ("rank", "min"),
    ])
    # The events of each message's best rank describe its hop.
    best = exchange_protocol.lookup_join(ev.select(["key"]), "key",
                                         msg.select(["key", "rank_min"])).column("rank_min")
    hop = ev.filter(pc.equal(ev.column("rank"), best))
    ctx_reply = _context_reply(hop.column("context").combine_chunks())
    status_reply = pc.if_else(
        pc.fill_null(pc.match_substring_regex(hop.column("rcpt_status"), r"^[245]\d\d[ -]"), False),
        hop.column("rcpt_status"), pa.scalar(None, pa.string()))
    hop = hop.append_column("reply", pc.coalesce(ctx_reply, status_reply))
    h = hop.group_by("key", use_threads=False).aggregate([
        ("ts", "min"), ("server_host", "first"), ("connector", "first"), ("reply", "last"),
        ("event", "last"),
    ])
    # recipients of the hop events, distinct, in order
    lists = pc.split_pattern(pc.fill_null(hop.column("recipients"), ""), ";")
    flat = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    rk = hop.column("key").combine_chunks().take(pc.list_parent_indices(lists))
    r = pa.table({"key": rk, "rcpt": flat}).filter(pc.greater(pc.utf8_length(flat), 0))
    r = r.group_by("key", use_threads=False).aggregate([("rcpt", "distinct")])
    out = exchange_protocol.lookup_join(msg, "key", h.rename_columns(
        ["key", "hop_ts", "hop_server", "hop_connector", "reply", "hop_event"]))
    out = exchange_protocol.lookup_join(out, "key", r)
    out = out.sort_by([("file_first", "ascending"), ("line_min", "ascending")])
    return _message_columns(out, ctx)


def _context_reply(context: pa.Array) -> pa.Array:
    """SEND source-context ';250 2.6.0 <id> [...] Queued mail for delivery;ClientSubmitTime:'
    -> the remote's final reply."""
    from ..normalize import extract

    return extract(pc.fill_null(context, ""),
                   r"^[^;]*;(?P<r>[245]\d\d[ -].*?)(?:;ClientSubmitTime:.*)?$")


def _message_columns(out: pa.Table, ctx: IngestContext) -> pa.Table:
    n = out.num_rows
    targets = ctx.options.relay_targets
    rank = out.column("rank_min").combine_chunks()
    server = out.column("hop_server").combine_chunks()
    to_exo = pc.equal(rank, RANK_TO_EXO)
    matches = pc.fill_null(pc.match_substring_regex(server, glob_regex(targets)), False)
    host = pc.coalesce(out.column("recv_host_first").combine_chunks(),
                       out.column("host_first").combine_chunks())
    here = pc.coalesce(out.column("host_first").combine_chunks(), host, pa.scalar("local"))
    relay_host = pc.if_else(
        to_exo, pc.if_else(matches, server, pa.scalar(stand_in_target(targets))),
        pc.if_else(pc.equal(rank, RANK_SENT), pc.coalesce(server, here),
                   # delivered here or ended here: this server is the last hop
                   pc.if_else(pc.equal(rank, RANK_OPEN), pa.scalar(None, pa.string()), here)))
    recipients = out.column("rcpt_distinct").combine_chunks()
    recipients = pc.if_else(pc.is_null(recipients), pa.scalar([], recipients.type), recipients)
    size = out.column("size_max").combine_chunks()
    size = pc.if_else(pc.fill_null(pc.match_substring_regex(size, r"^\d+$"), False), size,
                      pa.scalar(None, pa.string())).cast(pa.int64())
    ts = pc.if_else(to_exo, out.column("hop_ts").combine_chunks(),
                    out.column("ts_min").combine_chunks())
    return pa.table({
        "ts": ts,
        "source_format": pa.array([NAME] * n),
        "source_file": out.column("file_first"),
        "source_line": out.column("line_min"),
        "host": host,
        "message_id": out.column("message_id_first"),
        "queue_id": out.column("imid_first"),
        "p1_sender": out.column("p1_first"),
        "p2_sender": out.column("p2_first"),
        "client_ip": pc.coalesce(out.column("recv_ip_first"), out.column("client_ip_first")),
        "relay_host": relay_host,
        "recipients": recipients,
        "status": out.column("hop_event"),
        "response": out.column("reply"),
        "is_ndr": out.column("ndr_any"),
        "size": size,
        "subject": out.column("subject_first"),
        "incomplete": pc.equal(rank, RANK_OPEN),
        "_to_exo": to_exo,
    })


def _split_finished(pending: pa.Table, targets: tuple[str, ...]) -> tuple[pa.Table | None, pa.Table]:
    """Messages that left the server and stayed quiet 10 minutes (later recipients would show
    more events), or any message quiet for 2 hours (log time), are finished."""
    events = pending.select(["key", "ts"]).append_column("rank", _rank(pending, targets))
    last = events.group_by("key").aggregate([("ts", "max"), ("rank", "min")])
    newest = pc.max(pending.column("ts")).as_py()
    if newest is None:
        return None, pending
    now = pa.scalar(newest, pending.schema.field("ts").type).value
    quiet = last.column("ts_max").cast(pa.int64())
    finished = pc.or_(pc.less(quiet, now - HOLD_US), pc.and_(
        pc.less(quiet, now - SETTLE_US), pc.less(last.column("rank_min"), RANK_OPEN)))
    done = last.column("key").filter(finished)
    if not len(done):
        return None, pending
    mask = pc.is_in(pending.column("key"), value_set=done.combine_chunks())
    return pending.filter(mask), pending.filter(pc.invert(mask))


def _tracking_messages(sources: list[Source], ctx: IngestContext) -> Iterator[pa.Table]:
    seq = 0
    by_group: dict[str, list[Source]] = {}
    for src in sorted(sources, key=lambda s: s.name):
        by_group.setdefault(_group_of(src), []).append(src)
    for files in by_group.values():
        pending: pa.Table | None = None
        for src in files:
            for block in iter_blocks(src, ctx, NAME, {30: FIELDS_2013, 26: FIELDS_2010}, EXPECTED):
                ev = _events(block, src, ctx, seq)
                if ev is None:
                    continue
                seq += ev.num_rows
                pending = ev if pending is None else pa.concat_tables([pending, ev])
                done, pending = _split_finished(pending, ctx.options.relay_targets)
                if done is not None:
                    yield _collapse(done, ctx)
        if pending is not None and pending.num_rows:
            yield _collapse(pending, ctx)


# --- joining the protocol log ------------------------------------------------------------------


def _join_protocol(t: pa.Table, proto: pa.Table | None, used: np.ndarray) -> pa.Table:
    """Rows relayed to Exchange Online take `tls_cert` and `response` from the send protocol
    log message with the same Message-ID nearest in time (within 15 minutes)."""
    if proto is None or not proto.num_rows or not t.num_rows:
        return t
    left = pd.DataFrame({
        "mid": pc.utf8_lower(pc.replace_substring_regex(
            pc.fill_null(t.column("message_id").combine_chunks(), ""), r"^<|>$", "")).to_pylist(),
        "ts": t.column("ts").to_pandas(),
        "row": np.arange(t.num_rows),
        "exo": t.column("_to_exo").to_numpy(zero_copy_only=False),
    })
    left = left[left["exo"] & (left["mid"] != "") & left["ts"].notna()].sort_values("ts")
    if left.empty:
        return t
    send = pc.equal(proto.column("_direction"), "send").to_numpy(zero_copy_only=False)
    right = pd.DataFrame({
        "mid": pc.utf8_lower(pc.replace_substring_regex(
            pc.fill_null(proto.column("message_id").combine_chunks(), ""), r"^<|>$", "")
        ).to_pylist(),
        "ts": proto.column("ts").to_pandas(),
        "prow": np.arange(proto.num_rows),
    })
    right = right[send & (right["mid"] != "").to_numpy() & right["ts"].notna().to_numpy()]
    right = right.sort_values("ts")
    if right.empty:
        return t
    m = pd.merge_asof(left, right, on="ts", by="mid", direction="nearest",
                      tolerance=JOIN_TOLERANCE).dropna(subset=["prow"])
    if m.empty:
        return t
    rows = m["row"].to_numpy()
    prows = m["prow"].to_numpy().astype(np.int64)
    used[prows] = True
    cert = t.column("tls_cert").combine_chunks() if "tls_cert" in t.column_names else pa.nulls(
        t.num_rows, pa.string())
    cert_np = np.array(cert.to_pylist(), dtype=object)
    resp_np = np.array(t.column("response").combine_chunks().to_pylist(), dtype=object)
    pc_cert = proto.column("tls_cert").combine_chunks().take(pa.array(prows)).to_pylist()
    pc_resp = proto.column("response").combine_chunks().take(pa.array(prows)).to_pylist()
    cert_np[rows] = pc_cert
    # the protocol log's reply is the remote's own words; keep the tracking text if it has none
    resp_np[rows] = [p if p is not None else o for p, o in zip(pc_resp, resp_np[rows], strict=True)]
    t = t.append_column("tls_cert", pa.array(cert_np.tolist(), pa.string())) \
        if "tls_cert" not in t.column_names else t
    return t.set_column(t.column_names.index("response"), "response",
                        pa.array(resp_np.tolist(), pa.string()))


def _protocol_sources(ctx: IngestContext) -> list[Source]:
    all_sources = getattr(ctx, "all_sources", None) or {}
    return list(all_sources.get(exchange_protocol.NAME, []))


def read(sources: list[Source], ctx: IngestContext) -> Iterator[pa.RecordBatch]:
    proto_sources = _protocol_sources(ctx)
    proto = exchange_protocol.messages_for_join(proto_sources, ctx) if proto_sources else None
    used = np.zeros(proto.num_rows if proto is not None else 0, dtype=bool)
    for t in _tracking_messages(sources, ctx):
        t = _join_protocol(t, proto, used)
        cols = {c: t.column(c).combine_chunks() for c in t.column_names if not c.startswith("_")}
        yield make_messages(cols, t.num_rows)
    if proto is not None and (~used).any():
        yield exchange_protocol.to_batch(proto.filter(pa.array(~used)))
