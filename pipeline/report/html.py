"""report.html: one self-contained page an admin can mail to a manager and open offline.

Inline CSS, charts as inline SVG (charts.py), no script, no font, no image, no link: a
Content-Security-Policy of default-src 'none' makes the browser refuse any request even if
something slipped through. Every value from the logs is HTML-escaped (quotes included).
"""

from __future__ import annotations

from html import escape
from pathlib import Path

import pyarrow as pa

from ..workdir import atomic_write_text
from . import charts
from .aggregate import ReportData
from .present import (
    IMPACT_COLORS,
    IMPACT_LABELS,
    SCENARIO_LABELS,
    TOP_ROWS,
    cell,
    daily_series,
    headline,
    ingest_files,
    period_note,
    remedies,
    scenario_series,
    sections,
    title_of,
    top_bars,
    warnings_table,
)

NAME = "html"
FILE = "report.html"
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:0 auto;max-width:1100px;
padding:16px 24px;color:#212121;background:#fff;font-size:14px}
h1{font-size:24px;margin:8px 0}h2{font-size:18px;margin:28px 0 6px;border-bottom:2px solid #eee;padding-bottom:4px}
p.meta{color:#555;margin:2px 0}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}
.card{flex:1 1 140px;border:1px solid #ddd;border-radius:6px;padding:10px 12px;border-top:6px solid #90a4ae}
.card .n{font-size:26px;font-weight:700}.card .l{color:#555}
.card.newly_rejected{border-top-color:#c62828}.card.possibly_rejected{border-top-color:#ef6c00}
.card.already_rejected{border-top-color:#6d4c41}.card.unknown{border-top-color:#9e9e9e}
.card.rejected_lines{border-top-color:#5c6bc0}
figure{margin:12px 0}figcaption{font-weight:600;margin-bottom:4px}
svg.chart{max-width:100%;height:auto;font-family:inherit}
table{border-collapse:collapse;width:100%;margin:6px 0;font-size:12px}
th,td{border:1px solid #ddd;padding:3px 5px;text-align:left;vertical-align:top}
td{overflow-wrap:anywhere}.scroll{overflow-x:auto}
th{background:#f5f5f5}td.num{text-align:right;white-space:nowrap}
tr:nth-child(even) td{background:#fafafa}
.note{color:#555;font-size:13px}.warn{background:#fff8e1;border-left:4px solid #ffb300;padding:6px 10px}
code{font-family:Consolas,"DejaVu Sans Mono",monospace;font-size:12px;word-break:break-all}
"""


def _e(value) -> str:
    return escape(str(value), quote=True)


def _table(table: pa.Table, csv_name: str | None, limit: int = TOP_ROWS, code: tuple[str, ...] = ()) -> str:
    """An HTML table of the first `limit` rows, saying where the full table is."""
    if table.num_rows == 0:
        return '<p class="note">none</p>'
    head = "".join(f"<th>{_e(title_of(c))}</th>" for c in table.column_names)
    rows = []
    for record in table.slice(0, limit).to_pylist():
        cells = []
        for name, value in record.items():
            text = _e(cell(value))
            if name in code and value is not None:
                text = f"<code>{text}</code>"
            cls = ' class="num"' if isinstance(value, int) and not isinstance(value, bool) else ""
            cells.append(f"<td{cls}>{text}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    more = ""
    if table.num_rows > limit and csv_name:
        more = f'<p class="note">Showing {limit} of {table.num_rows:,} rows; the full table is in {_e(csv_name)}.</p>'
    elif csv_name:
        more = f'<p class="note">Also in {_e(csv_name)}.</p>'
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody>'
            f"</table></div>{more}")


def _headline(data: ReportData) -> str:
    cards = "".join(
        f'<div class="card {_e(key)}"><div class="n">{value:,}</div><div class="l">{_e(label)}</div></div>'
        for key, label, value in headline(data)
    )
    return f'<section id="headline"><div class="cards">{cards}</div></section>'


def _charts(data: ReportData) -> str:
    days, per_day = daily_series(data)
    scen, per_scen = scenario_series(data)
    bars = top_bars(data)
    scen_totals = [sum(v[i] for v in per_scen.values()) for i in range(len(scen))]
    figures = [
        ("chart-days", "Messages per day by impact",
         charts.stacked_columns("Messages per day by impact", days, per_day, IMPACT_COLORS, IMPACT_LABELS)),
        ("chart-scenarios", "Rejected messages by scenario",
         charts.horizontal_bars("Rejected messages by scenario", scen, scen_totals, stacks=per_scen,
                                colors=IMPACT_COLORS, series_labels=IMPACT_LABELS)),
        ("chart-senders", "Top affected senders (P1 domain, rejected messages)",
         charts.horizontal_bars("Top affected senders", *bars["senders"])),
        ("chart-hosts", "Top affected hosts (rejected messages)",
         charts.horizontal_bars("Top affected hosts", *bars["hosts"], color="#ef6c00")),
        ("chart-services", "Top affected third-party services (rejected messages)",
         charts.horizontal_bars("Top affected services", *bars["services"], color="#6d4c41")),
    ]
    out = ['<section id="charts"><h2>Charts</h2>']
    if data.messages_without_ts:
        out.append(f'<p class="note">{data.messages_without_ts:,} message(s) without a time in their log '
                   "are not in the per-day chart.</p>")
    for fid, caption, svg in figures:
        out.append(f'<figure id="{fid}"><figcaption>{_e(caption)}</figcaption>{svg}</figure>')
    out.append("</section>")
    return "".join(out)


def _remedies(data: ReportData) -> str:
    table = remedies(data)
    intro = ("What to change, per scenario and service. remediation.ps1 has the Exchange Online "
             "PowerShell for it, to review and run yourself; relay-impact never runs it.")
    items = "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in SCENARIO_LABELS.items()
                    if k in data.summary["scenario"])
    return (f'<section id="remedies"><h2>What to change</h2><p>{_e(intro)}</p><ul>{items}</ul>'
            f"{_table(table, 'remedies.csv')}</section>")


def _ingest(data: ReportData) -> str:
    lines = data.summary["lines"]
    skipped = "; ".join(f"{k} {v:,}" for k, v in lines["skipped"].items()) or "none"
    rejected = "; ".join(f"{k} {v:,}" for k, v in lines["rejected"].items()) or "none"
    return (
        '<section id="ingest"><h2>Ingest accounting</h2>'
        f"<p>{lines['read']:,} lines read, {lines['parsed']:,} in messages, "
        f"{sum(lines['skipped'].values()):,} skipped ({_e(skipped)}), "
        f"{data.summary['rejected_lines']:,} not parsed ({_e(rejected)}).</p>"
        f"{_table(ingest_files(data), 'ingest_files.csv')}"
        "<h3>Examples of lines not parsed</h3>"
        f"{_table(data.reject_examples, 'rejected_line_examples.csv', code=('raw',))}</section>"
    )


def _warnings(data: ReportData) -> str:
    table = warnings_table(data)
    if table.num_rows == 0:
        return '<section id="warnings"><h2>Warnings</h2><p class="note">none</p></section>'
    return f'<section id="warnings"><h2>Warnings</h2><div class="warn">{_table(table, "warnings.csv")}</div></section>'


def render(data: ReportData) -> str:
    pack = data.summary.get("rule_pack") or "unknown"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>relay-impact report</title>",
        f"<style>{CSS}</style></head><body>",
        "<header><h1>Exchange Online relay impact</h1>",
        f'<p class="meta">Rule pack {_e(pack)}; {_e(period_note(data))}.</p>',
        f'<p class="meta">Generated {data.generated:%Y-%m-%d %H:%M} UTC by relay-impact.</p></header>',
        _headline(data),
        _charts(data),
        _remedies(data),
    ]
    for section in sections(data):
        parts.append(
            f'<section id="{_e(section.key)}"><h2>{_e(section.title)}</h2><p>{_e(section.intro)}</p>'
            f"{_table(section.table, section.csv_name)}</section>"
        )
    parts += [_ingest(data), _warnings(data), "</body></html>"]
    return "\n".join(parts)


def write(data: ReportData, outdir: Path) -> list[Path]:
    path = outdir / FILE
    atomic_write_text(path, render(data))
    return [path]
