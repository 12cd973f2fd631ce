"""The throttle's per-domain state on broad crawls: idle domains are evicted,
what was learned is kept compactly, memory stays flat. Driven through the
throttle's own hooks with a fake clock (no crawl: no slots to set)."""

from __future__ import annotations

import logging
import tracemalloc

import pytest
from scrapy import Request
from scrapy.http import Response
from scrapy.settings import Settings
from scrapy.utils.test import get_crawler

from scrapy_justproxies.config import ThrottleConfig
from scrapy_justproxies.controller import ControllerSettings
from scrapy_justproxies.throttle import (
    IDLE_SECONDS,
    QUIET_SECONDS,
    REMEMBERED_DOMAINS,
    SWEEP_SECONDS,
    JustProxiesThrottle,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_throttle(clock: Clock) -> JustProxiesThrottle:
    return JustProxiesThrottle(
        get_crawler(),
        ThrottleConfig(),
        ControllerSettings(start=4, maximum=50),
        clock=clock,
    )


def answer(throttle: JustProxiesThrottle, key: str, status: int = 200) -> None:
    request = Request(f"http://{key}/")
    limit = throttle.limit_for(key) or 1
    throttle.sent(key, request, limit)  # a full slot: the limit is used
    throttle.answered(request, Response(request.url, status=status))


def test_an_idle_domain_is_evicted_and_comes_back_at_its_limit() -> None:
    clock = Clock()
    throttle = make_throttle(clock)
    for _ in range(200):  # clean and used: the limit grows
        clock.now += 0.02
        answer(throttle, "grown.test")
    grown = throttle.limit_for("grown.test")
    assert grown is not None and grown > 4
    clock.now += IDLE_SECONDS + SWEEP_SECONDS
    answer(throttle, "other.test")  # a sample triggers the sweep
    assert "grown.test" not in throttle.domains
    assert throttle.limit_for("grown.test") == grown


def test_memory_stays_flat_as_domains_grow() -> None:
    """25,000 domains, one answer each, 50 ms apart: the live state holds
    only the recent ones; the compact memory and the kept counts are capped."""
    clock = Clock()
    throttle = make_throttle(clock)

    def crawl(domains: range) -> None:
        for i in domains:
            clock.now += 0.05
            answer(throttle, f"s{i}.test")

    crawl(range(5_000))
    crawl(range(5_000, 25_000))
    assert len(throttle.domains) <= (IDLE_SECONDS + SWEEP_SECONDS) / 0.05
    assert len(throttle._learned) <= REMEMBERED_DOMAINS
    assert len(throttle._top) <= throttle.throttle.stats_domains


def test_a_live_domain_costs_little_memory() -> None:
    """A broad crawl keeps every domain seen in the last IDLE_SECONDS: 2,000
    domains with a few clean answers each must cost under 2 kB each
    (controller, counts, the keys). Measured: 4.1 kB before the fix, most of
    it four deques of 760 bytes each however short; 1.3 kB after."""
    clock = Clock()
    throttle = make_throttle(clock)
    answer(throttle, "warm-up.test")
    keys = [f"s{i}.test" for i in range(2_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(3):
            for key in keys:
                clock.now += 0.001
                answer(throttle, key)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(throttle.domains) == len(keys) + 1
    assert grown / len(keys) < 2_000, f"{grown / len(keys):.0f} bytes per domain"


def test_a_quiet_domain_that_learned_nothing_keeps_only_its_counts() -> None:
    """Quiet for QUIET_SECONDS with no 429, no limit found: the controller
    goes, the counts stay and go on adding up when the domain is back, which
    starts afresh (where a new domain starts)."""
    clock = Clock()
    throttle = make_throttle(clock)
    fresh = make_throttle(Clock()).limit_for("fresh.test")
    for _ in range(20):
        clock.now += 0.05
        answer(throttle, "easy.test")
    assert throttle.domains["easy.test"].controller is not None
    clock.now += QUIET_SECONDS + SWEEP_SECONDS
    answer(throttle, "other.test")  # a sample triggers the sweep
    easy = throttle.domains["easy.test"]
    assert easy.controller is None
    assert easy.counts.answers == 20
    assert throttle.crawler.stats.get_value("justproxies/domains/quiet") == 1
    answer(throttle, "easy.test")
    assert easy.controller is not None
    assert easy.counts.answers == 21
    assert throttle.limit_for("easy.test") == fresh


def test_a_quiet_domain_that_learned_its_limit_keeps_it() -> None:
    """A domain that drew 429s learned a limit: quiet, it keeps its
    controller until IDLE_SECONDS, then its limit is remembered."""
    clock = Clock()
    throttle = make_throttle(clock)
    for i in range(300):
        clock.now += 0.02
        answer(throttle, "strict.test", 429 if i % 3 == 0 else 200)
    learned = throttle.limit_for("strict.test")
    assert throttle.domains["strict.test"].counts.rate_limited > 0
    clock.now += QUIET_SECONDS + SWEEP_SECONDS
    answer(throttle, "other.test")
    assert throttle.domains["strict.test"].controller is not None
    assert throttle.limit_for("strict.test") == learned


def test_a_broad_crawl_keeps_controllers_only_for_the_recent_domains() -> None:
    """20,000 sites visited in turn at 250 requests/s (each seen every 80 s,
    as in the soak benchmark), none rate-limited: the controllers kept are
    those of the last QUIET_SECONDS (+ a sweep), not of every site seen in
    the last IDLE_SECONDS, and the answers are all counted."""
    clock = Clock()
    throttle = make_throttle(clock)
    sites = 20_000
    for n in range(3 * sites):
        clock.now += 1 / 250
        answer(throttle, f"s{n % sites}.test")
    live = sum(1 for d in throttle.domains.values() if d.controller is not None)
    assert live <= (QUIET_SECONDS + SWEEP_SECONDS) * 250 + 1
    assert len(throttle.domains) == sites
    assert sum(d.counts.answers for d in throttle.domains.values()) == 3 * sites


def test_an_eviction_is_counted_in_the_stats() -> None:
    """`justproxies/domains/evicted` counts each domain evicted after
    IDLE_SECONDS idle (3 minutes: a fake clock, not a 3-minute crawl)."""
    clock = Clock()
    throttle = make_throttle(clock)
    for key in ("a.test", "b.test"):
        answer(throttle, key)
    stats = throttle.crawler.stats
    clock.now += IDLE_SECONDS - 1
    answer(throttle, "other.test")  # idle, but not long enough yet
    assert stats.get_value("justproxies/domains/evicted") is None
    clock.now += 1 + SWEEP_SECONDS
    answer(throttle, "other.test")
    assert "a.test" not in throttle.domains and "b.test" not in throttle.domains
    assert stats.get_value("justproxies/domains/evicted") == 2


def test_limit_changes_are_logged_at_most_once_per_log_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """JUSTPROXIES_THROTTLE_LOG_INTERVAL, read as a crawl reads it: within
    the interval the changes wait, and the next line sums them up ("after N
    more changes"); with 0 every change has its line."""

    def lines(interval: float) -> list[str]:
        clock = Clock()
        throttle = JustProxiesThrottle(
            get_crawler(),
            ThrottleConfig.from_settings(
                Settings({"JUSTPROXIES_THROTTLE_LOG_INTERVAL": interval}), {}
            ),
            ControllerSettings(start=4, maximum=50),
            clock=clock,
        )
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="scrapy_justproxies.throttle"):
            for _ in range(400):  # clean and used: about a raise a second
                clock.now += 0.02
                answer(throttle, "grown.test")
        return [r.getMessage() for r in caplog.records if "concurrency" in r.message]

    every = lines(0)
    assert len(every) >= 4, every  # one per change: 4 -> 5, 5 -> 6, ...
    assert not any("more changes" in line for line in every)
    summed = lines(1000)  # the first change, then nothing for 1,000 s
    assert len(summed) == 1, summed
    assert summed[0] == every[0]
    sparse = lines(3)
    assert len(every) > len(sparse) > 1, sparse
    assert "more changes from" in sparse[1]
