"""The gateway health judge (pure), then real crawls: a gateway that accepts
and never answers, one that drops every connection, and a slow site behind
a healthy gateway, which must not stop anything."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scrapy_justproxies.health import (
    DROPPED_IN_A_ROW,
    REFUSED_IN_A_ROW,
    Failure,
    GatewayHealth,
    Verdict,
)
from scrapy_justproxies.sandbox.crawl import run_crawl
from tests.test_crawl import ADDON, configure, site, urls

# -- the judge -------------------------------------------------------------------


def test_timeouts_across_several_sites_with_no_answer_mean_unresponsive() -> None:
    health = GatewayHealth()
    verdicts = [
        health.failed(Failure.TIMEOUT, f"s{i % 3}.test", float(i)) for i in range(6)
    ]
    assert verdicts == [None] * 5 + [Verdict.UNRESPONSIVE]
    assert health.describe(10.0) == "6 timeouts across 3+ sites in 10.0 s"


def test_one_slow_site_never_stops_the_crawl() -> None:
    health = GatewayHealth()
    assert all(
        health.failed(Failure.TIMEOUT, "slow.test", float(i)) is None
        for i in range(1000)
    )


def test_any_answer_starts_the_count_again() -> None:
    health = GatewayHealth()
    for i in range(1000):
        if i % 5 == 4:
            health.answered()
        assert health.failed(Failure.TIMEOUT, f"s{i}.test", float(i)) is None


def test_dropped_connections_are_the_gateways_whatever_the_site() -> None:
    health = GatewayHealth()
    verdicts = [
        health.failed(Failure.DROPPED, "one.test", 0.0) for _ in range(DROPPED_IN_A_ROW)
    ]
    assert verdicts[-1] is Verdict.UNRESPONSIVE
    assert set(verdicts[:-1]) == {None}


def test_drops_inside_https_tunnels_count_by_breadth_like_timeouts() -> None:
    """Inside a CONNECT tunnel the gateway only relays bytes: a site that
    closes every connection is not the gateway's doing."""
    health = GatewayHealth()
    assert all(
        health.failed(Failure.DROPPED, "drops.test", float(i), tunneled=True) is None
        for i in range(1000)
    )
    assert health.describe(999.0) == (
        "1000 connections dropped in https tunnels across 1+ sites in 999.0 s"
    )
    spread = GatewayHealth()
    verdicts = [
        spread.failed(Failure.DROPPED, f"s{i % 3}.test", 0.0, tunneled=True)
        for i in range(6)
    ]
    assert verdicts == [None] * 5 + [Verdict.UNRESPONSIVE]


def test_refused_connections_mean_unreachable() -> None:
    health = GatewayHealth()
    verdicts = [
        health.failed(Failure.REFUSED, "a.test", 0.0) for _ in range(REFUSED_IN_A_ROW)
    ]
    assert verdicts[-1] is Verdict.UNREACHABLE


def test_other_failures_say_nothing() -> None:
    health = GatewayHealth()
    for i in range(100):
        assert health.failed(Failure.OTHER, f"s{i}.test", 0.0) is None
    assert health.since is None


# -- real crawls -------------------------------------------------------------------


@pytest.fixture
def silent_gateway() -> Iterator[str]:
    """A listener that accepts connections and never writes a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(256)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


def several_sites(sandbox: Any, https: bool = False) -> list[dict[str, Any]]:
    return [r for i in range(6) for r in urls(sandbox, f"s{i}.test", 10, https=https)]


@pytest.mark.crawl
@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
def test_a_gateway_that_never_answers_stops_the_crawl(
    sandbox: Any,
    gateway_env: dict[str, str],
    silent_gateway: str,
    reactor: str,
    tmp_path: Path,
    https: bool,
) -> None:
    configure(sandbox, {})
    result = run_crawl(
        tmp_path,
        reactor=reactor,
        requests=several_sites(sandbox, https),
        settings={**ADDON, "DOWNLOAD_TIMEOUT": 2, "LOG_LEVEL": "INFO"},
        env={**gateway_env, "JUSTPROXIES_GATEWAY": silent_gateway},
    )
    assert result.reason == "justproxies_gateway_unresponsive", result.output[-3000:]
    errors = [line for line in result.log.splitlines() if "does not answer" in line]
    assert len(errors) == 1 and "ERROR" in errors[0]
    assert silent_gateway in errors[0] and "timeouts" in errors[0]
    assert result.stats["justproxies/gateway/timeouts"] >= 6
    assert (
        sum(s.get("direct", 0) for s in sandbox.client.stats()["sites"].values()) == 0
    )
    assert sandbox.password not in result.everything_written()


@pytest.mark.crawl
def test_a_gateway_that_drops_every_connection_stops_the_crawl(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path
) -> None:
    configure(sandbox, {}, drop=1.0)
    result = run_crawl(
        tmp_path,
        reactor=reactor,
        requests=several_sites(sandbox)[:30],
        settings={**ADDON, "LOG_LEVEL": "INFO"},
        env=gateway_env,
    )
    assert result.reason == "justproxies_gateway_unresponsive", result.output[-3000:]
    assert "dropped connections" in result.log
    seen = result.stats["downloader/exception_count"]
    assert result.stats["justproxies/gateway/connection_errors"] == seen


@pytest.fixture
def closing_site() -> Iterator[int]:
    """A TCP listener that accepts every connection and closes it without a
    byte: a site that drops bots, reached through the gateway's tunnel."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(256)
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                server.accept()[0].close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


@pytest.mark.crawl
def test_an_https_site_that_drops_every_connection_stops_nothing(
    sandbox: Any,
    gateway_env: dict[str, str],
    closing_site: int,
    reactor: str,
    tmp_path: Path,
) -> None:
    """30 https URLs of a site that closes every connection (3 attempts
    each: 90 drops in a row, most with no answer in between) and 20 of a
    healthy one: before, the tenth drop stopped the crawl as
    ``justproxies_gateway_unresponsive``, blaming a healthy gateway."""
    configure(sandbox, {})
    drops = [{"url": f"https://127.0.0.1:{closing_site}/p{i}"} for i in range(30)]
    result = run_crawl(
        tmp_path,
        reactor=reactor,
        requests=drops + urls(sandbox, "fine.test", 20),
        settings={**ADDON, "LOG_LEVEL": "INFO", "RETRY_TIMES": 2},
        env=gateway_env,
    )
    assert result.reason == "finished", result.output[-3000:]
    # (None: failed downloads, each after RETRY_TIMES)
    assert result.statuses == {200: 20, None: 30}
    assert result.stats["justproxies/gateway/connection_errors"] >= 30
    assert "does not answer" not in result.log


@pytest.mark.crawl
def test_some_dropped_connections_are_counted_and_retried(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    """Every drop that reaches Scrapy is counted as the gateway's (Twisted's
    connection pool silently resends a request once when a reused keep-alive
    connection drops, so fewer reach Scrapy than the gateway injects)."""
    configure(sandbox, {}, drop=0.3)
    result = run_crawl(
        tmp_path,
        reactor="asyncio",
        requests=several_sites(sandbox),
        settings={**ADDON, "LOG_LEVEL": "INFO", "RETRY_TIMES": 10},
        env=gateway_env,
    )
    assert result.reason == "finished", result.output[-3000:]
    assert result.statuses == {200: 60}
    seen = result.stats.get("downloader/exception_count", 0)
    assert seen > 0
    assert result.stats["justproxies/gateway/connection_errors"] == seen
    assert seen <= sandbox.client.stats()["gateway"]["injected"]["drop"]


@pytest.mark.crawl
def test_a_slow_site_behind_a_healthy_gateway_stops_nothing(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path
) -> None:
    """slow.test answers after 3 s, DOWNLOAD_TIMEOUT is 1 s: its URLs time
    out (RETRY_TIMES as usual), the other site's all finish, and the crawl
    ends as "finished", however many timeouts in a row slow.test has at the
    end, when it is the only site left."""
    configure(
        sandbox,
        {"slow.test": {"latency_p50_ms": 3000}, "fast.test": {"latency_p50_ms": 20}},
    )
    result = run_crawl(
        tmp_path,
        reactor=reactor,
        requests=urls(sandbox, "slow.test", 16) + urls(sandbox, "fast.test", 40),
        settings={
            **ADDON,
            "DOWNLOAD_TIMEOUT": 1,
            "RETRY_TIMES": 1,
            "LOG_LEVEL": "INFO",
        },
        env=gateway_env,
    )
    assert result.reason == "finished", result.output[-3000:]
    assert result.statuses == {200: 40, None: 16}
    assert result.stats["justproxies/gateway/timeouts"] >= 16
    assert site(sandbox, "fast.test")["admitted"] == 40
