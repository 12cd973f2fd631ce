"""Per-second charts as hand-written SVG (stdlib only).

One chart per scenario: three stacked panels per site (columns for several
sites): the most requests the site saw in flight in each second, the share of
429 answers, and admitted requests per second against the site's rate. One
polyline per variant; dashed black lines are the site's rate and the
concurrency that would use it exactly (rate × mean latency).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from metrics import Second, share_429

# The one chart module: the crawl report's (scrapy_justproxies.report.charts).
from scrapy_justproxies.report.charts import (
    GAP,
    LEFT,
    PANEL_H,
    RIGHT,
    STYLE,
    nice_max,
    nice_step,  # noqa: F401 - part of this module's interface (tests)
)
from scrapy_justproxies.report.charts import Panel as _Panel

COLORS = {
    "plugin": "#1f5fbf",
    "fixed-low": "#2ca02c",
    "fixed-high": "#d62728",
    "autothrottle": "#9467bd",
    "plugin-pause-slot": "#17becf",
    "plugin-start-high": "#ff7f0e",
    "plugin-trace": "#8c564b",
    "plain-scrapy": "#7f7f7f",
}
FALLBACK_COLORS = ("#ff7f0e", "#8c564b", "#e377c2", "#17becf")

WIDTH = 940  # the whole chart, whatever the number of site columns
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
        f"<style>{STYLE}</style>",
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
