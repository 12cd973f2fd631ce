"""One site's budget shared by several crawl processes through Redis
(JUSTPROXIES_SHARED_STATE): the pure policy, the Redis side against Debian's
redis-server, and real crawl processes through the sandbox gateway."""

from __future__ import annotations

import itertools
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from scrapy.settings import Settings
from scrapy.utils.test import get_crawler

from scrapy_justproxies.config import (
    JustProxiesConfigError,
    SharedStateConfig,
    ThrottleConfig,
)
from scrapy_justproxies.controller import (
    ControllerSettings,
    DomainController,
    Learned,
    LimitKind,
)
from scrapy_justproxies.sandbox.crawl import CrawlResult, RunningCrawl, start_crawl
from scrapy_justproxies.sandbox.redis_server import (
    RedisServer,
    server_binary,
)
from scrapy_justproxies.shared import (
    Budget,
    Counts,
    RedisStore,
    Report,
    SharedBudgets,
    SharedPolicy,
    _BeatResult,
    _Site,
    next_budget,
    opening,
    parse_site,
    part_of_rate,
    pooled,
    saturated_rate,
    share_of,
    shares,
)
from scrapy_justproxies.throttle import IDLE_SECONDS, JustProxiesThrottle
from tests.test_crawl import ADDON, assert_no_secret, configure, site, urls

redis = pytest.importorskip("redis")
needs_redis_server = pytest.mark.skipif(
    server_binary() is None, reason="Debian's redis-server is not installed"
)
POLICY = SharedPolicy()


# -- the policy (pure) ---------------------------------------------------------


def test_shares_split_equally_and_sum_to_the_total() -> None:
    demands = {"a": 50, "b": 50, "c": 50}
    assert shares(10, demands) == {"a": 4, "b": 3, "c": 3}
    assert sum(shares(11, demands).values()) == 11
    # The odd request moves on with the turn.
    assert shares(10, demands, turn=1) == {"a": 3, "b": 4, "c": 3}
    assert shares(10, demands, turn=5) == {"a": 3, "b": 3, "c": 4}


def test_a_process_that_needs_less_leaves_the_rest_to_the_others() -> None:
    assert shares(12, {"a": 2, "b": 50, "c": 50}) == {"a": 2, "b": 5, "c": 5}
    # A process with nothing to do still gets one place, to start with.
    assert shares(12, {"a": 0, "b": 50}) == {"a": 1, "b": 11}
    # Nobody needs the whole total: nobody gets more than they need.
    assert shares(12, {"a": 2, "b": 3}) == {"a": 2, "b": 3}
    assert share_of(3, {"a": 9, "b": 9, "c": 9, "d": 9}, "d") == 1


def test_pooled_sums_whole_seconds_and_spans_from_the_first_answer() -> None:
    buckets = {100: Counts(10, 1, 9, 1800), 101: Counts(20, 0, 20, 4000)}
    total, span = pooled(buckets, 97.5, 102)
    assert total == Counts(30, 1, 29, 5800)
    assert span == 2  # not diluted by the seconds before anybody answered
    assert pooled(buckets, 100.5, 102) == (Counts(20, 0, 20, 4000), 1)


def _steady(start: int, end: int, ok: int, limited: int, ms: int) -> dict[int, Counts]:
    return {s: Counts(ok + limited, limited, ok, ok * ms) for s in range(start, end)}


def _probe_gains(
    start: Budget, reports: list[Report], *, since: int, ok: int, at: tuple[float, ...]
) -> list[float]:
    """The rate's step at each probe from ``start``, clean seconds from
    ``since`` at ``ok`` answers each, judged at the times ``at``."""
    steps = [start]
    for now in at:
        more = _steady(since, int(now), ok=ok, limited=0, ms=300)
        step = next_budget(steps[-1], more, reports, now, POLICY)
        assert step is not None and step.rate is not None
        steps.append(step)
    return [b.rate / a.rate - 1 for a, b in itertools.pairwise(steps)]  # type: ignore[operator]


def test_a_pooled_climb_cuts_the_total_to_what_the_site_admitted() -> None:
    """Three processes at 4 each: the site admits 50/s at 0.2 s, Little's
    law says 10 in flight; they drew 429s at 12."""
    reports = [Report(limit=4, share=0, demand=16)] * 3
    buckets = _steady(96, 100, ok=50, limited=10, ms=200)
    budget = next_budget(None, buckets, reports, 100.3, POLICY)
    assert budget is not None
    assert budget.total == 10
    assert budget.overload == 12
    assert budget.rate == pytest.approx(50)
    assert budget.answer_time == pytest.approx(0.2)


def test_a_climb_during_the_ramp_cuts_to_the_saturated_seconds_rate() -> None:
    """Measured with three processes: 16 admitted in the first second (still
    ramping), 50 and 17 429s in the next. The site admits 50/s, not the
    window's mean of 33/s: at 0.2 s that is 10 in flight, not 6."""
    reports = [Report(limit=6, share=0, demand=16)] * 3
    buckets = {98: Counts(16, 0, 16, 16 * 200), 99: Counts(67, 17, 50, 50 * 200)}
    budget = next_budget(None, buckets, reports, 100.3, POLICY)
    assert budget is not None
    assert budget.rate == pytest.approx(50)
    assert budget.total == 10


def test_a_second_a_beat_short_is_scaled_to_one_beat_per_process() -> None:
    """A beat that lands a second late leaves its second a process short:
    its clean answers are two thirds of the site's rate (measured: 45 on a
    50 req/s site, and the processes paced below it for the rest of the
    crawl). Scaled by the time the beats cover, per process."""
    short = Counts(40, 7, 33, 33 * 200, span_ms=2000)  # two beats of three
    long = Counts(67, 0, 67, 67 * 200, span_ms=4000)  # and four
    buckets = {100: short, 101: long}
    assert saturated_rate(buckets, 99.5, 102) == pytest.approx(33)  # unscaled
    assert saturated_rate(buckets, 99.5, 102, processes=3) == pytest.approx(49.5)
    assert Counts.decode(short.encode()) == short
    assert Counts.decode("5,1,4,800") == Counts(5, 1, 4, 800)  # the version before


def test_a_cold_site_is_seeded_at_its_first_request_as_one_process() -> None:
    """Issue 11: the budget was seeded only once a whole second of pooled
    answers was in, so each of three processes opened with its own slow
    start (together three times one's first volley, and each paced at a
    rate guessed from its third of the answers: about 30 429s in the first
    second). The first heartbeat now comes before the first request, with
    no answers: the opening starts at one process's start level."""
    reports = [Report(limit=4, share=0, demand=1)]
    opened = next_budget(None, {}, reports, 100.3, POLICY)
    assert opened == Budget(4, 100.3)
    assert opening(opened)
    # Already admitted more than any one process's limit: start there.
    three = [Report(limit=4, share=0, demand=16), Report(6, 0, 16)] * 2
    busy = _steady(96, 100, ok=50, limited=0, ms=200)  # 50/s x 0.2 s = 10
    assert next_budget(None, busy, three, 100.3, POLICY) == Budget(10, 100.3)
    assert next_budget(None, {}, [], 100.3, POLICY) is None


def test_the_opening_follows_the_levels_the_processes_grew_to() -> None:
    """The opening's total grew a quarter per two clean seconds: 4 to 10
    takes eight seconds, where one process's slow start takes one. Each
    process grows its own level per clean answer; the total is their sum
    (the most each reached), without moving the opening's start."""
    opened = Budget(4, 100.3)
    reports = [Report(limit=8, share=2, demand=99), Report(6, 1, 99), Report(5, 1, 99)]
    clean = _steady(100, 102, ok=40, limited=0, ms=200)
    grown = next_budget(opened, clean, reports, 102.5, POLICY)
    assert grown is not None
    assert (grown.total, grown.changed_at) == (19, 100.3)
    assert opening(grown)
    # Levels below the total (a process halved at a 429): the total stays.
    low = [Report(limit=2, share=6, demand=99)] * 3
    assert next_budget(grown, clean, low, 102.5, POLICY) is None


def test_the_opening_climb_is_measured_after_its_first_second() -> None:
    """Measured (cluster-3 at main): 23 admitted and 3 refused in the
    opening's first second (an answer time without answers, the site's
    burst), 50 and 30 in the next. The mean of the seconds with 429s, 36.5/s,
    cut to 35/s on a 50 req/s site and twelve seconds of probing back up.
    Judged on its first second alone, the climb waits a heartbeat; then the
    rate is the best second after the first."""
    opened = Budget(4, 99.4)
    reports = [Report(limit=6, share=2, demand=99)] * 3
    first = {99: Counts(26, 3, 23, 23 * 200, 3000)}
    assert next_budget(opened, first, reports, 100.5, POLICY) is None
    both = {**first, 100: Counts(80, 30, 50, 50 * 200, 3000)}
    cut = next_budget(opened, both, reports, 101.5, POLICY)
    assert cut is not None
    assert cut.rate == pytest.approx(50.0)
    assert cut.total == 10  # 50/s x 0.2 s
    assert cut.overload == 18  # the levels that drew the 429s
    assert not opening(cut) and not cut.measured_paced
    # Halved at the first 429s, the processes sent less than the site
    # admits in the seconds after: clean, they are a floor, not its rate
    # (measured: cut to 42/s on a 50 req/s site). No cut; the processes grow
    # again, and their next climb is measured.
    floor = {**first, 100: Counts(42, 0, 42, 42 * 200, 3000)}
    assert next_budget(opened, floor, reports, 101.5, POLICY) is None
    again = {**floor, 101: Counts(60, 9, 51, 51 * 200, 3000)}
    cut = next_budget(opened, again, reports, 102.5, POLICY)
    assert cut is not None and cut.rate == pytest.approx(51.0)


def test_a_redis_that_came_back_empty_is_seeded_from_the_known_budget() -> None:
    """The first process back alone re-seeds the whole budget it knew, not
    its share: the others rejoin in the next second."""
    reports = [Report(4, 4, 16, total=11)]
    budget = next_budget(None, {}, reports, 100.0, POLICY)
    assert budget is not None
    assert (budget.total, budget.overload) == (11, 12)  # settled, not growing
    assert budget.rate is None


def test_a_redis_that_came_back_empty_is_seeded_paced_at_the_known_rate() -> None:
    """Without the rate, the processes would go unpaced until a climb
    measured it again."""
    reports = [Report(4, 4, 16, total=11, rate_mhz=49_500)]
    budget = next_budget(None, {}, reports, 100.0, POLICY)
    assert budget is not None
    assert (budget.total, budget.rate, budget.measured_paced) == (11, 49.5, True)


def test_clean_and_used_the_total_is_probed_and_a_failed_probe_goes_back() -> None:
    # (A settled in-flight budget: no rate measured, so no pace to probe.)
    current = Budget(total=10, changed_at=80.0, overload=11)
    reports = [Report(4, 4, 16), Report(3, 3, 16), Report(3, 3, 16)]
    clean = _steady(81, 100, ok=50, limited=0, ms=200)
    assert next_budget(current, clean, reports, 85.5, POLICY) is None  # too soon
    probed = next_budget(current, clean, reports, 100.5, POLICY)
    assert probed is not None
    assert (probed.total, probed.last_good) == (11, 10)
    # The probe draws 429s: back to the clean total.
    after = {**clean, **_steady(101, 104, ok=50, limited=6, ms=200)}
    cut = next_budget(probed, after, reports, 104.2, POLICY)
    assert cut is not None and cut.total == 10


def test_each_process_is_paced_at_its_part_of_the_measured_rate() -> None:
    """Issue 11: each process's own controller paced it at a rate learned
    from its third of the answers, each its own: one held back, the site
    under-used and the processes finishing apart. The pooled climb measures
    the site's rate; each process sends its share's part of it."""
    budget = Budget(total=16, changed_at=1.0, rate=50.0, answer_time=0.3)
    parts = [
        part_of_rate(budget, share, POLICY)
        for share in shares(16, {"a": 99, "b": 99, "c": 99}).values()
    ]
    assert sum(p for p in parts if p) == pytest.approx(50 * (1 - POLICY.pace_margin))
    # Alone on the site (the others finished): the whole rate at once.
    assert part_of_rate(budget, 16, POLICY) == pytest.approx(49.0)
    # Not measured yet (no pooled climb): not paced.
    assert part_of_rate(Budget(total=16, changed_at=1.0), 16, POLICY) is None


def test_paced_clean_and_held_by_the_pace_the_rate_is_probed_up() -> None:
    current = Budget(total=16, changed_at=80.0, rate=45.0, answer_time=0.3)
    reports = [Report(6, 6, 99), Report(5, 5, 99), Report(5, 5, 99)]
    held = _steady(81, 90, ok=44, limited=0, ms=300)
    assert next_budget(current, held, reports, 81.5, POLICY) is None  # too soon
    probed = next_budget(current, held, reports, 85.5, POLICY)
    assert probed is not None
    # Measured at the first climb, unpaced: a big step, soon.
    assert probed.rate == pytest.approx(45.0 * (1 + POLICY.first_rate_step))
    # Two whole seconds at the pace since the change, not one (a token
    # bucket's burst hides an overshoot for a second).
    more = _steady(81, 89, ok=80, limited=0, ms=300)
    assert next_budget(probed, more, reports, 88.5, POLICY) is None
    # Each step doubles, up to twice the first.
    gains = _probe_gains(probed, reports, since=81, ok=80, at=(89.5, 93.5, 97.5))
    first = POLICY.first_rate_step
    assert gains == pytest.approx([2 * first, 2 * first, 2 * first])
    assert probed.total == 16
    # Answers well below the pace (something else holds them): no probe.
    slow = _steady(81, 90, ok=20, limited=0, ms=300)
    assert next_budget(current, slow, reports, 85.5, POLICY) is None
    # The probe draws 429s: the climb measures the rate again.
    # Paced at 45.9/s, the site admits 44 of 46 answers a second: the
    # pace times the share of clean answers, a ratio that a second holding
    # an extra beat (four processes' answers in it) does not move.
    assert probed.rate is not None
    pace = probed.rate * (1 - POLICY.pace_margin)
    after = {**held, **_steady(86, 90, ok=44, limited=2, ms=300)}
    after[88] = Counts(61, 3, 58, 58 * 300)
    cut = next_budget(probed, after, reports, 90.2, POLICY)
    assert cut is not None and cut.rate is not None
    assert cut.rate == pytest.approx(pace * (44 + 44 + 58) / (46 + 46 + 61))
    assert cut.measured_paced
    # Measured paced: the site's rate; one small step, after a while.
    later = _steady(91, 110, ok=44, limited=0, ms=300)
    assert next_budget(cut, later, reports, 94.5, POLICY) is None
    again = next_budget(cut, later, reports, 95.5, POLICY)
    assert again is not None
    assert again.rate == pytest.approx(cut.rate * (1 + POLICY.rate_step))
    # The next ones double, up to four times the first (a rate measured
    # low is found again in a few steps).
    gains = _probe_gains(again, reports, since=91, ok=47, at=(101.5, 107.5, 113.5))
    first = POLICY.rate_step
    assert gains == pytest.approx([2 * first, 4 * first, 4 * first])


def test_paced_the_rate_is_probed_while_the_total_is_below_its_overload() -> None:
    """Measured (cluster-3 at main): a paced climb cut the rate to 45/s on a
    50 req/s site and the total to 10 (16 drew the 429s). The total grew
    back at half pace every two seconds, each step moving the last change
    on, so the rate's probe (five seconds after the last change) waited
    until it was done: twenty seconds at 90% of the rate. Paced, the total
    follows the rate, and the rate is probed."""
    cut = Budget(
        total=10, changed_at=80.0, rate=45.0, answer_time=0.2, overload=16,
        measured_paced=True,
    )  # fmt: skip
    reports = [Report(5, 4, 99), Report(5, 3, 99), Report(5, 3, 99)]
    held = _steady(81, 90, ok=44, limited=0, ms=200)
    assert next_budget(cut, held, reports, 83.5, POLICY) is None  # no regrow
    probed = next_budget(cut, held, reports, 85.5, POLICY)
    assert probed is not None
    assert probed.rate == pytest.approx(45.0 * (1 + POLICY.rate_step))
    assert probed.total == 10  # 45.9/s x 0.2 s = 9.2 in flight: room enough


def test_a_rate_is_not_probed_after_a_429_at_it() -> None:
    """Within the tolerated share, a few 429s at the pace are a token
    bucket's burst running out: the pace is at the site's rate already
    (measured: the probes went on to 12% above it, then 12 429s)."""
    current = Budget(total=10, changed_at=80.0, rate=50.0, answer_time=0.2)
    reports = [Report(5, 4, 99), Report(5, 3, 99), Report(5, 3, 99)]
    held = _steady(81, 90, ok=49, limited=0, ms=200)
    assert next_budget(current, held, reports, 85.5, POLICY) is not None
    held[83] = Counts(50, 1, 49, 49 * 200)  # one in 240: tolerated, not clean
    assert next_budget(current, held, reports, 85.5, POLICY) is None
    # 429s long past do not hold the probes off for good: measured, a burst
    # of them as the processes rejoined a Redis back from an outage kept
    # the window since the change unclean, and the rate 11% low, for the
    # rest of the crawl.
    held[82] = Counts(67, 17, 50, 50 * 200)
    assert next_budget(current, held, reports, 87.5, POLICY) is not None


def test_an_unused_total_is_never_probed() -> None:
    current = Budget(total=10, changed_at=80.0)
    reports = [Report(4, 4, 2), Report(3, 3, 2), Report(3, 3, 2)]
    clean = _steady(81, 100, ok=6, limited=0, ms=200)
    assert next_budget(current, clean, reports, 100.5, POLICY) is None


def test_after_a_deep_cut_the_total_grows_back_at_half_pace() -> None:
    current = Budget(total=4, changed_at=90.0, overload=12)
    reports = [Report(2, 2, 16), Report(1, 1, 16), Report(1, 1, 16)]
    clean = _steady(91, 100, ok=20, limited=0, ms=200)
    grown = next_budget(current, clean, reports, 93.5, POLICY)
    assert grown is not None and grown.total == 8


class _NoSlots:
    """A guard without download slots: nothing in flight, nothing waiting."""

    def slot(self, key: str) -> None:
        return None

    def demand(self, key: str) -> int:
        return 0


def _unstarted(guard: Any, crawler: Any = None) -> SharedBudgets:
    """Shared budgets with no Redis store and no heartbeat running: the
    tests call its steps and feed it heartbeat results themselves."""
    return SharedBudgets(
        crawler or get_crawler(),
        SharedStateConfig(),
        None,  # type: ignore[arg-type]
        guard,
        lambda key: 4,
        60.0,
    )


def test_a_site_idle_since_it_left_is_forgotten() -> None:
    """Broad crawls: a site this process has left (no lease) and that stays
    idle as long as the throttle's eviction is dropped from the heartbeat's
    list, instead of being kept and visited every second for the whole
    crawl."""
    shared = _unstarted(_NoSlots())
    left: list[str] = []

    def dispatch(key: str, state: Any, io: Callable[..., Any], *args: Any) -> None:
        if io == shared._leave_io:
            left.append(key)

    shared._dispatch = dispatch  # type: ignore[method-assign]
    for i in range(100):
        shared.record(f"s{i}.test", rate_limited=False, ok=True, seconds=0.1)
    shared._beat()  # the answers: a heartbeat (and a lease) each
    for _ in range(POLICY.lease_beats + 1):
        shared._beat()
    assert len(left) == 100  # idle for a lease time: each site left once
    beats = math.ceil(IDLE_SECONDS / POLICY.beat_seconds)
    for _ in range(beats):
        shared._beat()
    assert shared.sites == {}
    shared.record("s1.test", rate_limited=False, ok=True, seconds=0.1)
    assert list(shared.sites) == ["s1.test"]  # back: it rejoins


class _Slots(_NoSlots):
    """A guard with work waiting: records the concurrency it is told."""

    def __init__(self) -> None:
        self.concurrency: list[int] = []
        self.waiting = 99

    def demand(self, key: str) -> int:
        return self.waiting

    def set_concurrency(self, key: str, concurrency: int) -> None:
        self.concurrency.append(concurrency)


def test_a_process_joins_before_its_first_request_and_grows_its_part(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 11: each process opened with its own slow start until a second
    of pooled answers was in. The site's first heartbeat now goes out as its
    slot is made: one request at a time until the share is back (a few
    milliseconds); then, while the budget is in its opening, the slot grows
    by one per clean answer with work waiting (three processes together as
    one slow start), halves at its first 429 and stops growing; the first
    climb ends the opening, and the share governs."""
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    guard = _Slots()
    shared = _unstarted(guard)
    sent: list[Any] = []

    def dispatch(key: str, state: Any, io: Callable[..., Any], *args: Any) -> None:
        sent.append(args)

    shared._dispatch = dispatch  # type: ignore[method-assign]
    key = "s.test"
    assert shared.effective(key, 4) == 4  # not started: its own controller
    assert key not in shared.sites
    shared._pool = object()  # type: ignore[assignment]
    assert shared.effective(key, 4) == 1  # joining: one at a time
    assert len(sent) == 1
    _key, report, counts = sent[0]
    assert (report.limit, report.share, counts.answers) == (4, 0, 0)
    assert shared.effective(key, 4) == 1 and len(sent) == 1  # one beat
    opened = _BeatResult(key, share=2, total=4, processes=2, opening=True, version=0)
    shared._applied(key, shared.sites[key], opened)
    assert shared.effective(key, 4) == 2 and guard.concurrency[-1] == 2
    for _ in range(3):
        shared.record(key, rate_limited=False, ok=True, seconds=0.2)
    assert shared.effective(key, 4) == 5 and guard.concurrency[-1] == 5
    guard.waiting = 5  # no more work than that: no more growth
    shared.record(key, rate_limited=False, ok=True, seconds=0.2)
    assert shared.effective(key, 4) == 5
    guard.waiting = 99
    shared.record(key, rate_limited=True, ok=False, seconds=0.1)
    assert shared.effective(key, 4) == 3 and guard.concurrency[-1] == 3
    clock[0] += 0.05
    shared.record(key, rate_limited=True, ok=False, seconds=0.1)
    shared.record(key, rate_limited=False, ok=True, seconds=0.2)
    assert shared.effective(key, 4) == 3  # sent before the halving; stopped
    # A 429 to a request sent after the halving: still too many, halved again.
    clock[0] += 0.3
    shared.record(key, rate_limited=True, ok=False, seconds=0.2)
    assert shared.effective(key, 4) == 2 and guard.concurrency[-1] == 2
    # It reports the most it reached since its last heartbeat.
    sent.clear()
    shared._beat()
    assert sent[0][1].limit == 5
    # The first climb ends the opening: its share of the cut total governs.
    shared.sites[key].beating = False
    cut = _BeatResult(key, share=4, total=10, processes=3, version=1)
    shared._applied(key, shared.sites[key], cut)
    assert shared.effective(key, 4) == 4 and shared.sites[key].level is None


def test_processes_rejoining_an_emptied_redis_keep_their_share_a_lease_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis came back empty: the first process back sees only itself and
    gets the whole re-seeded budget, the next half of it, while the others
    still send their outage shares (measured: 15-31 429s in the second they
    rejoined). For a lease time after it is reachable again, a process
    takes no more than the share it held through the outage, paced at its
    part of the rate; after that, the split of everybody back."""
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    guard = _Slots()
    shared = _unstarted(guard)
    key = "s.test"
    shared.sites[key] = site = _Site(share=4, total=12, pace=16.2, rate=49.5)
    error = _BeatResult(key, error="Connection refused")
    shared._applied(key, site, error)
    assert not shared.reachable
    clock[0] += 10.0  # the outage
    alone = _BeatResult(key, share=12, total=12, pace=48.5, rate=49.5, processes=1)
    shared._applied(key, site, alone)
    assert shared.reachable
    assert site.share == 4 and site.pace == pytest.approx(48.5 * 4 / 12)
    assert shared.effective(key, 4) == math.ceil(4 * POLICY.pace_headroom) + 1
    clock[0] += 1.0
    pair = _BeatResult(key, share=6, total=12, pace=24.3, rate=49.5, processes=2)
    shared._applied(key, site, pair)
    assert site.share == 4 and site.pace == pytest.approx(24.3 * 4 / 6)
    clock[0] += POLICY.lease_seconds  # all back, or gone for good
    shared._applied(key, site, pair)
    assert (site.share, site.pace) == (6, 24.3)
    # A share that shrinks is taken at once, rejoining or not.
    shared._rejoined_at = clock[0]
    trio = _BeatResult(key, share=3, total=9, pace=16.2, rate=49.5, processes=3)
    shared._applied(key, site, trio)
    assert (site.share, site.pace) == (3, 16.2)


def test_a_governed_slot_is_paced_at_its_part_not_by_its_own_controller() -> None:
    """Issue 11: with a shared budget, each process's own controller paced
    its slot at a rate learned from its part of the answers (each its own:
    measured, 79% of the site's rate admitted, one process 14 s behind).
    While the budget governs, the slot takes its part of the pooled rate,
    with room in flight; without Redis, its own controller again."""
    crawler = get_crawler()
    throttle = JustProxiesThrottle(
        crawler,
        ThrottleConfig(),
        ControllerSettings(start=4, maximum=50),
    )
    shared = throttle.shared = _unstarted(_NoSlots(), crawler)
    key = "s.test"
    now = throttle.clock()
    # Its own controller paces it at 10/s (a rate it learned alone).
    learned = Learned(4, 10.0, LimitKind.RATE, 0.3, now, 0)
    throttle._domain(key, now).controller = DomainController(
        throttle.controller_settings, now, learned=learned
    )
    assert throttle.pace_for(key) == pytest.approx(1 / (10.0 * 0.98))
    shared.sites[key] = _Site(share=6, total=16, pace=18.4, answer_time=0.3)
    assert throttle.pace_for(key) == pytest.approx(1 / 18.4)
    assert throttle.limit_for(key) == math.ceil(6 * POLICY.pace_headroom) + 1
    # Before the site's rate is measured: the share alone, unpaced.
    shared.sites[key] = _Site(share=6, total=16)
    assert throttle.pace_for(key) is None
    assert throttle.limit_for(key) == 6
    # Redis away: its own controller again, capped by the share.
    shared.sites[key] = _Site(share=6, total=16, pace=18.4, answer_time=0.3)
    shared.reachable = False
    assert throttle.pace_for(key) == pytest.approx(1 / (10.0 * 0.98))
    assert throttle.limit_for(key) <= 6


def test_budget_and_report_round_trip() -> None:
    budget = Budget(10, 123.5, 49.7, 0.21, 9, 12, measured_paced=True, version=3)
    assert Budget.decode({**budget.encode(), "version": "3"}) == budget
    assert Budget.decode({"total": "x"}) is None
    assert Report.decode(Report(5, 4, 16, 12, 1).encode()) == Report(5, 4, 16, 12, 1)
    assert Report.decode("5,4,16,12") == Report(5, 4, 16, 12)  # the version before


# -- settings --------------------------------------------------------------------


def shared_config(**values: Any) -> SharedStateConfig:
    return SharedStateConfig.from_settings(Settings(values), {})


def test_unset_shares_nothing() -> None:
    assert not shared_config().enabled


def test_url_parts_and_the_password_stay_out_of_repr() -> None:
    config = shared_config(
        JUSTPROXIES_SHARED_STATE="rediss://:s3cr%40t@redis.internal:6380/2"
    )
    assert (config.host, config.port, config.db, config.tls) == (
        "redis.internal",
        6380,
        2,
        True,
    )
    assert config.password.reveal() == "s3cr@t"
    assert config.url == "rediss://:***@redis.internal:6380/2"
    assert "s3cr" not in repr(config)


@pytest.mark.parametrize(
    "value",
    ["http://localhost:6379", "redis://", "redis://host:6379/zero", "redis://h:x"],
)
def test_bad_url_is_a_startup_error_naming_the_setting(value: str) -> None:
    with pytest.raises(JustProxiesConfigError, match="JUSTPROXIES_SHARED_STATE"):
        shared_config(JUSTPROXIES_SHARED_STATE=value)


def test_bad_prefix_is_refused() -> None:
    with pytest.raises(JustProxiesConfigError, match="_PREFIX"):
        shared_config(
            JUSTPROXIES_SHARED_STATE="redis://h:1/0",
            JUSTPROXIES_SHARED_STATE_PREFIX="a b",
        )


# -- the Redis side, against a real redis-server ----------------------------------


def store_for(server: RedisServer, policy: SharedPolicy = POLICY) -> RedisStore:
    return RedisStore(shared_config(JUSTPROXIES_SHARED_STATE=server.url), policy)


def test_store_pools_answers_by_redis_second_and_expires_leases(
    redis_server: RedisServer,
) -> None:
    policy = SharedPolicy(beat_seconds=0.1, lease_beats=3)  # 0.3 s leases
    store = store_for(redis_server, policy)
    a = store.beat("s.test", "a", Report(4, 0, 9), Counts(5, 1, 4, 800), 600)
    b = store.beat("s.test", "b", Report(3, 0, 9), Counts(7, 0, 7, 1400), 600)
    assert set(b.reports) == {"a", "b"}
    assert b.reports["a"] == Report(4, 0, 9)
    assert sum(b.buckets.values(), Counts()) == Counts(12, 1, 11, 2200)
    assert a.now <= b.now
    time.sleep(0.5)  # a misses its heartbeats
    again = store.beat("s.test", "b", Report(3, 0, 9), Counts(), 600)
    assert set(again.reports) == {"b"}
    store.leave("s.test", "b")
    assert store.beat("s.test", "c", Report(1, 0, 1), Counts(), 600).reports.keys() == {
        "c"
    }


def test_store_writes_the_budget_with_compare_and_set(
    redis_server: RedisServer,
) -> None:
    store = store_for(redis_server)
    assert store.write("s.test", Budget(10, 1.0), expected=0, ttl=600) == 1
    assert store.write("s.test", Budget(11, 2.0), expected=0, ttl=600) == -1
    snap = store.beat("s.test", "a", Report(1, 0, 1), Counts(), 600)
    assert snap.budget == Budget(10, 1.0, version=1)


def commands(db: Any) -> dict[str, int]:
    """Calls per command so far, as INFO commandstats counts them (the
    commands a script runs included)."""
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in db.info("commandstats").items()
    }


def test_a_heartbeat_costs_redis_four_commands_at_most_on_average(
    redis_server: RedisServer,
) -> None:
    """Issue 11: at most 5 commands per second per process per active site,
    counting those a script runs. A beat is EVALSHA, TIME, HGETALL and HSET;
    pruning and the expiry come once in five seconds for everybody."""
    store = store_for(redis_server)
    db = client(redis_server)
    store.write("s.test", Budget(10, 1.0), expected=0, ttl=600)
    store.beat("s.test", "a", Report(4, 0, 9), Counts(5, 1, 4, 800), 600)
    before = commands(db)
    beats = 0
    deadline = time.monotonic() + 6.2  # every second of a five-second cycle
    while time.monotonic() < deadline:
        for process in ("a", "b", "c"):
            store.beat("s.test", process, Report(4, 3, 9), Counts(5, 0, 5, 900), 600)
            beats += 1
        time.sleep(0.25)
    spent = {k: v - before.get(k, 0) for k, v in commands(db).items() if k != "info"}
    assert spent["evalsha"] == beats
    # Pruning and refreshing the expiry: once per five seconds, not per beat.
    assert spent.get("hdel", 0) <= 2
    assert spent.get("expire", 0) <= 2
    assert sum(spent.values()) <= 4 * beats + 4
    # The whole state of a site is one key, and it expires.
    assert db.keys("justproxies:*") == ["justproxies:{s.test}"]
    assert 0 < db.ttl("justproxies:{s.test}") <= 600


def test_stale_leases_and_seconds_are_pruned(redis_server: RedisServer) -> None:
    policy = SharedPolicy(beat_seconds=0.1, lease_beats=3, keep_seconds=1)
    store = store_for(redis_server, policy)
    db = client(redis_server)
    store.beat("s.test", "gone", Report(1, 0, 1), Counts(1, 0, 1, 100), 600)
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        store.beat("s.test", "a", Report(1, 0, 1), Counts(1, 0, 1, 100), 600)
        fields = db.hkeys("justproxies:{s.test}")
        if "p:gone" not in fields and len(fields) <= 4:
            break
        time.sleep(0.2)
    fields = db.hkeys("justproxies:{s.test}")
    assert "p:gone" not in fields
    # This process's lease and the few seconds kept (keep_seconds plus the
    # ones since the last prune).
    assert len([f for f in fields if f.startswith("s:")]) <= 7


# -- real crawl processes through the sandbox gateway -----------------------------

HOST = "shared.test"
SITE = {
    "rate": 30,
    "burst": 6,
    "latency_p50_ms": 150,
    "latency_p95_ms": 250,
    "retry_after": "seconds",
    "pages": 1000,
}


def site_key(prefix: str = "justproxies") -> str:
    """The site's one hash: budget, leases and reports, pooled seconds."""
    return f"{prefix}:{{{HOST}}}"


def client(server: RedisServer) -> Any:
    return redis.Redis(
        host="127.0.0.1",
        port=server.port,
        password=server.password,
        decode_responses=True,
    )


def start_three(
    sandbox: Any,
    gateway_env: dict[str, str],
    tmp_path: Path,
    reactor: str,
    server: RedisServer | None,
    per_process: int,
    count: int = 3,
    **extra: Any,
) -> list[RunningCrawl]:
    settings: dict[str, Any] = {
        **ADDON,
        "JUSTPROXIES_STATE_FILE": None,
        "CONCURRENT_REQUESTS": 32,
        **extra,
    }
    if server is not None:
        # In the settings, not the environment: the worst place for a password.
        settings["JUSTPROXIES_SHARED_STATE"] = server.url
    crawls = []
    for index in range(count):
        requests = urls(sandbox, HOST, per_process * count)[index::count]
        crawls.append(
            start_crawl(
                tmp_path / f"p{index}",
                reactor=reactor,
                requests=requests,
                settings=settings,
                env={**gateway_env, "JUSTPROXIES_POOL": "residential"},
                log_level="INFO",
            )
        )
    return crawls


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll until ``check()`` is truthy (not a timed assertion: the deadline
    only stops a broken run from hanging)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"never saw {what}")


def live_state(db: Any) -> tuple[dict[str, int], int | None, bool]:
    """Each live process's reported share, the site's budget, and whether
    it is still in its shared opening (each process grows its own part
    until the 429s first climb: parts need not be equal then)."""
    seconds, micros = db.time()
    snap = parse_site(db.hgetall(site_key()), int(seconds) * 1000 + int(micros) // 1000)
    share = {p: r.share for p, r in snap.reports.items()}
    budget = snap.budget
    return share, budget.total if budget else None, budget is None or opening(budget)


def finish(crawls: list[RunningCrawl]) -> list[CrawlResult]:
    return [crawl.wait(240) for crawl in crawls]


def assert_all_fetched(results: list[CrawlResult], per_process: int) -> None:
    for result in results:
        assert result.reason == "finished", result.output[-3000:]
        assert result.statuses == {200: per_process}, result.statuses
        # (the stats are taken before the last spider_closed handlers run)
        assert "] ERROR:" not in result.log, result.log[-3000:]


def assert_no_redis_secret(results: list[CrawlResult], server: RedisServer) -> None:
    for result in results:
        assert server.password not in result.everything_written()


@needs_redis_server
def test_three_processes_share_one_budget(
    sandbox: Any,
    gateway_env: dict[str, str],
    reactor: str,
    tmp_path: Path,
    redis_server: RedisServer,
) -> None:
    configure(sandbox, {HOST: SITE})
    db = client(redis_server)
    crawls = start_three(sandbox, gateway_env, tmp_path, reactor, redis_server, 150)

    def all_three_hold_equal_shares_of_the_budget() -> Any:
        # Past the opening: equal parts of one budget (the odd places
        # rotate), summing to it.
        share, total, in_opening = live_state(db)
        if len(share) != 3 or not total or in_opening or not all(share.values()):
            return None
        equal = max(share.values()) - min(share.values()) <= 1
        return share if equal and sum(share.values()) == total else None

    wait_for(all_three_hold_equal_shares_of_the_budget, 60, "three equal shares")
    results = finish(crawls)
    assert_all_fetched(results, 150)
    for result in results:
        stats = result.stats
        assert stats[f"justproxies/shared/processes_max/{HOST}"] == 3
        assert stats["justproxies/shared/heartbeats"] > 0
        # What a process applied was its share, never more than the budget.
        assert stats[f"justproxies/shared/share/{HOST}"] >= 1
        assert (
            stats[f"justproxies/shared/share/{HOST}"]
            <= stats[f"justproxies/shared/site_limit/{HOST}"]
        )
        assert "justproxies/shared/unreachable" not in stats
        assert "justproxies/shared/errors" not in stats
        assert_no_secret(result, sandbox)
    # The budget was set (and moved) by the site's leader: some process
    # decided each change, and counted it.
    decided = [r.stats.get("justproxies/shared/budget_changes", 0) for r in results]
    assert sum(decided) >= 1, decided
    assert_no_redis_secret(results, redis_server)
    # Every process gave its lease back when it closed.
    assert not [f for f in db.hkeys(site_key()) if f.startswith("p:")]
    assert site(sandbox, HOST)["admitted"] == 450


@needs_redis_server
def test_a_killed_process_loses_its_lease_and_the_others_take_its_share(
    sandbox: Any,
    gateway_env: dict[str, str],
    tmp_path: Path,
    redis_server: RedisServer,
) -> None:
    configure(sandbox, {HOST: SITE})
    db = client(redis_server)
    crawls = start_three(sandbox, gateway_env, tmp_path, "asyncio", redis_server, 300)

    def three_settled() -> Any:
        share, total, _ = live_state(db)
        ok = len(share) == 3 and total and total >= 3 and all(share.values())
        return (share, total) if ok and sum(share.values()) == total else None

    before, total_before = wait_for(three_settled, 60, "three leased shares")
    victim = crawls.pop(0)
    os.kill(victim.process.pid, signal.SIGKILL)
    victim.wait(30)

    def two_left_with_the_whole_budget() -> Any:
        share, total, _ = live_state(db)
        ok = len(share) == 2 and total and sum(share.values()) == total
        return (share, total) if ok else None

    after, total_after = wait_for(
        two_left_with_the_whole_budget, 30, "the lease expire"
    )
    assert set(after) < set(before)
    # Before, the two survivors held part of the budget; now all of it (the
    # budget itself may have moved meanwhile: the site is still judged).
    assert sum(before[p] for p in after) < total_before
    assert sum(after.values()) == total_after
    results = finish(crawls)
    assert_all_fetched(results, 300)


@needs_redis_server
def test_redis_stopped_and_started_again_mid_crawl_loses_no_url(
    sandbox: Any,
    gateway_env: dict[str, str],
    reactor: str,
    tmp_path: Path,
    redis_server: RedisServer,
) -> None:
    configure(sandbox, {HOST: SITE})
    db = client(redis_server)
    crawls = start_three(sandbox, gateway_env, tmp_path, reactor, redis_server, 200)
    # All three joined (the budget exists from the first process's first
    # request: stopping Redis then would stop the others at their start-up,
    # as JUSTPROXIES_SHARED_STATE_REQUIRED says).
    wait_for(
        lambda: len(live_state(db)[0]) == 3 and live_state(db)[1], 60, "three joined"
    )
    redis_server.stop()
    time.sleep(3)  # the outage: three heartbeats fail
    redis_server.start()
    db = client(redis_server)
    # Back, empty (no persistence): the processes rejoin and re-seed it.
    wait_for(lambda: len(live_state(db)[0]) == 3, 30, "the processes rejoin")
    wait_for(lambda: live_state(db)[1], 30, "the budget re-established")
    results = finish(crawls)
    assert_all_fetched(results, 200)
    for result in results:
        assert result.stats["justproxies/shared/unreachable"] == 1
        assert result.stats["justproxies/shared/errors"] >= 1  # failed heartbeats
        assert result.log.count("is unreachable") == 1  # one warning per outage
        assert "reachable again" in result.log
    assert_no_redis_secret(results, redis_server)


@needs_redis_server
def test_unreachable_redis_at_start_stops_the_crawl_before_any_request(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    configure(sandbox, {HOST: SITE})
    server = RedisServer(password="never-shown-pw")  # never started
    crawls = start_three(sandbox, gateway_env, tmp_path, "asyncio", server, 5, count=1)
    [result] = finish(crawls)
    assert result.returncode != 0 or result.reason is None
    written = result.output + result.log
    assert "JUSTPROXIES_SHARED_STATE: cannot reach Redis" in written
    assert "JUSTPROXIES_SHARED_STATE_REQUIRED" in written
    assert "never-shown-pw" not in result.everything_written()
    assert sandbox.client.stats()["gateway"]["requests"] == 0


@needs_redis_server
def test_unreachable_redis_not_required_warns_and_crawls_alone(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    configure(sandbox, {HOST: SITE})
    server = RedisServer(password="never-shown-pw")  # never started
    crawls = start_three(
        sandbox,
        gateway_env,
        tmp_path,
        "epoll",
        server,
        20,
        JUSTPROXIES_SHARED_STATE_REQUIRED=False,
    )
    results = finish(crawls)
    assert_all_fetched(results, 20)
    for result in results:
        assert "WARNING" in result.log and "cannot reach the shared state" in result.log
        assert result.stats["justproxies/shared/unreachable"] == 1
        assert result.stats["justproxies/shared/errors"] >= 1
        assert "never-shown-pw" not in result.everything_written()


@needs_redis_server
def test_example_project_parts_share_one_budget(
    sandbox: Any,
    gateway_env: dict[str, str],
    tmp_path: Path,
    redis_server: RedisServer,
) -> None:
    """`scrapy crawl catalog -a part=i/n` in two processes, the Redis URL in
    the environment, as README and `make demo-cluster` tell users."""
    import json  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    project = Path(__file__).resolve().parent.parent / "example_project"
    configure(sandbox, {"shop.test": {"pages": 6, "rate": 30, "burst": 6}})
    start_url = f"https://shop.test:{sandbox.site_https_port}/catalog/{{page}}"
    crawls = []
    command = [sys.executable, "-m", "scrapy", "crawl", "catalog"]
    for index in (1, 2):
        env = {
            "PATH": "/usr/bin:/bin",
            **gateway_env,
            "JUSTPROXIES_SHARED_STATE": redis_server.url,
            "JUSTPROXIES_STATE_FILE": "None",
            "CATALOG_STATS_FILE": str(tmp_path / f"stats{index}.json"),
        }
        arguments = [
            "-a", f"start_url={start_url}", "-a", "pages=6", "-a", f"part={index}/2",
            "-O", str(tmp_path / f"items{index}.jsonl"),
            "-s", f"LOG_FILE={tmp_path / f'crawl{index}.log'}",
        ]  # fmt: skip
        crawls.append(
            subprocess.Popen(
                [*command, *arguments],
                cwd=project,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [crawl.communicate(timeout=180) for crawl in crawls]
    assert [crawl.returncode for crawl in crawls] == [0, 0], outputs
    items = [
        {
            json.loads(line)["url"]
            for line in (tmp_path / f"items{i}.jsonl").read_text().splitlines()
        }
        for i in (1, 2)
    ]
    assert items[0] and items[1] and not items[0] & items[1]
    assert len(items[0] | items[1]) == 60  # 6 listing pages of 10 items
    for index in (1, 2):
        stats = json.loads((tmp_path / f"stats{index}.json").read_text())
        assert stats["justproxies/shared/heartbeats"] > 0
        log = (tmp_path / f"crawl{index}.log").read_text()
        assert "budgets shared through redis://:***@127.0.0.1" in log
        for text in (log, *outputs[index - 1]):
            assert redis_server.password not in text
            assert sandbox.password not in text
