"""Small builders shared by tests: state cases as dicts, get verdict rows back."""

from __future__ import annotations

import pyarrow as pa

from pipeline.config import config_from_dict
from pipeline.ingest.base import make_messages
from pipeline.rules import evaluate_table
from pipeline.schema import MESSAGES

BASE_TENANT = {
    "accepted_domains": ["contoso.com"],
    "connectors": [{"name": "On-premises relay", "sender_ip_addresses": ["203.0.113.0/24"]}],
}


def tenant(**overrides) -> dict:
    data = {k: (list(v) if isinstance(v, list) else v) for k, v in BASE_TENANT.items()}
    data.update(overrides)
    return data


def messages(rows: list[dict]) -> pa.RecordBatch:
    """A messages batch from dicts of messages columns (missing keys are null)."""
    cols = {}
    for name in MESSAGES.names:
        if any(name in r for r in rows):
            values = [r.get(name) for r in rows]
            if name == "recipients":
                cols[name] = pa.array(values, pa.list_(pa.string()))
            elif name in ("is_ndr", "logged_by_exo", "incomplete"):
                cols[name] = pa.array(values, pa.bool_())
            else:
                cols[name] = pa.array(values, pa.string())
    return make_messages(cols, len(rows))


def judge(rows: list[dict], config: dict | None = None, pack: str | None = None) -> list[dict]:
    """Verdict rows (as dicts) for the given message rows under a tenant config dict."""
    cfg = config_from_dict(config or tenant())
    defaults = {"recipients": ["someone@fabrikam.com"]}
    full = [{**defaults, **r} for r in rows]
    return evaluate_table(messages(full), cfg, pack).to_pylist()
