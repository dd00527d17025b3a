"""Tenant config: TOML, PowerShell exports in every encoding they arrive in, and clear errors."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from pipeline.config import config_from_dict, hygiene_warnings, load_config
from pipeline.errors import ConfigError

DATA = Path(__file__).parent / "data" / "config"

ENCODINGS = {
    "utf-8": lambda t: t.encode("utf-8"),
    "utf-8-bom": lambda t: codecs.BOM_UTF8 + t.encode("utf-8"),
    "utf-16le-bom": lambda t: codecs.BOM_UTF16_LE + t.replace("\n", "\r\n").encode("utf-16-le"),
    "utf-16le-nobom": lambda t: t.encode("utf-16-le"),
}


def _write(tmp_path: Path, name: str, text: str, encoding: str) -> Path:
    p = tmp_path / name
    p.write_bytes(ENCODINGS[encoding](text))
    return p


def _toml(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "tenant.toml"
    p.write_text(body, encoding="utf-8")
    return p


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("kind", ["json", "csv"])
def test_exports_load_in_every_encoding(tmp_path, encoding, kind):
    _write(tmp_path, f"AcceptedDomains.{kind}", (DATA / f"AcceptedDomains.{kind}").read_text(), encoding)
    _write(tmp_path, f"InboundConnectors.{kind}", (DATA / f"InboundConnectors.{kind}").read_text(), encoding)
    cfg = load_config(_toml(tmp_path, f'accepted_domains_file = "AcceptedDomains.{kind}"\nconnectors_file = "InboundConnectors.{kind}"\n'))
    domains = {d.name: d for d in cfg.accepted_domains}
    assert set(domains) == {"contoso.com", "corp.contoso.com"}
    assert domains["corp.contoso.com"].match_subdomains is True
    assert domains["corp.contoso.com"].domain_type == "InternalRelay"
    relay, partner = cfg.connectors
    assert relay.name == "On-premises relay" and relay.type == "OnPremises" and relay.counts_for_relay
    assert [r.text for r in relay.sender_ip_addresses] == ["203.0.113.0/24", "198.51.100.7"]
    assert relay.tls_sender_certificate_name == "*.contoso.com"
    assert partner.type == "Partner" and not partner.counts_for_relay


def test_single_object_json_export(tmp_path):
    (tmp_path / "c.json").write_text((DATA / "InboundConnector-single.json").read_text())
    cfg = load_config(_toml(tmp_path, 'accepted_domains = ["contoso.com"]\nconnectors_file = "c.json"\n'))
    [c] = cfg.connectors
    assert c.enabled is False and c.sender_ip_addresses[0].text == "192.0.2.0/25"


def test_type_name_instead_of_values_says_how_to_export(tmp_path):
    (tmp_path / "c.csv").write_text((DATA / "InboundConnectors-typename.csv").read_text())
    with pytest.raises(ConfigError, match=r"SenderIPAddresses: the export holds the type name .*-join"):
        load_config(_toml(tmp_path, 'accepted_domains = ["contoso.com"]\nconnectors_file = "c.csv"\n'))


def test_inline_config_and_hosts():
    cfg = config_from_dict({
        "accepted_domains": ["Contoso.com."],
        "connectors": [{"name": "r", "sender_ip_addresses": ["203.0.113.1-203.0.113.9"]}],
        "hosts": [{"name": "mx1", "egress_ip": "203.0.113.5", "certificate": ["mail.contoso.com", "mx1.contoso.com"], "logs": ["/var/log/exim4/mainlog*"]}],
    })
    assert cfg.accepted_domains[0].name == "contoso.com"
    r = cfg.connectors[0].sender_ip_addresses[0]
    assert r.hi - r.lo == 8
    assert cfg.host("MX1").certificate == ("mail.contoso.com", "mx1.contoso.com")
    assert cfg.host_globs() == {"mx1": ["/var/log/exim4/mainlog*"]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('accepted_domains = ["contoso.com"]\nfoo = 1\n', "unknown key 'foo'"),
        ('accepted_domains = ["contoso.com"]\n[[connectors]]\nname = "x"\nsender_ip_addresses = ["203.0.113.0/33"]\n', "not an IPv4 address, CIDR block or range"),
        ('accepted_domains = ["contoso.com"]\n[[connectors]]\nname = "x"\nsender_ip_addresses = ["2001:db8::/64"]\n', "IPv6; Exchange Online connectors accept IPv4 only"),
        ('accepted_domains_file = "missing.json"\n', "accepted_domains_file: file .*missing.json does not exist"),
        ('accepted_domains = ["contoso.com"]\n[[connectors]]\nname = "x"\nenabled = "maybe"\n', "enabled: expected true or false"),
        ('accepted_domains = ["contoso.com"]\n[rules]\ncert_parent_domain = "sometimes"\n', 'cert_parent_domain: expected "unknown", "accept" or "reject"'),
        ('accepted_domains = ["contoso.com"]\n[rules]\npack = "relay-1999"\n', "pack: expected"),
        ('accepted_domains = []\n', "at least one accepted domain"),
        ('accepted_domains = ["contoso.com"\n', "not valid TOML"),
        ('accepted_domains = ["contoso.com"]\n[[hosts]]\nname = "h"\negress_ip = "nope"\n', "egress_ip: expected an IP address"),
        ('accepted_domains = ["contoso.com"]\n[[connectors]]\nname = "x"\ntype = "Hybrid"\n', 'type: expected "OnPremises" or "Partner"'),
    ],
)
def test_config_mistakes_name_file_key_and_expectation(tmp_path, body, message):
    path = _toml(tmp_path, body)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert str(path) in str(err.value) or "rule pack" in str(err.value)


def test_config_error_is_also_a_value_error(tmp_path):
    with pytest.raises(ValueError):
        load_config(_toml(tmp_path, "nonsense = 1\n"))


def test_host_bits_and_hygiene_warnings():
    cfg = config_from_dict({
        "accepted_domains": ["contoso.com"],
        "connectors": [
            {"name": "wide", "sender_ip_addresses": ["203.0.113.5/16"], "tls_sender_certificate_name": "relay.fabrikam.com"},
            {"name": "off", "enabled": False, "sender_ip_addresses": ["192.0.2.0/24"]},
        ],
    })
    text = "\n".join(hygiene_warnings(cfg))
    assert "has host bits set; read as 203.0.0.0/16" in text
    assert "wider than /24" in text
    assert "'off' is an OnPremises connector but disabled" in text
    assert "relay.fabrikam.com is not an accepted domain" in text


def test_sample_tenant_loads(sample_logs):
    cfg = load_config(sample_logs / "tenant.toml")
    assert any(c.counts_for_relay for c in cfg.connectors)
