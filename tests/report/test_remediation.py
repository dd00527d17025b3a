"""remediation.ps1: the commands the remedies call for, and no way for mail data to run code."""

from __future__ import annotations

import re

import pytest

from pipeline.report import report
from pipeline.report.remediation import comment_text, is_domain, ps_quote

QUOTED = re.compile(r"'((?:[^']|'')*)'")


def _script(workdir) -> str:
    raw = (workdir / "report" / "remediation.ps1").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # BOM: Windows PowerShell 5.1 reads it as UTF-8
    return raw.decode("utf-8-sig")


def _code_lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_quoting_helpers():
    assert ps_quote("On-premises relay") == "'On-premises relay'"
    assert ps_quote("it's") == "'it''s'"
    assert ps_quote("a\u2019b") == "'a\u2019\u2019b'"  # PowerShell reads U+2019 as a quote too
    assert ps_quote("x\n$(Remove-Mailbox)") == "'x $(Remove-Mailbox)'"
    assert comment_text("host\r\nRemove-Mailbox ceo\u2028x") == "host Remove-Mailbox ceo x"
    assert is_domain("alerts.contoso.com") and is_domain("EM42.SendGrid.net")
    for bad in ("evil.example';remove-mailbox('ceo');'", "=cmd|'/c;calc'!a1", "contoso", "-a.com", "a..com", "", None):
        assert not is_domain(bad), bad


def test_commands_for_the_remedies(cases_workdir):
    script = _script(cases_workdir)
    code = _code_lines(script)
    assert "$WhatIfPreference = $true" in code
    assert "$Connector = 'On-premises relay'" in code
    # host with no connector match: its egress IP is added to the connector
    assert "Set-InboundConnector -Identity $Connector -SenderIPAddresses @{Add='192.0.2.45'}" in code
    # NDRs: certificate matching, guarded until the admin names the certificate
    assert "    Set-InboundConnector -Identity $Connector -TlsSenderCertificateName $CertificateName" in code
    assert "# name (for example mail.contoso.com) here; it must also be an accepted domain." in script
    # a subdomain of an accepted domain is offered as an accepted domain
    assert "# Exchange Server (hybrid): New-AcceptedDomain -Name 'alerts.contoso.com' -DomainName 'alerts.contoso.com' -DomainType Authoritative" in script
    assert any("'alerts.contoso.com'" in line for line in code)
    # a domain nobody said the organisation owns stays a comment
    assert not any("fabrikam.com" in line for line in code)
    # third-party services: comments only, with the volume
    assert "# SendGrid (Twilio): 3 messages (3 newly rejected), 2026-11-01 .. 2026-11-03; P1 domains em42.sendgrid.net" in script
    assert "# --- Hosts with no connector match: 4 messages (4 already rejected) ---" in script


def test_mail_data_never_reaches_a_command(cases_workdir):
    code = _code_lines(_script(cases_workdir))
    allowed = {"On-premises relay", "Stop", ""}
    for line in code:
        assert "Remove-Mailbox" not in line and "calc" not in line and "alert(" not in line, line
        for literal in QUOTED.findall(line):
            value = literal.replace("''", "'")
            assert value in allowed or is_domain(value) or re.fullmatch(r"[\d.]+", value) or \
                " " in value, (line, value)  # sentences in Write-Warning / throw are ours


def test_line_breaks_in_mail_data_stay_in_comments(tmp_path):
    from .conftest import workdir_from_rows

    evil_host = "relay01\r\nRemove-Mailbox -Identity ceo -Confirm:$false\n#"
    workdir = workdir_from_rows(tmp_path / "out", [
        {"host": evil_host, "relay_ip": "192.0.2.9", "p1_sender": "app@contoso.com", "p2_sender": "app@contoso.com"},
        {"host": evil_host, "relay_ip": "203.0.113.25", "p1_sender": "x@evil.example'\n;Remove-Mailbox ceo;'",
         "p2_sender": "a@contoso.com"},
        {"host": "printer", "relay_ip": "2001:db8::1", "p1_sender": "scan@contoso.com", "p2_sender": "scan@contoso.com"},
    ])
    report(workdir, ["remediation"])
    script = _script(workdir)
    for line in script.splitlines():
        if "Remove-Mailbox" in line:
            assert line.lstrip().startswith("#"), line
    assert "Set-InboundConnector -Identity $Connector -SenderIPAddresses @{Add='192.0.2.9'}" in script
    assert "@{Add='2001:db8::1'}" not in script  # connectors take IPv4 only


@pytest.mark.parametrize("since", ["2026-12-01"])
def test_nothing_to_change(cases_workdir, since, tmp_path):
    import shutil

    workdir = tmp_path / "out"
    shutil.copytree(cases_workdir, workdir)
    report(workdir, ["remediation"], since=since)
    script = _script(workdir)
    # only the message without a time is left: an application P1 that cannot be verified
    assert "erp.corp.local: 1 message (1 newly rejected), time not in the log" in script
