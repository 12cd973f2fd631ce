"""The downloader middleware: every request goes through the gateway.

Thin Scrapy glue. Settings come from :class:`~scrapy_justproxies.config.Config`,
the routing decision from :func:`route`, and Scrapy's own
``HttpProxyMiddleware`` (priority 750, after this one) turns the credentials
in ``meta['proxy']`` into ``Proxy-Authorization`` and takes them back out of
``meta``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, NoReturn

from scrapy import signals
from scrapy.downloadermiddlewares.httpproxy import HttpProxyMiddleware
from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.utils.defer import deferred_from_coro
from scrapy.utils.httpobj import urlparse_cached
from scrapy.utils.misc import load_object

from .billing import ByteMeter
from .config import (
    Concurrency,
    Config,
    JustProxiesConfigError,
    StaticExit,
    ThrottleConfig,
    check_download_handlers,
    effective_settings,
    has_startproject_throttle,
    replaced_startproject_throttle,
    report_startup_error,
    request_parameter_problem,
    scheduler_queue_line,
)
from .failures import (
    is_gateway_connection_failure,
    proxy_generated,
    tunnel_status,
)
from .queue import QUEUE_PATH
from .slots import SlotGuard

if TYPE_CHECKING:
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

PRIORITY: Final = 745
"""Where the middleware goes in ``DOWNLOADER_MIDDLEWARES``: just before
Scrapy's ``HttpProxyMiddleware`` (750), so the credentials it puts in
``meta['proxy']`` stay there for as short a stretch as possible."""

# Per-request meta keys users may set.
META_DIRECT: Final = "justproxies_direct"
META_COUNTRY: Final = "justproxies_country"
META_SESSION: Final = "justproxies_session"
# Private: the credential-free gateway URL this middleware routed the request to.
META_ROUTED: Final = "_justproxies_gateway"
# Private: ``(exit label, site slot key)`` of the static exit (JUSTPROXIES_
# STATIC_EXITS) this attempt went through.
META_EXIT: Final = "_justproxies_exit"
EXIT_REQUESTS_STAT: Final = "justproxies/requests/exit/{label}"


def exit_slot_key(label: str, site: str) -> str:
    """The download slot of one (static exit, site) pair: ``<label>|<site>``.

    Each pair is a slot of its own, so Scrapy's slot machinery, the
    throttle's controller and the per-slot cap apply per exit IP and site:
    a site that rate-limits one IP slows that exit only.
    """
    return f"{label}|{site}"


def site_of(meta: dict[str, Any]) -> str:
    """The site (slot key without the exit) a request went to."""
    chosen = meta.get(META_EXIT)
    if isinstance(chosen, tuple | list) and len(chosen) == 2:
        return str(chosen[1])
    return str(meta.get("download_slot", ""))


def pick_exit(loads: Sequence[tuple[int, int]], first: int = 0) -> int:
    """The index of the exit with the most free room for a site.

    ``loads`` holds per exit ``(requests in its slot, its limit)``; requests
    count whether queued or being downloaded. Room is judged relative to
    the limit (the fewest requests per place), so that when every exit is
    full the queues grow in proportion to the limits and drain together,
    instead of the slowest exit finishing last. Ties go to the first exit
    from ``first`` on (round robin), so an idle crawl spreads evenly.
    """
    best, best_load = first % len(loads), float("inf")
    for step in range(len(loads)):
        index = (first + step) % len(loads)
        used, limit = loads[index]
        load = used / limit if limit > 0 else float("inf")
        if load < best_load:
            best, best_load = index, load
    return best


class Route(Enum):
    GATEWAY = "proxied"
    DIRECT = "direct"
    OWN_PROXY = "own_proxy"


_ROUTE_STATS: Final = {how: f"justproxies/requests/{how.value}" for how in Route}


class BadRequestMeta(ValueError):
    """A per-request meta key has a value the plugin cannot act on."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"meta[{key!r}] {problem}")
        self.key = key


def route(meta: dict[str, Any]) -> Route:
    """Decide how one request travels, from its meta alone.

    Only a real ``True`` in ``meta['justproxies_direct']`` opts out: a string
    such as ``"false"`` is truthy, and a typo must never send a request
    around the gateway. ``meta['proxy'] = ""`` (``os.getenv('X', '')``) counts
    as unset.
    """
    direct = meta.get(META_DIRECT)
    if direct is True:
        return Route.DIRECT
    if direct is not None and direct is not False:
        raise BadRequestMeta(
            META_DIRECT,
            f"is {_shown(direct)}; use True to send the request direct, or False "
            "(or leave it out) to route it through the gateway",
        )
    proxy = meta.get("proxy", ...)
    if (
        proxy is ...
        or proxy == ""
        or (META_ROUTED in meta and proxy == meta[META_ROUTED])
    ):
        return Route.GATEWAY
    return Route.OWN_PROXY


def _meta_text(value: Any) -> str | None:
    """A country or session from meta as text: str() because the proxy URL
    cache needs hashable keys and meta may hold a number; a bool is no id
    (``True`` would become session "True"), so it becomes "" and is refused.
    An empty or blank string is unset, as everywhere (``os.getenv('X', '')``).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return ""
    text = str(value)
    return text if text.strip() else None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class JustProxiesMiddleware:
    """Route every request through the JustProxies gateway.

    Enable it with ``ADDONS = {"scrapy_justproxies.Addon": 100}``, or by hand
    with ``DOWNLOADER_MIDDLEWARES = {"scrapy_justproxies.JustProxiesMiddleware":
    745}``.
    """

    def __init__(
        self,
        crawler: Crawler,
        config: Config,
        concurrency: Concurrency,
        throttle: ThrottleConfig | None = None,
    ):
        assert config.gateway is not None
        self.crawler = crawler
        self.config = config
        self.concurrency = concurrency
        self.stats = crawler.stats
        self.throttle = throttle or ThrottleConfig()
        # The per-domain cap holds on every download slot from here on.
        SlotGuard.of(crawler, concurrency)
        self._gateway_url = config.gateway.url
        self._stopping: str | None = None
        self._warned_direct = False
        # Hostnames that answered an http 407 without a proxy's marker: a
        # site may answer 407 itself; from two sites it is the gateway.
        self._unmarked_407_hosts: set[str] = set()
        self._refusals_logged: set[str] = set()
        # Built once per (country, session): rendering and quoting it for
        # every request costs more than the rest of process_request.
        self._proxy_url = functools.lru_cache(maxsize=1024)(config.proxy_url)
        # Without the add-on the preset never reached Scrapy's settings, so
        # DOWNLOAD_TIMEOUT and RETRY_TIMES are applied per request.
        settings = crawler.settings
        self._meta_defaults: dict[str, Any] = {}
        if settings.getfloat("DOWNLOAD_TIMEOUT") != concurrency.download_timeout:
            self._meta_defaults["download_timeout"] = concurrency.download_timeout
        if settings.getint("RETRY_TIMES") != concurrency.retry_times:
            self._meta_defaults["max_retry_times"] = concurrency.retry_times
        self._scrapy_timeout = settings.getfloat("DOWNLOAD_TIMEOUT")
        self.exits: tuple[StaticExit, ...] = config.static_exits
        if self.exits:
            SlotGuard.of(crawler).spread_over_exits(e.label for e in self.exits)
        self._next_exit = 0

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> JustProxiesMiddleware:
        try:
            return cls._from_crawler(crawler)
        except JustProxiesConfigError as error:
            report_startup_error(logger, error)
            raise

    @classmethod
    def _from_crawler(cls, crawler: Crawler) -> JustProxiesMiddleware:
        config = Config.from_settings(crawler.settings, os.environ)
        if not config.enabled:
            logger.info(
                "JustProxies is disabled (JUSTPROXIES_ENABLED is false): "
                "requests go out without the gateway."
            )
            raise NotConfigured("JUSTPROXIES_ENABLED is false")
        check_middlewares(crawler.settings)
        check_download_handlers(crawler.settings)
        concurrency = Concurrency.resolve(crawler.settings, config, os.environ)
        throttle = ThrottleConfig.from_settings(crawler.settings, os.environ)
        middleware = cls(crawler, config, concurrency, throttle)
        crawler.signals.connect(middleware._engine_started, signals.engine_started)
        crawler.signals.connect(middleware._scheduled, signals.request_scheduled)
        middleware._log_startup()
        return middleware

    # -- Scrapy hooks --------------------------------------------------------

    def process_request(
        self, request: Request, spider: Spider | None = None
    ) -> Request | Response | None:
        if self._stopping:
            raise IgnoreRequest(f"JustProxies stopped the crawl: {self._stopping}")
        try:
            how = route(request.meta)
        except BadRequestMeta as error:
            self._refuse(request, error)
        if how is not Route.GATEWAY:
            self._inc(_ROUTE_STATS[how])
            # Meta copied from a routed response must not drag this request
            # to the gateway without credentials (or stop the crawl on a 407).
            gateway = request.meta.pop(META_ROUTED, None)
            request.meta.pop("_auth_proxy", None)
            request.headers.pop(b"Proxy-Authorization", None)
            if how is Route.DIRECT and request.meta.get("proxy") in (None, "", gateway):
                # None also keeps HttpProxyMiddleware from using http_proxy
                # from the environment: the user asked for direct.
                request.meta["proxy"] = None
            elif request.meta.get("proxy") is None and not self._warned_direct:
                self._warned_direct = True
                logger.warning(
                    "%s has meta['proxy'] = None, so it goes out WITHOUT the "
                    "JustProxies gateway. Use meta['%s'] = True to say so "
                    "explicitly (this warning is shown once).",
                    request,
                    META_DIRECT,
                )
            return None
        if urlparse_cached(request).scheme not in ("http", "https"):
            # Scrapy's other network handlers (ftp, s3) ignore meta['proxy']
            # and would connect straight to the site.
            self._inc("justproxies/requests/refused_scheme")
            raise IgnoreRequest(
                f"{request.url[:60]}: only http and https go through the JustProxies "
                f"gateway; set meta['{META_DIRECT}'] = True to send it direct."
            )
        country, session = (
            request.meta.get(META_COUNTRY),
            request.meta.get(META_SESSION),
        )
        country_text, session_text = _meta_text(country), _meta_text(session)
        problem = request_parameter_problem(country_text, session_text)
        if problem is not None:
            which, fix = problem
            key, value = (
                (META_COUNTRY, country)
                if which == "country"
                else (META_SESSION, session)
            )
            self._refuse(request, BadRequestMeta(key, f"is {_shown(value)}; {fix}"))
        routed = self._set_proxy(request, country_text, session_text)
        self._inc(_ROUTE_STATS[Route.GATEWAY])
        request.meta[META_ROUTED] = routed
        for key, value in self._meta_defaults.items():
            if key == "download_timeout":
                # DownloadTimeoutMiddleware (350) already set Scrapy's default.
                if request.meta.get(key, self._scrapy_timeout) == self._scrapy_timeout:
                    request.meta[key] = value
            else:
                request.meta.setdefault(key, value)
        return None

    def process_response(
        self, request: Request, response: Response, spider: Spider | None = None
    ) -> Response:
        # Over https the gateway's 407 comes as a failed CONNECT; a 407
        # response there is the site's own.
        if (
            response.status == 407
            and META_ROUTED in request.meta
            and urlparse_cached(request).scheme == "http"
        ):
            self._judge_http_407(request, response)
        # The scrubber (950) has done this already; again here, so nothing
        # later on the way back (Retry, Redirect, the spider) can see it.
        _scrub(request)
        return response

    def process_exception(
        self, request: Request, exception: Exception, spider: Spider | None = None
    ) -> Request | Response | None:
        if META_ROUTED not in request.meta:
            return None
        if tunnel_status(exception) == 407:
            self._credentials_rejected(request)
        _scrub(request)
        return None

    # -- signals -------------------------------------------------------------

    def _engine_started(self) -> None:
        engine = self.crawler.engine
        assert engine is not None
        downloader = engine.downloader
        downloader.total_concurrency = self.concurrency.total
        # Through a forward proxy every http request shares one pooled host
        # key (the gateway), so Scrapy's default pool of
        # CONCURRENT_REQUESTS_PER_DOMAIN idle connections would close most
        # connections after each response.
        _size_connection_pools(downloader, self.concurrency.total)

    def _scheduled(self, request: Request, spider: Spider) -> None:
        # Sent before the scheduler files the request, so its download slot
        # (www. and JUSTPROXIES_SLOT_GROUPS) is known to Scrapy's
        # downloader-aware priority queue too.
        if "download_slot" not in request.meta:
            hostname = urlparse_cached(request).hostname or ""
            key = self.throttle.slot_key(hostname)
            if key != hostname:
                request.meta["download_slot"] = key
        # A retry or redirect of a routed request carries the Basic
        # credentials HttpProxyMiddleware put in its headers; with JOBDIR the
        # scheduler would pickle them to disk. process_request puts them back.
        if META_ROUTED in request.meta:
            request.headers.pop(b"Proxy-Authorization", None)
            request.meta.pop("_auth_proxy", None)

    def _set_proxy(
        self, request: Request, country: str | None, session: str | None
    ) -> str:
        """Put the gateway (or a static exit) with credentials in
        ``meta['proxy']``; return the URL without them."""
        if self.exits and session is None:
            # A request with its own session keeps it (and its exit IP);
            # the others spread over the static exits, afresh on every
            # attempt: a 429 says that IP is over its limit on the site, so
            # the retry goes wherever there is room now.
            exit_, site = self._choose_exit(request)
            request.meta["proxy"] = self._proxy_url(
                country=country, session=exit_.session, endpoint=exit_.endpoint
            )
            request.meta["download_slot"] = exit_slot_key(exit_.label, site)
            request.meta[META_EXIT] = (exit_.label, site)
            self._inc(EXIT_REQUESTS_STAT.format(label=exit_.label))
            routed = exit_.endpoint.url if exit_.endpoint else self._gateway_url
        else:
            request.meta["proxy"] = self._proxy_url(country=country, session=session)
            request.meta.pop(META_EXIT, None)
            routed = self._gateway_url
        return routed

    # -- static exits --------------------------------------------------------

    def _choose_exit(self, request: Request) -> tuple[StaticExit, str]:
        """The exit with the most free room for the request's site, and the
        site's slot key (the slot without an exit)."""
        meta = request.meta
        previous = meta.get(META_EXIT)
        slot = meta.get("download_slot")
        if (
            isinstance(previous, tuple | list)
            and len(previous) == 2
            and slot == exit_slot_key(*previous)
        ):
            site = str(previous[1])  # a retry or redirect of an earlier attempt
        elif slot is not None:
            site = str(slot)  # JUSTPROXIES_SLOT_GROUPS, www., or the user's own
        else:
            site = self.throttle.slot_key(urlparse_cached(request).hostname or "")
        loads = [self._load(exit_slot_key(e.label, site)) for e in self.exits]
        index = pick_exit(loads, self._next_exit)
        self._next_exit = index + 1
        return self.exits[index], site

    def _load(self, key: str) -> tuple[int, int]:
        """``(requests queued or downloading, limit)`` of one download slot;
        a slot Scrapy has not made yet is empty, at the limit it would get."""
        guard = SlotGuard.of(self.crawler)
        slot = guard.slot(key)
        if slot is not None:
            return len(slot.queue) + len(slot.transferring), slot.concurrency
        limit = guard.throttle.limit_for(key) if guard.throttle else None
        if limit is None:
            limit = self.concurrency.domain_start
        return 0, limit

    # -- helpers -------------------------------------------------------------

    def _inc(self, key: str) -> None:
        if self.stats is not None:
            self.stats.inc_value(key)

    def _refuse(self, request: Request, error: BadRequestMeta) -> NoReturn:
        """Drop one request whose meta the plugin cannot act on: counted,
        logged once per distinct problem, never sent direct."""
        self._inc("justproxies/requests/refused_meta")
        message = f"{request} not sent: {error}."
        if error.key not in self._refusals_logged:
            # One line per meta key: a broad crawl with bad session ids
            # from its data must not write one per request.
            self._refusals_logged.add(error.key)
            logger.error(
                "JustProxies: %s Further requests with a bad meta[%r] are dropped "
                "without another line (stat justproxies/requests/refused_meta).",
                message,
                error.key,
            )
        raise IgnoreRequest(message)

    def _judge_http_407(self, request: Request, response: Response) -> None:
        """A 407 on an http request: the gateway's, or the site's own?

        The gateway's carries a proxy's marker (RFC 9209 ``Proxy-Status``
        with an error, Squid's ``X-Squid-Error``). Without one, a 407 from a
        single site is that site's answer; the same from a second site means
        the gateway refuses everything.
        """
        if proxy_generated(response.headers):
            self._credentials_rejected(request)
        self._unmarked_407_hosts.add(urlparse_cached(request).hostname or "")
        if len(self._unmarked_407_hosts) > 1:
            self._credentials_rejected(request)
        self._inc("justproxies/responses/site_407")

    def _credentials_rejected(self, request: Request) -> NoReturn:
        self._inc("justproxies/gateway/auth_rejected")
        self._stop(
            "justproxies_credentials_rejected",
            "Credentials rejected by the gateway %s (HTTP 407 Proxy Authentication "
            "Required) for user %r. Check JUSTPROXIES_USER and JUSTPROXIES_PASSWORD. "
            "Stopping the crawl; nothing is sent direct.",
            self._gateway_url,
            self.config.user,
        )
        raise IgnoreRequest("credentials rejected by the gateway (HTTP 407)")

    def _stop(self, reason: str, message: str, *args: Any) -> None:
        if self._stopping:
            return
        self._stopping = reason
        logger.error(message, *args)
        # Typed loosely: the close API differs between Scrapy 2.13 and 2.14+.
        engine: Any = self.crawler.engine
        if engine is None:
            return
        if hasattr(engine, "close_spider_async"):  # Scrapy 2.14+
            deferred_from_coro(engine.close_spider_async(reason=reason))
        else:
            engine.close_spider(self.crawler.spider, reason)

    def _log_startup(self) -> None:
        config = self.config
        settings = self.crawler.settings
        values = effective_settings(settings, config)
        lines = [
            f"JustProxies: routing through gateway {self._gateway_url} as user "
            f"{config.user!r} (password from the "
            f"{config.sources.get('JUSTPROXIES_PASSWORD', 'settings')}), pool "
            + (f"{config.pool.name!r}" if config.pool else "not set (no preset)")
        ]
        for name, effective in values.items():
            lines.append(f"  {name} = {effective.value!r} ({effective.source})")
        lines.append(
            f"  JUSTPROXIES_DOMAIN_CONCURRENCY_MAX = {self.concurrency.domain_max}"
        )
        lines.append(
            f"  per-domain cap enforced on every download slot; gateway keep-alive "
            f"pool sized to {self.concurrency.total} connections"
        )
        lines.append(scheduler_queue_line(settings, QUEUE_PATH))
        if self.exits:
            lines.append(
                f"  JUSTPROXIES_STATIC_EXITS = {len(self.exits)} exits ("
                + ", ".join(e.label for e in self.exits)
                + "): each (exit, site) pair has its own slot and limit, "
                f"starting at {self.concurrency.domain_start}"
            )
        logger.info("\n".join(lines))
        for warning in config.warnings:
            logger.warning("JustProxies: %s", warning)
        if config.pool and (
            replaced_startproject_throttle(settings)
            or (
                config.override_template_throttle
                and has_startproject_throttle(settings)
            )
        ):
            logger.warning(
                "JustProxies: settings.py has the startproject template lines "
                "CONCURRENT_REQUESTS_PER_DOMAIN = 1 and DOWNLOAD_DELAY = 1, which "
                "would hold every site to one request per second. The %r preset "
                "replaces them (per domain %d, no delay). To keep them, set "
                "JUSTPROXIES_OVERRIDE_TEMPLATE_THROTTLE = False.",
                config.pool.name,
                self.concurrency.domain_start,
            )


SCRUB_PRIORITY: Final = 950
"""Above HttpCacheMiddleware (900): runs first on the way back."""


class JustProxiesScrubMiddleware:
    """Remove the gateway credentials from a request once it is answered.

    HttpCacheMiddleware (900) stores the request's headers with each cached
    response, and spider callbacks see ``response.request.headers``; both
    come after the download, when ``Proxy-Authorization`` has done its job.
    The add-on enables it; by hand, add it at priority 950.
    """

    # Issue 10: also the byte meter's one hook (it sees every answer first,
    # before HttpCompressionMiddleware inflates it).
    meter: ByteMeter | None = None
    stats: Any = None
    warned_elsewhere: bool = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> JustProxiesScrubMiddleware:
        middleware = cls()
        try:
            if Config.from_settings(crawler.settings, os.environ).enabled:
                check_middlewares(crawler.settings)
            middleware.meter = ByteMeter.of(crawler)  # reads JUSTPROXIES_* paths
            middleware.stats = crawler.stats
        except JustProxiesConfigError as error:
            report_startup_error(logger, error)
            raise
        return middleware

    def process_request(self, request: Request, spider: Spider | None = None) -> None:
        """The last look before the download: a middleware between
        HttpProxyMiddleware (750) and here that pointed a routed request at
        another proxy must not send the gateway's credentials along."""
        meta = request.meta
        auth_proxy = meta.get("_auth_proxy")
        if (
            META_ROUTED not in meta
            or auth_proxy is None
            or meta.get("proxy") == auth_proxy
            or b"Proxy-Authorization" not in request.headers
        ):
            return
        _scrub(request)
        if self.stats is not None:
            self.stats.inc_value("justproxies/requests/credentials_withheld")
        if not self.warned_elsewhere:
            self.warned_elsewhere = True
            logger.warning(
                "JustProxies: a downloader middleware after HttpProxyMiddleware "
                "changed meta['proxy'] of a request routed through the gateway "
                "(e.g. %s); it goes out without the gateway's credentials. Set "
                "meta['proxy'] before JustProxiesMiddleware (745), or "
                "meta['justproxies_direct'], to route it yourself.",
                request.url[:80],
            )

    def process_response(
        self, request: Request, response: Response, spider: Spider | None = None
    ) -> Response:
        if self.meter is not None:
            self.meter.on_response(request, response, META_ROUTED in request.meta)
        _scrub(request)
        return response

    def process_exception(
        self, request: Request, exception: Exception, spider: Spider | None = None
    ) -> None:
        # IgnoreRequest comes from a process_request (a bad meta, offsite,
        # robots.txt): nothing was sent, nothing failed at the gateway.
        if self.meter is not None and not isinstance(exception, IgnoreRequest):
            routed = META_ROUTED in request.meta
            sent = not is_gateway_connection_failure(exception)
            self.meter.on_failure(request, sent, routed)
        _scrub(request)


def _scrub(request: Request) -> None:
    if META_ROUTED in request.meta:
        request.headers.pop(b"Proxy-Authorization", None)
        request.meta.pop("_auth_proxy", None)


def enabled_middlewares(settings: BaseSettings) -> Iterator[tuple[type, int]]:
    """Each enabled downloader middleware class, with its priority."""
    for path, priority in settings.getwithbase("DOWNLOADER_MIDDLEWARES").items():
        cls = load_object(path) if isinstance(path, str) else path
        if priority is not None and isinstance(cls, type):
            yield cls, priority


def priorities_of(settings: BaseSettings, *classes: type) -> list[int | None]:
    """The priority of each of ``classes`` (or of a subclass) among the
    enabled downloader middlewares; None where it is not enabled."""
    found: list[int | None] = [None] * len(classes)
    for cls, priority in enabled_middlewares(settings):
        for index, wanted in enumerate(classes):
            if issubclass(cls, wanted):
                found[index] = priority
                break
    return found


def check_middlewares(settings: BaseSettings) -> None:
    """:func:`_check_middlewares`, reported as one clear ERROR line (no
    traceback) before it is raised, whichever component found it."""
    try:
        _check_middlewares(settings)
    except JustProxiesConfigError as error:
        report_startup_error(logger, error)
        raise


def _check_middlewares(settings: BaseSettings) -> None:
    """Fail at start-up, with the fix, unless the plugin's downloader
    middlewares are all there and in order: the router below
    HttpProxyMiddleware, the scrubber above the HTTP cache, the 429 retries
    between RetryMiddleware and the cache. Every component of the plugin
    calls it, so disabling one of them (``None`` in DOWNLOADER_MIDDLEWARES)
    is never a silent change: without the router every request would go out
    direct; without the scrubber, spider callbacks would see the gateway's
    ``Proxy-Authorization`` in ``response.request.headers``."""
    fix = (
        "The plugin relies on scrapy.downloadermiddlewares.httpproxy."
        "HttpProxyMiddleware to send the credentials as Proxy-Authorization"
    )
    if not settings.getbool("HTTPPROXY_ENABLED"):
        raise JustProxiesConfigError(
            f"HTTPPROXY_ENABLED is false. {fix}; set HTTPPROXY_ENABLED = True."
        )
    from scrapy.downloadermiddlewares.httpcache import (  # noqa: PLC0415
        HttpCacheMiddleware,
    )

    own, httpproxy, scrubber, cache = priorities_of(
        settings,
        JustProxiesMiddleware,
        HttpProxyMiddleware,
        JustProxiesScrubMiddleware,
        HttpCacheMiddleware,
    )
    if own is None:
        raise JustProxiesConfigError(
            "scrapy_justproxies.JustProxiesMiddleware is not enabled in "
            "DOWNLOADER_MIDDLEWARES while JUSTPROXIES_ENABLED is true: every "
            f"request would go out direct, without the gateway. Add it at {PRIORITY} "
            "(the add-on does; remove an entry that sets it to None), or set "
            "JUSTPROXIES_ENABLED = False to crawl without the gateway."
        )
    if httpproxy is None:
        raise JustProxiesConfigError(
            f"HttpProxyMiddleware is disabled in DOWNLOADER_MIDDLEWARES. {fix}; "
            "remove the entry that sets it to None."
        )
    if own >= httpproxy:
        raise JustProxiesConfigError(
            f"JustProxiesMiddleware has priority {own} in DOWNLOADER_MIDDLEWARES, "
            f"not below HttpProxyMiddleware's {httpproxy}. {fix}; use {PRIORITY}."
        )
    scrub_name = "scrapy_justproxies.JustProxiesScrubMiddleware"
    if scrubber is None:
        raise JustProxiesConfigError(
            f"{scrub_name} is not enabled in DOWNLOADER_MIDDLEWARES. It takes the "
            "gateway's Proxy-Authorization off every answered request (spider "
            "callbacks see response.request.headers, and the HTTP cache stores "
            "them) and counts the bytes of the cost stats. Add it at "
            f"{SCRUB_PRIORITY} (the add-on does)."
        )
    if (
        settings.getbool("HTTPCACHE_ENABLED")
        and cache is not None
        and scrubber <= cache
    ):
        raise JustProxiesConfigError(
            f"{scrub_name} has priority {scrubber} in DOWNLOADER_MIDDLEWARES, not "
            f"above HttpCacheMiddleware's {cache}: the HTTP cache would store the "
            "gateway's Proxy-Authorization with each request it caches. Use "
            f"{SCRUB_PRIORITY}, or a priority above the cache's."
        )
    # 429s are retried in their own middleware (imported here: it imports
    # this module).
    from .ratelimit import check_rate_limit_order  # noqa: PLC0415

    check_rate_limit_order(settings)


def _size_connection_pools(downloader: Any, size: int) -> None:
    """Let Scrapy's HTTP/1.1 handlers keep ``size`` idle connections per host.

    The handler sizes its twisted HTTPConnectionPool once, from
    CONCURRENT_REQUESTS_PER_DOMAIN, and offers no setting for it.
    """
    handlers = getattr(downloader.handlers, "_handlers", {})
    for scheme in ("http", "https"):
        pool = getattr(handlers.get(scheme), "_pool", None)
        if pool is not None and hasattr(pool, "maxPersistentPerHost"):
            pool.maxPersistentPerHost = max(pool.maxPersistentPerHost, size)
