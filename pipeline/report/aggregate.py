"""Every table the reports show, from one streaming pass over the verdicts dataset.

Each batch is read with only the columns the tables need, filtered to the report's period, and
grouped per table with pyarrow (partial counts); partials are merged by a second group-by, so
memory grows with the number of distinct groups, never with the number of messages. The
reporters (html, md, csv, json, remediation) only format these tables.

    data = collect(Path("out"), parse_period("7d", None))
    data.tables["affected_senders"]   # p1_domain x p2_domain x host / IP, counts, first/last seen
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..schema import IMPACTS, VERDICTS
from ..workdir import dataset_files, iter_batches, read_json, require_dataset
from .period import Period

REJECTED_IMPACTS = ("newly_rejected", "possibly_rejected", "already_rejected")
# summary.json's top_affected_senders keys (contract.md), in their published order.
SENDER_KEYS = ["p1_domain", "p2_domain", "third_party", "scenario", "remedy"]
NULL_SENDER = "<>"
_SEP = "\x1f"  # joins example values inside partials; removed from the values themselves
_MERGE_EVERY = 16  # partial tables kept before they are folded together

_STRING_COLUMNS = (
    "impact", "scenario", "third_party", "remedy", "p1_domain", "p2_domain", "host", "relay_ip",
    "matched_connector", "tls_cert", "message_id",
)
_READ_COLUMNS = sorted(
    {*_STRING_COLUMNS, "ts", "null_sender", "connector_match", "p1_accepted", "p2_accepted", "source_ip"}
)


@dataclass(frozen=True)
class Grouping:
    """One report table: message counts per distinct `keys` among the rows `where` selects."""

    keys: tuple[str, ...]
    where: str | None = None
    by_impact: bool = False  # newly / possibly / already rejected counts
    seen: bool = False  # first_seen / last_seen
    examples: tuple[str, str, int] | None = None  # (column, output name, how many)
    any_of: tuple[str, ...] = ()  # string columns where one value (the greatest) is kept


GROUPINGS: dict[str, Grouping] = {
    "messages_by_day": Grouping(("day", "impact")),
    "scenarios": Grouping(("scenario", "impact"), where="rejected"),
    "affected_senders": Grouping(
        ("p1_domain", "null_sender", "p2_domain", "host", "source_ip", "scenario", "third_party", "remedy"),
        where="rejected", by_impact=True, seen=True,
        examples=("message_id", "example_message_ids", 3),
    ),
    "ndr_null_sender": Grouping(
        ("host", "source_ip", "p2_domain", "tls_cert", "matched_connector"),
        where="ndr", by_impact=True, seen=True,
        examples=("message_id", "example_message_ids", 3),
    ),
    "third_party_services": Grouping(
        ("third_party",), where="third_party", by_impact=True, seen=True,
        examples=("p1_domain", "p1_domains", 10), any_of=("remedy",),
    ),
    "no_connector_match": Grouping(
        ("host", "source_ip"), where="no_connector_match", by_impact=True, seen=True,
        examples=("p1_domain", "p1_domains", 5),
    ),
    "connectors": Grouping(("matched_connector",), where="matched"),
    "accepted_p1_domains": Grouping(("p1_domain",), where="p1_accepted"),
    "accepted_p2_domains": Grouping(("p2_domain",), where="p2_accepted"),
}


def _is(col, value) -> pa.Array:
    return pc.fill_null(pc.equal(col, value), False)


_WHERE = {
    "rejected": lambda t: t["rejected"],
    "ndr": lambda t: _is(t["scenario"], "ndr_null_sender"),
    "third_party": lambda t: pc.is_valid(t["third_party"]),
    "no_connector_match": lambda t: pc.and_(
        _is(t["connector_match"], False), pc.invert(_is(t["impact"], "not_relayed"))
    ),
    "matched": lambda t: pc.is_valid(t["matched_connector"]),
    "p1_accepted": lambda t: _is(t["p1_accepted"], True),
    "p2_accepted": lambda t: _is(t["p2_accepted"], True),
}


@dataclass
class ReportData:
    """What every reporter formats: the aggregated tables plus the WORKDIR's accounting."""

    workdir: Path
    period: Period
    tables: dict[str, pa.Table]
    ingest: dict
    evaluation: dict
    reject_examples: pa.Table
    messages_without_ts: int
    generated: datetime = field(default_factory=lambda: datetime.now(UTC))
    summary: dict = field(default_factory=dict)

    @property
    def impact(self) -> dict[str, int]:
        return self.summary["impact"]


def _prepare(batch: pa.RecordBatch) -> pa.Table:
    """Plain string keys (dictionaries differ between files), the day, and 0/1 impact columns."""
    cols = {}
    for name in _STRING_COLUMNS:
        col = batch.column(name)
        cols[name] = col.cast(pa.string()) if pa.types.is_dictionary(col.type) else col
    cols["message_id"] = pc.replace_substring(cols["message_id"], _SEP, " ")
    cols["p1_domain"] = pc.replace_substring(cols["p1_domain"], _SEP, " ")
    # The address the engine judged: the log's relay_ip, else the host's configured egress_ip.
    source_ip = batch.column("source_ip")
    cols["source_ip"] = source_ip.cast(pa.string()) if pa.types.is_dictionary(source_ip.type) else source_ip
    ts = batch.column("ts")
    cols["ts"] = ts
    cols["day"] = ts.cast(pa.date32())  # the UTC calendar day
    cols["null_sender"] = pc.fill_null(batch.column("null_sender"), False)
    for name in ("connector_match", "p1_accepted", "p2_accepted"):
        cols[name] = batch.column(name)
    impact = cols["impact"]
    cols["rejected"] = pc.is_in(impact, value_set=pa.array(REJECTED_IMPACTS))
    for name in REJECTED_IMPACTS:
        cols[name] = _is(impact, name).cast(pa.int64())
    return pa.table(cols)


def _run(table: pa.Table, keys: tuple[str, ...], aggs: list[tuple]) -> pa.Table:
    """group_by + aggregate, columns renamed from pyarrow's `col_fn` to the names given as
    each aggregation's last element: (column, function[, options], output name)."""
    spec = [a[:-1] for a in aggs]
    grouped = table.group_by(list(keys), use_threads=False).aggregate(spec)
    default = [("count_all" if not a[0] else f"{a[0]}_{a[1]}") for a in spec]
    rename = dict(zip(default, [a[-1] for a in aggs], strict=True))
    grouped = grouped.rename_columns([rename.get(n, n) for n in grouped.column_names])
    return grouped.select(list(keys) + [a[-1] for a in aggs])


def _partial(table: pa.Table, g: Grouping) -> pa.Table:
    """Counts per group of one batch, already in the final column names."""
    if g.where:
        table = table.filter(_WHERE[g.where](table))
    aggs: list[tuple] = [([], "count_all", "messages")]
    if g.by_impact:
        aggs += [(c, "sum", c) for c in REJECTED_IMPACTS]
    if g.seen:
        aggs += [("ts", "min", "first_seen"), ("ts", "max", "last_seen")]
    if g.examples:
        col, out, _n = g.examples
        aggs.append((col, "distinct", pc.CountOptions(mode="only_valid"), out))
    aggs += [(c, "max", c) for c in g.any_of]
    grouped = _run(table, g.keys, aggs)
    if g.examples:
        _col, out, n = g.examples
        joined = pc.binary_join(pc.list_slice(grouped[out], 0, n), _SEP)
        grouped = grouped.set_column(grouped.schema.get_field_index(out), out, joined)
    return grouped


def _merge(partials: list[pa.Table], g: Grouping) -> pa.Table:
    """Fold partial tables (same columns) into one: sums, min/max, and example values."""
    aggs: list[tuple] = [("messages", "sum", "messages")]
    if g.by_impact:
        aggs += [(c, "sum", c) for c in REJECTED_IMPACTS]
    if g.seen:
        aggs += [("first_seen", "min", "first_seen"), ("last_seen", "max", "last_seen")]
    if g.examples:
        aggs.append((g.examples[1], "list", g.examples[1]))
    aggs += [(c, "max", c) for c in g.any_of]
    out = _run(pa.concat_tables(partials), g.keys, aggs)
    if g.examples:
        _col, name, n = g.examples
        joined = pc.binary_join(out[name], _SEP)
        deduped = _first_distinct(pc.split_pattern(joined, _SEP), n)
        out = out.set_column(out.schema.get_field_index(name), name, pc.binary_join(deduped, _SEP))
    return out


def _first_distinct(lists: pa.ListArray | pa.ChunkedArray, n: int) -> pa.ListArray:
    """Per row, the first `n` distinct non-empty values of a list column (vectorized)."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    rows = len(lists)
    pairs = pa.table({"row": pc.list_parent_indices(lists), "value": pc.list_flatten(lists)})
    pairs = pairs.filter(pc.fill_null(pc.greater(pc.utf8_length(pairs["value"]), 0), False))
    pairs = pairs.group_by(["row", "value"], use_threads=False).aggregate([])
    pairs = pairs.take(pc.sort_indices(pairs, [("row", "ascending"), ("value", "ascending")]))
    row = pairs["row"].to_numpy()
    starts = np.searchsorted(row, row, side="left")
    keep = (np.arange(len(row)) - starts) < n
    row, values = row[keep], pairs["value"].filter(pa.array(keep))
    offsets = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(np.bincount(row, minlength=rows), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values.combine_chunks())


def _finish(table: pa.Table, g: Grouping) -> pa.Table:
    """Examples as lists, biggest groups first (then by key, so output is reproducible)."""
    if g.examples:
        name = g.examples[1]
        split = pc.split_pattern(table[name], _SEP)
        empty = pc.equal(pc.utf8_length(table[name]), 0)
        split = pc.if_else(empty, pa.scalar([], pa.list_(pa.string())), split)
        table = table.set_column(table.schema.get_field_index(name), name, split)
    order = [("messages", "descending")] + [(k, "ascending") for k in g.keys]
    return table.take(pc.sort_indices(table, order))


def _aggregate(files: list[Path], period: Period) -> tuple[dict[str, pa.Table], int]:
    partials: dict[str, list[pa.Table]] = {name: [] for name in GROUPINGS}
    without_ts = 0
    empty = _prepare(pa.RecordBatch.from_pylist([], schema=_read_schema()))
    for batch in iter_batches(files, columns=_READ_COLUMNS):
        if period.filtered:
            batch = batch.filter(period.mask(batch.column("ts")))
        if batch.num_rows == 0:
            continue
        without_ts += batch.column("ts").null_count
        table = _prepare(batch)
        for name, g in GROUPINGS.items():
            parts = partials[name]
            parts.append(_partial(table, g))
            if len(parts) >= _MERGE_EVERY:
                partials[name] = [_merge(parts, g)]
    tables = {}
    for name, g in GROUPINGS.items():
        parts = partials[name] or [_partial(empty, g)]
        tables[name] = _finish(_merge(parts, g), g)
    return tables, without_ts


def _read_schema() -> pa.Schema:
    return pa.schema([VERDICTS.field(c) for c in _READ_COLUMNS])


def reject_examples(workdir: Path, per_reason: int = 3) -> pa.Table:
    """A few rejected lines per reason, in file order, from WORKDIR/rejects."""
    columns = ["source_file", "source_line", "reason", "raw"]
    kept: pa.Table | None = None
    for batch in iter_batches(dataset_files(workdir / "rejects"), columns=columns):
        t = pa.table({c: batch.column(c).cast(pa.string()) if c != "source_line" else batch.column(c) for c in columns})
        kept = t if kept is None else pa.concat_tables([kept, t])
        kept = _first_per_group(kept, "reason", per_reason)
    if kept is None:
        return pa.table({"source_file": pa.array([], pa.string()), "source_line": pa.array([], pa.int64()),
                         "reason": pa.array([], pa.string()), "raw": pa.array([], pa.string())})
    return kept


def _first_per_group(table: pa.Table, key: str, n: int) -> pa.Table:
    """The first `n` rows of each `key` value, keeping the table's order within a group."""
    idx = pa.array(np.arange(table.num_rows))
    keyed = pa.table({"k": pc.fill_null(table[key], ""), "i": idx})
    order = pc.sort_indices(keyed, [("k", "ascending"), ("i", "ascending")])
    ks = keyed["k"].take(order).to_numpy(zero_copy_only=False)
    first = np.r_[True, ks[1:] != ks[:-1]] if len(ks) else np.array([], bool)
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(ks)), 0)) if len(ks) else first
    keep = (np.arange(len(ks)) - group_start) < n
    return table.take(order.filter(pa.array(keep)))


def collect(workdir: str | Path, period: Period | None = None, top: int = 20) -> ReportData:
    """Aggregate WORKDIR's verdicts (within `period`) and read its accounting."""
    workdir = Path(workdir)
    period = period or Period()
    files = require_dataset(workdir, "verdicts", "run `relay-impact evaluate WORKDIR --config tenant.toml` first")
    tables, without_ts = _aggregate(files, period)
    data = ReportData(
        workdir=workdir,
        period=period,
        tables=tables,
        ingest=read_json(workdir / "ingest.json"),
        evaluation=read_json(workdir / "evaluate.json"),
        reject_examples=reject_examples(workdir),
        messages_without_ts=without_ts,
    )
    data.summary = _summary(data, top)
    return data


def counts(table: pa.Table, key: str, value: str = "messages") -> dict:
    """{key value: summed count} of an aggregated table (small: one row per group)."""
    grouped = table.group_by(key, use_threads=False).aggregate([(value, "sum")])
    return dict(zip(grouped[key].to_pylist(), grouped[f"{value}_sum"].to_pylist(), strict=True))


def _summary(data: ReportData, top: int) -> dict:
    """summary.json (contract.md) plus the accounting, warnings and the period."""
    impact = {k: 0 for k in IMPACTS}
    impact.update({k: int(v) for k, v in counts(data.tables["messages_by_day"], "impact").items() if k})
    scenario_counts = counts(data.tables["scenarios"], "scenario")
    senders = data.tables["affected_senders"].group_by(SENDER_KEYS, use_threads=False).aggregate(
        [("messages", "sum")]
    ).rename_columns([*SENDER_KEYS, "messages"])
    senders = senders.take(pc.sort_indices(
        senders, [("messages", "descending")] + [(k, "ascending") for k in SENDER_KEYS]
    ))
    totals = data.ingest.get("totals", {})
    return {
        "messages": int(sum(impact.values())),
        "rejected_lines": int(totals.get("rejected_lines", 0)),
        "rule_pack": data.evaluation.get("rule_pack"),
        "impact": impact,
        "scenario": dict(sorted(((k, int(v)) for k, v in scenario_counts.items() if k), key=lambda kv: (-kv[1], kv[0]))),
        "top_affected_senders": senders.slice(0, top).to_pylist(),
        "lines": {
            "read": totals.get("lines", 0),
            "parsed": totals.get("parsed", 0),
            "skipped": totals.get("skipped", {}),
            "rejected": totals.get("rejected", {}),
        },
        "warnings": data.evaluation.get("warnings", {}),
        "period": {**data.period.as_json(), "messages_without_ts": data.messages_without_ts},
    }
