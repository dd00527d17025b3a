"""The command line as a user runs it: exit codes and one-line messages, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()
DATA = Path(__file__).parent / "data"


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def tenant(tmp_path) -> Path:
    p = tmp_path / "tenant.toml"
    p.write_text('accepted_domains = ["contoso.com"]\n[[connectors]]\nname = "relay"\nsender_ip_addresses = ["203.0.113.0/24"]\n')
    return p


@pytest.fixture
def cases(tmp_path) -> Path:
    p = tmp_path / "cases.csv"
    p.write_text(
        "relay_ip,p1_sender,p2_sender,recipients\n"
        "203.0.113.25,app@contoso.com,app@contoso.com,x@fabrikam.com\n"
        "203.0.113.25,<>,postmaster@contoso.com,x@fabrikam.com\n"
    )
    return p


def test_run_ingest_evaluate_report(tmp_path, tenant, cases):
    out = tmp_path / "w"
    r = _run("run", cases, "--format", "csv", "--config", tenant, "--out", out)
    assert r.exit_code == 0, r.output
    assert "1 newly rejected" in r.output and "report:" in r.output
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["impact"]["newly_rejected"] == 1 and summary["scenario"] == {"ndr_null_sender": 1}
    # The separate steps give the same answer.
    out2 = tmp_path / "w2"
    assert _run("ingest", cases, "--out", out2).exit_code == 0
    r = _run("evaluate", out2, "--config", tenant)
    assert r.exit_code == 0 and "1 newly rejected" in r.output
    assert _run("report", out2).exit_code == 0
    assert json.loads((out2 / "report" / "summary.json").read_text())["impact"] == summary["impact"]


def test_a_file_no_format_recognises_is_named_not_fatal(tmp_path, tenant, cases):
    logs = tmp_path / "logs"
    logs.mkdir()
    cases.rename(logs / "cases.csv")
    (logs / "notes.txt").write_text("remember to renew the certificate\n")
    r = _run("run", logs, "--config", tenant, "--out", tmp_path / "w")
    assert r.exit_code == 0, r.output
    assert f"skipped {logs / 'notes.txt'}: not read: not a log format" in r.output
    r = _run("ingest", logs, "--out", tmp_path / "w2")
    assert r.exit_code == 0, r.output
    assert "1 file read (0 already read before): 3 lines, 2 in messages" in r.output
    assert f"skipped {logs / 'notes.txt'}: not read" in r.output


def test_fail_on_exits_3(tmp_path, tenant, cases):
    r = _run("run", cases, "--config", tenant, "--out", tmp_path / "w", "--fail-on", "newly_rejected", "--quiet")
    assert r.exit_code == 3
    r = _run("report", tmp_path / "w", "--fail-on", "already_rejected")
    assert r.exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "{cases}", "--config", "{tmp}/missing.toml", "--out", "{tmp}/w"], "missing.toml: config file not found"),
        (["run", "{tmp}/nope.log", "--config", "{tenant}", "--out", "{tmp}/w"], "nope.log: no such file or folder"),
        (["run", "{cases}", "--config", "{tenant}", "--out", "{tmp}/w", "--format", "klingon"], "unknown format 'klingon'"),
        (["run", "{cases}", "--config", "{tenant}", "--out", "{tmp}/w", "--pack", "relay-1999"], "--pack 'relay-1999'"),
        (["run", "{cases}", "--config", "{tenant}", "--out", "{tmp}/w", "--fail-on", "doom"], "--fail-on doom"),
        (["run", "{cases}", "--config", "{tenant}", "--out", "{tmp}/w", "--tz", "Mars/Olympus"], "not a time zone name"),
        (["evaluate", "{tmp}/empty", "--config", "{tenant}"], "no messages dataset here"),
        (["report", "{tmp}/empty"], "no verdicts dataset here"),
        (["config", "check", "{bad}"], "unknown key 'colour'"),
        (["ingest", "{junk}", "--out", "{tmp}/w"], "not a log format relay-impact recognises"),
        (["ingest", "{empty_file}", "--out", "{tmp}/w"], "the file is empty"),
    ],
)
def test_errors_are_one_line_with_exit_1(tmp_path, tenant, cases, args, message):
    bad = tmp_path / "bad.toml"
    bad.write_text('accepted_domains = ["contoso.com"]\ncolour = "blue"\n')
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01\x02 this is no mail log \xff")
    empty_file = tmp_path / "empty.log"
    empty_file.write_text("")
    (tmp_path / "empty").mkdir()
    values = {"tmp": tmp_path, "tenant": tenant, "cases": cases, "bad": bad, "junk": junk, "empty_file": empty_file}
    r = _run(*[a.format(**values) for a in args])
    assert r.exit_code == 1, r.output
    assert message in r.output
    assert "Traceback" not in r.output
    assert r.output.count("error:") == 1


def test_config_check_prints_understanding_and_warnings(sample_logs):
    r = _run("config", "check", sample_logs / "tenant.toml")
    assert r.exit_code == 0
    assert "corp.contoso.com (Authoritative, match subdomains)" in r.output
    assert "On-premises relay: OnPremises, enabled (counts for relay); IPs: 203.0.113.0/24; certificate: mail.contoso.com" in r.output
    assert "exch01: egress 203.0.113.10; certificate: mail.contoso.com" in r.output
    assert "warning: connector 'Old datacenter relay' is an OnPremises connector but disabled" in r.output


def test_relay_pack_without_onpremises_connector(tmp_path, cases):
    p = tmp_path / "t.toml"
    p.write_text('accepted_domains = ["contoso.com"]\n[[connectors]]\nname = "p"\ntype = "Partner"\nsender_ip_addresses = ["198.51.100.0/24"]\n')
    r = _run("run", cases, "--config", p, "--out", tmp_path / "w")
    assert r.exit_code == 1 and "no enabled OnPremises inbound connector" in r.output
    r = _run("run", cases, "--config", p, "--out", tmp_path / "w", "--pack", "direct-send-2025")
    assert r.exit_code == 0, r.output


def test_formats_lists_canonical_csv():
    r = _run("formats")
    assert r.exit_code == 0 and "csv" in r.output and "p1_sender" in r.output


def test_every_command_is_documented_in_readme():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for command in ("relay-impact run", "relay-impact ingest", "relay-impact evaluate", "relay-impact report",
                    "relay-impact formats", "relay-impact config check"):
        assert command in readme, command
