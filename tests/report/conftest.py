"""A WORKDIR built the way a user builds one: tests/data/report/cases.csv (every impact and
scenario, third-party services, NDRs, hosts with no connector match, malicious values, rejected
lines) through ingest, evaluate and report."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from pipeline import evaluate, ingest, load_config, report
from pipeline.config import config_from_dict
from pipeline.rules import evaluate_table
from pipeline.schema import REJECTS, VERDICTS
from pipeline.workdir import DatasetWriter, write_json
from tests.helpers import messages

DATA = Path(__file__).resolve().parent.parent / "data" / "report"
CASES = DATA / "cases.csv"
TENANT = DATA / "tenant.toml"
# Attacker-controlled values that tests/data/report/cases.csv puts in senders, subjects,
# message ids and host names.
MALICIOUS = [
    "=cmd|'/c calc'!A1",
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    '"onmouseover=alert(1)//',
]


def build_workdir(workdir: Path, formats=None, since=None, until=None) -> dict:
    cfg = load_config(TENANT)
    ingest([str(CASES)], workdir, config=cfg, fmt="csv")
    evaluate(workdir, cfg)
    return report(workdir, formats, since=since, until=until)


@pytest.fixture(scope="session")
def cases_workdir(tmp_path_factory) -> Path:
    """WORKDIR with every report written for the whole period."""
    workdir = tmp_path_factory.mktemp("report") / "out"
    build_workdir(workdir)
    return workdir


def workdir_from_rows(workdir: Path, rows: list[dict], tenant: dict | None = None) -> Path:
    """A WORKDIR whose verdicts are the given message rows judged under `tenant` (for values a
    CSV cannot carry, such as line breaks inside a host name)."""
    cfg = config_from_dict(tenant or {
        "accepted_domains": ["contoso.com"],
        "connectors": [{"name": "On-premises relay", "sender_ip_addresses": ["203.0.113.0/24"]}],
    })
    rows = [{"recipients": ["someone@fabrikam.com"], **r} for r in rows]
    verdicts = evaluate_table(messages(rows), cfg)
    with DatasetWriter(workdir / "verdicts", VERDICTS) as out:
        out.write(verdicts)
    with DatasetWriter(workdir / "rejects", REJECTS) as out:
        out.write(pa.table({"source_line": pa.array([], pa.int64())}))
    write_json(workdir / "evaluate.json", {"rule_pack": "relay-2023", "warnings": {}})
    return workdir
