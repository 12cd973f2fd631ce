"""An extension for crawl tests (loaded in the crawl's child process): for
each 429 the downloader got, whether its slot was held once the downloader
was done with it.

``Downloader._download`` sends ``response_downloaded``, then frees the
request's place and runs the slot's queue, then sends
``request_left_downloader`` (on every Scrapy version). A 429 is held if,
by then, the slot has one more held place (:class:`slots._Place`) than when it was
downloaded, or is closed (concurrency 0, a long Retry-After). Counted in
the stats per slot: ``probe/429s/<slot>`` and ``probe/429s_held/<slot>``.
Extensions connect to signals before the downloader middlewares do, so this
one sees each answer before the plugin does."""

from __future__ import annotations

from typing import Any

from scrapy import signals
from scrapy.crawler import Crawler

from scrapy_justproxies.slots import _Place

PATH = "tests.place_probe.PlaceProbe"


def held_places(slot: Any) -> int:
    return sum(1 for item in slot.transferring if isinstance(item, _Place))


class PlaceProbe:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.refused: dict[int, int] = {}  # id(request) -> held places then

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> PlaceProbe:
        probe = cls(crawler)
        crawler.signals.connect(probe.downloaded, signals.response_downloaded)
        crawler.signals.connect(probe.left, signals.request_left_downloader)
        return probe

    def _slot(self, request: Any) -> tuple[str, Any]:
        engine = self.crawler.engine
        assert engine is not None
        key = request.meta.get("download_slot", "")
        return key, engine.downloader.slots.get(key)

    def downloaded(self, response: Any, request: Any, **kwargs: Any) -> None:
        _, slot = self._slot(request)
        if response.status == 429 and slot is not None:
            self.refused[id(request)] = held_places(slot)

    def left(self, request: Any, **kwargs: Any) -> None:
        before = self.refused.pop(id(request), None)
        if before is None:
            return
        key, slot = self._slot(request)
        stats = self.crawler.stats
        assert stats is not None
        stats.inc_value(f"probe/429s/{key}")
        if slot is not None and (slot.concurrency == 0 or held_places(slot) > before):
            stats.inc_value(f"probe/429s_held/{key}")
