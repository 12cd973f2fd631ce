"""429 retry policy and failure classification: pure functions."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest
from scrapy import Request
from scrapy.http import Headers
from twisted.internet.error import ConnectionRefusedError, DNSLookupError, TimeoutError

from scrapy_justproxies.controller import Outcome
from scrapy_justproxies.failures import (
    classify_response,
    is_gateway_connection_failure,
    proxy_generated,
    tunnel_status,
)
from scrapy_justproxies.retry import (
    FALLBACK_MAX_SECONDS,
    RETRIES_META,
    ewma,
    get_429_retry_request,
    parse_retry_after,
    retry_delay,
)

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"7", 7.0),
        ("0", 0.0),
        (" 12 ", 12.0),
        (formatdate(NOW + 30, usegmt=True), 30.0),
        (formatdate(NOW - 30, usegmt=True), 0.0),  # already past
        (None, None),
        (b"", None),
        (b"soon", None),
        (b"-5", None),
        (b"1.5", None),  # RFC 9110 delay-seconds are whole numbers
        # The three HTTP-date forms: IMF-fixdate, RFC 850, asctime (no zone: GMT).
        ("Fri, 15 Jan 2027 08:00:30 GMT", 30.0),
        ("Friday, 15-Jan-27 08:00:30 GMT", 30.0),
        ("Fri Jan 15 08:00:30 2027", 30.0),
        ("Fri Jan  9 08:00:30 2027", 0.0),  # already past
    ],
)
def test_parse_retry_after(value: bytes | str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    assert retry_delay(3.0, attempt=1, maximum=30) == 3.0
    assert retry_delay(300.0, attempt=1, maximum=30) == 30


@pytest.mark.parametrize("retry_after", [0.0, 0.1])
def test_a_zero_or_past_retry_after_waits_the_backoff_at_least(
    retry_after: float,
) -> None:
    """Retry-After: 0 (or a date already past) must not spend the 429
    budget in milliseconds: the backoff without the header is the floor."""
    rng = random.Random(2)
    first = [
        retry_delay(retry_after, attempt=1, maximum=30, rng=rng) for _ in range(50)
    ]
    assert min(first) >= 0.375
    fifth = [
        retry_delay(retry_after, attempt=5, maximum=30, rng=rng) for _ in range(50)
    ]
    assert min(fifth) >= 6.0
    # 20 attempts take minutes, not milliseconds.
    total = sum(retry_delay(retry_after, attempt=n, maximum=30) for n in range(1, 21))
    assert total > 100


def test_fallback_backoff_grows_with_jitter_and_a_ceiling() -> None:
    rng = random.Random(1)
    first = [retry_delay(None, attempt=1, maximum=60, rng=rng) for _ in range(200)]
    assert min(first) >= 0.375 and max(first) <= 0.625
    third = [retry_delay(None, attempt=3, maximum=60, rng=rng) for _ in range(200)]
    assert min(third) >= 1.5 and max(third) <= 2.5
    late = retry_delay(None, attempt=20, maximum=60, rng=rng)
    assert late <= FALLBACK_MAX_SECONDS * 1.25
    assert retry_delay(None, attempt=20, maximum=1, rng=rng) == 1


def test_retry_request_counts_and_ends() -> None:
    request = Request("https://a.test/x", meta={"keep": 1}, priority=3)
    first = get_429_retry_request(request, max_retries=2)
    assert first is not None
    assert first.meta[RETRIES_META] == 1
    assert first.meta["keep"] == 1
    assert first.dont_filter
    assert first.priority == 3
    assert RETRIES_META not in request.meta  # the original is untouched
    second = get_429_retry_request(first, max_retries=2)
    assert second is not None
    assert second.meta[RETRIES_META] == 2
    assert get_429_retry_request(second, max_retries=2) is None
    assert get_429_retry_request(request, max_retries=0) is None


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (200, {}, Outcome.OK),
        (429, {}, Outcome.RATE_LIMITED),
        (429, {"Retry-After": "1"}, Outcome.RATE_LIMITED),
        (503, {}, Outcome.OK),  # the site's own 503: not a 429
        (407, {}, Outcome.IGNORED),
        (
            502,
            {"Proxy-Status": "justproxies-gateway; error=connection_refused"},
            Outcome.IGNORED,
        ),
        (
            429,
            {"Proxy-Status": "justproxies-gateway; error=http_request_denied"},
            Outcome.IGNORED,
        ),
        (503, {"X-Squid-Error": "ERR_CONNECT_FAIL 111"}, Outcome.IGNORED),
        (
            200,
            {"Proxy-Status": "justproxies-gateway"},
            Outcome.OK,
        ),  # no error: forwarded
    ],
)
def test_classify_response(
    status: int, headers: dict[str, str], expected: Outcome
) -> None:
    assert classify_response(status, Headers(headers)) is expected


def test_proxy_generated_without_headers() -> None:
    assert not proxy_generated(None)
    assert not proxy_generated(Headers({}))


def test_gateway_connection_failures_through_wrapping() -> None:
    assert is_gateway_connection_failure(ConnectionRefusedError())
    assert is_gateway_connection_failure(DNSLookupError("gw"))
    # Scrapy 2.19 wraps Twisted's error and keeps it as the cause.
    try:
        try:
            raise ConnectionRefusedError()
        except ConnectionRefusedError as cause:
            raise RuntimeError("DownloadConnectionRefusedError") from cause
    except RuntimeError as wrapped:
        assert is_gateway_connection_failure(wrapped)
    assert not is_gateway_connection_failure(
        TimeoutError()
    )  # a slow site, not the gateway
    assert not is_gateway_connection_failure(ValueError())


class TunnelError(Exception):
    """Stands in for Scrapy's (matched by name, across versions)."""


def test_tunnel_status() -> None:
    error = TunnelError(
        "Could not open CONNECT tunnel with proxy 127.0.0.1:1 [{'status': 407, 'reason': b'Proxy Authentication Required'}]"
    )
    assert tunnel_status(error) == 407
    assert (
        tunnel_status(TunnelError("Could not open CONNECT tunnel [b'garbage']")) is None
    )
    assert tunnel_status(ValueError("'status': 407")) is None


def test_ewma_starts_at_the_first_sample_then_moves_a_fifth_of_the_way() -> None:
    assert ewma(None, 0.4) == 0.4
    assert ewma(0.4, 0.9) == pytest.approx(0.5)
    assert ewma(0.5, 0.5) == 0.5
