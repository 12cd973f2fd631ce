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
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
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


def get_429_retry_request(request: Request, *, max_retries: int) -> Request | None:
    """A copy of ``request`` to send again after a 429, or None once its 429
    budget is spent. The copy skips the dupe filter and keeps the request's
    priority: a rate-limited URL is not worth less than the others."""
    retries = int(request.meta.get(RETRIES_META, 0)) + 1
    if retries > max_retries:
        return None
    retry = request.copy()
    retry.meta[RETRIES_META] = retries
    retry.dont_filter = True
    return retry


def ewma(previous: float | None, sample: float, weight: float = 0.2) -> float:
    """Exponentially weighted moving average; the first sample starts it."""
    return sample if previous is None else previous + weight * (sample - previous)
