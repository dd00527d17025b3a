"""Sendmail ingestor: fixtures under tests/data/sendmail, sample_logs/sendmail and the real
public samples (skipped when ../shared is absent)."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

from pipeline.ingest import sendmail
from pipeline.ingest.base import IngestContext, IngestOptions, Source

DATA = Path(__file__).resolve().parent.parent / "data" / "sendmail"


def run(paths, **opts):
    rejects: list[pa.Table] = []
    ctx = IngestContext(IngestOptions(**opts), reject_sink=rejects.append)
    batches = list(sendmail.read([Source(Path(p)) for p in paths], ctx))
    rows = pa.Table.from_batches(batches).to_pylist() if batches else []
    for name, f in ctx.accounting.files.items():
        total = f["parsed"] + sum(f["skipped"].values()) + sum(f["rejected"].values())
        assert f["lines"] == total, (name, f)
    return rows, ctx, rejects


def by_qid(rows):
    return {r["queue_id"]: r for r in rows}


def test_detect_not_postfix_sendmail():
    assert sendmail.detect(b"Feb 24 14:00:00 server sendmail[26592]: u0CB32qX026592: from=<a@b>")
    assert sendmail.detect(b"Feb 24 14:00:00 server sm-mta[1]: x")
    assert not sendmail.detect(b"Feb 24 14:00:00 server postfix/sendmail[1]: fatal: x")


def test_dsn_creates_null_sender_message_and_exo_bounce():
    rows, _, _ = run([DATA / "dsn.log"], year=2026)
    rows = by_qid(rows)
    orig = rows["xA2BKe1f002301"]
    assert orig["p1_sender"] == "scanner7@printers.example" and orig["size"] == 80211
    assert orig["message_id"] == "SCAN7.20261102112040@printers.example"
    assert orig["client_ip"] == "203.0.113.77"
    assert orig["relay_host"] == "contoso-com.mail.protection.outlook.com"  # trailing dot gone
    assert orig["status"] == "bounced" and orig["response"] == "5.7.64 Service unavailable"
    ndr = rows["xA2BKf1g002303"]
    assert ndr["p1_sender"] == "" and ndr["is_ndr"] is True
    assert ndr["recipients"] == ["scanner7@printers.example"] and ndr["status"] == "sent"


def test_local_submission_deferred_then_sent_and_starttls_is_not_tls_cert():
    rows, ctx, _ = run([DATA / "starttls_deferred.log"], year=2026)
    rows = by_qid(rows)
    msp = rows["xA2A5B1c002208"]
    assert msp["p1_sender"] == "erpadm" and msp["p1_domain"] is None  # bare local user
    assert msp["recipients"] == ["ap@fabrikam.com", "it@fabrikam.com"]
    assert msp["status"] == "sent" and msp["incomplete"] is False
    mta = rows["xA2AZCqD002291"]
    # The cert-subject logged for STARTTLS=client is Exchange Online's: not this host's cert.
    assert mta["tls_cert"] is None
    assert mta["recipients"] == ["ap@fabrikam.com", "it@fabrikam.com"]
    assert mta["incomplete"] is True  # its from= line is not in this excerpt
    f = ctx.accounting.files[str(DATA / "starttls_deferred.log")]
    assert f["skipped"][sendmail.SKIP_TLS] == 2


def test_rejects_with_queue_id_are_rows_check_relay_is_a_skip():
    rows, ctx, rejects = run([DATA / "reject.log"], year=2026)
    assert not rejects
    rows = by_qid(rows)
    rcpt = rows["xA2C2J9k002350"]
    assert rcpt["status"] == "rejected" and rcpt["recipients"] == ["ceo@fabrikam.com"]
    assert rcpt["response"] == "550 5.7.1 <ceo@fabrikam.com>... Relaying denied"
    assert rcpt["client_ip"] == "198.51.100.77" and rcpt["relay_host"] == "none"
    assert rcpt["incomplete"] is False
    mail = rows["xA2CV0aa002401"]
    assert mail["p1_sender"] == "spam@bad.example" and mail["status"] == "rejected"
    f = ctx.accounting.files[str(DATA / "reject.log")]
    assert f["skipped"][sendmail.SKIP_CONN_REJECT] == 1
    assert f["skipped"][sendmail.SKIP_QID_UNUSED] == 1
    assert f["skipped"][sendmail.SKIP_OTHER_PROGRAM] == 1  # postfix/sendmail is Postfix


def test_sample_sm01(sample_logs: Path):
    rows, ctx, rejects = run([sample_logs / "sendmail" / "maillog"], year=2026)
    assert not rejects and len(rows) == 6
    assert {r["host"] for r in rows} == {"sm01"}
    erp = by_qid(rows)["xA2A5CqD002210"]
    assert erp["p1_sender"] == "noreply@erp.corp.local"
    assert erp["relay_host"] == "contoso-com.mail.protection.outlook.com"


def _real_lines(path: Path) -> list[str]:
    text = path.read_text(errors="replace")
    if path.suffix == ".rst":
        lines = [ln[2:] for ln in text.splitlines() if ln.startswith("  ") and ln.strip()]
    elif path.name.startswith("wazuh"):  # alert e-mails quoting sm-mta lines without a prefix
        lines = [ln for ln in text.splitlines() if re.match(r"^(sm-mta|sendmail)\[", ln)]
    else:
        lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    # Quoted lines without a syslog prefix get a synthetic one.
    return [
        ln if not ln.strip() or re.match(r"^[A-Z][a-z]{2} +\d", ln) else "Sep  7 05:40:15 mail " + ln
        for ln in lines
    ]


def test_real_samples_parse_without_rejects(real_samples: Path, tmp_path: Path):
    total = 0
    for f in sorted((real_samples / "sendmail").iterdir()):
        copy = tmp_path / f.name
        copy.write_text("\n".join(_real_lines(f)) + "\n")
        rows, _, rejects = run([copy], year=2020)
        assert not rejects, (f.name, [t.to_pylist() for t in rejects])
        total += len(rows)
    assert total >= 20
