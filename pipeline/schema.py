"""The one definition of the tables relay-impact writes: `messages`, `verdicts`, `rejects`.

Low-cardinality strings (domains, IPs, hosts, connectors, status, formats) are dictionary-encoded:
mail logs repeat them massively, Parquet keeps the dictionaries, and the rule engine evaluates each
distinct value once and broadcasts the result back (see pipeline/rules/engine.py).

Multi-valued low-cardinality fields (`tls_cert`, `recipient_domains`) are stored as one
dictionary-encoded string joined with ";" rather than a list: a certificate's names, or the set of
recipient domains of a message, repeat as a whole, so they too are evaluated once per distinct value.
"""

from __future__ import annotations

import pyarrow as pa

DICT = pa.dictionary(pa.int32(), pa.string())
TS = pa.timestamp("us", tz="UTC")

# name, type, description: the description feeds README's table reference.
_MESSAGE_FIELDS: list[tuple[str, pa.DataType, str]] = [
    ("ts", TS, "when the message was received or relayed (UTC)"),
    ("source_format", DICT, "ingest format that read it (`formats` lists them)"),
    ("source_file", DICT, "log file it came from (`archive.zip:member` inside archives)"),
    ("source_line", pa.int64(), "first line of the file that contributed to the row (1-based)"),
    ("host", DICT, "on-premises host that wrote the log or relayed the message"),
    ("message_id", pa.string(), "Message-ID header, without angle brackets"),
    ("queue_id", pa.string(), "queue id / internal id of the source system"),
    ("p1_sender", pa.string(), "envelope sender (MAIL FROM); '' is the null sender <>; null = unknown"),
    ("p2_sender", pa.string(), "header sender (From:, or Exchange's Sender:/From: value); null = unknown"),
    ("null_sender", pa.bool_(), "p1_sender is the null sender <> (null when P1 is unknown)"),
    ("p1_domain", DICT, "domain of p1_sender, lower-cased, trailing dot removed; null for <> or no @"),
    ("p2_domain", DICT, "domain of p2_sender, normalised like p1_domain"),
    ("client_ip", DICT, "address that submitted the message to the host"),
    ("relay_ip", DICT, "address Exchange Online saw (where the log has it)"),
    ("tls_cert", DICT, "certificate names presented to Exchange Online, ';'-joined, subject CN first"),
    ("connector", DICT, "Exchange Online inbound connector the log names (message trace only)"),
    ("relay_host", DICT, "next hop the host relayed to (e.g. contoso-com.mail.protection.outlook.com)"),
    ("recipients", pa.list_(pa.string()), "envelope recipients"),
    ("recipient_domains", DICT, "distinct recipient domains, sorted, ';'-joined"),
    ("recipient_count", pa.int32(), "number of recipients"),
    ("status", DICT, "delivery status in the source's words (sent, bounced, Delivered, ...)"),
    ("response", pa.string(), "last SMTP reply for the message (e.g. 550 5.7.64 TenantAttribution ...)"),
    ("is_ndr", pa.bool_(), "the message is a non-delivery/delivery status notification"),
    ("size", pa.int64(), "message size in bytes"),
    ("subject", pa.string(), "Subject header where the log has it"),
    ("logged_by_exo", pa.bool_(), "the row comes from an Exchange Online log (message trace)"),
    ("incomplete", pa.bool_(), "correlation ended before all of the message's lines were seen"),
]

MESSAGES = pa.schema([pa.field(n, t, metadata={"doc": d}) for n, t, d in _MESSAGE_FIELDS])

_VERDICT_FIELDS: list[tuple[str, pa.DataType, str]] = [
    ("rule_pack", DICT, "rule pack that produced the verdicts (relay-2023, direct-send-2025, ...)"),
    ("p1_accepted", pa.bool_(), "P1 domain is an accepted domain (null: unknown)"),
    ("p2_accepted", pa.bool_(), "P2 domain is an accepted domain (null: unknown)"),
    ("cert_accepted", pa.bool_(), "a certificate name is an accepted domain (null: unknown)"),
    ("connector_match", pa.bool_(), "source IP or certificate matches a counted inbound connector"),
    ("matched_connector", DICT, "first connector that matched"),
    ("source_ip", DICT, "address judged for connector_match: relay_ip, else the host's egress_ip"),
    ("verdict_old", DICT, "accept | reject | unknown under the pack's old rule"),
    ("verdict_new", DICT, "accept | reject | unknown under the pack's new rule"),
    ("impact", DICT, "not_relayed | unaffected | newly_rejected | already_rejected | possibly_rejected | unknown"),
    ("scenario", DICT, "why a rejected message is rejected (empty otherwise)"),
    ("third_party", DICT, "sending service the P1 domain belongs to"),
    ("reason", DICT, "one-line explanation of the verdict"),
    ("remedy", DICT, "what to change, from the pack's scenario and the service catalog"),
]

VERDICTS = pa.schema(
    list(MESSAGES) + [pa.field(n, t, metadata={"doc": d}) for n, t, d in _VERDICT_FIELDS]
)

REJECTS = pa.schema(
    [
        pa.field("source_format", DICT),
        pa.field("source_file", DICT),
        pa.field("source_line", pa.int64()),
        pa.field("reason", DICT),
        pa.field("raw", pa.string()),
    ]
)

IMPACTS = (
    "not_relayed",
    "unaffected",
    "newly_rejected",
    "already_rejected",
    "possibly_rejected",
    "unknown",
)
VERDICT_VALUES = ("accept", "reject", "unknown")


def empty_column(name: str, length: int, schema: pa.Schema = MESSAGES) -> pa.Array:
    """A column of nulls of the schema's type for `name`."""
    return pa.nulls(length, type=schema.field(name).type)


def conform(table_or_batch: pa.Table | pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    """Reorder, add missing (null) columns and cast to `schema`; extra columns are dropped."""
    n = table_or_batch.num_rows
    cols = []
    for field in schema:
        if field.name in table_or_batch.column_names:
            col = table_or_batch.column(field.name)
            if col.type != field.type:
                col = col.cast(field.type)
            cols.append(col)
        else:
            cols.append(pa.nulls(n, type=field.type))
    return pa.Table.from_arrays(cols, schema=schema)
