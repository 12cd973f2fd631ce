"""An extension for crawl tests (loaded in the crawl's child process): at the
first response it writes into the stats what the running crawl has in force,
read from Scrapy's own objects -- the HTTP/1.1 handlers' connection pools and
the crawler's settings -- so a test can compare them with the README."""

from __future__ import annotations

from typing import Any

from scrapy import signals
from scrapy.crawler import Crawler

PATH = "tests.pool_probe.PoolProbe"
SETTINGS = (
    "CONCURRENT_REQUESTS",
    "CONCURRENT_REQUESTS_PER_DOMAIN",
    "CONCURRENT_REQUESTS_PER_IP",
    "DNSCACHE_ENABLED",
    "DOWNLOAD_DELAY",
    "DOWNLOAD_TIMEOUT",
    "RETRY_TIMES",
)


class PoolProbe:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.done = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> PoolProbe:
        probe = cls(crawler)
        crawler.signals.connect(probe.seen, signals.response_received)
        return probe

    def seen(self, **kwargs: Any) -> None:
        if self.done:
            return
        self.done = True
        stats = self.crawler.stats
        engine = self.crawler.engine
        assert stats is not None and engine is not None
        handlers = getattr(engine.downloader.handlers, "_handlers", {})
        for scheme in ("http", "https"):
            pool = getattr(handlers.get(scheme), "_pool", None)
            size = getattr(pool, "maxPersistentPerHost", None)
            stats.set_value(f"probe/max_persistent_per_host/{scheme}", size)
        for name in SETTINGS:
            stats.set_value(f"probe/setting/{name}", self.crawler.settings.get(name))
