"""Inline SVG charts for report.html: drawn here, no JavaScript, no library, no network.

Every label is mail data (domains, host names): it is HTML-escaped, quotes included, because an
SVG inside HTML is parsed as HTML.

    stacked_columns("Messages per day", ["2026-11-01"], {"newly_rejected": [3]}, colors, labels)
"""

from __future__ import annotations

from html import escape

WIDTH = 860
FONT = 12


def _e(value) -> str:
    return escape(str(value), quote=True)


def _nice_max(value: int) -> int:
    """A round axis maximum >= value (1, 2, 5 x 10^k)."""
    if value <= 0:
        return 1
    step = 1
    while True:
        for m in (1, 2, 5):
            if step * m >= value:
                return step * m
        step *= 10


def _svg(title: str, width: int, height: int, body: list[str]) -> str:
    return (
        f'<svg class="chart" role="img" aria-label="{_e(title)}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f"<title>{_e(title)}</title>{''.join(body)}</svg>"
    )


def _legend(series: list[str], colors: dict[str, str], labels: dict[str, str], y: int) -> list[str]:
    out, x = [], 60
    for name in series:
        out.append(f'<rect x="{x}" y="{y - 10}" width="12" height="12" fill="{_e(colors.get(name, "#777"))}"/>')
        out.append(f'<text x="{x + 16}" y="{y}" font-size="{FONT}">{_e(labels.get(name, name))}</text>')
        x += 24 + 7 * len(labels.get(name, name))
    return out


def stacked_columns(
    title: str, categories: list[str], series: dict[str, list[int]], colors: dict[str, str],
    labels: dict[str, str],
) -> str:
    """Vertical stacked bars, one per category (e.g. per day), one stack segment per series."""
    height, top, bottom, left = 300, 20, 60, 60
    plot_h = height - top - bottom
    n = max(len(categories), 1)
    slot = (WIDTH - left - 20) / n
    bar = max(2.0, min(40.0, slot * 0.7))
    totals = [sum(s[i] for s in series.values()) for i in range(len(categories))]
    ymax = _nice_max(max(totals, default=0))
    body = [f'<line x1="{left}" y1="{top + plot_h}" x2="{WIDTH - 10}" y2="{top + plot_h}" stroke="#555"/>']
    for frac in (0, 0.5, 1):
        y = top + plot_h - frac * plot_h
        body.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="{FONT}" text-anchor="end">{int(ymax * frac):,}</text>')
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{WIDTH - 10}" y2="{y:.1f}" stroke="#e0e0e0"/>')
    label_every = max(1, round(n / 12))
    for i, cat in enumerate(categories):
        x = left + i * slot + (slot - bar) / 2
        base = top + plot_h
        for name, values in series.items():
            v = values[i]
            if not v:
                continue
            h = v / ymax * plot_h
            base -= h
            body.append(
                f'<rect class="bar" x="{x:.1f}" y="{base:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{_e(colors.get(name, "#777"))}"><title>{_e(cat)}: {v:,} {_e(labels.get(name, name))}</title></rect>'
            )
        if i % label_every == 0:
            body.append(
                f'<text x="{x + bar / 2:.1f}" y="{top + plot_h + 16}" font-size="{FONT - 1}" '
                f'text-anchor="middle">{_e(cat[5:] if len(cat) == 10 else cat)}</text>'
            )
    body += _legend(list(series), colors, labels, height - 12)
    return _svg(title, WIDTH, height, body)


def horizontal_bars(
    title: str, labels: list[str], values: list[int], color: str = "#c62828",
    stacks: dict[str, list[int]] | None = None, colors: dict[str, str] | None = None,
    series_labels: dict[str, str] | None = None,
) -> str:
    """One horizontal bar per label (top senders, hosts, services, scenarios), longest first.
    With `stacks`, each bar is split by series (e.g. by impact) and a legend is drawn."""
    row, top, left = 24, 10, 300
    legend = 24 if stacks else 0
    height = top + row * max(len(labels), 1) + 10 + legend
    vmax = max(values, default=0) or 1
    plot_w = WIDTH - left - 70
    body = []
    if not labels:
        body.append(f'<text x="10" y="{top + 16}" font-size="{FONT}">nothing to show</text>')
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = top + i * row
        text = label if len(label) <= 44 else label[:43] + "…"
        body.append(
            f'<text x="{left - 8}" y="{y + 15}" font-size="{FONT}" text-anchor="end">{_e(text)}'
            f"<title>{_e(label)}</title></text>"
        )
        x = float(left)
        parts = [(name, s[i]) for name, s in stacks.items()] if stacks else [("", value)]
        for name, v in parts:
            if not v:
                continue
            w = v / vmax * plot_w
            fill = (colors or {}).get(name, color) if stacks else color
            body.append(
                f'<rect class="bar" x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="{_e(fill)}">'
                f"<title>{_e(label)}: {v:,}</title></rect>"
            )
            x += w
        body.append(f'<text x="{x + 6:.1f}" y="{y + 15}" font-size="{FONT}">{value:,}</text>')
    if stacks:
        body += _legend(list(stacks), colors or {}, series_labels or {}, height - 8)
    return _svg(title, WIDTH, height, body)
