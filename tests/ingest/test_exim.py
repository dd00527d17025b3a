"""Exim mainlog ingest: one fixture per quirk, the real public samples, line accounting."""

from __future__ import annotations

import gzip
import shutil
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.errors import InputFormatError
from pipeline.ingest import exim, resolve_format
from pipeline.ingest.base import IngestContext, IngestOptions, Source

DATA = Path(__file__).resolve().parent.parent / "data" / "exim"


def run(paths, host="mailhub", **options):
    rejects = []
    ctx = IngestContext(IngestOptions(**options), reject_sink=rejects.append)
    sources = [Source(Path(p), host=host) for p in paths]
    batches = list(exim.read(sources, ctx))
    table = pa.Table.from_batches(batches) if batches else None
    rows = table.to_pylist() if table is not None else []
    rejected = pa.concat_tables(rejects).to_pylist() if rejects else []
    return rows, ctx, rejected


def by_queue_id(rows):
    return {r["queue_id"]: r for r in rows}


def assert_every_line_accounted(ctx):
    for name, f in ctx.accounting.files.items():
        total = f["parsed"] + sum(f["skipped"].values()) + sum(f["rejected"].values())
        assert total == f["lines"], (name, f)


def test_old_message_ids_and_multi_recipient_delivery():
    rows, ctx, rejected = run([DATA / "old_msgid.log"])
    assert len(rows) == 1 and not rejected
    r = rows[0]
    assert r["queue_id"] == "1Unmew-0000ea-SE"
    assert r["p1_sender"] == "app@contoso.com" and r["p1_domain"] == "contoso.com"
    assert sorted(r["recipients"]) == ["one@fabrikam.com", "two@fabrikam.com"]
    assert r["relay_host"] == "contoso-com.mail.protection.outlook.com"
    assert r["client_ip"] == "203.0.113.61"
    assert r["size"] == 5120 and r["message_id"] == "a1b2c3@app01.contoso.com"
    assert r["status"] == "delivered" and r["response"].startswith("250 2.6.0")
    assert r["ts"] == datetime(2023, 6, 15, 11, 19, 33, tzinfo=UTC)
    assert r["host"] == "mailhub" and r["source_line"] == 1 and r["source_format"] == "exim"
    assert r["tls_cert"] is None  # DN= would be the server's certificate, never ours
    assert r["is_ndr"] is False and r["incomplete"] is False
    assert_every_line_accounted(ctx)


def test_ndr_generated_by_exim_is_null_sender_and_keeps_eop_reply():
    rows, ctx, _ = run([DATA / "ndr_null_sender.log"])
    ndr = by_queue_id(rows)["1vQwWj-00000000CG5-0001"]
    assert ndr["p1_sender"] == "" and ndr["p1_domain"] is None and ndr["is_ndr"] is True
    assert ndr["recipients"] == ["partner@fabrikam.com"]
    assert ndr["status"] == "bounced"
    assert ndr["response"].startswith("550 5.7.64 TenantAttribution; Relay Access Denied")
    assert ndr["relay_host"] == "contoso-com.mail.protection.outlook.com"
    original = by_queue_id(rows)["1vQwWi-00000000CG3-0001"]
    assert original["is_ndr"] is False and original["relay_host"] == "none"  # failed locally
    assert_every_line_accounted(ctx)
    assert ctx.accounting.files[str(DATA / "ndr_null_sender.log")]["parsed"] == 7


def test_failure_with_quoted_confirmation_and_subject():
    rows, _, _ = run([DATA / "failure_confirmation.log"])
    r = rows[0]
    assert r["p1_sender"] == "noreply@erp.corp.local"
    assert r["response"] == (
        "550 5.7.64 TenantAttribution; Relay Access Denied "
        "[BN8NAM12FT064.eop-nam12.prod.protection.outlook.com]"
    )
    assert r["subject"] == 'Invoice \\"2026-0412\\" for billing'
    assert r["recipients"] == ["billing@fabrikam.com"]  # not confused by ' for ' in T=
    assert r["message_id"] == "INV-0412@erp.corp.local"


def test_deferral_then_delivery_and_open_deferral():
    rows, _, _ = run([DATA / "deferral.log"])
    done = by_queue_id(rows)["1vQwpf-00000000CZ1-0001"]
    assert done["status"] == "delivered" and done["response"].startswith("250 2.6.0")
    assert done["incomplete"] is False
    still = by_queue_id(rows)["1vQwzz-00000000CZ9-0001"]
    assert still["status"] == "deferred" and still["incomplete"] is True
    assert still["response"] == "Connection timed out H=contoso-com.mail.protection.outlook.com [192.0.2.212]"
    assert still["relay_host"] == "contoso-com.mail.protection.outlook.com"


def test_local_delivery_is_not_a_relay():
    rows, _, _ = run([DATA / "local_delivery.log"])
    r = rows[0]
    assert r["relay_host"] == "local" and r["status"] == "delivered"
    assert sorted(r["recipients"]) == [
        "archive@mailhub.corp.contoso.com", "root@mailhub.corp.contoso.com"]
    assert r["client_ip"] is None


def test_rejects_become_rows_and_noise_is_skipped_with_reasons():
    rows, ctx, rejected = run([DATA / "rejects_and_noise.log"])
    assert len(rows) == 2
    rcpt = next(r for r in rows if r["queue_id"] is None)
    assert rcpt["p1_sender"] == "promo@deals.example" and rcpt["recipients"] == ["ceo@fabrikam.com"]
    assert rcpt["status"] == "rejected" and rcpt["relay_host"] == "none"
    assert rcpt["response"] == "relay not permitted" and rcpt["client_ip"] == "198.51.100.200"
    data = by_queue_id(rows)["1vQx0a-00000000D01-0001"]
    assert data["p1_sender"] == "offers@deals.example" and data["status"] == "rejected"
    assert data["incomplete"] is False
    f = ctx.accounting.files[str(DATA / "rejects_and_noise.log")]
    assert f["skipped"]["blank line"] == 1
    assert f["skipped"]["queue run start/end"] == 2
    assert f["skipped"]["SMTP AUTH failure (no message)"] == 1
    assert [r["source_line"] for r in rejected] == [10, 11]
    assert_every_line_accounted(ctx)


def test_log_timezone_pid_and_millisecond_selectors():
    rows, _, _ = run([DATA / "timezone_pid_millisec.log"], tz=timezone(timedelta(hours=-5)))
    first = by_queue_id(rows)["1vR0aa-00000000A11-0001"]
    # +0200 in the line wins over --tz
    assert first["ts"] == datetime(2026, 7, 1, 8, 0, 0, tzinfo=UTC)
    assert first["status"] == "delivered"
    second = by_queue_id(rows)["1vR0bb-00000000A12-0001"]
    assert second["ts"] == datetime(2026, 7, 1, 14, 0, 0, tzinfo=UTC)  # --tz -05:00


def test_named_time_zone_from_tz_option():
    from zoneinfo import ZoneInfo

    rows, _, _ = run([DATA / "old_msgid.log"], tz=ZoneInfo("Europe/Berlin"))
    assert rows[0]["ts"] == datetime(2023, 6, 15, 9, 19, 33, tzinfo=UTC)


def test_syslog_prefix_split_parts_and_syslog_host():
    rows, ctx, rejected = run([DATA / "syslog_prefixed.log"], host=None, year=2026)
    assert not rejected
    r = by_queue_id(rows)["1vQxcM-00000000E4n-0001"]
    assert r["host"] == "mailhub" and r["status"] == "delivered"
    assert r["response"] == "250 2.6.0 <crm.1@contoso.com> Queued mail for delivery"
    cron = by_queue_id(rows)["1vQxfA-00000000E5z-0001"]  # syslog_timestamp = false
    assert cron["ts"] == datetime(2026, 3, 2, 11, 5, 0, tzinfo=UTC) and cron["incomplete"] is True
    f = ctx.accounting.files[str(DATA / "syslog_prefixed.log")]
    assert f["skipped"]["syslog continuation part [n/m] (joined to part 1)"] == 1
    assert_every_line_accounted(ctx)


def test_message_spanning_blocks_is_carried(sample_logs):
    whole, _, _ = run([sample_logs / "exim" / "mainlog"])
    small, ctx, _ = run([sample_logs / "exim" / "mainlog"], chunk_bytes=600)
    key = lambda rows: sorted((r["queue_id"] or "", r["status"], r["source_line"]) for r in rows)  # noqa: E731
    assert key(small) == key(whole)
    assert_every_line_accounted(ctx)


def _syslog_split_log(path: Path, messages: int = 6) -> Path:
    """Syslog-fed mainlog whose deliveries Exim split into [1/3] [2/3] [3/3] parts, with a line
    of another process between two parts and one part ending at an embedded newline ('\\')."""
    out = []
    for n in range(messages):
        qid = f"1vQxcM-00000000E{n:02d}-0001"
        t = f"2026-03-02 11:02:{n:02d}"
        pre = f"Mar  2 11:02:{n:02d} mailhub exim[{3000 + n}]: "
        out.append(f"{pre}{t} {qid} <= app@contoso.com H=app01 [203.0.113.7]:4000 S={100 + n}")
        out.append(f"{pre}[1/3] {t} {qid} => u{n}@fabrikam.com R=smarthost T=remote_smtp "
                   f'H=contoso-com.mail.protection.outlook.com [192.0.2.210] C="250 2.6.0 {"x" * 40}')
        out.append(f"Mar  2 11:02:{n:02d} mailhub exim[9{n:03d}]: {t} SMTP connection from "
                   "[203.0.113.9]:40000 closed by QUIT")
        out.append(f"{pre}[2\\3]  {'y' * 30}")
        out.append(f'{pre}[3/3]  Queued mail for delivery {n}"')
        out.append(f"{pre}{t} {qid} Completed")
    path.write_text("\n".join(out) + "\n")
    return path


def test_split_parts_are_joined_whatever_the_block_and_slice_size(tmp_path, monkeypatch):
    log = _syslog_split_log(tmp_path / "mainlog")
    whole, whole_ctx, whole_rejected = run([log], host=None, year=2026)
    assert len(whole) == 6 and not whole_rejected
    first = by_queue_id(whole)["1vQxcM-00000000E00-0001"]
    assert first["response"] == f"250 2.6.0 {'x' * 40} {'y' * 30}  Queued mail for delivery 0"
    counts = whole_ctx.accounting.files[str(log)]
    assert counts["skipped"]["syslog continuation part [n/m] (joined to part 1)"] == 12
    assert not any("part 1 is not in the log" in reason for reason in counts["skipped"])
    key = lambda rows: sorted(rows, key=lambda r: r["source_line"])  # noqa: E731
    # Block cuts (chunk_bytes) everywhere in the file, then slices of about one line
    # (a block is cut into parse slices of about PARSE_BYTES).
    sizes = [(1 << 23, chunk) for chunk in range(exim.MIN_READ, 1500, 67)]
    sizes += [(150, chunk) for chunk in (exim.MIN_READ, 900)]
    for parse_bytes, chunk in sizes:
        monkeypatch.setattr(exim, "PARSE_BYTES", parse_bytes)
        rows, ctx, rejected = run([log], host=None, year=2026, chunk_bytes=chunk)
        assert key(rows) == key(whole), (parse_bytes, chunk)
        assert ctx.accounting.files == whole_ctx.accounting.files, (parse_bytes, chunk)
        assert not rejected


def test_a_closed_split_group_takes_no_later_stray_part(tmp_path):
    """After [2/2] the group is complete: a later '[2/2]' of the same process (its part 1 lost
    by syslog) is counted as orphaned, not glued onto the finished line."""
    pre = "Mar  2 11:02:15 mailhub exim[3013]: "
    log = tmp_path / "mainlog"
    log.write_text(
        f"{pre}[1/2] 2026-03-02 11:02:15 1vQxcM-00000000E4n-0001 => a@fabrikam.com R=smarthost "
        'T=remote_smtp H=contoso-com.mail.protection.outlook.com [192.0.2.210] C="250 2.6.0 Queued\n'
        f'{pre}[2/2]  for delivery"\n'
        f"{pre}[2/2]  stray tail of a line whose part 1 syslog dropped\n")
    rows, ctx, rejected = run([log], host=None, year=2026)
    assert not rejected
    (row,) = rows
    assert row["response"] == "250 2.6.0 Queued for delivery"
    skipped = ctx.accounting.files[str(log)]["skipped"]
    assert skipped["syslog continuation part [n/m] (joined to part 1)"] == 1
    assert sum(v for k, v in skipped.items() if "part 1 is not in the log" in k) == 1
    assert_every_line_accounted(ctx)


def test_rotated_files_in_any_order_are_correlated(tmp_path):
    lines = (DATA / "deferral.log").read_text().splitlines(keepends=True)
    older, newer = tmp_path / "mainlog.1.gz", tmp_path / "mainlog"
    with gzip.open(older, "wt") as fh:
        fh.writelines(lines[:4])
    newer.write_text("".join(lines[4:]))
    rows, ctx, _ = run([newer, older])
    done = by_queue_id(rows)["1vQwpf-00000000CZ1-0001"]
    assert done["status"] == "delivered" and done["incomplete"] is False
    assert done["source_file"] == str(older) and done["source_line"] == 1
    assert len(rows) == 2
    assert_every_line_accounted(ctx)


def test_sample_mainlog_scenarios(sample_logs):
    rows, ctx, rejected = run(sorted((sample_logs / "exim").iterdir()), host="mailhub")
    assert not rejected
    ndrs = [r for r in rows if r["is_ndr"]]
    assert {r["relay_host"] for r in ndrs} >= {"contoso-com.mail.protection.outlook.com"}
    assert any(r["p1_domain"] == "mg.mailgun.org" for r in rows)
    assert any(r["p1_domain"] == "erp.corp.local" and "5.7.64" in (r["response"] or "")
               for r in rows)
    assert any(r["relay_host"] == "local" for r in rows)
    assert any(r["incomplete"] for r in rows)
    assert_every_line_accounted(ctx)


def test_detect():
    assert exim.detect((DATA / "old_msgid.log").read_bytes())
    assert exim.detect((DATA / "syslog_prefixed.log").read_bytes())
    assert not exim.detect(b"Mar  2 09:44:33 relay01 postfix/smtpd[123]: connect from x[203.0.113.5]\n")
    assert not exim.detect(b"#Software: Microsoft Internet Information Services 6.0\n")
    src = Source(DATA / "rejects_and_noise.log")
    assert resolve_format(src).NAME == "exim"


def test_unreadable_file_names_the_file(tmp_path):
    with pytest.raises(InputFormatError, match="missing"):
        run([tmp_path / "missing"])


def _strip_real(path: Path, dest: Path) -> Path:
    """Remove what the sample files wrap around the log lines (PROVENANCE.md)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if path.suffix == ".ini":
            if " pass = " in line:
                out.append(line.split(" pass = ", 1)[1])
        elif path.suffix == ".rst":
            if line.strip().startswith("exim["):
                out.append(line.strip())
        elif not line.startswith("#") and not line.startswith("******** SERVER"):
            out.append(line)
    target = dest / path.name
    target.write_text("\n".join(out) + "\n")
    return target


def test_real_samples_parse_without_rejects(real_samples, tmp_path):
    files = sorted((real_samples / "exim").glob("*"))
    files = [f for f in files if f.suffix in (".log", ".ini", ".rst")]
    assert files
    for f in files:
        stripped = _strip_real(f, tmp_path)
        rows, ctx, rejected = run([stripped])
        assert not rejected, (f.name, rejected[:3])
        assert_every_line_accounted(ctx)
        assert exim.detect(stripped.read_bytes()), f.name
    rows, _, _ = run([_strip_real(real_samples / "exim" / "exim-testsuite-0174.log", tmp_path)])
    bounce = by_queue_id(rows)["10HmbD-000000005vi-0000"]
    assert bounce["is_ndr"] is True and bounce["p1_sender"] == ""


def test_real_testsuite_separator_is_rejected_not_parsed(real_samples, tmp_path):
    src = tmp_path / "0022.log"
    shutil.copy(real_samples / "exim" / "exim-testsuite-0022.log", src)
    _, ctx, rejected = run([src])
    assert [r["raw"] for r in rejected] == ["******** SERVER ********"]
    assert_every_line_accounted(ctx)


def test_line_cut_right_after_h_is_read_not_fatal(tmp_path):
    """The last line of a block cut short after 'H=name' (no space follows anywhere): the
    byte searches find nothing and must not index out of the text."""
    log = tmp_path / "mainlog"
    log.write_text("2026-11-02 11:02:14 1vQxcM-00000000E4n-0001 <= a@contoso.com H=crm01\n")
    rows, ctx, rejected = run([log])
    (row,) = rows
    assert row["p1_sender"] == "a@contoso.com" and row["client_ip"] is None
    assert_every_line_accounted(ctx)
