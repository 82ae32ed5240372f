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
    return (
        f'<svg class="chart {css_class}" role="img" aria-label="{escape(label)}" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" xmlns="http://www.w3.org/2000/svg" {FONT}>'
        f"<title>{escape(label)}</title>{''.join(body)}</svg>"
    )


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
        x: float = label_width + i * 110
        body.append(
            f'<rect x="{x}" y="4" width="12" height="12" fill="{color}"/><text x="{x + 17}" y="14">{name}</text>'
        )
    for i, r in enumerate(rows):
        y = top + i * row
        body.append(f'<text x="{label_width - 8}" y="{y + 17}" text-anchor="end">{escape(r["stage"])}</text>')
        x = float(label_width)
        for key, color in (("kept", KEPT), ("dropped", DROPPED), ("quarantined", QUARANTINED)):
            w = r[key] / peak * span
            if r[key]:
                w = max(w, 2.0)
                body.append(
                    f'<rect x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="{row - 8}" fill="{color}">'
                    f"<title>{escape(r['stage'])} {key}: {number(r[key])}</title></rect>"
                )
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
        body.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{WIDTH - 10}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{short(peak * frac)}</text>'
        )
    for i, count in enumerate(counts):
        lo, hi = edges[i], edges[i + 1]
        h = count / peak * plot_h
        x = left + i * slot
        body.append(
            f'<rect x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{max(slot - 2, 1):.1f}" height="{h:.1f}" '
            f'fill="{BAR}"><title>{short(lo)}–{short(hi)}{unit}: {number(count)}</title></rect>'
        )
        body.append(
            f'<text x="{x + slot / 2:.1f}" y="{top + plot_h + 14}" text-anchor="middle" font-size="10">'
            f"{short(lo)}</text>"
        )
    body.append(
        f'<text x="{(left + WIDTH) / 2:.0f}" y="{height - 6}" text-anchor="middle" fill="#555">'
        f"{escape(unit.strip() or 'value')} (bin start; log-spaced bins)</text>"
    )
    return _svg(height, body, label, "histogram")


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


PALETTE = ("#3182ce", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#319795", "#b7791f", "#4a5568")
BREACH = "#c53030"


def lines(
    labels: list[str],
    series: list[dict],
    label: str,
    percent: bool = False,
    height: int = 160,
    titles: list[str] | None = None,
) -> str:
    """Values over runs: one line per series (``name``, ``values`` with None for a run without
    it, optional ``links`` and ``breaches`` per run), ``labels`` under the axis and ``titles``
    (default: the labels) in each point's tooltip. Each point is a link when it has one, and
    a breached point is drawn larger, in red, with class ``breach``."""
    titles = titles or labels
    left, right, top, bottom = 56, 150, 12, 30
    plot_w, plot_h = WIDTH - left - right, height - top - bottom
    values = [v for s in series for v in s["values"] if v is not None]
    peak = max(values, default=0.0) or 1.0
    n = max(len(labels), 1)
    step = plot_w / max(n - 1, 1)

    def x(i: int) -> float:
        return left + (i * step if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return top + plot_h - v / peak * plot_h

    def fmt(v: float) -> str:
        return f"{v:.1%}" if percent else number(round(v, 3))

    body = [f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>']
    for frac in (0.5, 1.0):
        body.append(
            f'<line x1="{left}" y1="{y(peak * frac):.1f}" x2="{left + plot_w}" y2="{y(peak * frac):.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{y(peak * frac) + 4:.1f}" text-anchor="end">'
            f"{f'{peak * frac:.0%}' if percent and peak * frac >= 0.1 else fmt(peak * frac) if percent else short(peak * frac)}</text>"
        )
    every = max(1, (n + 7) // 8)
    for i, text in enumerate(labels):
        if i % every == 0 or i == n - 1:
            body.append(
                f'<text x="{x(i):.1f}" y="{height - 10}" text-anchor="middle" font-size="10">{escape(text)}</text>'
            )
    for k, s in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        points = [(x(i), y(v)) for i, v in enumerate(s["values"]) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            body.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
        links = s.get("links") or [None] * len(labels)
        breaches = s.get("breaches") or [False] * len(labels)
        for i, v in enumerate(s["values"]):
            if v is None:
                continue
            hot = bool(breaches[i])
            dot = (
                f'<circle class="point{" breach" if hot else ""}" cx="{x(i):.1f}" cy="{y(v):.1f}" r="{5 if hot else 3}" '
                f'fill="{BREACH if hot else color}" data-series="{escape(s["name"])}" data-run="{escape(labels[i])}" '
                f'data-value="{v:.6g}"><title>{escape(s["name"])} · {escape(titles[i])}: {fmt(v)}'
                f"{' (drift)' if hot else ''}</title></circle>"
            )
            body.append(f'<a href="{escape(links[i])}">{dot}</a>' if links[i] else dot)
        legend_y = top + 12 + k * 15
        body.append(
            f'<rect x="{left + plot_w + 12}" y="{legend_y - 9}" width="10" height="10" fill="{color}"/>'
            f'<text x="{left + plot_w + 26}" y="{legend_y}">{escape(_clip(s["name"], 20))}</text>'
        )
    if not series:
        body.append(f'<text x="{left}" y="{top + 20}">nothing to show</text>')
    return _svg(height, body, label, "lines")
