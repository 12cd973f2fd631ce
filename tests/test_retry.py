"""429 retry policy and failure classification: pure functions."""

from __future__ import annotations

import math
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
    Refusal,
    closed_until,
    disproves_closed,
    ewma,
    get_429_retry_request,
    parse_retry_after,
    probe_delay,
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


# -- a long Retry-After: the site closed until a known instant ------------------


def _ceil_seconds(wait: float) -> float:
    """Retry-After as sites send it: whole seconds, rounded up, at least 1."""
    return float(max(1, math.ceil(wait - 1e-9)))


def _closures(refusals: list[tuple[float, float]], answer_time: float) -> list[float]:
    """Feed ``(answered_at, retry_after)`` 429s to closed_until as the
    middleware does (each with the slot's previous one); the holds named."""
    holds: list[float] = []
    previous: Refusal | None = None
    for now, retry_after in refusals:
        until = closed_until(now, retry_after, answer_time, previous)
        previous = Refusal(now, now + retry_after)
        if until is not None:
            holds.append(until)
    return holds


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("rate", [1.0, 5.0, 50.0, 200.0])
def test_a_token_bucket_or_gcra_429_never_holds_the_slot(
    seed: int, rate: float
) -> None:
    """Seeded: 20 s of sends at twice the rate, at random instants, to a
    token bucket (burst 10) and to a GCRA; every 429 says the time to the
    next token in whole seconds (1 s at any rate >= 1 req/s). None of them
    says the site is closed: the steady scenario keeps its rate."""
    rng = random.Random(seed)
    sends = sorted(rng.uniform(0, 20) for _ in range(int(40 * rate)))
    tokens, last, burst = 10.0, 0.0, 10.0
    bucket: list[tuple[float, float]] = []
    for t in sends:
        tokens, last = min(burst, tokens + (t - last) * rate), t
        if tokens >= 1:
            tokens -= 1
        else:
            bucket.append((t + 0.1, _ceil_seconds((1 - tokens) / rate)))
    interval, tat = 1 / rate, 0.0
    gcra: list[tuple[float, float]] = []
    for t in sends:
        early = max(tat, t) - t - (burst - 1) * interval
        if early > 1e-9:
            gcra.append((t + 0.1, _ceil_seconds(early)))
        else:
            tat = max(tat, t) + interval
    assert bucket and gcra
    assert _closures(bucket, answer_time=0.3) == []
    assert _closures(gcra, answer_time=0.3) == []


@pytest.mark.parametrize("seed", range(5))
def test_a_spent_fixed_window_holds_the_slot_until_its_end(seed: int) -> None:
    """Seeded: 1,000 per 20 s, sends at random instants at 200/s for 40 s.
    Every 429 names the window's end (rounded up to whole seconds): it holds
    the slot until that instant, never earlier and at most the rounding and
    the answer's way back later,
    except 429s in a window's last second with no earlier one to agree with."""
    rng = random.Random(seed)
    window, allowance = 20.0, 1000
    count, index = 0, 0
    refusals: list[tuple[float, float]] = []
    for t in sorted(rng.uniform(0, 40) for _ in range(8000)):
        if int(t // window) != index:
            index, count = int(t // window), 0
        if count < allowance:
            count += 1
        else:
            refusals.append((t + 0.1, _ceil_seconds((index + 1) * window - t)))
    holds = _closures(refusals, answer_time=0.3)
    ends = [window, 2 * window]
    # Named on the site's clock, answered 0.1 s later: up to 1.1 s late.
    assert all(any(end <= h < end + 1.1 for end in ends) for h in holds), holds
    # Only 429s answered in a window's last second (Retry-After: 1), before
    # any 429 a second earlier could agree, fail to hold.
    assert len(holds) >= len(refusals) - sum(
        1 for now, retry_after in refusals if retry_after < 2
    )


def test_closed_until_scales_with_the_answer_time_and_needs_a_retry_after() -> None:
    assert closed_until(10.0, None, 0.3) is None
    assert closed_until(10.0, 0.0, 0.3) is None
    assert closed_until(10.0, 1.0, 0.3) is None  # a token bucket's "1"
    assert closed_until(10.0, 2.0, 0.3) == 12.0
    assert closed_until(10.0, 2.0, 0.6) is None  # < 4 answer times
    assert closed_until(10.0, 3.0, 0.6) == 13.0
    assert closed_until(10.0, 3.0, None) is None  # 1 s while not known
    assert closed_until(10.0, 4.0, None) == 14.0
    # Two 429s a second apart naming one instant: closed, however short.
    first = Refusal(10.0, 13.0)
    assert closed_until(11.5, 2.0, 1.0, first) == 13.5
    assert closed_until(10.5, 2.0, 1.0, first) is None  # too close together
    assert closed_until(11.5, 3.0, 1.0, first) is None  # the instant moved


def test_a_probe_checks_only_a_hold_it_can_disprove() -> None:
    assert probe_delay(2.0) is None
    assert probe_delay(3.0) == 1.0
    assert probe_delay(16.0) == 1.0
    # The refused request went out at 10, the site named 20.
    assert disproves_closed(10.0, 20.0, 11.0)  # admitted meanwhile
    assert not disproves_closed(10.0, 20.0, 10.2)  # may have overtaken it
    assert not disproves_closed(10.0, 20.0, 19.5)  # within the rounding
    assert not disproves_closed(10.0, 20.0, 20.0)  # after the instant
