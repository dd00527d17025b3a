"""The relay-2023 pack against relay-rules.md: the worked examples and every switch."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from tests.helpers import judge, tenant

IP = "203.0.113.25"

# relay-rules.md, "Worked examples" (accepted contoso.com; connector 203.0.113.0/24; no cert).
WORKED = [
    (1, IP, "app@contoso.com", "app@contoso.com", "accept", "accept", "unaffected", ""),
    (2, IP, "<>", "postmaster@contoso.com", "accept", "reject", "newly_rejected", "ndr_null_sender"),
    (3, IP, "noreply@erp.corp.local", "alerts@contoso.com", "accept", "reject", "newly_rejected", "app_nonaccepted_p1"),
    (4, IP, "bounces+123@em42.sendgrid.net", "news@contoso.com", "accept", "reject", "newly_rejected", "third_party_service"),
    (5, IP, "a@fabrikam.com", "a@fabrikam.com", "reject", "reject", "already_rejected", "app_nonaccepted_p1"),
    (6, "192.0.2.9", "app@contoso.com", "app@contoso.com", "reject", "reject", "already_rejected", "no_connector_match"),
    (7, IP, "noreply@erp.corp.local", None, "unknown", "reject", "possibly_rejected", "app_nonaccepted_p1"),
    (8, IP, "<>", None, "unknown", "reject", "possibly_rejected", "ndr_null_sender"),
]


@pytest.mark.parametrize("row", WORKED, ids=[f"example-{r[0]}" for r in WORKED])
def test_worked_examples(row):
    _, ip, p1, p2, old, new, impact, scenario = row
    [v] = judge([{"relay_ip": ip, "p1_sender": p1, "p2_sender": p2}])
    assert (v["verdict_old"], v["verdict_new"], v["impact"], v["scenario"]) == (old, new, impact, scenario)


def test_worked_examples_with_accepted_certificate():
    """With mail.contoso.com presented and accepted, rows 2-5 and 7-8 become unaffected; 6 stays."""
    cfg = tenant(accepted_domains=["contoso.com", "mail.contoso.com"])
    rows = [{"relay_ip": r[1], "p1_sender": r[2], "p2_sender": r[3], "tls_cert": "mail.contoso.com"} for r in WORKED]
    impacts = [v["impact"] for v in judge(rows, cfg)]
    assert impacts == ["unaffected"] * 5 + ["already_rejected"] + ["unaffected"] * 2


def test_third_party_named_and_reason_explains():
    [v] = judge([{"relay_ip": IP, "p1_sender": "bounces+123@em42.sendgrid.net", "p2_sender": "news@contoso.com"}])
    assert v["third_party"] == "SendGrid (Twilio)"
    assert "the new rule ignores P2 contoso.com" in v["reason"]
    assert "no certificate recorded, assumed none" in v["reason"]
    assert "SendGrid" in v["remedy"]


def test_reason_for_null_sender():
    [v] = judge([{"relay_ip": IP, "p1_sender": "<>", "p2_sender": "postmaster@contoso.com"}])
    assert v["reason"].startswith("P1 is the null sender <>; the new rule ignores P2 contoso.com; no certificate recorded, assumed none")


def test_third_party_is_named_whatever_the_impact():
    # A third-party P1 not relayed at all still names the service.
    [v] = judge([{"relay_ip": IP, "p1_sender": "x@bnc3.mailjet.com", "relay_host": "mx.fabrikam.com"}])
    assert v["impact"] == "not_relayed"
    assert v["third_party"] == "Mailjet"


def test_user_third_party_wins_over_catalog():
    cfg = tenant(third_parties=[{"name": "Our SendGrid", "domains": ["sendgrid.net"], "remedy": "call Bob"}])
    [v] = judge([{"relay_ip": IP, "p1_sender": "b@em1.sendgrid.net"}], cfg)
    assert v["third_party"] == "Our SendGrid"
    assert v["scenario"] == "third_party_service"


def test_match_subdomains():
    cfg = tenant(accepted_domains=[{"name": "contoso.com", "match_subdomains": True}])
    rows = [{"relay_ip": IP, "p1_sender": "app@erp.eu.contoso.com"}, {"relay_ip": IP, "p1_sender": "app@notcontoso.com"}]
    a, b = judge(rows, cfg)
    assert a["p1_accepted"] is True and a["impact"] == "unaffected"
    assert b["p1_accepted"] is False
    # Without MatchSubDomains a subdomain is not accepted.
    [c] = judge([{"relay_ip": IP, "p1_sender": "app@erp.contoso.com"}])
    assert c["p1_accepted"] is False


def test_case_and_trailing_dots_in_domains():
    cfg = tenant(accepted_domains=["Contoso.COM."])
    [v] = judge([{"relay_ip": IP, "p1_sender": "App@CONTOSO.com."}], cfg)
    assert v["p1_accepted"] is True and v["impact"] == "unaffected"


def test_bare_local_user_has_no_domain():
    [v] = judge([{"relay_ip": IP, "p1_sender": "root", "p2_sender": "root@contoso.com"}])
    assert v["p1_accepted"] is False and v["impact"] == "newly_rejected" and v["scenario"] == "app_nonaccepted_p1"


def test_wildcard_connector_certificate_covers_every_depth():
    cfg = tenant(
        accepted_domains=["contoso.com", "a.b.contoso.com"],
        connectors=[{"name": "Cert relay", "tls_sender_certificate_name": "*.contoso.com"}],
    )
    rows = [
        {"relay_ip": "192.0.2.1", "tls_cert": "a.b.contoso.com", "p1_sender": "<>"},
        {"relay_ip": "192.0.2.1", "tls_cert": "contoso.com", "p1_sender": "<>"},
        {"relay_ip": "192.0.2.1", "tls_cert": "mail.fabrikam.com", "p1_sender": "<>"},
    ]
    deep, apex, other = judge(rows, cfg)
    assert deep["connector_match"] is True and deep["matched_connector"] == "Cert relay"
    assert deep["cert_accepted"] is True and deep["impact"] == "unaffected"
    assert apex["connector_match"] is True
    assert other["connector_match"] is False and other["scenario"] == "no_connector_match"


def test_cert_parent_domain_switch():
    rows = [{"relay_ip": IP, "tls_cert": "mail.contoso.com", "p1_sender": "<>", "p2_sender": "x@contoso.com"}]
    unknown = judge(rows, tenant())[0]
    assert unknown["cert_accepted"] is None and unknown["impact"] == "unknown"
    accept = judge(rows, tenant(rules={"cert_parent_domain": "accept"}))[0]
    assert accept["cert_accepted"] is True and accept["impact"] == "unaffected"
    reject = judge(rows, tenant(rules={"cert_parent_domain": "reject"}))[0]
    assert reject["cert_accepted"] is False and reject["impact"] == "newly_rejected"


def test_cert_names_cn_only():
    cfg = tenant(accepted_domains=["contoso.com", "relay.contoso.com"])
    rows = [{"relay_ip": IP, "tls_cert": "server01.corp.local;relay.contoso.com", "p1_sender": "<>"}]
    assert judge(rows, cfg)[0]["cert_accepted"] is True
    cfg_cn = tenant(accepted_domains=["contoso.com", "relay.contoso.com"], rules={"cert_names": "cn"})
    assert judge(rows, cfg_cn)[0]["cert_accepted"] is False


def test_unknown_certificate_switch():
    rows = [{"relay_ip": IP, "p1_sender": "<>", "p2_sender": "x@contoso.com"}]
    assert judge(rows)[0]["impact"] == "newly_rejected"
    v = judge(rows, tenant(rules={"unknown_certificate": "unknown"}))[0]
    assert v["cert_accepted"] is None and v["impact"] == "unknown"
    assert "certificate not recorded (unknown)" in v["reason"]


def test_disabled_and_partner_connectors_do_not_count():
    cfg = tenant(connectors=[
        {"name": "Partner", "type": "Partner", "sender_ip_addresses": ["203.0.113.0/24"]},
        {"name": "Off", "enabled": False, "sender_ip_addresses": ["203.0.113.0/24"]},
        {"name": "Real", "sender_ip_addresses": ["198.51.100.0/24"]},
    ])
    [v] = judge([{"relay_ip": IP, "p1_sender": "app@contoso.com"}], cfg)
    assert v["connector_match"] is False and v["impact"] == "already_rejected"


def test_ipv6_never_matches_and_garbage_ip_is_unknown():
    v6, bad = judge([
        {"relay_ip": "2001:db8::25", "p1_sender": "app@contoso.com"},
        {"relay_ip": "not-an-ip", "p1_sender": "app@contoso.com"},
    ])
    assert v6["connector_match"] is False
    assert bad["connector_match"] is None and bad["impact"] == "unknown"


def test_host_config_fills_ip_and_certificate():
    cfg = tenant(
        accepted_domains=["contoso.com", "mail.contoso.com"],
        hosts=[
            {"name": "exch01", "egress_ip": IP, "certificate": "mail.contoso.com"},
            {"name": "relay01", "egress_ip": IP},
        ],
    )
    exch, relay, stranger = judge([
        {"host": "EXCH01", "p1_sender": "<>"},
        {"host": "relay01", "p1_sender": "<>", "p2_sender": "postmaster@contoso.com"},
        {"host": "unknown-box", "p1_sender": "<>"},
    ], cfg)
    assert exch["connector_match"] is True and exch["cert_accepted"] is True and exch["impact"] == "unaffected"
    assert relay["cert_accepted"] is False and relay["impact"] == "newly_rejected"
    assert "host relay01 presents no certificate" in relay["reason"]
    assert stranger["connector_match"] is None  # no IP known for it


def test_log_certificate_wins_over_host_config():
    cfg = tenant(hosts=[{"name": "exch01", "egress_ip": IP, "certificate": "mail.contoso.com"}])
    [v] = judge([{"host": "exch01", "tls_cert": "other.fabrikam.com", "p1_sender": "<>"}], cfg)
    assert v["cert_accepted"] is False


def test_certificate_only_connector_named_by_the_log():
    cfg = tenant(
        accepted_domains=["contoso.com", "mail.contoso.com"],
        connectors=[
            {"name": "Cert exact", "tls_sender_certificate_name": "mail.contoso.com"},
            {"name": "Cert wild", "tls_sender_certificate_name": "*.contoso.com"},
        ],
    )
    exact, wild = judge([
        {"connector": "cert exact", "logged_by_exo": True, "p1_sender": "<>", "relay_ip": "192.0.2.50"},
        {"connector": "Cert wild", "logged_by_exo": True, "p1_sender": "<>", "relay_ip": "192.0.2.50"},
    ], cfg)
    assert exact["connector_match"] is True and exact["cert_accepted"] is True and exact["impact"] == "unaffected"
    assert wild["connector_match"] is True and wild["cert_accepted"] is None and wild["impact"] == "unknown"
    accept = judge([{"connector": "Cert wild", "logged_by_exo": True, "p1_sender": "<>"}],
                   {**cfg, "rules": {"cert_parent_domain": "accept"}})[0]
    assert accept["cert_accepted"] is True


def test_connector_named_in_log():
    cfg = tenant(connectors=[
        {"name": "On-premises relay", "sender_ip_addresses": ["203.0.113.0/24"]},
        {"name": "Partner in", "type": "Partner", "sender_ip_addresses": ["198.51.100.0/24"]},
    ])
    known, partner, stranger = judge([
        {"connector": "ON-PREMISES RELAY", "logged_by_exo": True, "p1_sender": "a@contoso.com"},
        {"connector": "Partner in", "logged_by_exo": True, "p1_sender": "a@contoso.com"},
        {"connector": "Mystery", "logged_by_exo": True, "p1_sender": "a@contoso.com"},
    ], cfg)
    assert known["connector_match"] is True and known["matched_connector"] == "ON-PREMISES RELAY"
    assert partner["connector_match"] is False and partner["impact"] == "not_relayed"
    assert stranger["connector_match"] is True


def test_scope_internal_external_and_unknown_recipients():
    internal, mixed, unknown = judge([
        {"relay_ip": IP, "p1_sender": "<>", "p2_sender": "mailer@contoso.com", "recipients": ["a@contoso.com", "b@CONTOSO.com"]},
        {"relay_ip": IP, "p1_sender": "<>", "p2_sender": "mailer@contoso.com", "recipients": ["a@contoso.com", "b@fabrikam.com"]},
        {"relay_ip": IP, "p1_sender": "<>", "p2_sender": "mailer@contoso.com", "recipients": None},
    ])
    assert internal["impact"] == "not_relayed"
    assert "all recipients are in accepted domains" in internal["reason"]
    assert mixed["impact"] == "newly_rejected"
    assert unknown["impact"] == "newly_rejected"


def test_next_hop_decides_relayed():
    cfg = tenant(relay={"targets": ["*.mail.protection.outlook.com", "smtp.contoso.example"]})
    exo, other, none, custom = judge([
        {"relay_ip": IP, "p1_sender": "<>", "p2_sender": "mailer@contoso.com", "relay_host": "contoso-com.mail.protection.outlook.com"},
        {"relay_ip": IP, "p1_sender": "<>", "p2_sender": "mailer@contoso.com", "relay_host": "mx.fabrikam.com"},
        {"relay_ip": IP, "p1_sender": "<>", "p2_sender": "mailer@contoso.com"},
        {"relay_ip": IP, "p1_sender": "<>", "p2_sender": "mailer@contoso.com", "relay_host": "SMTP.contoso.example."},
    ], cfg)
    assert exo["impact"] == "newly_rejected"
    assert other["impact"] == "not_relayed" and "mx.fabrikam.com" in other["reason"]
    assert none["impact"] == "newly_rejected"
    assert custom["impact"] == "newly_rejected"


def test_exchange_online_rows_without_connector_are_not_relayed():
    inbound, relayed = judge([
        {"relay_ip": "192.0.2.200", "logged_by_exo": True, "p1_sender": "x@fabrikam.com"},
        {"relay_ip": IP, "logged_by_exo": True, "p1_sender": "<>", "p2_sender": "mailer@contoso.com"},
    ])
    assert inbound["impact"] == "not_relayed"
    assert relayed["impact"] == "newly_rejected"


def test_relay_pack_needs_an_onpremises_connector():
    cfg = tenant(connectors=[{"name": "Partner", "type": "Partner", "sender_ip_addresses": ["198.51.100.0/24"]}])
    with pytest.raises(ConfigError, match="no enabled OnPremises inbound connector"):
        judge([{"relay_ip": IP, "p1_sender": "<>"}], cfg)


def test_exchange_online_row_without_client_ip_started_in_the_cloud():
    [v] = judge([{"logged_by_exo": True, "p1_sender": "carol@contoso.com"}])
    assert v["connector_match"] is False and v["impact"] == "not_relayed"


def test_reason_when_no_source_ip_is_known():
    [v] = judge([{"host": "ghost", "p1_sender": "a@contoso.com"}])
    assert v["impact"] == "unknown"
    assert "source IP not known (no relay IP in the log, host not in [[hosts]])" in v["reason"]


def test_a_new_pack_is_data_only(test_data):
    """A pack file of one's own runs on the same engine (relay-rules: packs are versioned data)."""
    pack = str(test_data / "packs" / "certificate-only.toml")
    cfg = tenant(accepted_domains=["contoso.com", "mail.contoso.com"])
    app, certified = judge([
        {"relay_ip": IP, "p1_sender": "app@contoso.com"},
        {"relay_ip": IP, "p1_sender": "app@contoso.com", "tls_cert": "mail.contoso.com"},
    ], cfg, pack)
    assert (app["verdict_old"], app["verdict_new"], app["impact"], app["scenario"]) == (
        "accept", "reject", "newly_rejected", "no_certificate")
    assert app["rule_pack"] == "certificate-only"
    assert certified["impact"] == "unaffected"


def test_pack_with_unknown_condition_is_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nold = "true"\nnew = "p3_accepted"\n')
    with pytest.raises(ConfigError, match="unknown condition 'p3_accepted'"):
        judge([{"relay_ip": IP, "p1_sender": "<>"}], tenant(), str(bad))
