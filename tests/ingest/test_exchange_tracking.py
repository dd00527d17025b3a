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
