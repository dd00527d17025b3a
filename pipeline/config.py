"""The tenant configuration: accepted domains, inbound connectors, on-premises hosts, rule switches.

Read from a TOML file (see README), inline or pointing at PowerShell exports
(`Get-AcceptedDomain` / `Get-InboundConnector` piped to `ConvertTo-Json` or `Export-Csv`), which
arrive as UTF-16LE with BOM (Windows PowerShell `>`), UTF-8 with or without BOM, with `#TYPE`
lines, and with multi-valued properties as JSON arrays, objects or space-separated strings.

Every mistake raises ConfigError naming the file, the key and what was expected.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .ingest.base import sniff_encoding

CERT_NAMES = ("cn+san", "cn")
CERT_PARENT = ("unknown", "accept", "reject")
UNKNOWN_CERT = ("none", "unknown")
CONNECTOR_TYPES = {"onpremises": "OnPremises", "partner": "Partner"}
# Serialised enums in ConvertTo-Json output (TenantConnectorType, AcceptedDomainType).
CONNECTOR_TYPE_CODES = {1: "Partner", 2: "OnPremises"}
DOMAIN_TYPE_CODES = {0: "Authoritative", 1: "ExternalRelay", 2: "InternalRelay"}


@dataclass(frozen=True)
class AcceptedDomain:
    name: str
    match_subdomains: bool = False
    domain_type: str = "Authoritative"


@dataclass(frozen=True)
class IPRange:
    """An IPv4 range as integers, with the text it came from."""

    lo: int
    hi: int
    text: str

    @property
    def prefix_len(self) -> int | None:
        size = self.hi - self.lo + 1
        if size & (size - 1) == 0 and self.lo % size == 0:
            return 32 - (size.bit_length() - 1)
        return None


@dataclass(frozen=True)
class Connector:
    name: str
    type: str = "OnPremises"
    enabled: bool = True
    sender_ip_addresses: tuple[IPRange, ...] = ()
    tls_sender_certificate_name: str | None = None

    @property
    def counts_for_relay(self) -> bool:
        return self.enabled and self.type == "OnPremises"

    @property
    def certificate_only(self) -> bool:
        return not self.sender_ip_addresses and self.tls_sender_certificate_name is not None


@dataclass(frozen=True)
class Host:
    name: str
    egress_ip: str | None = None
    certificate: tuple[str, ...] = ()  # CN first, then SANs; empty = presents none
    logs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ThirdParty:
    name: str
    domains: tuple[str, ...]
    remedy: str = ""
    category: str = "user-defined"


@dataclass(frozen=True)
class Rules:
    pack: str = "relay-2023"
    cert_names: str = "cn+san"
    cert_parent_domain: str = "unknown"
    unknown_certificate: str = "none"


@dataclass(frozen=True)
class TenantConfig:
    path: str
    accepted_domains: tuple[AcceptedDomain, ...]
    connectors: tuple[Connector, ...]
    hosts: tuple[Host, ...] = ()
    relay_targets: tuple[str, ...] = ("*.mail.protection.outlook.com",)
    rules: Rules = field(default_factory=Rules)
    third_parties: tuple[ThirdParty, ...] = ()
    warnings: tuple[str, ...] = ()

    def host(self, name: str) -> Host | None:
        low = name.lower()
        return next((h for h in self.hosts if h.name.lower() == low), None)

    def host_globs(self) -> dict[str, list[str]]:
        return {h.name: list(h.logs) for h in self.hosts if h.logs}

    def with_rules(self, **changes: str) -> TenantConfig:
        from dataclasses import replace

        return replace(self, rules=replace(self.rules, **{k: v for k, v in changes.items() if v}))


# --------------------------------------------------------------------------------------------
# small validators


def normalise_domain_name(value: str) -> str:
    return value.strip().lower().rstrip(".")


def _expect(cond: bool, where: str, key: str, expected: str, got: Any = None) -> None:
    if not cond:
        shown = "" if got is None else f", got {got!r}"
        raise ConfigError(f"{where}: {key}: expected {expected}{shown}")


def _as_bool(value: Any, where: str, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "$true", "$false"):
        return value.strip().lower().lstrip("$") == "true"
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigError(f"{where}: {key}: expected true or false, got {value!r}")


def _as_str(value: Any, where: str, key: str) -> str:
    _expect(isinstance(value, str) and value.strip() != "", where, key, "a non-empty string", value)
    return value.strip()


def _as_str_list(value: Any, where: str, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    _expect(
        isinstance(value, list) and all(isinstance(v, str) for v in value),
        where, key, "a string or a list of strings", value,
    )
    return list(value)


def _check_keys(table: dict, allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(
                f"{where}: unknown key {key!r}; expected one of: {', '.join(sorted(allowed))}"
            )


def parse_ip_range(text: str, where: str, key: str, warnings: list[str]) -> IPRange:
    """'203.0.113.5', '203.0.113.0/24' or '203.0.113.1-203.0.113.50' -> IPRange (IPv4 only)."""
    text = text.strip()
    try:
        if "-" in text and "/" not in text:
            a, b = (ipaddress.ip_address(p.strip()) for p in text.split("-", 1))
            if a.version == 6 or b.version == 6:
                raise ConfigError(
                    f"{where}: {key}: {text!r} is IPv6; Exchange Online connectors accept IPv4 only"
                )
            lo, hi = int(a), int(b)
            _expect(lo <= hi, where, key, "a range whose start is not after its end", text)
            return IPRange(lo, hi, text)
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ConfigError(
            f"{where}: {key}: {text!r} is not an IPv4 address, CIDR block or range ({exc})"
        ) from None
    if net.version == 6:
        raise ConfigError(
            f"{where}: {key}: {text!r} is IPv6; Exchange Online connectors accept IPv4 only"
        )
    if "/" in text and ipaddress.ip_interface(text).ip != net.network_address:
        warnings.append(f"{where}: {key}: {text} has host bits set; read as {net}")
    return IPRange(int(net.network_address), int(net.broadcast_address), str(net) if "/" in text else text)


# --------------------------------------------------------------------------------------------
# PowerShell exports


def read_export(path: Path, where: str) -> list[dict]:
    """Records of a ConvertTo-Json or Export-Csv file, whatever its encoding."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path} ({exc.strerror or exc})") from None
    enc = sniff_encoding(raw[:4096])
    try:
        text = raw.decode(enc)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid {enc} text ({exc})") from None
    text = text.lstrip("\ufeff")
    stripped = text.lstrip()
    if not stripped:
        raise ConfigError(f"{path}: the export is empty; expected ConvertTo-Json or Export-Csv output")
    if stripped[0] in "[{":
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        records = data if isinstance(data, list) else [data]  # one object when only one item
        if not all(isinstance(r, dict) for r in records):
            raise ConfigError(f"{path}: expected JSON objects (ConvertTo-Json output)")
        return records
    lines = [ln for ln in stripped.splitlines() if not ln.startswith("#")]  # '#TYPE ...' lines
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    records = [dict(r) for r in reader]
    if not reader.fieldnames:
        raise ConfigError(f"{path}: expected a CSV header row (Export-Csv output)")
    return records


def _prop(record: dict, *names: str) -> Any:
    """A property by any of its names, case-insensitively."""
    lower = {k.lower(): v for k, v in record.items()}
    for n in names:
        if n.lower() in lower:
            return lower[n.lower()]
    return None


def _domain_value(value: Any) -> str | None:
    """DomainName serialises as a string, or as an object with Domain/Address/SmtpDomain."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in ("Domain", "Address", "SmtpDomain", "Name"):
            inner = _prop(value, key)
            if inner is not None:
                return _domain_value(inner)
    return None


def _multi(value: Any, path: Path, key: str) -> list[str]:
    """A multi-valued property: JSON array, object(s), or a space/comma separated CSV string."""
    if value is None or value == "":
        return []
    if isinstance(value, list):
        out: list[str] = []
        for v in value:
            out.extend(_multi(v, path, key))
        return out
    if isinstance(value, dict):
        for k in ("Expression", "IPRange", "Address", "Value", "Name", "CertificateName"):
            inner = _prop(value, k)
            if isinstance(inner, str) and inner:
                return [inner]
        lo, hi = _prop(value, "LowerBound"), _prop(value, "UpperBound")
        if lo is not None and hi is not None:
            lo_s, hi_s = _multi(lo, path, key), _multi(hi, path, key)
            if lo_s and hi_s:
                return [lo_s[0] if lo_s == hi_s else f"{lo_s[0]}-{hi_s[0]}"]
        raise ConfigError(f"{path}: {key}: cannot read the value {value!r}")
    text = str(value).strip()
    if text.startswith(("System.", "Microsoft.Exchange.")):
        raise ConfigError(
            f"{path}: {key}: the export holds the type name {text!r} instead of the values; "
            f"export with @{{n='{key}';e={{$_.{key} -join ' '}}}} in Select-Object, "
            "or use ConvertTo-Json -Depth 4"
        )
    return [p for p in text.replace(",", " ").replace(";", " ").split() if p]


def _type_value(value: Any, codes: dict[int, str]) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return codes.get(value)
    if isinstance(value, dict):
        return _type_value(_prop(value, "Value", "value"), codes)
    if isinstance(value, str) and value.strip().isdigit():
        return codes.get(int(value))
    return str(value).strip() if value is not None else None


def accepted_domains_from_export(path: Path, where: str) -> list[AcceptedDomain]:
    out = []
    for i, rec in enumerate(read_export(path, where), start=1):
        name = _domain_value(_prop(rec, "DomainName", "Domain", "Name"))
        if not name:
            raise ConfigError(f"{path}: record {i}: expected a DomainName property")
        dtype = _type_value(_prop(rec, "DomainType"), DOMAIN_TYPE_CODES) or "Authoritative"
        msd = _prop(rec, "MatchSubDomains")
        out.append(
            AcceptedDomain(
                normalise_domain_name(name),
                _as_bool(msd, f"{path}: record {i}", "MatchSubDomains") if msd not in (None, "") else False,
                dtype,
            )
        )
    return out


def connectors_from_export(path: Path, where: str, warnings: list[str]) -> list[Connector]:
    out = []
    for i, rec in enumerate(read_export(path, where), start=1):
        rwhere = f"{path}: record {i}"
        name = _prop(rec, "Name", "Identity")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{rwhere}: expected a Name property")
        ctype = _type_value(_prop(rec, "ConnectorType"), CONNECTOR_TYPE_CODES) or "OnPremises"
        enabled = _prop(rec, "Enabled")
        ips = _multi(_prop(rec, "SenderIPAddresses"), path, "SenderIPAddresses")
        certs = _multi(_prop(rec, "TlsSenderCertificateName"), path, "TlsSenderCertificateName")
        out.append(
            _connector(
                {
                    "name": name.strip(),
                    "type": ctype,
                    "enabled": True if enabled in (None, "") else enabled,
                    "sender_ip_addresses": ips,
                    "tls_sender_certificate_name": certs[0] if certs else None,
                },
                f"{rwhere} ({name.strip()})",
                warnings,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# the TOML file

_TOP_KEYS = {
    "accepted_domains", "accepted_domains_file", "connectors", "connectors_file", "hosts",
    "relay", "rules", "third_parties",
}
_CONNECTOR_KEYS = {"name", "type", "enabled", "sender_ip_addresses", "tls_sender_certificate_name"}
_HOST_KEYS = {"name", "egress_ip", "certificate", "logs"}
_DOMAIN_KEYS = {"name", "match_subdomains", "domain_type"}
_THIRD_KEYS = {"name", "domains", "remedy", "category"}
_RULE_KEYS = {"pack", "cert_names", "cert_parent_domain", "unknown_certificate"}


def _connector(table: dict, where: str, warnings: list[str]) -> Connector:
    _check_keys(table, _CONNECTOR_KEYS, where)
    name = _as_str(table.get("name"), where, "name")
    raw_type = str(table.get("type", "OnPremises")).strip()
    ctype = CONNECTOR_TYPES.get(raw_type.lower())
    _expect(ctype is not None, where, "type", '"OnPremises" or "Partner"', raw_type)
    enabled = _as_bool(table.get("enabled", True), where, "enabled")
    ips = tuple(
        parse_ip_range(t, where, "sender_ip_addresses", warnings)
        for t in _as_str_list(table.get("sender_ip_addresses", []), where, "sender_ip_addresses")
    )
    cert = table.get("tls_sender_certificate_name")
    if cert is not None:
        cert = normalise_domain_name(_as_str(cert, where, "tls_sender_certificate_name"))
    return Connector(name, ctype, enabled, ips, cert)


def _resolve(base: Path, value: Any, where: str, key: str) -> Path:
    p = Path(_as_str(value, where, key))
    p = p if p.is_absolute() else base / p
    if not p.is_file():
        raise ConfigError(f"{where}: {key}: file {p} does not exist")
    return p


def load_config(path: str | Path) -> TenantConfig:
    """Read and validate a tenant TOML file (and the exports it points at)."""
    path = Path(path)
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the config file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: expected a UTF-8 TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML ({exc})") from None
    return config_from_dict(data, where, path.parent)


def config_from_dict(data: dict, where: str = "<config>", base: Path | None = None) -> TenantConfig:
    """Build a TenantConfig from an already-parsed TOML mapping (used by notebooks and tests)."""
    base = base or Path.cwd()
    warnings: list[str] = []
    _check_keys(data, _TOP_KEYS, where)

    domains = _accepted_domains(data, where, base)
    connectors = _connectors(data, where, base, warnings)
    hosts = tuple(_host(h, f"{where}: [[hosts]] #{i}", warnings) for i, h in enumerate(_tables(data, "hosts", where), 1))
    relay = data.get("relay", {})
    _expect(isinstance(relay, dict), where, "[relay]", "a table")
    _check_keys(relay, {"targets"}, f"{where}: [relay]")
    targets = tuple(
        t.strip().lower()
        for t in _as_str_list(relay.get("targets", ["*.mail.protection.outlook.com"]), f"{where}: [relay]", "targets")
    )
    rules = _rules(data.get("rules", {}), f"{where}: [rules]", base)
    third = tuple(
        _third_party(t, f"{where}: [[third_parties]] #{i}")
        for i, t in enumerate(_tables(data, "third_parties", where), 1)
    )
    return TenantConfig(where, domains, connectors, hosts, targets, rules, third, tuple(warnings))


def _tables(data: dict, key: str, where: str) -> list[dict]:
    value = data.get(key, [])
    _expect(
        isinstance(value, list) and all(isinstance(v, dict) for v in value),
        where, key, f"[[{key}]] tables",
    )
    return value


def _accepted_domains(data: dict, where: str, base: Path) -> tuple[AcceptedDomain, ...]:
    out: list[AcceptedDomain] = []
    inline = data.get("accepted_domains", [])
    _expect(isinstance(inline, list), where, "accepted_domains", "a list of names or [[accepted_domains]] tables")
    for i, item in enumerate(inline, 1):
        if isinstance(item, str):
            out.append(AcceptedDomain(normalise_domain_name(item)))
        elif isinstance(item, dict):
            iw = f"{where}: [[accepted_domains]] #{i}"
            _check_keys(item, _DOMAIN_KEYS, iw)
            out.append(
                AcceptedDomain(
                    normalise_domain_name(_as_str(item.get("name"), iw, "name")),
                    _as_bool(item.get("match_subdomains", False), iw, "match_subdomains"),
                    str(item.get("domain_type", "Authoritative")),
                )
            )
        else:
            raise ConfigError(f"{where}: accepted_domains: expected a domain name or a table, got {item!r}")
    if "accepted_domains_file" in data:
        out.extend(
            accepted_domains_from_export(
                _resolve(base, data["accepted_domains_file"], where, "accepted_domains_file"), where
            )
        )
    for d in out:
        _expect("." in d.name and " " not in d.name, where, "accepted_domains", "domain names", d.name)
    if not out:
        raise ConfigError(
            f"{where}: accepted_domains: expected at least one accepted domain "
            "(accepted_domains = [...] or accepted_domains_file = \"AcceptedDomains.json\")"
        )
    return tuple(out)


def _connectors(data: dict, where: str, base: Path, warnings: list[str]) -> tuple[Connector, ...]:
    out = [
        _connector(t, f"{where}: [[connectors]] #{i}", warnings)
        for i, t in enumerate(_tables(data, "connectors", where), 1)
    ]
    if "connectors_file" in data:
        out.extend(
            connectors_from_export(
                _resolve(base, data["connectors_file"], where, "connectors_file"), where, warnings
            )
        )
    return tuple(out)


def _host(table: dict, where: str, warnings: list[str]) -> Host:
    _check_keys(table, _HOST_KEYS, where)
    name = _as_str(table.get("name"), where, "name")
    egress = table.get("egress_ip")
    if egress is not None:
        egress = _as_str(egress, where, "egress_ip")
        try:
            ipaddress.ip_address(egress)
        except ValueError:
            raise ConfigError(f"{where}: egress_ip: expected an IP address, got {egress!r}") from None
    certs = tuple(
        normalise_domain_name(c) for c in _as_str_list(table.get("certificate", []), where, "certificate")
    )
    logs = tuple(_as_str_list(table.get("logs", []), where, "logs"))
    return Host(name, egress, certs, logs)


def _rules(table: Any, where: str, base: Path) -> Rules:
    _expect(isinstance(table, dict), where, "[rules]", "a table")
    _check_keys(table, _RULE_KEYS, where)
    from .rules.packs import load_pack, pack_names  # the packs are data files

    pack = str(table.get("pack", "relay-2023"))
    if pack.endswith(".toml"):  # a pack file of your own, relative to the config file
        path = Path(pack) if Path(pack).is_absolute() else base / pack
        load_pack(str(path))  # validate now: a bad pack is a config error
        pack = str(path)
    else:
        expected = " or ".join(f'"{p}"' for p in pack_names()) + ", or a pack file (*.toml)"
        _expect(pack in pack_names(), where, "pack", expected, pack)
    cert_names = str(table.get("cert_names", "cn+san"))
    _expect(cert_names in CERT_NAMES, where, "cert_names", '"cn+san" or "cn"', cert_names)
    parent = str(table.get("cert_parent_domain", "unknown"))
    _expect(parent in CERT_PARENT, where, "cert_parent_domain", '"unknown", "accept" or "reject"', parent)
    unknown = str(table.get("unknown_certificate", "none"))
    _expect(unknown in UNKNOWN_CERT, where, "unknown_certificate", '"none" or "unknown"', unknown)
    return Rules(pack, cert_names, parent, unknown)


def _third_party(table: dict, where: str) -> ThirdParty:
    _check_keys(table, _THIRD_KEYS, where)
    return ThirdParty(
        _as_str(table.get("name"), where, "name"),
        tuple(normalise_domain_name(d) for d in _as_str_list(table.get("domains"), where, "domains")),
        str(table.get("remedy", "")),
        str(table.get("category", "user-defined")),
    )


# --------------------------------------------------------------------------------------------
# hygiene (relay-rules.md, "Warnings worth reporting")


def hygiene_warnings(config: TenantConfig) -> list[str]:
    """MC1226222-style warnings about the tenant configuration itself."""
    out = list(config.warnings)
    accepted = {d.name for d in config.accepted_domains}
    for c in config.connectors:
        if c.type == "OnPremises" and not c.enabled:
            out.append(f"connector {c.name!r} is an OnPremises connector but disabled: it matches nothing")
        for r in c.sender_ip_addresses:
            plen = r.prefix_len
            if plen is None or plen < 24:
                out.append(
                    f"connector {c.name!r}: {r.text} is wider than /24 "
                    "(Microsoft documents /24 to /32 for SenderIPAddresses)"
                )
        if c.tls_sender_certificate_name:
            name = c.tls_sender_certificate_name.removeprefix("*.")
            if name not in accepted:
                out.append(
                    f"connector {c.name!r}: certificate name {c.tls_sender_certificate_name} is not an "
                    "accepted domain; add it with New-AcceptedDomain so relayed mail is attributed"
                )
    if not any(c.counts_for_relay for c in config.connectors):
        out.append("no enabled OnPremises connector: the relay rules do not apply to this tenant")
    for h in config.hosts:
        if h.egress_ip and ":" in h.egress_ip:
            out.append(f"host {h.name!r}: egress_ip {h.egress_ip} is IPv6; no connector can match it")
    return out


def connector_ranges(config: TenantConfig, relay_only: bool = True) -> tuple[tuple[int, int], ...]:
    """IPv4 integer ranges of the connectors (for ingestors of Exchange Online logs)."""
    return tuple(
        (r.lo, r.hi)
        for c in config.connectors
        if (c.counts_for_relay if relay_only else c.enabled)
        for r in c.sender_ip_addresses
    )
