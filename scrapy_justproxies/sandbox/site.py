"""The rate-limiting target site: virtual hosts over HTTP and HTTPS.

Every request is admitted or refused (429) on arrival by its host's
:class:`~scrapy_justproxies.sandbox.config.HostPolicy`; admitted ones wait a
sampled latency before the page is written.  Peers in 127.0.1.0/24 came
through the gateway (that is the exit IP); anything else is a *direct* hit.
"""

from __future__ import annotations

import json
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from .config import HostPolicy, SandboxConfig, normalize_host
from .policy import (
    FixedWindowCounter,
    Gcra,
    LatencySampler,
    RateSchedule,
    SlidingWindowLog,
    TokenBucket,
    is_exit_ip,
    retry_after_value,
)

MAX_BYTES = 1 << 30
PER_SECOND_KEEP = 3600  # about an hour of per-second buckets
ITEMS_PER_PAGE = 10
_FILLER = b"x" * 65536


class HostStats:
    """Counters of one virtual host since the last reset."""

    def __init__(self) -> None:
        self.inflight = 0
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.admitted = 0
        self.rate_limited = 0
        self.rejected_by_rate = 0
        self.rejected_by_inflight = 0
        self.completed = 0
        self.aborted = 0
        # Requests still in flight carry over: the maximum restarts from them.
        self.max_inflight = self.inflight
        self.proxy_authorization_seen = 0
        self.direct = 0
        self.via_gateway = 0
        self.exit_ips: set[str] = set()
        # exit IP -> [admitted, rate_limited]: what a site limiting per IP
        # did to each exit
        self.by_exit: dict[str, list[int]] = {}
        self.statuses: Counter[int] = Counter()
        # second -> [admitted, rate_limited, max_inflight]
        self.per_second: OrderedDict[int, list[int]] = OrderedDict()

    def second(self, t: float) -> list[int]:
        key = max(0, int(t))
        bucket = self.per_second.get(key)
        if bucket is None:
            bucket = self.per_second[key] = [0, 0, self.inflight]
            while len(self.per_second) > PER_SECOND_KEEP:
                self.per_second.popitem(last=False)
        return bucket

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "admitted": self.admitted,
            "rate_limited": self.rate_limited,
            "rejected_by_rate": self.rejected_by_rate,
            "rejected_by_inflight": self.rejected_by_inflight,
            "completed": self.completed,
            "aborted": self.aborted,
            "inflight": self.inflight,
            "max_inflight": self.max_inflight,
            "proxy_authorization_seen": self.proxy_authorization_seen,
            "direct": self.direct,
            "via_gateway": self.via_gateway,
            "distinct_exit_ips": len(self.exit_ips),
            "exits": {
                address: {"admitted": counts[0], "rate_limited": counts[1]}
                for address, counts in sorted(self.by_exit.items())
            },
            "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
            "per_second": [
                {"t": t, "admitted": b[0], "rate_limited": b[1], "max_inflight": b[2]}
                for t, b in self.per_second.items()
            ],
        }


@dataclass
class _Ticket:
    """An admitted request, from admission until its response ends."""

    host: str
    key: tuple[str, str]
    delayed: Any = None
    gone: bool = False


class Limiter(Protocol):
    def try_acquire(self, now: float) -> bool: ...

    def seconds_until_available(self, now: float) -> float | None: ...


def make_limiter(policy: HostPolicy, now: float) -> Limiter:
    """The rate limiter ``policy.limiter`` names, starting at ``now``."""
    schedule = RateSchedule(policy.rate, policy.schedule)
    if policy.limiter == "fixed_window":
        return FixedWindowCounter(schedule, policy.window_seconds, now)
    if policy.limiter == "sliding_window":
        return SlidingWindowLog(schedule, policy.window_seconds, now)
    if policy.limiter == "gcra":
        return Gcra(schedule, policy.burst, now)
    return TokenBucket(schedule, policy.burst, now)


class SiteApp:
    """Shared state of the site: policies, buckets, in-flight counts, stats."""

    def __init__(self, reactor: Any, config: SandboxConfig) -> None:
        self.reactor = reactor
        self.config = config
        self.epoch = reactor.seconds()
        self.hosts: dict[str, HostStats] = {}
        self.inflight_total = 0
        self.max_inflight_total = 0
        self._buckets: dict[tuple[str, str], Limiter] = {}
        self._inflight: Counter[tuple[str, str]] = Counter()
        self._samplers: dict[str, LatencySampler] = {}

    # -- control --

    def now(self) -> float:
        """Schedule time: seconds since start or the last reset."""
        return float(self.reactor.seconds() - self.epoch)

    def configure(self, config: SandboxConfig) -> None:
        # New limits apply to new requests; in-flight counts stay truthful.
        self.config = config
        self._buckets.clear()
        self._samplers.clear()

    def reset(self) -> None:
        self.epoch = self.reactor.seconds()
        self._buckets.clear()
        for stats in self.hosts.values():
            stats.reset()
        self.max_inflight_total = self.inflight_total

    def host_stats(self, host: str) -> HostStats:
        stats = self.hosts.get(host)
        if stats is None:
            stats = self.hosts[host] = HostStats()
        return stats

    def stats(self) -> dict[str, dict[str, Any]]:
        for host in self.config.sites:
            self.host_stats(host)  # configured hosts show up even when idle
        return {host: self.hosts[host].to_dict() for host in sorted(self.hosts)}

    def totals(self) -> dict[str, Any]:
        keys = (
            "requests",
            "admitted",
            "rate_limited",
            "rejected_by_rate",
            "rejected_by_inflight",
            "completed",
            "aborted",
            "proxy_authorization_seen",
            "direct",
            "via_gateway",
        )
        totals: dict[str, Any] = {
            key: sum(getattr(s, key) for s in self.hosts.values()) for key in keys
        }
        exit_ips: set[str] = set()
        for s in self.hosts.values():
            exit_ips |= s.exit_ips
        totals["distinct_exit_ips"] = len(exit_ips)
        totals["inflight"] = self.inflight_total
        totals["max_inflight"] = self.max_inflight_total
        return totals

    # -- admission --

    def _limit_key(self, host: str, peer: str, policy: HostPolicy) -> tuple[str, str]:
        return (host, peer) if policy.limit_key == "exit_ip" else (host, "")

    def admit(
        self, host: str, peer: str, policy: HostPolicy, t: float
    ) -> tuple[str | None, float | None]:
        """``(None, _)`` if admitted, else ``(reason, seconds until retry)``."""
        key = self._limit_key(host, peer, policy)
        # The cap is checked first so a refused request doesn't spend a token.
        if (
            policy.inflight_cap is not None
            and self._inflight[key] >= policy.inflight_cap
        ):
            return "inflight", 1.0
        if policy.unlimited:
            return None, None
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = make_limiter(policy.for_exit(peer), t)
        if bucket.try_acquire(t):
            return None, None
        return "rate", bucket.seconds_until_available(t)

    def sampler(self, host: str, policy: HostPolicy) -> LatencySampler:
        sampler = self._samplers.get(host)
        if sampler is None:
            sampler = self._samplers[host] = LatencySampler(
                policy.latency_p50_ms, policy.latency_p95_ms, f"{policy.seed}:{host}"
            )
        return sampler

    def begin(self, host: str, peer: str, policy: HostPolicy, t: float) -> _Ticket:
        key = self._limit_key(host, peer, policy)
        self._inflight[key] += 1
        self.inflight_total += 1
        self.max_inflight_total = max(self.max_inflight_total, self.inflight_total)
        stats = self.host_stats(host)
        stats.admitted += 1
        stats.inflight += 1
        stats.max_inflight = max(stats.max_inflight, stats.inflight)
        bucket = stats.second(t)
        bucket[0] += 1
        bucket[2] = max(bucket[2], stats.inflight)
        return _Ticket(host, key)

    def end(self, ticket: _Ticket, completed: bool) -> None:
        self._inflight[ticket.key] -= 1
        if self._inflight[ticket.key] <= 0:
            del self._inflight[ticket.key]
        self.inflight_total -= 1
        stats = self.host_stats(ticket.host)
        stats.inflight -= 1
        if completed:
            stats.completed += 1
        else:
            stats.aborted += 1
        stats.second(self.now())  # opens the bucket of a quiet second


# -- pages ---------------------------------------------------------------------


def _html(title: str, body: str) -> bytes:
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{title}</title></head>\n<body>\n{body}\n</body></html>\n"
    ).encode()


def item_price(item_id: int, seed: int = 0) -> str:
    """A deterministic price so crawls can be checked item by item."""
    cents = (item_id * 7919 + seed * 104_729) % 99_000 + 1_000
    return f"${cents // 100}.{cents % 100:02d}"


def render_page(path: str, policy: HostPolicy) -> tuple[int, str, bytes]:
    """``(status, content type, body)`` of the static pages of the catalog."""
    if path == "/":
        body = '<h1>Sandbox shop</h1>\n<a href="/catalog/1">Catalog</a>'
        return 200, "text/html; charset=utf-8", _html("Sandbox shop", body)
    if path == "/robots.txt":
        return 200, "text/plain; charset=utf-8", b"User-agent: *\nDisallow:\n"
    parts = path.strip("/").split("/")
    if len(parts) == 2 and parts[1].isdigit():
        number = int(parts[1])
        if parts[0] == "catalog" and 1 <= number <= policy.pages:
            first = (number - 1) * ITEMS_PER_PAGE + 1
            links = "\n".join(
                f'<li><a class="item" href="/item/{i}">Item {i}</a></li>'
                for i in range(first, first + ITEMS_PER_PAGE)
            )
            body = f'<h1>Catalog page {number}</h1>\n<ul class="items">\n{links}\n</ul>'
            if number < policy.pages:
                body += f'\n<a rel="next" href="/catalog/{number + 1}">Next</a>'
            return 200, "text/html; charset=utf-8", _html(f"Catalog {number}", body)
        if parts[0] == "item" and 1 <= number <= policy.pages * ITEMS_PER_PAGE:
            body = (
                f'<h1 class="title">Item {number}</h1>\n'
                f'<span class="price">{item_price(number, policy.seed)}</span>'
            )
            return 200, "text/html; charset=utf-8", _html(f"Item {number}", body)
    return 404, "text/plain; charset=utf-8", b"not found\n"


class _BytesProducer:
    """Streams N filler bytes, pausing whenever the connection is backed up."""

    def __init__(self, request: Any, size: int, on_done: Any) -> None:
        self.request = request
        self.remaining = size
        self.on_done = on_done
        self.paused = False
        self.stopped = False
        self._pumping = False

    def start(self) -> None:
        self.request.registerProducer(self, True)
        self._pump()

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while not (self.paused or self.stopped) and self.remaining > 0:
                size = min(len(_FILLER), self.remaining)
                self.remaining -= size
                self.request.write(_FILLER if size == len(_FILLER) else _FILLER[:size])
        finally:
            self._pumping = False
        if self.remaining == 0 and not self.stopped:
            self.stopped = True
            self.request.unregisterProducer()
            self.on_done()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._pump()

    def stopProducing(self) -> None:
        self.stopped = True


class SiteResource(Resource):
    """Every path of every virtual host; admission first, then the page."""

    isLeaf = True

    def __init__(self, app: SiteApp) -> None:
        Resource.__init__(self)  # type: ignore[no-untyped-call]
        self.app = app

    def render(self, request: Any) -> bytes | int:
        app = self.app
        host = normalize_host((request.getRequestHostname() or b"").decode("latin-1"))
        peer = str(getattr(request.getClientAddress(), "host", ""))
        policy = app.config.policy_for(host)
        stats = app.host_stats(host)
        t = app.now()

        stats.requests += 1
        if request.requestHeaders.hasHeader(b"proxy-authorization"):
            stats.proxy_authorization_seen += 1
        exit_counts = [0, 0]
        if is_exit_ip(peer):
            stats.via_gateway += 1
            stats.exit_ips.add(peer)
            exit_counts = stats.by_exit.setdefault(peer, exit_counts)
        else:
            stats.direct += 1

        reason, wait = app.admit(host, peer, policy, t)
        if reason is None:
            exit_counts[0] += 1
        else:
            exit_counts[1] += 1
            stats.rate_limited += 1
            if reason == "inflight":
                stats.rejected_by_inflight += 1
            else:
                stats.rejected_by_rate += 1
            stats.second(t)[1] += 1
            stats.statuses[429] += 1
            request.setResponseCode(429, b"Too Many Requests")
            retry_after = retry_after_value(
                policy.retry_after, wait, time.time(), policy.retry_after_seconds
            )
            if retry_after is not None:
                request.setHeader(b"Retry-After", retry_after.encode("ascii"))
            body = b"too many requests\n"
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
            return body

        ticket = app.begin(host, peer, policy, t)

        def finished(result: object) -> None:
            # Fires on a complete response and on a lost connection alike.
            ticket.gone = True
            if ticket.delayed is not None and ticket.delayed.active():
                ticket.delayed.cancel()
            app.end(ticket, completed=result is None)

        request.notifyFinish().addBoth(finished)
        latency_ms = app.sampler(host, policy).draw(*policy.latency_at(t))
        if latency_ms > 0:
            ticket.delayed = app.reactor.callLater(
                latency_ms / 1000.0, self._answer, request, ticket, policy, peer
            )
        else:
            self._answer(request, ticket, policy, peer)
        return NOT_DONE_YET

    def _answer(
        self, request: Any, ticket: _Ticket, policy: HostPolicy, peer: str
    ) -> None:
        ticket.delayed = None
        if ticket.gone:
            return
        path = (request.path or b"/").decode("latin-1")
        size_text = path.removeprefix("/bytes/")
        if path == "/echo":
            body = self._echo(request, ticket.host, peer)
            self._write(request, ticket.host, 200, "application/json", body)
        elif path.startswith("/status/") and path[8:].isdigit():
            # A page that answers with any status; a 407 is sent the way a
            # site that wants proxy credentials itself would send it.
            status = int(path[8:])
            if status == 407:
                request.setHeader(b"Proxy-Authenticate", b'Basic realm="site"')
            self._write(request, ticket.host, status, "text/plain", b"status\n")
        elif size_text != path and size_text.isdigit() and int(size_text) <= MAX_BYTES:
            self._stream(request, ticket.host, int(size_text))
        else:
            status, content_type, body = render_page(path, policy)
            self._write(request, ticket.host, status, content_type, body)

    def _write(
        self, request: Any, host: str, status: int, content_type: str, body: bytes
    ) -> None:
        self.app.host_stats(host).statuses[status] += 1
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
        request.write(body)
        request.finish()

    def _stream(self, request: Any, host: str, size: int) -> None:
        self.app.host_stats(host).statuses[200] += 1
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Content-Length", str(size).encode("ascii"))
        if request.method == b"HEAD" or size == 0:
            request.finish()
            return
        _BytesProducer(request, size, request.finish).start()

    def _echo(self, request: Any, host: str, peer: str) -> bytes:
        headers: dict[str, str] = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            key = name.decode("latin-1").lower()
            joined = ", ".join(v.decode("latin-1") for v in values)
            headers[key] = f"{headers[key]}, {joined}" if key in headers else joined
        content = request.content.read() if request.content is not None else b""
        payload = {
            "method": request.method.decode("latin-1"),
            "path": (request.path or b"").decode("latin-1"),
            "uri": (request.uri or b"").decode("latin-1"),
            "host": host,
            "headers": headers,
            "peer_ip": peer,
            "via_gateway": is_exit_ip(peer),
            "tls": bool(request.isSecure()),
            "body_length": len(content),
            "body": content[:4096].decode("utf-8", "replace"),
        }
        return json.dumps(payload, sort_keys=True).encode()
