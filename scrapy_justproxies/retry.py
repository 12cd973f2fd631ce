"""429 retries that lose nothing: small pure functions, thin glue elsewhere.

Scrapy's RetryMiddleware counts a 429 against ``RETRY_TIMES`` (2 by default)
and then drops the URL, so on a busy site a crawl at high concurrency loses
most of its URLs. Here a 429 gets its own, generous budget
(``JUSTPROXIES_RETRY_429_TIMES``), honours ``Retry-After`` (seconds or an
HTTP-date, capped by ``JUSTPROXIES_RETRY_AFTER_MAX``) and never touches the
ordinary retry budget. Shaped like Scrapy's ``get_retry_request``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Mapping

    from scrapy import Request

_DELAY_SECONDS: Final = re.compile(r"[0-9]{1,10}")  # ASCII only: "²".isdigit()
RETRIES_META: Final = "justproxies_429_retries"
"""How many times this URL has been retried after a 429."""

# Without Retry-After: a short wait that grows with each attempt, with jitter
# so the retries of one burst of 429s do not come back as another burst.
FALLBACK_BASE_SECONDS: Final = 0.5
FALLBACK_MAX_SECONDS: Final = 8.0


def parse_retry_after(value: bytes | str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110: a number of
    seconds or an HTTP-date), or None when absent or unreadable. ``now`` is
    the current Unix time, for dates."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if not text:
        return None
    if _DELAY_SECONDS.fullmatch(text):
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # The asctime form (``Sun Nov  6 08:49:37 1994``) names no zone; RFC
        # 9110 dates are all GMT.
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - now)


def retry_delay(
    retry_after: float | None,
    attempt: int,
    maximum: float,
    rng: random.Random | None = None,
) -> float:
    """How long to hold a 429'd request before retrying it.

    An exponential backoff from 0.5 s, doubled per attempt up to 8 s, with
    ±25% jitter; or the site's ``Retry-After`` when it asks for longer. The
    backoff is also the floor: ``Retry-After: 0`` or a date already past (a
    site whose clock is behind) would otherwise spend the whole 429 budget
    in milliseconds. ``maximum`` caps both.
    """
    base = min(FALLBACK_BASE_SECONDS * 2.0 ** max(0, attempt - 1), FALLBACK_MAX_SECONDS)
    backoff = base * float((rng or random).uniform(0.75, 1.25))
    if retry_after is not None:
        backoff = max(retry_after, backoff)
    return min(backoff, maximum)


# When a 429's Retry-After says the site is closed to every request (a fixed
# window whose count is spent), not only that this one came too early (a
# token bucket): see closed_until.
CLOSED_MIN_SECONDS: Final = 2.0
"""A Retry-After at least this long (and CLOSED_ANSWER_TIMES answer times)
holds the whole slot. A token bucket's Retry-After is the time to its next
token, rounded up to whole seconds: 1 s on any site faster than 1 req/s."""
CLOSED_ANSWER_TIMES: Final = 4.0
"""... and at least this many of the site's usual answer times: a wait that
long is not a request that merely came a little too early."""
RETRY_AFTER_RESOLUTION: Final = 1.0
"""Retry-After counts whole seconds (an HTTP-date too): two 429s at least
this far apart whose resume instants are closer than this name one instant."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A 429 with a ``Retry-After``: when it came and when it said to resume
    (both on the same monotonic clock)."""

    at: float
    resume: float


def closed_until(
    now: float,
    retry_after: float | None,
    answer_time: float | None,
    previous: Refusal | None = None,
) -> float | None:
    """The instant until which a slot should send nothing new, from a 429
    answered at ``now`` with ``retry_after`` seconds; None when the 429 only
    says that one request came too early.

    The site is taken at its word when the evidence says it is closed to
    everyone until a known instant, as a fixed window is once its count is
    spent (every 429 names the window's end):

    - the wait is long: at least :data:`CLOSED_MIN_SECONDS` and
      :data:`CLOSED_ANSWER_TIMES` times the slot's usual ``answer_time``
      (1 s when not known yet); or
    - two 429s at least :data:`RETRY_AFTER_RESOLUTION` apart name the same
      resume instant (to within that resolution): the instant stands still
      while time passes, which a token bucket's next token never does.

    A token bucket's ``Retry-After: 1`` holds nothing beyond the request:
    pausing a whole slot on it cost a steady crawl a sixth of its rate.
    """
    if retry_after is None or retry_after <= 0:
        return None
    resume = now + retry_after
    usual = answer_time if answer_time is not None and answer_time > 0 else 1.0
    if retry_after >= max(CLOSED_MIN_SECONDS, CLOSED_ANSWER_TIMES * usual):
        return resume
    if (
        previous is not None
        and now - previous.at >= RETRY_AFTER_RESOLUTION
        and abs(resume - previous.resume) < RETRY_AFTER_RESOLUTION
    ):
        return max(resume, previous.resume)
    return None


PROBE_AFTER_SECONDS: Final = 1.0
"""While a slot is held for a long Retry-After, one request goes out this
long after the 429 to check the claim (see :func:`probe_delay`)."""


def probe_delay(hold_seconds: float) -> float | None:
    """When to send one request into a slot held for ``hold_seconds``, to
    check that the site is really closed; None when the hold is too short
    for the check to tell (its answer must come back before the resume
    instant, less Retry-After's resolution)."""
    if hold_seconds < PROBE_AFTER_SECONDS + 2 * RETRY_AFTER_RESOLUTION:
        return None
    return PROBE_AFTER_SECONDS


def disproves_closed(refused_sent_at: float, resume: float, sent_at: float) -> bool:
    """Whether a request sent at ``sent_at`` and admitted shows that the site
    was not closed until ``resume``, as the 429 to a request sent at
    ``refused_sent_at`` said: sent clearly after the refused one (half a
    second: two requests may overtake each other on the way) and clearly
    before the named instant (Retry-After counts whole seconds). A token
    bucket that sends a fixed, long Retry-After admits such a request once a
    token is back; a fixed window whose count is spent never does."""
    return (
        refused_sent_at + RETRY_AFTER_RESOLUTION / 2
        <= sent_at
        < resume - RETRY_AFTER_RESOLUTION
    )


def next_429_attempt(meta: Mapping[str, Any], *, max_retries: int) -> int | None:
    """Which 429 retry a request with this ``meta`` would get next (1: its
    first), or None once its 429 budget is spent."""
    attempt = int(meta.get(RETRIES_META, 0)) + 1
    return attempt if attempt <= max_retries else None


def get_429_retry_request(request: Request, *, max_retries: int) -> Request | None:
    """A copy of ``request`` to send again after a 429, or None once its 429
    budget is spent. The copy skips the dupe filter and keeps the request's
    priority: a rate-limited URL is not worth less than the others."""
    attempt = next_429_attempt(request.meta, max_retries=max_retries)
    if attempt is None:
        return None
    retry = request.copy()
    retry.meta[RETRIES_META] = attempt
    retry.dont_filter = True
    return retry


def ewma(previous: float | None, sample: float, weight: float = 0.2) -> float:
    """Exponentially weighted moving average; the first sample starts it."""
    return sample if previous is None else previous + weight * (sample - previous)
