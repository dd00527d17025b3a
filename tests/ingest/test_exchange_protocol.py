"""exchange-protocol: SMTP send/receive protocol logs rebuilt into messages."""

from __future__ import annotations

import pyarrow as pa

from pipeline.ingest import exchange_protocol
from pipeline.ingest.base import IngestContext, IngestOptions, Source


def run(paths, host=None):
    rejects: list[pa.Table] = []
    ctx = IngestContext(IngestOptions(), reject_sink=rejects.append)
    batches = list(exchange_protocol.read([Source(p, host=host) for p in paths], ctx))
    rows = pa.Table.from_batches(batches).to_pylist() if batches else []
    rej = pa.concat_tables(rejects).to_pylist() if rejects else []
    for f in ctx.accounting.files.values():
        assert f["lines"] == f["parsed"] + sum(f["skipped"].values()) + sum(f["rejected"].values())
    return rows, rej, ctx


def test_interleaved_sessions_cert_from_the_right_and_reject(test_data):
    rows, rej, _ = run([test_data / "exchange-protocol" / "send_cert_reject.log"])
    m = {r["message_id"]: r for r in rows}
    first = m["first@contoso.com"]
    assert first["p1_sender"] == "app@erp.corp.local" and first["recipients"] == ["a@fabrikam.com"]
    # DN with quoted comma, issuer not starting with CN=, duplicate SAN: CN first, distinct
    assert first["tls_cert"] == "relay.contoso.com;smtp.contoso.com"
    assert first["response"].startswith("550 5.7.64 TenantAttribution")
    assert first["status"] == "rejected" and first["incomplete"] is False
    assert first["queue_id"] == "41" and first["size"] == 2000
    second = m["second@contoso.com"]
    assert second["p1_sender"] == "" and second["is_ndr"] is True
    assert second["incomplete"] is True  # no disconnect before the end of the log
    assert second["relay_host"].endswith(".mail.protection.outlook.com")  # connector name only
    assert [r["source_line"] for r in rej] == [22]


def test_sample_send_log(sample_logs):
    rows, rej, ctx = run([sample_logs / "exchange" / "SEND2026110208-1.LOG"], host="exch01")
    assert not rej and len(rows) == 4
    m = {r["queue_id"]: r for r in rows}
    assert m["1003"]["p1_sender"] == "" and m["1003"]["tls_cert"].startswith("mail.contoso.com")
    assert m["1004"]["tls_cert"] == "exch01;exch01.contoso.local"
    assert m["1004"]["response"].startswith("550 5.7.64")
    assert m["1006"]["recipients"] == ["alice@contoso.com", "bob@contoso.com"]
    assert m["1001"]["relay_host"] == "DM6NAM12FT034.mail.protection.outlook.com"
    f = next(iter(ctx.accounting.files.values()))
    assert f["skipped"]["SMTP session without a message (probe, failed connect or AUTH)"] == 3


def test_detect(sample_logs, test_data):
    assert exchange_protocol.detect(Source(sample_logs / "exchange" / "SEND2026110208-1.LOG").head())
    assert not exchange_protocol.detect(
        Source(sample_logs / "exchange" / "MSGTRK2026110208-1.LOG").head())


def test_real_receive_log(real_samples):
    path = real_samples / "exchange-smtp-protocol" / "dfir-doc-RECV-excerpt.log"
    assert exchange_protocol.detect(Source(path).head())
    rows, rej, ctx = run([path])
    assert not rej and rows == []  # an AUTH failure session carries no message
    assert ctx.accounting.totals()["lines"] == 21


def test_receive_and_send_logs_give_one_row_per_relayed_message(test_data):
    """The server's receive log and send log both show a relayed message, under one Message-ID
    (the receive log in its reply to DATA): one row, the send-log one, with the client IP the
    receive log saw. A message that was not passed on keeps its receive-log row."""
    recv = test_data / "exchange-protocol" / "recv_relay_app.log"
    send = test_data / "exchange-protocol" / "send_cert_reject.log"
    rows, _, ctx = run([recv, send])
    by_id = {r["message_id"]: r for r in rows}
    assert sorted(by_id) == ["first@contoso.com", "scan-0001@printers.contoso.local", "second@contoso.com"]
    relayed = by_id["first@contoso.com"]
    assert relayed["status"] == "rejected" and relayed["client_ip"] == "203.0.113.50"
    assert relayed["relay_host"].endswith(".mail.protection.outlook.com")
    kept = by_id["scan-0001@printers.contoso.local"]
    assert kept["status"] == "received" and kept["relay_host"] == "exch01.contoso.com"
    acc = ctx.accounting.files[str(recv)]
    assert acc["lines"] == acc["parsed"] + sum(acc["skipped"].values()) + sum(acc["rejected"].values())
    alone, _, _ = run([recv])  # a receive log alone keeps both of its messages
    assert sorted(r["message_id"] for r in alone) == ["first@contoso.com", "scan-0001@printers.contoso.local"]
