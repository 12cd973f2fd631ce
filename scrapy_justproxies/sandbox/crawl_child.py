"""Child process of :func:`scrapy_justproxies.sandbox.crawl.run_crawl`.

Usage: ``python crawl_child.py SPEC.json``. The spec names the settings, the
reactor, the URLs (with optional per-request meta) and where to write the
result: the final stats, what happened to each URL, and the close reason.
Scrapy deprecation warnings are errors here, as in the test suite.
"""

from __future__ import annotations

import json
import resource
import sys
import warnings
from collections.abc import AsyncIterator
from typing import Any

import scrapy
from scrapy import Request, Spider, signals
from scrapy.crawler import CrawlerProcess
from scrapy.exceptions import ScrapyDeprecationWarning
from twisted.python.failure import Failure

REACTORS = {
    "asyncio": "twisted.internet.asyncioreactor.AsyncioSelectorReactor",
    "epoll": "twisted.internet.epollreactor.EPollReactor",
}


class ListSpider(Spider):
    name = "list"

    def __init__(self, requests: list[dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.request_specs = requests
        self.outcomes: dict[str, Any] = {}

    async def start(self) -> AsyncIterator[Request]:
        for spec in self.request_specs:
            yield Request(
                spec["url"],
                meta=spec.get("meta", {}),
                priority=spec.get("priority", 0),
                callback=self.parse,
                errback=self.failed,
                dont_filter=True,
            )

    def parse(self, response: Any) -> None:
        self.outcomes[response.request.url] = {
            "status": response.status,
            "body": response.text[:2000],
            # Names only: what a callback could read (never the values).
            "request_header_names": sorted(
                name.decode("latin-1") for name in response.request.headers
            ),
        }

    def failed(self, failure: Failure) -> None:
        request = failure.request  # type: ignore[attr-defined]
        response = getattr(failure.value, "response", None)
        self.outcomes[request.url] = {
            "status": getattr(response, "status", None),
            "error": type(failure.value).__name__,
        }


def redis_spider_class() -> type[Spider]:
    """A scrapy-redis ``RedisSpider`` that takes its URLs from the Redis list
    ``list:start_urls`` and records outcomes as :class:`ListSpider` does."""
    from scrapy_redis.spiders import RedisSpider  # noqa: PLC0415 - optional

    # scrapy-redis 0.9.1 passes spider= to the stats collector, deprecated
    # since Scrapy 2.14: its warning, not ours, so not an error here.
    warnings.filterwarnings(
        "ignore", category=ScrapyDeprecationWarning, module=r"scrapy_redis(\.|$)"
    )

    class RedisListSpider(RedisSpider):  # type: ignore[misc]
        name = "list"
        redis_key = "list:start_urls"

        def __init__(self, requests: list[dict[str, Any]], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.outcomes: dict[str, Any] = {}

        async def start(self) -> AsyncIterator[Request]:
            # scrapy-redis 0.9.1 defines only the deprecated start_requests().
            for request in self.next_requests():
                yield request

        def make_request_from_data(self, data: bytes) -> Request:
            return Request(
                data.decode("utf-8"), callback=self.parse, errback=self.failed
            )

        parse = ListSpider.parse
        failed = ListSpider.failed

    return RedisListSpider


def main(spec_path: str) -> None:
    warnings.simplefilter("error", ScrapyDeprecationWarning)
    with open(spec_path, encoding="utf-8") as spec_file:
        spec = json.load(spec_file)
    settings = {
        "TWISTED_REACTOR": REACTORS[spec["reactor"]],
        "LOG_FILE": spec["log_file"],
        "TELNETCONSOLE_ENABLED": False,
        "ROBOTSTXT_OBEY": False,
        **spec["settings"],
    }
    process = CrawlerProcess(settings)
    spider_class: type[Spider] = ListSpider
    if spec.get("spider") == "redis":
        spider_class = redis_spider_class()
    elif spec.get("custom_settings"):
        # A spider with its own custom_settings (spider priority).
        spider_class = type(
            "ListSpider", (ListSpider,), {"custom_settings": spec["custom_settings"]}
        )
    crawler = process.create_crawler(spider_class)
    result: dict[str, Any] = {"reason": None, "stats": {}, "outcomes": {}}

    def closed(spider: Any, reason: str) -> None:
        assert crawler.stats is not None
        result["reason"] = reason
        result["stats"] = crawler.stats.get_stats()
        result["outcomes"] = spider.outcomes

    crawler.signals.connect(closed, signals.spider_closed)
    process.crawl(crawler, requests=spec["requests"])
    process.start()
    result["scrapy_version"] = scrapy.__version__
    result["max_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(spec["result_file"], "w", encoding="utf-8") as out:
        json.dump(result, out, default=str)


if __name__ == "__main__":
    main(sys.argv[1])
