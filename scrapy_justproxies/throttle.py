"""The extension that owns each download slot's concurrency.

Thin glue: the limit algorithm is :mod:`scrapy_justproxies.controller`
(pure, simulation-tested); this module feeds it samples from Scrapy's
signals and applies its decisions to the download slots through
:class:`~scrapy_justproxies.slots.SlotGuard`, which also makes the limits
real on Scrapy 2.14+. Samples are taken where they mean something: a request
is "sent" when it leaves its slot's queue (not when it is scheduled), and
its answer is judged when the download handler returns, before any
middleware turns a 429 into a retry.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    ControllerSettingsError,
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

SAVE_INTERVAL = 10.0
"""Seconds between saves of the state file while limits change (and at the
end of the crawl): a killed crawl loses at most this much learning."""

# ControllerSettings field -> the setting a user changes for it.
_SETTING_FOR_FIELD = {
    "start": "CONCURRENT_REQUESTS_PER_DOMAIN",
    "maximum": "JUSTPROXIES_DOMAIN_CONCURRENCY_MAX",
    "increase_factor": "JUSTPROXIES_THROTTLE_INCREASE",
    "tolerated_share": "JUSTPROXIES_THROTTLE_TOLERATED_429_SHARE",
    "slow_start": "JUSTPROXIES_THROTTLE_SLOW_START",
}


@dataclass
class _Domain:
    """One slot's controller and what we tell the user about it."""

    controller: DomainController
    peak: int
    answers: int = 0
    rate_limited: int = 0
    changes: Counter[Reason] = field(default_factory=Counter)
    last_logged: float = -float("inf")
    unlogged: list[Decision] = field(default_factory=list)


class JustProxiesThrottle:
    """Adjust each domain's concurrency live from its 429 ratio.

    Enabled by the add-on, or by hand with
    ``EXTENSIONS = {"scrapy_justproxies.JustProxiesThrottle": 0}`` next to the
    middleware.
    """

    def __init__(
        self,
        crawler: Crawler,
        throttle: ThrottleConfig,
        controller_settings: ControllerSettings,
        clock: Callable[[], float] = time.monotonic,
        *,
        learning: LearningConfig | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.crawler = crawler
        self.throttle = throttle
        self.controller_settings = controller_settings
        self.clock = clock
        self.stats = crawler.stats
        self.domains: dict[str, _Domain] = {}
        self._tickets: dict[Request, tuple[str, Ticket]] = {}
        self.pinned = {
            key
            for key, values in crawler.settings.getdict("DOWNLOAD_SLOTS").items()
            if "concurrency" in values
        }
        self.guard = SlotGuard.of(crawler)
        self.guard.limit_for = self._limit_for
        self.guard.pace_for = self._pace_for
        self.guard.listeners.append(self._sent)
        self.decision_listeners: list[Callable[[str, Decision, float], None]] = []
        """Told of every limit change (the trace records them)."""
        self.learning = learning or LearningConfig()
        self.wall_clock = wall_clock
        self._warm = self._load_state()
        self._last_save = -float("inf")
        # Issue 11: the site's budget shared with other processes (Redis).
        self.shared: SharedBudgets | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> JustProxiesThrottle:
        settings = crawler.settings
        config = Config.from_settings(settings, os.environ)
        throttle = ThrottleConfig.from_settings(settings, os.environ)
        if not config.enabled or not throttle.enabled:
            raise NotConfigured(
                "JUSTPROXIES_ENABLED or JUSTPROXIES_THROTTLE_ENABLED is off"
            )
        if settings.getbool("AUTOTHROTTLE_ENABLED"):
            raise JustProxiesConfigError(
                "AUTOTHROTTLE_ENABLED and JUSTPROXIES_THROTTLE_ENABLED are both on, "
                "and both would steer the same download slots (AutoThrottle through "
                "delays, JustProxies through concurrency). Set AUTOTHROTTLE_ENABLED = "
                "False, or JUSTPROXIES_THROTTLE_ENABLED = False to keep Scrapy's "
                "AutoThrottle."
            )
        concurrency = Concurrency.resolve(settings, config, os.environ)
        learning = LearningConfig.from_settings(settings, os.environ)
        try:
            controller_settings = ControllerSettings(
                start=concurrency.domain_start,
                maximum=concurrency.domain_max,
                increase_factor=throttle.increase_factor,
                tolerated_share=throttle.tolerated_share,
                slow_start=learning.slow_start,
            )
        except ControllerSettingsError as exc:
            name = _SETTING_FOR_FIELD.get(exc.field, exc.field)
            raise JustProxiesConfigError(f"{name}: {exc}") from None
        extension = cls(crawler, throttle, controller_settings, learning=learning)
        shared_config = SharedStateConfig.from_settings(settings, os.environ)
        if shared_config.enabled:
            from .shared import SharedBudgets  # noqa: PLC0415 - redis is optional

            extension.shared = SharedBudgets.from_crawler(
                crawler,
                shared_config,
                extension.guard,
                lambda key: extension._domain(key).controller.limit,
                tolerated_share=throttle.tolerated_share,
                budget_ttl=learning.max_age,
                take_over=extension._take_over,
            )
        crawler.signals.connect(extension._answered, signals.response_downloaded)
        crawler.signals.connect(extension._left, signals.request_left_downloader)
        crawler.signals.connect(extension._closed, signals.spider_closed)
        return extension

    # -- samples in ----------------------------------------------------------

    def _domain(self, key: str) -> _Domain:
        domain = self.domains.get(key)
        if domain is None:
            learned = self._warm.pop(key, None)
            controller = DomainController(
                self.controller_settings, self.clock(), learned=learned
            )
            domain = self.domains[key] = _Domain(controller, peak=controller.limit)
            if learned is not None:
                self._set_stat(f"justproxies/warm_start/{key}", controller.limit)
            self._set_stat(f"justproxies/limit_start/{key}", controller.limit)
            self._set_stat(f"justproxies/limit/{key}", controller.limit)
            self._max_stat(f"justproxies/limit_peak/{key}", controller.limit)
        return domain

    def _limit_for(self, key: str) -> int | None:
        if key in self.pinned:
            return None
        # A slot Scrapy garbage-collected and made again keeps its limit.
        return self._effective(key, self._domain(key).controller.limit)

    def _take_over(self, key: str, limit: int) -> None:
        """Issue 11 hook: the shared state went away; this slot's own
        controller takes over from the share it had (the share stays a cap)."""
        domain = self._domain(key)
        now = self.clock()
        start = Learned(limit, None, LimitKind.UNKNOWN, None, now, 0)
        domain.controller = DomainController(
            self.controller_settings, now, learned=start
        )

    def _effective(self, key: str, limit: int) -> int:
        """Issue 11 hook: the slot's share of a budget shared with other
        processes, when there is one; else its own controller's limit."""
        return self.shared.effective(key, limit) if self.shared else limit

    def _pace_for(self, key: str) -> float | None:
        if key in self.pinned:
            return None
        return self._domain(key).controller.pace(self.clock())

    def _sent(self, key: str, request: Request, in_flight: int) -> None:
        if key in self.pinned:
            return  # DOWNLOAD_SLOTS gives this slot its own fixed concurrency
        ticket = self._domain(key).controller.on_sent(self.clock(), in_flight)
        self._tickets[request] = (key, ticket)

    def _answered(self, response: Response, request: Request, spider: Spider) -> None:
        entry = self._tickets.pop(request, None)
        if entry is not None:
            self._record(*entry, classify_response(response.status, response.headers))

    def _left(self, request: Request, spider: Spider) -> None:
        # Still here: the download failed (timeout, connection error) and
        # said nothing about the site's limit.
        entry = self._tickets.pop(request, None)
        if entry is not None:
            self._record(*entry, Outcome.IGNORED)

    def _record(self, key: str, ticket: Ticket, outcome: Outcome) -> None:
        now = self.clock()
        domain = self._domain(key)
        domain.controller.record(ticket, outcome, now)
        if outcome is not Outcome.IGNORED:
            if self.shared is not None:  # issue 11: pooled with other processes
                self.shared.record(
                    key,
                    rate_limited=outcome is Outcome.RATE_LIMITED,
                    ok=outcome is Outcome.OK,
                    seconds=now - ticket.sent_at,
                )
            domain.answers += 1
            self._inc_stat(f"justproxies/answers/{key}")
        if outcome is Outcome.RATE_LIMITED:
            domain.rate_limited += 1
            self._inc_stat(f"justproxies/rate_limited/{key}")
        if domain.controller.pace(now) is None:
            self.guard.pace(key, None)  # a warm start's first volley is out
        decision = domain.controller.decide(now)
        if decision is not None and decision.changed:
            self._apply(key, domain, decision, now)
            if now - self._last_save >= SAVE_INTERVAL and self._save_state():
                self._last_save = now

    # -- decisions out -------------------------------------------------------

    def _apply(self, key: str, domain: _Domain, decision: Decision, now: float) -> None:
        self.guard.set_concurrency(key, self._effective(key, decision.new_limit))
        for listener in self.decision_listeners:
            listener(key, decision, now)
        domain.peak = max(domain.peak, decision.new_limit)
        domain.changes[decision.reason] += 1
        self._set_stat(f"justproxies/limit/{key}", decision.new_limit)
        self._max_stat(f"justproxies/limit_peak/{key}", decision.new_limit)
        self._inc_stat(f"justproxies/limit_changes/{decision.reason.value}")
        domain.unlogged.append(decision)
        if now - domain.last_logged >= self.throttle.log_interval:
            self._log_changes(key, domain, now)

    def _log_changes(self, key: str, domain: _Domain, now: float) -> None:
        decisions, domain.unlogged = domain.unlogged, []
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
        if not self.domains:
            return
        self._save_state()
        lines = ["JustProxies concurrency by domain:"]
        for key, domain in sorted(self.domains.items()):
            if domain.unlogged:
                self._log_changes(key, domain, self.clock())
            final = domain.controller.limit
            share = domain.rate_limited / domain.answers if domain.answers else 0.0
            self._set_stat(f"justproxies/limit_final/{key}", final)
            self._set_stat(f"justproxies/rate_limited_share/{key}", round(share, 4))
            changes = ", ".join(
                f"{count} {reason.value}"
                for reason, count in sorted(domain.changes.items())
            )
            lines.append(
                f"  {key}: final {final}, peak {domain.peak}; {domain.rate_limited} of "
                f"{domain.answers} answers were 429 ({share:.1%}); "
                f"changes: {changes or 'none'}"
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
        learned = {
            key: entry
            for key, domain in self.domains.items()
            if key not in self.pinned
            and (entry := domain.controller.learned(now)) is not None
        }
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

    def _inc_stat(self, key: str) -> None:
        if self.stats is not None:
            self.stats.inc_value(key)

    def _set_stat(self, key: str, value: Any) -> None:
        if self.stats is not None:
            self.stats.set_value(key, value)

    def _max_stat(self, key: str, value: Any) -> None:
        if self.stats is not None:
            self.stats.max_value(key, value)


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
