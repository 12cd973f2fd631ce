"""Telling a proxy's own answers from the site's: pure, no crawl."""

from __future__ import annotations

import pytest
from scrapy.http import Headers

from scrapy_justproxies.controller import Outcome
from scrapy_justproxies.failures import classify_response, proxy_generated


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


@pytest.mark.parametrize(
    ("headers", "made_by_a_proxy"),
    [
        ({b"Proxy-Status": b"justproxies; error=http_request_denied"}, True),
        ({b"X-Squid-Error": b"ERR_ACCESS_DENIED 0"}, True),
        ({b"Retry-After": b"1"}, False),  # the site's own 429
        ({b"Proxy-Status": b"justproxies", b"Via": b"1.1 squid"}, False),
    ],
    ids=["proxy-status", "x-squid-error", "site", "forwarded"],
)
def test_a_429_is_the_proxys_only_with_one_of_the_two_markers(
    headers: dict[bytes, bytes], made_by_a_proxy: bool
) -> None:
    """A gateway-made 429 (the account's plan, say) carries an RFC 9209
    `Proxy-Status` error or Squid's `X-Squid-Error`: it says nothing about
    the site's limit. A 429 without either is the site's: rate-limit
    evidence (README, *Known limitations*)."""
    response_headers = Headers(headers)
    assert proxy_generated(response_headers) is made_by_a_proxy
    expected = Outcome.IGNORED if made_by_a_proxy else Outcome.RATE_LIMITED
    assert classify_response(429, response_headers) is expected
