"""Small charts as inline SVG, rendered on the server: no JavaScript, no CDN, no chart library.

Each function returns safe markup for a template. Every label passes through ``escape``.
"""

from __future__ import annotations

from collections.abc import Callable

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

PALETTE = ("#417690", "#e0a526", "#ba2121", "#6a9f3a", "#7a5195", "#777777")
LABEL_W = 150
VALUE_W = 80
BAR_H = 14
GAP = 6


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def fmt_count(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f}%"


def _svg(width: int, height: int, title: str, body: list[str]) -> SafeString:
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" aria-label="{escape(title)}" '
            f'style="font: 11px sans-serif; max-width: 100%;"><title>{escape(title)}</title>')
    return mark_safe(head + "".join(body) + "</svg>")  # noqa: S308 - every label is escaped above


def bar_chart(
    *,
    title: str,
    rows: list[tuple[str, list[float | None]]],
    series: list[str],
    fmt: Callable[[float | None], str] = fmt_count,
    width: int = 560,
) -> SafeString:
    """Horizontal bars: one group per row, one bar per series (e.g. p50 and p90 per risk)."""
    if not rows:
        return _svg(width, 24, title, ['<text x="0" y="16" fill="#777">no data in this window</text>'])
    top = 22 if len(series) > 1 else 4
    group_h = len(series) * (BAR_H + 2) + GAP
    height = top + len(rows) * group_h + 4
    plot_w = width - LABEL_W - VALUE_W
    peak = max((v for _, values in rows for v in values if v is not None), default=0.0) or 1.0
    body: list[str] = []
    if len(series) > 1:
        x = LABEL_W
        for i, name in enumerate(series):
            color = PALETTE[i % len(PALETTE)]
            body.append(f'<rect x="{x}" y="4" width="10" height="10" fill="{color}"/>'
                        f'<text x="{x + 14}" y="13">{escape(name)}</text>')
            x += 24 + 7 * len(name)
    for r, (label, values) in enumerate(rows):
        y = top + r * group_h
        body.append(f'<text x="{LABEL_W - 6}" y="{y + (len(series) * (BAR_H + 2)) / 2 + 4:.1f}" '
                    f'text-anchor="end">{escape(label)}</text>')
        for i, value in enumerate(values):
            by = y + i * (BAR_H + 2)
            w = 0.0 if not value else max(1.0, plot_w * value / peak)
            color = PALETTE[i % len(PALETTE)]
            name = series[i] if i < len(series) else ""
            body.append(f'<rect x="{LABEL_W}" y="{by}" width="{w:.1f}" height="{BAR_H}" fill="{color}">'
                        f'<title>{escape(label)} {escape(name)}: {escape(fmt(value))}</title></rect>'
                        f'<text x="{LABEL_W + w + 4:.1f}" y="{by + BAR_H - 3}">{escape(fmt(value))}</text>')
    return _svg(width, height, title, body)


def stacked_bar(*, title: str, parts: list[tuple[str, float]], width: int = 560) -> SafeString:
    """One 100% bar split into parts (e.g. approved / denied / expired), with a legend."""
    total = sum(v for _, v in parts)
    if total <= 0:
        return _svg(width, 24, title, ['<text x="0" y="16" fill="#777">no data in this window</text>'])
    body: list[str] = []
    x = 0.0
    for i, (label, value) in enumerate(parts):
        w = width * value / total
        color = PALETTE[i % len(PALETTE)]
        share = f"{value / total * 100:.0f}%"
        body.append(f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="22" fill="{color}">'
                    f'<title>{escape(label)}: {value:.0f} ({share})</title></rect>')
        lx = i * (width / max(1, len(parts)))
        body.append(f'<rect x="{lx:.1f}" y="30" width="10" height="10" fill="{color}"/>'
                    f'<text x="{lx + 14:.1f}" y="39">{escape(label)} {value:.0f} ({share})</text>')
        x += w
    return _svg(width, 46, title, body)
