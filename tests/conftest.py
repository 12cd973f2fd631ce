"""Shared fixtures: the sandbox in its own process, and real crawls.

Crawls run in a subprocess (scrapy_justproxies.sandbox.crawl) so each gets a fresh
reactor of its own kind and the Scrapy of the interpreter running pytest:
`make test` runs the suite once on the newest and once on the oldest
supported Scrapy, and every crawl test under both reactors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from scrapy_justproxies.sandbox import crawl as crawl_module
from scrapy_justproxies.sandbox import run_sandbox_process
from scrapy_justproxies.sandbox.crawl import REACTORS
from scrapy_justproxies.sandbox.redis_server import (
    RedisServer,
    run_redis,
    server_binary,
)

SIGNAL_HANDLER_ERROR = "Error caught on signal handler"


@pytest.fixture(autouse=True)
def _no_signal_handler_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The throttle and the 429 holds run in ``response_downloaded``
    handlers, and Scrapy logs and swallows what a signal handler raises: a
    bug there would leave every crawl finished. So every crawl a test runs
    fails it if one did."""
    collect = crawl_module._collect

    def checked(*args: Any, **kwargs: Any) -> crawl_module.CrawlResult:
        result = collect(*args, **kwargs)
        for text in (result.log, result.output):
            at = text.find(SIGNAL_HANDLER_ERROR)
            assert at < 0, text[at : at + 3000]
        return result

    monkeypatch.setattr(crawl_module, "_collect", checked)


@pytest.fixture(params=REACTORS)
def reactor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """Debian's redis-server on loopback, with a password, for one test."""
    if server_binary() is None:
        pytest.skip("Debian's redis-server is not installed")
    with run_redis() as server:
        yield server


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Any]:
    """One sandbox process for the session; tests reconfigure and reset it."""
    with run_sandbox_process(None) as running:
        yield running


@pytest.fixture
def gateway_env(sandbox: Any) -> dict[str, str]:
    return {
        "JUSTPROXIES_GATEWAY": sandbox.gateway,
        "JUSTPROXIES_USER": sandbox.user,
        "JUSTPROXIES_PASSWORD": sandbox.password,
    }


# The Squid fixtures (tests/squid.py), for the interop tests.
from tests.squid import squid_proxy, squid_proxy_factory  # noqa: E402, F401
