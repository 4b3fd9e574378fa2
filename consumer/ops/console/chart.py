"""A small inline SVG line chart: rates over the last minutes, no chart library, no script.

Colours come from CSS classes (``series-<name>``) in the console's stylesheet, so the chart
follows the light or dark scheme and needs no inline style (the CSP allows none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

__all__ = ["line_chart"]


def line_chart(series: Mapping[str, Sequence[tuple[float, float]]], *, span: float, title: str,
               width: int = 560, height: int = 140, unit: str = "/s") -> Markup:
    """``series``: name → [(seconds ago, value)]; x runs from ``span`` seconds ago to now."""
    top = max((v for points in series.values() for _, v in points), default=0.0)
    scale = top if top > 0 else 1.0
    pad = 4
    top_margin = 18 if height > 60 else 14  # room for the peak label above the lines
    lines = []
    for name, points in series.items():
        coords = " ".join(
            f"{pad + (width - 2 * pad) * (1 - min(ago, span) / span):.1f},"
            f"{height - pad - (height - pad - top_margin) * value / scale:.1f}"
            for ago, value in points
        )
        if coords:
            lines.append(f'<polyline class="series series-{escape(name)}" fill="none" points="{coords}"/>')

    def number(value: float) -> str:
        return f"{value:.2f}" if unit else f"{value:g}"

    latest = ", ".join(f"{name} {number(points[-1][1])}{unit}" if points else f"{name} —"
                       for name, points in series.items())
    label = f"{title}: last {max(1, round(span / 60))} min, peak {number(top)}{unit}; now {latest}"
    return Markup(
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'aria-label="{escape(label)}"><title>{escape(label)}</title>'
        f'<rect class="chart-frame" x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="none"/>'
        f'<text class="chart-peak" x="{pad + 2}" y="14">peak {number(top)}{escape(unit)}</text>'
        + "".join(lines) + "</svg>"
    )
