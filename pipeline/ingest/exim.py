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
from collections.abc import Iterator
from datetime import datetime, timedelta, tzinfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputFormatError
from ..normalize import extract
from ..schema import TS
from .base import IngestContext, Source, decode_head, make_messages, sniff_encoding

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


# --- reading ------------------------------------------------------------------------------------
def iter_line_blocks(src: Source, chunk_bytes: int) -> Iterator[tuple[int, pa.Array]]:
    """(first line number, StringArray of lines) blocks of about chunk_bytes, split at newlines.

    Splitting is pyarrow's (split_pattern over one big string), not a Python loop; a trailing
    '\\r' (Windows line ends) is dropped and undecodable bytes are replaced, never fatal."""
    enc = sniff_encoding(src.head(4096))
    line_no = 1
    rest = b""
    with src.open() as fh:
        while True:
            try:
                data = fh.read(max(chunk_bytes, 1 << 16))
            except (OSError, EOFError) as exc:
                raise InputFormatError(f"{src.name}: cannot be read ({exc})") from exc
            if not data:
                break
            data = rest + data
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            rest = data[cut + 1 :]
            lines = _split(data[: cut + 1], enc)
            yield line_no, lines
            line_no += len(lines)
    if rest:
        lines = _split(rest + b"\n", enc)
        yield line_no, lines


def _split(block: bytes, enc: str) -> pa.Array:
    text = block.decode(enc if not enc.startswith("utf-16") else "utf-8", errors="replace")
    if enc == "utf-8-sig":
        text = text.lstrip("\ufeff")
    parts = pc.list_flatten(pc.split_pattern(pa.array([text], _STR), "\n"))
    parts = parts.slice(0, len(parts) - 1)  # the block ends with "\n": drop the empty tail
    return pc.replace_substring_regex(parts, r"\r$", "") if "\r" in text else parts


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


def _join_split_parts(lines: pa.Array, host: pa.Array, pid: pa.Array, part: pa.Array,
                      state: dict) -> tuple[pa.Array, np.ndarray, np.ndarray]:
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
    state.clear()  # parts never straddle blocks in practice: a block ends on a whole line
    for i, text, mark, key in zip(idx.tolist(), texts, marks, keys, strict=True):
        n, sep = re.match(r"(\d+)([/\\])", mark).groups()
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


def _fields(text: pa.Array, kind: np.ndarray) -> dict[str, pa.Array]:
    """Extract the message fields, each regex only over the lines of the kind that carries it."""
    n = len(text)
    out: dict[str, pa.Array] = {}

    def fill(name: str, mask: np.ndarray, pattern: str, src: pa.Array | None = None) -> None:
        idx = np.flatnonzero(mask)
        base = out.get(name, pa.nulls(n, _STR))
        if len(idx):
            vals = extract((src if src is not None else text).take(pa.array(idx)), pattern)
            full = np.zeros(n, dtype=bool)
            full[idx] = True
            base = pc.replace_with_mask(base, pa.array(full), vals.cast(_STR))
        out[name] = base

    arrival = kind == ARRIVAL
    delivery = np.isin(kind, [DELIVERED, ALSO_DELIVERED, FAILED, DEFERRED])
    failed_or_deferred = np.isin(kind, [FAILED, DEFERRED])
    rejected = kind == REJECTED
    any_msg = arrival | delivery | rejected
    # Quoted values (T="subject", C="reply", DN="...") may hold spaces, '=' and ' for ': mask them
    # out before looking for the space-separated fields.
    unquoted = text
    has_quote = _mask(pc.match_substring(text, '"')).to_numpy(zero_copy_only=False)
    qidx = np.flatnonzero(has_quote & any_msg)
    if len(qidx):
        full = np.zeros(n, dtype=bool)
        full[qidx] = True
        stripped = pc.replace_substring_regex(
            text.take(pa.array(qidx)), r'(^|\s)([A-Za-z]+)="(?:[^"\\]|\\.)*"', r'\1\2=""')
        unquoted = pc.replace_with_mask(text, pa.array(full), stripped)

    # Arrival: "<= sender [R=parent] H=name (helo) [ip]:port ... S=size id=msgid T="subj" for rcpts"
    fill("p1_sender", arrival, r'^<= (?P<v>"[^"]*"@\S+|\S*)')
    fill("bounce_of", arrival, r"\sR=(?P<v>\S+)", unquoted)
    fill("size", arrival, r"\sS=(?P<v>\d+)", unquoted)
    fill("message_id", arrival, r"\sid=(?P<v>\S+)", unquoted)
    fill("subject", arrival, r'\sT="(?P<v>(?:[^"\\]|\\.)*)"')
    fill("for_list", arrival, r"\sfor (?P<v>[^=]+)$", unquoted)
    # H= on arrivals is the client; only the final [ip] is reliable (Exim spec, "Reception").
    fill("client_ip", arrival | rejected,
         r"(?:^|\s)H=(?:\S+ )?(?:\([^)]*\) )?\[(?P<v>[0-9A-Fa-f.:]+)\]", unquoted)
    # Delivery / failure / deferral: "=> addr [<orig>] ... R=router T=transport H=host [ip] C="..."
    fill("address", delivery, r'^.. (?P<v>"[^"]*"@\S+|\S+)')
    fill("original", delivery, r"^.. (?:\"[^\"]*\"@\S+|\S+) <(?P<v>[^>]*)>")
    fill("relay_host", delivery, r"\sH=(?P<v>[^\s\[]+)(?: \([^)]*\))? \[", unquoted)
    fill("delivery_sender", delivery, r"\s[FP]=<(?P<v>[^>]*)>", unquoted)
    fill("confirmation", delivery, r'\sC="(?P<v>(?:[^"\\]|\\.)*)"')
    fill("error", failed_or_deferred, r"(?:^|: )(?P<v>[2-5]\d\d[- ].*)$", unquoted)
    fill("error_text", failed_or_deferred, r"(?:\]\*? |\S):? ?: (?P<v>.*)$", unquoted)
    # Rejections at this host: "H=... F=<sender> rejected RCPT <rcpt>: reason"
    fill("reject_sender", rejected, r"(?:^|\s)F=<?(?P<v>[^\s>]*)>?")
    fill("reject_rcpt", rejected, r"rejected RCPT <?(?P<v>[^\s>:]+)>?")
    fill("reject_reason", rejected, r"rejected [^:]*: (?P<v>.*)$")
    return out


# --- correlation --------------------------------------------------------------------------------
def _records(cols: dict, f: dict, kind: np.ndarray, keep: np.ndarray, file_idx: int,
             first_line: int, host: pa.Array) -> pa.Table:
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
        "line": pa.array(np.arange(first_line, first_line + n, dtype=np.int64)),
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


def _aggregate(rec: pa.Table, gid: np.ndarray) -> pa.Table:
    """One row per message group."""
    kind = rec["kind"].to_numpy()
    t = rec.append_column("gid", pa.array(gid))
    t = t.append_column("order", pc.add(pc.multiply(rec["file"].cast(pa.int64()), 1 << 40),
                                        rec["line"]))
    t = t.append_column("is_arrival", pa.array(kind == ARRIVAL))
    t = t.append_column("is_delivered", pa.array(np.isin(kind, [DELIVERED, ALSO_DELIVERED])))
    t = t.append_column("is_failed", pa.array(kind == FAILED))
    t = t.append_column("is_deferred", pa.array(kind == DEFERRED))
    t = t.append_column("is_completed", pa.array(kind == COMPLETED))
    t = t.append_column("is_rejected", pa.array(kind == REJECTED))
    g = t.group_by("gid", use_threads=False).aggregate([
        ("order", "min"), ("ts", "min"), ("queue_id", "first"), ("host", "first"),
        ("p1_sender", "first"), ("bounce_of", "first"), ("size", "first"),
        ("message_id", "first"), ("subject", "first"), ("for_list", "first"),
        ("client_ip", "first"), ("recipient", "distinct"), ("relay_host", "last"),
        ("delivery_sender", "first"), ("response_fail", "last"), ("response_other", "last"), ("is_arrival", "any"), ("is_delivered", "any"),
        ("is_failed", "any"), ("is_deferred", "any"), ("is_completed", "any"),
        ("is_rejected", "any"), ("gid", "count"),
    ])
    return g.sort_by("gid")


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
    carry: pa.Table | None = None
    for file_idx, src in enumerate(files):
        split_state: dict = {}
        year = _year_of(src, ctx)
        for first_line, lines in iter_line_blocks(src, ctx.options.chunk_bytes):
            ctx.lines_read(src.name, NAME, len(lines))
            records = _parse_block(lines, first_line, file_idx, src, ctx, year, split_state)
            if carry is not None and carry.num_rows:
                records = pa.concat_tables([carry, records])
            carry, batch, orphans = _correlate(records, files, ctx, final=False)
            _skip_orphans(orphans, files, ctx)
            if batch is not None:
                yield batch
    if carry is not None and carry.num_rows:
        _carry, batch, orphans = _correlate(carry, files, ctx, final=True)
        if batch is not None:
            yield batch
        _skip_orphans(orphans, files, ctx)


def _skip_orphans(orphans: pa.Table, files: list[Source], ctx: IngestContext) -> None:
    if orphans.num_rows == 0:
        return
    counts = np.bincount(orphans["file"].to_numpy(), minlength=len(files))
    for i, c in enumerate(counts):
        ctx.skipped(files[i].name, NAME,
                    "message lines without arrival or delivery (lone Completed, frozen or "
                    "scanner notes of a message outside the log)", int(c))


def _parse_block(lines: pa.Array, first_line: int, file_idx: int, src: Source,
                 ctx: IngestContext, year: int, split_state: dict) -> pa.Table:
    blank = _mask(pc.equal(pc.utf8_trim_whitespace(lines), "")).to_numpy(zero_copy_only=False)
    plain, host, pid, part = _strip_syslog(lines, year)
    plain, cont, lost = _join_split_parts(plain, host, pid, part, split_state)
    cols, kind, _body = _parse_lines(plain, ctx.options.tz)
    kind[blank] = -3
    kind[cont | lost] = -4
    # Accounting for lines that take no part in correlation.
    ctx.skipped(src.name, NAME, "blank line", int(blank.sum()))
    ctx.skipped(src.name, NAME, "syslog continuation part [n/m] (joined to part 1)",
                int(cont.sum()))
    ctx.skipped(src.name, NAME, "syslog continuation part [n/m] whose part 1 is not in the log",
                int(lost.sum()))
    bad = np.flatnonzero(kind == -2)
    if len(bad):
        ctx.reject_lines(NAME, src.name, (bad + first_line).tolist(),
                         "not an Exim log line (no 'YYYY-MM-DD HH:MM:SS' timestamp)",
                         lines.take(pa.array(bad)))
    _skip_noise(cols["text"], kind == -1, src, ctx)
    f = _fields(cols["text"], kind)
    # A line that claims to be an arrival but names no sender cannot be a message row.
    broken = (kind == ARRIVAL) & ~pc.is_valid(f["p1_sender"]).to_numpy(zero_copy_only=False)
    if broken.any():
        idx = np.flatnonzero(broken)
        ctx.reject_lines(NAME, src.name, (idx + first_line).tolist(),
                         "arrival line '<=' without a sender address", lines.take(pa.array(idx)))
        kind[broken] = -5
    keep = kind >= 0
    return _records(cols, f, kind, keep, file_idx, first_line, host)


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
