"""The extension that owns each download slot's concurrency.

Thin glue: the limit algorithm is :mod:`scrapy_justproxies.controller`
(pure, simulation-tested); this module feeds it samples and applies its
decisions to the download slots through
:class:`~scrapy_justproxies.slots.SlotGuard`, which also makes the limits
real on Scrapy 2.14+. Samples come from the guard: a request is "sent"
when it leaves its slot's queue (the guard's claiming queue), and its
answer is judged at Scrapy's ``response_downloaded`` signal, before the
downloader frees its place and starts the slot's next request (a failure,
from the rate-limit middleware's ``process_exception``).

State stays bounded on broad crawls: a domain idle for
:data:`IDLE_SECONDS` is evicted and only its limit is remembered (a bounded
LRU), so it comes back near where it was; stats carry crawl-wide totals and
the ``JUSTPROXIES_STATS_DOMAINS`` domains with the most answers, the rest in
one aggregate.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from scrapy import signals
from scrapy.exceptions import NotConfigured

from . import state
from .config import (
    Concurrency,
    Config,
    JustProxiesConfigError,
    LearningConfig,
    SharedStateConfig,
    ThrottleConfig,
)
from .controller import (
    ControllerSettings,
    Decision,
    DomainController,
    Learned,
    LimitKind,
    Outcome,
    Reason,
    Ticket,
)
from .failures import classify_response
from .slots import SlotGuard

if TYPE_CHECKING:
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response

    from .shared import SharedBudgets

logger = logging.getLogger(__name__)

IDLE_SECONDS: Final = 180.0
"""A domain with no send or answer for this long is evicted."""
QUIET_SECONDS: Final = 30.0
"""A domain with no send or answer for this long whose controller learned
nothing (no 429, no limit, rate or pace found: still where a fresh one would
start it, or growing from there) loses its controller and keeps only its
counts: a broad crawl visits each of thousands of sites now and then, and a
controller per site seen in the last :data:`IDLE_SECONDS` was most of the
plugin's memory (measured, 20,000 sites: 1.3 kB of the 2.6 kB a site cost).
Back, the site starts afresh, as it would have with nothing learned."""
SWEEP_SECONDS: Final = 10.0
"""How often idle and quiet domains are looked for."""
REMEMBERED_DOMAINS: Final = 10_000
"""Evicted domains whose limit is kept (most recently evicted first)."""
SAVE_INTERVAL: Final = 10.0
"""Seconds between saves of the state file while limits change (and at the
end of the crawl): a killed crawl loses at most this much learning."""

EXIT_CAPPED_MIN_INFLIGHT: Final = 6
"""A static exit's pair takes a 429 for evidence of an in-flight cap only
with at least this many in flight (``ControllerSettings.capped_min_inflight``):
its per-IP budget is a rate, a few per second, whose paced limit of 3 or 4
the answer time's jitter reaches alone."""
EXIT_SLOW_START_PACE_SHARE: Final = 0.5
"""A static exit's (exit, site) pair starts pacing at this share of slow
start's estimate (``ControllerSettings.slow_start_pace_share``): a per-IP
limit is a few requests per second, and a token bucket's burst spent in the
first second inflates slow start's measure several times over."""

EXIT_SLOW_START_RATE: Final = 8.0
"""A static exit's (exit, site) pair slow-starts rate-first
(``ControllerSettings.slow_start_rate``): its first sends are paced at this
many per second (slow start's first volley of 4, over half a second), the
pace grows with each clean answer, and each 429 to a request sent after the
last cut cuts it at once. A per-IP budget is a rate, often a few requests
per second with a burst that hides an overload for seconds: slow start's
volleys, doubling every answer time, were several times the rate when the
burst ran out (a 5 req/s exit: 12% of its answers were 429, most in the
first two seconds)."""
EXIT_SLOW_START_RATE_STRAYS: Final = 0
"""A static exit's pair cuts its rate-first pace at the first 429
(``ControllerSettings.slow_start_rate_strays``): each 429 counts against a
per-IP budget of a few requests a second. Waiting for a second one cost
the 5 req/s exit of ``bench/static_exits.py`` one more 429 at its start
(3.0% and 3.1% of its answers in two runs, against its 2.4% of every run
before; target 3%)."""
EXIT_PACED_TRIM_SAMPLES: Final = 5
"""A static exit's pair, paced, trims its pace as soon as two of a window's
first 5 or more answers are 429s (``ControllerSettings.paced_trim_samples``):
at a few requests per second a full window (20 answers) takes seconds, and
each of them more 429s."""

# Crawl-wide stats; per-domain ones are written at close for the top domains.
ANSWERS_TOTAL: Final = "justproxies/answers/total"
RATE_LIMITED_TOTAL: Final = "justproxies/rate_limited/total"
OTHER: Final = "other_domains"
"""The qualifier of the aggregate stats of the domains not listed."""


@dataclass(slots=True)
class _Counts:
    """What the stats and the closing summary tell about one domain."""

    start: int
    peak: int
    warm: bool = False
    """Started from what an earlier crawl (the state file) learned."""
    final: int = 0
    answers: int = 0
    rate_limited: int = 0
    changes: Counter[Reason] | None = None
    """Limit changes by reason (None: none yet; most domains of a broad
    crawl never change, and an empty Counter costs 200 bytes)."""

    def merge(self, other: _Counts) -> None:
        self.peak = max(self.peak, other.peak)
        self.answers += other.answers
        self.rate_limited += other.rate_limited
        if other.changes:
            if self.changes is None:
                self.changes = Counter()
            self.changes.update(other.changes)


@dataclass(slots=True)
class _Domain:
    """One slot's controller and what we tell the user about it."""

    controller: DomainController | None
    """None once dropped while quiet, having learned nothing
    (:data:`QUIET_SECONDS`); :meth:`JustProxiesThrottle._domain` makes a
    fresh one when the domain is back."""
    counts: _Counts
    last_seen: float
    last_logged: float = -float("inf")
    pace: float | None = None
    """Seconds between sends the slot was last told (None: unpaced)."""
    unlogged: list[Decision] | None = None
    """Limit changes not logged yet (None: none, and no list to keep)."""

    @property
    def live(self) -> DomainController:
        """The controller of a domain returned by ``_domain()``, which
        revives a dropped one."""
        assert self.controller is not None
        return self.controller


class JustProxiesThrottle:
    """Adjust each domain's concurrency live from its 429 ratio.

    Enabled by the add-on, or by hand with
    ``EXTENSIONS = {"scrapy_justproxies.JustProxiesThrottle": 0}`` next to the
    middlewares.
    """

    def __init__(
        self,
        crawler: Crawler,
        throttle: ThrottleConfig,
        controller_settings: ControllerSettings,
        clock: Callable[[], float] = time.monotonic,
        guard: SlotGuard | None = None,
        *,
        learning: LearningConfig | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.crawler = crawler
        self.throttle = throttle
        self.controller_settings = controller_settings
        # JUSTPROXIES_STATIC_EXITS: the (exit, site) pairs' controllers.
        self.exit_settings = replace(
            controller_settings,
            slow_start_pace_share=min(
                controller_settings.slow_start_pace_share, EXIT_SLOW_START_PACE_SHARE
            ),
            capped_min_inflight=max(
                controller_settings.capped_min_inflight, EXIT_CAPPED_MIN_INFLIGHT
            ),
            slow_start_rate=controller_settings.slow_start_rate or EXIT_SLOW_START_RATE,
            slow_start_rate_strays=EXIT_SLOW_START_RATE_STRAYS,
            paced_trim_samples=controller_settings.paced_trim_samples
            or EXIT_PACED_TRIM_SAMPLES,
        )
        self.clock = clock
        self.stats = crawler.stats
        self.domains: dict[str, _Domain] = {}
        self._tickets: dict[Request, tuple[str, Ticket]] = {}
        slots = crawler.settings.getdict("DOWNLOAD_SLOTS")
        self.pinned = {key for key, values in slots.items() if "concurrency" in values}
        # Slots with their own DOWNLOAD_SLOTS delay are never paced.
        self.own_delay = {key for key, values in slots.items() if "delay" in values}
        # Evicted domains: what the controller learned, and their counts
        # while they may still be among the top ones.
        self._learned: OrderedDict[str, Learned] = OrderedDict()
        self._top: dict[str, _Counts] = {}
        self._other = _Counts(start=0, peak=0)
        self._other_domains = 0
        self._next_sweep = clock() + SWEEP_SECONDS
        self.decision_listeners: list[Callable[[str, Decision, float], None]] = []
        """Told of every limit change (the trace records them)."""
        self.learning = learning or LearningConfig()
        self.wall_clock = wall_clock
        # What the state file says of domains not seen yet in this crawl.
        self._warm = self._load_state()
        self._last_save = -float("inf")
        # The site's budget shared with other processes (Redis), if any.
        self.shared: SharedBudgets | None = None
        self.guard = guard or SlotGuard.of(crawler)
        self.guard.attach_throttle(self)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> JustProxiesThrottle:
        settings = crawler.settings
        config = Config.from_settings(settings, os.environ)
        throttle = ThrottleConfig.from_settings(settings, os.environ)
        if not config.enabled or not throttle.enabled:
            raise NotConfigured(
                "JUSTPROXIES_ENABLED or JUSTPROXIES_THROTTLE_ENABLED is off"
            )
        # Without the router every request would go out direct: never a
        # silent change (imported here: the middleware imports this module's
        # neighbours).
        from .middleware import check_middlewares  # noqa: PLC0415

        check_middlewares(settings)
        if settings.getbool("AUTOTHROTTLE_ENABLED"):
            raise JustProxiesConfigError(
                "AUTOTHROTTLE_ENABLED and JUSTPROXIES_THROTTLE_ENABLED are both on, "
                "and both would steer the same download slots (AutoThrottle through "
                "delays, JustProxies through concurrency). Set AUTOTHROTTLE_ENABLED = "
                "False, or JUSTPROXIES_THROTTLE_ENABLED = False to keep Scrapy's "
                "AutoThrottle."
            )
        # Concurrency and ThrottleConfig have checked every value the
        # controller takes against the same bounds.
        concurrency = Concurrency.resolve(settings, config, os.environ)
        learning = LearningConfig.from_settings(settings, os.environ)
        if learning.slow_start_rate and learning.slow_start >= concurrency.domain_start:
            raise JustProxiesConfigError(
                "JUSTPROXIES_THROTTLE_SLOW_START_RATE is "
                f"{learning.slow_start_rate:g}, but slow start is off: "
                f"JUSTPROXIES_THROTTLE_SLOW_START ({learning.slow_start}) is not "
                "below CONCURRENT_REQUESTS_PER_DOMAIN "
                f"({concurrency.domain_start}), and the rate-first start is a way of "
                "slow-starting. Set JUSTPROXIES_THROTTLE_SLOW_START below it, or "
                "remove JUSTPROXIES_THROTTLE_SLOW_START_RATE."
            )
        controller_settings = ControllerSettings(
            start=concurrency.domain_start,
            maximum=concurrency.domain_max,
            increase_factor=throttle.increase_factor,
            tolerated_share=throttle.tolerated_share,
            slow_start=learning.slow_start,
            slow_start_until=learning.slow_start_until,
            slow_start_rate=learning.slow_start_rate,
        )
        guard = SlotGuard.of(crawler, concurrency)
        extension = cls(
            crawler, throttle, controller_settings, guard=guard, learning=learning
        )
        shared_config = SharedStateConfig.from_settings(settings, os.environ)
        if shared_config.enabled and learning.slow_start_rate:
            logger.warning(
                "JustProxies: JUSTPROXIES_THROTTLE_SLOW_START_RATE does not apply "
                "to sites whose budget is shared through JUSTPROXIES_SHARED_STATE: "
                "a shared site opens one request per clean answer, unpaced."
            )
        if shared_config.enabled:
            from .shared import SharedBudgets  # noqa: PLC0415 - redis is optional

            extension.shared = SharedBudgets.from_crawler(
                crawler,
                shared_config,
                extension.guard,
                lambda key: extension._domain(key, extension.clock()).live.limit,
                tolerated_share=throttle.tolerated_share,
                budget_ttl=learning.max_age,
                take_over=extension._take_over,
                maximum=controller_settings.maximum,
            )
        crawler.signals.connect(extension._closed, signals.spider_closed)
        return extension

    # -- samples in (called by the slot guard) ---------------------------------

    def limit_for(self, key: str) -> int | None:
        if key in self.pinned:
            return None
        # A slot Scrapy garbage-collected and made again keeps its limit.
        return self._effective(key, self._domain(key, self.clock()).live.limit)

    def pace_for(self, key: str) -> float | None:
        if key in self.pinned:
            return None
        now = self.clock()
        domain = self._domain(key, now)
        domain.pace = self._pace(key, domain, now)
        return domain.pace

    def sent(self, key: str, request: Request, in_flight: int) -> None:
        if key in self.pinned:
            return  # DOWNLOAD_SLOTS gives this slot its own fixed concurrency
        now = self.clock()
        domain = self._domain(key, now)
        domain.last_seen = now
        self._tickets[request] = (key, domain.live.on_sent(now, in_flight))

    def answered(self, request: Request, response: Response) -> None:
        entry = self._tickets.pop(request, None)
        if entry is not None:
            self._record(*entry, classify_response(response.status, response.headers))

    def failed(self, request: Request) -> None:
        # The download failed (timeout, connection error) and said nothing
        # about the site's limit.
        entry = self._tickets.pop(request, None)
        if entry is not None:
            self._record(*entry, Outcome.IGNORED)

    def _record(self, key: str, ticket: Ticket, outcome: Outcome) -> None:
        now = self.clock()
        domain = self._domain(key, now)
        domain.last_seen = now
        domain.live.record(ticket, outcome, now)
        if outcome is not Outcome.IGNORED:
            if self.shared is not None:  # pooled with the other processes
                self.shared.record(
                    key,
                    rate_limited=outcome is Outcome.RATE_LIMITED,
                    ok=outcome is Outcome.OK,
                    seconds=now - ticket.sent_at,
                )
            domain.counts.answers += 1
            self._inc_stat(ANSWERS_TOTAL)
        if outcome is Outcome.RATE_LIMITED:
            domain.counts.rate_limited += 1
            self._inc_stat(RATE_LIMITED_TOTAL)
        pace = self._pace(key, domain, now)
        if pace != domain.pace and key not in self.own_delay:
            domain.pace = pace  # paced at a learned rate, or no longer
            self.guard.pace(key, pace)
        decision = domain.live.decide(now)
        if decision is not None and decision.changed:
            self._apply(key, domain, decision, now)
            if now - self._last_save >= SAVE_INTERVAL and self._save_state():
                self._last_save = now
        if now >= self._next_sweep:
            self._sweep(now)

    # -- per-domain state, bounded ---------------------------------------------

    def _domain(self, key: str, now: float) -> _Domain:
        domain = self.domains.get(key)
        if domain is None:
            warm = key in self._warm
            controller = self._revive(key, now)
            counts = self._top.pop(key, None) or _Counts(
                start=controller.limit, peak=controller.limit, warm=warm
            )
            domain = self.domains[key] = _Domain(controller, counts, last_seen=now)
        elif domain.controller is None:
            # Back after a quiet spell with nothing learned: start afresh,
            # and so does its slot if Scrapy still keeps it.
            domain.controller = DomainController(self._settings_for(key), now)
            self.guard.set_concurrency(
                key, self._effective(key, domain.controller.limit)
            )
        return domain

    def _take_over(
        self,
        key: str,
        limit: int,
        rate: float | None = None,
        answer_time: float | None = None,
    ) -> None:
        """The shared state went away: this slot's own controller takes over
        from the share it had (the share stays a cap), paced at this
        process's part of the site's rate if it was paced."""
        now = self.clock()
        start = Learned(limit, rate, LimitKind.UNKNOWN, answer_time, now, 0)
        self._domain(key, now).controller = DomainController(
            self._settings_for(key), now, learned=start
        )

    def _pace(self, key: str, domain: _Domain, now: float) -> float | None:
        """The slot's pace: its own controller's, unless the site's budget
        is shared. Then it is this process's part of the site's pooled rate:
        its own controller sees only its part of the site's answers, and a
        pace learned from them (each process its own, probed on its own)
        held the slots below their shares and the processes apart
        (measured, three processes on one 50 req/s site: 79% of the rate
        admitted, the last one alone for 14 s at a third of it)."""
        if self.shared is not None and self.shared.governs(key):
            return self.shared.pace(key)
        return domain.live.pace(now)

    def _effective(self, key: str, limit: int) -> int:
        """The slot's share of a budget shared with other processes, when
        there is one; else its own controller's limit."""
        return self.shared.effective(key, limit) if self.shared else limit

    def _sweep(self, now: float) -> None:
        """Evict the domains idle for IDLE_SECONDS; drop the controllers of
        the domains quiet for QUIET_SECONDS that learned nothing."""
        self._next_sweep = now + SWEEP_SECONDS
        idle = []
        quiet = 0
        for key, domain in self.domains.items():
            if now - domain.last_seen >= IDLE_SECONDS:
                idle.append(key)
            elif (
                domain.controller is not None
                and now - domain.last_seen >= QUIET_SECONDS
                and _learned_nothing(domain)
            ):
                domain.counts.final = domain.controller.limit
                domain.controller = None
                quiet += 1
        for key in idle:
            domain = self.domains.pop(key)
            if domain.unlogged:
                self._log_changes(key, domain, now)
            if domain.controller is not None:
                self._remember(key, domain.controller, now)
                domain.counts.final = domain.controller.limit
            self._keep_counts(key, domain.counts)
        if idle:
            self._inc_stat("justproxies/domains/evicted", len(idle))
        if quiet:
            self._inc_stat("justproxies/domains/quiet", quiet)

    def _remember(self, key: str, controller: DomainController, now: float) -> None:
        """Keep what ``controller`` learned, compactly (a bounded LRU)."""
        learned = controller.learned(self.wall_clock())  # stamped as the state file is
        if learned is None:
            return
        self._learned[key] = learned
        self._learned.move_to_end(key)
        if len(self._learned) > REMEMBERED_DOMAINS:
            self._learned.popitem(last=False)

    def _revive(self, key: str, now: float) -> DomainController:
        """A controller for ``key``: resumed from what it learned earlier in
        this crawl (evicted while idle), or from the state file, if anything."""
        learned = self._learned.pop(key, None) or self._warm.pop(key, None)
        if learned is not None:
            self._inc_stat("justproxies/domains/warm_started")
        return DomainController(self._settings_for(key), now, learned=learned)

    def _settings_for(self, key: str) -> ControllerSettings:
        """A static exit's pair (``<label>|<site>``) paces its first rate
        lower; any other slot has the crawl's settings."""
        if self.guard.site_key(key) != key:
            return self.exit_settings
        return self.controller_settings

    def _keep_counts(self, key: str, counts: _Counts) -> None:
        """An evicted domain's counts stay while it may be among the top
        JUSTPROXIES_STATS_DOMAINS; the others join the aggregate."""
        self._top[key] = counts
        if len(self._top) > self.throttle.stats_domains:
            smallest = min(self._top, key=lambda k: self._top[k].answers)
            self._fold(self._top.pop(smallest))

    def _fold(self, counts: _Counts) -> None:
        self._other.merge(counts)
        self._other_domains += 1

    # -- decisions out -------------------------------------------------------

    def _apply(self, key: str, domain: _Domain, decision: Decision, now: float) -> None:
        self.guard.set_concurrency(key, self._effective(key, decision.new_limit))
        for listener in self.decision_listeners:
            listener(key, decision, now)
        counts = domain.counts
        counts.peak = max(counts.peak, decision.new_limit)
        if counts.changes is None:
            counts.changes = Counter()
        counts.changes[decision.reason] += 1
        self._inc_stat(f"justproxies/limit_changes/{decision.reason.value}")
        if domain.unlogged is None:
            domain.unlogged = []
        domain.unlogged.append(decision)
        if now - domain.last_logged >= self.throttle.log_interval:
            self._log_changes(key, domain, now)

    def _log_changes(self, key: str, domain: _Domain, now: float) -> None:
        decisions, domain.unlogged = domain.unlogged, None
        if not decisions:
            return
        domain.last_logged = now
        last = decisions[-1]
        estimate = (
            f"; 429s begin near {last.overload_level}"
            if last.overload_level is not None
            else ""
        )
        earlier = (
            f" (after {len(decisions) - 1} more changes from {decisions[0].old_limit})"
            if len(decisions) > 1
            else ""
        )
        logger.info(
            "JustProxies: %s concurrency %d -> %d, %s: %d of %d answers were 429%s%s",
            key, last.old_limit, last.new_limit, last.reason.value,
            last.rate_limited, last.samples, estimate, earlier,
        )  # fmt: skip

    def _closed(self, spider: Spider, reason: str) -> None:
        self._save_state()
        now = self.clock()
        every = dict(self._top)
        for key, domain in self.domains.items():
            if domain.unlogged:
                self._log_changes(key, domain, now)
            if domain.controller is not None:
                domain.counts.final = domain.controller.limit
            every[key] = domain.counts
        if not every:
            return
        ranked = sorted(every, key=lambda k: (-every[k].answers, k))
        shown = ranked[: self.throttle.stats_domains]
        for key in ranked[self.throttle.stats_domains :]:
            self._fold(every[key])
        lines = ["JustProxies concurrency by domain:"]
        for key in sorted(shown):
            counts = every[key]
            share = counts.rate_limited / counts.answers if counts.answers else 0.0
            self._set_stat(f"justproxies/limit_start/{key}", counts.start)
            if counts.warm:
                self._set_stat(f"justproxies/warm_start/{key}", counts.start)
            self._set_stat(f"justproxies/limit/{key}", counts.final)
            self._set_stat(f"justproxies/limit_final/{key}", counts.final)
            self._set_stat(f"justproxies/limit_peak/{key}", counts.peak)
            self._set_stat(f"justproxies/answers/{key}", counts.answers)
            self._set_stat(f"justproxies/rate_limited/{key}", counts.rate_limited)
            self._set_stat(f"justproxies/rate_limited_share/{key}", round(share, 4))
            changes = ", ".join(
                f"{count} {reason.value}"
                for reason, count in sorted((counts.changes or {}).items())
            )
            lines.append(
                f"  {key}: final {counts.final}, peak {counts.peak}; "
                f"{counts.rate_limited} of {counts.answers} answers were 429 "
                f"({share:.1%}); changes: {changes or 'none'}"
            )
        if self._other_domains:
            other = self._other
            self._set_stat(f"justproxies/domains/{OTHER}", self._other_domains)
            self._set_stat(f"justproxies/answers/{OTHER}", other.answers)
            self._set_stat(f"justproxies/rate_limited/{OTHER}", other.rate_limited)
            self._set_stat(f"justproxies/limit_peak/{OTHER}", other.peak)
            lines.append(
                f"  and {self._other_domains} more domains: {other.rate_limited} of "
                f"{other.answers} answers were 429; highest peak {other.peak}"
            )
        logger.info("\n".join(lines))

    # -- the state file (warm start) -------------------------------------------

    def _load_state(self) -> dict[str, Learned]:
        path = self.learning.state_file
        if path is None:
            return {}
        loaded = state.load(
            Path(path), now=self.wall_clock(), max_age=self.learning.max_age
        )
        if loaded.warning is not None:
            logger.warning(
                "JustProxies: ignoring the state file %s (%s); every domain starts "
                "cold. It is rewritten when this crawl has learned something.",
                path, loaded.warning,
            )  # fmt: skip
            return {}
        if loaded.domains:
            now = self.wall_clock()
            logger.info(
                "JustProxies: %d domains start warm from %s: %s%s",
                len(loaded.domains), path,
                ", ".join(
                    f"{key} at {entry.concurrency}"
                    f" ({_describe(entry)}, learned {_ago(now - entry.at)})"
                    for key, entry in sorted(loaded.domains.items())
                ),
                f"; {loaded.stale} older than JUSTPROXIES_STATE_MAX_AGE ignored"
                if loaded.stale else "",
            )  # fmt: skip
        self._set_stat("justproxies/state/loaded", len(loaded.domains))
        return dict(loaded.domains)

    def _save_state(self) -> bool:
        """Save what was learned; False if there was nothing to save."""
        path = self.learning.state_file
        if path is None:
            return False
        now = self.wall_clock()
        learned = dict(self._learned)  # evicted while idle, newest last
        learned.update(
            (key, entry)
            for key, domain in self.domains.items()
            if key not in self.pinned
            and domain.controller is not None
            and (entry := domain.controller.learned(now)) is not None
        )
        if not learned:
            return False
        try:
            state.save(Path(path), learned, now=now, max_age=self.learning.max_age)
        except OSError as exc:
            logger.warning(
                "JustProxies: cannot save the state file %s (%s); the next crawl "
                "starts cold. Set JUSTPROXIES_STATE_FILE to a writable path, or "
                "to None to keep no state.",
                path, exc.__class__.__name__,
            )  # fmt: skip
            return True  # tried: not again before the next interval
        self._inc_stat("justproxies/state/saved")
        return True

    # -- stats ---------------------------------------------------------------

    def _inc_stat(self, key: str, count: int = 1) -> None:
        if self.stats is not None:
            self.stats.inc_value(key, count)

    def _set_stat(self, key: str, value: Any) -> None:
        if self.stats is not None:
            self.stats.set_value(key, value)


def _learned_nothing(domain: _Domain) -> bool:
    """Nothing a fresh controller would not know: never a 429, not warm
    started, and the controller found no limit, rate or pace."""
    counts = domain.counts
    controller = domain.controller
    return (
        counts.rate_limited == 0
        and not counts.warm
        and controller is not None
        and controller.untouched
    )


def _describe(entry: Learned) -> str:
    if entry.rate is not None:
        return f"{entry.kind.value}, {entry.rate:.0f} req/s"
    return entry.kind.value


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"
