"""The aggregated tables: values, and the same result however the dataset is batched."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow.compute as pc

from pipeline.report import aggregate
from pipeline.report.aggregate import collect
from pipeline.report.period import Period
from pipeline.workdir import iter_batches


def _row(table, **where):
    mask = None
    for k, v in where.items():
        m = pc.fill_null(pc.equal(table[k], v), False)
        mask = m if mask is None else pc.and_(mask, m)
    rows = table.filter(mask).to_pylist()
    assert len(rows) == 1, rows
    return rows[0]


def test_affected_senders(cases_workdir):
    senders = collect(cases_workdir).tables["affected_senders"]
    erp = _row(senders, p1_domain="erp.corp.local", host="sm01", p2_domain="contoso.com")
    assert erp["source_ip"] == "203.0.113.27"  # the host's egress_ip, named in the verdict's reason
    assert (erp["messages"], erp["newly_rejected"], erp["scenario"]) == (5, 5, "app_nonaccepted_p1")
    assert erp["first_seen"] == datetime(2026, 11, 1, 11, tzinfo=UTC)
    assert erp["last_seen"] == datetime(2026, 11, 5, 11, tzinfo=UTC)
    assert erp["example_message_ids"] == ["erp-1@erp.corp.local", "erp-2@erp.corp.local", "erp-3@erp.corp.local"]
    ndr = _row(senders, null_sender=True, host="relay01", p2_domain="contoso.com")
    assert ndr["p1_domain"] is None and ndr["messages"] == 4
    # unaffected and not_relayed messages are not affected senders
    relay01_contoso = pc.and_(pc.equal(senders["p1_domain"], "contoso.com"), pc.equal(senders["host"], "relay01"))
    assert not senders.filter(pc.fill_null(relay01_contoso, False)).num_rows


def test_ndr_services_and_unmatched_hosts(cases_workdir):
    t = collect(cases_workdir).tables
    ndr = _row(t["ndr_null_sender"], host="sm01")
    assert (ndr["messages"], ndr["matched_connector"], ndr["example_message_ids"]) == (
        1, "On-premises relay", ["oof-1@sm01.contoso.com"])
    services = {r["third_party"]: r for r in t["third_party_services"].to_pylist()}
    assert services["SendGrid (Twilio)"]["p1_domains"] == ["em42.sendgrid.net"]
    assert services["Contoso Payroll (SaaS)"]["remedy"].startswith("Ask the payroll provider")
    iis = _row(t["no_connector_match"], host="iis01")
    assert (iis["source_ip"], iis["messages"], iis["already_rejected"], iis["p1_domains"]) == (
        "192.0.2.45", 3, 3, ["contoso.com"])


def test_rejected_line_examples(cases_workdir):
    examples = collect(cases_workdir).reject_examples.to_pylist()
    assert {e["source_line"] for e in examples} == {42, 43, 44}
    assert any(e["raw"].endswith("<script>alert(1)</script>") for e in examples)


def test_same_tables_when_streamed_in_tiny_batches(cases_workdir, monkeypatch):
    whole = collect(cases_workdir)

    def tiny(files, columns=None, batch_size=0):
        return iter_batches(files, columns=columns, batch_size=3)

    monkeypatch.setattr(aggregate, "iter_batches", tiny)
    monkeypatch.setattr(aggregate, "_MERGE_EVERY", 2)  # fold partials often
    streamed = collect(cases_workdir)
    for name, table in whole.tables.items():
        assert streamed.tables[name].equals(table), name
    assert streamed.summary == whole.summary
    assert streamed.reject_examples.num_rows == 3


def test_period_filters_rows_and_keeps_rows_without_time(cases_workdir):
    day4 = Period(datetime(2026, 11, 4, tzinfo=UTC), datetime(2026, 11, 5, tzinfo=UTC))
    data = collect(cases_workdir, day4)
    # 10 messages on 2026-11-04, plus the one whose log has no time
    assert data.summary["messages"] == 11
    assert data.messages_without_ts == 1
    days = data.tables["messages_by_day"]["day"].to_pylist()
    assert {d.isoformat() if d else None for d in days} == {"2026-11-04", None}
