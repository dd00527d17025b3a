"""summary.json (contract.md) and the short terminal summary, from the verdicts dataset.

Aggregates stream over the dataset batch by batch (group-by per batch, partial counts summed),
so memory does not grow with the number of messages.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ..schema import IMPACTS
from ..workdir import iter_batches, read_json, require_dataset

REJECTED_IMPACTS = ("newly_rejected", "already_rejected", "possibly_rejected")
SENDER_KEYS = ["p1_domain", "p2_domain", "third_party", "scenario", "remedy"]


def grouped_counts(files: list[Path], keys: list[str], where=None, extra: list[tuple] = ()) -> pa.Table:
    """Message counts per distinct `keys` over the dataset, optionally filtered by
    `where(batch) -> mask`; `extra` are further (column, aggregation) pairs such as
    ("ts", "min")."""
    cols = sorted(set(keys) | {c for c, _ in extra} | ({"impact"} if where else set()))
    partials = []
    for batch in iter_batches(files, columns=cols):
        t = pa.Table.from_batches([batch])
        if where is not None:
            t = t.filter(where(t))
        if t.num_rows == 0:
            continue
        t = t.select(cols)
        t = pa.table({c: t.column(c).cast(pa.string()) if pa.types.is_dictionary(t.column(c).type) else t.column(c) for c in cols})
        partials.append(t.group_by(keys, use_threads=False).aggregate([([], "count_all"), *extra]))
    if not partials:
        return pa.table({**{k: pa.array([], pa.string()) for k in keys}, "messages": pa.array([], pa.int64())})
    merged = pa.concat_tables(partials)
    reagg = [("count_all", "sum")] + [
        (f"{c}_{fn}", "min" if fn == "min" else "max" if fn == "max" else "sum") for c, fn in extra
    ]
    out = merged.group_by(keys, use_threads=False).aggregate(reagg)
    names = {"count_all_sum": "messages", **{f"{c}_{fn}_{'min' if fn == 'min' else 'max' if fn == 'max' else 'sum'}": f"{c}_{fn}" for c, fn in extra}}
    out = out.rename_columns([names.get(n, n) for n in out.column_names])
    return out.sort_by([("messages", "descending")] + [(k, "ascending") for k in keys])


def rejected_mask(table: pa.Table) -> pa.Array:
    return pc.is_in(table.column("impact").cast(pa.string()), value_set=pa.array(REJECTED_IMPACTS))


def build_summary(workdir: str | Path, top: int = 20) -> dict:
    """The summary.json document of contract.md, plus the ingest accounting."""
    workdir = Path(workdir)
    files = require_dataset(workdir, "verdicts", "run `relay-impact evaluate WORKDIR --config tenant.toml` first")
    by_impact = grouped_counts(files, ["impact"])
    by_scenario = grouped_counts(files, ["scenario"], where=rejected_mask)
    senders = grouped_counts(files, SENDER_KEYS, where=rejected_mask)
    ingest = read_json(workdir / "ingest.json")
    evaluation = read_json(workdir / "evaluate.json")
    impact = {k: 0 for k in IMPACTS}
    impact.update(dict(zip(by_impact.column("impact").to_pylist(), by_impact.column("messages").to_pylist(), strict=True)))
    totals = ingest.get("totals", {})
    return {
        "messages": int(sum(impact.values())),
        "rejected_lines": int(totals.get("rejected_lines", 0)),
        "rule_pack": evaluation.get("rule_pack"),
        "impact": impact,
        "scenario": {
            k: v
            for k, v in zip(by_scenario.column("scenario").to_pylist(), by_scenario.column("messages").to_pylist(), strict=True)
            if k
        },
        "top_affected_senders": senders.slice(0, top).to_pylist(),
        "lines": {
            "read": totals.get("lines", 0),
            "parsed": totals.get("parsed", 0),
            "skipped": totals.get("skipped", {}),
            "rejected": totals.get("rejected", {}),
        },
        "warnings": evaluation.get("warnings", {}),
    }


def terminal_summary(summary: dict) -> str:
    """A few lines for the terminal: the problems first."""
    imp = summary["impact"]
    lines = [
        f"{summary['messages']} messages analysed with {summary.get('rule_pack')}: "
        f"{imp.get('newly_rejected', 0)} newly rejected, {imp.get('possibly_rejected', 0)} possibly rejected, "
        f"{imp.get('already_rejected', 0)} already rejected, {imp.get('unknown', 0)} unknown, "
        f"{imp.get('unaffected', 0)} unaffected, {imp.get('not_relayed', 0)} not relayed",
    ]
    if summary["scenario"]:
        lines.append("by scenario: " + ", ".join(f"{k} {v}" for k, v in summary["scenario"].items()))
    lines_info = summary.get("lines", {})
    if lines_info.get("read"):
        lines.append(
            f"log lines: {lines_info['read']} read, {lines_info['parsed']} in messages, "
            f"{sum(lines_info['skipped'].values())} skipped, {summary['rejected_lines']} not parsed (see rejects/)"
        )
    for text, count in list(summary.get("warnings", {}).items())[:5]:
        lines.append(f"warning: {text} ({count} messages)")
    return "\n".join(lines)
