"""The crawl report: one self-contained HTML file from a trace.

``JUSTPROXIES_REPORT = "report.html"`` writes it when the crawl closes;
``python -m scrapy_justproxies.report TRACE.jsonl -o report.html`` renders any
trace (:mod:`scrapy_justproxies.trace`) later, also one cut short by a kill.
No network: the charts are inline SVG, the table sorts with a few lines of
inline script.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any, Final

from ..billing import GB, RECORD_KEYS, AnswerCounts, cost
from .charts import GAP, LEFT, PANEL_H, RIGHT, Panel, legend, nice_max, svg_open

CHARTED_DOMAINS: Final = 12
"""Domains with a chart (the busiest by requests); the rest are in the table."""
MAX_POINTS: Final = 900
"""Longer crawls are drawn in bins of several seconds."""
CHART_WIDTH: Final = 940
COLORS: Final = {
    "limit": "#1f5fbf",
    "in_flight": "#ff7f0e",
    "ok": "#2ca02c",
    "429": "#d62728",
}


class TraceError(ValueError):
    """The file is not a JustProxies trace."""


def read_trace(path: Path) -> list[dict[str, Any]]:
    """The trace's records; a last line cut short by a kill is left out.

    Every record is checked (:func:`_record_problem`): a trace is a file
    anyone can hand over, and the report must fail with one clear line, not
    somewhere in the charts.
    """
    records: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as lines:
        pending_error: str | None = None
        try:
            for number, line in enumerate(lines, 1):
                if pending_error is not None:  # a bad line that was not the last
                    raise TraceError(pending_error)
                try:
                    record = json.loads(line)
                except ValueError:
                    pending_error = f"{path}:{number}: not a JSON line"
                    continue
                if not records and not (
                    isinstance(record, dict) and record.get("type") == "header"
                ):
                    break  # refused below: a trace starts with its header
                problem = _record_problem(record)
                if problem is not None:
                    raise TraceError(f"{path}:{number}: {problem}")
                records.append(record)
        except UnicodeDecodeError:
            raise TraceError(f"{path}: not UTF-8 text, not a trace") from None
    if not records or records[0].get("type") != "header":
        raise TraceError(
            f"{path} does not start with a JustProxies trace header "
            "(written by JUSTPROXIES_TRACE)"
        )
    return records


# The counts the report adds up, by record type (whole, not negative).
_COUNTS: Final = {
    "domain": (*RECORD_KEYS.values(), "in_flight"),
    "decision": ("old", "new"),
}
_LATEST_TIMESTAMP: Final = 32503680000  # 3000-01-01, in datetime's range


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _record_problem(record: Any) -> str | None:
    """What is wrong with one trace record for the report, or None."""
    if not isinstance(record, dict) or not isinstance(record.get("type"), str):
        return "not a trace record"
    kind = record["type"]
    if "t" in record and not (_is_number(record["t"]) and record["t"] >= 0):
        return f"{kind} record: 't' must be seconds (a number), not {record['t']!r}"
    if kind == "header":
        return _header_problem(record)
    if kind in ("end", "decision") and not isinstance(record.get("reason", ""), str):
        return f"{kind} record: 'reason' must be a string"
    if kind in _COUNTS:
        return _drawn_problem(kind, record)
    return None  # end, or a record type of a later format: not drawn


def _drawn_problem(kind: str, record: dict[str, Any]) -> str | None:
    """A domain's second or a limit decision: what the charts need."""
    if not isinstance(record.get("domain"), str) or "t" not in record:
        return f"{kind} record: it needs 'domain' (a string) and 't'"
    bad = [name for name in _COUNTS[kind] if not _is_count(record.get(name, 0))]
    if kind == "domain" and record.get("limit") is not None:
        bad += [] if _is_count(record["limit"]) else ["limit"]
    if kind == "decision":
        evidence = record.get("evidence")
        if not isinstance(evidence, dict):
            return "decision record: 'evidence' must be an object"
        bad += [k for k in ("answers", "429") if not _is_count(evidence.get(k, 0))]
    if bad:
        return f"{kind} record: {', '.join(bad)} must be whole numbers >= 0"
    return None


def _header_problem(header: dict[str, Any]) -> str | None:
    started, price = header.get("started", 0), header.get("price_per_gb")
    if not (_is_number(started) and 0 <= started <= _LATEST_TIMESTAMP):
        return f"header: 'started' must be a Unix time, not {started!r}"
    if price is not None and not (_is_number(price) and price >= 0):
        return f"header: 'price_per_gb' must be a number, not {price!r}"
    if not isinstance(header.get("settings", {}), dict):
        return "header: 'settings' must be an object"
    return None


@dataclass
class DomainSummary(AnswerCounts):
    name: str = ""
    seconds: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def attempts(self) -> int:
        return self.ok + self.rate_limited + self.error + self.gateway

    @property
    def bytes(self) -> int:
        return self.sent + self.received

    @property
    def share_429(self) -> float:
        answered = self.ok + self.rate_limited + self.error
        return self.rate_limited / answered if answered else 0.0

    @property
    def attempts_per_success(self) -> float | None:
        return self.attempts / self.ok if self.ok else None


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, DomainSummary]:
    domains: dict[str, DomainSummary] = {}
    for record in records:
        kind = record.get("type")
        if kind not in ("domain", "decision"):
            continue
        name = str(record["domain"])
        domain = domains.get(name)
        if domain is None:
            domain = domains[name] = DomainSummary(name=name)
        if kind == "decision":
            domain.decisions.append(record)
            continue
        domain.seconds.append(record)
        domain.add_record(record)
    return domains


def _binned(
    seconds: list[dict[str, Any]], size: int
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Per bin of ``size`` seconds (by index): the last limit, the most in
    flight, and the answers per second in it."""
    bins: dict[int, list[dict[str, Any]]] = {}
    for record in seconds:
        bins.setdefault(max(0, round(record["t"]) - 1) // size, []).append(record)
    for index in sorted(bins):
        group = bins[index]
        yield (
            index,
            {
                "limit": group[-1].get("limit"),
                "in_flight": max(r.get("in_flight", 0) for r in group),
                "ok": sum(r.get("ok", 0) for r in group) / size,
                "429": sum(r.get("429", 0) for r in group) / size,
            },
        )


def _steps(
    bins: list[tuple[int, dict[str, Any]]], size: int, name: str
) -> list[tuple[float, float | None]]:
    """Each bin's value held over its span; a break where the domain was
    idle (no record)."""
    points: list[tuple[float, float | None]] = []
    previous: int | None = None
    for index, values in bins:
        if previous is not None and index != previous + 1:
            points.append((index * size, None))
        value = values[name]
        points += [(index * size, value), ((index + 1) * size, value)]
        previous = index
    return points


def domain_chart(domain: DomainSummary, t_end: float) -> str:
    """Two panels: the limit and requests in flight, with the limit decisions
    marked; admitted answers and 429s per second."""
    size = max(1, math.ceil(t_end / MAX_POINTS))
    t_end = max(t_end, math.ceil(t_end / size) * size)
    points = list(_binned(domain.seconds, size))
    width = CHART_WIDTH
    panel_w = width - LEFT - RIGHT
    top = 80
    height = top + 2 * PANEL_H + GAP + 40
    limits = [p["limit"] for _, p in points if p["limit"] is not None]
    decided = [d[k] for d in domain.decisions for k in ("old", "new")]
    conc_max = nice_max(
        max([*limits, *decided, *(p["in_flight"] for _, p in points), 1]) * 1.05
    )
    busiest = max([*(max(p["ok"], p["429"]) for _, p in points), 1])
    answers_max = nice_max(busiest * 1.05)
    concurrency = Panel(LEFT, top, panel_w, t_end, conc_max)
    answers = Panel(LEFT, top + PANEL_H + GAP, panel_w, t_end, answers_max)
    attributes = f' class="domain-chart" data-domain="{escape(domain.name)}"'
    out = svg_open(width, height, attributes)
    out.append(f'<text x="{LEFT}" y="20" class="title">{escape(domain.name)}</text>')
    legend_svg, x = legend(LEFT, 38, [("limit", COLORS["limit"])], dashed=True)
    out += legend_svg
    legend_svg, x = legend(
        x,
        38,
        [
            ("in flight (most)", COLORS["in_flight"]),
            ("admitted/s", COLORS["ok"]),
            ("429/s", COLORS["429"]),
        ],
    )
    out += legend_svg
    out.append(
        f'<path d="M{x:g},{33:g}l4,7h-8z" fill="#444"/>'
        f'<text x="{x + 9:g}" y="42" class="legend">limit decision</text>'
    )
    out += concurrency.frame("concurrency limit and requests in flight")
    out += answers.frame(
        "admitted answers and 429s per second"
        + (f" (mean over {size} s)" if size > 1 else "")
    )
    for panel, name, css in (
        (concurrency, "in_flight", "line"),
        (concurrency, "limit", "line dashed"),  # on top, dashed: both show
        (answers, "ok", "line"),
        (answers, "429", "line"),
    ):
        out += panel.polyline(_steps(points, size, name), css, COLORS[name])
    out += concurrency.markers(
        [
            (
                float(d["t"]),
                float(d["new"]),
                COLORS["ok"] if d["new"] > d["old"] else COLORS["429"],
                f"{d['t']:.1f} s: {d['old']} → {d['new']} ({d['reason']}; "
                f"{d['evidence'].get('429', 0)} of {d['evidence'].get('answers', 0)} "
                "answers were 429)",
            )
            for d in domain.decisions
        ]
    )
    out.append(
        f'<text x="{LEFT + panel_w / 2}" y="{height - 8}" class="xtick">'
        "seconds since the crawl started</text>"
    )
    out.append("</svg>")
    return "\n".join(out)


def _size(value: int) -> str:
    if value >= GB // 10:
        return f"{value / GB:.2f} GB"
    if value >= 10**6:
        return f"{value / 10**6:.1f} MB"
    return f"{value / 10**3:.1f} kB"


def _table(domains: list[DomainSummary], price: float | None) -> str:
    head = [
        ("domain", "text"),
        ("pages", "num"),
        ("429s", "num"),
        ("429 share", "num"),
        ("attempts per success", "num"),
        ("bytes", "num"),
        ("429 bytes", "num"),
    ]
    if price is not None:
        head.append(("cost", "num"))
    rows = []
    for d in domains:
        aps = d.attempts_per_success
        cells = [
            (d.name, d.name),
            (d.ok, f"{d.ok:,}"),
            (d.rate_limited, f"{d.rate_limited:,}"),
            (d.share_429, f"{d.share_429:.1%}"),
            # JavaScript's parseFloat reads "Infinity", not Python's "inf".
            (aps if aps is not None else "Infinity", f"{aps:.2f}" if aps else "–"),
            (d.bytes, _size(d.bytes)),
            (d.rate_limited_bytes, _size(d.rate_limited_bytes)),
        ]
        if price is not None:
            c = cost(d.bytes, price)
            cells.append((c, f"{c:.2f}"))
        rows.append(
            "<tr>"
            + "".join(
                f'<td data-v="{escape(str(value))}">{escape(text)}</td>'
                for value, text in cells
            )
            + "</tr>"
        )
    header = "".join(
        f'<th data-kind="{kind}" onclick="sortBy(this)">{escape(name)}</th>'
        for name, kind in head
    )
    return (
        f'<table id="domains"><thead><tr>{header}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


_SCRIPT: Final = """
function sortBy(th) {
  const table = th.closest("table"), body = table.tBodies[0];
  const col = th.cellIndex, num = th.dataset.kind === "num";
  const down = th.dataset.dir !== "down";
  for (const other of th.parentNode.children) delete other.dataset.dir;
  th.dataset.dir = down ? "down" : "up";
  const key = r => num ? parseFloat(r.cells[col].dataset.v) : r.cells[col].dataset.v;
  const rows = Array.from(body.rows).sort((a, b) =>
    (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0) * (down ? -1 : 1));
  for (const r of rows) body.appendChild(r);
}
// report.html#sort=cost opens the table sorted by that column.
const wanted = decodeURIComponent(location.hash.replace(/^#sort=/, ""));
for (const th of document.querySelectorAll("#domains th"))
  if (location.hash.startsWith("#sort=") && th.textContent === wanted) sortBy(th);
"""

_CSS: Final = """
body{font-family:DejaVu Sans,Arial,sans-serif;margin:24px;color:#222}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
th{background:#f2f2f2;cursor:pointer;user-select:none}
th[data-dir=down]::after{content:" ▼"}th[data-dir=up]::after{content:" ▲"}
.facts td{border:none;text-align:left;padding:1px 12px 1px 0}
svg{display:block;margin:12px 0}
"""


def render_report(records: list[dict[str, Any]]) -> str:
    """The report's HTML for a trace's records."""
    header = records[0]
    end = next((r for r in records if r.get("type") == "end"), None)
    domains = summarize(records)
    price = header.get("price_per_gb")
    t_end = max(
        (float(r["t"]) for r in records if "t" in r),
        default=1.0,
    )
    by_requests = sorted(domains.values(), key=lambda d: -d.attempts)
    by_cost = sorted(domains.values(), key=lambda d: -d.bytes)
    total = sum(d.bytes for d in by_cost)
    total_429 = sum(d.rate_limited_bytes for d in by_cost)
    pages = sum(d.ok for d in by_cost)
    attempts = sum(d.attempts for d in by_cost)
    started = datetime.fromtimestamp(header.get("started", 0), tz=timezone.utc)
    facts = [
        ("spider", str(header.get("spider", ""))),
        ("started", started.strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("duration", f"{t_end:.0f} s"),
        (
            "ended",
            end.get("reason", "?")
            if end
            else "no end record: the crawl was killed, the trace is cut short",
        ),
        ("pool", str(header.get("pool") or "none")),
        ("plugin / Scrapy", f"{header.get('plugin')} / {header.get('scrapy')}"),
        ("pages (answers below 400)", f"{pages:,}"),
        ("attempts per success", f"{attempts / pages:.2f}" if pages else "–"),
        ("bytes through the gateway", _size(total)),
        ("of which 429s", _size(total_429)),
    ]
    if price is not None:
        facts.append(
            (
                "cost",
                f"{cost(total, price):.2f} at {price:.2f}/GB "
                f"(429s: {cost(total_429, price):.2f})",
            )
        )
    charted = by_requests[:CHARTED_DOMAINS]
    rest = len(by_requests) - len(charted)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>JustProxies crawl report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>JustProxies crawl report</h1>",
        '<table class="facts">'
        + "".join(
            f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in facts
        )
        + "</table>",
        "<h2>Domains, by cost (click a column to sort)</h2>",
        _table(by_cost, price),
        f"<h2>The {len(charted)} busiest domains</h2>"
        + (f"<p>{rest} more are in the table above.</p>" if rest > 0 else ""),
        *(domain_chart(d, t_end) for d in charted),
        "<h2>Settings in force</h2>",
        "<pre>"
        + escape(json.dumps(header.get("settings", {}), indent=2, sort_keys=True))
        + "</pre>",
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_report(trace: Path, output: Path) -> None:
    """Render ``trace`` into ``output``; never over the trace itself."""
    if output.resolve() == trace.resolve():
        raise TraceError(
            f"{output} is the trace itself; write the report to another file (-o)"
        )
    html = render_report(read_trace(trace))
    # A name is whatever a site or spider chose; a lone surrogate must not
    # cost the whole report.
    output.write_text(html, encoding="utf-8", errors="replace")
