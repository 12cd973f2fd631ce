"""Per-second charts as hand-written SVG (stdlib only).

One chart per scenario: three stacked panels per site (columns for several
sites): the most requests the site saw in flight in each second, the share of
429 answers, and admitted requests per second against the site's rate. One
polyline per variant; dashed black lines are the site's rate and the
concurrency that would use it exactly (rate × mean latency).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from metrics import Second, share_429

COLORS = {
    "plugin": "#1f5fbf",
    "fixed-low": "#2ca02c",
    "fixed-high": "#d62728",
    "autothrottle": "#9467bd",
    "plugin-pause-slot": "#17becf",
    "plugin-start-high": "#ff7f0e",
    "plain-scrapy": "#7f7f7f",
}
FALLBACK_COLORS = ("#ff7f0e", "#8c564b", "#e377c2", "#17becf")

WIDTH = 940  # the whole chart, whatever the number of site columns
PANEL_H = 150
LEFT = 52
RIGHT = 16
GAP = 48  # vertical space between panels (x labels, title of the next one)
COL_GAP = 44
BOTTOM = 40
LINE_H = 15  # subtitle lines


@dataclass
class SiteChart:
    """What to draw for one site."""

    host: str
    series: dict[str, list[Second]]
    """Per variant, the dense per-second series."""
    rate: Callable[[int], float | None] | None = None
    """The site's rate (or the in-flight cap's equivalent) per second."""
    ideal: Callable[[int], float | None] | None = None
    """The concurrency that would use the rate exactly, per second."""
    cap: float | None = None
    """A hard in-flight cap, drawn on the concurrency panel."""


def nice_step(maximum: float, ticks: int = 4) -> float:
    """A round tick step (1, 2, 2.5 or 5 × 10^k) giving about ``ticks`` ticks."""
    if maximum <= 0:
        return 1.0
    raw = maximum / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * power >= raw:
            return factor * power
    return 10 * power  # pragma: no cover - the loop always returns


def nice_max(maximum: float, ticks: int = 4) -> float:
    step = nice_step(maximum, ticks)
    return max(step, math.ceil(maximum / step) * step)


def _fmt(value: float) -> str:
    return f"{value:g}" if value < 1000 else f"{value / 1000:g}k"


class _Panel:
    def __init__(
        self,
        x0: float,
        y0: float,
        width: float,
        t_max: float,
        y_max: float,
        percent: bool = False,
    ) -> None:
        self.x0, self.y0, self.w = x0, y0, width
        self.t_max = max(t_max, 1.0)
        self.y_max = y_max
        self.percent = percent

    def x(self, t: float) -> float:
        return self.x0 + self.w * t / self.t_max

    def y(self, v: float) -> float:
        v = min(max(v, 0.0), self.y_max)
        return self.y0 + PANEL_H - PANEL_H * v / self.y_max

    def frame(self, title: str) -> list[str]:
        out = [
            f'<text x="{self.x0}" y="{self.y0 - 8}" class="ptitle">{escape(title)}</text>',
            f'<rect x="{self.x0}" y="{self.y0}" width="{self.w}" height="{PANEL_H}" '
            'class="frame"/>',
        ]
        step = nice_step(self.y_max)
        v = 0.0
        while v <= self.y_max + 1e-9:
            y = self.y(v)
            label = f"{v * 100:.0f}%" if self.percent else _fmt(v)
            out.append(
                f'<line x1="{self.x0}" y1="{y:.1f}" x2="{self.x0 + self.w}" '
                f'y2="{y:.1f}" class="grid"/>'
            )
            out.append(
                f'<text x="{self.x0 - 4}" y="{y + 3.5:.1f}" class="ytick">{label}</text>'
            )
            v += step
        t_step = nice_step(self.t_max, 6)
        t = 0.0
        while t <= self.t_max + 1e-9:
            x = self.x(t)
            out.append(
                f'<line x1="{x:.1f}" y1="{self.y0 + PANEL_H}" x2="{x:.1f}" '
                f'y2="{self.y0 + PANEL_H + 4}" class="axis"/>'
            )
            out.append(
                f'<text x="{x:.1f}" y="{self.y0 + PANEL_H + 15}" class="xtick">'
                f"{t:g}</text>"
            )
            t += t_step
        return out

    def polyline(
        self,
        points: Sequence[tuple[float, float | None]],
        css: str,
        color: str | None = None,
    ) -> list[str]:
        """One polyline per unbroken run of points (None breaks the line)."""
        out: list[str] = []
        run: list[str] = []
        style = f' stroke="{color}"' if color else ""

        def flush() -> None:
            if len(run) == 1:
                run.append(run[0])
            if run:
                out.append(f'<polyline points="{" ".join(run)}" class="{css}"{style}/>')
            run.clear()

        for t, v in points:
            if v is None:
                flush()
                continue
            run.append(f"{self.x(t):.1f},{self.y(v):.1f}")
        flush()
        return out

    def steps(
        self, fn: Callable[[int], float | None], t_end: int, css: str
    ) -> list[str]:
        """A step line: ``fn(t)`` held over each second [t, t + 1)."""
        points: list[tuple[float, float | None]] = []
        for t in range(t_end):
            v = fn(t)
            points += [(t, v), (t + 1, v)]
        return self.polyline(points, css)


def _color(variant: str, index: int) -> str:
    return COLORS.get(variant, FALLBACK_COLORS[index % len(FALLBACK_COLORS)])


def scenario_svg(
    title: str, sites: Sequence[SiteChart], subtitle: Sequence[str] = ()
) -> str:
    """The whole chart of one scenario as an SVG document."""
    variants: list[str] = []
    for site in sites:
        for name in site.series:
            if name not in variants:
                variants.append(name)
    t_end = 1 + max(
        (s.t for site in sites for series in site.series.values() for s in series),
        default=0,
    )
    columns = max(1, len(sites))
    width = WIDTH
    panel_w = (WIDTH - LEFT - RIGHT - (columns - 1) * COL_GAP) / columns
    legend_y = 42 + LINE_H * len(subtitle)
    top = legend_y + 40
    height = top + 3 * PANEL_H + 2 * GAP + BOTTOM
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, sans-serif">',
        "<style>"
        ".title{font-size:15px;font-weight:bold}"
        ".sub{font-size:11px;fill:#444}"
        ".ptitle{font-size:12px;font-weight:bold}"
        ".frame{fill:none;stroke:#888;stroke-width:1}"
        ".grid{stroke:#e4e4e4;stroke-width:1}"
        ".axis{stroke:#888}"
        ".ytick{font-size:10px;text-anchor:end;fill:#444}"
        ".xtick{font-size:10px;text-anchor:middle;fill:#444}"
        ".legend{font-size:11px}"
        ".line{fill:none;stroke-width:1.6;stroke-linejoin:round}"
        ".ref{fill:none;stroke:#000;stroke-width:1.2;stroke-dasharray:5,3}"
        ".capline{fill:none;stroke:#000;stroke-width:1;stroke-dasharray:2,2}"
        "</style>",
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="{LEFT}" y="20" class="title">{escape(title)}</text>',
    ]
    for index, line in enumerate(subtitle):
        out.append(
            f'<text x="{LEFT}" y="{38 + LINE_H * index}" class="sub">'
            f"{escape(line)}</text>"
        )
    # Legend.
    x = LEFT
    y = legend_y
    for index, name in enumerate(variants):
        color = _color(name, index)
        out.append(
            f'<line x1="{x}" y1="{y}" x2="{x + 22}" y2="{y}" stroke="{color}" '
            'stroke-width="3"/>'
        )
        out.append(
            f'<text x="{x + 27}" y="{y + 4}" class="legend">{escape(name)}</text>'
        )
        x += 27 + 7 * len(name) + 18
    out.append(f'<line x1="{x}" y1="{y}" x2="{x + 22}" y2="{y}" class="ref"/>')
    out.append(
        f'<text x="{x + 27}" y="{y + 4}" class="legend">site rate / concurrency '
        "that uses it</text>"
    )
    for column, site in enumerate(sites):
        x0 = LEFT + column * (panel_w + COL_GAP)
        out += _site_panels(site, x0, top, panel_w, t_end, variants, columns > 1)
    out.append(
        f'<text x="{LEFT + (width - LEFT - RIGHT) / 2}" y="{height - 8}" '
        'class="xtick">seconds since the site\'s clock started (crawl start)</text>'
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _site_panels(
    site: SiteChart,
    x0: float,
    top: float,
    width: float,
    t_end: int,
    variants: list[str],
    named: bool,
) -> list[str]:
    out: list[str] = []
    prefix = f"{site.host}: " if named else ""
    everything = [s for series in site.series.values() for s in series]
    # 1. concurrency
    peak = max((s.max_inflight for s in everything), default=0)
    ideal_peak = max(
        (v for t in range(t_end) if site.ideal and (v := site.ideal(t)) is not None),
        default=0.0,
    )
    y_top = nice_max(max(peak, ideal_peak, site.cap or 0, 1) * 1.05)
    conc = _Panel(x0, top, width, t_end, y_top)
    out += conc.frame(prefix + "most requests in flight at the site, per second")
    # 2. 429 share
    share = _Panel(x0, top + PANEL_H + GAP, width, t_end, 1.0, percent=True)
    out += share.frame(prefix + "429 share of the site's answers, per second")
    # 3. goodput
    top_rate = max(
        (v for t in range(t_end) if site.rate and (v := site.rate(t)) is not None),
        default=0.0,
    )
    top_admitted = max((s.admitted for s in everything), default=0)
    good = _Panel(
        x0,
        top + 2 * (PANEL_H + GAP),
        width,
        t_end,
        nice_max(max(top_rate, top_admitted, 1) * 1.05),
    )
    out += good.frame(prefix + "admitted requests per second vs the site's rate")
    if site.ideal is not None:
        out += conc.steps(site.ideal, t_end, "ref")
    if site.cap is not None:
        out += conc.polyline([(0, site.cap), (t_end, site.cap)], "capline")
    if site.rate is not None:
        out += good.steps(site.rate, t_end, "ref")
    for index, name in enumerate(variants):
        series = site.series.get(name)
        if not series:
            continue
        color = _color(name, index)
        out += conc.polyline(
            [(s.t + 0.5, s.max_inflight) for s in series], "line", color
        )
        out += share.polyline(
            [(s.t + 0.5, share_429(s.admitted, s.rate_limited)) for s in series],
            "line",
            color,
        )
        out += good.polyline([(s.t + 0.5, s.admitted) for s in series], "line", color)
    return out
