"""Small inline SVG charts for the HTML report: no library, no request leaves the page."""

from __future__ import annotations

import html
import math
from typing import Any

COLORS = {"torch": "#d8482b", "tensorflow": "#e08a00", "flax": "#3466c2", "mxnet": "#2e8540"}


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def line_chart(series: dict[str, list[float | None]], xlabels: list[str], ylabel: str, log: bool,
               hline: float | None = None, title: str = "") -> str:
    width, height, left, right, top, bottom = 900, 320, 70, 130, 28, 78
    values = [v for vs in series.values() for v in vs if v is not None and (v > 0 or not log)]
    if hline is not None:
        values.append(hline)
    if not values or not xlabels:
        return "<p class=\"muted\">nothing to chart</p>"
    f = (lambda v: math.log10(max(v, 1e-30))) if log else (lambda v: v)
    lo, hi = min(map(f, values)), max(map(f, values))
    if log:
        lo, hi = math.floor(lo), math.ceil(hi)
    if hi - lo < 1e-12:
        lo, hi = lo - 1, hi + 1
    pw, ph = width - left - right, height - top - bottom

    def x(i: int) -> float:
        return left + (pw * i / (len(xlabels) - 1) if len(xlabels) > 1 else pw / 2)

    def y(v: float) -> float:
        return top + ph * (1 - (f(v) - lo) / (hi - lo))

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#bbb"/>']
    ticks = range(int(lo), int(hi) + 1) if log else [lo + (hi - lo) * k / 4 for k in range(5)]
    for t in ticks:
        ty = top + ph * (1 - (t - lo) / (hi - lo))
        label = f"1e{t}" if log else f"{t:.3g}"
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#eee"/>'
                     f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end">{label}</text>')
    step = max(1, len(xlabels) // 24)
    for i in range(0, len(xlabels), step):
        parts.append(f'<text transform="translate({x(i):.1f},{top + ph + 12}) rotate(50)">{escape(xlabels[i])}</text>')
    if hline is not None:
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(hline):.1f}" y2="{y(hline):.1f}" stroke="#777" '
                     f'stroke-dasharray="5,4"/><text x="{left + pw + 6}" y="{y(hline) + 4:.1f}">tolerance</text>')
    for k, (name, vs) in enumerate(series.items()):
        color = COLORS.get(name, "#555")
        points = [(x(i), y(v)) for i, v in enumerate(vs) if v is not None and (v > 0 or not log)]
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        parts += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{color}"/>' for px, py in points]
        parts.append(f'<rect x="{left + pw + 10}" y="{top + 8 + 18 * k}" width="12" height="12" fill="{color}"/>'
                     f'<text x="{left + pw + 28}" y="{top + 18 + 18 * k}">{escape(name)}</text>')
    parts.append(f'<text transform="translate(16,{top + ph / 2}) rotate(-90)" text-anchor="middle">{escape(ylabel)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(rows: list[tuple[str, str, float]], unit: str, title: str) -> str:
    """Horizontal bars: (backend, label, value)."""
    rows = [r for r in rows if r[2] > 0]
    if not rows:
        return "<p class=\"muted\">no timings to chart</p>"
    width, left, bar = 900, 190, 20
    height = 20 + len(rows) * (bar + 8)
    top_value = max(v for _, _, v in rows)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">']
    for k, (backend, label, value) in enumerate(rows):
        ty = 10 + k * (bar + 8)
        w = (width - left - 150) * value / top_value
        parts.append(f'<text x="{left - 8}" y="{ty + 15}" text-anchor="end">{escape(backend)} {escape(label)}</text>'
                     f'<rect x="{left}" y="{ty}" width="{w:.1f}" height="{bar}" fill="{COLORS.get(backend, "#555")}"/>'
                     f'<text x="{left + w + 6:.1f}" y="{ty + 15}">{value:.1f} {unit}</text>')
    parts.append("</svg>")
    return "".join(parts)
