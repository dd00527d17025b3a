"""exchange-tracking: MSGTRK logs collapsed into messages, joined with protocol logs."""

from __future__ import annotations

import pyarrow as pa

from pipeline.ingest import exchange_tracking
from pipeline.ingest.base import IngestContext, IngestOptions, Source


def run(paths, host=None, protocol=(), chunk_bytes=None):
    rejects: list[pa.Table] = []
    opts = IngestOptions() if chunk_bytes is None else IngestOptions(chunk_bytes=chunk_bytes)
    ctx = IngestContext(opts, reject_sink=rejects.append)
    if protocol:
        ctx.all_sources = {"exchange-protocol": [Source(p, host=host) for p in protocol]}
    batches = list(exchange_tracking.read([Source(p, host=host) for p in paths], ctx))
    rows = pa.Table.from_batches(batches).to_pylist() if batches else []
    rej = pa.concat_tables(rejects).to_pylist() if rejects else []
    for f in ctx.accounting.files.values():
        assert f["lines"] == f["parsed"] + sum(f["skipped"].values()) + sum(f["rejected"].values())
    return rows, rej, ctx


def test_2010_fields_quoting_hops_and_ndr(test_data):
    rows, rej, _ = run([test_data / "exchange-tracking" / "msgtrk_2010_quoting.log"])
    assert not rej
    m = {r["queue_id"]: r for r in rows}
    po = m["5001"]
    assert po["subject"] == 'Invoice "March", final, really'
    assert po["p1_sender"] == "scanner@erp.corp.local" and po["p2_sender"] == "erp-alerts@contoso.com"
    assert po["recipients"] == ["orders@fabrikam.com", "billing@fabrikam.com"]
    assert po["relay_host"] == "contoso-com.mail.protection.outlook.com" and po["host"] == "HUB01"
    assert po["response"] == "250 2.6.0 <po-1@erp.corp.local> Queued mail for delivery"
    assert m["5002"]["relay_host"] == "smarthost.fabrikam-partner.example"  # not EXO
    assert m["5003"]["incomplete"] is True and m["5003"]["relay_host"] is None
    ndr = m["5004"]
    assert ndr["is_ndr"] and ndr["p1_sender"] == ""
    # connector says Office 365 but no server-hostname: a stand-in matching relay.targets
    assert ndr["relay_host"].endswith(".mail.protection.outlook.com")


def test_broken_rows_multiline_values_and_small_chunks(test_data):
    path = test_data / "exchange-tracking" / "broken_rows.log"
    for chunk in (None, 300):  # tiny blocks: records must not be cut inside quotes
        rows, rej, ctx = run([path], host="exch01", chunk_bytes=chunk)
        assert len(rows) == 1 and rows[0]["subject"] == "subject with\na newline"
        assert rows[0]["relay_host"] == "contoso-com.mail.protection.outlook.com"
        assert sorted((r["source_line"], r["reason"][:8]) for r in rej) == [
            (8, "expected"), (9, "date-tim")]
        f = next(iter(ctx.accounting.files.values()))
        assert f["lines"] == 12 and f["parsed"] == 4 and f["skipped"]["blank line"] == 1


def test_sample_hybrid_join_with_protocol_log(sample_logs):
    d = sample_logs / "exchange"
    rows, rej, ctx = run([d / "MSGTRK2026110208-1.LOG"], host="exch01",
                         protocol=[d / "SEND2026110208-1.LOG"])
    assert not rej
    assert {r["source_format"] for r in rows} == {"exchange-tracking"}  # all protocol rows joined
    m = {r["queue_id"]: r for r in rows}
    assert m["1003"]["is_ndr"] and m["1003"]["tls_cert"] == "mail.contoso.com;autodiscover.contoso.com"
    assert m["1004"]["tls_cert"] == "exch01;exch01.contoso.local"
    assert m["1004"]["response"].startswith("550 5.7.64 TenantAttribution")
    assert m["1007"]["relay_host"] == "exch01" and m["1002"]["relay_host"] == "exch01"
    assert m["1006"]["recipient_domains"] == "contoso.com"
    assert ctx.accounting.totals()["lines"] == 18 + 80


def test_real_samples(real_samples):
    d = real_samples / "exchange-msgtrk"
    for name in ("beats-bom8-msgtrk-exchange2010.log", "dfir-doc-MSGTRKMS-excerpt.log",
                 "elastic-test-messagetracking.log"):
        assert exchange_tracking.detect(Source(d / name).head()), name
    rows, rej, _ = run(sorted(d.glob("*.log")))
    assert not rej
    m = {r["queue_id"]: r for r in rows}
    ext = m["8774618205228"]  # SENDEXTERNAL via 'Outbound to Office 365 - <guid>'
    assert ext["p1_sender"] == "" and ext["is_ndr"] and ext["p2_sender"] is None
    assert ext["relay_host"] == "global-mail-onmicrosoft-com.mail.protection.outlook.com"
    assert m["29519319995411"]["relay_host"] == "exchange.example.com"


def test_server_generated_ndr_gets_the_host_of_its_file(test_data):
    # The NDR (source DSN, return-path <>) has no RECEIVE event: its host is the server whose
    # log it is, as the RECEIVE rows of the same file name it (no --host given).
    rows, rej, _ = run([test_data / "exchange-tracking" / "ndr_server_generated.log"])
    assert not rej
    m = {r["queue_id"]: r for r in rows}
    assert m["7001"]["host"] == "EXCH01" and not m["7001"]["is_ndr"]
    ndr = m["7002"]
    assert ndr["is_ndr"] and ndr["p1_sender"] == "" and ndr["host"] == "EXCH01"
    assert ndr["relay_host"] == "contoso-com.mail.protection.outlook.com"
    assert ndr["response"] == "250 2.6.0 <0f3a9c1e-ndr@EXCH01.contoso.com> Queued mail for delivery"
    assert ndr["source_line"] == 8 and ndr["recipients"] == ["sender@fabrikam.com"]
    assert ndr["size"] == 6120


def test_ndr_only_file_takes_host_from_source(test_data):
    # No RECEIVE row in the file at all: the host is the one the file was given (--host).
    rows, rej, _ = run([test_data / "exchange-tracking" / "ndr_only_file.log"], host="exch02")
    assert not rej and len(rows) == 1
    assert rows[0]["host"] == "exch02" and rows[0]["is_ndr"]
    rows, _, _ = run([test_data / "exchange-tracking" / "ndr_only_file.log"])
    assert rows[0]["host"] is None  # nothing names the server


def test_block_size_does_not_change_rows(test_data, sample_logs):
    # Plain blocks take the fast path (row i = line first+i), blocks with headers or multi-line
    # values the careful one; both must give the same rows and line numbers.
    paths = [test_data / "exchange-tracking" / "ndr_server_generated.log",
             sample_logs / "exchange" / "MSGTRK2026110208-1.LOG"]
    key = ("queue_id", "source_line", "host", "relay_host", "response", "recipients", "size",
           "recipient_domains", "p1_domain", "p2_domain", "status", "incomplete")

    def rows_of(chunk):
        rows, rej, ctx = run(paths, host="exch01", chunk_bytes=chunk)
        assert not rej
        return sorted(tuple(str(r[k]) for k in key) for r in rows), ctx.accounting.totals()

    big, big_totals = rows_of(None)
    for chunk in (700, 2000, 5000):
        small, totals = rows_of(chunk)
        assert small == big and totals == big_totals, chunk


def test_bad_date_rejected_with_its_raw_line(tmp_path, test_data):
    src = (test_data / "exchange-tracking" / "ndr_server_generated.log").read_text("utf-8-sig")
    lines = src.splitlines(keepends=True)
    lines[6] = lines[6].replace("2026-11-03T10:00:01.300Z", "03.11.2026 10:00:01")
    path = tmp_path / "MSGTRK20261103-1.LOG"
    path.write_text("".join(lines), encoding="utf-8", newline="")
    rows, rej, ctx = run([path])
    assert [(r["source_line"], r["reason"]) for r in rej] == [
        (7, "date-time is not an ISO 8601 UTC time")]
    assert rej[0]["raw"] == lines[6].rstrip("\r\n")
    m = {r["queue_id"]: r for r in rows}
    assert set(m) == {"7001", "7002"}
    # without its SENDEXTERNAL the application message never left: still open at end of log
    assert m["7001"]["incomplete"] is True and m["7001"]["relay_host"] is None


def test_stray_quotes_never_lose_a_line(sample_logs, tmp_path):
    """A header line with a stray quote leaves the quotes unbalanced for the rest of the file,
    and a row cut inside a quoted value never closes it. Read one line per record then: the
    cut row is rejected for its quote, the whole rows still parse, every line is accounted
    (run() checks), whatever the block size."""
    lines = (sample_logs / "exchange" / "MSGTRK2026110208-1.LOG").read_bytes().split(b"\n")
    header, rows = lines[:5], [x for x in lines[5:] if x]
    cut = rows[1][: rows[1].index(b"Mailbox:")]  # ends inside "MDB:..., Mailbox:..."
    text = b"\n".join(header + rows[:1] + [b'#Software: Microsoft Exchange Server"', cut]
                      + rows[2:4] + [b"#Log-type: Message Tracking Log", b""])
    path = tmp_path / "MSGTRK2026110209-1.LOG"
    path.write_bytes(text)
    for chunk in (None, 300, 4096):
        _rows, rej, ctx = run([path], host="exch01", chunk_bytes=chunk)
        f = next(iter(ctx.accounting.files.values()))
        # lines 9 and 10 are messages' events; line 6 is an event without a message id
        assert f["lines"] == 11 and f["parsed"] == 2, (chunk, f)
        assert sum(f["skipped"].values()) == 8
        (reject,) = rej
        assert reject["source_line"] == 8, (chunk, rej)
        assert reject["reason"].startswith("unbalanced double quote")
