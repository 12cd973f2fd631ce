"""Pure logic of the sandbox, free of sockets and reactors so it is unit-testable.

* proxy usernames (``USER[-country-CC][-session-ID]``) and Basic credentials;
* exit-IP allocation (rotating and sticky sessions);
* the token bucket with a rate schedule, driven by explicit timestamps;
* the lognormal latency sampler;
* ``Retry-After`` values and target-host resolution.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import math
import random
import re
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from typing import Literal

MAX_EXIT_IPS = 254
EXIT_IP_NETWORK = ipaddress.ip_network("127.0.1.0/24")
# Lognormal tails are unbounded; a cap keeps a test run bounded in time.
MAX_LATENCY_MS = 60_000.0
# Retry-After when no token will ever come back (rate 0 with no later change).
RETRY_AFTER_FALLBACK_S = 60
RETRY_AFTER_CAP_S = 86_400
Z95 = 1.6448536269514722  # standard normal quantile at 0.95


# -- proxy usernames and credentials --------------------------------------------

_USERNAME_RE = re.compile(
    r"(?P<base>.+?)"
    r"(?:-country-(?P<country>[A-Za-z]{2}))?"
    r"(?:-session-(?P<session>[A-Za-z0-9_]{1,64}))?"
)


@dataclass(frozen=True)
class ProxyUsername:
    """A parsed gateway username; ``country`` is upper-case."""

    base: str
    country: str | None = None
    session: str | None = None


def parse_proxy_username(username: str) -> ProxyUsername | None:
    """Split ``USER[-country-CC][-session-ID]``; None if it cannot be parsed.

    The base is matched lazily so the parameters are taken from the end; a
    malformed parameter (``-country-usa``) stays part of the base and then
    fails the user lookup, which is what a strict provider does.
    """
    match = _USERNAME_RE.fullmatch(username)
    if match is None:
        return None
    country = match.group("country")
    return ProxyUsername(
        base=match.group("base"),
        country=country.upper() if country else None,
        session=match.group("session"),
    )


def format_proxy_username(
    base: str, *, country: str | None = None, session: str | None = None
) -> str:
    """The inverse of :func:`parse_proxy_username`."""
    name = base
    if country:
        name += f"-country-{country.lower()}"
    if session:
        name += f"-session-{session}"
    return name


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """Decode ``Basic base64(user:password)``; None if absent or malformed."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return user, password


def basic_authorization(user: str, password: str) -> str:
    """The ``Proxy-Authorization`` value for ``user:password``."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def authenticate(header: str | None, users: Mapping[str, str]) -> ProxyUsername | None:
    """The parsed username if the header carries valid credentials, else None."""
    credentials = basic_credentials(header)
    if credentials is None:
        return None
    username, password = credentials
    parsed = parse_proxy_username(username)
    if parsed is None:
        return None
    expected = users.get(parsed.base)
    if expected is None or not _constant_time_equal(expected, password):
        return None
    return parsed


def _constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


# -- targets and exit IPs ------------------------------------------------------


def resolve_target(host: str) -> str | None:
    """Where a proxied host really lives: only ``*.test``, localhost, 127.0.0.1.

    Everything else is refused so the sandbox can never reach the internet.
    """
    host = host.strip().lower().rstrip(".")
    if host in ("localhost", "127.0.0.1"):
        return "127.0.0.1"
    if host.endswith(".test") and len(host) > len(".test"):
        return "127.0.0.1"
    return None


def exit_ip(index: int) -> str:
    """The source address of exit IP number ``index`` (1-based)."""
    if not 1 <= index <= MAX_EXIT_IPS:
        raise ValueError(f"exit IP index out of range: {index}")
    return f"127.0.1.{index}"


def is_exit_ip(address: str) -> bool:
    """True for a peer address in the gateway's exit range (127.0.1.0/24)."""
    try:
        return ipaddress.ip_address(address) in EXIT_IP_NETWORK
    except ValueError:
        return False


class ExitIpAllocator:
    """Rotating exit IPs (round robin from a seeded start) and sticky sessions.

    Session stickiness lasts for the allocator's lifetime, like a provider's
    session that has not expired yet.
    """

    def __init__(self, count: int, seed: int = 0) -> None:
        self._count = 0
        self._sessions: dict[str, int] = {}
        self.resize(count)
        self._next = random.Random(seed).randrange(self._count)

    @property
    def count(self) -> int:
        return self._count

    def resize(self, count: int) -> None:
        if not 1 <= count <= MAX_EXIT_IPS:
            raise ValueError(f"exit IP count out of range: {count}")
        self._count = count
        # Sessions pinned beyond the new range get a fresh IP on next use.
        self._sessions = {s: i for s, i in self._sessions.items() if i < count}

    def rotating(self) -> str:
        index = self._next % self._count
        self._next = index + 1
        return exit_ip(index + 1)

    def for_session(self, session: str) -> str:
        index = self._sessions.get(session)
        if index is None:
            index = self._next % self._count
            self._next = index + 1
            self._sessions[session] = index
        return exit_ip(index + 1)


FailureKind = Literal["502", "503", "drop"]


def choose_failure(
    rng: random.Random, fail_502: float, fail_503: float, drop: float
) -> FailureKind | None:
    """One draw deciding whether the gateway fails this request, and how."""
    if fail_502 <= 0 and fail_503 <= 0 and drop <= 0:
        return None  # don't consume randomness when nothing is injected
    draw = rng.random()
    if draw < fail_502:
        return "502"
    if draw < fail_502 + fail_503:
        return "503"
    if draw < fail_502 + fail_503 + drop:
        return "drop"
    return None


# -- rate schedule and token bucket --------------------------------------------


class RateSchedule:
    """Piecewise-constant rate over schedule time (seconds since reset).

    ``None`` is "unlimited".  Before the first change the base rate applies.
    """

    def __init__(
        self,
        base_rate: float | None,
        changes: Sequence[tuple[float, float | None]] = (),
    ) -> None:
        self._times = [float(at) for at, _ in changes]
        self._rates = [rate for _, rate in changes]
        if any(b <= a for a, b in zip(self._times, self._times[1:], strict=False)):
            raise ValueError("schedule times must be strictly increasing")
        self._base = base_rate

    def rate_at(self, t: float) -> float | None:
        rate = self._base
        for at, value in zip(self._times, self._rates, strict=True):
            if at > t:
                break
            rate = value
        return rate

    def segments(self, start: float) -> Iterator[tuple[float, float, float | None]]:
        """``(segment_start, segment_end, rate)`` from ``start`` onwards."""
        boundaries = [at for at in self._times if at > start]
        begin = start
        for end in [*boundaries, math.inf]:
            yield begin, end, self.rate_at(begin)
            begin = end


class TokenBucket:
    """A token bucket whose refill rate follows a :class:`RateSchedule`.

    Time is passed in explicitly (schedule seconds), so tests drive it with
    plain numbers.  It starts full.
    """

    def __init__(self, schedule: RateSchedule, burst: float, now: float) -> None:
        if burst < 1:
            raise ValueError("burst must be >= 1")
        self._schedule = schedule
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    @property
    def burst(self) -> float:
        return self._burst

    def tokens(self, now: float) -> float:
        self._refill(now)
        return self._tokens

    def _refill(self, now: float) -> None:
        if now <= self._last:
            return
        tokens = self._tokens
        for begin, end, rate in self._schedule.segments(self._last):
            if begin >= now:
                break
            span = min(end, now) - begin
            tokens = (
                self._burst if rate is None else min(self._burst, tokens + rate * span)
            )
        self._tokens = tokens
        self._last = now

    def try_acquire(self, now: float) -> bool:
        self._refill(now)
        if self._schedule.rate_at(now) is None:
            return True  # unlimited right now; the bucket stays full
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def seconds_until_available(self, now: float) -> float | None:
        """How long until one token is there; None if never (rate 0 forever)."""
        self._refill(now)
        tokens = self._tokens
        if tokens >= 1.0 or self._schedule.rate_at(now) is None:
            return 0.0
        for begin, end, rate in self._schedule.segments(now):
            if rate is None:
                return begin - now
            if rate > 0:
                needed = (1.0 - tokens) / rate
                if begin + needed <= end:
                    return begin + needed - now
                tokens += rate * (end - begin)
        return None


class FixedWindowCounter:
    """Admits ``rate * window`` requests per window of ``window`` seconds,
    the windows aligned at schedule time 0 (the count resets at each window's
    end); the rate in force at a window's start sets its allowance. A real
    site's "1,000 requests per 20 s"."""

    def __init__(self, schedule: RateSchedule, window: float, now: float) -> None:
        if window <= 0:
            raise ValueError("window must be > 0")
        self._schedule = schedule
        self._window = float(window)
        self._index: int | None = None
        self._count = 0
        self._allowance: float | None = None
        self._roll(now)

    def _roll(self, now: float) -> None:
        index = math.floor(max(now, 0.0) / self._window)
        if index != self._index:
            self._index = index
            self._count = 0
            rate = self._schedule.rate_at(index * self._window)
            self._allowance = None if rate is None else rate * self._window

    def try_acquire(self, now: float) -> bool:
        self._roll(now)
        if self._allowance is None:
            return True
        if self._count + 1 <= self._allowance + 1e-9:
            self._count += 1
            return True
        return False

    def seconds_until_available(self, now: float) -> float | None:
        """The time to the end of the window (when the count resets)."""
        self._roll(now)
        if self._allowance is None or self._count + 1 <= self._allowance + 1e-9:
            return 0.0
        assert self._index is not None
        return (self._index + 1) * self._window - now


class SlidingWindowLog:
    """Admits at most ``rate * window`` requests in any ``window`` seconds (a
    sliding log of admission times, as the sorted-set limiters kept in Redis
    do); ``Retry-After`` = the time until the oldest admission in the window
    leaves it. Unlike the fixed window there is no reset instant: a burst
    admitted at the start frees its places at the pace it was sent, one
    window later. The rate in force at ``now`` sets the allowance."""

    def __init__(self, schedule: RateSchedule, window: float, now: float) -> None:
        if window <= 0:
            raise ValueError("window must be > 0")
        self._schedule = schedule
        self._window = float(window)
        self._admitted: deque[float] = deque()

    def _allowance(self, now: float) -> float | None:
        rate = self._schedule.rate_at(now)
        return None if rate is None else rate * self._window

    def _expire(self, now: float) -> None:
        admitted = self._admitted
        while admitted and admitted[0] + self._window <= now + 1e-9:
            admitted.popleft()

    def try_acquire(self, now: float) -> bool:
        self._expire(now)
        allowance = self._allowance(now)
        if allowance is None:
            return True  # unlimited right now (nothing is logged)
        if len(self._admitted) + 1 <= allowance + 1e-9:
            self._admitted.append(now)
            return True
        return False

    def seconds_until_available(self, now: float) -> float | None:
        """The time until enough of the oldest admissions leave the window."""
        self._expire(now)
        allowance = self._allowance(now)
        if allowance is None or len(self._admitted) + 1 <= allowance + 1e-9:
            return 0.0
        if allowance < 1:
            return None  # rate 0: never (until the schedule changes)
        # The allowance may have dropped below the count: wait for as many to
        # leave as it takes to fit one more.
        over = len(self._admitted) - math.floor(allowance + 1e-9)
        return max(0.0, self._admitted[over] + self._window - now)


class Gcra:
    """The generic cell rate algorithm (a leaky bucket as a meter): one
    request every ``1 / rate`` seconds on average, at most ``burst`` of them
    ahead of that schedule. Unlike the token bucket it keeps no token count,
    only the theoretical arrival time of the next request."""

    def __init__(self, schedule: RateSchedule, burst: float, now: float) -> None:
        if burst < 1:
            raise ValueError("burst must be >= 1")
        self._schedule = schedule
        self._burst = float(burst)
        self._tat = now

    def _interval(self, now: float) -> float | None:
        rate = self._schedule.rate_at(now)
        if rate is None:
            return None
        return math.inf if rate <= 0 else 1.0 / rate

    def try_acquire(self, now: float) -> bool:
        interval = self._interval(now)
        if interval is None:
            return True
        if math.isinf(interval):
            return False
        tat = max(self._tat, now)
        if tat - now > (self._burst - 1) * interval + 1e-9:
            return False
        self._tat = tat + interval
        return True

    def seconds_until_available(self, now: float) -> float | None:
        interval = self._interval(now)
        if interval is None:
            return 0.0
        if math.isinf(interval):
            return None
        early = max(self._tat, now) - now - (self._burst - 1) * interval
        return max(0.0, early)


def retry_after_value(
    mode: str, wait_seconds: float | None, wall_now: float, fixed: int | None = None
) -> str | None:
    """The ``Retry-After`` header for ``mode`` ("seconds", "http-date", "none").

    Seconds are rounded up and at least 1, so a client that honours the
    header never comes back before a token is there; unless ``fixed`` gives
    the value (0, or negative for a date already past, are allowed).
    """
    if mode == "none":
        return None
    if fixed is not None:
        seconds = fixed if mode == "http-date" else max(0, fixed)
    elif wait_seconds is None:
        seconds = RETRY_AFTER_FALLBACK_S
    else:
        seconds = min(RETRY_AFTER_CAP_S, max(1, math.ceil(wait_seconds - 1e-9)))
    if mode == "seconds":
        return str(seconds)
    # An HTTP-date has whole-second resolution: round the base up as well.
    return formatdate(math.ceil(wall_now) + seconds, usegmt=True)


# -- latency -------------------------------------------------------------------


def lognormal_params(p50_ms: float, p95_ms: float) -> tuple[float, float] | None:
    """``(mu, sigma)`` of the lognormal with these quantiles; None if constant."""
    if p50_ms <= 0 or p95_ms <= p50_ms:
        return None
    return math.log(p50_ms), math.log(p95_ms / p50_ms) / Z95


def sample_latency_ms(p50_ms: float, p95_ms: float, rng: random.Random) -> float:
    """One latency draw: lognormal(mu=ln p50, sigma=ln(p95/p50)/1.645)."""
    if p50_ms <= 0:
        return 0.0
    params = lognormal_params(p50_ms, p95_ms)
    if params is None:
        return min(p50_ms, MAX_LATENCY_MS)
    mu, sigma = params
    return min(rng.lognormvariate(mu, sigma), MAX_LATENCY_MS)


class LatencySampler:
    """A seeded stream of latency draws for one host policy."""

    def __init__(self, p50_ms: float, p95_ms: float, seed: int | str = 0) -> None:
        self.p50_ms = p50_ms
        self.p95_ms = p95_ms
        self._rng = random.Random(seed)

    def __call__(self) -> float:
        return sample_latency_ms(self.p50_ms, self.p95_ms, self._rng)

    def draw(self, p50_ms: float, p95_ms: float) -> float:
        """One draw with other quantiles (a latency that follows a schedule)."""
        return sample_latency_ms(p50_ms, p95_ms, self._rng)
