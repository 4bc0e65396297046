"""Hand-written SVG charts: bars or points with interval whiskers, lines over a numeric axis, boxes.

The report must open offline as one file, so charts are plain SVG strings with no script and no
external reference, built for a page 800 px wide. Every text is escaped. A value that is missing
or nan is drawn as a gap with a cross on the baseline, an infinite one (a censored hardening
score) as a triangle at the top, and the legend explains whichever marks a chart uses. A chart
is one or more panels side by side sharing a legend; colours follow series names, so a series
keeps its colour across panels.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from charlab.analysis.stats import Estimate

WIDTH = 800
PANEL_HEIGHT = 320
# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#999999", "#000000")
GAP, CENSORED = "×", "▲"
_LEFT, _RIGHT, _TOP = 64, 14, 30


@dataclass(frozen=True)
class Category:
    """A position on a categorical axis: a name and an optional smaller second line (the group)."""

    name: str
    note: str = ""


@dataclass(frozen=True)
class Series:
    """Estimates under one name: one per category, or one per x of a line panel; None is missing."""

    name: str
    values: tuple[Estimate | None, ...]
    dashed: bool = False


@dataclass(frozen=True)
class CategoryPanel:
    """Bars (or points, for quantities with no natural zero) with whiskers, grouped by category."""

    title: str
    y_label: str
    categories: tuple[Category, ...]
    series: tuple[Series, ...]
    y_range: tuple[float, float] | None = None  # kept unless the data reach outside it
    bars: bool = True


@dataclass(frozen=True)
class LinePanel:
    """Lines over a numeric x axis, one per series, with whiskers where there are intervals."""

    title: str
    x_label: str
    y_label: str
    xs: tuple[float, ...]
    series: tuple[Series, ...]
    y_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class Box:
    """One distribution: the raw values, drawn as quartiles, whiskers to the extremes and the mean."""

    category: Category
    series: str
    values: tuple[float, ...]


@dataclass(frozen=True)
class BoxPanel:
    title: str
    y_label: str
    boxes: tuple[Box, ...]


Panel = CategoryPanel | LinePanel | BoxPanel


@dataclass
class _Canvas:
    """Elements drawn so far, the colour of each series name, and which special marks were used."""

    colours: dict[str, str]
    parts: list[str] = field(default_factory=list)
    gaps: bool = False
    censored: bool = False

    def colour(self, name: str) -> str:
        return self.colours.setdefault(name, PALETTE[len(self.colours) % len(PALETTE)])


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(x: float) -> str:
    """A tick or tooltip number: 3 significant figures, no float noise."""
    if math.isnan(x):
        return "nan"
    return f"{round(x, 10):.3g}"


def _at(x: float) -> str:
    return f"{x:.1f}"


def _finite(x: float) -> bool:
    return math.isfinite(x)


def describe(estimate: Estimate | None) -> str:
    """An estimate for a tooltip or a table: value [low, high] (n), or why there is none."""
    if estimate is None:
        return "missing"
    if math.isinf(estimate.value):
        return "inf (censored)"
    if math.isnan(estimate.value):
        return f"nan (n={estimate.n})"
    interval = (f" [{_num(estimate.low)}, {_num(estimate.high)}]"
                if _finite(estimate.low) and _finite(estimate.high) else " (no interval)")
    return f"{_num(estimate.value)}{interval} (n={estimate.n})"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round-numbered ticks (steps of 1, 2, 2.5 or 5 times a power of ten) spanning [low, high]."""
    if not high > low:
        low, high = low - 1, high + 1
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _span(values: list[float], fixed: tuple[float, float] | None, zero: bool) -> list[float]:
    """Ticks of a y axis holding every finite value (and 0 for bars), widened to ``fixed`` if given."""
    data = [v for v in values if _finite(v)]
    low = min([*data, *((fixed[0],) if fixed else ()), *((0.0,) if zero else ())], default=0.0)
    high = max([*data, *((fixed[1],) if fixed else ()), *((0.0,) if zero else ())], default=1.0)
    return nice_ticks(low, high)


@dataclass(frozen=True)
class _Frame:
    """The plot area of one panel and its y scale."""

    left: float
    right: float
    top: float
    bottom: float
    ticks: tuple[float, ...]

    def y(self, value: float) -> float:
        low, high = self.ticks[0], self.ticks[-1]
        return self.bottom - (value - low) / (high - low) * (self.bottom - self.top)


def _frame(canvas: _Canvas, x0: float, width: float, height: float, bottom_margin: float, title: str,
           y_label: str, ticks: list[float]) -> _Frame:
    """Panel title, y axis with ticks and grid lines, and the rotated y label."""
    frame = _Frame(x0 + _LEFT, x0 + width - _RIGHT, _TOP, height - bottom_margin, tuple(ticks))
    parts = canvas.parts
    if title:
        parts.append(f'<text x="{_at((frame.left + frame.right) / 2)}" y="18" text-anchor="middle" '
                     f'font-weight="bold">{_e(title)}</text>')
    for tick in ticks:
        y = _at(frame.y(tick))
        parts.append(f'<line x1="{_at(frame.left)}" x2="{_at(frame.right)}" y1="{y}" y2="{y}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{_at(frame.left - 6)}" y="{y}" dy="4" text-anchor="end" fill="#444">'
                     f'{_e(_num(tick))}</text>')
    parts.append(f'<line x1="{_at(frame.left)}" x2="{_at(frame.left)}" y1="{_at(frame.top)}" '
                 f'y2="{_at(frame.bottom)}" stroke="#444"/>')
    parts.append(f'<text transform="translate({_at(x0 + 14)},{_at((frame.top + frame.bottom) / 2)}) rotate(-90)" '
                 f'text-anchor="middle">{_e(y_label)}</text>')
    return frame


def _baseline(frame: _Frame, bars: bool) -> float:
    """Where bars start: 0 when it is on the axis, else the axis bottom."""
    return frame.y(0.0) if bars and frame.ticks[0] <= 0 <= frame.ticks[-1] else frame.bottom


def _whisker(canvas: _Canvas, x: float, estimate: Estimate, frame: _Frame, colour: str, cap: float) -> None:
    if not (_finite(estimate.low) and _finite(estimate.high)):
        return
    low, high = _at(frame.y(estimate.low)), _at(frame.y(estimate.high))
    canvas.parts.append(f'<path d="M{_at(x)} {low}V{high}M{_at(x - cap)} {low}H{_at(x + cap)}'
                        f'M{_at(x - cap)} {high}H{_at(x + cap)}" stroke="{colour}" stroke-width="1.5" fill="none"/>')


def _mark(canvas: _Canvas, x: float, estimate: Estimate | None, frame: _Frame, colour: str, tip: str) -> bool:
    """A gap or censored mark when the value cannot be drawn; True if one was drawn."""
    if estimate is not None and _finite(estimate.value):
        return False
    if estimate is not None and math.isinf(estimate.value):
        canvas.censored = True
        symbol, y = CENSORED, frame.top + 12
    else:
        canvas.gaps = True
        symbol, y = GAP, frame.bottom - 4
    canvas.parts.append(f'<text x="{_at(x)}" y="{_at(y)}" text-anchor="middle" font-size="15" fill="{colour}">'
                        f'{symbol}<title>{_e(tip)}</title></text>')
    return True


def _category_labels(canvas: _Canvas, frame: _Frame, categories: Sequence[Category], rotate: bool) -> None:
    slot = (frame.right - frame.left) / max(len(categories), 1)
    for i, category in enumerate(categories):
        x = frame.left + slot * (i + 0.5)
        if rotate:
            label = category.name + (f" ({category.note})" if category.note else "")
            canvas.parts.append(f'<text transform="translate({_at(x)},{_at(frame.bottom + 14)}) rotate(-30)" '
                                f'text-anchor="end">{_e(label)}</text>')
            continue
        canvas.parts.append(f'<text x="{_at(x)}" y="{_at(frame.bottom + 16)}" text-anchor="middle">'
                            f'{_e(category.name)}</text>')
        if category.note:
            canvas.parts.append(f'<text x="{_at(x)}" y="{_at(frame.bottom + 30)}" text-anchor="middle" '
                                f'font-size="11" fill="#666">{_e(category.note)}</text>')


def _label_room(categories: Sequence[Category], width: float) -> tuple[bool, float]:
    """Whether category labels must be rotated to fit, and the bottom margin they need."""
    slot = (width - _LEFT - _RIGHT) / max(len(categories), 1)
    longest = max((len(c.name) + (len(c.note) + 3 if c.note else 0) for c in categories), default=0)
    if max((len(c.name) for c in categories), default=0) * 7 <= slot - 4:
        return False, 40
    return True, 24 + longest * 7 * 0.5


def _category_panel(canvas: _Canvas, panel: CategoryPanel, x0: float, width: float, height: float) -> None:
    values = [x for s in panel.series for e in s.values if e is not None for x in (e.value, e.low, e.high)]
    rotate, margin = _label_room(panel.categories, width)
    frame = _frame(canvas, x0, width, height, margin, panel.title, panel.y_label,
                   _span(values, panel.y_range, panel.bars))
    base = _baseline(frame, panel.bars)
    slot = (frame.right - frame.left) / max(len(panel.categories), 1)
    band = slot * 0.8 / max(len(panel.series), 1)
    for i, category in enumerate(panel.categories):
        for j, series in enumerate(panel.series):
            colour = canvas.colour(series.name)
            estimate = series.values[i] if i < len(series.values) else None
            x = frame.left + slot * (i + 0.1) + band * (j + 0.5)
            tip = f"{category.name}, {series.name}: {describe(estimate)}"
            if _mark(canvas, x, estimate, frame, colour, tip):
                continue
            y = frame.y(estimate.value)
            if panel.bars:
                top, size = min(y, base), abs(base - y)
                canvas.parts.append(f'<rect x="{_at(x - band * 0.4)}" y="{_at(top)}" width="{_at(band * 0.8)}" '
                                    f'height="{_at(max(size, 1.5))}" fill="{colour}" fill-opacity="0.75">'
                                    f'<title>{_e(tip)}</title></rect>')
            else:
                canvas.parts.append(f'<circle cx="{_at(x)}" cy="{_at(y)}" r="4" fill="{colour}">'
                                    f'<title>{_e(tip)}</title></circle>')
            _whisker(canvas, x, estimate, frame, "#222" if panel.bars else colour, min(5.0, band * 0.3))
    if frame.ticks[0] < 0 < frame.ticks[-1]:
        canvas.parts.append(f'<line x1="{_at(frame.left)}" x2="{_at(frame.right)}" y1="{_at(frame.y(0))}" '
                            f'y2="{_at(frame.y(0))}" stroke="#444"/>')
    _category_labels(canvas, frame, panel.categories, rotate)


def _x_ticks(xs: Sequence[float]) -> list[float]:
    return list(xs) if len(xs) <= 12 else nice_ticks(min(xs), max(xs), 8)


def _line_panel(canvas: _Canvas, panel: LinePanel, x0: float, width: float, height: float) -> None:
    values = [x for s in panel.series for e in s.values if e is not None for x in (e.value, e.low, e.high)]
    frame = _frame(canvas, x0, width, height, 44, panel.title, panel.y_label, _span(values, panel.y_range, False))
    low, high = min(panel.xs), max(panel.xs)
    spread = high - low or 1.0

    def x_of(value: float) -> float:
        return frame.left + 10 + (value - low) / spread * (frame.right - frame.left - 20)

    for tick in _x_ticks(panel.xs):
        if low <= tick <= high:
            canvas.parts.append(f'<text x="{_at(x_of(tick))}" y="{_at(frame.bottom + 16)}" text-anchor="middle" '
                                f'fill="#444">{_e(_num(tick))}</text>')
    canvas.parts.append(f'<line x1="{_at(frame.left)}" x2="{_at(frame.right)}" y1="{_at(frame.bottom)}" '
                        f'y2="{_at(frame.bottom)}" stroke="#444"/>')
    canvas.parts.append(f'<text x="{_at((frame.left + frame.right) / 2)}" y="{_at(frame.bottom + 34)}" '
                        f'text-anchor="middle">{_e(panel.x_label)}</text>')
    for series in panel.series:
        colour = canvas.colour(series.name)
        run: list[str] = []
        for x, estimate in zip(panel.xs, series.values):
            tip = f"{series.name} at {_num(x)}: {describe(estimate)}"
            if _mark(canvas, x_of(x), estimate, frame, colour, tip):
                _polyline(canvas, run, colour, series.dashed)
                run = []
                continue
            px, py = x_of(x), frame.y(estimate.value)
            run.append(f"{_at(px)},{_at(py)}")
            _whisker(canvas, px, estimate, frame, colour, 4)
            canvas.parts.append(f'<circle cx="{_at(px)}" cy="{_at(py)}" r="3" fill="{colour}">'
                                f'<title>{_e(tip)}</title></circle>')
        _polyline(canvas, run, colour, series.dashed)


def _polyline(canvas: _Canvas, points: list[str], colour: str, dashed: bool) -> None:
    if len(points) > 1:
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        canvas.parts.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" '
                            f'stroke-width="2"{dash}/>')


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        position = q * (len(ordered) - 1)
        below = math.floor(position)
        above = min(below + 1, len(ordered) - 1)
        return ordered[below] + (ordered[above] - ordered[below]) * (position - below)

    return at(0.25), at(0.5), at(0.75)


def _box_panel(canvas: _Canvas, panel: BoxPanel, x0: float, width: float, height: float) -> None:
    categories = [b.category for b in panel.boxes]
    rotate, margin = _label_room(categories, width)
    frame = _frame(canvas, x0, width, height, margin, panel.title, panel.y_label,
                   _span([v for b in panel.boxes for v in b.values], None, False))
    slot = (frame.right - frame.left) / max(len(panel.boxes), 1)
    half = min(slot * 0.3, 30)
    for i, box in enumerate(panel.boxes):
        x, colour = frame.left + slot * (i + 0.5), canvas.colour(box.series)
        finite = [v for v in box.values if _finite(v)]
        tip = f"{box.category.name}, {box.series}: no finite values"
        if not finite:
            _mark(canvas, x, None, frame, colour, tip)
            continue
        q1, median, q3 = _quartiles(finite)
        mean = sum(finite) / len(finite)
        tip = (f"{box.category.name}, {box.series}: n={len(finite)}, min {_num(min(finite))}, quartiles "
               f"{_num(q1)} / {_num(median)} / {_num(q3)}, max {_num(max(finite))}, mean {_num(mean)}")
        parts = canvas.parts
        parts.append(f'<path d="M{_at(x)} {_at(frame.y(min(finite)))}V{_at(frame.y(q1))}M{_at(x)} '
                     f'{_at(frame.y(q3))}V{_at(frame.y(max(finite)))}" stroke="{colour}" stroke-width="1.5"/>')
        parts.append(f'<rect x="{_at(x - half)}" y="{_at(frame.y(q3))}" width="{_at(2 * half)}" '
                     f'height="{_at(max(frame.y(q1) - frame.y(q3), 0.5))}" fill="{colour}" fill-opacity="0.35" '
                     f'stroke="{colour}"><title>{_e(tip)}</title></rect>')
        parts.append(f'<line x1="{_at(x - half)}" x2="{_at(x + half)}" y1="{_at(frame.y(median))}" '
                     f'y2="{_at(frame.y(median))}" stroke="{colour}" stroke-width="2.5"/>')
        parts.append(f'<circle cx="{_at(x)}" cy="{_at(frame.y(mean))}" r="3" fill="#fff" stroke="{colour}"/>')
    _category_labels(canvas, frame, categories, rotate)


def _legend(canvas: _Canvas, y: float) -> float:
    """Coloured swatches for the series and explanations of the marks used; returns the height taken."""
    items = [(f'<rect width="12" height="12" y="-10" fill="{colour}" fill-opacity="0.75"/>', name)
             for name, colour in canvas.colours.items()]
    if canvas.gaps:
        items.append((f'<text y="0" font-size="15" fill="#444">{GAP}</text>', "no value (nan or missing)"))
    if canvas.censored:
        items.append((f'<text y="0" font-size="13" fill="#444">{CENSORED}</text>',
                      "censored: never flipped within the grid"))
    x, row = _LEFT, 0
    for swatch, text in items:
        size = 22 + len(text) * 6.6
        if x + size > WIDTH - _RIGHT and x > _LEFT:
            x, row = _LEFT, row + 1
        canvas.parts.append(f'<g transform="translate({_at(x)},{_at(y + row * 20 + 14)})">{swatch}'
                            f'<text x="18" y="0">{_e(text)}</text></g>')
        x += size + 14
    return (row + 1) * 20 + 10 if items else 0


def chart(title: str, panels: Sequence[Panel], *, height: int = PANEL_HEIGHT) -> str:
    """An SVG 800 px wide: the panels side by side, then one legend for all of them."""
    if not panels:
        raise ValueError("a chart needs at least one panel")
    canvas = _Canvas({})
    width = WIDTH / len(panels)
    draw = {CategoryPanel: _category_panel, LinePanel: _line_panel, BoxPanel: _box_panel}
    for i, panel in enumerate(panels):
        draw[type(panel)](canvas, panel, i * width, width, height)
    total = height + _legend(canvas, height)
    return (f'<svg viewBox="0 0 {WIDTH} {_at(total)}" width="{WIDTH}" height="{_at(total)}" role="img" '
            f'aria-label="{_e(title)}" font-family="system-ui, sans-serif" font-size="12" '
            f'style="max-width:100%;height:auto"><title>{_e(title)}</title>'
            + "".join(canvas.parts) + "</svg>")
