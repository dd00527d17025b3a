"""remediation.ps1: the Exchange Online PowerShell that the report's remedies call for.

relay-impact never runs it. It starts with $WhatIfPreference = $true, so running it as written
only shows what it would change; the admin reviews each block and sets it to $false.

Mail data is attacker-controlled and a script is the worst place for it: only values that are
domain names (or IP addresses) ever reach a command, always single-quoted with quotes doubled
(PowerShell also treats the typographic quotes U+2018-U+201B as single quotes); everything else
appears only in comments, with line breaks and control characters removed.

    # --- Hosts with no connector match: 3 messages (3 already rejected) ---
    Set-InboundConnector -Identity $Connector -SenderIPAddresses @{Add='192.0.2.45'}
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ..workdir import atomic_write_text
from .aggregate import REJECTED_IMPACTS, ReportData

NAME = "remediation"
FILE = "remediation.ps1"

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
DOMAIN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})+$")
_PS_QUOTES = "'\u2018\u2019\u201a\u201b"
_UNVERIFIABLE = (".local", ".lan", ".internal", ".corp", ".localdomain", ".home")


def is_domain(value: str | None) -> bool:
    """A DNS name (letters, digits, hyphens, dots): the only mail data allowed in a command."""
    return bool(value) and DOMAIN.match(value.lower()) is not None


def is_ipv4(value: str | None) -> bool:
    """Exchange Online connectors take IPv4 addresses only (Microsoft Learn, New-InboundConnector)."""
    try:
        return ipaddress.ip_address(value or "").version == 4
    except ValueError:
        return False


def ps_quote(value: str) -> str:
    """A PowerShell single-quoted string literal: no expansion; embedded quotes doubled."""
    value = comment_text(value, limit=256)
    for q in _PS_QUOTES:
        value = value.replace(q, q + q)
    return f"'{value}'"


def comment_text(value, limit: int = 200) -> str:
    """Mail data made safe for a `#` comment: one line, no control or format characters."""
    text = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in str(value)
    )
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _messages(n: int) -> str:
    return f"{n:,} message" + ("" if n == 1 else "s")


def _volume(row: dict) -> str:
    parts = [f"{row[c]:,} {c.replace('_', ' ')}" for c in REJECTED_IMPACTS if row.get(c)]
    return _messages(row["messages"]) + (f" ({', '.join(parts)})" if parts else "")


def _seen(row: dict) -> str:
    first, last = row.get("first_seen"), row.get("last_seen")
    if first is None:
        return "time not in the log"
    return f"{first:%Y-%m-%d} .. {last:%Y-%m-%d}"


def _header(data: ReportData, connector: str | None) -> list[str]:
    out = [
        "# remediation.ps1, written by relay-impact "
        f"on {data.generated:%Y-%m-%d %H:%M} UTC (rule pack {comment_text(data.summary.get('rule_pack'))}).",
        "# The Exchange Online PowerShell that the remedies in report.html call for.",
        "# relay-impact never runs it. Review every block, delete what does not apply, then run it",
        "# in a session opened with Connect-ExchangeOnline.",
        "# It starts in -WhatIf mode: nothing changes until you set $WhatIfPreference = $false below.",
        "#Requires -Modules ExchangeOnlineManagement",
        "$ErrorActionPreference = 'Stop'",
        "$WhatIfPreference = $true",
        "",
        "# The OnPremises inbound connector the on-premises hosts relay through (the one most",
        "# relayed messages matched). Check it with: Get-InboundConnector | Format-List Name,ConnectorType,SenderIPAddresses,TlsSenderCertificateName",
    ]
    if connector:
        out.append(f"$Connector = {ps_quote(connector)}")
    else:
        out += ["# No message matched a connector: put the name of your OnPremises connector here.",
                "$Connector = ''"]
    out += ["if (-not $Connector) { throw 'Set $Connector to the name of your OnPremises inbound connector first.' }", ""]
    return out


def _block(title: str, volume: str, reason: str) -> list[str]:
    return ["", f"# --- {title}: {volume} ---", f"# Reason: {reason}"]


def _accepted_domain(domain: str) -> list[str]:
    """Make `domain` an accepted domain. Exchange Online takes domains from the Microsoft 365
    admin center (New-AcceptedDomain is an Exchange Server cmdlet), so the script checks and
    warns, and shows the Exchange Server command for hybrid organisations."""
    q = ps_quote(domain)
    return [
        f"if (-not (Get-AcceptedDomain | Where-Object {{ $_.DomainName -eq {q} }})) {{",
        f"    Write-Warning ({q} + ' is not an accepted domain: add and verify it in the Microsoft 365 admin center (Settings > Domains).')",
        "}",
        f"# Exchange Server (hybrid): New-AcceptedDomain -Name {q} -DomainName {q} -DomainType Authoritative",
    ]


def _no_connector_match(data: ReportData) -> list[str]:
    table = data.tables["no_connector_match"]
    if table.num_rows == 0:
        return []
    total = {c: int(pc.sum(table[c]).as_py() or 0) for c in ("messages", *REJECTED_IMPACTS)}
    out = _block(
        "Hosts with no connector match", _volume(total),
        "the IP Exchange Online sees matches no enabled OnPremises inbound connector, so the "
        "message is not attributed to your organisation (rejected under the old and new rules).",
    )
    for row in table.to_pylist():
        out.append(f"# host {comment_text(row['host'] or '(unknown)')}, IP {comment_text(row['source_ip'] or '(unknown)')}: "
                   f"{_volume(row)}, {_seen(row)}; P1 domains: {comment_text(', '.join(row['p1_domains']) or '(none)')}")
        if is_ipv4(row["source_ip"]):
            out.append(f"Set-InboundConnector -Identity $Connector -SenderIPAddresses @{{Add={ps_quote(row['source_ip'])}}}")
        else:
            out.append("#   no IPv4 address known for this host: add its egress IP by hand (tenant.toml [[hosts]] egress_ip "
                       "tells relay-impact which address Exchange Online sees).")
    return out


def _cert_names(values: list[str | None]) -> list[str]:
    names = []
    for value in values:
        for name in (value or "").split(";"):
            name = name.strip().lower()
            bare = name[2:] if name.startswith("*.") else name
            if is_domain(bare) and name not in names:
                names.append(name)
    return names


def _ndr(data: ReportData, suggestion: str | None) -> list[str]:
    table = data.tables["ndr_null_sender"]
    if table.num_rows == 0:
        return []
    total = {c: int(pc.sum(table[c]).as_py() or 0) for c in ("messages", *REJECTED_IMPACTS)}
    out = _block(
        "NDR / null-sender messages", _volume(total),
        "bounces, DSNs and automatic replies have the null sender <> as P1, so no P1 domain can be "
        "accepted; only a certificate whose name is an accepted domain, set on the connector, lets them through.",
    )
    for row in table.to_pylist():
        out.append(f"# host {comment_text(row['host'] or '(unknown)')}, IP {comment_text(row['source_ip'] or '(unknown)')}, "
                   f"P2 {comment_text(row['p2_domain'] or '(unknown)')}: {_volume(row)}, {_seen(row)}; "
                   f"certificate presented: {comment_text(row['tls_cert'] or 'none')}")
    names = _cert_names(table["tls_cert"].to_pylist())
    if names:
        out.append("# The hosts present these certificate names: make the connector require one and accept it as a domain.")
        for name in names:
            out.append(f"Set-InboundConnector -Identity $Connector -TlsSenderCertificateName {ps_quote(name)}")
            out += _accepted_domain(name[2:] if name.startswith("*.") else name)
        return out
    example = f" (for example {suggestion})" if suggestion and is_domain(suggestion) else ""
    out += [
        "# No certificate was seen: give the relaying servers a CA-signed certificate first, then put its",
        f"# name{example} here; it must also be an accepted domain.",
        "$CertificateName = ''",
        "if ($CertificateName) {",
        "    Set-InboundConnector -Identity $Connector -TlsSenderCertificateName $CertificateName",
        "    if (-not (Get-AcceptedDomain | Where-Object { $_.DomainName -eq $CertificateName })) {",
        "        Write-Warning ($CertificateName + ' is not an accepted domain: add and verify it in the Microsoft 365 admin center (Settings > Domains).')",
        "    }",
        "    # Exchange Server (hybrid): New-AcceptedDomain -Name $CertificateName -DomainName $CertificateName -DomainType Authoritative",
        "} else {",
        "    Write-Warning 'NDR / null-sender block skipped: set $CertificateName first.'",
        "}",
    ]
    return out


def _accepted_seen(data: ReportData) -> list[str]:
    """Accepted domains the messages show (P1 or P2 accepted), most used first."""
    names = data.tables["accepted_p1_domains"]["p1_domain"].to_pylist() + data.tables["accepted_p2_domains"]["p2_domain"].to_pylist()
    return [n for i, n in enumerate(names) if n and is_domain(n) and n not in names[:i]]


def _by_p1(senders: pa.Table, scenario: str) -> pa.Table:
    rows = senders.filter(pc.fill_null(pc.equal(senders["scenario"], scenario), False))
    rows = rows.append_column("host_or_ip", pc.coalesce(rows["host"], rows["source_ip"], pa.scalar("(unknown)")))
    grouped = rows.group_by("p1_domain", use_threads=False).aggregate(
        [("messages", "sum"), *((c, "sum") for c in REJECTED_IMPACTS), ("first_seen", "min"),
         ("last_seen", "max"), ("host_or_ip", "distinct")]
    )
    grouped = grouped.rename_columns([{"messages_sum": "messages", "first_seen_min": "first_seen",
                                       "last_seen_max": "last_seen", "host_or_ip_distinct": "hosts",
                                       **{f"{c}_sum": c for c in REJECTED_IMPACTS}}.get(n, n)
                                      for n in grouped.column_names])
    return grouped.take(pc.sort_indices(grouped, [("messages", "descending"), ("p1_domain", "ascending")]))


def _owner(domain: str, accepted: list[str]) -> str | None:
    return next((a for a in accepted if domain.endswith("." + a)), None)


def _app_p1(data: ReportData, accepted: list[str]) -> list[str]:
    table = _by_p1(data.tables["affected_senders"], "app_nonaccepted_p1")
    if table.num_rows == 0:
        return []
    total = {c: int(pc.sum(table[c]).as_py() or 0) for c in ("messages", *REJECTED_IMPACTS)}
    example = f"noreply@{accepted[0]}" if accepted else "an address in an accepted domain"
    out = _block(
        "Applications with a non-accepted P1 (MAIL FROM) domain", _volume(total),
        "the envelope sender's domain is not an accepted domain, and Exchange Online no longer "
        "lets the From: header (P2) stand in for it.",
    )
    out.append(f"# Best fix: change each application's MAIL FROM to {comment_text(example)}, or move the host behind the certificate-based connector.")
    for row in table.to_pylist():
        domain = row["p1_domain"]
        hosts = comment_text(", ".join(sorted(row["hosts"])))
        out.append("")
        if not domain or not is_domain(domain):
            out.append(f"# P1 {comment_text(domain or '(no domain in the log)')} (not a domain name; nothing to run): "
                       f"{_volume(row)}, {_seen(row)}; hosts {hosts}")
            continue
        out.append(f"# P1 domain {domain}: {_volume(row)}, {_seen(row)}; hosts {hosts}")
        owner = _owner(domain, accepted)
        if domain.endswith(_UNVERIFIABLE):
            out.append("#   an internal name that cannot be verified as a domain: change the application's MAIL FROM.")
        elif owner:
            out.append(f"#   a subdomain of your accepted domain {owner}: accepting it is the quick fix.")
            out += _accepted_domain(domain)
        else:
            out.append("#   only if your organisation owns this domain: accept it; otherwise change the MAIL FROM.")
            out += ["# " + line for line in _accepted_domain(domain)]
    return out


def _third_party(data: ReportData) -> list[str]:
    table = data.tables["third_party_services"]
    rejected = pc.add(pc.add(table["newly_rejected"], table["possibly_rejected"]), table["already_rejected"])
    table = table.filter(pc.greater(rejected, 0))
    if table.num_rows == 0:
        return []
    total = {c: int(pc.sum(table[c]).as_py() or 0) for c in ("messages", *REJECTED_IMPACTS)}
    out = _block(
        "Third-party services", _volume(total),
        "the P1 domain belongs to a sending service, not to you. Nothing to run here: the service "
        "must send with your domain or its own tenant-specific certificate (MC1226222).",
    )
    for row in table.to_pylist():
        out += [
            f"# {comment_text(row['third_party'])}: {_volume(row)}, {_seen(row)}; "
            f"P1 domains {comment_text(', '.join(row['p1_domains']))}",
            f"#   {comment_text(row['remedy'] or 'see the service catalog', limit=600)}",
        ]
    return out


def _other(data: ReportData) -> list[str]:
    done = {"no_connector_match", "ndr_null_sender", "app_nonaccepted_p1", "third_party_service"}
    senders = data.tables["affected_senders"]
    rest = senders.filter(pc.invert(pc.fill_null(pc.is_in(senders["scenario"], value_set=pa.array(sorted(done))), False)))
    if rest.num_rows == 0:
        return []
    grouped = rest.group_by(["scenario", "remedy"], use_threads=False).aggregate([("messages", "sum")])
    out = []
    for row in grouped.to_pylist():
        out += _block(f"Scenario {comment_text(row['scenario'])}", _messages(row["messages_sum"]),
                      comment_text(row["remedy"] or "see report.html", limit=600))
    return out


def render(data: ReportData) -> str:
    connectors = data.tables["connectors"]["matched_connector"].to_pylist()
    connector = next((c for c in connectors if c), None)
    accepted = _accepted_seen(data)
    suggestion = f"mail.{accepted[0]}" if accepted else None
    lines = _header(data, connector)
    body = _no_connector_match(data) + _ndr(data, suggestion) + _app_p1(data, accepted) + _third_party(data) + _other(data)
    if not body:
        body = ["# No rejected message in the report period: nothing to change."]
    return "\r\n".join(lines + body) + "\r\n"


def write(data: ReportData, outdir: Path) -> list[Path]:
    path = outdir / FILE
    # UTF-8 with BOM: Windows PowerShell 5.1 reads a BOM-less script as the ANSI code page.
    atomic_write_text(path, "\ufeff" + render(data))
    return [path]
