"""A downloader middleware for the tests: after HttpProxyMiddleware (at
800), points requests whose URL has ``/other`` at the proxy in the
``OTHER_PROXY`` setting (a user's own middleware that overrides the route
too late)."""

from __future__ import annotations

from typing import Any

from scrapy import Request, Spider


class OtherProxyMiddleware:
    def __init__(self, proxy: str) -> None:
        self.proxy = proxy

    @classmethod
    def from_crawler(cls, crawler: Any) -> OtherProxyMiddleware:
        return cls(crawler.settings["OTHER_PROXY"])

    def process_request(self, request: Request, spider: Spider | None = None) -> None:
        if "/other" in request.url:
            request.meta["proxy"] = self.proxy
