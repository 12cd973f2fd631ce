"""Write the crawl's final stats to a JSON file, for the demo's summary."""

from __future__ import annotations

import json
import os
from typing import Any

from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured


class StatsFile:
    def __init__(self, crawler: Crawler, path: str) -> None:
        self.crawler = crawler
        self.path = path

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> StatsFile:
        path = os.environ.get("CATALOG_STATS_FILE")
        if not path:
            raise NotConfigured
        extension = cls(crawler, path)
        crawler.signals.connect(extension.spider_closed, signals.spider_closed)
        return extension

    def spider_closed(self, spider: Any, reason: str) -> None:
        assert self.crawler.stats is not None
        stats = self.crawler.stats.get_stats()
        stats["finish_reason"] = reason
        with open(self.path, "w", encoding="utf-8") as out:
            json.dump(stats, out, default=str, indent=1, sort_keys=True)
