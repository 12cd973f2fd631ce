"""Pool presets: the provider's concurrency table as immutable values.

The numbers come from the JustProxies guide "Concurrency and connection
pooling": per pool type a typical P50 latency and a recommended concurrency
range. The rule that goes with it: start at the low end, watch the 429 rate,
raise by 25% until it climbs. So a preset starts every domain at the low end
(``CONCURRENT_REQUESTS_PER_DOMAIN``) and allows the whole crawl the high end
(``CONCURRENT_REQUESTS``); the per-domain ceiling is the high end too.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final


@dataclass(frozen=True)
class PoolPreset:
    """Recommended Scrapy settings for one JustProxies pool type."""

    name: str
    description: str
    latency_p50_ms: tuple[int, int]
    """The guide's typical P50 latency range (informative; the benchmark uses it)."""
    domain_concurrency_start: int
    """Low end of the guide's range: every domain starts here."""
    domain_concurrency_max: int
    """High end of the guide's range: no domain goes above it."""
    total_concurrency: int
    """``CONCURRENT_REQUESTS``: the whole crawl's ceiling."""
    retry_times: int
    """``RETRY_TIMES`` for errors; bandwidth-priced pools retry less."""
    download_timeout: float = 20.0
    """The guide's client timeout (aiohttp/httpx examples use 20 s)."""

    def __post_init__(self) -> None:
        if not 1 <= self.domain_concurrency_start <= self.domain_concurrency_max:
            raise ValueError(f"preset {self.name!r}: start must be in 1..max")
        if self.domain_concurrency_max > self.total_concurrency:
            raise ValueError(f"preset {self.name!r}: domain max exceeds total")

    def scrapy_settings(self) -> dict[str, Any]:
        """The Scrapy settings this preset stands for (a fresh dict)."""
        return {
            "CONCURRENT_REQUESTS": self.total_concurrency,
            "CONCURRENT_REQUESTS_PER_DOMAIN": self.domain_concurrency_start,
            # Per-IP slots would key by the resolved target IP, which behind a
            # gateway says nothing about the exit the site sees.
            "CONCURRENT_REQUESTS_PER_IP": 0,
            "DOWNLOAD_DELAY": 0,
            "DOWNLOAD_TIMEOUT": self.download_timeout,
            "RETRY_TIMES": self.retry_times,
            # The gateway's name is resolved once per connection; cache it.
            "DNSCACHE_ENABLED": True,
        }


DATACENTER: Final = PoolPreset(
    name="datacenter",
    description="Datacenter rotating: fast; push up until the target 429s",
    latency_p50_ms=(60, 120),
    domain_concurrency_start=50,
    domain_concurrency_max=200,
    total_concurrency=200,
    retry_times=3,
)
RESIDENTIAL: Final = PoolPreset(
    name="residential",
    description="Residential rotating: more parallelism to match datacenter RPS",
    latency_p50_ms=(180, 350),
    domain_concurrency_start=30,
    domain_concurrency_max=100,
    total_concurrency=100,
    retry_times=2,
)
MOBILE: Final = PoolPreset(
    name="mobile",
    description="Mobile: bandwidth-priced, so fewer retries matter more",
    latency_p50_ms=(200, 500),
    domain_concurrency_start=16,
    domain_concurrency_max=50,
    total_concurrency=50,
    retry_times=1,
)
STATIC: Final = PoolPreset(
    name="static",
    description="Static datacenter: fixed IP, the target may rate-limit it",
    latency_p50_ms=(60, 120),
    domain_concurrency_start=20,
    domain_concurrency_max=50,
    total_concurrency=50,
    retry_times=2,
)

PRESETS: Final = MappingProxyType(
    {preset.name: preset for preset in (DATACENTER, RESIDENTIAL, MOBILE, STATIC)}
)
"""Every preset by the name ``JUSTPROXIES_POOL`` takes."""
