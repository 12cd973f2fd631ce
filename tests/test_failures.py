"""Telling a proxy's own answers from the site's: pure, no crawl."""

from __future__ import annotations

import pytest
from scrapy.http import Headers

from scrapy_justproxies.failures import proxy_generated


def test_an_error_on_an_earlier_proxy_status_line_counts() -> None:
    # Two field lines: the gateway's error first, a CDN's plain member last.
    headers = Headers(
        {b"Proxy-Status": [b"justproxies; error=http_request_denied", b"cdn-edge"]}
    )
    assert headers.get(b"Proxy-Status") == b"cdn-edge"  # what .get alone sees
    assert proxy_generated(headers)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"cdn, gw; error=dns_timeout", True),
        (b'gw; error=destination_unavailable; details="x"', True),
        (b'cdn; details="error=not a parameter, really"', False),
        (b"cdn; received-status=429", False),
    ],
)
def test_every_member_of_a_line_is_parsed(value: bytes, expected: bool) -> None:
    assert proxy_generated(Headers({b"Proxy-Status": value})) is expected


def test_squid_marker_and_plain_mapping() -> None:
    assert proxy_generated(Headers({b"X-Squid-Error": b"ERR_CACHE_ACCESS_DENIED 0"}))
    assert proxy_generated({b"Proxy-Status": b"gw; error=x"})
    assert not proxy_generated(None)
    assert not proxy_generated(Headers({b"Via": b"1.1 squid"}))
