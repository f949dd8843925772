"""Small interval plots drawn as inline SVG for the portal's remote-analysis results.

The portal's content-security policy allows no inline script or style, so the plot is
plain SVG with presentation attributes, built from the aggregate result only (no
subject data ever reaches a page). Labels are escaped by :mod:`markupsafe`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape

__all__ = ["Interval", "interval_plot", "result_intervals"]

Z_95 = 1.959963984540054
ROW, LEFT, WIDTH, PAD = 26, 170, 360, 12


@dataclass(frozen=True)
class Interval:
    """One row of the plot: an estimate and its 95% interval."""

    label: str
    estimate: float
    low: float
    high: float
    pooled: bool = False


def result_intervals(result: Mapping[str, Any]) -> tuple[str, list[Interval]]:
    """The plot's title and rows for a remote result (mixed model or meta-analysis)."""
    if "pooled" in result:
        rows = [
            Interval(site, s["g"], s["g"] - Z_95 * math.sqrt(s["vi"]),
                     s["g"] + Z_95 * math.sqrt(s["vi"]))
            for site, s in result.get("sites", {}).items()
        ]  # fmt: skip
        pooled = result["pooled"]
        rows.append(Interval("pooled", pooled["estimate"], *pooled["ci"], pooled=True))
        return "Effect size by site (Hedges' g, 95% CI) and pooled", rows
    rows = [
        Interval(c["term"], c["estimate"], c["estimate"] - Z_95 * c["se"],
                 c["estimate"] + Z_95 * c["se"])
        for c in result.get("coefficients", []) if c["term"] != "Intercept"
    ]  # fmt: skip
    return "Fixed effects (estimate, 95% CI)", rows


def _scale(rows: Sequence[Interval]):
    lo = min(0.0, *(r.low for r in rows))
    hi = max(0.0, *(r.high for r in rows))
    span = (hi - lo) or 1.0

    def x(value: float) -> float:
        return LEFT + PAD + (value - lo) / span * (WIDTH - 2 * PAD)

    return x, lo, hi


def interval_plot(title: str, rows: Sequence[Interval]) -> Markup:
    """An accessible SVG dot-and-whisker plot (empty markup when there is nothing to draw)."""
    rows = [r for r in rows if all(map(math.isfinite, (r.estimate, r.low, r.high)))]
    if not rows:
        return Markup("")
    x, lo, hi = _scale(rows)
    height = ROW * len(rows) + 40
    parts = [
        f'<svg role="img" aria-label="{escape(title)}" width="{LEFT + WIDTH + 80}" '
        f'height="{height}" viewBox="0 0 {LEFT + WIDTH + 80} {height}">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{x(0):.1f}" y1="8" x2="{x(0):.1f}" y2="{height - 28}" stroke="#888" '
        'stroke-dasharray="4 3"/>',
    ]
    for i, row in enumerate(rows):
        y = 20 + i * ROW
        colour = "#1f3a5f" if row.pooled else "#333"
        mark = (f'<rect x="{x(row.estimate) - 6:.1f}" y="{y - 6}" width="12" height="12" '
                f'fill="{colour}"/>' if row.pooled else
                f'<circle cx="{x(row.estimate):.1f}" cy="{y}" r="5" fill="{colour}"/>')
        parts += [
            f'<text x="{LEFT - 6}" y="{y + 4}" text-anchor="end" font-size="13">'
            f"{escape(row.label)}</text>",
            f'<line x1="{x(row.low):.1f}" y1="{y}" x2="{x(row.high):.1f}" y2="{y}" '
            f'stroke="{colour}" stroke-width="2"/>',
            mark,
            f'<text x="{LEFT + WIDTH + 4}" y="{y + 4}" font-size="12">{row.estimate:.3f}</text>',
        ]
    axis_y = height - 14
    parts += [
        f'<text x="{x(lo):.1f}" y="{axis_y}" font-size="11" text-anchor="middle">{lo:.2f}</text>',
        f'<text x="{x(hi):.1f}" y="{axis_y}" font-size="11" text-anchor="middle">{hi:.2f}</text>',
        "</svg>",
    ]
    return Markup("".join(parts))
