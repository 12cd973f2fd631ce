"""Tell gateway trouble from everything else, across Scrapy versions.

Scrapy 2.19 wraps Twisted's connection errors in its own exceptions
(``DownloadConnectionRefusedError`` from ``ConnectionRefusedError`` …) and
keeps the original as ``__cause__``; 2.13 raises Twisted's directly. So the
checks walk the cause chain.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Final

from twisted.internet.error import (
    ConnectError,
    ConnectionDone,
    ConnectionLost,
    DNSLookupError,
    TimeoutError,
)
from twisted.web.client import ResponseNeverReceived

from .controller import Outcome
from .health import Failure

_TUNNEL_STATUS: Final = re.compile(r"['\"]status['\"]: (\d{3})\b")
_QUOTED: Final = re.compile(rb'"(?:[^"\\]|\\.)*"')


def causes(exception: BaseException) -> Iterator[BaseException]:
    """The exception, then what caused it, and so on (cycle-safe)."""
    seen: set[int] = set()
    current: BaseException | None = exception
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_gateway_connection_failure(exception: BaseException) -> bool:
    """True when no connection to the proxy could be made at all.

    Behind a forward proxy Scrapy connects only to the gateway, so a refused
    connect or a failed name lookup is the gateway's. Timeouts are left out:
    Twisted's TimeoutError (a ConnectError) is also what a slow *site* behind
    the gateway produces as a download timeout.
    """
    return any(
        isinstance(e, (ConnectError, DNSLookupError))
        and not isinstance(e, TimeoutError)
        for e in causes(exception)
    )


def gateway_failure(exception: BaseException) -> Failure:
    """What a failed download through the gateway says about the gateway.

    A timeout is Twisted's TimeoutError on 2.13 and Scrapy's
    DownloadTimeoutError on 2.19; a connection the gateway closed without an
    answer is ResponseNeverReceived or ConnectionLost/Done (a site that
    fails behind a working gateway gets the gateway's own 502 instead).
    """
    if is_gateway_connection_failure(exception):
        return Failure.REFUSED
    for e in causes(exception):
        if isinstance(e, TimeoutError) or type(e).__name__ == "DownloadTimeoutError":
            return Failure.TIMEOUT
        if isinstance(e, (ResponseNeverReceived, ConnectionLost, ConnectionDone)):
            return Failure.DROPPED
    return Failure.OTHER


def tunnel_status(exception: BaseException) -> int | None:
    """The HTTP status of a refused CONNECT (Scrapy's TunnelError), if any."""
    for e in causes(exception):
        if type(e).__name__ == "TunnelError":
            match = _TUNNEL_STATUS.search(str(e))
            return int(match.group(1)) if match else None
    return None


def proxy_generated(headers: Mapping[bytes, object] | None) -> bool:
    """True when a response was made by a proxy, not forwarded from the site:
    an RFC 9209 ``Proxy-Status`` with an ``error`` (JustProxies, and the
    sandbox) or Squid's ``X-Squid-Error``.

    Every ``Proxy-Status`` field line counts: each proxy on the way adds its
    own member, and ``Headers.get`` would return only the last line.
    """
    if not headers:
        return False
    if headers.get(b"X-Squid-Error"):
        return True
    getlist = getattr(headers, "getlist", None)
    lines = getlist(b"Proxy-Status") if getlist else headers.get(b"Proxy-Status")
    if not isinstance(lines, list):
        lines = [lines]
    return any(isinstance(line, bytes) and _has_error_param(line) for line in lines)


def _has_error_param(line: bytes) -> bool:
    """Whether any member of one ``Proxy-Status`` line has an ``error``
    parameter (quoted strings, which may hold ``,`` or ``;``, left out)."""
    text = _QUOTED.sub(b'""', line)
    return any(
        param.split(b"=", 1)[0].strip().lower() == b"error"
        for member in text.split(b",")
        for param in member.split(b";")[1:]
    )


def classify_response(status: int, headers: Mapping[bytes, object] | None) -> Outcome:
    """What one answer says about the site's limit.

    Only the site's own 429 is rate-limit evidence. A 407, or anything the
    gateway generated itself (a 502/503 of its own, even a 429 for the
    account's plan), says nothing about the site and must not shrink it.
    """
    if status < 400:  # a proxy's own answers are errors; skip the header look-ups
        return Outcome.OK
    if status == 407 or proxy_generated(headers):
        return Outcome.IGNORED
    if status == 429:
        return Outcome.RATE_LIMITED
    return Outcome.OK
