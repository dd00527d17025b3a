"""Re-running into the same WORKDIR reads only new or grown files and never duplicates a message."""

from __future__ import annotations

import gzip
import os
import shutil

import pyarrow.parquet as pq
import pytest

from pipeline.ingest import ingest

HEADER = "ts,p1_sender,relay_ip,recipients\n"


def _row(i: int) -> str:
    return f"2026-11-02T08:{i % 60:02d}:00Z,app{i}@contoso.com,203.0.113.25,x@fabrikam.com\n"


def _count(workdir) -> int:
    return pq.read_table(workdir / "messages").num_rows


def test_unchanged_file_is_skipped(tmp_path):
    log = tmp_path / "a.csv"
    log.write_text(HEADER + _row(1) + _row(2))
    w = tmp_path / "w"
    ingest([log], w)
    again = ingest([log], w)
    assert _count(w) == 2
    assert again["this_run"]["files_read"] == []
    assert "unchanged" in again["this_run"]["files_skipped"][str(log)]


def test_grown_file_replaces_its_rows(tmp_path):
    log = tmp_path / "a.csv"
    log.write_text(HEADER + _row(1) + _row(2))
    w = tmp_path / "w"
    ingest([log], w)
    with log.open("a") as fh:
        fh.write(_row(3))
    summary = ingest([log], w)
    assert _count(w) == 3
    assert summary["totals"]["lines"] == 4  # accounting replaced, not added


def test_rotated_file_is_recognised_and_new_file_read(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "maillog.csv").write_text(HEADER + _row(1) + _row(2))
    w = tmp_path / "w"
    ingest([logs], w)
    os.rename(logs / "maillog.csv", logs / "maillog.1.csv")  # rotation keeps size and time
    (logs / "maillog.csv").write_text(HEADER + _row(5))
    summary = ingest([logs], w)
    assert _count(w) == 3
    assert any("rotated" in why for why in summary["this_run"]["files_skipped"].values())


def test_compressed_rotation_does_not_duplicate(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "maillog.csv").write_text(HEADER + _row(1) + _row(2))
    w = tmp_path / "w"
    ingest([logs], w)
    with open(logs / "maillog.csv", "rb") as src, gzip.open(logs / "maillog.1.csv.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    (logs / "maillog.csv").unlink()
    ingest([logs], w)
    assert _count(w) == 2


def test_fresh_starts_over(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text(HEADER + _row(1))
    b.write_text(HEADER + _row(2))
    w = tmp_path / "w"
    ingest([a], w)
    ingest([b], w)
    assert _count(w) == 2
    ingest([b], w, fresh=True)
    assert _count(w) == 1


def test_a_crash_leaves_the_previous_dataset(tmp_path, monkeypatch):
    a = tmp_path / "a.csv"
    a.write_text(HEADER + _row(1))
    w = tmp_path / "w"
    ingest([a], w)
    b = tmp_path / "b.csv"
    b.write_text(HEADER + _row(2))
    from pipeline.ingest import csv_canonical

    def boom(sources, ctx):
        yield from ()
        raise RuntimeError("killed half way")

    monkeypatch.setattr(csv_canonical, "read", boom)
    with pytest.raises(RuntimeError, match="killed half way"):
        ingest([b], w)
    assert _count(w) == 1
    assert not [p for p in w.iterdir() if ".tmp-" in p.name]
    monkeypatch.undo()
    ingest([b], w)  # the next run completes the work
    assert _count(w) == 2


def test_name_reused_after_rotation_then_grown(tmp_path):
    """maillog -> maillog.1, a new maillog grows: each row belongs to exactly one file."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "maillog.csv").write_text(HEADER + _row(1) + _row(2))
    w = tmp_path / "w"
    ingest([logs], w)
    os.rename(logs / "maillog.csv", logs / "maillog.1.csv")
    (logs / "maillog.csv").write_text(HEADER + _row(5))
    ingest([logs], w)
    with (logs / "maillog.csv").open("a") as fh:
        fh.write(_row(6))
    summary = ingest([logs], w)
    files = pq.read_table(w / "messages").column("source_file").cast("string").to_pylist()
    assert sorted(files) == sorted([str(logs / "maillog.1.csv")] * 2 + [str(logs / "maillog.csv")] * 2)
    assert summary["totals"]["lines"] == 3 + 3


def test_unrecognised_file_in_a_folder_is_listed_not_fatal(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.csv").write_text(HEADER + _row(1))
    (logs / "notes.txt").write_text("remember to renew the certificate\n")
    summary = ingest([logs], tmp_path / "w")
    assert _count(tmp_path / "w") == 1
    why = summary["this_run"]["files_skipped"][str(logs / "notes.txt")]
    assert why.startswith("not read: not a log format relay-impact recognises")
    # Named on the command line, the same file is an error.
    from pipeline.errors import InputFormatError

    with pytest.raises(InputFormatError, match="notes.txt: not a log format"):
        ingest([logs / "notes.txt"], tmp_path / "w2")


def test_message_open_across_a_rotation_comes_out_whole(tmp_path):
    """Run 1 sees a Postfix message's first lines (still queued at the end: incomplete); the log
    is rotated; run 2 sees its delivery in the new file. The rotated file is read again with
    the new one, so the message is one complete row, not two incomplete halves."""
    first = (
        "Nov  2 09:15:42 relay01 postfix/smtpd[4300]: 1F2E3D4C5B: client=app02.corp.contoso.com[203.0.113.56]\n"
        "Nov  2 09:15:42 relay01 postfix/cleanup[4103]: 1F2E3D4C5B: message-id=<app02.77120@app02.corp.contoso.com>\n"
        "Nov  2 09:15:42 relay01 postfix/qmgr[1021]: 1F2E3D4C5B: from=<helpdesk@app02.corp.local>, size=3377, nrcpt=1 (queue active)\n"
        "Nov  2 09:15:50 relay01 postfix/qmgr[1021]: 2A2A2A2A2A: from=<other@contoso.com>, size=10, nrcpt=1 (queue active)\n"
        "Nov  2 09:15:50 relay01 postfix/smtp[4301]: 2A2A2A2A2A: to=<a@fabrikam.com>, relay=contoso-com.mail.protection.outlook.com[198.51.100.201]:25, delay=1, delays=0/0/0/1, dsn=2.6.0, status=sent (250 2.6.0 ok)\n"
        "Nov  2 09:15:50 relay01 postfix/qmgr[1021]: 2A2A2A2A2A: removed\n"
    )
    second = (
        "Nov  2 09:16:43 relay01 postfix/smtp[4301]: 1F2E3D4C5B: to=<customer@fabrikam.com>, relay=contoso-com.mail.protection.outlook.com[198.51.100.201]:25, delay=61, delays=60/0.01/0.5/0.49, dsn=2.6.0, status=sent (250 2.6.0 Queued mail for delivery)\n"
        "Nov  2 09:16:43 relay01 postfix/qmgr[1021]: 1F2E3D4C5B: removed\n"
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "maillog").write_text(first)
    w = tmp_path / "w"
    ingest([logs], w)
    before = pq.read_table(w / "messages").to_pylist()
    assert sorted((r["message_id"] is not None, r["incomplete"]) for r in before) == [(False, False), (True, True)]

    os.rename(logs / "maillog", logs / "maillog.1")  # rotation keeps size and time
    (logs / "maillog").write_text(second)
    summary = ingest([logs], w)
    rows = pq.read_table(w / "messages").to_pylist()
    assert len(rows) == 2  # the other message is not duplicated by the re-read
    whole = next(r for r in rows if r["message_id"] == "app02.77120@app02.corp.contoso.com")
    assert whole["incomplete"] is False and whole["status"] == "sent"
    assert whole["source_file"] == str(logs / "maillog.1")
    assert sorted(summary["this_run"]["files_read"]) == [str(logs / "maillog"), str(logs / "maillog.1")]
    assert summary["totals"]["lines"] == 8  # every line once, the re-read file's not twice

    third = ingest([logs], w)  # nothing new: nothing read again
    assert third["this_run"]["files_read"] == [] and len(pq.read_table(w / "messages")) == 2
