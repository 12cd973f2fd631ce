"""Small hand-written SVG charts (stdlib only), for the crawl report and the
benchmark (``bench/charts.py`` draws its scenario charts with these parts).

A chart is a list of :class:`Panel` s sharing a time axis; each draws its
frame, ticks and grid, and polylines, step lines and markers in its own
coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

PANEL_H = 150
LEFT = 52
RIGHT = 16
GAP = 48  # vertical space between panels (x labels, title of the next one)

STYLE = (
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
    ".dashed{stroke-dasharray:6,3}"
    ".ref{fill:none;stroke:#000;stroke-width:1.2;stroke-dasharray:5,3}"
    ".capline{fill:none;stroke:#000;stroke-width:1;stroke-dasharray:2,2}"
)


def nice_step(maximum: float, ticks: int = 4) -> float:
    """A round tick step (1, 2, 2.5 or 5 × 10^k) giving about ``ticks`` ticks."""
    if maximum <= 0:
        return 1.0
    raw = maximum / ticks
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * power >= raw:
            return factor * power
    return 10 * power  # pragma: no cover - the loop always returns


def nice_max(maximum: float, ticks: int = 4) -> float:
    step = nice_step(maximum, ticks)
    return max(step, math.ceil(maximum / step) * step)


def fmt(value: float) -> str:
    return f"{value:g}" if value < 1000 else f"{value / 1000:g}k"


def svg_open(width: float, height: float, extra_attributes: str = "") -> list[str]:
    """The opening of a standalone SVG with the shared style and a white
    background."""
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:g}" '
        f'height="{height:g}" viewBox="0 0 {width:g} {height:g}" '
        f'font-family="DejaVu Sans, Arial, sans-serif"{extra_attributes}>',
        f"<style>{STYLE}</style>",
        f'<rect width="{width:g}" height="{height:g}" fill="#fff"/>',
    ]


def legend(
    x: float, y: float, entries: Sequence[tuple[str, str]], dashed: bool = False
) -> tuple[list[str], float]:
    """``(svg, x after it)`` for ``(label, colour)`` entries in one row."""
    out: list[str] = []
    for label, color in entries:
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        out.append(
            f'<line x1="{x:g}" y1="{y:g}" x2="{x + 22:g}" y2="{y:g}" '
            f'stroke="{color}" stroke-width="3"{dash}/>'
        )
        out.append(
            f'<text x="{x + 27:g}" y="{y + 4:g}" class="legend">{escape(label)}</text>'
        )
        x += 27 + 7 * len(label) + 18
    return out, x


class Panel:
    """One plot area: time on x (seconds), a value on y from 0."""

    def __init__(
        self,
        x0: float,
        y0: float,
        width: float,
        t_max: float,
        y_max: float,
        *,
        percent: bool = False,
        height: float = PANEL_H,
    ) -> None:
        self.x0, self.y0, self.w, self.h = x0, y0, width, height
        self.t_max = max(t_max, 1.0)
        self.y_max = y_max
        self.percent = percent

    def x(self, t: float) -> float:
        return self.x0 + self.w * t / self.t_max

    def y(self, v: float) -> float:
        v = min(max(v, 0.0), self.y_max)
        return self.y0 + self.h - self.h * v / self.y_max

    def frame(self, title: str) -> list[str]:
        out = [
            f'<text x="{self.x0}" y="{self.y0 - 8}" class="ptitle">'
            f"{escape(title)}</text>",
            f'<rect x="{self.x0}" y="{self.y0}" width="{self.w}" height="{self.h}" '
            'class="frame"/>',
        ]
        step = nice_step(self.y_max)
        v = 0.0
        while v <= self.y_max + 1e-9:
            y = self.y(v)
            label = f"{v * 100:.0f}%" if self.percent else fmt(v)
            out.append(
                f'<line x1="{self.x0}" y1="{y:.1f}" x2="{self.x0 + self.w}" '
                f'y2="{y:.1f}" class="grid"/>'
            )
            out.append(
                f'<text x="{self.x0 - 4}" y="{y + 3.5:.1f}" class="ytick">'
                f"{label}</text>"
            )
            v += step
        t_step = nice_step(self.t_max, 6)
        t = 0.0
        while t <= self.t_max + 1e-9:
            x = self.x(t)
            out.append(
                f'<line x1="{x:.1f}" y1="{self.y0 + self.h}" x2="{x:.1f}" '
                f'y2="{self.y0 + self.h + 4}" class="axis"/>'
            )
            out.append(
                f'<text x="{x:.1f}" y="{self.y0 + self.h + 15}" class="xtick">'
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

    def markers(
        self, points: Sequence[tuple[float, float, str, str]], css: str = "mark"
    ) -> list[str]:
        """A small triangle at each ``(t, value, colour, tooltip)``."""
        out = []
        for t, v, color, tip in points:
            x, y = self.x(t), self.y(v)
            out.append(
                f'<path d="M{x:.1f},{y - 5:.1f}l4,7h-8z" fill="{color}" '
                f'class="{css}"><title>{escape(tip)}</title></path>'
            )
        return out
