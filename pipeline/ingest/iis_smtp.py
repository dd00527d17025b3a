"""IIS 6 SMTP service (SMTPSVC) W3C extended logs: one row per SMTP transaction.

    #Fields: date time c-ip cs-username s-sitename s-computername s-ip s-port cs-method cs-uri-stem cs-uri-query sc-status sc-win32-status sc-bytes cs-bytes time-taken cs-version cs-host cs(User-Agent) cs(Cookie) cs(Referer)
    2026-03-02 09:15:02 203.0.113.80 MFP-2F SMTPSVC1 IIS01 192.0.2.45 0 MAIL - +FROM:+<scanner@printers.contoso.local> 250 0 50 46 0 SMTP - - - -

Columns come from the `#Fields:` line (admin-selectable); a service restart writes a new header
block inside the same file. '-' is an empty value, '+' stands for a space. Times are UTC (W3C).

There is no session id: inbound commands are grouped per client (`c-ip` + `cs-username`, which
holds the HELO/EHLO name, not a user) in time order, and each `MAIL` starts a transaction that its
`RCPT` and `DATA` rows join (`DATA`'s `cs-uri-query` is the Message-ID, `cs-bytes` its size).
The relay to the smart host or Exchange Online is logged with `cs-username`
`OutboundConnectionCommand` / `OutboundConnectionResponse` and the remote address in `c-ip`; the
`220` banner names the remote host, and the replies carry Exchange Online's answer (for example
`550 5.7.64 TenantAttribution; Relay Access Denied`). An outbound transaction is tied to the
inbound one with the same sender and recipients (in order of time); one without an inbound
partner (a message dropped into the Pickup folder, or an NDR the service wrote itself) becomes a
row of its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..schema import TS
from .base import IngestContext, Source, decode_head, make_messages
from .exim import iter_line_blocks

NAME = "iis-smtp"
DESCRIPTION = "IIS SMTP service W3C extended log: '#Fields:' header with cs-method and c-ip"

_OUT_CMD, _OUT_RSP = "OutboundConnectionCommand", "OutboundConnectionResponse"
_NEEDED = ("date", "time", "c-ip", "cs-username", "cs-method", "cs-uri-query", "sc-status")
_TRANSACTION = ("MAIL", "RCPT", "DATA")
# How long after the inbound DATA the relay to the smart host may start and still be tied to it.
MATCH_WINDOW = pd.Timedelta(minutes=15)
_STR = pa.string()


def detect(head: bytes) -> bool:
    text = decode_head(head)
    for line in text.splitlines()[:50]:
        if line.startswith("#Fields:"):
            fields = line.split()[1:]
            # Web (W3SVC) logs share the header: the SMTP service writes SMTP in cs-version
            # and SMTPSVC<n> in s-sitename.
            return "cs-method" in fields and "c-ip" in fields and (
                " SMTP " in text or "SMTPSVC" in text)
    return False


def _fields_of(header: str) -> list[str]:
    return header.split()[1:]


def _decode(arr: pa.Array) -> pa.Array:
    """W3C value -> text: '-' is empty (null), '+' stands for a space."""
    s = pc.if_else(pc.equal(arr, "-"), pa.scalar(None, _STR), arr)
    return pc.replace_substring(s, "+", " ")


def _segments(lines: pa.Array, fields: list[str] | None
              ) -> Iterator[tuple[int, int, list[str] | None]]:
    """(start, stop, fields) runs of lines under one #Fields header; a service restart writes a
    new header inside the file. Header lines are few: a Python loop over their indices is cheap."""
    is_hdr = pc.fill_null(pc.starts_with(lines, "#Fields:"), False).to_numpy(zero_copy_only=False)
    prev = 0
    for i in np.flatnonzero(is_hdr).tolist():
        if i > prev:
            yield prev, i, fields
        fields = _fields_of(lines[i].as_py())
        prev = i
    yield prev, len(lines), fields


def read(sources: list[Source], ctx: IngestContext) -> Iterator[pa.RecordBatch]:
    for src in sources:
        yield from _read_one(src, ctx)


def _read_one(src: Source, ctx: IngestContext) -> Iterator[pa.RecordBatch]:
    """Commands of one file, block by block, streamed: after each block the sessions that are
    over (QUIT seen, or idle for MATCH_WINDOW of log time) become transactions, and the
    transactions that are paired (or too old to be) become rows; the rest is carried to the
    next block. Memory is bounded by the block size plus the sessions in flight."""
    fields: list[str] | None = None
    state = _Stream()
    for first_line, lines in iter_line_blocks(src, ctx.options.chunk_bytes):
        ctx.lines_read(src.name, NAME, len(lines))
        parts = []
        for start, stop, seg_fields in list(_segments(lines, fields)):
            fields = seg_fields  # the last header of this block carries into the next
            df = _parse_segment(lines.slice(start, stop - start), first_line + start, fields,
                                src, ctx)
            if df is not None and len(df):
                parts.append(df)
        del lines
        batch = state.feed(parts, src, ctx, final=False)
        if batch is not None:
            yield batch
    batch = state.feed([], src, ctx, final=True)
    if batch is not None:
        yield batch


class _Stream:
    """What one file carries between blocks: command rows of open sessions, and transactions
    waiting for their inbound/outbound partner."""

    def __init__(self):
        self.rows: pd.DataFrame | None = None
        self.inbound: pd.DataFrame | None = None
        self.outbound: pd.DataFrame | None = None
        self.clock: pd.Timestamp | None = None  # latest log time seen
        self.next_tid = 0

    def feed(self, parts: list[pd.DataFrame], src: Source, ctx: IngestContext, final: bool
             ) -> pa.RecordBatch | None:
        frames = [f for f in [self.rows, *parts] if f is not None and len(f)]
        rows = pd.concat(frames, ignore_index=True) if frames else None
        if rows is not None and len(rows):
            latest = rows["ts"].max()
            self.clock = latest if self.clock is None else max(self.clock, latest)
        if rows is not None and len(rows):
            done = np.ones(len(rows), dtype=bool) if final else _closed_sessions(rows, self.clock)
            self.rows = rows[~done]
            self._transactions(rows[done], src, ctx)
        return self._pair_and_emit(src, ctx, final)

    def _transactions(self, rows: pd.DataFrame, src: Source, ctx: IngestContext) -> None:
        if not len(rows):
            return
        rows = _skip_session_commands(rows, src, ctx)
        inbound = _inbound(rows[~rows["outbound"]], src, ctx)
        outbound = _outbound(rows[rows["outbound"]], src, ctx)
        for name, new in (("inbound", inbound), ("outbound", outbound)):
            new = new.assign(tid=np.arange(self.next_tid, self.next_tid + len(new)))
            self.next_tid += len(new)
            old = getattr(self, name)
            setattr(self, name, new if old is None or not len(old)
                    else pd.concat([old, new], ignore_index=True))

    def _pair_and_emit(self, src: Source, ctx: IngestContext, final: bool
                       ) -> pa.RecordBatch | None:
        if self.inbound is None or self.outbound is None:
            return None
        if not len(self.inbound) and not len(self.outbound):
            return None
        if not len(self.outbound):  # nothing to pair with (merging with nothing fails)
            both = self.inbound.assign(ts_out=pd.NaT, tid_out=np.nan)
        elif not len(self.inbound):
            both = self.outbound.add_suffix("_out").assign(ts=pd.NaT, tid=np.nan)
        else:
            both = _pair(self.inbound, self.outbound)
        # Emit what is paired, and what is too old to find a partner now; keep the rest.
        paired = both["ts"].notna() & both["ts_out"].notna()
        ts = both["ts"].where(both["ts"].notna(), both["ts_out"])
        emit = paired | (ts <= self.clock - MATCH_WINDOW) if not final else paired | True
        keep = both[~emit]
        self.inbound = self.inbound[self.inbound["tid"].isin(keep["tid"].dropna())]
        self.outbound = self.outbound[self.outbound["tid"].isin(keep["tid_out"].dropna())]
        both = both[emit].reset_index(drop=True)
        return _build(both, src, ctx) if len(both) else None


def _closed_sessions(rows: pd.DataFrame, clock: pd.Timestamp) -> np.ndarray:
    """Per command row: does its session end before the end of what has been read?

    A session is the rows of one inbound client (c-ip + HELO name) or one outbound remote
    address, up to a QUIT (or the 221 reply after it); a client silent for MATCH_WINDOW of log
    time is over too. Rows after a client's last QUIT are carried to the next block."""
    outbound = rows["user"].isin([_OUT_CMD, _OUT_RSP])
    key = np.where(outbound, "out|" + rows["client"].fillna(""),
                   "in|" + rows["client"].fillna("") + "|" + rows["user"].fillna(""))
    order = pd.DataFrame({"key": key, "ts": rows["ts"].to_numpy(), "line": rows["line"]
                          .to_numpy()}).sort_values(["key", "ts", "line"], kind="stable")
    method = rows["method"].to_numpy()
    query = rows["query"].fillna("").to_numpy(dtype=object)
    is_end = (method == "QUIT") & (~outbound.to_numpy() | (rows["user"].to_numpy() == _OUT_CMD))
    is_end |= outbound.to_numpy() & pd.Series(query).str.startswith("221").to_numpy()
    ends = pd.Series(is_end[order.index.to_numpy()], index=order.index)
    # Rows at or before the key's last end: reverse cumulative count of ends per key.
    later_end = ends[::-1].groupby(order["key"][::-1]).cumsum()[::-1] > 0
    idle = order.groupby("key")["ts"].transform("max") <= clock - MATCH_WINDOW
    done = np.zeros(len(rows), dtype=bool)
    done[order.index.to_numpy()] = (later_end | idle).to_numpy()
    return done


def _parse_segment(lines: pa.Array, line0: int, fields: list[str] | None, src: Source,
                   ctx: IngestContext) -> pd.DataFrame | None:
    n = len(lines)
    if n == 0:
        return None
    numbers = np.arange(line0, line0 + n, dtype=np.int64)
    comment = pc.fill_null(pc.starts_with(lines, "#"), False).to_numpy(zero_copy_only=False)
    blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(lines), ""), True).to_numpy(
        zero_copy_only=False)
    ctx.skipped(src.name, NAME, "W3C header (#Software/#Version/#Date/#Fields)", int(comment.sum()))
    ctx.skipped(src.name, NAME, "blank line", int((blank & ~comment).sum()))
    data = ~comment & ~blank
    if not data.any():
        return None
    idx = np.flatnonzero(data)
    rows = lines.take(pa.array(idx))
    if fields is None or not all(f in fields for f in _NEEDED):
        ctx.reject_lines(NAME, src.name, numbers[idx].tolist(), _why_not_w3c(
            rows, "no #Fields header (with date time c-ip cs-username cs-method cs-uri-query "
            "sc-status) before this line"), rows)
        return None
    parts = pc.split_pattern(pc.utf8_rtrim_whitespace(rows), " ")
    ok = pc.equal(pc.list_value_length(parts), len(fields)).to_numpy(zero_copy_only=False)
    if (~ok).any():
        bad = rows.take(pa.array(np.flatnonzero(~ok)))
        ctx.reject_lines(NAME, src.name, numbers[idx[~ok]].tolist(), _why_not_w3c(
            bad, f"expected {len(fields)} space-separated fields as in #Fields"), bad)
    good = pa.array(ok)
    parts = parts.filter(good)
    raw = rows.filter(good)
    line_no = numbers[idx[ok]]
    col = {name: pc.list_element(parts, fields.index(name)) for name in fields if name in _NEEDED
           or name in ("cs-bytes", "s-computername")}
    ts, bad_ts = _timestamps(col["date"], col["time"])
    if bad_ts.any():
        ctx.reject_lines(NAME, src.name, line_no[bad_ts].tolist(),
                         "date/time is not 'YYYY-MM-DD HH:MM:SS'", raw.filter(pa.array(bad_ts)))
    keep = ~bad_ts
    frame = pd.DataFrame({
        "line": line_no[keep],
        "ts": ts.filter(pa.array(keep)).to_pandas(),
        "client": col["c-ip"].filter(pa.array(keep)).to_pandas(),
        "user": col["cs-username"].filter(pa.array(keep)).to_pandas(),
        "method": pc.utf8_upper(col["cs-method"]).filter(pa.array(keep)).to_pandas(),
        "query": _decode(col["cs-uri-query"]).filter(pa.array(keep)).to_pandas(),
        "status": col["sc-status"].filter(pa.array(keep)).to_pandas(),
        "bytes": (col["cs-bytes"].filter(pa.array(keep)).to_pandas() if "cs-bytes" in col
                  else pd.Series([None] * int(keep.sum()), dtype=object)),
        "computer": (col["s-computername"].filter(pa.array(keep)).to_pandas()
                     if "s-computername" in col else None),
    })
    frame["outbound"] = frame["user"].isin([_OUT_CMD, _OUT_RSP])
    return frame


def _why_not_w3c(rows: pa.Array, otherwise: str) -> pa.Array:
    """NCSA lines (the other IIS log format: 'ip - user [date] "CMD -?args SMTP" status bytes')
    get their own reason, so the fix is plain: switch the log format to W3C Extended."""
    ncsa = pc.fill_null(pc.match_substring_regex(rows, r'^\S+ \S+ \S+ \[[^\]]+\] "'), False)
    return pc.if_else(
        ncsa,
        "NCSA common format line: only W3C extended logs are parsed (set the SMTP virtual "
        "server's log format to W3C Extended)",
        otherwise,
    )


def _timestamps(date: pa.Array, time: pa.Array) -> tuple[pa.Array, np.ndarray]:
    stamp = pc.binary_join_element_wise(date, time, " ")
    ts = pc.strptime(stamp, format="%Y-%m-%d %H:%M:%S", unit="us", error_is_null=True)
    return ts.cast(TS), (~pc.is_valid(ts).to_numpy(zero_copy_only=False))


def _skip_session_commands(frame: pd.DataFrame, src: Source, ctx: IngestContext) -> pd.DataFrame:
    """HELO/EHLO/QUIT/AUTH/... rows belong to no message: documented skips."""
    outbound = frame["user"].isin([_OUT_CMD, _OUT_RSP])
    inbound_msg = ~outbound & frame["method"].isin(_TRANSACTION)
    ctx.skipped(src.name, NAME, "inbound session command (HELO/EHLO/QUIT/AUTH/STARTTLS/xxxx)",
                int((~outbound & ~inbound_msg).sum()))
    return frame[outbound | inbound_msg]


def _address(query: pd.Series) -> pd.Series:
    """'FROM: <a@b>' -> '<a@b>' (kept bracketed so that '<>' stays the null sender)."""
    return query.str.extract(r"(<[^<>]*>)", expand=False)


def _inbound(rows: pd.DataFrame, src: Source, ctx: IngestContext) -> pd.DataFrame:
    """Inbound transactions: MAIL starts one per client (c-ip + HELO name), in time order."""
    rows = rows.sort_values(["client", "user", "ts", "line"], kind="stable")
    is_mail = rows["method"].eq("MAIL")
    seq = is_mail.groupby([rows["client"], rows["user"]], dropna=False).cumsum()
    orphan = seq.eq(0)
    if orphan.any():
        o = rows[orphan]
        ctx.reject_lines(NAME, src.name, o["line"].tolist(),
                         "RCPT/DATA without a MAIL from this client before it",
                         (o["method"] + " " + o["query"].fillna("")).tolist())
    rows = rows[~orphan].assign(seq=seq[~orphan])
    key = ["client", "user", "seq"]
    mail = rows[rows["method"].eq("MAIL")].set_index(key)
    rcpt = rows[rows["method"].eq("RCPT")]
    data = rows[rows["method"].eq("DATA")].groupby(key).last()
    out = pd.DataFrame({
        "ts": mail["ts"], "line": mail["line"], "p1_sender": _address(mail["query"]),
        "mail_status": mail["status"], "computer": mail["computer"],
    })
    rcpt = rcpt.assign(addr=_address(rcpt["query"]).str.strip("<>"))
    out["recipients"] = rcpt.groupby(key)["addr"].agg(lambda s: sorted(s.dropna()))
    out["rcpt_status"] = rcpt.groupby(key)["status"].agg("last")
    out["message_id"] = data["query"].str.strip()
    out["size"] = pd.to_numeric(data["bytes"], errors="coerce")
    out["data_status"] = data["status"]
    out["n_lines"] = rows.groupby(key)["line"].count()
    out["recipients"] = out["recipients"].apply(lambda v: v if isinstance(v, list) else [])
    return out.reset_index()


def _outbound(rows: pd.DataFrame, src: Source, ctx: IngestContext) -> pd.DataFrame:
    """Outbound relay transactions per remote address: commands and the replies after them."""
    rows = rows.sort_values(["client", "ts", "line"], kind="stable").copy()
    cmd = rows["user"].eq(_OUT_CMD)
    reply = rows["query"].where(~cmd)
    # The remote host names itself in its 220 banner (Exchange Online:
    # "220 XXX.mail.protection.outlook.com Microsoft ESMTP MAIL Service ready").
    banner = reply.str.extract(r"^220[ -](\S+)", expand=False)
    rows["relay_host"] = banner.groupby(rows["client"]).ffill()
    is_mail = cmd & rows["method"].eq("MAIL")
    rows["seq"] = is_mail.groupby(rows["client"]).cumsum()
    ends = cmd & rows["method"].isin(["QUIT"])
    after_quit = ends.groupby([rows["client"], rows["seq"]]).cumsum().gt(0)
    in_txn = rows["seq"].gt(0) & ~after_quit
    ctx.skipped(src.name, NAME, "outbound session line (banner, EHLO, STARTTLS, QUIT)",
                int((~in_txn).sum()))
    rows = rows[in_txn]
    rows["reply"] = reply[in_txn]
    key = ["client", "seq"]
    mail = rows[is_mail[in_txn]].set_index(key)
    rcpt = rows[cmd[in_txn] & rows["method"].eq("RCPT")]
    rcpt = rcpt.assign(addr=_address(rcpt["query"]).str.strip("<>"))
    replies = rows[rows["reply"].notna()]
    failed = replies[replies["reply"].str.match(r"^[45]\d\d")]
    out = pd.DataFrame({"ts": mail["ts"], "line": mail["line"],
                        "p1_sender": _address(mail["query"]), "relay_host": mail["relay_host"]})
    out["recipients"] = rcpt.groupby(key)["addr"].agg(lambda s: sorted(s.dropna()))
    out["recipients"] = out["recipients"].apply(lambda v: v if isinstance(v, list) else [])
    out["first_failure"] = failed.groupby(key)["reply"].first()
    out["last_reply"] = replies.groupby(key)["reply"].last()
    out["n_lines"] = rows.groupby(key)["line"].count()
    return out.reset_index()


def _pair(inbound: pd.DataFrame, outbound: pd.DataFrame) -> pd.DataFrame:
    """Tie each outbound transaction to the inbound one with the same sender and recipients:
    the k-th of each in time order, if the relay started within MATCH_WINDOW after it."""
    def keyed(df: pd.DataFrame) -> pd.DataFrame:
        df = df.sort_values("ts", kind="stable").copy()
        df["key"] = df["p1_sender"].fillna("").str.lower() + "|" + df["recipients"].map(
            lambda r: ";".join(a.lower() for a in r))
        df["rank"] = df.groupby("key").cumcount()
        return df

    inbound = keyed(inbound)
    outbound = keyed(outbound).add_suffix("_out").rename(columns={"key_out": "key",
                                                                  "rank_out": "rank"})
    both = inbound.merge(outbound, on=["key", "rank"], how="outer")
    delay = both["ts_out"] - both["ts"]
    paired = both["ts"].notna() & both["ts_out"].notna()
    split = paired & ~delay.between(pd.Timedelta(seconds=-1), MATCH_WINDOW)
    if split.any():  # too far apart to be the same message: keep both, unpaired
        out_cols = [c for c in both if c.endswith("_out")]
        in_cols = [c for c in both if c not in out_cols]
        both = pd.concat([both[~split], both.loc[split, in_cols], both.loc[split, out_cols]],
                         ignore_index=True)
    return both


def _strs(values) -> pa.Array:
    """A pandas column (NaN for missing) as a string array with nulls."""
    ser = pd.Series(values, dtype=object)
    return pa.array(ser.where(ser.notna(), None).tolist(), _STR)


def _build(both: pd.DataFrame, src: Source, ctx: IngestContext) -> pa.RecordBatch | None:
    """Rows of paired (or lone) inbound/outbound transactions -> a messages batch."""
    for col in ("ts", "line", "p1_sender", "recipients", "n_lines"):
        if col not in both:
            both[col] = None
    has_in = both["ts"].notna() if "ts" in both else pd.Series(False, index=both.index)
    ts = both["ts"].where(has_in, both.get("ts_out"))
    line = both["line"].where(has_in, both.get("line_out"))
    p1 = both["p1_sender"].where(has_in, both.get("p1_sender_out"))
    recipients = both["recipients"].where(has_in, both.get("recipients_out"))
    relayed = both.get("relay_host_out", pd.Series(None, index=both.index, dtype=object))
    first_failure = both.get("first_failure_out", pd.Series(None, index=both.index, dtype=object))
    last_reply = both.get("last_reply_out", pd.Series(None, index=both.index, dtype=object))
    has_out = both.get("ts_out", pd.Series(None, index=both.index, dtype=object)).notna()
    # Inbound replies are only codes (sc-status); a refused RCPT or DATA means the message
    # stopped here ("none", like Postfix's relay=none).
    in_fail = both.get("data_status", pd.Series(None, index=both.index, dtype=object)).fillna("").str.match(
        r"^[45]") | (both.get("data_status", pd.Series(None, index=both.index, dtype=object)).isna()
                     & both.get("rcpt_status", pd.Series(None, index=both.index, dtype=object)).fillna("")
                     .str.match(r"^[45]"))
    response = first_failure.where(first_failure.notna(), last_reply)
    in_code = both.get("data_status", pd.Series(None, index=both.index, dtype=object)).where(
        both.get("data_status", pd.Series(None, index=both.index, dtype=object)).notna(),
        both.get("rcpt_status", pd.Series(None, index=both.index, dtype=object)))
    response = response.where(has_out, in_code)
    status = np.select(
        [has_out & first_failure.fillna("").str.match(r"^5"),
         has_out & first_failure.fillna("").str.match(r"^4"),
         has_out, in_fail & has_in],
        ["bounced", "deferred", "relayed", "rejected"], default="received")
    relay_host = relayed.where(has_out, np.where(in_fail & has_in, "none", None))
    incomplete = has_in & ~has_out & both.get("data_status", pd.Series(None, index=both.index, dtype=object)
                                              ).isna() & ~in_fail
    n = len(both)
    lines_used = both["n_lines"].fillna(0) + both.get("n_lines_out", pd.Series(0, index=both.index)).fillna(0)
    ctx.parsed(src.name, NAME, int(lines_used.sum()))
    host = src.host or ctx.options.host
    if host is None and "computer" in both and both["computer"].notna().any():
        host_col = both["computer"].str.lower()
    else:
        host_col = pd.Series([host] * n, dtype=object)
    return make_messages({
        "ts": pa.array(pd.to_datetime(ts, utc=True), TS),
        "source_format": pa.array([NAME] * n, _STR),
        "source_file": pa.array([src.name] * n, _STR),
        "source_line": pa.array(line.astype("int64"), pa.int64()),
        "host": _strs(host_col.to_numpy()),
        "message_id": _strs(both.get("message_id", pd.Series(None, index=both.index, dtype=object)).to_numpy()),
        "p1_sender": _strs(p1.to_numpy()),
        "client_ip": _strs(both.get("client", pd.Series(None, index=both.index, dtype=object)).to_numpy()),
        "relay_host": _strs(pd.Series(relay_host).to_numpy()),
        "recipients": pa.array([list(r) if isinstance(r, list) else [] for r in recipients],
                               pa.list_(_STR)),
        "status": pa.array(list(status), _STR),
        "response": _strs(pd.Series(response).to_numpy()),
        "is_ndr": pa.array((p1.fillna("x") == "<>").tolist(), pa.bool_()),
        "size": pa.array(pd.to_numeric(both.get("size", pd.Series(None, index=both.index, dtype=object)),
                                       errors="coerce").to_numpy(dtype=float),
                         pa.float64(), from_pandas=True).cast(pa.int64()),
        "logged_by_exo": pa.array([False] * n),
        "incomplete": pa.array(incomplete.tolist(), pa.bool_()),
    }, n)

