"""Small charts as geometry (rectangles, a polyline, labels in SVG units); the
templates draw them as inline SVG, so a page needs no script library."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

WIDTH = 360
ROW = 18  # height of one horizontal bar's row
LABEL = 120  # room for the labels left of horizontal bars


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    width: float
    height: float
    title: str  # the tooltip: what the shape stands for, in words
    kind: str = ""  # a class the page styles (a failed turn's dot is red)
    href: str = ""  # where a click on it goes


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    text: str
    anchor: str = "start"


@dataclass
class Chart:
    title: str
    width: int
    height: int
    rects: list[Rect] = field(default_factory=list)
    backs: list[Rect] = field(default_factory=list)  # the whole of each bar, drawn pale
    labels: list[Label] = field(default_factory=list)
    points: str = ""  # a polyline, "x,y x,y ..."


def rates(title: str, groups: Sequence[tuple[str, int, int]]) -> Chart:
    """Horizontal bars of `part / whole` per group: (name, part, whole)."""
    chart = Chart(title, WIDTH, ROW * len(groups) + 4)
    span = WIDTH - LABEL - 70
    for row, (name, part, whole) in enumerate(groups):
        y = row * ROW + 2
        share = part / whole if whole else 0.0
        words = f"{name}: {part}/{whole} ({share:.0%})"
        chart.backs.append(Rect(LABEL, y, span, ROW - 5, words))
        chart.rects.append(Rect(LABEL, y, span * share, ROW - 5, words))
        chart.labels.append(Label(LABEL - 6, y + ROW - 7, _clip(name, 18), "end"))
        chart.labels.append(Label(LABEL + span + 6, y + ROW - 7, f"{part}/{whole} {share:.0%}"))
    return chart


def counts(title: str, groups: Sequence[tuple[str, int]]) -> Chart:
    """Horizontal bars of a count per group."""
    chart = Chart(title, WIDTH, ROW * len(groups) + 4)
    span = WIDTH - LABEL - 40
    top = max((n for _, n in groups), default=0) or 1
    for row, (name, n) in enumerate(groups):
        y = row * ROW + 2
        chart.rects.append(Rect(LABEL, y, span * n / top, ROW - 5, f"{name}: {n}"))
        chart.labels.append(Label(LABEL - 6, y + ROW - 7, _clip(name, 18), "end"))
        chart.labels.append(Label(LABEL + span * n / top + 6, y + ROW - 7, str(n)))
    return chart


def histogram(title: str, values: Sequence[float], unit: str = "", bins: int = 12) -> Chart:
    """How many values fall in each of `bins` equal ranges between the least and the most
    (fewer bins when there are fewer distinct values); each bar is labelled with its count."""
    height, base = 96, 78
    chart = Chart(title, WIDTH, height)
    if not values:
        return chart
    bins = min(bins, len(set(values)))
    low, high = min(values), max(values)
    width = (high - low) / bins or 1.0
    tally = [0] * bins
    for value in values:
        tally[min(bins - 1, int((value - low) / width))] += 1
    top = max(tally)
    step = (WIDTH - 20) / bins
    for i, n in enumerate(tally):
        tall = (base - 16) * n / top
        start, end = low + i * width, low + (i + 1) * width
        words = f"{n} between {_number(start)} and {_number(end)}{unit}"
        gap = max(2.0, step * 0.15)
        chart.rects.append(Rect(10 + i * step + gap / 2, base - tall, step - gap, tall, words))
        if n:
            chart.labels.append(Label(10 + (i + 0.5) * step, base - tall - 3, str(n), "middle"))
    chart.labels.append(Label(10, base + 14, f"{_number(low)}{unit}"))
    chart.labels.append(Label(WIDTH - 10, base + 14, f"{_number(high)}{unit}", "end"))
    chart.labels.append(Label(WIDTH / 2, base + 14, f"{len(values)} values", "middle"))
    return chart


def running(
    title: str,
    values: Sequence[int],
    limit: int | None = None,
    kinds: Sequence[str] = (),
    links: Sequence[str] = (),
) -> Chart:
    """A line of a running total (tokens used so far) over turns, from zero; each turn's
    dot can carry a kind and a link."""
    height, base = 70, 56
    chart = Chart(title, WIDTH, height)
    if not values:
        return chart
    top = max(max(values), 1)
    step = (WIDTH - 20) / max(len(values) - 1, 1)
    chart.points = " ".join(
        f"{10 + i * step:.1f},{base - (base - 6) * v / top:.1f}" for i, v in enumerate(values)
    )
    for i, v in enumerate(values):
        y = base - (base - 6) * v / top
        kind = kinds[i] if i < len(kinds) else ""
        href = links[i] if i < len(links) else ""
        words = f"turn {i + 1}: {v:,} tokens" + (f" ({kind})" if kind else "")
        chart.rects.append(Rect(10 + i * step - 3, y - 3, 6, 6, words, kind, href))
    share = f" ({values[-1] / limit:.1%} of {limit:,})" if limit else ""
    chart.labels.append(Label(10, base + 12, "turn 1"))
    chart.labels.append(Label(WIDTH - 10, base + 12, f"turn {len(values)}", "end"))
    chart.labels.append(Label(WIDTH / 2, base + 12, f"{values[-1]:,} tokens{share}", "middle"))
    return chart


def _number(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:.0f}" if value >= 10 or math.isclose(value, round(value)) else f"{value:.1f}"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
