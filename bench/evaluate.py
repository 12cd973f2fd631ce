"""From one scenario's raw runs to its metrics (no I/O).

A *run* here is the JSON-able dict :mod:`run` records per variant: the
crawl's result (``statuses``, ``crawler_requests``, ``cpu_seconds``, …), the
gateway's counters and, per site host, the site's counters with their
``per_second`` buckets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import metrics as m
from metrics import Second
from scenarios import CAP, PLAIN, RATE, UNLIMITED, Scenario, Site


def host_series(run: Mapping[str, Any], host: str) -> list[Second]:
    return m.dense_series(run.get("sites", {}).get(host, {}).get("per_second", []))


def combined_series(per_host: Sequence[Sequence[Second]]) -> list[Second]:
    """Several sites' seconds summed (in-flight: the sum of per-site peaks)."""
    totals: dict[int, list[int]] = {}
    for series in per_host:
        for s in series:
            bucket = totals.setdefault(s.t, [0, 0, 0])
            bucket[0] += s.admitted
            bucket[1] += s.rate_limited
            bucket[2] += s.max_inflight
    return m.dense_series(
        {"t": t, "admitted": a, "rate_limited": r, "max_inflight": i}
        for t, (a, r, i) in totals.items()
    )


def combined_rate(sites: Sequence[Site]) -> m.RateFn:
    def rate(t: int) -> float | None:
        rates = [site.rate_at(t) for site in sites]
        if any(r is None for r in rates):
            return None
        return sum(r for r in rates if r is not None)

    return rate


def client_limits(
    run: Mapping[str, Any], hosts: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The crawler's own per-domain limit: the plugin's, or the configured one.

    With the plugin's throttle on, its stats say where each domain's limit
    ended and how high it went; otherwise the limit is the configured
    ``CONCURRENT_REQUESTS_PER_DOMAIN`` all along.
    """
    stats = run.get("stats", {})
    out: dict[str, dict[str, Any]] = {}
    for host in hosts:
        final = stats.get(f"justproxies/limit_final/{host}")
        if final is not None:
            peak = stats.get(f"justproxies/limit_peak/{host}", final)
            out[host] = {"final": final, "peak": peak, "adaptive": True}
        else:
            configured = run.get("settings", {}).get("CONCURRENT_REQUESTS_PER_DOMAIN")
            if configured is None:
                configured = run.get("preset_start")
            out[host] = {"final": configured, "peak": configured, "adaptive": False}
    return out


def evaluate_run(
    scenario: Scenario,
    run: Mapping[str, Any],
    reference_throughput: float | None = None,
    reference_after: float | None = None,
) -> dict[str, Any]:
    """Every metric of one variant's run (see docs/benchmark.md)."""
    per_host = [host_series(run, site.host) for site in scenario.sites]
    series = combined_series(per_host)
    full = m.full_seconds(series)
    span = m.active_span(series)
    if scenario.kind == UNLIMITED:
        rate = m.constant(reference_throughput)
    else:
        rate = combined_rate(scenario.sites)
    site_counts = [run.get("sites", {}).get(site.host, {}) for site in scenario.sites]
    admitted = sum(int(c.get("admitted", 0)) for c in site_counts)
    rate_limited = sum(int(c.get("rate_limited", 0)) for c in site_counts)
    attempts = sum(int(c.get("requests", 0)) for c in site_counts)
    statuses = run.get("statuses", {})
    lost = m.lost_urls(scenario.urls, statuses)
    ok = sum(n for status, n in statuses.items() if str(status) == "200")
    crawler_requests = int(run.get("crawler_requests") or 0)
    gateway = run.get("gateway", {})
    conc = m.concurrency(full, series)
    out: dict[str, Any] = {
        "throughput": m.throughput(full),
        "goodput": (
            m.ratio(m.throughput(full), reference_throughput)
            if scenario.kind == UNLIMITED
            else m.goodput_share(full, rate)
        ),
        "share_429": m.share_429(admitted, rate_limited),
        "attempts_per_success": m.attempts_per_success(attempts, ok),
        "ok": ok,
        "lost": lost.total,
        "lost_failed": lost.failed,
        "lost_cut": lost.cut,
        "t90": m.time_to_fraction(series, rate, span[0]) if span else None,
        "concurrency_mean": conc.mean,
        "concurrency_peak": conc.peak,
        "connections_per_request": m.connections_per_request(
            int(gateway.get("connections_accepted", 0)),
            crawler_requests
            or int(gateway.get("requests", 0)) + int(gateway.get("connects", 0)),
        ),
        "bytes_per_success": m.bytes_per_success(
            int(gateway.get("bytes_from_clients", 0))
            + int(gateway.get("bytes_to_clients", 0)),
            ok,
        ),
        "cpu_ms_per_request": m.cpu_ms_per_request(
            max(
                0.0,
                float(run.get("cpu_seconds", 0.0))
                - float(run.get("startup_cpu_seconds", 0.0)),
            ),
            crawler_requests,
        ),
        "client_limit": client_limits(run, [site.host for site in scenario.sites]),
        "active_seconds": (span[1] - span[0] + 1) if span else 0,
        "wall_seconds": run.get("wall_seconds"),
    }
    if scenario.change_at is not None:
        change = int(scenario.change_at)
        after = [s for s in series if s.t >= change + scenario.settle]
        if span is not None:
            after = [s for s in after if s.t <= span[1]]
        out["share_429_after"] = m.share_429_in(after)
        out["t90_after"] = m.time_to_fraction(series, rate, change)
    if scenario.kind == UNLIMITED:
        # Once the ramp from the preset's low end is over: the overhead at
        # the same concurrency.
        later = [s for s in full if s.t >= scenario.settle]
        out["throughput_after"] = m.throughput(later)
        out["goodput_after"] = m.ratio(m.throughput(later), reference_after)
    if len(scenario.sites) > 1:
        both = m.both_active(per_host[0], per_host[1]) if len(per_host) == 2 else None
        out["both_active"] = list(both) if both else None
        out["per_site"] = {}
        for site, host_s in zip(scenario.sites, per_host, strict=True):
            stretch = m.window(host_s, *both) if both else []
            out["per_site"][site.host] = {
                "goodput_both_active": m.goodput_share(stretch, site.rate_at),
                "goodput": m.goodput_share(m.full_seconds(host_s), site.rate_at),
                "share_429": m.share_429_in(host_s),
            }
    return out


def evaluate_scenario(
    scenario: Scenario, runs: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Metrics of every variant; no-limit ones relative to plain Scrapy."""
    reference: float | None = None
    reference_after: float | None = None
    if scenario.kind == UNLIMITED and PLAIN in runs and not runs[PLAIN].get("error"):
        plain = runs[PLAIN]
        per_host = [host_series(plain, site.host) for site in scenario.sites]
        full = m.full_seconds(combined_series(per_host))
        reference = m.throughput(full)
        reference_after = m.throughput([s for s in full if s.t >= scenario.settle])
    return {
        variant: evaluate_run(scenario, run, reference, reference_after)
        for variant, run in runs.items()
        if not run.get("error")
    }


def ideal(scenario: Scenario) -> dict[str, Any]:
    """What a perfect client would get: the "ideal" row of the tables."""
    t_mid = int(scenario.change_at or 0)
    concurrency = [site.ideal_concurrency(0) for site in scenario.sites]
    after = [site.ideal_concurrency(t_mid) for site in scenario.sites]
    rates = [site.rate_at(0) for site in scenario.sites]
    seconds = None
    if scenario.kind in (RATE, CAP) and all(rates):
        seconds = max(
            _ideal_seconds(site.urls, site.rate_at) for site in scenario.sites
        )
    # The crawler's side: every request also spends the gateway's hop in
    # flight (the site's "in flight" column counts only the site's part).
    client = [
        None if c is None else c * (1 + scenario.hop_ms / site.mean_latency_ms)
        for c, site in zip(concurrency, scenario.sites, strict=True)
    ]
    return {
        "concurrency": (
            sum(c for c in concurrency if c is not None)
            if all(c is not None for c in concurrency)
            else None
        ),
        "client_concurrency": (
            sum(c for c in client if c is not None)
            if all(c is not None for c in client) and scenario.hop_ms
            else None
        ),
        "concurrency_after": (
            sum(c for c in after if c is not None)
            if scenario.change_at is not None and all(c is not None for c in after)
            else None
        ),
        "seconds": seconds,
    }


def _ideal_seconds(urls: int, rate: m.RateFn) -> float:
    """How long ``urls`` take at exactly the rate in force (with its changes)."""
    left = float(urls)
    t = 0
    while t < 100_000:
        r = rate(t) or 0.0
        if r >= left:
            return t + left / r
        left -= r
        t += 1
    return float(t)
