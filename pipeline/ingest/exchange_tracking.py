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
`is_ndr`; having no RECEIVE event, they take the host of their file (the server-hostname its
RECEIVE rows name, else --host).

Speed and memory (issue 3): blocks of at most 16 MiB, only the needed columns converted,
event-id/source/connector-id/server-hostname dictionary-encoded while parsing; the next block is
parsed in a worker thread. Open messages are carried as a compact event table, and finished ones
are collapsed with numpy reductions over their message numbers, not string group-bys.

When SMTP send protocol logs of the server are in the same run, the rows gain the certificate
exch01 presented (`tls_cert`) and the remote reply (`response`) from them, joined on the
Internet Message-ID nearest in time; protocol-log messages that match no tracking row are emitted
as they are (exchange_protocol rows).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..normalize import domain_of, envelope_sender, header_sender
from . import exchange_protocol
from ._exchange_common import (
    CsvSpec,
    glob_regex,
    header_lines,
    iter_blocks,
    parse_utc,
    read_ahead,
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
# Finished messages are looked for every this many new events (about 20 MB of event columns,
# two 16 MiB blocks of a busy server's log): bounded memory, little re-reading of the carry.
SPLIT_EVENTS = 50_000
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


# Only the columns a message row needs are converted (the CSV reader still checks the field
# count of every row); the low-cardinality ones are dictionary-encoded while parsing, so the
# per-row tests (relay target glob, Office 365 connector name, event kind) run once per value.
_COLUMNS = (
    "date-time", "client-ip", "server-hostname", "source-context", "connector-id", "source",
    "event-id", "internal-message-id", "message-id", "recipient-address", "recipient-status",
    "total-bytes", "message-subject", "sender-address", "return-path", "original-client-ip",
)
_SPEC = CsvSpec(columns=_COLUMNS, empty_is_null=True,
                dictionary=frozenset({"server-hostname", "connector-id", "source", "event-id"}))
_NONE = pa.scalar(None, pa.string())
_DICT = pa.dictionary(pa.int32(), pa.string())


@dataclass
class _File:
    """What a message row needs to know about the file its first event is in."""

    name: str
    host: str | None  # --host / [[hosts]] / options.host
    server: str | None = None  # this server's own name, as its RECEIVE events log it


def _col(t: pa.Table, name: str) -> pa.Array:
    if name in t.column_names:
        return t.column(name).combine_chunks()
    return pa.nulls(t.num_rows, pa.string())


def _dict_col(t: pa.Table, name: str) -> pa.Array:
    """A column the CSV reader dictionary-encodes (`_SPEC`), also when the file lacks it."""
    arr = _col(t, name)
    return arr if pa.types.is_dictionary(arr.type) else pc.dictionary_encode(arr).cast(_DICT)


def _per_value(arr: pa.Array, fn) -> pa.Array:
    """fn applied to a dictionary column's distinct values, then spread to its rows."""
    if pa.types.is_dictionary(arr.type):
        return fn(arr.dictionary).take(arr.indices)
    return fn(arr)


def _word(arr: pa.Array) -> pa.Array:
    return _per_value(arr, lambda v: pc.utf8_upper(pc.utf8_trim_whitespace(v)))


def _rank(event: pa.Array, server_host: pa.Array, connector: pa.Array,
          targets: tuple[str, ...]) -> pa.Array:
    hop = pc.fill_null(_per_value(
        server_host, lambda v: pc.match_substring_regex(v, glob_regex(targets))), False)
    o365 = pc.fill_null(_per_value(
        connector, lambda v: pc.match_substring_regex(v, _O365_CONNECTOR)), False)
    to_exo = pc.and_(pc.is_in(event, value_set=pa.array(_ATTEMPT)), pc.or_(hop, o365))
    rank = pc.if_else(to_exo, RANK_TO_EXO,
           pc.if_else(pc.is_in(event, value_set=pa.array(_SEND)), RANK_SENT,
           pc.if_else(pc.is_in(event, value_set=pa.array(_DELIVER)), RANK_DELIVERED,
           pc.if_else(pc.is_in(event, value_set=pa.array(_ENDED)), RANK_ENDED, RANK_OPEN))))
    return pc.fill_null(rank, RANK_OPEN).cast(pa.int8())


_SUBMIT_TIME = ";ClientSubmitTime:"


def _context_reply(context: pa.Array, attempt: pa.Array) -> pa.Array:
    """SEND source-context ';250 2.6.0 <id> [...] Queued mail for delivery;ClientSubmitTime:'
    -> the remote's final reply (text after the first ';', up to ';ClientSubmitTime:').
    Only send attempts (SEND, SENDEXTERNAL, FAIL, DEFER) log a reply there (Microsoft Learn,
    "Message tracking": source-context). Fixed-position slices for the usual shape (leading ';',
    trailing ';ClientSubmitTime:'), literal splits otherwise: a capturing regex on every event
    was the costliest step of the reader."""
    has = _np(pc.and_(attempt, pc.fill_null(
        pc.match_substring_regex(context, r"^[^;]*;[245]\d\d[ -]"), False)))
    x = context.filter(pa.array(has))
    if not len(x):
        return pa.nulls(len(context), pa.string())
    if pc.all(pc.starts_with(x, ";")).as_py():
        after = pc.utf8_replace_slice(x, 0, 1, "")
    else:
        after = pc.list_element(pc.split_pattern(x, ";", max_splits=1), 1)
    if pc.all(pc.ends_with(after, _SUBMIT_TIME)).as_py():
        after = pc.utf8_slice_codeunits(after, 0, -len(_SUBMIT_TIME))
    else:  # ';ClientSubmitTime:<time>', or no such suffix
        after = pc.list_element(pc.split_pattern(after, _SUBMIT_TIME, max_splits=1), 0)
    pos = np.cumsum(has) - 1
    return after.take(pa.array(pos, mask=~has))


def _is_null_sender(p1: pa.Array) -> pa.Array:
    """return-path '<>' (also '< >'): the null sender of an NDR."""
    p = pc.utf8_trim_whitespace(p1)
    inner = pc.utf8_trim_whitespace(pc.utf8_slice_codeunits(p, 1, -1))
    return pc.and_(pc.and_(pc.starts_with(p, "<"), pc.ends_with(p, ">")),
                   pc.and_(pc.greater_equal(pc.utf8_length(p), 2),
                           pc.equal(pc.utf8_length(inner), 0)))


def _events(block, file_no: int, src: Source, ctx: IngestContext) -> pa.Table | None:
    """Block rows -> compact event table (only what finishing a message needs); accounts
    parsed/skipped/rejected lines."""
    t = block.table
    lines, nlines = block.lines, block.nlines
    ts, bad = parse_utc(_col(t, "date-time"))
    bad_np = bad.to_numpy(zero_copy_only=False)
    if bad_np.any():
        idx = np.flatnonzero(bad_np)
        ctx.reject_lines(NAME, src.name, lines[idx].tolist(), "date-time is not an ISO 8601 UTC time",
                         block.raw_rows(idx))
        ctx.skipped(src.name, NAME, "continuation line of a rejected row",
                    int(nlines[idx].sum()) - len(idx))
    imid = pc.utf8_trim_whitespace(_col(t, "internal-message-id"))
    has_id = pc.fill_null(pc.greater(pc.utf8_length(imid), 0), False).to_numpy(zero_copy_only=False)
    keep = has_id & ~bad_np
    noise = ~has_id & ~bad_np
    ctx.skipped(src.name, NAME,
                "event without internal-message-id (NOTIFYMAPI, AGENTINFO and similar)",
                int(nlines[noise].sum()))
    ctx.parsed(src.name, NAME, int(nlines[keep].sum()))
    if not keep.any():
        return None
    if not keep.all():
        k = pa.array(keep)
        t, ts, imid = t.filter(k), ts.filter(k), imid.filter(k)
    n = t.num_rows
    event = _word(_col(t, "event-id"))
    server = _dict_col(t, "server-hostname")
    connector = _dict_col(t, "connector-id")
    rank = _rank(event, server, connector, ctx.options.relay_targets)
    receive = pc.equal(event, "RECEIVE")
    status = _col(t, "recipient-status")
    status_reply = pc.if_else(
        pc.fill_null(pc.match_substring_regex(status, r"^[245]\d\d[ -]"), False), status, _NONE)
    p1 = _col(t, "return-path")
    ndr = pc.or_(pc.fill_null(pc.equal(_word(_col(t, "source")), "DSN"), False),
                 pc.fill_null(_is_null_sender(p1), False))
    size = pc.utf8_trim_whitespace(_col(t, "total-bytes"))
    size = pc.if_else(pc.and_(pc.utf8_is_digit(size), pc.less_equal(pc.utf8_length(size), 18)),
                      size, _NONE).cast(pa.int64())
    client_ip = pc.coalesce(_col(t, "original-client-ip"), _col(t, "client-ip"))
    return pa.table({
        "key": imid,
        "ts": ts,
        "rank": rank,
        "event": event,
        "server_host": server,
        "connector": connector,
        "reply": pc.coalesce(
            _context_reply(_col(t, "source-context"), pc.is_in(event, value_set=pa.array(_ATTEMPT))),
            status_reply),
        "recipients": _col(t, "recipient-address"),
        "message_id": _col(t, "message-id"),
        "subject": _col(t, "message-subject"),
        "size": size,
        "p2": _col(t, "sender-address"),
        "p1": p1,
        "ndr": ndr,
        "client_ip": client_ip,
        "receive": receive,
        "file": pa.array(np.full(n, file_no, dtype=np.int32)),
        "line": pa.array(lines[keep]),
    })


def _server_name(ev: pa.Table) -> str | None:
    """This server's own name: the server-hostname of its RECEIVE events."""
    names = ev.column("server_host").filter(ev.column("receive")).drop_null()
    return names[0].as_py() if len(names) else None


class _Messages:
    """The events of each message side by side: `rows` are positions in the event table, `m`
    their message numbers; a stable sort on `m` keeps log order inside a message, so
    per-message first/last/min/max are numpy reduceat calls over contiguous runs, and only the
    one chosen value per message is copied out of a string column (no hash group-by, no copy
    of the finished events)."""

    def __init__(self, m: np.ndarray, rows: np.ndarray):
        order = np.argsort(m, kind="stable")
        self.rows = rows[order]
        sm = m[order]
        self.starts = np.flatnonzero(np.concatenate([[True], sm[1:] != sm[:-1]]))
        self.n = len(self.starts)  # every message number 0..n-1 has at least one event

    def _pick(self, arr: pa.Array, pos: np.ndarray, found: np.ndarray) -> pa.Array:
        return arr.take(pa.array(self.rows[np.where(found, pos, 0)], mask=~found))

    def _valid(self, arr: pa.Array, where: np.ndarray | None) -> np.ndarray:
        valid = _np(arr.is_valid())[self.rows]
        return valid if where is None else valid & where[self.rows]

    def first(self, arr: pa.Array, where: np.ndarray | None = None) -> pa.Array:
        """First non-null value of each message (hash_first's skip-nulls semantics), among
        the events `where` is true for."""
        valid = self._valid(arr, where)
        big = len(valid)
        pos = np.minimum.reduceat(np.where(valid, np.arange(big), big), self.starts)
        return self._pick(arr, pos, pos < big)

    def last(self, arr: pa.Array) -> pa.Array:
        valid = self._valid(arr, None)
        pos = np.maximum.reduceat(np.where(valid, np.arange(len(valid)), -1), self.starts)
        return self._pick(arr, pos, pos >= 0)

    def at_start(self, arr: pa.Array) -> pa.Array:
        return arr.take(pa.array(self.rows[self.starts]))

    def reduce(self, values: np.ndarray, ufunc) -> np.ndarray:
        return ufunc.reduceat(values[self.rows], self.starts)


def _np(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return col.to_numpy() if isinstance(col, pa.ChunkedArray) else col.to_numpy(
        zero_copy_only=False)


def _distinct_recipients(recipients: pa.Array, m: np.ndarray, n: int
                         ) -> tuple[pa.ListArray, pa.Array]:
    """The ';'-separated recipients of each message's hop events, each once, in log order (a
    hash 'distinct' aggregation does not keep that order), and each message's recipient
    domains as make_messages would derive them (distinct, sorted, ';'-joined), worked out once
    per distinct address."""
    lists = pc.split_pattern(recipients, ";")
    flat = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    msg = m[_np(pc.list_parent_indices(lists))]
    keep = _np(pc.fill_null(pc.greater(pc.utf8_length(flat), 0), False))
    flat, msg = flat.filter(pa.array(keep)), msg[keep]
    enc = pc.dictionary_encode(flat)
    codes = _np(enc.indices).astype(np.int64)
    _, first = np.unique(msg.astype(np.int64) * (codes.max(initial=0) + 1) + codes,
                         return_index=True)
    first = np.sort(first)  # first sighting of each (message, address), in log order
    first = first[np.argsort(msg[first], kind="stable")]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(msg[first], minlength=n))])
    rcpt = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)),
                                    flat.take(pa.array(first)))
    # recipient_domains, as normalize.list_domains_joined computes it
    dom = domain_of(enc.dictionary).take(pa.array(codes[first]))
    t = pa.table({"p": msg[first], "d": dom}).filter(pc.is_valid(dom))
    t = t.sort_by([("p", "ascending"), ("d", "ascending")])
    p, d = t.column("p").to_numpy(), t.column("d").combine_chunks()
    if len(p):
        repeat = np.concatenate([[False], (p[1:] == p[:-1]) & _np(pc.equal(d[1:], d[:-1]))])
        p, d = p[~repeat], d.filter(pa.array(~repeat))
    counts = np.bincount(p, minlength=n)
    joined = pc.binary_join(pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)), d), ";")
    domains = pc.if_else(pa.array(counts == 0), _NONE, joined)
    return rcpt, pc.dictionary_encode(domains).cast(pa.dictionary(pa.int32(), pa.string()))


def _collapse(ev: pa.Table, rows: np.ndarray, keys: pa.Array, m: np.ndarray,
              ctx: IngestContext, files: list[_File]) -> pa.Table:
    """Events ev[rows] of finished messages (in log order) -> one row per message, in the order
    of each message's first event. `m` numbers the messages 0..n-1 in that order, `keys` holds
    their internal-message-id. `ev` is a one-chunk table."""
    col = {c: ev.column(c).chunk(0) for c in ev.column_names}
    g = _Messages(m, rows)
    ts_us = _np(col["ts"].cast(pa.int64()))
    size_max = g.reduce(_np(pc.fill_null(col["size"], -1)), np.maximum)
    rank = _np(col["rank"])
    rank_min = g.reduce(rank, np.minimum)
    # The events of each message's best rank describe its hop.
    is_hop = rank[rows] == rank_min[m]
    hop_rows, hop_m = rows[is_hop], m[is_hop]
    hop = _Messages(hop_m, hop_rows)
    recipients, domains = _distinct_recipients(
        col["recipients"].take(pa.array(hop_rows)), hop_m, g.n)
    receive = _np(col["receive"])
    ts_type = ev.schema.field("ts").type
    out = {
        "ts_min": pa.array(g.reduce(ts_us, np.minimum)).cast(ts_type),
        "p1_first": g.first(col["p1"]), "p2_first": g.first(col["p2"]),
        "message_id_first": g.first(col["message_id"]),
        "subject_first": g.first(col["subject"]),
        "size_max": pa.array(size_max, mask=size_max < 0),
        "recv_ip_first": g.first(col["client_ip"], receive),
        "client_ip_first": g.first(col["client_ip"]),
        "recv_host_first": g.first(col["server_host"], receive).cast(pa.string()),
        "file_first": g.at_start(col["file"]),
        "line_first": g.at_start(col["line"]),
        "ndr_any": pa.array(g.reduce(_np(col["ndr"]), np.logical_or)),
        "rank_min": pa.array(rank_min),
        "hop_ts_min": pa.array(hop.reduce(ts_us, np.minimum)).cast(ts_type),
        "hop_server_host_first": hop.first(col["server_host"]).cast(pa.string()),
        "hop_connector_first": hop.first(col["connector"]).cast(pa.string()),
        "hop_reply_last": hop.last(col["reply"]),
        "hop_event_last": hop.last(col["event"]),
        "rcpt_distinct": recipients,
        "recipient_domains": domains,
        "imid": keys,
    }
    return _message_columns(pa.table(out), ctx, files)


def _message_columns(out: pa.Table, ctx: IngestContext, files: list[_File]) -> pa.Table:
    n = out.num_rows
    targets = ctx.options.relay_targets
    rank = out.column("rank_min").combine_chunks()
    server = out.column("hop_server_host_first").combine_chunks()
    to_exo = pc.equal(rank, RANK_TO_EXO)
    matches = pc.fill_null(pc.match_substring_regex(server, glob_regex(targets)), False)
    file_no = out.column("file_first").combine_chunks()
    explicit = pa.array([f.host for f in files], pa.string()).take(file_no)
    # A server-generated NDR has no RECEIVE: it was written by the server whose log this is.
    local = pa.array([f.server or f.host for f in files], pa.string()).take(file_no)
    host = pc.coalesce(out.column("recv_host_first").combine_chunks(), local)
    here = pc.coalesce(explicit, host, pa.scalar("local"))
    relay_host = pc.if_else(
        to_exo, pc.if_else(matches, server, pa.scalar(stand_in_target(targets))),
        pc.if_else(pc.equal(rank, RANK_SENT), pc.coalesce(server, here),
                   # delivered here or ended here: this server is the last hop
                   pc.if_else(pc.equal(rank, RANK_OPEN), _NONE, here)))
    recipients = out.column("rcpt_distinct").combine_chunks()
    recipients = pc.if_else(pc.is_null(recipients), pa.scalar([], recipients.type), recipients)
    ts = pc.if_else(to_exo, out.column("hop_ts_min").combine_chunks(),
                    out.column("ts_min").combine_chunks())
    return pa.table({
        "ts": ts,
        "source_format": pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(n, dtype=np.int32)), pa.array([NAME])),
        "source_file": pa.DictionaryArray.from_arrays(
            file_no, pa.array([f.name for f in files], pa.string())),
        "source_line": out.column("line_first"),
        "host": host,
        "message_id": _unbracket(out.column("message_id_first").combine_chunks()),
        "queue_id": out.column("imid"),
        "p1_sender": out.column("p1_first"),
        "p2_sender": out.column("p2_first"),
        "p1_domain": _domain_by_value(out.column("p1_first"), envelope_sender),
        "p2_domain": _domain_by_value(out.column("p2_first"), header_sender),
        "client_ip": pc.coalesce(out.column("recv_ip_first"), out.column("client_ip_first")),
        "relay_host": relay_host,
        "recipients": recipients,
        "recipient_domains": out.column("recipient_domains"),
        "status": out.column("hop_event_last"),
        "response": out.column("hop_reply_last"),
        "is_ndr": out.column("ndr_any"),
        "size": out.column("size_max"),
        "subject": out.column("subject_first"),
        "incomplete": pc.equal(rank, RANK_OPEN),
        "_to_exo": to_exo,
    })


def _domain_by_value(addresses: pa.Array, normalise) -> pa.Array:
    """Domain of each sender address, worked out once per distinct address (a server sees few
    senders): the same values make_messages would derive, handed over dictionary-encoded."""
    enc = pc.dictionary_encode(addresses.combine_chunks() if isinstance(
        addresses, pa.ChunkedArray) else addresses)
    domains = domain_of(normalise(enc.dictionary)).take(enc.indices)
    return pc.dictionary_encode(domains).cast(pa.dictionary(pa.int32(), pa.string()))


def _unbracket(message_id: pa.Array) -> pa.Array:
    """'<id@host>' -> 'id@host' with fixed-position slices. make_messages does the same with a
    regex, which is cheap on values that do not start with '<' (it fails at the first byte)."""
    s = pc.utf8_trim_whitespace(message_id)
    wrapped = pc.and_(pc.starts_with(s, "<"), pc.ends_with(s, ">"))
    return pc.if_else(wrapped, pc.utf8_slice_codeunits(s, 1, -1), s)


def _split_finished(pending: pa.Table):
    """Messages that left the server and stayed quiet 10 minutes (later recipients would show
    more events), or any message quiet for 2 hours (log time), are finished. Returns the
    arguments of `_collapse` for them (None if none is), and the events still open as the
    compact carry for the next blocks."""
    pending = pending.combine_chunks()
    newest = pc.max(pending.column("ts")).as_py()
    if newest is None:
        return None, pending
    keys = pc.dictionary_encode(pending.column("key").chunk(0))
    codes = keys.indices.to_numpy()
    n = len(keys.dictionary)
    agg = pa.table({"m": keys.indices, "ts": pending.column("ts").cast(pa.int64()),
                    "rank": pending.column("rank")}).group_by("m", use_threads=False).aggregate(
        [("ts", "max"), ("rank", "min")])
    at = agg.column("m").to_numpy()
    last_ts = np.empty(n, dtype=np.int64)
    last_ts[at] = agg.column("ts_max").to_numpy()
    best = np.empty(n, dtype=np.int8)
    best[at] = agg.column("rank_min").to_numpy()
    now = pa.scalar(newest, pending.schema.field("ts").type).value
    done = (last_ts < now - HOLD_US) | ((last_ts < now - SETTLE_US) & (best < RANK_OPEN))
    if not done.any():
        return None, pending
    renumber = np.cumsum(done) - 1  # finished messages keep their order, numbered 0..
    finished = done[codes]
    rows = np.flatnonzero(finished)
    done_args = (pending, rows, keys.dictionary.filter(pa.array(done)), renumber[codes[rows]])
    return done_args, pending.filter(pa.array(~finished)).combine_chunks()


class _Ledger:
    """Stands in for the IngestContext in the reading thread: its line accounting and rejects
    are kept, and replayed by the main thread with the block they belong to, so the counters
    are only ever updated by one thread."""

    def __init__(self, ctx: IngestContext):
        self.options = ctx.options
        self.calls: list[tuple[str, tuple]] = []

    def lines_read(self, *args) -> None:
        self.calls.append(("lines_read", args))

    def parsed(self, *args) -> None:
        self.calls.append(("parsed", args))

    def skipped(self, *args) -> None:
        self.calls.append(("skipped", args))

    def reject_lines(self, *args) -> None:
        self.calls.append(("reject_lines", args))

    def take(self) -> list[tuple[str, tuple]]:
        calls, self.calls = self.calls, []
        return calls


def _group_blocks(group: list[Source], ledger: _Ledger) -> Iterator[tuple]:
    """(file number, file, parsed block or None, accounting so far) for the files of one
    server, in log order."""
    for file_no, src in enumerate(group):
        for block in iter_blocks(src, ledger, NAME, {30: FIELDS_2013, 26: FIELDS_2010},
                                 EXPECTED, _SPEC):
            yield file_no, src, block, ledger.take()
        yield file_no, src, None, ledger.take()  # lines accounted after the last block


def _group_events(group: list[Source], ctx: IngestContext, files: list[_File]) -> Iterator[pa.Table]:
    """Event tables of the files of one server, block by block, in log order. Reading and
    parsing run one block ahead in a worker thread; the events are made here."""
    files.extend(_File(src.name, src.host or ctx.options.host) for src in group)
    for file_no, src, block, calls in read_ahead(_group_blocks(group, _Ledger(ctx))):
        for name, args in calls:
            getattr(ctx, name)(*args)
        if block is None:
            continue
        ev = _events(block, file_no, src, ctx)
        del block  # the raw block is not kept past its events
        if ev is None:
            continue
        if files[file_no].server is None:  # set before any message of the file is finished
            files[file_no].server = _server_name(ev)
        yield ev


def _tracking_messages(sources: list[Source], ctx: IngestContext) -> Iterator[pa.Table]:
    by_group: dict[str, list[Source]] = {}
    for src in sorted(sources, key=lambda s: s.name):
        by_group.setdefault(_group_of(src), []).append(src)
    for group in by_group.values():
        files: list[_File] = []
        pending: pa.Table | None = None
        fresh = 0  # events added since the last split
        for ev in _group_events(group, ctx, files):
            pending = ev if pending is None else pa.concat_tables([pending, ev])
            fresh += ev.num_rows
            if fresh < SPLIT_EVENTS:
                continue
            # Splitting re-reads the carried open messages (about SETTLE_US of log), so it
            # runs once per SPLIT_EVENTS new events rather than once per block.
            fresh = 0
            done, pending = _split_finished(pending)
            if done is not None:
                yield _collapse(*done, ctx, files)
        if pending is not None and pending.num_rows:
            pending = pending.combine_chunks()
            keys = pc.dictionary_encode(pending.column("key").chunk(0))
            yield _collapse(pending, np.arange(pending.num_rows), keys.dictionary,
                            keys.indices.to_numpy(), ctx, files)


# --- joining the protocol log ------------------------------------------------------------------


def _join_protocol(t: pa.Table, proto: pa.Table | None, used: np.ndarray) -> pa.Table:
    """Rows relayed to Exchange Online take `tls_cert` and `response` from the send protocol
    log message with the same Message-ID nearest in time (within 15 minutes)."""
    if proto is None or not proto.num_rows or not t.num_rows:
        return t
    left = pd.DataFrame({
        "mid": pc.utf8_lower(pc.replace_substring_regex(
            pc.fill_null(t.column("message_id").combine_chunks(), ""), r"^<|>$", "")).to_pandas(),
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
        ).to_pandas(),
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
    # Per tracking row, the matched protocol row (null where none): two takes, no Python rows.
    src = np.full(t.num_rows, -1, dtype=np.int64)
    src[rows] = prows
    idx = pa.array(src, mask=src < 0)
    cert = t.column("tls_cert").combine_chunks() if "tls_cert" in t.column_names else pa.nulls(
        t.num_rows, pa.string())
    proto_cert = proto.column("tls_cert").combine_chunks().cast(pa.string()).take(idx)
    proto_resp = proto.column("response").combine_chunks().cast(pa.string()).take(idx)
    cert = pc.coalesce(proto_cert, cert.cast(pa.string()))
    # the protocol log's reply is the remote's own words; keep the tracking text if it has none
    resp = pc.coalesce(proto_resp, t.column("response").combine_chunks().cast(pa.string()))
    if "tls_cert" in t.column_names:
        t = t.set_column(t.column_names.index("tls_cert"), "tls_cert", cert)
    else:
        t = t.append_column("tls_cert", cert)
    return t.set_column(t.column_names.index("response"), "response", resp)


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
