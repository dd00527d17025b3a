"""The shared syslog prefix parser: RFC 3164 year/time-zone inference, ISO 8601, journald,
RFC 5424, line cutting, and rotated-file ordering."""

from __future__ import annotations

import datetime as dt
import gzip
import os
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa

from pipeline.ingest.base import Source
from pipeline.ingest.syslog import (
    BAD_TIME,
    NO_MESSAGE,
    NO_PREFIX,
    element,
    iter_line_blocks,
    lines_from_block,
    order_by_time,
    parse_prefix,
)

UTC = dt.UTC
JAN_2027 = dt.datetime(2027, 1, 15, 12, 0, tzinfo=UTC)


def _one(line: str, **kw):
    p = parse_prefix(pa.array([line]), **kw)
    return {
        "ts": p.ts[0].as_py(),
        "host": p.host[0].as_py(),
        "program": p.program[0].as_py(),
        "pid": p.pid[0].as_py(),
        "message": p.message[0].as_py(),
        "error": p.error[0].as_py(),
    }


def test_rfc3164_fields_and_tag_with_extra_parts():
    r = _one(
        "Jun  3 10:40:57 mail postfix/submission/smtpd[9708]: 4AA091855DA0: client=x[192.0.2.1]",
        clock=JAN_2027,
    )
    assert r["ts"] == dt.datetime(2026, 6, 3, 10, 40, 57, tzinfo=UTC)  # June is after January
    assert (r["host"], r["program"], r["pid"]) == ("mail", "postfix/submission/smtpd", "9708")
    assert r["message"] == "4AA091855DA0: client=x[192.0.2.1]"
    assert r["error"] is None


def test_year_rolls_back_across_new_year_and_year_option_wins():
    assert _one("Dec 31 23:59:59 h postfix/qmgr[1]: x", clock=JAN_2027)["ts"].year == 2026
    assert _one("Jan  1 00:00:01 h postfix/qmgr[1]: x", clock=JAN_2027)["ts"].year == 2027
    assert _one("Dec 31 23:59:59 h p[1]: x", clock=JAN_2027, year=2019)["ts"].year == 2019


def test_local_time_converted_with_tz():
    berlin = ZoneInfo("Europe/Berlin")
    r = _one("Nov  2 08:15:00 relay01 postfix/qmgr[1]: x", clock=JAN_2027, tz=berlin)
    assert r["ts"] == dt.datetime(2026, 11, 2, 7, 15, tzinfo=UTC)  # CET = UTC+1
    fixed = dt.timezone(dt.timedelta(hours=-5))
    r = _one("Jul  4 12:00:00 h p[1]: x", clock=JAN_2027, tz=fixed)
    assert r["ts"] == dt.datetime(2026, 7, 4, 17, 0, tzinfo=UTC)


def test_iso_rsyslog_fileformat_journald_and_rfc5424():
    r = _one("2016-03-23T01:09:28.962188+01:00 tron postfix/smtpd[472]: warning: x")
    assert r["ts"] == dt.datetime(2016, 3, 23, 0, 9, 28, 962188, tzinfo=UTC)
    r = _one("2023-01-01T10:00:00+0100 host postfix/smtpd[123]: hello")  # journalctl -o short-iso
    assert r["ts"] == dt.datetime(2023, 1, 1, 9, 0, tzinfo=UTC)
    assert r["program"] == "postfix/smtpd"
    r = _one("<22>1 2023-01-01T10:00:00Z relay01 postfix/qmgr 1021 - - ABC123DEF0: removed")
    assert (r["host"], r["program"], r["pid"], r["message"]) == (
        "relay01", "postfix/qmgr", "1021", "ABC123DEF0: removed",
    )
    r = _one("<13>Feb  5 17:32:18 10.0.0.99 sm-mta[5]: msg", clock=JAN_2027)
    assert (r["program"], r["message"]) == ("sm-mta", "msg")


def test_unpadded_day_priority_token_and_tag_without_pid():
    r = _one("Mar 7 02:09:33 server postfix/smtpd[27246]: x", clock=JAN_2027)
    assert r["ts"] == dt.datetime(2026, 3, 7, 2, 9, 33, tzinfo=UTC)
    r = _one("Jun 17 14:37:39 <mail.notice> robin sm-mta[2794]: x", clock=JAN_2027)
    assert (r["host"], r["program"]) == ("robin", "sm-mta")
    r = _one("Jun  3 10:40:59 mail dovecot: lmtp(9956): Connect from local", clock=JAN_2027)
    assert (r["program"], r["pid"], r["message"]) == ("dovecot", None, "lmtp(9956): Connect from local")


def test_bad_lines_get_reasons():
    assert _one("garbage")["error"] == NO_PREFIX
    assert _one("Feb 30 10:00:00 h p[1]: x", clock=JAN_2027)["error"] == BAD_TIME
    assert _one("Jun  3 10:40:57 mail", clock=JAN_2027)["error"] == NO_MESSAGE


def test_lines_from_block_crlf_and_invalid_utf8():
    arr = lines_from_block(b"a\r\nb\xff c\r\n\r\nlast\n")
    assert arr.to_pylist() == ["a", "b\ufffd c", "", "last"]


def test_iter_line_blocks_carries_partial_lines(tmp_path: Path):
    f = tmp_path / "log"
    f.write_bytes(b"".join(b"line %d\n" % i for i in range(1, 101)) + b"no newline at end")
    got, firsts = [], []
    for first, lines in iter_line_blocks(Source(f), 64):
        firsts.append(first)
        got.extend(lines.to_pylist())
    assert got == [f"line {i}" for i in range(1, 101)] + ["no newline at end"]
    assert firsts[0] == 1 and len(firsts) > 5


def test_element_is_null_past_the_end():
    lists = pa.array([["a", "b"], ["c"], None])
    assert element(lists, 1).to_pylist() == ["b", None, None]


def test_rotated_files_ordered_by_first_timestamp(tmp_path: Path):
    newest = tmp_path / "maillog"
    newest.write_text("Nov  2 08:00:00 relay01 postfix/qmgr[1]: x\n")
    older = tmp_path / "maillog.1"
    older.write_text("Nov  2 00:00:00 relay01 postfix/qmgr[1]: x\n")
    oldest = tmp_path / "maillog.2.gz"
    with gzip.open(oldest, "wt") as fh:
        fh.write("Nov  1 23:00:00 relay01 postfix/qmgr[1]: x\n")
    stamp = JAN_2027.timestamp()
    for f in (newest, older, oldest):
        os.utime(f, (stamp, stamp))
    ordered = order_by_time([Source(newest), Source(oldest), Source(older)])
    assert [s.path.name for s in ordered] == ["maillog.2.gz", "maillog.1", "maillog"]


# The fast path (RawLines + parse_prefix_raw) must give exactly what parse_prefix gives, for
# plain RFC 3164 lines and for every line it hands over to parse_prefix.
_MIXED = [
    "Jun  3 10:40:57 relay01 postfix/smtpd[9708]: 4AA091855DA0: client=app01[203.0.113.50]",
    "Dec 31 23:59:59 relay01 postfix/qmgr[1021]: 4AA091855DA0: removed",
    "Feb 29 12:00:00 relay01 postfix/qmgr[1021]: leap day (2024 only)",
    "Feb 30 10:00:00 h p[1]: impossible date",
    "Jun  3 24:00:00 h p[1]: hour 24",
    "Jun  3 23:59:60 h p[1]: leap second",
    "Mar 7 02:09:33 server postfix/smtpd[27246]: unpadded day",
    "Jun 17 14:37:39 <mail.notice> robin sm-mta[2794]: facility token",
    "Jun  3 10:40:59 mail dovecot: lmtp(9956): tag without pid",
    "Jun  3 10:40:59 mail tag::: colons",
    "Jun  3 10:40:59 mail postfix/smtpd[1]: ",
    "Jun  3 10:40:59 mail postfix/smtpd[1]:",
    "Jun  3 10:40:57 mail",
    "Jun  3 10:40:57  doublespace p[1]: x",
    "2016-03-23T01:09:28.962188+01:00 tron postfix/smtpd[472]: warning: iso",
    "2023-01-01T10:00:00+0100 host postfix/smtpd[123]: short-iso",
    "<22>1 2023-01-01T10:00:00Z relay01 postfix/qmgr 1021 - - ABC123DEF0: removed",
    "<13>Feb  5 17:32:18 10.0.0.99 sm-mta[5]: pri",
    "",
    "   ",
    "garbage",
    "Jun  3 10:40:57 hôst-ünïcode postfix/smtpd[1]: ünïcode message ✓",
    "Jun  3 10:40:57 h p[1]: short",
    "Jun  3 10:40:57 a-very-long-host-name.example.com postfix/submission/smtpd[99999]: " + "x" * 300,
]


def test_fast_prefix_path_matches_general_parser():
    from zoneinfo import ZoneInfo

    from pipeline.ingest.syslog import parse_prefix_raw, raw_lines

    block = ("\n".join(_MIXED) + "\n").encode()
    for kw in ({"clock": JAN_2027}, {"year": 2024}, {"clock": JAN_2027, "tz": ZoneInfo("Europe/Berlin")}):
        raw = raw_lines(block)
        fast = parse_prefix_raw(raw, **kw)
        slow = parse_prefix(pa.array(_MIXED), **kw)
        assert fast.ts.equals(slow.ts)
        assert fast.host(np.arange(len(_MIXED))).equals(slow.host)
        assert fast.program.equals(slow.program)
        assert fast.error.equals(slow.error)
        ok = fast.ok
        assert ok.tolist() == pa.compute.is_null(slow.error).to_pylist()
        messages = raw.slices(fast.msg_start[ok], raw.ends[ok])
        assert messages.to_pylist() == slow.message.filter(pa.array(ok)).to_pylist()
        assert fast.ok.sum() < len(_MIXED)  # the bad lines above are not ok


def test_raw_lines_crlf_invalid_utf8_and_short_values():
    from pipeline.ingest.syslog import raw_lines

    raw = raw_lines(b"a\r\nb\xff c\r\n\r\nlast\n")
    assert raw.lines().to_pylist() == ["a", "b\ufffd c", "", "last"]
    # Values of every length around the 12-byte inline limit of the string_view layout.
    text = "".join(f"{'x' * i}\n" for i in range(20))
    raw = raw_lines(text.encode())
    assert raw.lines().to_pylist() == ["x" * i for i in range(20)]


def test_byte_offset_helpers_windows_fallback_and_tiny_blocks():
    from pipeline.ingest.syslog import head_starts, raw_lines

    # A one-byte line: the padding keeps every window inside the buffer.
    raw = raw_lines(b"x\n")
    assert raw.next_byte(raw.starts, 32)[0] == len(raw.buf) - 1  # no space anywhere: past the lines
    assert head_starts(raw.heads(raw.starts, raw.ends), "x").tolist() == [True]
    assert head_starts(raw.heads(raw.starts, raw.ends), "x ").tolist() == [False]
    # A space far past the first window is found by the full search; the next line's text
    # never counts as this line's (heads stop at the line end).
    raw = raw_lines(("a" * 100 + " b\nconnect from x\n").encode())
    assert raw.next_byte(raw.starts, 32).tolist() == [100, 110]
    heads = raw.heads(raw.starts, raw.ends)
    assert head_starts(heads, "connect ").tolist() == [False, True]
    assert head_starts(raw.heads(raw.starts + 100, raw.ends), " bconnect").tolist() == [False, False]


def test_iter_padded_blocks_carries_partial_lines_and_pads(tmp_path: Path):
    from pipeline.ingest.syslog import _PAD, iter_padded_blocks, raw_lines

    text = b"".join(b"line %d\n" % i for i in range(1, 101)) + b"x" * 300 + b"\nno newline at end"
    for name, write in (("log", Path.write_bytes), ("log.gz", lambda p, b: p.write_bytes(gzip.compress(b)))):
        f = tmp_path / name
        write(f, text)
        got = []
        blocks = list(iter_padded_blocks(Source(f), 64))
        for block in blocks:
            assert not block[-_PAD:].any()  # zero padding after the text
            assert block[-_PAD - 1] == 10  # whole lines only
            got.extend(raw_lines(block).lines().to_pylist())
        assert got == text.decode().split("\n")
        assert len(blocks) > 5  # the 300-byte line spans several reads


def test_next_byte_with_record_end_slides_its_window():
    from pipeline.ingest.syslog import raw_lines

    line = "a" * 70 + ",b" + "c" * 300 + ",d"
    raw = raw_lines((line + "\n" + "e,\n").encode())
    starts, ends = raw.starts, raw.ends
    none = len(raw.buf) - 1
    assert raw.next_byte(starts, 44, ends).tolist() == [70, starts[1] + 1]
    # Past the end of the record counts as none, even when the next line has the byte.
    assert raw.next_byte(starts + 71, 44, starts + 100).tolist()[0] == none
    # Farther than the sliding windows reach: the block's positions of the byte.
    assert raw.next_byte(starts + 71, 44, ends).tolist()[0] == 70 + 2 + 300
    assert raw.next_byte(starts[:1] + 72, 44).tolist() == [372]


def test_first_true_and_slices_in_and_out_of_line_order():
    from pipeline.ingest.syslog import first_true, raw_lines

    m = np.zeros((4, 32), dtype=bool)
    m[0, 3] = m[0, 9] = m[2, 31] = m[3, 0] = True
    assert first_true(m).tolist() == [3, 32, 31, 0]
    assert first_true(m, last=True).tolist() == [9, 32, 31, 0]
    raw = raw_lines(b"alpha beta\ngamma\n\xce\xb4elta epsilon\n")
    words = ["alpha", "beta", "gamma", "\u03b4elta", "epsilon"]
    start = np.array([0, 6, 11, 17, 24])
    end = np.array([5, 10, 16, 23, 31])
    assert raw.slices(start, end).to_pylist() == words  # in order: one filter over the buffer
    order = np.array([4, 0, 3, 1, 2])
    assert raw.slices(start[order], end[order]).to_pylist() == [words[i] for i in order]
    assert raw.slices(np.array([6, 6]), np.array([5, 10])).to_pylist() == ["", "beta"]


def test_iso_time_without_offset_is_local_time_next_to_rfc3164_lines():
    lines = pa.array([
        "2023-01-01T10:00:00 host prog[1]: iso, no offset",
        "Jan  1 10:00:00 host prog[1]: bsd",
        "2023-01-01T10:00:00+00:00 host prog[1]: iso, offset",
    ])
    p = parse_prefix(lines, year=2023, tz=ZoneInfo("Europe/Berlin"))
    got = [t.as_py().replace(tzinfo=None) for t in p.ts]
    assert got == [dt.datetime(2023, 1, 1, 9), dt.datetime(2023, 1, 1, 9), dt.datetime(2023, 1, 1, 10)]
