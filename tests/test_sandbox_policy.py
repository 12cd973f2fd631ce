"""Pure logic of the sandbox: no sockets, no reactor, explicit time."""

from __future__ import annotations

import math
import random
import statistics
from email.utils import parsedate_to_datetime

import pytest

from scrapy_justproxies.sandbox.policy import (
    ExitIpAllocator,
    FixedWindowCounter,
    Gcra,
    LatencySampler,
    ProxyUsername,
    RateSchedule,
    SlidingWindowLog,
    TokenBucket,
    authenticate,
    basic_authorization,
    basic_credentials,
    choose_failure,
    format_proxy_username,
    is_exit_ip,
    lognormal_params,
    parse_proxy_username,
    resolve_target,
    retry_after_value,
    sample_latency_ms,
)

USERS = {"demo": "demo-secret", "team-a": "pw"}


# -- usernames and credentials --------------------------------------------------


@pytest.mark.parametrize(
    ("username", "expected"),
    [
        ("demo", ProxyUsername("demo")),
        ("demo-country-us", ProxyUsername("demo", "US")),
        ("demo-country-DE", ProxyUsername("demo", "DE")),
        ("demo-session-abc_123", ProxyUsername("demo", None, "abc_123")),
        ("demo-country-fr-session-s1", ProxyUsername("demo", "FR", "s1")),
        ("team-a-session-x", ProxyUsername("team-a", None, "x")),
        # Malformed parameters stay in the base, which then fails the lookup.
        ("demo-country-usa", ProxyUsername("demo-country-usa")),
        ("demo-session-", ProxyUsername("demo-session-")),
        ("demo-session-bad!", ProxyUsername("demo-session-bad!")),
        ("demo-session-s1-country-us", ProxyUsername("demo-session-s1", "US")),
        ("demo-session-" + "a" * 65, ProxyUsername("demo-session-" + "a" * 65)),
    ],
)
def test_parse_proxy_username(username: str, expected: ProxyUsername) -> None:
    assert parse_proxy_username(username) == expected


def test_parse_proxy_username_empty() -> None:
    assert parse_proxy_username("") is None


def test_format_round_trip() -> None:
    name = format_proxy_username("demo", country="US", session="s_9")
    assert name == "demo-country-us-session-s_9"
    assert parse_proxy_username(name) == ProxyUsername("demo", "US", "s_9")
    assert format_proxy_username("demo") == "demo"


def test_basic_credentials() -> None:
    assert basic_credentials(basic_authorization("u", "p:w")) == ("u", "p:w")
    assert basic_credentials("basic " + basic_authorization("u", "p")[6:]) == ("u", "p")
    assert basic_credentials(None) is None
    assert basic_credentials("") is None
    assert basic_credentials("Bearer abc") is None
    assert basic_credentials("Basic !!!") is None
    assert basic_credentials("Basic " + "dXNlcg==") is None  # "user", no colon


@pytest.mark.parametrize(
    ("user", "password", "ok"),
    [
        ("demo", "demo-secret", True),
        ("demo-country-us-session-x", "demo-secret", True),
        ("demo", "wrong", False),
        ("nobody", "demo-secret", False),
        ("demo-country-usa", "demo-secret", False),
        ("team-a", "pw", True),
    ],
)
def test_authenticate(user: str, password: str, ok: bool) -> None:
    result = authenticate(basic_authorization(user, password), USERS)
    assert (result is not None) is ok


def test_authenticate_missing_header() -> None:
    assert authenticate(None, USERS) is None


# -- targets and exit IPs ------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "resolved"),
    [
        ("a.test", "127.0.0.1"),
        ("Shop.Example.TEST.", "127.0.0.1"),
        ("localhost", "127.0.0.1"),
        ("127.0.0.1", "127.0.0.1"),
        (".test", None),
        ("test", None),
        ("example.com", None),
        ("a.test.example.com", None),
        ("10.0.0.1", None),
        ("127.0.0.2", None),
    ],
)
def test_resolve_target(host: str, resolved: str | None) -> None:
    assert resolve_target(host) == resolved


def test_is_exit_ip() -> None:
    assert is_exit_ip("127.0.1.1")
    assert is_exit_ip("127.0.1.254")
    assert not is_exit_ip("127.0.0.1")
    assert not is_exit_ip("::1")
    assert not is_exit_ip("")


def test_rotation_visits_every_exit_ip_once_per_round() -> None:
    allocator = ExitIpAllocator(5, seed=3)
    first_round = [allocator.rotating() for _ in range(5)]
    assert len(set(first_round)) == 5
    assert {ip.rsplit(".", 1)[1] for ip in first_round} == {"1", "2", "3", "4", "5"}
    assert [allocator.rotating() for _ in range(5)] == first_round


def test_sessions_are_sticky_and_distinct() -> None:
    allocator = ExitIpAllocator(200, seed=0)
    a = allocator.for_session("a")
    b = allocator.for_session("b")
    for _ in range(10):
        allocator.rotating()
    assert allocator.for_session("a") == a
    assert allocator.for_session("b") == b
    assert a != b


def test_resize_drops_sessions_out_of_range() -> None:
    allocator = ExitIpAllocator(10, seed=0)
    ips = {allocator.for_session(str(i)) for i in range(10)}
    assert len(ips) == 10
    allocator.resize(2)
    assert {allocator.for_session(str(i)) for i in range(10)} <= {
        "127.0.1.1",
        "127.0.1.2",
    }
    with pytest.raises(ValueError, match="out of range"):
        allocator.resize(255)


def test_choose_failure_frequencies() -> None:
    rng = random.Random(1)
    draws = [choose_failure(rng, 0.1, 0.2, 0.3) for _ in range(20_000)]
    assert draws.count("502") / len(draws) == pytest.approx(0.1, abs=0.015)
    assert draws.count("503") / len(draws) == pytest.approx(0.2, abs=0.015)
    assert draws.count("drop") / len(draws) == pytest.approx(0.3, abs=0.015)
    assert choose_failure(rng, 0, 0, 0) is None
    assert choose_failure(rng, 1, 0, 0) == "502"


# -- rate schedule and token bucket --------------------------------------------


def test_schedule_rate_at() -> None:
    schedule = RateSchedule(10.0, [(5.0, 2.0), (8.0, None)])
    assert schedule.rate_at(0) == 10.0
    assert schedule.rate_at(4.99) == 10.0
    assert schedule.rate_at(5.0) == 2.0
    assert schedule.rate_at(7.5) == 2.0
    assert schedule.rate_at(100) is None
    assert list(schedule.segments(6.0)) == [(6.0, 8.0, 2.0), (8.0, math.inf, None)]


def _admitted_over(bucket: TokenBucket, start: float, end: float, step: float) -> int:
    admitted = 0
    t = start
    while t < end - 1e-12:
        admitted += bucket.try_acquire(t)
        t += step
    return admitted


def test_bucket_admits_rate_times_window_plus_burst() -> None:
    bucket = TokenBucket(RateSchedule(5.0), burst=10, now=0.0)
    # Hammer it every millisecond for 4 seconds: 10 (burst) + 5 * 4.
    assert _admitted_over(bucket, 0.0, 4.0, 0.001) == pytest.approx(30, abs=1)


def test_bucket_starts_full_and_caps_at_burst() -> None:
    bucket = TokenBucket(RateSchedule(1.0), burst=3, now=0.0)
    assert [bucket.try_acquire(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.tokens(1000.0) == 3  # long idle refills only up to burst


def test_bucket_follows_schedule() -> None:
    # 10/s for 2 s, then 1/s: over 0..6 s that is burst 1 + 20 + 4.
    bucket = TokenBucket(RateSchedule(10.0, [(2.0, 1.0)]), burst=1, now=0.0)
    assert _admitted_over(bucket, 0.0, 6.0, 0.001) == pytest.approx(25, abs=1)


def test_bucket_unlimited_segment_refills_fully() -> None:
    bucket = TokenBucket(RateSchedule(0.0, [(1.0, None), (2.0, 0.0)]), burst=2, now=0.0)
    assert bucket.try_acquire(0.0)
    assert bucket.try_acquire(0.0)
    assert not bucket.try_acquire(0.5)
    assert bucket.seconds_until_available(0.5) == pytest.approx(0.5)
    assert all(bucket.try_acquire(1.5) for _ in range(50))  # unlimited
    assert bucket.try_acquire(2.5)
    assert bucket.try_acquire(2.5)
    assert not bucket.try_acquire(2.5)
    assert bucket.seconds_until_available(3.0) is None  # rate 0 forever


def test_seconds_until_available() -> None:
    bucket = TokenBucket(RateSchedule(2.0), burst=1, now=0.0)
    assert bucket.seconds_until_available(0.0) == 0.0
    assert bucket.try_acquire(0.0)
    assert bucket.seconds_until_available(0.0) == pytest.approx(0.5)
    assert bucket.seconds_until_available(0.2) == pytest.approx(0.3)
    # Across a schedule change: 0.1 token at 0.1/s for 1 s, then 10/s.
    slow = TokenBucket(RateSchedule(0.1, [(1.0, 10.0)]), burst=1, now=0.0)
    assert slow.try_acquire(0.0)
    assert slow.seconds_until_available(0.0) == pytest.approx(1.0 + 0.9 / 10)


def test_retry_after_value() -> None:
    assert retry_after_value("seconds", 0.01, 0.0) == "1"
    assert retry_after_value("seconds", 1.0, 0.0) == "1"
    assert retry_after_value("seconds", 1.2, 0.0) == "2"
    assert retry_after_value("seconds", None, 0.0) == "60"
    assert retry_after_value("none", 3.0, 0.0) is None
    date = retry_after_value("http-date", 2.5, 1_700_000_000.4)
    assert date is not None and date.endswith("GMT")
    assert parsedate_to_datetime(date).timestamp() == 1_700_000_001 + 3


def test_a_fixed_retry_after_may_be_zero_or_already_past() -> None:
    assert retry_after_value("seconds", 0.5, 0.0, fixed=20) == "20"
    assert retry_after_value("seconds", 0.5, 0.0, fixed=0) == "0"
    assert retry_after_value("seconds", 0.5, 0.0, fixed=-30) == "0"
    past = retry_after_value("http-date", 0.5, 1_700_000_000.0, fixed=-30)
    assert past is not None
    assert parsedate_to_datetime(past).timestamp() == 1_700_000_000 - 30


# -- latency -------------------------------------------------------------------


def test_lognormal_params() -> None:
    assert lognormal_params(100, 100) is None
    assert lognormal_params(0, 0) is None
    mu, sigma = lognormal_params(100, 400) or (0, 0)
    assert mu == pytest.approx(math.log(100))
    assert sigma == pytest.approx(math.log(4) / 1.645, rel=1e-3)


def test_latency_percentiles_match_the_policy() -> None:
    rng = random.Random(42)
    samples = sorted(sample_latency_ms(80.0, 300.0, rng) for _ in range(20_000))
    p50 = samples[len(samples) // 2]
    p95 = samples[int(len(samples) * 0.95)]
    assert p50 == pytest.approx(80.0, rel=0.05)
    assert p95 == pytest.approx(300.0, rel=0.08)


def test_latency_constant_and_zero() -> None:
    rng = random.Random(0)
    assert {sample_latency_ms(50, 50, rng) for _ in range(10)} == {50}
    assert sample_latency_ms(0, 0, rng) == 0


def test_latency_sampler_is_reproducible() -> None:
    a = LatencySampler(20, 100, seed="7:a.test")
    b = LatencySampler(20, 100, seed="7:a.test")
    draws = [a() for _ in range(100)]
    assert draws == [b() for _ in range(100)]
    assert statistics.median(draws) == pytest.approx(20, rel=0.35)


# -- fixed-window counter and GCRA (issue 9: limiters that are not ours) -------


def test_fixed_window_counts_per_window_and_says_when_it_resets() -> None:
    window = FixedWindowCounter(RateSchedule(5.0), window=2.0, now=0.0)
    assert all(window.try_acquire(0.1) for _ in range(10))  # 5/s * 2 s
    assert not window.try_acquire(0.2)
    assert window.seconds_until_available(0.5) == pytest.approx(1.5)
    assert window.try_acquire(2.0)  # a new window, a new count
    assert window.seconds_until_available(2.0) == 0.0


def test_fixed_window_follows_the_schedule_at_window_starts() -> None:
    window = FixedWindowCounter(RateSchedule(1.0, [(1.0, None)]), 2.0, now=0.0)
    assert window.try_acquire(0.0)
    assert window.try_acquire(0.1)
    assert not window.try_acquire(1.5)  # still the first window's allowance
    assert all(window.try_acquire(2.5) for _ in range(100))  # unlimited


def test_sliding_window_admits_the_count_in_any_window_and_frees_at_the_sent_pace() -> (
    None
):
    log = SlidingWindowLog(RateSchedule(5.0), window=2.0, now=0.0)
    # A burst of the whole count (5/s * 2 s), then nothing until the first
    # admission leaves the window: no reset instant as in a fixed window.
    assert all(log.try_acquire(0.1 + i / 100) for i in range(10))
    assert not log.try_acquire(1.0)
    assert log.seconds_until_available(1.0) == pytest.approx(1.1)
    assert not log.try_acquire(2.1 - 1e-6)
    assert log.try_acquire(2.1)  # the first (0.10) has left
    assert not log.try_acquire(2.1)  # the second (0.11) has not
    assert log.seconds_until_available(2.1) == pytest.approx(0.01)
    # Over a long stretch of steady demand it admits the rate, not more: any
    # window of 2 s holds at most 10 admissions.
    times = [t / 100 for t in range(300, 2300)]
    admitted = [t for t in times if log.try_acquire(t)]
    assert len(admitted) == pytest.approx(5 * 20, abs=10)
    for i, start in enumerate(admitted):
        inside = [t for t in admitted[i:] if t < start + 2.0 - 1e-9]
        assert len(inside) <= 10


def test_sliding_window_follows_the_schedule_and_a_rate_of_zero_never_admits() -> None:
    log = SlidingWindowLog(RateSchedule(1.0, [(1.0, None), (5.0, 0.0)]), 2.0, 0.0)
    assert log.try_acquire(0.0)
    assert log.try_acquire(0.5)
    assert not log.try_acquire(0.9)
    assert all(log.try_acquire(2.0) for _ in range(100))  # unlimited
    assert not log.try_acquire(6.0)
    assert log.seconds_until_available(6.0) is None


def test_sliding_window_says_when_a_lowered_allowance_fits_one_more() -> None:
    log = SlidingWindowLog(RateSchedule(5.0, [(1.0, 1.0)]), 2.0, 0.0)
    assert all(log.try_acquire(i / 10) for i in range(10))  # 10 at 0.0-0.9
    # From t = 1 the allowance is 2: 9 of the 10 must leave first, the one
    # admitted at 0.8 leaves at 2.8.
    assert log.seconds_until_available(1.5) == pytest.approx(1.3)
    assert not log.try_acquire(2.7)
    assert log.try_acquire(2.8)


def test_gcra_spaces_requests_with_a_burst() -> None:
    gcra = Gcra(RateSchedule(10.0), burst=3, now=0.0)
    assert [gcra.try_acquire(0.0) for _ in range(4)] == [True, True, True, False]
    assert gcra.seconds_until_available(0.0) == pytest.approx(0.1)
    assert not gcra.try_acquire(0.05)
    assert gcra.try_acquire(0.1)
    # Over a long stretch it admits the rate, not more.
    admitted = sum(gcra.try_acquire(1 + i / 1000) for i in range(10_000))
    assert admitted == pytest.approx(100, abs=3)


def test_gcra_with_rate_zero_never_admits() -> None:
    gcra = Gcra(RateSchedule(0.0), burst=2, now=0.0)
    assert not gcra.try_acquire(5.0)
    assert gcra.seconds_until_available(5.0) is None
