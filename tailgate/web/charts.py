"""Charts as inline SVG, drawn in Python: no JavaScript, no library, nothing fetched.

Colours come from the stylesheet (classes ``s0`` … ``s7`` and ``s-other``), so a chart follows
the page's light or dark scheme. Every bar segment carries a ``<title>``: hovering (or a
screen reader) gives the exact figure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from markupsafe import Markup, escape

from tailgate.web.format import day_label

PALETTE_SIZE = 8
OTHER = "other"
WIDTH = 960
PLOT_LEFT = 48
PLOT_RIGHT = 8
PLOT_TOP = 10
AXIS_HEIGHT = 22
MAX_BARS = 120


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    values: Sequence[int]
    """One value per x position."""
    css: str
    """``s0`` … ``s7`` or ``s-other``: the colour."""


def top_series(by_name: Mapping[str, Sequence[int]], keep: int = PALETTE_SIZE - 1) -> list[Series]:
    """The ``keep`` largest series (by total) with their colours, the rest summed as ``other``."""
    ranked = sorted(by_name.items(), key=lambda item: (-sum(item[1]), item[0]))
    if len(ranked) <= keep + 1:
        return [Series(name, values, f"s{i}") for i, (name, values) in enumerate(ranked)]
    out = [Series(name, values, f"s{i}") for i, (name, values) in enumerate(ranked[:keep])]
    rest = [values for _, values in ranked[keep:]]
    summed = [sum(column) for column in zip(*rest, strict=True)]
    out.append(Series(OTHER, summed, "s-other"))
    return out


def day_buckets(first: date, last: date, max_bars: int = MAX_BARS) -> tuple[list[date], int]:
    """The x positions for ``first``…``last``: every day, or every week when that is too many bars.

    Returns the start of each bucket and its length in days.
    """
    days = (last - first).days + 1
    step = 1 if days <= max_bars else 7 * math.ceil(days / (7 * max_bars))
    return [first + timedelta(days=i) for i in range(0, max(days, 1), step)], step


def nice_ticks(top: int, count: int = 4) -> list[int]:
    """Round tick values from 0 to at least ``top`` (1, 2, 2.5 or 5 times a power of ten apart)."""
    if top <= 0:
        return [0, 1]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    step = max(1, math.ceil(step))
    ticks = [0]
    while ticks[-1] < top:
        ticks.append(ticks[-1] + step)
    return ticks


def stacked_bars(
    labels: Sequence[date],
    series: Sequence[Series],
    *,
    describe: Callable[[int], str],
    axis: Callable[[int], str],
    title: str,
    bucket_days: int = 1,
    height: int = 240,
) -> Markup:
    """Bars over days, each stacked from ``series``; ``describe`` writes a value in tooltips,
    ``axis`` on the y axis."""
    count = len(labels)
    totals = [sum(s.values[i] for s in series) for i in range(count)]
    ticks = nice_ticks(max(totals, default=0))
    top = ticks[-1]
    tick_labels = [axis(t) for t in ticks]
    # Room for the longest y label, at the larger font phones use (about 10 units a character).
    left = max(PLOT_LEFT, 12 + 10 * max(len(label) for label in tick_labels))
    plot_w = WIDTH - left - PLOT_RIGHT
    plot_h = height - PLOT_TOP - AXIS_HEIGHT
    bottom = PLOT_TOP + plot_h
    out = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="{escape(title)}" preserveAspectRatio="xMidYMid meet">',
        f"<title>{escape(title)}</title>",
        '<g class="grid">',
    ]
    for tick, label in zip(ticks, tick_labels, strict=True):
        y = bottom - plot_h * tick / top
        out.append(f'<line x1="{left}" x2="{WIDTH - PLOT_RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(
            f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>'
        )
    out.append("</g>")
    slot = plot_w / max(count, 1)
    width = max(slot * 0.72, 1.0)
    out.append('<g class="bars">')
    for i, day in enumerate(labels):
        x = left + i * slot + (slot - width) / 2
        y = float(bottom)
        when = _bucket_label(day, bucket_days)
        for s in series:
            value = s.values[i]
            if value <= 0:
                continue
            h = plot_h * value / top
            y -= h
            tip = f"{when} · {s.name}: {describe(value)}"
            out.append(
                f'<rect class="{s.css}" x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" '
                f'height="{max(h, 0.5):.1f}">'
                f"<title>{escape(tip)}</title></rect>"
            )
    out.append("</g>")
    out.append('<g class="axis">')
    every = max(1, math.ceil(count / 8))
    for i in range(0, count, every):
        x = left + i * slot + slot / 2
        out.append(
            f'<text class="tick" x="{x:.1f}" y="{height - 6}" text-anchor="middle">'
            f"{escape(day_label(labels[i]))}</text>"
        )
    out.append(f'<line x1="{left}" x2="{WIDTH - PLOT_RIGHT}" y1="{bottom}" y2="{bottom}"/>')
    out.append("</g></svg>")
    return Markup("".join(out))


def _bucket_label(day: date, bucket_days: int) -> str:
    if bucket_days == 1:
        return day.isoformat()
    return f"{day.isoformat()} to {(day + timedelta(days=bucket_days - 1)).isoformat()}"


def bar(fraction: float, *, tone: str = "") -> Markup:
    """A small horizontal bar filled to ``fraction`` (clamped to 0…1), for tables and quotas."""
    filled = min(max(fraction, 0.0), 1.0) * 100
    css = f"meter {tone}".strip()
    return Markup(
        f'<svg class="{escape(css)}" viewBox="0 0 100 6" preserveAspectRatio="none" aria-hidden="true">'
        f'<rect class="track" width="100" height="6" rx="3"/>'
        f'<rect class="fill" width="{filled:.2f}" height="6" rx="3"/></svg>'
    )


def swatch(css: str) -> Markup:
    """The colour key of a series, for legends."""
    return Markup(
        f'<svg class="swatch" viewBox="0 0 10 10" aria-hidden="true"><rect class="{escape(css)}" '
        'width="10" height="10" rx="2"/></svg>'
    )
