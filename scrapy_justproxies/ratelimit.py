"""The 429 path: rate-limit retries that hold nothing while they wait.

Thin Scrapy glue over the pure functions in :mod:`~scrapy_justproxies.retry`,
shaped like Scrapy's ``RetryMiddleware`` over ``get_retry_request``.

A retry that waits out ``Retry-After`` must not hold anything: a coroutine
returned from ``process_response`` would keep the original request in
``Downloader.active`` (one unit of ``CONCURRENT_REQUESTS``) for the whole
wait, and eight sleeping retries were enough to halve the rate of every
other site. So the retry leaves the downloader at once: ``process_response``
returns it marked with its wait, the ``request_scheduled`` handler takes it
out of Scrapy's hands (raising ``IgnoreRequest`` there drops a request
quietly, with no errback) and a reactor timer gives it back to
``engine.crawl`` when the wait is over. While any retry waits the spider is
kept open (``DontCloseSpider``); once the engine is closing none is sent. At
close the waiting ones go to ``JOBDIR`` for the resumed crawl, or are
counted and named in one line.

The middleware sits at 940, after the HTTP cache (900) on the way back and
before ``RetryMiddleware`` (550): it sees every answer and every download
error first, so it also reports them to the gateway health check. A 429 or
a response the gateway made itself never reaches the cache.

One thing cannot wait for ``process_response``: the downloader frees a
request's place, and sends the slot's next request, before any middleware
sees the answer (under the asyncio reactor an event-loop turn or more
before). So a 429's place, or the whole slot while the site is closed, is
held from the ``response_downloaded`` signal, which comes first, and the
throttle hears of each downloaded answer there too (through the slot guard).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from scrapy import signals
from scrapy.exceptions import DontCloseSpider, IgnoreRequest, NotConfigured
from scrapy.utils.defer import deferred_from_coro
from scrapy.utils.httpobj import urlparse_cached
from scrapy.utils.job import job_dir
from scrapy.utils.request import request_from_dict

from .config import Concurrency, Config, JustProxiesConfigError, ThrottleConfig
from .failures import gateway_failure, proxy_generated
from .health import Failure, GatewayHealth, Verdict
from .middleware import META_ROUTED, check_middlewares, priorities_of, site_of
from .retry import (
    RETRIES_META,
    Refusal,
    closed_until,
    disproves_closed,
    ewma,
    get_429_retry_request,
    next_429_attempt,
    parse_retry_after,
    probe_delay,
)
from .retry import retry_delay as compute_retry_delay
from .slots import SlotGuard, call_later
from .state import replace_atomically

if TYPE_CHECKING:
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

RATE_LIMIT_PRIORITY: Final = 940
"""After HttpCacheMiddleware (900) on the way back, so a 429 never reaches
the cache, and before RetryMiddleware (550), so a 429 never uses
``RETRY_TIMES``."""

HOLD_WITHOUT_LATENCY: Final = 1.0
"""How long a 429 keeps its slot place while the site's answer time is not
known yet (no non-429 answer so far): short, never the whole wait."""

LATENCY_KEYS: Final = 4096
"""Answer-time averages kept (most recently used slots): bounded memory."""

JOBDIR_FILE: Final = "justproxies-waiting-retries.pickle"

# Private meta: how long a retry waits before it is scheduled again.
_WAIT: Final = "_justproxies_wait"
# Private meta: the wait chosen for a 429 when it was downloaded (its place
# held then), until process_response makes its retry.
_WAIT_CHOSEN: Final = "_justproxies_wait_chosen"
# Private meta: this plugin set dont_cache on a gateway-made answer's request;
# its retry (a copy) must not inherit it.
_OWN_DONT_CACHE: Final = "_justproxies_dont_cache"


class JustProxiesRateLimitMiddleware:
    """Retry the site's 429s outside ``RETRY_TIMES``, after ``Retry-After``,
    holding nothing while they wait; keep 429s and gateway-made errors out of
    the HTTP cache; hold a 429's slot place (or the slot) as it is
    downloaded; report every failure to the throttle and the gateway health
    check.

    The add-on enables it; by hand add it at 940 to ``DOWNLOADER_MIDDLEWARES``.
    """

    def __init__(
        self,
        crawler: Crawler,
        throttle: ThrottleConfig,
        concurrency: Concurrency,
        gateway_url: str,
    ) -> None:
        self.crawler = crawler
        self.throttle = throttle
        self.stats = crawler.stats
        self.guard = SlotGuard.of(crawler, concurrency)
        self.health = GatewayHealth()
        self.gateway_url = gateway_url
        self.jobdir = job_dir(crawler.settings)
        self.stopping: str | None = None
        # Per download slot: how long the site takes to answer (EWMA of the
        # non-429 answers' download_latency), what a 429 holds its place for.
        self.latency: dict[str, float] = {}
        # Per download slot: its last 429 with a Retry-After (when, and the
        # instant it named), to tell a site closed until a known instant.
        self.refusals: dict[str, Refusal] = {}
        # Slots held for a long Retry-After: when the refused request was
        # sent, and the instant the site named. A request sent in between and
        # admitted disproves the claim: the slot is then never held again.
        self.holds: dict[str, tuple[float, float]] = {}
        self.distrusted: dict[str, None] = {}
        self.waiting: dict[Request, Any] = {}  # -> its IDelayedCall
        self.woke_while_closing: list[Request] = []

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> JustProxiesRateLimitMiddleware:
        config = Config.from_settings(crawler.settings, os.environ)
        if not config.enabled:
            raise NotConfigured("JUSTPROXIES_ENABLED is false")
        assert config.gateway is not None
        check_middlewares(crawler.settings)
        throttle = ThrottleConfig.from_settings(crawler.settings, os.environ)
        concurrency = Concurrency.resolve(crawler.settings, config, os.environ)
        middleware = cls(crawler, throttle, concurrency, config.gateway.url)
        crawler.signals.connect(middleware._downloaded, signals.response_downloaded)
        crawler.signals.connect(middleware._scheduled, signals.request_scheduled)
        crawler.signals.connect(middleware._idle, signals.spider_idle)
        crawler.signals.connect(middleware._opened, signals.spider_opened)
        crawler.signals.connect(middleware._closed, signals.spider_closed)
        return middleware

    # -- Scrapy hooks --------------------------------------------------------

    def process_response(
        self, request: Request, response: Response, spider: Spider | None = None
    ) -> Request | Response:
        meta = request.meta
        if META_ROUTED in meta:
            self.health.answered()
        # Chosen (and the place held) when it was downloaded: never left in
        # the meta, whatever becomes of this answer.
        wait = meta.pop(_WAIT_CHOSEN, None)
        status = response.status
        if status < 400:
            return response
        if proxy_generated(response.headers):
            # The gateway's own 502/503/429 says nothing about the page: keep
            # it out of the cache (a retry would be answered from there).
            if not meta.get("dont_cache"):
                meta["dont_cache"] = True
                meta[_OWN_DONT_CACHE] = True
            return response
        if status != 429:
            return response
        if meta.get("dont_retry"):
            meta["dont_cache"] = True
            return response
        return self._retry(request, response, wait)

    def process_exception(
        self, request: Request, exception: Exception, spider: Spider | None = None
    ) -> None:
        request.meta.pop(_WAIT_CHOSEN, None)
        self.guard.failed(request)
        if META_ROUTED not in request.meta:
            return
        failure = gateway_failure(exception)
        if failure in (Failure.REFUSED, Failure.DROPPED):
            self._inc("justproxies/gateway/connection_errors")
        elif failure is Failure.TIMEOUT:
            self._inc("justproxies/gateway/timeouts")
        if self.stopping:
            return
        # By site: several static exits to one slow site are still one site.
        verdict = self.health.failed(
            failure,
            site_of(request.meta),
            time.monotonic(),
            tunneled=urlparse_cached(request).scheme == "https",
        )
        if verdict is not None:
            self._stop(verdict, type(exception).__name__)

    # -- 429 retries ---------------------------------------------------------

    def _downloaded(
        self, response: Response, request: Request, spider: Spider | None = None
    ) -> None:
        """``response_downloaded``: a site's 429 that will be retried holds
        its place (or the whole slot) now, before the downloader frees the
        place and sends the slot's next request into the same 429
        (:meth:`~scrapy_justproxies.slots.SlotGuard._downloaded`).
        :meth:`_retry` then only schedules the retry, after the wait chosen
        here. The site's answer time, and whether an admitted answer
        disproves a hold, are read here too: at the same moment as the
        429s they are compared with."""
        meta = request.meta
        status = response.status
        if status < 400:
            self._learn_latency(meta)
            if self.holds:
                self._check_hold(meta)
            return
        if proxy_generated(response.headers):
            return
        if status != 429:
            self._learn_latency(meta)
            return
        attempt = next_429_attempt(meta, max_retries=self.throttle.retry_429_times)
        if meta.get("dont_retry") or attempt is None:
            return  # not retried (see process_response and _retry): held by none
        meta[_WAIT_CHOSEN] = self._hold(request, response, attempt)

    def _retry(
        self, request: Request, response: Response, wait: float | None
    ) -> Request | Response:
        """A 429 from the site: retry later, outside RETRY_TIMES, after
        ``wait`` (chosen when it was downloaded) if known."""
        # Never stored, whatever happens next: a cached 429 would answer
        # every retry.
        asked_dont_cache = request.meta.get("dont_cache")
        request.meta["dont_cache"] = True
        retry = get_429_retry_request(
            request, max_retries=self.throttle.retry_429_times
        )
        if retry is None:
            # Ours was the 429 budget: RetryMiddleware must not spend RETRY_TIMES
            # on it too.
            request.meta["dont_retry"] = True
            self._inc("justproxies/retries/rate_limited_gave_up")
            logger.error(
                "Gave up on %s after %d retries on HTTP 429 "
                "(JUSTPROXIES_RETRY_429_TIMES); the site kept rate-limiting it.",
                request, self.throttle.retry_429_times,
            )  # fmt: skip
            return response
        if "cached" not in response.flags and not asked_dont_cache:
            # The 429 came from the site, not from a cache filled before: the
            # retry may be looked up in (and its answer stored to) the cache.
            retry.meta.pop("dont_cache", None)
        self._inc("justproxies/retries/rate_limited")
        if wait is None and "cached" in response.flags:
            # A 429 stored by a crawl without this plugin: nothing went to
            # the site, so nothing is held; the retry only waits.
            wait = self._wait(response, retry.meta[RETRIES_META])[1]
        elif wait is None:
            # Not downloaded (a middleware's process_request made it).
            wait = self._hold(request, response, retry.meta[RETRIES_META])
        retry.meta[_WAIT] = wait
        # HttpProxyMiddleware puts the credentials back on the way out.
        retry.headers.pop(b"Proxy-Authorization", None)
        retry.meta.pop("_auth_proxy", None)
        return retry

    def _hold(self, request: Request, response: Response, attempt: int) -> float:
        """How long the 429'd ``request`` waits before its ``attempt``-th
        retry; holds its slot place for as long as the site's usual answer
        takes, or the whole slot while the site is closed."""
        retry_after, delay = self._wait(response, attempt)
        key = request.meta.get("download_slot", "")
        if self.throttle.retry_after_mode == "slot":
            # Hold the whole slot: nothing more goes to the site until then.
            self.guard.pause(key, delay)
        elif (closed := self._closed_for(key, retry_after, request.meta)) is not None:
            # The site is closed to every request until a known instant (a
            # fixed window's count is spent): new requests sent meanwhile
            # would each draw the same 429. Hold the slot until then; it
            # resumes at its limit, which the throttle keeps adjusting.
            self.guard.pause(key, closed)
            self._inc("justproxies/retries/slot_held")
        else:
            # A rate limiter answers 429 at once; a place freed at once would
            # send the next request straight into the next 429 before the
            # throttle caught up. Held as long as the site's usual answer
            # would have taken in all, a 429 costs the slot what any request
            # costs, no more.
            took = request.meta.get("download_latency")
            usual = self.latency.get(key, HOLD_WITHOUT_LATENCY)
            hold = min(usual - (took if isinstance(took, float) else 0.0), delay)
            self.guard.hold_place(key, hold)
        return delay

    def _wait(self, response: Response, attempt: int) -> tuple[float | None, float]:
        """The 429's ``Retry-After`` in seconds (None: none readable), and
        how long its ``attempt``-th retry waits."""
        retry_after = parse_retry_after(
            response.headers.get(b"Retry-After"), time.time()
        )
        delay = compute_retry_delay(
            retry_after, attempt=attempt, maximum=self.throttle.retry_after_max
        )
        return retry_after, delay

    def _scheduled(self, request: Request, spider: Spider) -> None:
        meta = request.meta
        if meta.pop(_OWN_DONT_CACHE, None):
            meta.pop("dont_cache", None)
        wait = meta.pop(_WAIT, None)
        if wait is None:
            return
        if self._closing():
            self.woke_while_closing.append(request)
        else:
            self.waiting[request] = call_later(wait, self._wake, request)
        # Out of Scrapy's hands until the wait is over: IgnoreRequest from a
        # request_scheduled handler drops it quietly (no errback, no log).
        raise IgnoreRequest

    def _wake(self, request: Request) -> None:
        self.waiting.pop(request, None)
        engine: Any = self.crawler.engine
        if self._closing() or engine is None:
            self.woke_while_closing.append(request)
            return
        engine.crawl(request)

    def _closing(self) -> bool:
        engine: Any = self.crawler.engine
        slot = getattr(engine, "_slot", None)
        return (
            self.stopping is not None
            or engine is None
            or slot is None
            or slot.closing is not None
        )

    def _idle(self, spider: Spider) -> None:
        if self.waiting:
            raise DontCloseSpider

    def _opened(self, spider: Spider) -> None:
        if self.jobdir is None:
            return
        path = Path(self.jobdir) / JOBDIR_FILE
        if not path.exists():
            return
        try:
            with path.open("rb") as saved:
                stored = pickle.load(saved)  # noqa: S301 (ours)
            if not isinstance(stored, list):
                raise TypeError(f"a {type(stored).__name__}, not a list")
        except Exception as error:  # any unreadable file
            # Truncated (a crash while an older version wrote it), or not
            # ours: set aside, never a crawl that cannot resume.
            aside = path.with_name(path.name + ".unreadable")
            with contextlib.suppress(OSError):
                os.replace(path, aside)
            logger.warning(
                "JustProxies: could not read the requests that were waiting out "
                "a 429 when the crawl paused (%s: %s); moved the file to %s and "
                "going on without them.",
                type(error).__name__, error, aside,
            )  # fmt: skip
            return
        path.unlink()
        resent = 0
        for entry in stored:
            try:
                request = request_from_dict(entry, spider=spider)
            except Exception:  # a callback the spider lost, say
                self._inc("justproxies/retries/rate_limited_dropped")
                continue
            self.waiting[request] = call_later(0, self._wake, request)
            resent += 1
        logger.info(
            "JustProxies: %d requests that were waiting out a 429 when the "
            "crawl paused are sent again%s.",
            resent,
            f" ({len(stored) - resent} could not be rebuilt)"
            if resent < len(stored)
            else "",
        )

    def _closed(self, spider: Spider, reason: str) -> None:
        for call in self.waiting.values():
            if call.active():
                call.cancel()
        left = [*self.woke_while_closing, *self.waiting]
        self.waiting.clear()
        self.woke_while_closing = []
        if not left:
            return
        if self.jobdir is not None:
            saved = _picklable(left, spider)
            try:
                replace_atomically(
                    Path(self.jobdir) / JOBDIR_FILE, pickle.dumps(saved, protocol=4)
                )
            except OSError as error:
                self._inc("justproxies/retries/rate_limited_dropped", len(left))
                logger.error(
                    "JustProxies: %d requests were waiting out a 429 when the "
                    "spider closed (%s), and could not be kept in JOBDIR (%s); "
                    "they were not sent (e.g. %s).",
                    len(left), reason, error, left[0].url,
                )  # fmt: skip
                return
            self._inc("justproxies/retries/rate_limited_saved", len(saved))
            lost = len(left) - len(saved)
            if lost:
                self._inc("justproxies/retries/rate_limited_dropped", lost)
            logger.info(
                "JustProxies: %d requests were waiting out a 429 when the spider "
                "closed (%s); %d kept in JOBDIR for the resumed crawl%s.",
                len(left), reason, len(saved),
                f", {lost} dropped (their callbacks are not spider methods, or "
                "their meta cannot be pickled)"
                if lost else "",
            )  # fmt: skip
            return
        self._inc("justproxies/retries/rate_limited_dropped", len(left))
        logger.warning(
            "JustProxies: %d requests were waiting out a 429 when the spider "
            "closed (%s) and were not sent (e.g. %s). Set JOBDIR to keep them "
            "for a resumed crawl.",
            len(left), reason, left[0].url,
        )  # fmt: skip

    # -- helpers -------------------------------------------------------------

    def _closed_for(
        self, key: str, retry_after: float | None, meta: dict[str, Any]
    ) -> float | None:
        """Seconds for which slot ``key`` should send nothing new after a 429
        that said ``retry_after`` (:func:`~scrapy_justproxies.retry.closed_until`),
        or None. Remembers the 429 for the next one's evidence, and the hold
        for the check of the admitted answers (:meth:`_check_hold`)."""
        if retry_after is None or key in self.distrusted:
            return None
        retry_after = min(retry_after, self.throttle.retry_after_max)
        now = time.monotonic()
        until = closed_until(
            now, retry_after, self.latency.get(key), self.refusals.get(key)
        )
        _keep_recent(self.refusals, key, Refusal(now, now + retry_after))
        if until is None:
            return None
        hold = self.holds.get(key)
        if hold is None or hold[1] <= now:
            self.holds[key] = (_sent_at(meta, now), until)
            probe = probe_delay(until - now)
            if probe is not None:
                call_later(probe, self.guard.probe, key)
        else:
            self.holds[key] = (hold[0], max(hold[1], until))
        return until - now

    def _check_hold(self, meta: dict[str, Any]) -> None:
        """An admitted answer: if its request went out while its slot was
        held for a 429's Retry-After (the probe, or one sent before the 429
        came back), clearly after the refused one and before the named
        instant, the site was not closed: resume the slot and never hold it
        again in this crawl (a token bucket that sends a fixed, long
        Retry-After)."""
        key = meta.get("download_slot", "")
        hold = self.holds.get(key)
        if hold is None:
            return
        now = time.monotonic()
        if hold[1] <= now:
            del self.holds[key]
            return
        if not disproves_closed(hold[0], hold[1], _sent_at(meta, now)):
            return
        del self.holds[key]
        _keep_recent(self.distrusted, key, None)
        self.guard.resume(key)
        self._inc("justproxies/retries/slot_hold_disproved")
        logger.info(
            "JustProxies: %s admitted a request sent while its Retry-After said "
            "it was closed: from now on only its 429'd requests wait for "
            "Retry-After, the slot is no longer held.",
            key,
        )

    def _learn_latency(self, meta: dict[str, Any]) -> None:
        latency = meta.get("download_latency")
        if isinstance(latency, float):
            key = meta.get("download_slot", "")
            _keep_recent(self.latency, key, ewma(self.latency.get(key), latency))

    def _inc(self, key: str, count: int = 1) -> None:
        if self.stats is not None:
            self.stats.inc_value(key, count)

    def _stop(self, verdict: Verdict, last_error: str) -> None:
        self.stopping = verdict.value
        if verdict is Verdict.UNREACHABLE:
            cause = "could not be reached"
            hint = "Check JUSTPROXIES_GATEWAY and your network"
        else:
            cause = "accepts connections but does not answer"
            hint = "Check the gateway's status and JUSTPROXIES_GATEWAY"
        logger.error(
            "The JustProxies gateway %s %s: %s, with no answer of any kind in "
            "between (last error: %s). %s. Stopping the crawl; nothing is sent "
            "direct.",
            self.gateway_url, cause, self.health.describe(time.monotonic()),
            last_error, hint,
        )  # fmt: skip
        # Typed loosely: the close API differs between Scrapy 2.13 and 2.14+.
        engine: Any = self.crawler.engine
        if engine is None:
            return
        if hasattr(engine, "close_spider_async"):  # Scrapy 2.14+
            deferred_from_coro(engine.close_spider_async(reason=verdict.value))
        else:
            engine.close_spider(self.crawler.spider, verdict.value)


def check_rate_limit_order(settings: BaseSettings) -> None:
    """Fail at start-up unless the rate-limit middleware is enabled, after
    the HTTP cache and before RetryMiddleware on the way back."""
    from scrapy.downloadermiddlewares.httpcache import (  # noqa: PLC0415
        HttpCacheMiddleware,
    )
    from scrapy.downloadermiddlewares.retry import RetryMiddleware  # noqa: PLC0415

    own, cache, retry = priorities_of(
        settings, JustProxiesRateLimitMiddleware, HttpCacheMiddleware, RetryMiddleware
    )
    name = "scrapy_justproxies.JustProxiesRateLimitMiddleware"
    if own is None:
        raise JustProxiesConfigError(
            f"{name} is not in DOWNLOADER_MIDDLEWARES; without it a 429 uses "
            f"RETRY_TIMES and loses the URL. Add it at {RATE_LIMIT_PRIORITY} "
            "(the add-on does)."
        )
    if retry is not None and own <= retry:
        raise JustProxiesConfigError(
            f"{name} has priority {own} in DOWNLOADER_MIDDLEWARES, not above "
            f"RetryMiddleware's {retry}, which would spend RETRY_TIMES on 429s; "
            f"use {RATE_LIMIT_PRIORITY}."
        )
    if settings.getbool("HTTPCACHE_ENABLED") and cache is not None and own <= cache:
        raise JustProxiesConfigError(
            f"{name} has priority {own} in DOWNLOADER_MIDDLEWARES, not above "
            f"HttpCacheMiddleware's {cache}, so the cache would store 429s and "
            f"answer every retry from there; use {RATE_LIMIT_PRIORITY}."
        )


_V = TypeVar("_V")


def _keep_recent(items: dict[str, _V], key: str, value: _V) -> None:
    """Set ``items[key]`` as the most recently used of at most
    :data:`LATENCY_KEYS` (per-slot memory stays bounded on broad crawls)."""
    items.pop(key, None)
    items[key] = value
    if len(items) > LATENCY_KEYS:
        del items[next(iter(items))]  # least recently used


def _picklable(requests: list[Request], spider: Spider) -> list[dict[str, Any]]:
    """The requests as JOBDIR keeps them, each checked on its own: a callback
    that is not a spider method, or a meta value that cannot be pickled (a
    lambda, say), loses that request only, not all of them."""
    saved = []
    for request in requests:
        try:
            entry = request.to_dict(spider=spider)
            pickle.dumps(entry, protocol=4)
        except (ValueError, TypeError, AttributeError, pickle.PicklingError):
            continue
        saved.append(entry)
    return saved


def _sent_at(meta: dict[str, Any], now: float) -> float:
    """When the request of an answer that came ``now`` was sent."""
    took = meta.get("download_latency")
    return now - (took if isinstance(took, float) else 0.0)
