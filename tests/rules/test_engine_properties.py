"""Invariants on random inputs with nulls: the vectorized engine equals the per-message
reference implementation, and a new accept implies an old accept."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import config_from_dict
from tests.helpers import judge
from tests.rules.reference import Reference

TENANT = {
    "accepted_domains": [
        "contoso.com", "mail.contoso.com", {"name": "corp.contoso.com", "match_subdomains": True},
    ],
    "connectors": [
        {"name": "On-premises relay", "sender_ip_addresses": ["203.0.113.0/24"], "tls_sender_certificate_name": "mail.contoso.com"},
        {"name": "Partner", "type": "Partner", "sender_ip_addresses": ["198.51.100.0/24"]},
        {"name": "Off", "enabled": False, "sender_ip_addresses": ["192.0.2.0/24"]},
        {"name": "Cert wild", "tls_sender_certificate_name": "*.contoso.com"},
        {"name": "Cert exact", "tls_sender_certificate_name": "relay.contoso.com"},
    ],
    "hosts": [
        {"name": "exch01", "egress_ip": "203.0.113.10", "certificate": "mail.contoso.com"},
        {"name": "relay01", "egress_ip": "198.51.100.4"},
    ],
    "third_parties": [{"name": "Payroll", "domains": ["payroll-mailer.example", "sendgrid.net"]}],
}

ADDRESSES = [None, "<>", "root", "a@contoso.com", "b@sub.contoso.com", "c@corp.contoso.com",
             "d@x.corp.contoso.com", "e@fabrikam.com", "f@em1.sendgrid.net", "g@payroll-mailer.example",
             "H@CONTOSO.COM.", "i@mail.contoso.com", "j@bnc3.mailjet.com"]
message = st.fixed_dictionaries({
    "p1_sender": st.sampled_from(ADDRESSES),
    "p2_sender": st.sampled_from(ADDRESSES),
    "relay_ip": st.sampled_from([None, "203.0.113.25", "192.0.2.9", "198.51.100.4", "2001:db8::1", "garbage"]),
    "tls_cert": st.sampled_from([None, "mail.contoso.com", "x.fabrikam.com", "mail.contoso.com;relay.contoso.com",
                                 "*.contoso.com", "a.b.contoso.com", "server.corp.local;mail.contoso.com",
                                 "relay.contoso.com", "x.y.corp.contoso.com"]),
    "host": st.sampled_from([None, "exch01", "relay01", "ghost"]),
    "connector": st.sampled_from([None, None, None, "On-premises relay", "Partner", "Cert wild", "Cert exact", "Mystery", "Off"]),
    "relay_host": st.sampled_from([None, "contoso-com.mail.protection.outlook.com", "mx.fabrikam.com"]),
    "recipients": st.sampled_from([None, ["a@contoso.com"], ["a@fabrikam.com"], ["a@contoso.com", "b@fabrikam.com"],
                                   ["x@sub.corp.contoso.com"], ["root"]]),
    "logged_by_exo": st.sampled_from([None, True, False]),
})
switches = st.fixed_dictionaries({
    "cert_names": st.sampled_from(["cn+san", "cn"]),
    "cert_parent_domain": st.sampled_from(["unknown", "accept", "reject"]),
    "unknown_certificate": st.sampled_from(["none", "unknown"]),
})
FIELDS = ["p1_accepted", "p2_accepted", "cert_accepted", "connector_match", "verdict_old", "verdict_new",
          "impact", "scenario", "third_party"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(message, min_size=1, max_size=40), rules=switches,
       pack=st.sampled_from(["relay-2023", "direct-send-2025"]))
def test_engine_equals_reference(rows, rules, pack):
    tenant = {**TENANT, "rules": rules}
    ref = Reference(config_from_dict(tenant), pack)
    got = _judge_raw(rows, tenant, pack)
    for row, verdict in zip(rows, got, strict=True):
        expected = ref.judge(row)
        assert {k: verdict[k] for k in FIELDS} == expected, row


def _judge_raw(rows, tenant, pack):
    """Like tests.helpers.judge but without its default recipients (nulls must stay null)."""
    from pipeline.rules import evaluate_table
    from tests.helpers import messages

    return evaluate_table(messages(rows), config_from_dict(tenant), pack).to_pylist()


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(message, min_size=1, max_size=40), rules=switches)
def test_new_accept_implies_old_accept(rows, rules):
    for v in judge(rows, {**TENANT, "rules": rules}):
        if v["verdict_new"] == "accept":
            assert v["verdict_old"] == "accept"
        if v["impact"] == "newly_rejected":
            assert (v["verdict_old"], v["verdict_new"]) == ("accept", "reject")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(message, min_size=2, max_size=40), cuts=st.lists(st.integers(1, 39), max_size=4),
       rules=switches)
def test_batches_sharing_one_engine_equal_one_batch(rows, cuts, rules):
    """The engine keeps vocabularies and judged combos across batches (each with its own
    dictionaries, as Parquet row groups have): batch by batch must equal all at once, every
    verdict column and the warning counts included."""
    from pipeline.rules import evaluate_table
    from pipeline.rules.engine import Engine
    from tests.helpers import messages

    cfg = config_from_dict({**TENANT, "rules": rules})
    whole_engine = Engine(cfg)
    whole = whole_engine.evaluate_batch(messages(rows)).to_pylist()
    bounds = sorted({0, len(rows), *(c for c in cuts if c < len(rows))})
    engine = Engine(cfg)
    parts = [engine.evaluate_batch(messages(rows[a:b])) for a, b in zip(bounds, bounds[1:], strict=False)]
    split = [r for part in parts for r in part.to_pylist()]
    assert split == whole
    assert engine.warnings == whole_engine.warnings
    assert evaluate_table(messages(rows), cfg).to_pylist() == whole
