"""What the HTML and Markdown reports show, in which order, with which words.

Both reports render the same `Section`s from `ReportData`: the headline numbers, the chart
series and the tables (full tables here; the reports show the first rows, the CSV has them all).
Values stay raw (attacker-controlled mail data): each reporter escapes them for its own output.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from ..schema import IMPACTS
from .aggregate import NULL_SENDER, REJECTED_IMPACTS, ReportData

TOP_ROWS = 25  # rows of a table shown in report.html / report.md; the CSV has them all
TOP_BARS = 10

IMPACT_LABELS = {
    "newly_rejected": "newly rejected",
    "possibly_rejected": "possibly rejected",
    "already_rejected": "already rejected",
    "unknown": "unknown",
    "unaffected": "unaffected",
    "not_relayed": "not relayed",
}
# Problems first: the order of the headline, the legend and the stacks.
IMPACT_ORDER = ("newly_rejected", "possibly_rejected", "already_rejected", "unknown", "unaffected", "not_relayed")
IMPACT_COLORS = {
    "newly_rejected": "#c62828",
    "possibly_rejected": "#ef6c00",
    "already_rejected": "#6d4c41",
    "unknown": "#9e9e9e",
    "unaffected": "#2e7d32",
    "not_relayed": "#cfd8dc",
}
SCENARIO_LABELS = {
    "no_connector_match": "no connector match: the source IP or certificate matches no OnPremises connector",
    "ndr_null_sender": "NDR / null sender <>: bounces, DSNs, out-of-office replies",
    "third_party_service": "third-party service: the P1 domain belongs to a sending service",
    "app_nonaccepted_p1": "application with a non-accepted P1 (MAIL FROM) domain",
    "direct_send_own_domain": "Direct Send with an accepted P1 domain and no connector",
    "other": "rejected for another reason (see the reason column of verdicts/)",
}
COLUMN_TITLES = {
    "p1_domain": "P1 domain (MAIL FROM)",
    "p2_domain": "P2 domain (From:)",
    "host": "host",
    "source_ip": "IP seen by Exchange Online",
    "scenario": "scenario",
    "third_party": "service",
    "messages": "messages",
    "newly_rejected": "newly rejected",
    "possibly_rejected": "possibly rejected",
    "already_rejected": "already rejected",
    "first_seen": "first seen (UTC)",
    "last_seen": "last seen (UTC)",
    "example_message_ids": "example message ids",
    "tls_cert": "certificate presented",
    "matched_connector": "connector matched",
    "p1_domains": "P1 domains",
    "remedy": "what to change",
    "day": "day (UTC)",
    "file": "file",
    "format": "format",
    "lines": "lines read",
    "parsed": "in messages",
    "skipped": "skipped",
    "rejected": "not parsed",
    "skipped_by_reason": "skipped by reason",
    "rejected_by_reason": "not parsed by reason",
    "source_file": "file",
    "source_line": "line",
    "reason": "reason",
    "raw": "line as read",
    "warning": "warning",
}


@dataclass(frozen=True)
class Section:
    key: str  # also the CSV file stem
    title: str
    intro: str
    table: pa.Table  # display columns, full

    @property
    def csv_name(self) -> str:
        return f"{self.key}.csv"


def _p1_display(table: pa.Table) -> pa.Array:
    """'<>' for the null sender, '(unknown)' when the log has no P1 domain."""
    unknown = pc.fill_null(table["p1_domain"], "(unknown)")
    return pc.if_else(table["null_sender"], pa.scalar(NULL_SENDER), unknown)


def _impact_columns(table: pa.Table) -> list[str]:
    return [c for c in REJECTED_IMPACTS if c in table.column_names]


def sections(data: ReportData) -> list[Section]:
    """The report's tables, problems first."""
    t = data.tables
    senders = t["affected_senders"]
    senders = senders.set_column(senders.schema.get_field_index("p1_domain"), "p1_domain", _p1_display(senders))
    out = [
        Section(
            "affected_senders", "Affected senders",
            "Rejected messages by P1 domain x P2 domain x host / IP. Under the new rule only P1 "
            "(or the certificate) can be an accepted domain; P2 no longer suffices.",
            senders.select(["p1_domain", "p2_domain", "host", "source_ip", "scenario", "third_party", "messages",
                            *_impact_columns(senders), "first_seen", "last_seen", "example_message_ids"]),
        ),
        Section(
            "ndr_null_sender", "NDR / null-sender cases",
            "Bounces, DSNs and automatic replies (P1 <>) relayed to the internet: they have no P1 domain, "
            "so only a certificate whose name is an accepted domain lets them through.",
            t["ndr_null_sender"].select(["host", "source_ip", "p2_domain", "tls_cert", "matched_connector",
                                         "messages", *REJECTED_IMPACTS, "first_seen", "last_seen",
                                         "example_message_ids"]),
        ),
        Section(
            "third_party_services", "Third-party services",
            "Sending services whose P1 domain is theirs, not yours (all their messages; the impact "
            "columns count the rejected ones).",
            t["third_party_services"].select(["third_party", "p1_domains", "messages", *REJECTED_IMPACTS,
                                              "first_seen", "last_seen", "remedy"]),
        ),
        Section(
            "no_connector_match", "Hosts with no connector match",
            "Relayed messages whose source IP (or certificate) matches no enabled OnPremises inbound "
            "connector: rejected under the old and the new rules alike.",
            t["no_connector_match"].select(["host", "source_ip", "messages", *REJECTED_IMPACTS,
                                            "first_seen", "last_seen", "p1_domains"]),
        ),
    ]
    return out


def remedies(data: ReportData) -> pa.Table:
    """Rejected messages per scenario and remedy (what to change), biggest first."""
    senders = data.tables["affected_senders"]
    grouped = senders.group_by(["scenario", "third_party", "remedy"], use_threads=False).aggregate(
        [("messages", "sum")]
    ).rename_columns(["scenario", "third_party", "remedy", "messages"])
    grouped = grouped.select(["scenario", "third_party", "messages", "remedy"])
    return grouped.take(pc.sort_indices(grouped, [("messages", "descending"), ("scenario", "ascending"), ("third_party", "ascending")]))


def headline(data: ReportData) -> list[tuple[str, str, int]]:
    """(css key, label, number): the figures a manager reads first."""
    imp = data.summary["impact"]
    return [
        ("messages", "messages analysed", data.summary["messages"]),
        ("newly_rejected", "newly rejected", imp.get("newly_rejected", 0)),
        ("possibly_rejected", "possibly rejected", imp.get("possibly_rejected", 0)),
        ("already_rejected", "already rejected", imp.get("already_rejected", 0)),
        ("unknown", "unknown", imp.get("unknown", 0)),
        ("rejected_lines", "lines not parsed", data.summary["rejected_lines"]),
    ]


def daily_series(data: ReportData) -> tuple[list[str], dict[str, list[int]]]:
    """Days (ISO) and, per impact, the messages of each day; rows without a day are left out."""
    table = data.tables["messages_by_day"].filter(pc.is_valid(data.tables["messages_by_day"]["day"]))
    frame = table.to_pandas()
    if frame.empty:
        return [], {}
    wide = frame.pivot_table(index="day", columns="impact", values="messages", aggfunc="sum", fill_value=0)
    wide = wide.sort_index()
    days = [d.isoformat() for d in wide.index]
    return days, {i: [int(v) for v in wide[i]] for i in IMPACT_ORDER if i in wide.columns}


def wide_by_day(data: ReportData) -> pa.Table:
    """messages_by_day as one row per day and one column per impact (the CSV's shape)."""
    frame = data.tables["messages_by_day"].to_pandas()
    if frame.empty:
        return pa.table({"day": pa.array([], pa.date32()), **{i: pa.array([], pa.int64()) for i in IMPACTS}})
    frame["day"] = frame["day"].astype(object).where(frame["day"].notna(), None)
    wide = frame.pivot_table(index="day", columns="impact", values="messages", aggfunc="sum", fill_value=0, dropna=False)
    wide = wide.reindex(columns=list(IMPACTS), fill_value=0).reset_index()
    wide.columns.name = None
    return pa.Table.from_pandas(wide, preserve_index=False)


def scenario_series(data: ReportData) -> tuple[list[str], dict[str, list[int]]]:
    frame = data.tables["scenarios"].to_pandas()
    if frame.empty:
        return [], {}
    wide = frame.pivot_table(index="scenario", columns="impact", values="messages", aggfunc="sum", fill_value=0)
    wide = wide.loc[wide.sum(axis=1).sort_values(ascending=False).index]
    return list(wide.index), {i: [int(v) for v in wide[i]] for i in IMPACT_ORDER if i in wide.columns}


def wide_scenarios(data: ReportData) -> pa.Table:
    frame = data.tables["scenarios"].to_pandas()
    if frame.empty:
        return pa.table({"scenario": pa.array([], pa.string()), "messages": pa.array([], pa.int64()),
                         **{i: pa.array([], pa.int64()) for i in REJECTED_IMPACTS}})
    wide = frame.pivot_table(index="scenario", columns="impact", values="messages", aggfunc="sum", fill_value=0)
    wide = wide.reindex(columns=list(REJECTED_IMPACTS), fill_value=0)
    wide.insert(0, "messages", wide.sum(axis=1))
    wide = wide.sort_values("messages", ascending=False).reset_index()
    wide.columns.name = None
    return pa.Table.from_pandas(wide, preserve_index=False)


def top_bars(data: ReportData, n: int = TOP_BARS) -> dict[str, tuple[list[str], list[int]]]:
    """Top affected senders (P1 domain), hosts and services by rejected messages."""
    senders = data.tables["affected_senders"]
    senders = senders.append_column("p1", _p1_display(senders))
    host = pc.coalesce(senders["host"], senders["source_ip"], pa.scalar("(unknown)"))
    senders = senders.append_column("host_or_ip", host)
    services = data.tables["third_party_services"]
    rejected = pc.add(pc.add(services["newly_rejected"], services["possibly_rejected"]), services["already_rejected"])
    services = pa.table({"third_party": services["third_party"], "messages": rejected}).filter(pc.greater(rejected, 0))
    out = {}
    for title, table, key in (
        ("senders", senders, "p1"), ("hosts", senders, "host_or_ip"), ("services", services, "third_party"),
    ):
        grouped = table.group_by(key, use_threads=False).aggregate([("messages", "sum")])
        grouped = grouped.take(pc.sort_indices(grouped, [("messages_sum", "descending"), (key, "ascending")]))
        grouped = grouped.slice(0, n)
        out[title] = (grouped[key].to_pylist(), grouped["messages_sum"].to_pylist())
    return out


def ingest_files(data: ReportData) -> pa.Table:
    """The line accounting of each input file (from ingest.json)."""
    files = data.ingest.get("files", {})
    names = list(files)
    rows = [files[n] for n in names]

    def by_reason(key: str) -> list[str]:
        return ["; ".join(f"{k} {v}" for k, v in (r.get(key) or {}).items()) for r in rows]

    return pa.table({
        "file": pa.array(names, pa.string()),
        "format": pa.array([r.get("format") for r in rows], pa.string()),
        "lines": pa.array([r.get("lines", 0) for r in rows], pa.int64()),
        "parsed": pa.array([r.get("parsed", 0) for r in rows], pa.int64()),
        "skipped": pa.array([sum((r.get("skipped") or {}).values()) for r in rows], pa.int64()),
        "rejected": pa.array([sum((r.get("rejected") or {}).values()) for r in rows], pa.int64()),
        "skipped_by_reason": pa.array(by_reason("skipped"), pa.string()),
        "rejected_by_reason": pa.array(by_reason("rejected"), pa.string()),
    })


def warnings_table(data: ReportData) -> pa.Table:
    warn = data.summary.get("warnings", {})
    return pa.table({"warning": pa.array(list(warn), pa.string()),
                     "messages": pa.array(list(warn.values()), pa.int64())})


def period_note(data: ReportData) -> str:
    note = data.period.describe()
    if data.period.filtered and data.messages_without_ts:
        note += (f"; {data.messages_without_ts} message(s) without a time in their log are included "
                 "(a period filter cannot place them)")
    elif data.messages_without_ts:
        note += f"; {data.messages_without_ts} message(s) have no time in their log"
    return note


def cell(value) -> str:
    """A value as plain text (the caller escapes it for its output)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "—"
    return str(value)


def title_of(column: str) -> str:
    return COLUMN_TITLES.get(column, column.replace("_", " "))
