"""Postfix ingestor: one fixture per quirk under tests/data/postfix, the sample_logs smart host,
and the real public samples (skipped when ../shared is absent)."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.errors import InputFormatError
from pipeline.ingest import expand_inputs, ingest, postfix
from pipeline.ingest.base import IngestContext, IngestOptions, Source

DATA = Path(__file__).resolve().parent.parent / "data" / "postfix"
NOV_2026 = dt.datetime(2026, 11, 28, tzinfo=dt.UTC).timestamp()


def run(paths, **opts):
    """Read files with the postfix module; return (rows as dicts, ctx, reject tables)."""
    rejects: list[pa.Table] = []
    ctx = IngestContext(IngestOptions(**opts), reject_sink=rejects.append)
    sources = [p if isinstance(p, Source) else Source(Path(p)) for p in paths]
    batches = list(postfix.read(sources, ctx))
    table = pa.Table.from_batches(batches) if batches else None
    rows = table.to_pylist() if table is not None else []
    assert_accounted(ctx)
    return rows, ctx, rejects


def assert_accounted(ctx: IngestContext) -> None:
    for name, f in ctx.accounting.files.items():
        total = f["parsed"] + sum(f["skipped"].values()) + sum(f["rejected"].values())
        assert f["lines"] == total, (name, f)


def by_qid(rows):
    return {r["queue_id"]: r for r in rows}


def test_detect():
    assert postfix.detect(b"Jun  3 10:40:57 mail postfix/submission/smtpd[9708]: connect from x")
    assert postfix.detect(b"2023-01-01T10:00:00+0100 h postfix-out/smtp[1]: x")
    assert not postfix.detect(b"Feb 24 14:00:00 server sendmail[26592]: u0CB32qX026592: from=<a>")
    assert not postfix.detect(b"2026-11-02 08:15:00 1avJcc-0003Py-15 <= a@b H=x [192.0.2.1]")


def test_header_checks_give_p2_subject_and_fall_back_to_sender():
    rows, ctx, _ = run([DATA / "header_checks.log"], year=2026)
    r = by_qid(rows)["1F2E3D4C5B"]
    assert r["p1_sender"] == "helpdesk@app02.corp.local"
    assert r["p2_sender"] == "helpdesk@contoso.com"  # From: wins over the Sender: logged first
    assert r["p2_domain"] == "contoso.com"
    assert r["subject"] == "Ticket #4711 from the helpdesk"
    assert r["client_ip"] == "203.0.113.56"
    assert r["message_id"] == "app02.77120@app02.corp.contoso.com"
    assert r["size"] == 3377
    assert r["relay_host"] == "contoso-com.mail.protection.outlook.com"
    assert r["status"] == "sent" and r["incomplete"] is False
    assert r["ts"] == dt.datetime(2026, 11, 2, 9, 15, 42, tzinfo=dt.UTC)
    assert r["source_line"] == 2 and r["host"] == "relay01"
    cron = by_qid(rows)["5B6C7D8E9F"]
    assert cron["p2_sender"] == "root@relay01.corp.contoso.com"  # '(Cron Daemon)' comment dropped
    assert cron["relay_host"] == "local"
    f = ctx.accounting.files[str(DATA / "header_checks.log")]
    assert f["skipped"][postfix.SKIP_HEADER_UNUSED] == 1  # X-Mailer
    assert f["skipped"][postfix.SKIP_CONNECTION] == 1


def test_ndr_postfix_generated_and_tenant_attribution_response():
    rows, _, _ = run([DATA / "ndr_tenant_attribution.log"], year=2026)
    rows = by_qid(rows)
    orig = rows["7D4E2B9C01"]
    assert orig["status"] == "bounced"
    assert orig["response"] == (
        "550 5.7.64 TenantAttribution; Relay Access Denied [AM0PR01MB1234.eurprd01.prod.exchangelabs.com]"
    )
    assert orig["is_ndr"] is False
    ndr = rows["9E0A1B2C3D"]
    assert ndr["p1_sender"] == "" and ndr["p1_domain"] is None
    assert ndr["is_ndr"] is True
    assert ndr["recipients"] == ["scanner3f@printers.example"]
    assert ndr["incomplete"] is False


def test_queue_id_reuse_makes_separate_messages():
    rows, _, _ = run([DATA / "queue_id_reuse.log"], year=2026)
    assert [r["p1_sender"] for r in rows] == ["first@contoso.com", "second@contoso.com", "third@contoso.com"]
    assert [r["client_ip"] for r in rows] == ["203.0.113.50", "203.0.113.56", "203.0.113.57"]
    # The second lost its 'removed' (a new client= for the same id closed it): incomplete.
    assert [r["incomplete"] for r in rows] == [False, True, False]
    assert rows[1]["status"] is None and rows[2]["recipients"] == ["c@fabrikam.com"]


def test_tags_with_extra_parts_instances_and_long_queue_ids():
    rows, _, _ = run([DATA / "tags_and_long_ids.log"], year=2026)
    assert len(rows) == 4
    long_id = [r for r in rows if r["queue_id"] == "4Tq1xY2QZtz9sKf"][0]
    assert long_id["message_id"] == "reports.1@ws-117.corp.contoso.com"
    assert long_id["relay_host"] == "127.0.0.1"  # content filter hop, not Exchange Online
    same_id = [r for r in rows if r["queue_id"] == "3F2A1B0C9D"]
    # postfix-out and postfix are separate instances with separate queues.
    assert sorted(r["p1_sender"] for r in same_id) == ["other@contoso.com", "reports@contoso.com"]
    out = [r for r in same_id if r["p1_sender"] == "reports@contoso.com"][0]
    assert out["relay_host"] == "contoso-com.mail.protection.outlook.com" and not out["incomplete"]
    smtps = [r for r in same_id if r["p1_sender"] == "other@contoso.com"][0]
    assert smtps["client_ip"] == "203.0.113.118" and smtps["incomplete"] is True


def test_noqueue_rejects_become_rows_probes_and_filters_are_skips():
    rows, ctx, _ = run([DATA / "noqueue.log"], year=2026)
    assert len(rows) == 2
    r = rows[0]
    assert r["status"] == "rejected" and r["queue_id"] is None
    assert r["p1_sender"] == "billing@contoso-payments.example"
    assert r["recipients"] == ["ceo@fabrikam.com"]
    assert r["client_ip"] == "198.51.100.77"
    assert r["response"] == "554 5.7.1 <ceo@fabrikam.com>: Relay access denied"
    assert r["relay_host"] == "none"  # rejected here: never reached Exchange Online
    ps = rows[1]
    assert ps["recipients"] == ["sales@contoso.com"] and ps["client_ip"] == "198.51.100.79"
    f = ctx.accounting.files[str(DATA / "noqueue.log")]
    assert f["skipped"][postfix.SKIP_NOT_MESSAGE] == 1
    assert f["skipped"][postfix.SKIP_NOQUEUE_INFO] == 1
    assert f["skipped"][postfix.SKIP_OTHER_PROGRAM] == 1  # 'postscreen[900]' is not postfix/...


def test_rsyslog_fileformat_deferred_relay_none_is_incomplete():
    rows, _, _ = run([DATA / "rsyslog_fileformat.log"])
    (r,) = rows
    assert r["ts"] == dt.datetime(2026, 11, 2, 8, 40, 0, 123456, tzinfo=dt.UTC)
    assert r["status"] == "deferred" and r["incomplete"] is True
    # relay=none: the host it tried to reach is the next hop.
    assert r["relay_host"] == "contoso-com.mail.protection.outlook.com"


def test_journald_short_iso():
    (r,) = run([DATA / "journald_short_iso.log"])[0]
    assert r["ts"] == dt.datetime(2026, 11, 2, 9, 0, 0, tzinfo=dt.UTC)
    assert r["p1_sender"] == "hr-portal@contoso.com" and r["incomplete"] is False


def test_new_year_from_file_mtime(tmp_path: Path):
    f = tmp_path / "maillog"
    shutil.copy(DATA / "new_year.log", f)
    jan = dt.datetime(2027, 1, 2, tzinfo=dt.UTC).timestamp()
    os.utime(f, (jan, jan))
    (r,) = run([f])[0]
    assert r["ts"] == dt.datetime(2026, 12, 31, 23, 59, 58, tzinfo=dt.UTC)
    assert r["status"] == "sent" and r["incomplete"] is False


def test_malformed_lines_are_rejects_with_reasons_and_crlf():
    rows, ctx, rejects = run([DATA / "malformed_crlf.log"], year=2026)
    (r,) = rows
    assert r["p1_sender"] == "caf\ufffd@contoso.com"  # invalid UTF-8 replaced, never a crash
    reasons = {
        row["source_line"]: row["reason"] for t in rejects for row in t.to_pylist()
    }
    assert set(reasons) == {2, 4, 5}
    assert reasons[4] == postfix.REJECT_DELIVERY
    assert "syslog timestamp" in reasons[5]
    f = ctx.accounting.files[str(DATA / "malformed_crlf.log")]
    assert f["lines"] == 8 and f["parsed"] == 2
    assert f["skipped"][postfix.SKIP_BLANK] == 1 and f["skipped"][postfix.SKIP_OTHER_PROGRAM] == 1


def test_state_carried_across_tiny_blocks():
    big, _, _ = run([DATA / "ndr_tenant_attribution.log", DATA / "header_checks.log"], year=2026)
    small, _, _ = run(
        [DATA / "ndr_tenant_attribution.log", DATA / "header_checks.log"], year=2026, chunk_bytes=1
    )
    key = lambda rows: sorted((r["queue_id"], r["p1_sender"], r["status"], r["incomplete"]) for r in rows)  # noqa: E731
    assert key(big) == key(small) and len(big) == 4


def test_sample_smart_host_rotated_files_in_any_order(sample_logs: Path, tmp_path: Path):
    folder = tmp_path / "postfix"
    shutil.copytree(sample_logs / "postfix", folder)
    for f in folder.iterdir():
        os.utime(f, (NOV_2026, NOV_2026))
    order = [folder / "maillog", folder / "maillog.2.gz", folder / "maillog.1"]
    rows, ctx, rejects = run(order)
    assert not rejects
    rows = by_qid(rows)
    erp = rows["3C1F0E2A77"]  # starts in maillog.2.gz, delivered in maillog.1
    assert erp["source_file"].endswith("maillog.2.gz") and erp["incomplete"] is False
    assert erp["p1_sender"] == "noreply@erp.corp.local" and erp["p2_sender"] == "invoices@contoso.com"
    assert rows["2F7A9C3B11"]["p1_domain"] == "em123.sendgrid.net"
    assert rows["7D4E2B9C01"]["response"].startswith("550 5.7.64 TenantAttribution")
    assert rows["9E0A1B2C3D"]["is_ndr"] is True and rows["9E0A1B2C3D"]["p1_sender"] == ""
    assert rows["5B6C7D8E9F"]["relay_host"] == "local"
    assert rows["0D1E2F3A4B"]["incomplete"] is True
    assert rows[None]["status"] == "rejected"
    assert ctx.accounting.totals()["rejected_lines"] == 0


def test_ingest_driver_detects_postfix(sample_logs: Path, tmp_path: Path):
    summary = ingest([sample_logs / "postfix"], tmp_path / "work")
    assert summary["formats"].keys() == {"postfix"}
    assert summary["messages"] == 12
    t = summary["totals"]
    assert t["lines"] == t["parsed"] + t["skipped_lines"] + t["rejected_lines"]
    assert len(expand_inputs([sample_logs / "postfix"])) == 3


def test_unreadable_gz_raises_input_format_error(tmp_path: Path):
    bad = tmp_path / "maillog.3.gz"
    bad.write_bytes(b"not gzip at all")
    ctx = IngestContext(IngestOptions())
    with pytest.raises(InputFormatError, match="maillog.3.gz"):
        list(postfix.read([Source(bad)], ctx))


# ---- real public samples -----------------------------------------------------------------

# Truly malformed upstream: the lightmeter fixture has a delivery line broken in two.
EXPECTED_REJECTS = {"lightmeter-18_expired.log": 1}


def _real_lines(path: Path) -> list[str]:
    """Strip the wrappers the shared samples carry (see their PROVENANCE.md)."""
    text = path.read_text(errors="replace")
    if path.suffix == ".tsv":  # whyscream: message bodies without the syslog prefix
        rows: list[str] = []
        for ln in text.splitlines()[1:]:
            if ln.startswith("test/"):
                rows.append(ln)
            elif rows:
                rows[-1] += "#012" + ln  # a multi-line value, escaped the way rsyslog does
        out = []
        for row in rows:
            name, data = row.split("\t", 1)
            daemon = re.sub(r"_\d+\.yaml$", "", name.rsplit("/", 1)[-1])
            out.append(f"Oct 26 18:13:50 mail postfix/{daemon}[123]: {data}")
        return out
    if path.suffix == ".ini":
        return re.findall(r"^log \d+ pass = (.*)$", text, re.M)
    if path.suffix == ".rst":
        return [ln[2:] for ln in text.splitlines() if ln.startswith("  ") and ln.strip()]
    if path.name.startswith("wazuh"):
        return [ln for ln in text.splitlines() if re.match(r"^\d{4}-\d\d-\d\dT", ln)]
    return [ln for ln in text.splitlines() if not ln.startswith("#")]


def test_real_samples_parse_without_unexpected_rejects(real_samples: Path, tmp_path: Path):
    files = sorted((real_samples / "postfix").iterdir())
    assert files
    total_rows = 0
    for f in files:
        lines = _real_lines(f)
        copy = tmp_path / f.name
        copy.write_text("\n".join(lines) + "\n")
        rows, ctx, rejects = run([copy], year=2020)
        got = sum(len(t) for t in rejects)
        assert got == EXPECTED_REJECTS.get(f.name, 0), (f.name, [t.to_pylist() for t in rejects])
        total_rows += len(rows)
    assert total_rows > 150


def test_real_queue_id_reuse_sample(real_samples: Path):
    rows, _, _ = run([real_samples / "postfix" / "lightmeter-14_reuse_of_queueid.log"], year=2020)
    reused = [r for r in rows if r["queue_id"] == "BABABABABA"]
    assert len(reused) == 2 and len(rows) == 72


# The delivery and header_checks lines are read with splits, not one regex; these are the
# regexes they replace (postfix 3.x smtp(8) / cleanup(8) formats), checked on tricky lines.
_DELIVERY_RE = re.compile(
    r"^to=<?(?P<to>[^>,]*)>?, (?:orig_to=<?[^>,]*>?, )?relay=(?P<relay>[^,]*), "
    r"(?:.*?, )?status=(?P<status>[A-Za-z-]+)(?: \((?P<reply>.*?)\)?)?$"
)
_HEADER_RE = re.compile(
    r"^[a-z_-]+: header (?P<name>[A-Za-z0-9-]+): (?P<value>.*) from [^;]*?; "
    r"from=<(?P<p1>[^>]*)>(?: to=<(?P<to>[^>]*)>)?"
)
_DELIVERIES = [
    "to=<a@fabrikam.com>, relay=contoso-com.mail.protection.outlook.com[198.51.100.201]:25, "
    "delay=2.4, delays=0.6/0.01/0.9/0.9, dsn=5.7.64, status=bounced (host x[198.51.100.201] said: "
    "550 5.7.64 TenantAttribution; Relay Access Denied (in reply to MAIL FROM command))",
    "to=<a@fabrikam.com>, orig_to=<b@contoso.com>, relay=local, delay=0.1, status=sent (delivered to mailbox)",
    "to=b@fabrikam.com, relay=none, delay=30, dsn=4.4.1, status=deferred (connect to "
    "contoso-com.mail.protection.outlook.com[198.51.100.201]:25: Connection timed out)",
    "to=<a@fabrikam.com>, relay=dovecot, delay=0.1, dsn=2.0.0, status=sent",
    "to=<a@fabrikam.com>, relay=x[192.0.2.1]:25, conn_use=2, delay=1, status=sent (250 ok (queued))",
    "to=<a@fabrikam.com>, relay=x[192.0.2.1]:25, delay=1, status=sent(no space)",
    "to=<a@fabrikam.com>, relay=x[192.0.2.1]:25, delay=1, status=sent trailing words",
    "to=<a@fabrikam.com>, delay=1, status=sent (no relay)",
    "to=<a,b@fabrikam.com>, relay=x, status=sent (comma in address)",
    "to=<a@fabrikam.com>, relay=x[192.0.2.1]:25, delay=1, status=",
    "to=<a@fabrikam.com>, relay=x[192.0.2.1]:25, delay=1, status=bounced ()",
    "to=<a@fabrikam.com>, relay=x[192.0.2.1]:25, delay=1, status=sent (",
    "to=<>, relay=x,y, delay=1, status=sent (comma in relay)",
    "to=<a@fabrikam.com>, orig_to=<b,c@contoso.com>, relay=x, status=sent (comma in orig_to)",
    "to=<a@fabrikam.com>,relay=x, status=sent (no space after comma)",
    "to=<a@fabrikam.com>, relay=x, delay=1, status=sent (ünïcode reply ✓)",
    "to=<a>b@fabrikam.com>, relay=x, status=sent",
    "to=<a@fabrikam.com>, relay=x",
]
_HEADERS = [
    "info: header From: App <invoices@contoso.com> from erp01[203.0.113.50]; from=<noreply@erp.corp.local> "
    "to=<a@fabrikam.com> proto=ESMTP helo=<erp01>",
    "warning: header Subject: Invoice from March from Contoso from x[192.0.2.1]; from=<a@contoso.com> "
    "proto=SMTP helo=<x>",
    "info: header Sender: root@relay01 (Cron Daemon) from local; from=<root@relay01>",
    "info: header From: a; from=<b> trick from x[192.0.2.1]; from=<c@contoso.com> to=<d@fabrikam.com>",
    "info: header From: no client part; from=<c@contoso.com>",
    "info: header From: x from y[192.0.2.1]; from=<unterminated",
    "info: header From: x from y[192.0.2.1]; from=<p1@contoso.com> to=<unterminated",
]


def test_delivery_fields_match_the_postfix_delivery_regex():
    got = postfix._delivery_fields(pa.array(_DELIVERIES))
    for i, line in enumerate(_DELIVERIES):
        m = _DELIVERY_RE.match(line)
        assert bool(got["valid"][i]) == (m is not None), line
        if m:
            assert got["to"][i].as_py() == m["to"], line
            assert got["relay"][i].as_py() == m["relay"], line
            assert got["status"][i].as_py() == m["status"], line
            assert got["reply"][i].as_py() == (m["reply"] or ""), line


def test_header_fields_match_the_header_checks_regex():
    got = postfix._header_fields(pa.array(_HEADERS))
    for i, line in enumerate(_HEADERS):
        m = _HEADER_RE.match(line)
        assert bool(got["valid"][i]) == (m is not None), line
        if m:
            for f in ("name", "value", "p1"):
                assert got[f][i].as_py() == m[f], (f, line)
            assert got["to"][i].as_py() == (m["to"] or ""), line


def test_spread_strings_puts_values_at_rows_without_copying_text():
    import numpy as np

    cases = [
        (pa.array(["", ""]), [None, "", None, "", None, None]),
        (pa.array([None, None], pa.string()), [None] * 6),
        (pa.array(["ab", None, "c"]).slice(1), [None, None, None, "c", None, None]),
        (pa.array(["x", "yy", "zzz"]), [None, "x", None, "yy", "zzz", None]),
    ]
    for values, want in cases:
        out = postfix._spread_strings(6, np.array([1, 3, 4][: len(values)]), values)
        out.validate(full=True)
        assert out.to_pylist() == want


def test_skip_kinds_read_from_line_starts_and_tls_phrase_anywhere(tmp_path: Path):
    # Daemon noise is classified on the first bytes of each message (no text cut out); the
    # TLS phrase is also found further into the line than right after the first word.
    log = tmp_path / "maillog"
    log.write_text(
        "Nov  2 08:15:01 relay01 postfix/smtpd[1]: connect from app01[203.0.113.50]\n"
        "Nov  2 08:15:01 relay01 postfix/smtpd[1]: improper command pipelining after EHLO from x\n"
        "Nov  2 08:15:01 relay01 postfix/smtp[2]: Trusted TLS connection established to "
        "contoso-com.mail.protection.outlook.com[198.51.100.201]:25: TLSv1.2\n"
        "Nov  2 08:15:01 relay01 postfix/smtpd[1]: setting up: Anonymous TLS connection established\n"
        "Nov  2 08:15:01 relay01 postfix/smtpd[1]: warning: hostname x does not resolve\n"
        "Nov  2 08:15:01 relay01 postfix/anvil[3]: statistics: max connection rate 1/60s\n"
        "Nov  2 08:15:01 relay01 postfix/smtpd[1]: connected somewhere\n"
        "Nov  2 08:15:01 relay01 postfix/qmgr[4]: 4AA091855DA0: removed-ish\n"
    )
    rows, ctx, _ = run([log], year=2026)
    assert rows == []
    assert_accounted(ctx)
    skipped = ctx.accounting.totals()["skipped"]
    assert skipped[postfix.SKIP_CONNECTION] == 2
    assert skipped[postfix.SKIP_TLS] == 2
    assert skipped[postfix.SKIP_WARNING] == 1
    assert skipped[postfix.SKIP_STATS] == 1
    assert skipped[postfix.SKIP_DAEMON] == 1
    assert skipped[postfix.SKIP_QID_UNUSED] == 1


def _records_block(records: list[str]):
    """Records as the lines of one RawLines block, each after a prefix of varying length (as
    a record follows 'QUEUEID: '): (raw, record starts, record ends)."""
    import numpy as np

    from pipeline.ingest.syslog import raw_lines

    prefixes = ["x" * (i % 37) + "\x01" for i in range(len(records))]
    raw = raw_lines("".join(p + r + "\n" for p, r in zip(prefixes, records, strict=True)).encode())
    return raw, raw.starts + np.array([len(p) for p in prefixes]), raw.ends


def _mutations(seeds: list[str], n: int, seed: int = 7) -> list[str]:
    """The seeds, then n random edits of them (cuts, stray separators, deletions)."""
    import random

    rng = random.Random(seed)
    bits = [",", ">", "<", " ", ":", "[", "]", ";", "(", ")", ", ", ", status=", "; from=<", " from ",
            ", relay=", " to=<", "z", "\t", "\u00e9", "\u3000", "=", "-"]
    out = list(seeds)
    for _ in range(n):
        s = rng.choice(seeds)
        for _ in range(rng.choice([1, 1, 2, 3])):
            k = rng.randrange(len(s) + 1)
            r = rng.random()
            if r < 0.3:
                s = s[:k]
            elif r < 0.8:
                s = s[:k] + rng.choice(bits) + s[k + rng.choice([0, 0, 1, 2]):]
            else:
                s = s[:k] + s[k + rng.randrange(1, 12):]
        out.append(s)
    return out


def _assert_same_fields(got: dict, want: dict, records: list[str]) -> None:
    import numpy as np

    for key, w in want.items():
        g = got[key]
        if isinstance(w, np.ndarray):
            assert g.tolist() == w.tolist(), key
        else:
            g, w = g.to_pylist(), w.to_pylist()
            bad = [(records[i], g[i], w[i]) for i in range(len(w)) if g[i] != w[i]]
            assert not bad, (key, bad[:3])


_CLIENTS = ["client=erp01.corp.contoso.com[203.0.113.50]", "client=unknown[198.51.100.7]:587",
            "client=a,b[192.0.2.1]", "client=x[192.0.2.1", "client=[]",
            "client=h[::1], sasl_method=PLAIN, sasl_username=u"]
_MESSAGE_IDS = ["message-id=<0943287054.1000@erp01.corp.contoso.com>", "message-id= <x@y> ",
                "message-id=", "message-id=\u3000<a@b>\u3000", "message-id=<a@b>\t", "message-id=\u00e9"]
_QMGRS = ["from=<noreply@erp.corp.local>, size=2214, nrcpt=1 (queue active)",
          "from=<>, size=0, nrcpt=1 (queue active)", "from=<a@b>, status=expired, returned to sender",
          "from=<a@b>, size=123456789012345678, nrcpt=1", "from=<a@b>, size=12345678901234567, nrcpt=1",
          "from=<a@b>, size=1", "from=<a@b>, size=x", "from=<a>b>, size=5"]


def test_fast_record_readers_match_the_general_readers():
    # Each record kind is read on byte offsets when it has its usual shape, else by the
    # general Arrow reader: on mutated records both must give the same fields.
    header_line = re.compile(postfix._HEADER_LINE)
    cases = [
        (_DELIVERIES, None, postfix._read_delivery,
         lambda s: {**(d := postfix._delivery_fields(s)), "relay": postfix._host_of_relay(d["relay"])}),
        (_HEADERS, header_line.match, postfix._read_header, postfix._header_fields),
        (_CLIENTS, None, lambda *a: {"ip": postfix._read_client(*a)},
         lambda s: {"ip": postfix.extract(s, postfix._CLIENT)}),
        (_MESSAGE_IDS, lambda r: r.startswith("message-id="),
         lambda *a: {"id": postfix._read_message_id(*a)},
         lambda s: {"id": pa.compute.utf8_trim_whitespace(pa.compute.utf8_slice_codeunits(s, 11))}),
        (_QMGRS, lambda r: r.startswith("from=<"), postfix._read_qmgr, postfix._qmgr_fields),
    ]
    for seeds, kind_test, fast, general in cases:
        records = [r for r in _mutations(seeds, 3000) if kind_test is None or kind_test(r)]
        raw, a, e = _records_block(records)
        _assert_same_fields(fast(raw, a, e), general(pa.array(records)), records)


def test_queue_id_words_and_header_names_match_their_regexes():
    import numpy as np

    words = ["NOQUEUE", "NOQUEUEX", "noqueue", "4AA091855DA0", "4Tq1xY2QZtz9s", "ABCDE", "ABCD",
             "0123456789z", "0123456789zA", "012345678zA", "A" * 15 + "z1", "A" * 16, "A" * 40, ""]
    words = _mutations(words, 2000)
    raw, a, e = _records_block(words)
    is_qid, is_noq = postfix._queue_id_words(raw, a, e)
    want = pa.compute.match_substring_regex(pa.array(words), postfix._QUEUE_ID).to_numpy(zero_copy_only=False)
    assert is_qid.tolist() == want.tolist()
    assert is_noq.tolist() == [w == "NOQUEUE" for w in words]
    names = _mutations(["info: header From: x", "info: header " + "A" * 30 + ": x",
                        "info: header " + "A" * 31 + ": x", "info: header X-Mailer:"], 2000)
    raw, a, e = _records_block(names)
    got = postfix._header_name_ends(raw, np.minimum(a + 13, e), e)
    want = pa.compute.match_substring_regex(pa.array(names), postfix._HEADER_LINE).to_numpy(zero_copy_only=False)
    starts = np.array([n.startswith("info: header ") for n in names])
    assert got[starts].tolist() == want[starts].tolist()


def test_line_numbers_and_messages_do_not_depend_on_the_block_size():
    rows, ctx, rejects = run([DATA / "malformed_crlf.log"], year=2026)
    for size in (1024, 2048):
        small_rows, small_ctx, small_rejects = run([DATA / "malformed_crlf.log"], year=2026, chunk_bytes=size)
        assert small_rows == rows
        assert small_ctx.accounting.to_json() == ctx.accounting.to_json()
        assert pa.concat_tables(small_rejects).equals(pa.concat_tables(rejects))


def test_recipient_domains_match_list_domains_joined():
    import random

    from pipeline.ingest.base import _recipient_domains
    from pipeline.normalize import list_domains_joined

    rng = random.Random(1)
    parts = ["a@B.com", "x@b.com.", "y@c.org", "z", "", None, "q@\u00fc.de", "w@\u00dc.DE", "p@x.y>",
             "r@ a.b", "<s@d.e>", "u@v@w.x", "k@.", "m@b.com "]
    for _ in range(200):
        rows = [None if rng.random() < 0.1 else [rng.choice(parts) for _ in range(rng.randrange(5))]
                for _ in range(rng.randrange(30))]
        arr = pa.array(rows, pa.list_(pa.string()))
        assert _recipient_domains(arr).equals(list_domains_joined(arr)), rows
        if len(arr) > 1:
            assert _recipient_domains(arr.slice(1)).equals(list_domains_joined(arr.slice(1)))
