"""The Markdown report (``bench/results/latest.md``) from the results dict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scenarios import PLAIN, UNLIMITED, Scenario


def pct(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def secs(value: float | None) -> str:
    return "never" if value is None else f"{value:g} s"


def _lost(row: Mapping[str, Any]) -> str:
    if row["lost"] == 0:
        return "0"
    return f"{row['lost']} ({row['lost_failed']} + {row['lost_cut']})"


def _conc(row: Mapping[str, Any]) -> str:
    return f"{num(row['concurrency_mean'], 1)} / {row['concurrency_peak']}"


def _limit(row: Mapping[str, Any]) -> str:
    limits = row.get("client_limit") or {}
    parts = []
    for host, limit in limits.items():
        text = "–" if limit.get("final") is None else str(limit["final"])
        if limit.get("adaptive"):
            text += f" (peak {limit['peak']})"
        parts.append(f"{host.split('.')[0]}: {text}" if len(limits) > 1 else text)
    return "; ".join(parts) or "–"


def _bytes(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value / 1000:.2f} kB" if value < 10**6 else f"{value / 10**6:.2f} MB"


def spend_line(scenario: Scenario, rows: Mapping[str, Mapping[str, Any]]) -> str:
    """For a pool preset: what the plugin spent for the scenario's pages
    against fixed concurrency at the preset's ends and AutoThrottle, as the
    gateway counted the bytes."""
    plugin = rows.get("plugin", {}).get("bytes_per_success")
    if not scenario.name.startswith("preset-") or plugin is None:
        return ""
    preset = scenario.preset
    names = {
        "fixed-low": f"fixed concurrency {preset.domain_concurrency_start}",
        "fixed-high": f"fixed concurrency {preset.domain_concurrency_max}",
        "autothrottle": "AutoThrottle",
    }
    pages = scenario.urls
    parts = []
    for variant, label in names.items():
        other = rows.get(variant, {}).get("bytes_per_success")
        if other:
            parts.append(
                f"{label} {other * pages / 1e6:.2f} MB ({plugin / other - 1:+.0%})"
            )
    if not parts:
        return ""
    return (
        f"Bytes through the gateway for the scenario's {pages} pages (per "
        f"successful page × {pages}; TLS included, as the gateway counts them): "
        f"the plugin {plugin * pages / 1e6:.2f} MB; "
        + "; ".join(parts)
        + " (the plugin's difference to each in brackets)."
    )


def _extra_columns(scenario: Scenario) -> list[tuple[str, Any]]:
    """Scenario-specific columns: (header, function(row) -> text)."""
    if scenario.change_at is not None:
        change = scenario.change_at
        what = "drop" if scenario.name == "drop" else "change"
        if scenario.name == "rise":
            what = "rise"
        return [
            (
                f"429 share from t = {change + scenario.settle:g} s",
                lambda r: pct(r.get("share_429_after"), 1),
            ),
            (f"t90 after the {what}", lambda r: secs(r.get("t90_after"))),
        ]
    if len(scenario.sites) > 1:
        return [
            (
                f"`{site.host}` goodput, both active",
                lambda r, h=site.host: pct(
                    r.get("per_site", {}).get(h, {}).get("goodput_both_active")
                ),
            )
            for site in scenario.sites
        ]
    if scenario.kind == UNLIMITED:
        after = f"{scenario.settle:g}"
        return [
            (f"vs `{PLAIN}`", lambda r: pct(r.get("goodput"))),
            (
                f"req/s from t = {after} s",
                lambda r: num(r.get("throughput_after"), 0),
            ),
            (
                f"vs `{PLAIN}` from t = {after} s",
                lambda r: pct(r.get("goodput_after")),
            ),
        ]
    return []


def scenario_table(
    scenario: Scenario,
    rows: Mapping[str, Mapping[str, Any]],
    ideal: Mapping[str, Any],
    errors: Mapping[str, str],
) -> str:
    extra = _extra_columns(scenario)
    goodput_header = "req/s" if scenario.kind == UNLIMITED else "goodput"
    headers = [
        "variant",
        goodput_header,
        "429 share",
        "attempts / success",
        "lost (failed + cut)",
        "t90",
        "in flight mean / peak",
        "client limit",
        "new conn. / request",
        "CPU ms / request",
        "bytes per successful page",
        "run",
        *(h for h, _ in extra),
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for variant in scenario.variants:
        if variant in errors:
            cells = [f"`{variant}`", f"failed: {errors[variant]}"]
            cells += [""] * (len(headers) - len(cells))
            lines.append("| " + " | ".join(cells) + " |")
            continue
        row = rows.get(variant)
        if row is None:
            continue
        goodput = (
            num(row["throughput"], 0)
            if scenario.kind == UNLIMITED
            else pct(row["goodput"])
        )
        cells = [
            f"`{variant}`",
            goodput,
            pct(row["share_429"], 1),
            num(row["attempts_per_success"]),
            _lost(row),
            secs(row["t90"]),
            _conc(row),
            _limit(row),
            num(row["connections_per_request"], 3),
            num(row["cpu_ms_per_request"], 2),
            _bytes(row.get("bytes_per_success")),
            f"{row['wall_seconds']:.0f} s" if row.get("wall_seconds") else "–",
            *(fn(row) for _, fn in extra),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    # The ideal row: what a perfect client would get.
    conc = ideal.get("concurrency")
    conc_text = "–" if conc is None else f"≈ {conc:.1f}"
    if ideal.get("concurrency_after") is not None:
        conc_text += f" → {ideal['concurrency_after']:.1f}"
    ideal_cells = [
        "*ideal*",
        "–" if scenario.kind == UNLIMITED else "100%",
        "0%",
        "1.00",
        "0",
        "0 s",
        conc_text,
        "–"
        if ideal.get("client_concurrency") is None
        else f"≈ {ideal['client_concurrency']:.0f} (hop included)",
        "→ 0",
        "–",
        "–",
        "–" if ideal.get("seconds") is None else f"{ideal['seconds']:.0f} s + start-up",
    ]
    for header, _ in extra:
        if header.startswith("429"):
            ideal_cells.append("0%")
        elif header.startswith("t90"):
            ideal_cells.append("0 s")
        else:
            ideal_cells.append("100%")
    lines.append("| " + " | ".join(ideal_cells) + " |")
    return "\n".join(lines)


LEGEND = (
    "Columns: **goodput** = admitted requests per second ÷ the site's rate in "
    "force, averaged over the crawl's full active seconds; **429 share** = 429 "
    "answers ÷ all answers; **attempts / success** = requests the site saw per "
    "URL that ended 200; **lost** = URLs without a final 200: given up on after "
    "retries + cut by the run's time bound (`CLOSESPIDER_TIMEOUT`); **t90** = "
    "seconds from the first request to the first second admitting ≥ 90% of the "
    "rate; **in flight** = the site's per-second peak of requests in flight "
    "(mean over the crawl / highest; only admitted requests are in flight, a "
    "429 is answered at once); **client limit** = the crawler's per-domain "
    "concurrency limit at the end (and the highest it set), from the plugin's "
    "stats when it adapts, else the configured value; **new conn. / request** = connections the "
    "gateway accepted per request the crawler sent; **CPU ms / request** = the "
    "crawl process's CPU time per request, net of its start-up (an empty crawl "
    "of the same variant); **bytes per successful page** = bytes through the "
    "gateway, both directions, as it counted them (TLS included), per URL that "
    "ended 200; **run** = wall "
    "time of the crawl process. See docs/benchmark.md."
)


def _load_line(load: Mapping[str, float] | None) -> str:
    if not load:
        return "- Other load on the machine: not measured"
    text = (
        f"- Other load on the machine during the crawls: {load['mean']:.2f} cores "
        f"on average, {load['max']:.2f} at most"
    )
    if load["max"] > 0.25:
        text += " (**the machine was not idle**: the runs noted below are disturbed)"
    return text


def render(results: Mapping[str, Any], scenarios: list[Scenario]) -> str:
    meta = results["meta"]
    out = [
        "# Benchmark results",
        "",
        f"- Date: {meta['date']}",
        f"- Scrapy {meta['scrapy']}, Twisted {meta['twisted']}, Python "
        f"{meta['python']}, scrapy-justproxies {meta['plugin_version']} "
        f"(commit {meta['commit']})",
        f"- Machine: {meta['nproc']} CPUs (nproc), {meta['cpu_model']}, "
        f"{meta['platform']}",
        f"- Mode: {meta['mode']}; scenarios: {', '.join(meta['scenarios'])}; "
        f"whole run {meta['total_minutes']:.1f} min",
        f"- Throttle extension: {meta['throttle']}",
        _load_line(meta.get("background_cores")),
        "- Every crawl: a fresh Scrapy process under the asyncio reactor, through "
        "the sandbox gateway to the sandbox site on loopback; the site's counters "
        "and clock are reset just before it starts.",
        "",
        LEGEND,
        "",
    ]
    for scenario in scenarios:
        data = results["scenarios"].get(scenario.name)
        if data is None:
            continue
        out += [
            f"## `{scenario.name}`: {scenario.title}",
            "",
            f"Pool preset `{scenario.pool}` (per domain "
            f"{scenario.preset.domain_concurrency_start}–"
            f"{scenario.preset.domain_concurrency_max}, `RETRY_TIMES` "
            f"{scenario.preset.retry_times}); runs bounded at "
            f"`CLOSESPIDER_TIMEOUT = {scenario.timeout:g}`.",
            "",
            *(f"- {site.describe()}" for site in scenario.sites),
            "",
            scenario_table(
                scenario, data["metrics"], data["ideal"], data.get("errors", {})
            ),
            "",
        ]
        notes = [*scenario.notes, *data.get("observations", [])]
        spend = spend_line(scenario, data["metrics"])
        if spend:
            notes.append(spend)
        out += [f"- {note}" for note in notes]
        if notes:
            out.append("")
        out += [f"![{scenario.name}]({scenario.name}.svg)", ""]
    return "\n".join(out).rstrip() + "\n"
