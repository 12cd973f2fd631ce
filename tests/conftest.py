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

from scrapy_justproxies.sandbox import run_sandbox_process
from scrapy_justproxies.sandbox.crawl import REACTORS
from scrapy_justproxies.sandbox.redis_server import (
    RedisServer,
    run_redis,
    server_binary,
)


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
