"""The JustProxies-like forward proxy ("gateway").

One :class:`GatewayProtocol` per client connection parses requests in order:

* absolute-URI ``http://`` requests are forwarded over a pooled upstream
  connection bound to the chosen exit IP (127.0.1.N), response streamed back
  with flow control;
* ``CONNECT`` opens a raw byte tunnel from the exit IP to the target.

Auth, target checks, injected failures and the hop latency happen before
anything is forwarded.
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionRefusedError,
    TimeoutError,
)
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.python.failure import Failure

from .config import GatewayConfig
from .http1 import (
    LAST_CHUNK,
    HTTPParseError,
    Request,
    RequestReader,
    ResponseParser,
    encode_chunk,
    header_get,
    header_tokens,
    serialize_head,
    strip_hop_by_hop,
    without_headers,
)
from .policy import (
    ExitIpAllocator,
    authenticate,
    choose_failure,
    resolve_target,
)
from .policy import exit_ip as exit_ip_address

PoolKey = tuple[str, str, int]  # (exit ip, target host, target port)

PROXY_NAME = "justproxies-gateway"
EXIT_IP_HEADER = "X-JustProxies-Exit-IP"
REALM = "justproxies"
CONNECT_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 30.0
MAX_IDLE_PER_KEY = 8
# Pause reading from a client that pipelines this much while we are busy.
MAX_PIPELINE_BUFFER = 1024 * 1024

_REASONS = {
    200: "OK",
    400: "Bad Request",
    407: "Proxy Authentication Required",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _no_delay(transport: Any) -> None:
    # Head and body go out in separate writes; Nagle would add delayed-ACK
    # stalls (~40 ms) that would distort every latency measurement.
    with contextlib.suppress(AttributeError, OSError):
        transport.setTcpNoDelay(True)


class GatewayStats:
    """Counters since the last reset (``connections_open`` is live state)."""

    def __init__(self) -> None:
        self.connections_open = 0
        self.reset()

    def reset(self) -> None:
        self.connections_accepted = 0
        self.requests = 0
        self.connects = 0
        self.auth_failures = 0
        self.blocked_targets = 0
        self.bad_requests = 0
        self.upstream_connections = 0
        self.upstream_reuses = 0
        self.upstream_errors = 0
        # Bytes on client connections, both directions, everything included
        # (CONNECT, tunnelled TLS): what a provider would bill.
        self.bytes_from_clients = 0
        self.bytes_to_clients = 0
        self.injected: Counter[str] = Counter({"502": 0, "503": 0, "drop": 0})
        self.exit_ips: Counter[str] = Counter()
        self.sessions: dict[str, str] = {}
        self.countries: Counter[str] = Counter()

    def to_dict(self) -> dict[str, Any]:
        return {
            "connections_accepted": self.connections_accepted,
            "connections_open": self.connections_open,
            "requests": self.requests,
            "connects": self.connects,
            "auth_failures": self.auth_failures,
            "blocked_targets": self.blocked_targets,
            "bad_requests": self.bad_requests,
            "upstream_connections": self.upstream_connections,
            "upstream_reuses": self.upstream_reuses,
            "upstream_errors": self.upstream_errors,
            "bytes_from_clients": self.bytes_from_clients,
            "bytes_to_clients": self.bytes_to_clients,
            "injected": dict(self.injected),
            "exit_ips": dict(sorted(self.exit_ips.items())),
            "distinct_exit_ips": len(self.exit_ips),
            "sessions": dict(self.sessions),
            "countries": dict(self.countries),
        }


class _CountingTransport:
    """A client transport that adds what is written to it to the stats."""

    def __init__(self, transport: Any, stats: GatewayStats) -> None:
        self._transport = transport
        self._stats = stats

    def write(self, data: bytes) -> None:
        self._stats.bytes_to_clients += len(data)
        self._transport.write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self._stats.bytes_to_clients += sum(len(piece) for piece in data)
        self._transport.writeSequence(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


# -- upstream side -------------------------------------------------------------


class _Upstream(Protocol):
    """Common bookkeeping for connections the gateway opens to targets."""

    def __init__(self, pool: UpstreamPool, key: PoolKey) -> None:
        self.pool = pool
        self.key = key
        self.lost = False
        self.closed: Deferred[None] = Deferred()

    @property
    def tx(self) -> Any:
        return self.transport

    def connectionMade(self) -> None:
        _no_delay(self.transport)
        self.pool.track(self)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True
        self.pool.forget(self)
        self.closed.callback(None)


class UpstreamHTTP(_Upstream):
    """A keep-alive HTTP/1.1 client connection carrying one exchange at a time."""

    def __init__(self, pool: UpstreamPool, key: PoolKey) -> None:
        super().__init__(pool, key)
        self.exchange: HttpExchange | None = None
        self.parser: ResponseParser | None = None
        self.received_any = False
        self.reused = False
        self._head_delivered = False

    def send(self, exchange: HttpExchange, data: bytes, method: str) -> None:
        self.exchange = exchange
        self.parser = ResponseParser(method)
        self.received_any = False
        self._head_delivered = False
        self.tx.write(data)

    def dataReceived(self, data: bytes) -> None:
        exchange, parser = self.exchange, self.parser
        if exchange is None or parser is None:
            # Bytes nobody asked for: the connection is unusable.
            self.tx.abortConnection()
            return
        self.received_any = True
        try:
            pieces = parser.feed(data)
        except HTTPParseError:
            self.exchange = None
            exchange.on_upstream_lost(self, protocol_error=True)
            self.tx.abortConnection()
            return
        if parser.head is not None and not self._head_delivered:
            self._head_delivered = True
            exchange.on_head(self, parser)
        for piece in pieces:
            exchange.on_body(piece)
        if parser.done:
            self.exchange = None
            exchange.on_done(self, reusable=parser.keep_alive and not parser.leftover)

    def connectionLost(self, reason: Failure | None = None) -> None:
        exchange, parser = self.exchange, self.parser
        self.exchange = None
        super().connectionLost(reason)
        if exchange is None:
            return
        if parser is not None and parser.head is not None and parser.eof():
            exchange.on_done(self, reusable=False)  # close-delimited body
        else:
            exchange.on_upstream_lost(self)


class TunnelUpstream(_Upstream):
    """The target side of a CONNECT tunnel: bytes go straight to the client."""

    def __init__(
        self, pool: UpstreamPool, key: PoolKey, client: GatewayProtocol
    ) -> None:
        super().__init__(pool, key)
        self.client = client

    def dataReceived(self, data: bytes) -> None:
        self.client.tx.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        self.client.tunnel_closed(self)


class UpstreamPool:
    """Idle keep-alive connections keyed by (exit ip, host, port).

    The exit IP is part of the key so a sticky session keeps its source
    address on every request, not just the first.
    """

    def __init__(self, reactor: Any, stats: GatewayStats) -> None:
        self.reactor = reactor
        self.stats = stats
        self.stopping = False
        self._idle: dict[PoolKey, list[UpstreamHTTP]] = {}
        self._idle_timers: dict[UpstreamHTTP, Any] = {}
        self._all: set[_Upstream] = set()
        self._connecting: set[Deferred[Any]] = set()

    @property
    def idle_count(self) -> int:
        return sum(len(conns) for conns in self._idle.values())

    def connect(self, key: PoolKey, protocol: _Upstream) -> Deferred[Any]:
        exit_ip, _host, port = key
        endpoint = TCP4ClientEndpoint(
            self.reactor,
            "127.0.0.1",  # resolve_target() sends every allowed name here
            port,
            timeout=CONNECT_TIMEOUT_S,
            bindAddress=(exit_ip, 0),
        )
        self.stats.upstream_connections += 1
        connecting: Deferred[Any] = connectProtocol(endpoint, protocol)  # type: ignore[no-untyped-call]
        self._connecting.add(connecting)

        def done(result: object) -> object:
            self._connecting.discard(connecting)
            return result

        connecting.addBoth(done)
        return connecting

    def take_idle(self, key: PoolKey) -> UpstreamHTTP | None:
        conns = self._idle.get(key)
        while conns:
            conn = conns.pop()
            timer = self._idle_timers.pop(conn, None)
            if timer is not None and timer.active():
                timer.cancel()
            if not conn.lost:
                if not conns:
                    del self._idle[key]
                return conn
        self._idle.pop(key, None)
        return None

    def release(self, conn: UpstreamHTTP) -> None:
        if conn.lost:
            return
        conns = self._idle.setdefault(conn.key, [])
        if self.stopping or len(conns) >= MAX_IDLE_PER_KEY:
            conn.tx.loseConnection()
            return
        # A paused transport would never see the next response.
        conn.tx.resumeProducing()
        conns.append(conn)
        self._idle_timers[conn] = self.reactor.callLater(
            IDLE_TIMEOUT_S, conn.tx.loseConnection
        )

    def track(self, conn: _Upstream) -> None:
        self._all.add(conn)

    def forget(self, conn: _Upstream) -> None:
        self._all.discard(conn)
        if isinstance(conn, UpstreamHTTP):
            timer = self._idle_timers.pop(conn, None)
            if timer is not None and timer.active():
                timer.cancel()
            conns = self._idle.get(conn.key)
            if conns and conn in conns:
                conns.remove(conn)
                if not conns:
                    del self._idle[conn.key]

    def close_all(self) -> list[Deferred[None]]:
        self.stopping = True
        for connecting in list(self._connecting):
            connecting.cancel()
        waits = []
        for conn in list(self._all):
            waits.append(conn.closed)
            conn.tx.abortConnection()
        return waits


# -- one forwarded HTTP request ------------------------------------------------


class HttpExchange:
    """A request forwarded upstream and its response streamed to the client."""

    def __init__(
        self,
        client: GatewayProtocol,
        key: PoolKey,
        method: str,
        data: bytes,
        keep_alive: bool,
    ) -> None:
        self.client = client
        self.pool = client.gateway.pool
        self.key = key
        self.method = method
        self.data = data
        self.keep_alive = keep_alive
        self.finished = False
        self.upstream: UpstreamHTTP | None = None
        self._head_sent = False
        self._chunked = False
        self._producing = False
        self._retried = False

    def start(self) -> None:
        conn = self.pool.take_idle(self.key)
        if conn is not None:
            self.pool.stats.upstream_reuses += 1
            self._send(conn, reused=True)
        else:
            self._connect()

    def _connect(self) -> None:
        connecting = self.pool.connect(self.key, UpstreamHTTP(self.pool, self.key))
        connecting.addCallbacks(self._send, self._connect_failed)

    def _send(self, conn: UpstreamHTTP, reused: bool = False) -> None:
        if self.finished:  # the client went away while we were connecting
            self.pool.release(conn)
            return
        self.upstream = conn
        conn.reused = reused
        conn.send(self, self.data, self.method)

    def _connect_failed(self, failure: Failure) -> None:
        answer = upstream_failure(failure)
        if self.finished or answer is None:
            return
        self.pool.stats.upstream_errors += 1
        self._fail(*answer)

    def _fail(self, status: int, error: str, message: str) -> None:
        self.finished = True
        self.client.respond(
            status, message, keep_alive=self.keep_alive, proxy_error=error
        )

    def on_head(self, conn: UpstreamHTTP, parser: ResponseParser) -> None:
        head = parser.head
        assert head is not None
        headers = strip_hop_by_hop(head.headers)
        if parser.body_mode in ("chunked", "close"):
            # Re-frame: we decode upstream framing and choose our own.
            headers = without_headers(headers, ["content-length"])
            if self.client.http11:
                headers.append(("Transfer-Encoding", "chunked"))
                self._chunked = True
            else:
                self.keep_alive = False  # HTTP/1.0: the close delimits
        if not self.keep_alive:
            headers.append(("Connection", "close"))
        reason = head.reason or _REASONS.get(head.status, "")
        self.client.tx.write(
            serialize_head(f"HTTP/1.1 {head.status} {reason}", headers)
        )
        self._head_sent = True
        if parser.body_mode != "none":
            # Upstream reading pauses whenever the client can't keep up.
            self.client.tx.registerProducer(conn.tx, True)
            self._producing = True

    def on_body(self, piece: bytes) -> None:
        if self.finished:
            return
        self.client.tx.write(encode_chunk(piece) if self._chunked else piece)

    def on_done(self, conn: UpstreamHTTP, reusable: bool) -> None:
        if self.finished:
            return
        self.finished = True
        if self._chunked:
            self.client.tx.write(LAST_CHUNK)
        self._stop_producing()
        if reusable:
            self.pool.release(conn)
        else:
            conn.tx.loseConnection()
        self.client.request_done(self.keep_alive)

    def on_upstream_lost(
        self, conn: UpstreamHTTP, protocol_error: bool = False
    ) -> None:
        if self.finished:
            return
        self._stop_producing()
        if (
            not protocol_error
            and not conn.received_any
            and conn.reused
            and not self._retried
        ):
            # A pooled connection the target had already closed: retry once
            # on a fresh one, as any client with a connection pool does.
            self._retried = True
            self._connect()
            return
        self.pool.stats.upstream_errors += 1
        if not self._head_sent:
            self._fail(
                502,
                "connection_terminated",
                "the target closed the connection before answering",
            )
        else:
            # Mid-body: the only honest signal left is to cut the client off.
            self.finished = True
            self.client.tx.abortConnection()

    def client_lost(self) -> None:
        if self.finished:
            return
        self.finished = True
        conn = self.upstream
        if conn is not None and not conn.lost:
            conn.exchange = None
            conn.tx.abortConnection()

    def _stop_producing(self) -> None:
        if self._producing:
            self._producing = False
            self.client.tx.unregisterProducer()


# -- client side ---------------------------------------------------------------


class GatewayProtocol(Protocol):
    """One client connection to the gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.reader = RequestReader()
        self.closed: Deferred[None] = Deferred()
        self.http11 = True
        self.busy = False
        self.closing = False
        self.exchange: HttpExchange | None = None
        self.tunnel: TunnelUpstream | None = None
        self._method = "GET"
        self._processing = False
        self._paused = False
        self._delayed: Any = None
        self._tunnel_connecting: Deferred[Any] | None = None

    @property
    def tx(self) -> Any:
        return self._counting

    def connectionMade(self) -> None:
        _no_delay(self.transport)
        self._counting = _CountingTransport(self.transport, self.gateway.stats)
        stats = self.gateway.stats
        stats.connections_accepted += 1
        stats.connections_open += 1
        self.gateway.clients.add(self)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closing = True
        self.gateway.stats.connections_open -= 1
        self.gateway.clients.discard(self)
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        if self.exchange is not None:
            self.exchange.client_lost()
        if self._tunnel_connecting is not None:
            self._tunnel_connecting.cancel()
        tunnel = self.tunnel
        if tunnel is not None and not tunnel.lost:
            tunnel.tx.unregisterProducer()
            tunnel.tx.loseConnection()
        self.closed.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.gateway.stats.bytes_from_clients += len(data)
        if self.tunnel is not None:
            self.tunnel.tx.write(data)
            return
        if self.closing:
            return
        self.reader.feed(data)
        self._process()

    # -- request loop --

    def _process(self) -> None:
        if self._processing:
            return  # re-entered from a response finished synchronously
        self._processing = True
        try:
            while not (self.busy or self.closing or self.tunnel is not None):
                try:
                    request = self.reader.next_request()
                except HTTPParseError as error:
                    self.gateway.stats.bad_requests += 1
                    self._method = "GET"
                    self.busy = True
                    self.respond(400, f"malformed request: {error}", keep_alive=False)
                    return
                if request is None:
                    if self.reader.wants_continue():
                        self.tx.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    break
                self.busy = True
                self._handle(request)
        finally:
            self._processing = False
        self._backpressure()

    def _backpressure(self) -> None:
        if self.tunnel is not None or self.closing:
            return
        want_pause = self.busy and self.reader.buffered > MAX_PIPELINE_BUFFER
        if want_pause and not self._paused:
            self._paused = True
            self.tx.pauseProducing()
        elif not want_pause and self._paused:
            self._paused = False
            self.tx.resumeProducing()

    def request_done(self, keep_alive: bool) -> None:
        self.busy = False
        self.exchange = None
        if not keep_alive:
            self.closing = True
            self.tx.loseConnection()
            return
        self._process()

    def respond(
        self,
        status: int,
        message: str,
        *,
        keep_alive: bool,
        proxy_error: str | None = None,
        extra_headers: list[tuple[str, str]] | None = None,
    ) -> None:
        """Answer from the gateway itself and finish the current request."""
        body = (message + "\n").encode("utf-8")
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *(extra_headers or []),
        ]
        if proxy_error is not None:
            details = message.replace("\\", "").replace('"', "'")
            headers.append(
                (
                    "Proxy-Status",
                    f'{PROXY_NAME}; error={proxy_error}; details="{details}"',
                )
            )
        if not keep_alive:
            headers.append(("Connection", "close"))
        head = serialize_head(f"HTTP/1.1 {status} {_REASONS.get(status, '')}", headers)
        # A HEAD response carries the length but never the body.
        self.tx.write(head if self._method == "HEAD" else head + body)
        self.request_done(keep_alive)

    def _handle(self, request: Request) -> None:
        head = request.head
        config = self.gateway.config
        self._method = head.method
        self.http11 = head.version == "HTTP/1.1"
        close_tokens = header_tokens(head.headers, "connection") | header_tokens(
            head.headers, "proxy-connection"
        )
        keep_alive = self.http11 and "close" not in close_tokens

        try:
            target = parse_target(head.method, head.target)
        except TargetError as error:
            self.gateway.stats.bad_requests += 1
            self.respond(400, str(error), keep_alive=keep_alive)
            return

        user = authenticate(
            header_get(head.headers, "proxy-authorization"), config.users
        )
        if user is None:
            self.gateway.stats.auth_failures += 1
            self.respond(
                407,
                "proxy authentication required: use Basic USER[-country-CC]"
                "[-session-ID]:PASSWORD",
                keep_alive=keep_alive,
                # Like a provider's gateway, it marks its own refusal (RFC
                # 9209), which tells it from a 407 a site sends itself.
                proxy_error="http_request_denied",
                extra_headers=[("Proxy-Authenticate", f'Basic realm="{REALM}"')],
            )
            return

        if resolve_target(target.host) is None:
            self.gateway.stats.blocked_targets += 1
            self.respond(
                502,
                f"{target.host} is not reachable from the sandbox"
                " (only *.test, localhost and 127.0.0.1)",
                keep_alive=keep_alive,
                proxy_error="destination_ip_prohibited",
            )
            return

        allocator = self.gateway.allocator
        if user.session in config.static_sessions:
            exit_ip = exit_ip_address(config.static_sessions[user.session])
        elif user.session:
            exit_ip = allocator.for_session(user.session)
        else:
            exit_ip = allocator.rotating()
        stats = self.gateway.stats
        if user.session:
            stats.sessions[user.session] = exit_ip
        if user.country:
            stats.countries[user.country] += 1

        def forward() -> None:
            self._delayed = None
            self._forward(request, target, exit_ip, keep_alive)

        delay = config.hop_latency_ms / 1000.0
        if delay > 0:
            self._delayed = self.gateway.reactor.callLater(delay, forward)
        else:
            forward()

    def _forward(
        self, request: Request, target: Target, exit_ip: str, keep_alive: bool
    ) -> None:
        config = self.gateway.config
        stats = self.gateway.stats
        failure = choose_failure(
            self.gateway.rng, config.fail_502, config.fail_503, config.drop
        )
        if failure is not None:
            stats.injected[failure] += 1
        if failure == "drop":
            self.closing = True
            self.tx.abortConnection()
            return
        if failure == "502":
            self.respond(
                502,
                "injected gateway failure",
                keep_alive=keep_alive,
                proxy_error="destination_unavailable",
            )
            return
        if failure == "503":
            self.respond(
                503,
                "injected gateway overload",
                keep_alive=keep_alive,
                proxy_error="connection_limit_reached",
            )
            return

        stats.exit_ips[exit_ip] += 1
        key: PoolKey = (exit_ip, target.host, target.port)
        if request.method == "CONNECT":
            stats.connects += 1
            self._open_tunnel(key, keep_alive)
            return

        stats.requests += 1
        headers = strip_hop_by_hop(request.headers)
        headers = without_headers(headers, ["host", "expect", EXIT_IP_HEADER])
        headers.insert(0, ("Host", target.authority))
        headers.append((EXIT_IP_HEADER, exit_ip))
        if request.body or request.method in ("POST", "PUT", "PATCH"):
            headers = without_headers(headers, ["content-length"])
            headers.append(("Content-Length", str(len(request.body))))
        data = (
            serialize_head(f"{request.method} {target.path} HTTP/1.1", headers)
            + request.body
        )
        self.exchange = HttpExchange(self, key, request.method, data, keep_alive)
        self.exchange.start()

    # -- CONNECT --

    def _open_tunnel(self, key: PoolKey, keep_alive: bool) -> None:
        pool = self.gateway.pool
        connecting = pool.connect(key, TunnelUpstream(pool, key, self))
        self._tunnel_connecting = connecting

        def up(upstream: TunnelUpstream) -> None:
            self._tunnel_connecting = None
            if self.closing:
                upstream.tx.loseConnection()
                return
            self.tunnel = upstream
            self.busy = False
            self.tx.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if self._paused:
                self._paused = False
                self.tx.resumeProducing()
            # Each side pauses the other when its write buffer fills up.
            self.tx.registerProducer(upstream.tx, True)
            upstream.tx.registerProducer(self.tx, True)
            early = self.reader.take_buffer()
            if early:
                upstream.tx.write(early)

        def failed(failure: Failure) -> None:
            self._tunnel_connecting = None
            answer = upstream_failure(failure)
            if self.closing or answer is None:
                return
            self.gateway.stats.upstream_errors += 1
            status, error, message = answer
            self.respond(status, message, keep_alive=keep_alive, proxy_error=error)

        connecting.addCallbacks(up, failed)

    def tunnel_closed(self, upstream: TunnelUpstream) -> None:
        if self.tunnel is upstream and not self.closing:
            self.closing = True
            self.tx.unregisterProducer()
            self.tx.loseConnection()


@dataclass(frozen=True)
class Target:
    """Where a proxy request goes; ``path`` is empty for CONNECT."""

    host: str
    port: int
    authority: str
    path: str


class TargetError(ValueError):
    """A request target the gateway cannot use (answered with 400)."""


def _parse_connect_target(target: str) -> Target:
    host, sep, port_text = target.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise TargetError(f"CONNECT needs host:port, got {target!r}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise TargetError(f"bad port in {target!r}")
    host = host.lower()
    return Target(host, port, f"{host}:{port}", "")


def parse_target(method: str, target: str) -> Target:
    """The target of a proxy request: ``host:port`` or an absolute http URI."""
    if method == "CONNECT":
        return _parse_connect_target(target)
    parts = urlsplit(target)
    if parts.scheme.lower() == "https":
        raise TargetError("use CONNECT for https:// targets")
    if parts.scheme.lower() != "http" or not parts.hostname:
        raise TargetError(
            f"a proxy request needs an absolute http:// URI, got {target!r}"
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise TargetError(f"bad port in {target!r}") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.hostname, port, parts.netloc.rpartition("@")[2], path)


def upstream_failure(failure: Failure) -> tuple[int, str, str] | None:
    """``(status, Proxy-Status error, message)`` for a failed upstream connect.

    None when the attempt was cancelled (the client left or we are stopping).
    """
    error = failure.value
    if isinstance(error, CancelledError | ConnectingCancelledError):
        return None
    if isinstance(error, ConnectionRefusedError):
        return 502, "connection_refused", "the target refused the connection"
    if isinstance(error, TimeoutError):
        return 504, "connection_timeout", "connecting to the target timed out"
    return 502, "destination_unavailable", f"cannot reach the target: {error}"


class Gateway(ServerFactory):
    """Factory and shared state of the gateway; ``configure`` applies live."""

    def __init__(self, reactor: Any, config: GatewayConfig) -> None:
        self.reactor = reactor
        self.config = config
        self.stats = GatewayStats()
        self.allocator = ExitIpAllocator(config.exit_ip_count, config.seed)
        self.rng = random.Random(config.seed)
        self.pool = UpstreamPool(reactor, self.stats)
        self.clients: set[GatewayProtocol] = set()

    def configure(self, config: GatewayConfig) -> None:
        if config.seed != self.config.seed:
            self.rng = random.Random(config.seed)
        self.allocator.resize(config.exit_ip_count)
        self.config = config

    def buildProtocol(self, addr: Any) -> GatewayProtocol:
        return GatewayProtocol(self)

    def stop(self) -> Deferred[None]:
        waits: list[Deferred[None]] = []
        for client in list(self.clients):
            waits.append(client.closed)
            client.tx.abortConnection()
        waits += self.pool.close_all()
        done: Deferred[None] = gatherResults(waits).addCallback(lambda _: None)
        return done
