"""A byte-level HTTP/1.1 client on Twisted, for probing the sandbox in tests.

Unlike a full client it hides nothing: one TCP connection, requests written
exactly as given, CONNECT followed by TLS on the same connection, and the
raw status, headers and body of every response.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from .http1 import Headers, HTTPParseError, ResponseParser, header_get, serialize_head
from .policy import basic_authorization


@dataclass
class RawResponse:
    status: int
    reason: str
    version: str
    headers: Headers = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return header_get(self.headers, name)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class RawHTTPConnection(Protocol):
    """One client connection; ``request()`` calls must not overlap."""

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()
        self.is_lost = False
        self._buffer = b""
        self._parser: ResponseParser | None = None
        self._pieces: list[bytes] = []
        self._waiter: Deferred[RawResponse] | None = None

    @property
    def tx(self) -> Any:
        return self.transport

    def send_raw(self, data: bytes) -> None:
        self.tx.write(data)

    def read_response(self, method: str = "GET") -> Deferred[RawResponse]:
        """Wait for the next response (to a request sent with ``send_raw``)."""
        if self._waiter is not None:
            raise RuntimeError("a response is already awaited")
        waiter: Deferred[RawResponse] = Deferred()
        self._waiter = waiter
        self._parser = ResponseParser(method)
        self._pieces = []
        data, self._buffer = self._buffer, b""
        if data:
            self._feed(data)
        if self._waiter is waiter and self.is_lost:
            self._eof()
        return waiter

    def request(
        self,
        method: str,
        target: str,
        headers: Headers | None = None,
        body: bytes = b"",
    ) -> Deferred[RawResponse]:
        """Send a request exactly as given (add Host yourself) and read the answer."""
        head = serialize_head(f"{method} {target} HTTP/1.1", headers or [])
        response = self.read_response(method)
        self.send_raw(head + body)
        return response

    def start_tls(self, server_name: str, ca_pem: bytes | None = None) -> None:
        """Switch this connection to TLS (after a CONNECT's 200).

        With ``ca_pem`` the server certificate is verified for ``server_name``.
        """
        if ca_pem is not None:
            options: Any = ssl.optionsForClientTLS(
                server_name, trustRoot=ssl.Certificate.loadPEM(ca_pem)
            )
        else:
            options = ssl.CertificateOptions(verify=False)
        self.tx.startTLS(options)

    def close(self) -> Deferred[None]:
        if not self.is_lost:
            self.tx.loseConnection()
        return self.lost

    def dataReceived(self, data: bytes) -> None:
        if self._parser is None:
            self._buffer += data
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        parser = self._parser
        assert parser is not None
        try:
            self._pieces += parser.feed(data)
        except HTTPParseError as error:
            self._fail(error)
            return
        if parser.done:
            self._buffer = parser.leftover
            self._complete()

    def _complete(self) -> None:
        parser, waiter = self._parser, self._waiter
        assert parser is not None and parser.head is not None and waiter is not None
        self._parser = None
        self._waiter = None
        head = parser.head
        waiter.callback(
            RawResponse(
                head.status,
                head.reason,
                head.version,
                head.headers,
                b"".join(self._pieces),
            )
        )

    def _fail(self, error: Exception) -> None:
        waiter, self._waiter, self._parser = self._waiter, None, None
        if waiter is not None:
            waiter.errback(error)

    def _eof(self) -> None:
        if self._parser is not None and self._parser.eof():
            self._complete()
        else:
            self._fail(ConnectionDone("connection closed before a response"))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.is_lost = True
        if self._waiter is not None:
            self._eof()
        self.lost.callback(None)


async def connect(reactor: Any, host: str, port: int) -> RawHTTPConnection:
    endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=10)
    connecting: Deferred[RawHTTPConnection] = connectProtocol(  # type: ignore[no-untyped-call]
        endpoint, RawHTTPConnection()
    )
    connection = await connecting
    return connection


def proxy_headers(
    url_authority: str, user: str | None, password: str | None
) -> Headers:
    headers: Headers = [("Host", url_authority)]
    if user is not None and password is not None:
        headers.append(("Proxy-Authorization", basic_authorization(user, password)))
    return headers


async def proxy_request(
    reactor: Any,
    gateway: tuple[str, int],
    url: str,
    *,
    user: str | None,
    password: str | None,
    method: str = "GET",
    headers: Headers | None = None,
    body: bytes = b"",
) -> RawResponse:
    """One absolute-URI request through the gateway on a fresh connection."""
    authority = url.split("://", 1)[1].split("/", 1)[0]
    connection = await connect(reactor, *gateway)
    try:
        all_headers = proxy_headers(authority, user, password) + (headers or [])
        if body:
            all_headers.append(("Content-Length", str(len(body))))
        return await connection.request(method, url, all_headers, body)
    finally:
        await connection.close()


async def open_tunnel(
    reactor: Any,
    gateway: tuple[str, int],
    target: str,
    *,
    user: str | None,
    password: str | None,
) -> tuple[RawHTTPConnection, RawResponse]:
    """CONNECT ``target`` (host:port); the connection is a tunnel on a 200."""
    connection = await connect(reactor, *gateway)
    response = await connection.request(
        "CONNECT", target, proxy_headers(target, user, password)
    )
    return connection, response


async def direct_request(
    reactor: Any,
    port: int,
    host: str,
    path: str = "/",
    *,
    method: str = "GET",
    headers: Headers | None = None,
    body: bytes = b"",
    tls: bool = False,
    ca_pem: bytes | None = None,
    address: str = "127.0.0.1",
) -> RawResponse:
    """One request straight to the site (bypassing the gateway), Host ``host``."""
    connection = await connect(reactor, address, port)
    try:
        if tls:
            connection.start_tls(host, ca_pem)
        all_headers: Headers = [("Host", f"{host}:{port}"), *(headers or [])]
        if body:
            all_headers.append(("Content-Length", str(len(body))))
        return await connection.request(method, path, all_headers, body)
    finally:
        await connection.close()
