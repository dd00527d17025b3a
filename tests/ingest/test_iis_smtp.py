"""IIS SMTP (SMTPSVC) W3C ingest: header-driven columns, transactions, outbound relay ties."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from pipeline.ingest import iis_smtp, resolve_format
from pipeline.ingest.base import IngestContext, IngestOptions, Source

DATA = Path(__file__).resolve().parent.parent / "data" / "iis-smtp"


def run(paths, host="iis01", **options):
    rejects = []
    ctx = IngestContext(IngestOptions(**options), reject_sink=rejects.append)
    batches = list(iis_smtp.read([Source(Path(p), host=host) for p in paths], ctx))
    rows = pa.Table.from_batches(batches).to_pylist() if batches else []
    rejected = pa.concat_tables(rejects).to_pylist() if rejects else []
    return rows, ctx, rejected


def assert_every_line_accounted(ctx):
    for name, f in ctx.accounting.files.items():
        total = f["parsed"] + sum(f["skipped"].values()) + sum(f["rejected"].values())
        assert total == f["lines"], (name, f)


def by_sender(rows):
    return {r["p1_sender"]: r for r in rows}


def test_sample_inbound_tied_to_outbound_relay(sample_logs):
    rows, ctx, rejected = run([sample_logs / "iis-smtp" / "ex261102.log"])
    assert not rejected
    scan = by_sender(rows)["scanner@printers.contoso.local"]
    assert scan["client_ip"] == "203.0.113.80" and scan["recipients"] == ["accounts@fabrikam.com"]
    assert scan["relay_host"] == "BN8NAM12FT091.mail.protection.outlook.com"
    assert scan["response"].startswith("550 5.7.64 TenantAttribution; Relay Access Denied [")
    assert scan["status"] == "bounced" and scan["size"] == 884213
    assert scan["message_id"] == "MFP2FWEST.1102081502.0001@printers.contoso.local"
    assert scan["ts"] == datetime(2026, 11, 2, 8, 15, 2, tzinfo=UTC) and scan["host"] == "iis01"
    ok = by_sender(rows)["timesheets@contoso.com"]
    assert ok["recipients"] == ["k.lee@fabrikam.com", "m.chan@fabrikam.com"]
    assert ok["status"] == "relayed" and ok["response"].startswith("250 2.6.0")
    assert ok["relay_host"] == "AM4PEPF00027A5E.mail.protection.outlook.com"
    assert len(rows) == 4
    assert_every_line_accounted(ctx)


def test_outbound_only_ndr_after_restart_header(sample_logs):
    rows, _, _ = run([sample_logs / "iis-smtp" / "ex261102.log"])
    ndr = by_sender(rows)[""]
    assert ndr["is_ndr"] is True and ndr["p1_domain"] is None
    assert ndr["client_ip"] is None and ndr["recipients"] == ["orders@fabrikam.com"]
    assert ndr["response"] == "550 5.7.64 TenantAttribution; Relay Access Denied"
    open_txn = by_sender(rows)["reports@erp.contoso.local"]
    assert open_txn["incomplete"] is True and open_txn["relay_host"] is None


def test_custom_field_order_and_bad_lines():
    rows, ctx, rejected = run([DATA / "custom_fields_and_ncsa.log"])
    scan = by_sender(rows)["scan@contoso.com"]
    assert scan["size"] == 52231 and scan["recipients"] == ["a.b@fabrikam.com"]
    assert scan["ts"] == datetime(2026, 3, 3, 7, 1, 10, tzinfo=UTC)
    refused = by_sender(rows)["ops@contoso.com"]
    assert refused["status"] == "rejected" and refused["relay_host"] == "none"
    assert refused["response"] == "550"
    reasons = {r["source_line"]: r["reason"] for r in rejected}
    assert reasons[9].startswith("RCPT/DATA without a MAIL")
    assert reasons[10].startswith("expected 9 space-separated fields")
    assert reasons[11].startswith("date/time is not")
    assert_every_line_accounted(ctx)


def test_ncsa_lines_are_rejected_with_a_reason():
    rows, ctx, rejected = run([DATA / "ncsa_only.log"])
    assert rows == [] and len(rejected) == 2
    assert all(r["reason"].startswith("NCSA common format line") for r in rejected)
    assert_every_line_accounted(ctx)


def test_detect(sample_logs):
    assert iis_smtp.detect((sample_logs / "iis-smtp" / "ex261102.log").read_bytes())
    web = b"#Software: Microsoft Internet Information Services 10.0\n#Fields: date time s-ip cs-method cs-uri-stem c-ip\n2026-01-01 00:00:00 192.0.2.1 GET / 192.0.2.9\n"
    assert not iis_smtp.detect(web)
    assert resolve_format(Source(sample_logs / "iis-smtp" / "ex261102.log")).NAME == "iis-smtp"


def test_real_ossec_sample(real_samples, tmp_path):
    """OSSEC docs page: log lines sit in code blocks indented two spaces; W3C lines must parse,
    the NCSA block is rejected with its reason."""
    text = (real_samples / "iis-smtp" / "ossec-docs-exchange2000-smtp-w3c-ncsa.rst").read_text()
    lines = [ln[2:] for ln in text.splitlines() if ln.startswith("  ") and ln.strip()]
    target = tmp_path / "ex061009.log"
    target.write_text("\n".join(lines) + "\n")
    rows, ctx, rejected = run([target])
    assert {r["reason"].split(":")[0] for r in rejected} == {"NCSA common format line"}
    assert len(rejected) == sum(1 for ln in lines if ' "' in ln and "[" in ln)
    senders = by_sender(rows)
    assert senders["EldonpyzWestoncusk@sbcglobal.net"]["recipients"] == ["pamb@meelift.com"]
    assert senders["EldonpyzWestoncusk@sbcglobal.net"]["size"] == 1399
    assert senders["ossecm@HULK"]["message_id"] == "MEE-PDCfSDGAIXWb9DY00001e05@mee-pdc.meelift.com"
    assert_every_line_accounted(ctx)


def _busy_day(path: Path) -> None:
    """A day of interleaved inbound sessions, their relays to Exchange Online (some refused),
    a client that never sends QUIT, and an outbound-only NDR: enough lines for tiny blocks."""
    head = ("#Software: Microsoft Internet Information Services 6.0\n#Version: 1.0\n"
            "#Fields: date time c-ip cs-username s-computername cs-method cs-uri-query sc-status "
            "cs-bytes\n")
    out = [head]
    for i in range(40):
        t = 8 * 3600 + i * 300  # one message every five minutes, 08:00 onwards
        hhmm = lambda s: f"2026-03-02 {s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"  # noqa: E731
        ip, helo = f"203.0.113.{80 + i % 3}", f"MFP-{i % 3}"
        sender, rcpt = f"scan{i}@contoso.com", f"user{i}@fabrikam.com"
        out += [f"{hhmm(t)} {ip} {helo} IIS01 EHLO +{helo} 250 17\n",
                f"{hhmm(t)} {ip} {helo} IIS01 MAIL +FROM:+<{sender}> 250 40\n",
                f"{hhmm(t)} {ip} {helo} IIS01 RCPT +TO:+<{rcpt}> 250 30\n",
                f"{hhmm(t + 1)} {ip} {helo} IIS01 DATA +<m{i}@contoso.com> 250 {1000 + i}\n"]
        if i % 7 != 3:  # some clients just drop the connection
            out.append(f"{hhmm(t + 1)} {ip} {helo} IIS01 QUIT {helo} 240 4\n")
        eop = "192.0.2.220"
        reply = ("550+5.7.64+TenantAttribution;+Relay+Access+Denied" if i % 4 == 0
                 else "250+2.6.0+Queued+mail+for+delivery")
        out += [f"{hhmm(t + 2)} {eop} OutboundConnectionResponse IIS01 - 220+"
                "BN8NAM12FT091.mail.protection.outlook.com+Microsoft+ESMTP+MAIL+Service+ready 0 0\n",
                f"{hhmm(t + 2)} {eop} OutboundConnectionCommand IIS01 MAIL FROM:<{sender}> 0 0\n",
                f"{hhmm(t + 2)} {eop} OutboundConnectionCommand IIS01 RCPT TO:<{rcpt}> 0 0\n",
                f"{hhmm(t + 3)} {eop} OutboundConnectionResponse IIS01 - {reply} 0 0\n",
                f"{hhmm(t + 3)} {eop} OutboundConnectionCommand IIS01 QUIT - 0 0\n",
                f"{hhmm(t + 3)} {eop} OutboundConnectionResponse IIS01 - 221+2.0.0+Bye 0 0\n"]
    out += ["2026-03-02 12:00:00 192.0.2.220 OutboundConnectionCommand IIS01 MAIL FROM:<> 0 0\n",
            "2026-03-02 12:00:00 192.0.2.220 OutboundConnectionCommand IIS01 RCPT "
            "TO:<orders@fabrikam.com> 0 0\n"]
    path.write_text("".join(out))


def test_tiny_blocks_stream_to_the_same_rows(sample_logs, tmp_path):
    """Streaming: sessions open at a block end are carried, transactions wait for their
    partner; any block size gives the same rows and the same line accounting."""
    busy = tmp_path / "ex260302.log"
    _busy_day(busy)
    for path in (busy, sample_logs / "iis-smtp" / "ex261102.log",
                 DATA / "custom_fields_and_ncsa.log"):
        whole, ctx_whole, rej_whole = run([path], chunk_bytes=64 * 1024 * 1024)
        small, ctx_small, rej_small = run([path], chunk_bytes=300 if path != busy else 4000)
        key = lambda rows: sorted(  # noqa: E731
            (r["source_line"], r["p1_sender"] or "", r["status"], r["relay_host"] or "",
             r["response"] or "", tuple(r["recipients"]), r["incomplete"]) for r in rows)
        assert key(small) == key(whole), path
        assert ctx_small.accounting.to_json() == ctx_whole.accounting.to_json()
        assert sorted(r["source_line"] for r in rej_small) == sorted(
            r["source_line"] for r in rej_whole)
        assert_every_line_accounted(ctx_small)
    rows, _, _ = run([busy], chunk_bytes=4000)
    assert len(rows) == 41  # 40 relayed pairs + the outbound-only NDR
    refused = by_sender(rows)["scan8@contoso.com"]
    assert refused["status"] == "bounced" and refused["size"] == 1008
    assert refused["response"].startswith("550 5.7.64 TenantAttribution")
    assert refused["relay_host"] == "BN8NAM12FT091.mail.protection.outlook.com"
    assert by_sender(rows)["scan9@contoso.com"]["status"] == "relayed"
    assert by_sender(rows)[""]["is_ndr"] is True
