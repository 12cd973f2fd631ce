"""Bytes through the gateway, counted the way a provider bills them.

The pure part (:func:`request_wire_size`, :func:`response_wire_size`,
:func:`cost`, :func:`summary_line`) rebuilds what went over the wire from
what Scrapy hands over; :class:`ByteMeter` is the thin glue that feeds it
every routed request and keeps the bounded stats.

What is counted, per request, is what Scrapy's HTTP/1.1 handler (Twisted)
writes to the gateway connection and reads back from it:

* plain http: the request line with the absolute URI, every header
  (``Proxy-Authorization`` and the ``Host`` Twisted adds), ``Content-Length``
  and the body; the answer's status line, headers and body as received,
  before ``HttpCompressionMiddleware`` inflates it, with the
  ``Transfer-Encoding: chunked`` framing estimated when there was no
  ``Content-Length``;
* https: the request and answer inside the tunnel, in clear, plus a
  ``CONNECT`` request and the gateway's ``200`` answer for each tunnel
  opened. Scrapy does not say which request opened a new kept-alive tunnel;
  :class:`TunnelCount` estimates it: one more whenever a domain has more
  requests in flight than ever before. Not counted: TLS itself (the
  handshake, a few KB per new connection, and some 30 bytes per TLS record).

Cached answers (``HttpCacheMiddleware``) and requests sent direct cost the
gateway nothing and are not counted.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, ClassVar, Final

from scrapy import signals
from scrapy.utils.httpobj import urlparse_cached

from .config import ObservabilityConfig
from .controller import Outcome
from .failures import classify_response
from .slots import SlotGuard
from .throttle import IDLE_SECONDS, SWEEP_SECONDS

if TYPE_CHECKING:
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response

logger = logging.getLogger(__name__)

GB: Final = 10**9
"""Providers bill decimal gigabytes."""

# Twisted's _newclient writes a chunked body in the pieces it is given and
# a client reads it back framed by the server's chunk sizes, which Scrapy
# does not keep; framing is estimated as one chunk per this many bytes.
ASSUMED_CHUNK: Final = 8192
CONNECT_ANSWER: Final = len(b"HTTP/1.1 200 Connection established\r\n\r\n")
_BODY_METHODS: Final = frozenset({b"POST", b"PUT", b"PATCH"})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


_STATUS_LINES: Final = {
    status.value: len(f"HTTP/1.1 {status.value} {status.phrase}\r\n")
    for status in HTTPStatus
}


def _header_bytes(items: Iterable[tuple[bytes, Iterable[bytes]]]) -> int:
    # "Name: value\r\n" per value
    return sum(len(name) + len(value) + 4 for name, values in items for value in values)


def _fields(headers: Any) -> Iterable[tuple[bytes, Iterable[bytes]]]:
    """A Scrapy ``Headers``' (name, values) pairs. It is a dict of normalized
    names to lists of values on every Scrapy version: read as one, without
    its ``items()``, which normalizes every name again."""
    return dict.items(headers) if isinstance(headers, dict) else headers.items()


def _host_value(scheme: str, host: str, port: int | None) -> str:
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return host
    return f"{host}:{port}"


def request_wire_size(
    request: Request, *, opens_tunnel: bool = True
) -> tuple[int, bool]:
    """``(bytes Scrapy writes to the gateway for request, tunneled)``; for
    https, with the ``CONNECT`` exchange when ``opens_tunnel``.

    Call it while ``Proxy-Authorization`` is still in the request's headers
    (HttpProxyMiddleware put it there; the scrub middleware takes it out).
    """
    parsed = urlparse_cached(request)
    tunneled = parsed.scheme == "https"
    method = request.method.encode("ascii", "replace")
    headers = request.headers
    host = parsed.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    host_value = _host_value(parsed.scheme, host, parsed.port)
    body = len(request.body)
    size = 0
    if tunneled:
        # The path inside the tunnel; the credentials go in CONNECT instead.
        target = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
        if opens_tunnel:
            connect_host = f"{host}:{parsed.port or 443}"
            auth = headers.get(b"Proxy-Authorization")
            size += len(
                f"CONNECT {connect_host} HTTP/1.1\r\nHost: {connect_host}\r\n\r\n"
            )
            if auth:
                size += len(b"Proxy-Authorization: \r\n") + len(auth)
            size += CONNECT_ANSWER
        items = [
            (name, values)
            for name, values in _fields(headers)
            if name.lower() != b"proxy-authorization"
        ]
    else:
        target = request.url.split("#", 1)[0]
        items = list(_fields(headers))
    size += len(method) + len(target.encode("utf-8")) + len(" HTTP/1.1\r\n") + 1
    size += _header_bytes(items)
    if b"Host" not in headers:
        size += len(b"Host: \r\n") + len(host_value)
    if (body or method in _BODY_METHODS) and b"Content-Length" not in headers:
        size += len(f"Content-Length: {body}\r\n")
    size += 2 + body  # blank line, body
    return size, tunneled


class TunnelCount:
    """Estimates which https requests open a new ``CONNECT`` tunnel.

    Scrapy keeps tunnels alive and reuses an idle one, so a new tunnel is
    needed only when more requests to a domain are in flight at once than
    ever before (tunnels closed by the far side are missed).
    """

    def __init__(self) -> None:
        self.most_in_flight: dict[str, int] = {}

    def opens_tunnel(self, key: str, in_flight: int) -> bool:
        """Told of each request when it is sent (``in_flight`` counts it)."""
        if in_flight <= self.most_in_flight.get(key, 0):
            return False
        self.most_in_flight[key] = in_flight
        return True

    def forget(self, key: str) -> None:
        """An idle domain's kept-alive tunnels have closed since."""
        self.most_in_flight.pop(key, None)


def chunked_overhead(body: int, chunk: int = ASSUMED_CHUNK) -> int:
    """Framing bytes of a ``body``-byte chunked body sent in ``chunk``-byte
    pieces: ``SIZE\\r\\n`` ... ``\\r\\n`` per piece and ``0\\r\\n\\r\\n``."""
    full, rest = divmod(body, chunk)
    overhead = full * (len(f"{chunk:x}") + 4)
    if rest:
        overhead += len(f"{rest:x}") + 4
    return overhead + 5


def response_wire_size(response: Response) -> int:
    """Bytes of the answer as it came back from the gateway."""
    status = response.status
    status_line = _STATUS_LINES.get(status)
    if status_line is None:  # no phrase known: "HTTP/1.1 599 \r\n"
        status_line = len(f"HTTP/1.1 {status} \r\n")
    headers = response.headers
    body = len(response.body)
    size = status_line + _header_bytes(_fields(headers))
    if b"Content-Length" not in headers:
        # Twisted keeps Transfer-Encoding out of the headers Scrapy sees.
        size += len(b"Transfer-Encoding: chunked\r\n") + chunked_overhead(body)
    return size + 2 + body


def cost(size: int, price_per_gb: float) -> float:
    return size / GB * price_per_gb


def summary_line(total: int, rate_limited: int, price_per_gb: float | None) -> str:
    """``1.84 GB through the gateway ≈ 14.72 at 8.00/GB; 429s cost 0.03 GB ≈ 0.24``."""
    text = f"{_gb(total)} through the gateway"
    if price_per_gb is not None:
        text += f" ≈ {cost(total, price_per_gb):.2f} at {price_per_gb:.2f}/GB"
    text += f"; 429s cost {_gb(rate_limited)}"
    if price_per_gb is not None:
        text += f" ≈ {cost(rate_limited, price_per_gb):.2f}"
    return text


def _gb(size: int) -> str:
    if size >= GB // 100:
        return f"{size / GB:.2f} GB"
    return f"{size / 10**6:.2f} MB"


# -- answer classes (the trace and the report count them) ----------------------

OK: Final = "ok"
"""The site answered below 400 (2xx, 3xx)."""
RATE_LIMITED: Final = "429"
"""The site answered 429."""
ERROR: Final = "error"
"""The site answered another 4xx or 5xx."""
GATEWAY: Final = "gateway"
"""No answer from the site: the gateway's own error answer, or the download
failed (timeout, connection error)."""


def answer_class(status: int, headers: Any) -> str:
    """The class of one answer; what is the gateway's and what is the site's
    429 is decided by :func:`classify_response`, as for the throttle."""
    outcome = classify_response(status, headers)
    if outcome is Outcome.IGNORED:
        return GATEWAY
    if outcome is Outcome.RATE_LIMITED:
        return RATE_LIMITED
    return OK if status < 400 else ERROR


# Field -> its key in the trace's domain records (read back by the report).
RECORD_KEYS: Final = {
    "ok": "ok",
    "rate_limited": "429",
    "error": "error",
    "gateway": "gateway",
    "sent": "sent",
    "received": "received",
    "rate_limited_bytes": "bytes_429",
}


@dataclass
class AnswerCounts:
    """Answers by class and their bytes through the gateway: a domain's
    second in the trace, its sum over the crawl in the report."""

    ok: int = 0
    rate_limited: int = 0
    error: int = 0
    gateway: int = 0
    sent: int = 0
    received: int = 0
    rate_limited_bytes: int = 0

    def count(self, kind: str, sent: int, received: int) -> None:
        """One answer (or failed download) of class ``kind``."""
        if kind == OK:
            self.ok += 1
        elif kind == RATE_LIMITED:
            self.rate_limited += 1
            self.rate_limited_bytes += sent + received
        elif kind == GATEWAY:
            self.gateway += 1
        else:
            self.error += 1
        self.sent += sent
        self.received += received

    def record_fields(self) -> dict[str, int]:
        return {key: getattr(self, name) for name, key in RECORD_KEYS.items()}

    def add_record(self, record: Mapping[str, Any]) -> None:
        for name, key in RECORD_KEYS.items():
            setattr(self, name, getattr(self, name) + record.get(key, 0))


@dataclass
class DomainBytes:
    sent: int = 0
    received: int = 0
    rate_limited: int = 0
    last_seen: float = 0.0

    @property
    def total(self) -> int:
        return self.sent + self.received


AnswerListener = Callable[[str, str, int, int, "float | None"], None]
"""``listener(slot_key, answer_class, sent, received, latency)`` for every
downloaded answer or failed download (``sent``/``received``: 0 unless it
went through the gateway; ``latency``: seconds, or None)."""


class ByteMeter:
    """Per crawler: counts every routed request's bytes and tells listeners
    (the trace) about every answer. Fed by ``JustProxiesScrubMiddleware``,
    the middleware closest to the downloader. Get it with :meth:`of`.

    Bounded on broad crawls as the throttle is: a domain idle for
    :data:`~scrapy_justproxies.throttle.IDLE_SECONDS` leaves ``domains``; its
    bytes are kept while it may still be among the
    ``JUSTPROXIES_STATS_DOMAINS`` costliest (and resumed if it comes back).
    """

    _by_crawler: ClassVar[weakref.WeakKeyDictionary[Crawler, ByteMeter]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(
        self,
        crawler: Crawler,
        config: ObservabilityConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.crawler = crawler
        self.stats = crawler.stats
        self.config = config
        self.clock = clock
        self.sent = 0
        self.received = 0
        self.rate_limited = 0
        self.domains: dict[str, DomainBytes] = {}
        # Evicted domains that may still be among the costliest.
        self._top: dict[str, DomainBytes] = {}
        self._next_sweep = clock() + SWEEP_SECONDS
        self.listeners: list[AnswerListener] = []
        self.tunnels = TunnelCount()
        self._opening: weakref.WeakSet[Request] = weakref.WeakSet()
        SlotGuard.of(crawler).listeners.append(self._sent)
        crawler.signals.connect(self._closed, signals.spider_closed)

    @classmethod
    def of(cls, crawler: Crawler) -> ByteMeter:
        meter = cls._by_crawler.get(crawler)
        if meter is None:
            config = ObservabilityConfig.from_settings(crawler.settings, os.environ)
            meter = cls._by_crawler[crawler] = cls(crawler, config)
        return meter

    def _sent(self, key: str, request: Request, in_flight: int) -> None:
        if urlparse_cached(request).scheme == "https" and self.tunnels.opens_tunnel(
            key, in_flight
        ):
            self._opening.add(request)

    def _request_size(self, request: Request) -> int:
        # Empty on a plain-http crawl: skip the weak-set look-ups.
        opens = bool(self._opening) and request in self._opening
        if opens:
            self._opening.discard(request)
        return request_wire_size(request, opens_tunnel=opens)[0]

    def on_response(self, request: Request, response: Response, routed: bool) -> None:
        if "cached" in response.flags:
            return
        key = request.meta.get("download_slot") or urlparse_cached(request).hostname
        kind = answer_class(response.status, response.headers)
        sent = received = 0
        if routed:
            sent = self._request_size(request)
            received = response_wire_size(response)
            self._add(str(key), sent, received, kind == RATE_LIMITED)
        latency = request.meta.get("download_latency")
        for listener in self.listeners:
            listener(str(key), kind, sent, received, latency)

    def on_failure(self, request: Request, sent_something: bool, routed: bool) -> None:
        key = request.meta.get("download_slot") or urlparse_cached(request).hostname
        sent = 0
        if routed and sent_something:
            sent = self._request_size(request)
            self._add(str(key), sent, 0, False)
        for listener in self.listeners:
            listener(str(key), GATEWAY, sent, 0, None)

    def _add(self, key: str, sent: int, received: int, rate_limited: bool) -> None:
        self.sent += sent
        self.received += received
        now = self.clock()
        domain = self.domains.get(key)
        if domain is None:
            # Back after an eviction: its count resumes, if it was kept.
            domain = self._top.pop(key, DomainBytes())
            self.domains[key] = domain
        domain.last_seen = now
        domain.sent += sent
        domain.received += received
        if rate_limited:
            self.rate_limited += sent + received
            domain.rate_limited += sent + received
        stats = self.stats
        if stats is not None:
            stats.set_value("justproxies/bytes/sent", self.sent)
            stats.set_value("justproxies/bytes/received", self.received)
            if rate_limited:
                stats.set_value("justproxies/bytes/rate_limited", self.rate_limited)
        if now >= self._next_sweep:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Evict the domains idle for IDLE_SECONDS."""
        self._next_sweep = now + SWEEP_SECONDS
        idle = [k for k, d in self.domains.items() if now - d.last_seen >= IDLE_SECONDS]
        for key in idle:
            self.tunnels.forget(key)
            self._top[key] = self.domains.pop(key)
            if len(self._top) > self.config.stats_domains:
                del self._top[min(self._top, key=lambda k: self._top[k].total)]

    def top_domains(self) -> list[tuple[str, DomainBytes]]:
        every = {**self._top, **self.domains}
        ranked = sorted(every.items(), key=lambda item: -item[1].total)
        return ranked[: self.config.stats_domains]

    def _closed(self, spider: Spider, reason: str) -> None:
        if not self.domains and not self._top:
            return
        price = self.config.price_per_gb
        stats = self.stats
        if stats is not None:
            stats.set_value("justproxies/bytes/rate_limited", self.rate_limited)
            for key, domain in self.top_domains():
                stats.set_value(f"justproxies/bytes/{key}", domain.total)
                if price is not None:
                    stats.set_value(
                        f"justproxies/cost/{key}", round(cost(domain.total, price), 4)
                    )
            if price is not None:
                stats.set_value(
                    "justproxies/cost", round(cost(self.sent + self.received, price), 4)
                )
                stats.set_value(
                    "justproxies/cost/rate_limited",
                    round(cost(self.rate_limited, price), 4),
                )
        logger.info(
            "JustProxies: %s",
            summary_line(self.sent + self.received, self.rate_limited, price),
        )
