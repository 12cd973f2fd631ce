"""A discrete-event fake site and crawler for the concurrency controller.

No real time passes: a heap of events and a seeded ``random.Random`` drive
a crawler that keeps ``limit`` requests in flight to one site, retries 429s
later (nothing is lost), feeds every outcome to a
:class:`~scrapy_justproxies.controller.DomainController` and applies its
decisions. Minutes of crawling run in milliseconds.

Sites: a token bucket (rate and burst, the rate may follow a schedule), an
in-flight cap, a fixed-window counter, a sliding-window log, a GCRA (leaky bucket as a meter), or
no limit at all. The site's latency is lognormal with P50 200 ms and P95
350 ms (mean about 212 ms); by default a 429 takes as long as a 200. With
``hop`` the gateway's hop (constant) is added to every answer, 429s included,
and the site answers a 429 at once (``site_429_latency=False``), as the
sandbox does. ``latency_schedule`` changes the site's answer time over time.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from scrapy_justproxies.controller import (
    ControllerSettings,
    Decision,
    DomainController,
    Learned,
    Outcome,
    Ticket,
)
from scrapy_justproxies.retry import Refusal, closed_until, ewma
from scrapy_justproxies.sandbox import policy

LATENCY_P50 = 0.200
LATENCY_P95 = 0.350
_Z95 = 1.6448536269514722
LATENCY_SIGMA = math.log(LATENCY_P95 / LATENCY_P50) / _Z95
LATENCY_MEAN = LATENCY_P50 * math.exp(LATENCY_SIGMA**2 / 2)


class Site(Protocol):
    def admit(self, now: float) -> bool: ...

    def release(self, now: float) -> None: ...

    def capacity(self, now: float) -> float:
        """Answers per second the site lets through at ``now`` (inf: no limit)."""
        ...


class TokenBucket:
    """Admits ``rate`` requests per second with bursts of ``burst``.

    ``schedule`` is ``[(t, rate), ...]`` sorted by ``t``, the first at 0.
    """

    def __init__(self, schedule: Sequence[tuple[float, float]], burst: float) -> None:
        assert schedule and schedule[0][0] == 0
        self.times = [t for t, _ in schedule]
        self.rates = [r for _, r in schedule]
        self.burst = burst
        self.tokens = burst
        self.last = 0.0

    @classmethod
    def steady(cls, rate: float, burst: float = 10) -> TokenBucket:
        return cls([(0.0, rate)], burst)

    def capacity(self, now: float) -> float:
        return self.rates[bisect.bisect_right(self.times, now) - 1]

    def _refill(self, now: float) -> None:
        t = self.last
        i = bisect.bisect_right(self.times, t) - 1
        while t < now:
            end = self.times[i + 1] if i + 1 < len(self.times) else math.inf
            step_end = min(end, now)
            self.tokens = min(self.burst, self.tokens + (step_end - t) * self.rates[i])
            t = step_end
            i += 1
        self.last = now

    def admit(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def release(self, now: float) -> None:
        pass


class InflightCap:
    """Answers 429 to a request that finds ``cap`` others in progress."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.active = 0

    def capacity(self, now: float) -> float:
        return self.cap / LATENCY_MEAN

    def admit(self, now: float) -> bool:
        if self.active < self.cap:
            self.active += 1
            return True
        return False

    def release(self, now: float) -> None:
        self.active -= 1


class FixedWindow:
    """Admits ``limit`` requests per ``window`` seconds, counted in fixed
    windows aligned at 0 (the counter resets at every window's end)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.index = -1
        self.count = 0

    def capacity(self, now: float) -> float:
        return self.limit / self.window

    def admit(self, now: float) -> bool:
        index = int(now // self.window)
        if index != self.index:
            self.index, self.count = index, 0
        if self.count < self.limit:
            self.count += 1
            return True
        return False

    def release(self, now: float) -> None:
        pass

    def retry_after(self, now: float) -> float:
        """The sandbox's ``Retry-After`` for a 429 at ``now``: the time to
        the window's end, rounded up to whole seconds (at least 1)."""
        end = (int(now // self.window) + 1) * self.window
        return float(max(1, math.ceil(end - now - 1e-9)))


class SlidingWindowLog:
    """Admits at most ``limit`` requests in any ``window`` seconds: the
    sandbox's own sliding log (no reset instant: a burst admitted at the
    start frees its places one window later, at the pace it came)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._log = policy.SlidingWindowLog(
            policy.RateSchedule(limit / window), window, 0.0
        )

    def capacity(self, now: float) -> float:
        return self.limit / self.window

    def admit(self, now: float) -> bool:
        return self._log.try_acquire(now)

    def release(self, now: float) -> None:
        pass


class Gcra:
    """The generic cell rate algorithm: one request every ``1 / rate``
    seconds, ``burst`` of them early at most (a leaky bucket as a meter)."""

    def __init__(self, rate: float, burst: float = 1) -> None:
        self.rate = rate
        self.interval = 1 / rate
        self.tolerance = burst * self.interval
        self.tat = 0.0  # theoretical arrival time

    def capacity(self, now: float) -> float:
        return self.rate

    def admit(self, now: float) -> bool:
        tat = max(self.tat, now)
        if tat - now > self.tolerance - self.interval + 1e-12:
            return False
        self.tat = tat + self.interval
        return True

    def release(self, now: float) -> None:
        pass


class Unlimited:
    def capacity(self, now: float) -> float:
        return math.inf

    def admit(self, now: float) -> bool:
        return True

    def release(self, now: float) -> None:
        pass


@dataclass
class Run:
    """What happened: answer times by outcome, the limit over time."""

    duration: float
    ok: list[float] = field(default_factory=list)
    limited: list[float] = field(default_factory=list)
    ignored: list[float] = field(default_factory=list)
    limits: list[tuple[float, int]] = field(default_factory=list)
    paces: list[tuple[float, float | None]] = field(default_factory=list)
    """The paced rate (sends per second, None: unpaced) from each time on."""
    decisions: list[Decision] = field(default_factory=list)
    issued: int = 0
    """Distinct requests the crawler created."""
    inflight_end: int = 0
    retry_queue_end: int = 0
    learned: Learned | None = None
    """What the controller had learned at the end (for a warm start)."""

    def goodput(self, t0: float, t1: float) -> float:
        """Successful answers per second in ``[t0, t1)``."""
        return _count(self.ok, t0, t1) / (t1 - t0)

    def share_429(self, t0: float = 0.0, t1: float | None = None) -> float:
        """Share of the site's answers in ``[t0, t1)`` that were 429."""
        t1 = self.duration if t1 is None else t1
        ok = _count(self.ok, t0, t1)
        limited = _count(self.limited, t0, t1)
        return limited / (ok + limited) if ok + limited else 0.0

    def time_to(self, rate: float, t0: float = 0.0, span: float = 2.0) -> float:
        """Seconds after ``t0`` until a ``span``-second stretch first
        averages ``rate`` successful answers per second (inf: never)."""
        step = 0.1
        t = t0
        while t + span <= self.duration:
            if self.goodput(t, t + span) >= rate:
                return t - t0
            t += step
        return math.inf

    def limit_at(self, t: float) -> int:
        i = bisect.bisect_right([x for x, _ in self.limits], t) - 1
        return self.limits[i][1]

    def pace_at(self, t: float) -> float | None:
        i = bisect.bisect_right([x for x, _ in self.paces], t) - 1
        return self.paces[i][1] if i >= 0 else None

    def mean_limit(self, t0: float, t1: float) -> float:
        """Time-weighted mean limit over ``[t0, t1)``."""
        total = 0.0
        for i, (t, limit) in enumerate(self.limits):
            end = self.limits[i + 1][0] if i + 1 < len(self.limits) else math.inf
            overlap = min(end, t1) - max(t, t0)
            if overlap > 0:
                total += overlap * limit
        return total / (t1 - t0)

    def changes(self) -> list[Decision]:
        return [d for d in self.decisions if d.changed]


def _count(times: list[float], t0: float, t1: float) -> int:
    return bisect.bisect_left(times, t1) - bisect.bisect_left(times, t0)


_DONE = 0
_WAKE = 1
_RELEASE = 2


def simulate(
    site: Site,
    settings: ControllerSettings | None,
    *,
    seed: int,
    duration: float,
    fixed_limit: int | None = None,
    gateway_failure: float = 0.0,
    parallel: int | None = None,
    retry_delay: float = 1.0,
    random_429: float = 0.0,
    latency_p50: float = LATENCY_P50,
    latency_p95: float = LATENCY_P95,
    latency_schedule: Sequence[tuple[float, float]] = (),
    hop: float = 0.0,
    site_429_latency: bool = True,
    learned: Learned | None = None,
    pace_lag: float = 1.0,
    retry_after_hold: bool = False,
) -> Run:
    """Crawl ``site`` for ``duration`` simulated seconds.

    With ``settings`` a controller sets the limit; with ``fixed_limit``
    (and ``settings=None``) the limit never changes. ``gateway_failure`` is
    the share of requests the gateway fails before they reach the site
    (recorded as ignored, retried like 429s). ``parallel`` caps how many
    requests the spider has to give at once (``None``: always more), which
    leaves slots idle when it is below the limit. ``random_429`` is a share
    of admitted requests the site answers 429 whatever the load (a site
    that rate-limits some pages, or some exits, regardless of concurrency).
    ``latency_schedule`` is ``[(t, p50), ...]``: from ``t`` the site's P50
    is ``p50`` (P95 keeps its ratio). ``hop`` seconds are added to every
    answer; with ``site_429_latency=False`` a 429 takes only the hop.
    ``learned`` starts the controller warm. ``pace_lag`` stretches every
    paced gap (1.12: sends 11% below the pace, as Scrapy's download delay
    does on a busy event loop). ``retry_after_hold``: a site with a
    ``retry_after(now)`` (the fixed window) sends ``Retry-After`` with its
    429s, and the crawler holds the whole slot when
    :func:`~scrapy_justproxies.retry.closed_until` says the site is closed,
    as the rate-limit middleware does (without its one check probe).
    """
    rng = random.Random(seed)
    mu = math.log(latency_p50)
    sigma = math.log(latency_p95 / latency_p50) / _Z95
    controller = (
        DomainController(settings, now=0.0, learned=learned)
        if settings is not None
        else None
    )
    shift_times = [t for t, _ in latency_schedule]
    if controller is not None:
        limit = controller.limit
    else:
        assert fixed_limit is not None
        limit = fixed_limit
    run = Run(duration=duration, limits=[(0.0, limit)])
    events: list[tuple[float, int, int, Ticket | None, Outcome, bool]] = []
    seq = 0
    inflight = 0
    retries: deque[float] = deque()  # due times of requests waiting to retry
    now = 0.0

    next_send = 0.0  # pacing: no send before this time
    # Retry-After: per 429 on its way back (by event seq), the usual answer
    # time (the middleware's moving average), the last 429's, and the time
    # the slot is held until.
    retry_afters: dict[int, float] = {}
    usual: float | None = None
    refusal: Refusal | None = None
    held_until = 0.0
    sent_at: dict[int, float] = {}
    # The pacing wake-up already queued: one per send time, not one per event
    # that found the slot waiting (those piled up, millions per run).
    wake_at = -math.inf

    def fill() -> None:
        nonlocal inflight, seq, next_send, wake_at
        if now < held_until:
            return
        while inflight < limit:
            gap = controller.pace(now) if controller is not None else None
            if gap is not None and now < next_send - 1e-12:
                # Paced (the glue's slot delay): wake up when the next may go.
                if wake_at != next_send:
                    wake_at = next_send
                    seq += 1
                    heapq.heappush(
                        events, (next_send, seq, _WAKE, None, Outcome.IGNORED, False)
                    )
                return
            due_retry = bool(retries) and retries[0] <= now
            if not due_retry:
                outstanding = inflight + len(retries)
                if parallel is not None and outstanding >= parallel:
                    return
                run.issued += 1
            else:
                retries.popleft()
            # Scrapy's slot delay counts from the last download, not from the
            # last time the spider had nothing to give.
            next_send = now + (gap or 0.0) * pace_lag
            inflight += 1
            ticket = controller.on_sent(now, inflight) if controller else None
            if rng.random() < gateway_failure:
                outcome, admitted = Outcome.IGNORED, False
            else:
                admitted = site.admit(now)
                ok = admitted and not (random_429 and rng.random() < random_429)
                outcome = Outcome.OK if ok else Outcome.RATE_LIMITED
            scale = 1.0
            if shift_times:
                i = bisect.bisect_right(shift_times, now) - 1
                if i >= 0:
                    scale = latency_schedule[i][1] / latency_p50
            site_latency = rng.lognormvariate(mu, sigma) * scale
            if not admitted and not site_429_latency:
                site_latency = 0.0
            latency = hop + site_latency
            if admitted:
                # The hop is constant, so the site's view is the client's
                # shifted by it: admitted now, done after the site's latency.
                seq += 1
                heapq.heappush(
                    events,
                    (now + site_latency, seq, _RELEASE, None, Outcome.OK, True),
                )
            seq += 1
            heapq.heappush(
                events, (now + latency, seq, _DONE, ticket, outcome, admitted)
            )
            if retry_after_hold:
                sent_at[seq] = now
                if outcome is Outcome.RATE_LIMITED and hasattr(site, "retry_after"):
                    retry_afters[seq] = site.retry_after(now)

    fill()
    while events:
        now, event, kind, ticket, outcome, _ = heapq.heappop(events)
        if now >= duration:
            break
        if kind == _RELEASE:
            site.release(now)
            continue
        if kind == _DONE:
            inflight -= 1
            if retry_after_hold:
                took = now - sent_at.pop(event)
                if outcome is Outcome.OK:
                    usual = ewma(usual, took)
                retry_after = retry_afters.pop(event, None)
                if retry_after is not None:
                    until = closed_until(now, retry_after, usual, refusal)
                    refusal = Refusal(now, now + retry_after)
                    if until is not None and until > held_until:
                        held_until = until
                        seq += 1
                        heapq.heappush(
                            events,
                            (until, seq, _WAKE, None, Outcome.IGNORED, False),
                        )
            if outcome is Outcome.OK:
                run.ok.append(now)
            else:
                (
                    run.limited if outcome is Outcome.RATE_LIMITED else run.ignored
                ).append(now)
                retries.append(now + retry_delay)
                seq += 1
                heapq.heappush(
                    events,
                    (now + retry_delay, seq, _WAKE, None, Outcome.IGNORED, False),
                )
            if controller is not None:
                assert ticket is not None
                controller.record(ticket, outcome, now)
                decision = controller.decide(now)
                if decision is not None:
                    run.decisions.append(decision)
                    if not run.paces or run.paces[-1][1] != decision.pace_rate:
                        run.paces.append((now, decision.pace_rate))
                    if decision.changed:
                        limit = decision.new_limit
                        run.limits.append((now, limit))
        fill()
    run.inflight_end = inflight
    run.retry_queue_end = len(retries)
    if controller is not None:
        run.learned = controller.learned(duration)
    return run
