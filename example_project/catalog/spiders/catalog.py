"""Crawl a product catalog: listing pages, then every item page."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import scrapy
from scrapy.http import Response


class CatalogSpider(scrapy.Spider):
    name = "catalog"

    def __init__(
        self,
        start_url: str | None = None,
        pages: str | None = None,
        part: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # -a start_url=https://…/catalog/1 follows the "next" links one page
        # at a time; -a start_url='https://…/catalog/{page}' -a pages=40 asks
        # for the 40 listing pages at once, which gives the crawl enough
        # parallel work to use the concurrency a pool offers.
        if not start_url:
            raise ValueError("pass the catalog to crawl: -a start_url=https://…")
        self.follow_next = pages is None
        count = int(pages or 1)
        # -a part=2/3: this process crawls every third listing page from
        # the second (several `scrapy crawl` processes on one catalog, their
        # budget shared through JUSTPROXIES_SHARED_STATE; `make demo-cluster`).
        index, of = (int(x) for x in (part or "1/1").split("/"))
        if not 1 <= index <= of:
            raise ValueError(f"part must be i/n with 1 <= i <= n, not {part!r}")
        self.start_urls = [
            start_url.replace("{page}", str(n))
            for n in range(1, count + 1)
            if (n - 1) % of == index - 1
        ]

    def parse(self, response: Response) -> Iterator[scrapy.Request]:
        for href in response.css(
            "a.item::attr(href), a[href*='/item/']::attr(href), h3 a::attr(href)"
        ).getall():
            yield response.follow(href, callback=self.parse_item)
        next_page = response.css("a[rel=next]::attr(href), li.next a::attr(href)")
        if next_page and self.follow_next:
            yield response.follow(next_page[0].get(), callback=self.parse)

    def parse_item(self, response: Response) -> Iterator[dict[str, Any]]:
        yield {
            "url": response.url,
            "title": response.css("h1::text").get(default="").strip(),
            "price": response.css(".price::text, .price_color::text").get(),
        }
