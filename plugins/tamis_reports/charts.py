"""Server-rendered SVG charts: no script and nothing fetched, so the pages work offline.

Each function returns one ``<svg>`` element sized for a laptop screen (640 px wide),
with a ``<title>`` per bar so a hover shows the exact figure.
"""

from __future__ import annotations

from html import escape

WIDTH = 640
KEPT, DROPPED, QUARANTINED, BAR = "#2f855a", "#dd6b20", "#c53030", "#3182ce"
FONT = 'font-family="system-ui, sans-serif" font-size="12"'


def number(value: float) -> str:
    """1234567 -> '1,234,567'; 0.25 -> '0.25'."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def short(value: float) -> str:
    """Axis labels: 1500 -> '1.5k', 2000000 -> '2M'."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:g}{suffix}"
    return f"{value:g}"


def _svg(height: int, body: list[str], label: str, css_class: str) -> str:
    return (f'<svg class="chart {css_class}" role="img" aria-label="{escape(label)}" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" xmlns="http://www.w3.org/2000/svg" {FONT}>'
            f"<title>{escape(label)}</title>{''.join(body)}</svg>")


def hbars(items: list[tuple[str, float]], label: str, color: str = BAR, label_width: int = 170) -> str:
    """Horizontal bars, one per (name, value), longest first as given."""
    row, top = 22, 6
    height = top * 2 + row * max(len(items), 1)
    peak = max((v for _, v in items), default=0) or 1
    span = WIDTH - label_width - 80
    body = []
    for i, (name, value) in enumerate(items):
        y = top + i * row
        w = max(value / peak * span, 1 if value else 0)
        body.append(
            f'<text x="{label_width - 8}" y="{y + 15}" text-anchor="end">{escape(_clip(name, label_width // 7))}</text>'
            f'<rect x="{label_width}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="{color}">'
            f"<title>{escape(name)}: {number(value)}</title></rect>"
            f'<text x="{label_width + w + 6:.1f}" y="{y + 15}">{number(value)}</text>'
        )
    if not items:
        body.append(f'<text x="{label_width}" y="{top + 15}">nothing to show</text>')
    return _svg(height, body, label, "hbars")


def funnel(rows: list[dict], label: str = "documents per stage") -> str:
    """One stacked bar per stage: kept, dropped and quarantined, scaled to the largest input."""
    row, top, label_width = 30, 26, 110
    height = top + row * max(len(rows), 1) + 8
    peak = max((r["in"] for r in rows), default=0) or 1
    span = WIDTH - label_width - 90
    body = []
    for i, (name, color) in enumerate((("kept", KEPT), ("dropped", DROPPED), ("quarantined", QUARANTINED))):
        x = label_width + i * 110
        body.append(f'<rect x="{x}" y="4" width="12" height="12" fill="{color}"/><text x="{x + 17}" y="14">{name}</text>')
    for i, r in enumerate(rows):
        y = top + i * row
        body.append(f'<text x="{label_width - 8}" y="{y + 17}" text-anchor="end">{escape(r["stage"])}</text>')
        x = float(label_width)
        for key, color in (("kept", KEPT), ("dropped", DROPPED), ("quarantined", QUARANTINED)):
            w = r[key] / peak * span
            if r[key]:
                w = max(w, 2.0)
                body.append(f'<rect x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="{row - 8}" fill="{color}">'
                            f'<title>{escape(r["stage"])} {key}: {number(r[key])}</title></rect>')
            x += w
        body.append(f'<text x="{x + 6:.1f}" y="{y + 17}">{number(r["in"])} in</text>')
    return _svg(height, body, label, "funnel")


def histogram(edges: list[float], counts: list[int], label: str, unit: str = "") -> str:
    """Vertical bars over the given bin edges, with the bin ranges under them."""
    left, bottom, top = 52, 40, 14
    height = 230
    plot_h = height - bottom - top
    n = max(len(counts), 1)
    slot = (WIDTH - left - 10) / n
    peak = max(counts, default=0) or 1
    body = [f'<line x1="{left}" y1="{top + plot_h}" x2="{WIDTH - 10}" y2="{top + plot_h}" stroke="#999"/>']
    for frac in (0.5, 1.0):
        y = top + plot_h - frac * plot_h
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{WIDTH - 10}" y2="{y:.1f}" stroke="#eee"/>'
                    f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{short(peak * frac)}</text>')
    for i, count in enumerate(counts):
        lo, hi = edges[i], edges[i + 1]
        h = count / peak * plot_h
        x = left + i * slot
        body.append(f'<rect x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{max(slot - 2, 1):.1f}" height="{h:.1f}" '
                    f'fill="{BAR}"><title>{short(lo)}–{short(hi)}{unit}: {number(count)}</title></rect>')
        body.append(f'<text x="{x + slot / 2:.1f}" y="{top + plot_h + 14}" text-anchor="middle" font-size="10">'
                    f"{short(lo)}</text>")
    body.append(f'<text x="{(left + WIDTH) / 2:.0f}" y="{height - 6}" text-anchor="middle" fill="#555">'
                f"{escape(unit.strip() or 'value')} (bin start; log-spaced bins)</text>")
    return _svg(height, body, label, "histogram")


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"
