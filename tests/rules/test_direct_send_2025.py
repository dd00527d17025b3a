"""The direct-send-2025 pack (relay-rules.md, 'A second rule pack')."""

from __future__ import annotations

from tests.helpers import judge, tenant

CFG = tenant(connectors=[
    {"name": "Partner scanner", "type": "Partner", "sender_ip_addresses": ["198.51.100.0/24"]},
])


def test_direct_send_own_domain_is_newly_rejected():
    [v] = judge([{"relay_ip": "192.0.2.7", "p1_sender": "scanner@contoso.com", "recipients": ["a@contoso.com"], "logged_by_exo": True}], CFG, "direct-send-2025")
    assert (v["verdict_old"], v["verdict_new"], v["impact"], v["scenario"]) == ("accept", "reject", "newly_rejected", "direct_send_own_domain")
    assert v["rule_pack"] == "direct-send-2025"


def test_direct_send_connector_match_or_foreign_p1_is_unaffected():
    partner, foreign = judge([
        {"relay_ip": "198.51.100.9", "p1_sender": "scanner@contoso.com", "recipients": ["a@contoso.com"]},
        {"relay_ip": "192.0.2.7", "p1_sender": "news@fabrikam.com", "recipients": ["a@contoso.com"]},
    ], CFG, "direct-send-2025")
    assert partner["impact"] == "unaffected"  # any connector type counts here
    assert foreign["impact"] == "unaffected"  # P1 not accepted: not Direct Send spoofing


def test_direct_send_scope_needs_internal_recipient():
    [v] = judge([{"relay_ip": "192.0.2.7", "p1_sender": "scanner@contoso.com", "recipients": ["a@fabrikam.com"]}], CFG, "direct-send-2025")
    assert v["impact"] == "not_relayed"


def test_direct_send_pack_applies_without_onpremises_connector():
    # No OnPremises connector at all: the relay pack refuses, this one still runs.
    [v] = judge([{"relay_ip": "192.0.2.7", "p1_sender": "x@contoso.com", "recipients": ["a@contoso.com"]}], CFG, "direct-send-2025")
    assert v["impact"] == "newly_rejected"
