"""The scaling chart: message rate and peak RSS against folder size, as a small SVG. Pure.

Owns: drawing two side-by-side panels (left: messages per second, right: peak RSS in MB; x:
folder size on a log scale) with one line per copier. Written by hand (~100 lines of SVG text)
instead of with matplotlib: three points per line do not justify a 30 MB plotting dependency,
and the output is a small text file that diffs and renders on GitHub as it is.
Must not: run or judge anything.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

WIDTH, HEIGHT = 760, 350
PANEL_W, PANEL_H = 290, 220
LEFT, TOP, GAP = 70, 50, 90
COLOURS = {"daemon": "#1f77b4", "reference": "#ff7f0e", "daemon delta pass": "#2ca02c"}


@dataclass(frozen=True, slots=True)
class Series:
    """One copier's medians per folder size (None: no verified run)."""

    name: str
    rates: list[float | None] | None  # messages per second (None: not in the rate panel)
    rss: list[float | None]  # peak RSS, MB


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value``."""
    if value <= 0:
        return 1.0
    step = 10 ** math.floor(math.log10(value))
    for mult in (1, 2, 2.5, 5, 10):
        if value <= mult * step:
            return mult * step
    return 10 * step


def _panel(
    x0: float,
    title: str,
    unit: str,
    sizes: list[int],
    lines: list[tuple[str, list[float | None]]],
    limit: float | None = None,
) -> list[str]:
    values = [v for _, vs in lines for v in vs if v is not None] + ([limit] if limit else [])
    ymax = _nice_max(max(values) * 1.1 if values else 1.0)
    lo, hi = math.log10(min(sizes)), math.log10(max(sizes))
    span = hi - lo or 1.0

    def px(size: int) -> float:
        return x0 + (math.log10(size) - lo) / span * PANEL_W if hi > lo else x0 + PANEL_W / 2

    def py(value: float) -> float:
        return TOP + PANEL_H - value / ymax * PANEL_H

    out = [
        f'<text x="{x0 + PANEL_W / 2}" y="{TOP - 14}" text-anchor="middle" '
        f'font-weight="bold">{html.escape(title)}</text>',
        f'<rect x="{x0}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" fill="none" '
        'stroke="#999"/>',
    ]
    for i in range(5):
        value = ymax * i / 4
        y = py(value)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + PANEL_W}" y2="{y:.1f}" '
                   'stroke="#eee"/>')  # fmt: skip
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{value:,.0f}</text>')
    for size in sizes:
        x = px(size)
        out.append(f'<text x="{x:.1f}" y="{TOP + PANEL_H + 18}" text-anchor="middle">'
                   f"{size:,}</text>")  # fmt: skip
    out.append(f'<text x="{x0 + PANEL_W / 2}" y="{TOP + PANEL_H + 38}" text-anchor="middle">'
               "messages in the folder (log scale)</text>")  # fmt: skip
    ax, ay = x0 - 52, TOP + PANEL_H / 2
    out.append(f'<text x="{ax}" y="{ay}" text-anchor="middle" '
               f'transform="rotate(-90 {ax} {ay})">{html.escape(unit)}</text>')  # fmt: skip
    if limit is not None:
        y = py(limit)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + PANEL_W}" y2="{y:.1f}" '
                   'stroke="#d62728" stroke-dasharray="5,4"/>')  # fmt: skip
        out.append(f'<text x="{x0 + PANEL_W - 4}" y="{y - 5:.1f}" text-anchor="end" '
                   f'fill="#d62728">target {limit:,.0f}</text>')  # fmt: skip
    for name, vs in lines:
        colour = COLOURS.get(name, "#333")
        points = [(px(s), py(v)) for s, v in zip(sizes, vs, strict=True) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                       'stroke-width="2"/>')  # fmt: skip
        for (x, y), v in zip(points, [v for v in vs if v is not None], strict=True):
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"/>')
            out.append(f'<text x="{x:.1f}" y="{y - 8:.1f}" text-anchor="middle" '
                       f'fill="{colour}">{v:,.0f}</text>')  # fmt: skip
    return out


def scaling_chart(
    sizes: list[int], series: list[Series], title: str = "", rss_limit: float | None = None
) -> str:
    """The SVG text of the chart for ``sizes`` (ascending) and one ``Series`` per copier;
    ``rss_limit`` is drawn as a dashed line in the RSS panel."""
    body = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-size="13">'
        f"{html.escape(title or 'One folder of small messages: daemon and reference')}</text>",
    ]
    body += _panel(LEFT, "message rate", "messages / s", sizes,
                   [(s.name, s.rates) for s in series if s.rates is not None])  # fmt: skip
    body += _panel(LEFT + PANEL_W + GAP, "peak RSS", "MB", sizes,
                   [(s.name, s.rss) for s in series], rss_limit)  # fmt: skip
    legend_y = HEIGHT - 14
    for i, s in enumerate(series):
        x = LEFT + i * 170
        colour = COLOURS.get(s.name, "#333")
        body.append(f'<line x1="{x}" y1="{legend_y - 4}" x2="{x + 24}" y2="{legend_y - 4}" '
                    f'stroke="{colour}" stroke-width="2"/>')  # fmt: skip
        body.append(f'<text x="{x + 30}" y="{legend_y}">{html.escape(s.name)}</text>')
    body.append("</svg>")
    return "\n".join(body) + "\n"
