"""The benchmark's metrics: small pure functions, stdlib only.

Inputs are plain numbers and the site's per-second buckets as the sandbox
reports them (``stats()["sites"][host]["per_second"]``: dicts with ``t``,
``admitted``, ``rate_limited`` and ``max_inflight``). ``t`` is schedule time:
whole seconds since the sandbox's last reset, which the benchmark does just
before each crawl, so a rate change "at t = 20 s" lands on bucket 20.

Conventions used throughout:

* A second is *active* when the site answered at least one request in it
  (admitted or 429). The crawl's active span runs from the first active
  second to the last; the quiet seconds in between count (the crawler was
  there and got nothing).
* The first and last active seconds are partial (Scrapy starts and stops
  mid-second), so averages over "the crawl" use the *full* seconds strictly
  between them, unless the crawl is too short to have any.
* A rate function maps a second to the rate in force then (requests/s), or
  ``None`` where there is no rate (such seconds are skipped).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Z95 = 1.6448536269514722  # standard normal quantile at 0.95

RateFn = Callable[[int], "float | None"]


@dataclass(frozen=True)
class Second:
    """One per-second bucket of one site."""

    t: int
    admitted: int = 0
    rate_limited: int = 0
    max_inflight: int = 0

    @property
    def answers(self) -> int:
        return self.admitted + self.rate_limited


# -- series ------------------------------------------------------------------


def dense_series(buckets: Iterable[Mapping[str, Any]]) -> list[Second]:
    """The sandbox's buckets as one :class:`Second` per second, gaps filled.

    The sandbox only opens a bucket when something happens in that second; a
    missing second had no arrival and no completion, so it is filled with
    zeros.
    """
    by_t = {
        int(b["t"]): Second(
            int(b["t"]),
            int(b.get("admitted", 0)),
            int(b.get("rate_limited", 0)),
            int(b.get("max_inflight", 0)),
        )
        for b in buckets
    }
    if not by_t:
        return []
    return [by_t.get(t, Second(t)) for t in range(min(by_t), max(by_t) + 1)]


def active_span(series: Sequence[Second]) -> tuple[int, int] | None:
    """``(first, last)`` second with at least one answer, or None."""
    active = [s.t for s in series if s.answers > 0]
    if not active:
        return None
    return active[0], active[-1]


def full_seconds(series: Sequence[Second]) -> list[Second]:
    """The active span without its two partial edge seconds.

    A crawl shorter than three active seconds has no full second; then the
    whole active span is returned rather than nothing.
    """
    span = active_span(series)
    if span is None:
        return []
    first, last = span
    inner = [s for s in series if first < s.t < last]
    return inner or [s for s in series if first <= s.t <= last]


def window(series: Sequence[Second], start: float, end: float) -> list[Second]:
    """The seconds with ``start <= t < end``."""
    return [s for s in series if start <= s.t < end]


# -- rates ---------------------------------------------------------------------


def rate_at(
    base: float | None, schedule: Sequence[Sequence[float | None]], t: float
) -> float | None:
    """The site's rate in force at schedule time ``t`` (as the sandbox does it).

    ``schedule`` holds ``(at, rate)`` pairs in increasing ``at``; before the
    first change ``base`` applies. ``None`` means unlimited.
    """
    rate = base
    for at, value in schedule:
        assert at is not None
        if at > t:
            break
        rate = value
    return rate


def lognormal_mean_ms(p50_ms: float, p95_ms: float) -> float:
    """Mean of the sandbox's lognormal latency with this median and P95."""
    if p50_ms <= 0:
        return 0.0
    if p95_ms <= p50_ms:
        return p50_ms
    sigma = math.log(p95_ms / p50_ms) / Z95
    return p50_ms * math.exp(sigma * sigma / 2)


def inflight_cap_rate(cap: int, mean_latency_ms: float) -> float:
    """What an in-flight cap admits per second when always full (Little's law)."""
    return cap / (mean_latency_ms / 1000.0)


def ideal_concurrency(rate: float, mean_latency_ms: float) -> float:
    """Requests in flight needed to use ``rate`` at this latency (Little's law)."""
    return rate * mean_latency_ms / 1000.0


# -- the metrics ---------------------------------------------------------------


def goodput_share(seconds: Sequence[Second], rate: RateFn) -> float | None:
    """Mean over ``seconds`` of admitted ÷ the rate in force (1.0 = all of it).

    Seconds without a rate (unlimited, or 0) are skipped; None if none is left.
    """
    ratios = []
    for s in seconds:
        r = rate(s.t)
        if r:
            ratios.append(s.admitted / r)
    return sum(ratios) / len(ratios) if ratios else None


def throughput(seconds: Sequence[Second]) -> float | None:
    """Mean admitted requests per second over ``seconds``."""
    if not seconds:
        return None
    return sum(s.admitted for s in seconds) / len(seconds)


def ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference``, or None when either is missing or 0."""
    if value is None or not reference:
        return None
    return value / reference


def share_429(admitted: int, rate_limited: int) -> float | None:
    """429 answers as a share of all answers the site gave."""
    answers = admitted + rate_limited
    return rate_limited / answers if answers else None


def share_429_in(seconds: Sequence[Second]) -> float | None:
    """:func:`share_429` over a stretch of per-second buckets."""
    return share_429(
        sum(s.admitted for s in seconds), sum(s.rate_limited for s in seconds)
    )


def share_429_series(series: Sequence[Second]) -> list[float | None]:
    """Per second: 429 ÷ answers (None for a second without answers)."""
    return [share_429(s.admitted, s.rate_limited) for s in series]


def attempts_per_success(attempts: int, successes: int) -> float | None:
    """Requests the site saw per URL that ended 200 (1.0 = no waste)."""
    return attempts / successes if successes else None


@dataclass(frozen=True)
class Lost:
    """URLs that did not end with a 200."""

    failed: int
    """The crawl gave up on them (a final non-200, or an error after retries)."""
    cut: int
    """Never finished: the run hit its time bound first."""

    @property
    def total(self) -> int:
        return self.failed + self.cut


def lost_urls(requested: int, statuses: Mapping[Any, int]) -> Lost:
    """Requested − final 200s, split into given up on and cut by the bound.

    ``statuses`` counts each URL's final status (``None`` or ``"None"``: an
    error), one entry per URL that finished either way.
    """
    ok = sum(n for status, n in statuses.items() if str(status) == "200")
    finished = sum(statuses.values())
    return Lost(failed=finished - ok, cut=max(0, requested - finished))


def time_to_fraction(
    seconds: Sequence[Second],
    rate: RateFn,
    start: int,
    fraction: float = 0.9,
) -> int | None:
    """Seconds from ``start`` to the first second admitting ≥ fraction × rate.

    Only seconds at or after ``start`` are looked at; None if it never
    happens (or no second has a rate).
    """
    for s in seconds:
        if s.t < start:
            continue
        r = rate(s.t)
        if r and s.admitted >= fraction * r:
            return s.t - start
    return None


@dataclass(frozen=True)
class Concurrency:
    mean: float | None
    peak: int


def concurrency(seconds: Sequence[Second], series: Sequence[Second]) -> Concurrency:
    """Mean of the per-second peaks over ``seconds``; the peak over ``series``."""
    mean = sum(s.max_inflight for s in seconds) / len(seconds) if seconds else None
    return Concurrency(mean, max((s.max_inflight for s in series), default=0))


def connections_per_request(
    connections_accepted: int, crawler_requests: int
) -> float | None:
    """New client connections the gateway accepted per request the crawler sent.

    The denominator is the crawler's own count (Scrapy's
    ``downloader/request_count``), not the gateway's ``requests``: over http
    one keep-alive connection carries many forwarded requests, which the
    gateway counts, but over https a ``CONNECT`` turns the connection into a
    tunnel and the requests inside it are invisible to the gateway (it only
    counts the ``connects``). Either way, 1.0 means a new connection per
    request (no keep-alive); close to 0 means connections are reused.
    """
    return connections_accepted / crawler_requests if crawler_requests else None


def bytes_per_success(gateway_bytes: int, successes: int) -> float | None:
    """Bytes through the gateway (both directions, as it counted them) per
    URL that ended with a 200: what a bandwidth-priced pool bills per page."""
    return gateway_bytes / successes if successes and gateway_bytes else None


def cpu_ms_per_request(cpu_seconds: float, crawler_requests: int) -> float | None:
    """CPU milliseconds per request sent (pass CPU net of the process start-up)."""
    return 1000.0 * cpu_seconds / crawler_requests if crawler_requests else None


def both_active(a: Sequence[Second], b: Sequence[Second]) -> tuple[int, int] | None:
    """The full seconds during which both sites were being crawled.

    ``(start, end)`` with ``start <= t < end``, the intersection of both
    sites' :func:`full_seconds` ranges; None if they do not overlap.
    """
    fa, fb = full_seconds(a), full_seconds(b)
    if not fa or not fb:
        return None
    start = max(fa[0].t, fb[0].t)
    end = min(fa[-1].t, fb[-1].t) + 1
    return (start, end) if start < end else None


# -- helpers for the rate line ---------------------------------------------------


def constant(rate: float | None) -> RateFn:
    """A rate function that is always ``rate``."""
    return lambda _t: rate


def scheduled(base: float | None, schedule: Sequence[Sequence[float | None]]) -> RateFn:
    """A rate function following the sandbox's schedule for one host."""
    return lambda t: rate_at(base, schedule, t)
