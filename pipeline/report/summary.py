"""summary.json (contract.md) and the short terminal summary.

The numbers come from aggregate.collect: one streaming pass over the verdicts dataset, grouped
per batch and merged, so memory does not grow with the number of messages.
"""

from __future__ import annotations

from pathlib import Path

from .aggregate import REJECTED_IMPACTS, SENDER_KEYS, collect
from .period import parse_period

__all__ = ["REJECTED_IMPACTS", "SENDER_KEYS", "build_summary", "counted", "terminal_summary"]


def counted(n: int, noun: str) -> str:
    """'1 message', '2 messages'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def build_summary(workdir: str | Path, top: int = 20, since: str | None = None, until: str | None = None) -> dict:
    """The summary.json document of contract.md, plus the ingest accounting, the warnings and
    the period."""
    return collect(workdir, parse_period(since, until), top=top).summary


def terminal_summary(summary: dict) -> str:
    """A few lines for the terminal: the problems first."""
    imp = summary["impact"]
    lines = [
        f"{summary['messages']} messages analysed with {summary.get('rule_pack')}: "
        f"{imp.get('newly_rejected', 0)} newly rejected, {imp.get('possibly_rejected', 0)} possibly rejected, "
        f"{imp.get('already_rejected', 0)} already rejected, {imp.get('unknown', 0)} unknown, "
        f"{imp.get('unaffected', 0)} unaffected, {imp.get('not_relayed', 0)} not relayed",
    ]
    period = summary.get("period") or {}
    if period.get("since") or period.get("until"):
        lines.append(
            f"period: since {period.get('since') or 'the start'} until {period.get('until') or 'now'}"
            + (f"; {period['messages_without_ts']} messages without a time kept" if period.get("messages_without_ts") else "")
        )
    if summary["scenario"]:
        lines.append("by scenario: " + ", ".join(f"{k} {v}" for k, v in summary["scenario"].items()))
    lines_info = summary.get("lines", {})
    if lines_info.get("read"):
        lines.append(
            f"log lines: {lines_info['read']} read, {lines_info['parsed']} in messages, "
            f"{sum(lines_info['skipped'].values())} skipped, {summary['rejected_lines']} not parsed (see rejects/)"
        )
    for text, count in list(summary.get("warnings", {}).items())[:5]:
        lines.append(f"warning: {text} ({counted(count, 'message')})")
    return "\n".join(lines)
