"""Bytes and money through the gateway: the byte count rebuilt from what
Scrapy hands over, checked against proxies that count the wire themselves
(the sandbox gateway's counters, Squid's access log)."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scrapy import Request
from scrapy.http import Response
from scrapy.settings import Settings
from scrapy.utils.test import get_crawler

from scrapy_justproxies.billing import (
    CONNECT_ANSWER,
    ByteMeter,
    TunnelCount,
    chunked_overhead,
    request_wire_size,
    response_wire_size,
    summary_line,
)
from scrapy_justproxies.config import JustProxiesConfigError, ObservabilityConfig
from scrapy_justproxies.sandbox.crawl import run_crawl
from scrapy_justproxies.throttle import IDLE_SECONDS, SWEEP_SECONDS
from tests.test_crawl import ADDON, assert_no_secret, configure
from tests.test_hostile_inputs import refused_at_startup
from tests.test_squid_interop import HOSTS, USER, squid_env

AUTH = "Basic dXNlcjpwYXNz"

# -- the pure part -------------------------------------------------------------


def test_http_request_through_a_forward_proxy() -> None:
    request = Request(
        "http://a.test:8080/x?y=1#frag",
        headers={"Proxy-Authorization": AUTH, "User-Agent": "ua"},
    )
    wire = (
        b"GET http://a.test:8080/x?y=1 HTTP/1.1\r\n"
        b"Proxy-Authorization: " + AUTH.encode() + b"\r\n"
        b"User-Agent: ua\r\n"
        b"Host: a.test:8080\r\n"
        b"\r\n"
    )
    assert request_wire_size(request) == (len(wire), False)


def test_post_body_and_its_content_length_are_counted() -> None:
    request = Request("http://a.test/form", method="POST", body=b"a=1&b=2")
    wire = (
        b"POST http://a.test/form HTTP/1.1\r\n"
        b"Host: a.test\r\n"
        b"Content-Length: 7\r\n"
        b"\r\n"
        b"a=1&b=2"
    )
    assert request_wire_size(request)[0] == len(wire)


def test_https_counts_connect_and_the_request_inside_the_tunnel() -> None:
    request = Request("https://a.test:8443/p?q", headers={"Proxy-Authorization": AUTH})
    connect = (
        b"CONNECT a.test:8443 HTTP/1.1\r\n"
        b"Host: a.test:8443\r\n"
        b"Proxy-Authorization: " + AUTH.encode() + b"\r\n"
        b"\r\n"
    )
    # Inside the tunnel: the path only, no credentials.
    inner = b"GET /p?q HTTP/1.1\r\nHost: a.test:8443\r\n\r\n"
    assert request_wire_size(request) == (
        len(connect) + CONNECT_ANSWER + len(inner),
        True,
    )


def test_a_reused_tunnel_sends_no_connect() -> None:
    request = Request("https://a.test/p", headers={"Proxy-Authorization": AUTH})
    inner = b"GET /p HTTP/1.1\r\nHost: a.test\r\n\r\n"
    assert request_wire_size(request, opens_tunnel=False) == (len(inner), True)


def test_a_new_tunnel_when_more_are_in_flight_than_ever() -> None:
    tunnels = TunnelCount()
    opened = [
        tunnels.opens_tunnel("a.test", in_flight)
        for in_flight in (1, 2, 2, 1, 3, 3, 2, 1)
    ]
    assert opened == [True, True, False, False, True, False, False, False]
    assert tunnels.opens_tunnel("b.test", 1)


def test_an_idle_domain_leaves_the_meter_and_its_bytes_stay_ranked() -> None:
    """Broad crawls: a domain idle for IDLE_SECONDS leaves the per-domain
    counts (and the tunnel count); the costliest stay in the ranking, and a
    domain that comes back resumes its count."""
    clock = [0.0]
    meter = ByteMeter(
        get_crawler(), ObservabilityConfig(stats_domains=2), clock=lambda: clock[0]
    )

    def answer(host: str, size: int = 10) -> None:
        request = Request(f"https://{host}/", meta={"download_slot": host})
        meter._sent(host, request, 1)
        meter.on_response(request, Response(request.url, body=b"x" * size), True)

    answer("big.test", 5000)
    for i in range(50):
        answer(f"s{i}.test")
    assert "s0.test" in meter.tunnels.most_in_flight
    clock[0] += IDLE_SECONDS + SWEEP_SECONDS
    answer("fresh.test")  # an answer runs the sweep
    assert list(meter.domains) == ["fresh.test"]
    assert list(meter.tunnels.most_in_flight) == ["fresh.test"]
    assert meter.top_domains()[0][0] == "big.test"
    before = dict(meter.top_domains())["big.test"].total
    answer("big.test")
    assert dict(meter.top_domains())["big.test"].total > before
    assert len(meter.domains) + len(meter._top) == 3  # of 52: fresh, big, one kept


def test_response_with_content_length() -> None:
    response = Response(
        "http://a.test/",
        status=429,
        headers={"Content-Length": "5", "Retry-After": "1"},
        body=b"slow!",
    )
    wire = (
        b"HTTP/1.1 429 Too Many Requests\r\n"
        b"Content-Length: 5\r\n"
        b"Retry-After: 1\r\n"
        b"\r\n"
        b"slow!"
    )
    assert response_wire_size(response) == len(wire)


def test_chunked_response_adds_its_framing() -> None:
    body = b"x" * 20000
    response = Response("http://a.test/", status=200, body=body)
    framing = b"2000\r\n" * 2 + b"\r\n" * 2 + b"e20\r\n\r\n" + b"0\r\n\r\n"
    assert chunked_overhead(20000) == len(framing)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert response_wire_size(response) == len(head) + len(framing) + len(body)


def test_summary_line() -> None:
    assert summary_line(1_840_000_000, 30_000_000, 8.0) == (
        "1.84 GB through the gateway ≈ 14.72 at 8.00/GB; 429s cost 0.03 GB ≈ 0.24"
    )
    assert summary_line(2_500_000, 0, None) == (
        "2.50 MB through the gateway; 429s cost 0.00 MB"
    )


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), ("8", 8.0), (0, 0.0), ("2.5", 2.5)]
)
def test_price_per_gb(value: Any, expected: float | None) -> None:
    settings = Settings({"JUSTPROXIES_PRICE_PER_GB": value})
    assert ObservabilityConfig.from_settings(settings, {}).price_per_gb == expected


def test_a_negative_zero_price_prints_as_zero() -> None:
    price = ObservabilityConfig.from_settings(
        Settings(), {"JUSTPROXIES_PRICE_PER_GB": "-0"}
    ).price_per_gb
    assert price is not None
    assert "-" not in summary_line(3 * 10**9, 10**9, price)


@pytest.mark.parametrize("value", ["-1", "eight", "inf", "nan", "1e300", "8,50"])
def test_bad_price_per_gb_is_a_config_error(value: str) -> None:
    with pytest.raises(JustProxiesConfigError, match="JUSTPROXIES_PRICE_PER_GB"):
        ObservabilityConfig.from_settings(
            Settings(), {"JUSTPROXIES_PRICE_PER_GB": value}
        )


# -- real crawls ---------------------------------------------------------------


def _within(ours: int, theirs: int, tolerance: float = 0.05) -> bool:
    return abs(ours - theirs) <= tolerance * theirs


@pytest.mark.crawl
def test_byte_count_agrees_with_the_gateways_own_counters(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path
) -> None:
    # A rate-limited site (429s), small pages, and streamed (chunked) bodies.
    configure(sandbox, {"a.test": {"rate": 40, "burst": 10}, "b.test": {}})
    port = sandbox.site_http_port
    requests = [{"url": f"http://a.test:{port}/item/{i}"} for i in range(1, 121)] + [
        {"url": f"http://b.test:{port}/bytes/{20000 + i}"} for i in range(30)
    ]
    result = run_crawl(
        tmp_path,
        reactor=reactor,
        requests=requests,
        settings={**ADDON, "LOG_LEVEL": "INFO"},
        env={
            **gateway_env,
            "JUSTPROXIES_POOL": "mobile",
            "JUSTPROXIES_PRICE_PER_GB": "8",
            "JUSTPROXIES_STATS_DOMAINS": "1",
        },
    )
    assert result.reason == "finished", result.output[-3000:]
    assert result.statuses == {200: 150}
    gateway = sandbox.client.stats()["gateway"]
    stats = result.stats
    sent, received = (
        stats["justproxies/bytes/sent"],
        stats["justproxies/bytes/received"],
    )
    print(f"sent: ours {sent}, gateway's {gateway['bytes_from_clients']}")
    print(f"received: ours {received}, gateway's {gateway['bytes_to_clients']}")
    assert _within(sent, gateway["bytes_from_clients"]), (sent, gateway)
    assert _within(received, gateway["bytes_to_clients"]), (received, gateway)
    # The 429s were counted, in both directions, and priced.
    assert stats["justproxies/rate_limited/a.test"] > 0
    assert 0 < stats["justproxies/bytes/rate_limited"] < sent + received
    assert stats["justproxies/cost"] == pytest.approx(
        (sent + received) / 1e9 * 8, abs=1e-4
    )
    assert stats["justproxies/cost/rate_limited"] >= 0
    # JUSTPROXIES_STATS_DOMAINS = 1: per-domain detail for the costliest only.
    assert [k for k in stats if re.fullmatch(r"justproxies/bytes/\w\.test", k)] == [
        "justproxies/bytes/b.test"
    ]
    assert re.search(
        r"JustProxies: \d+\.\d\d MB through the gateway ≈ 0\.\d\d at 8\.00/GB; "
        r"429s cost \d+\.\d\d MB ≈ 0\.\d\d",
        result.log,
    )
    assert_no_secret(result, sandbox)


@pytest.mark.crawl
def test_no_price_no_money(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    configure(sandbox, {"a.test": {}})
    port = sandbox.site_http_port
    result = run_crawl(
        tmp_path,
        reactor="asyncio",
        requests=[{"url": f"http://a.test:{port}/item/{i}"} for i in range(1, 6)],
        settings={**ADDON, "LOG_LEVEL": "INFO"},
        env=gateway_env,
    )
    assert result.reason == "finished", result.output[-3000:]
    assert result.stats["justproxies/bytes/received"] > 0
    assert not [k for k in result.stats if k.startswith("justproxies/cost")]
    assert "MB through the gateway; 429s cost" in result.log


@pytest.mark.crawl
def test_cached_answers_cost_nothing(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    configure(sandbox, {"a.test": {}})
    port = sandbox.site_http_port
    settings = {
        **ADDON,
        "LOG_LEVEL": "INFO",
        "HTTPCACHE_ENABLED": True,
        "HTTPCACHE_DIR": str(tmp_path / "cache"),
    }
    requests = [{"url": f"http://a.test:{port}/item/{i}"} for i in range(1, 6)]
    first = run_crawl(
        tmp_path / "1", reactor="asyncio", requests=requests, settings=settings,
        env=gateway_env,
    )  # fmt: skip
    assert first.reason == "finished", first.output[-3000:]
    assert first.stats["justproxies/bytes/received"] > 0
    again = run_crawl(
        tmp_path / "2", reactor="asyncio", requests=requests, settings=settings,
        env=gateway_env,
    )  # fmt: skip
    assert again.reason == "finished", again.output[-3000:]
    assert again.statuses == {200: 5}
    assert again.stats["httpcache/hit"] == 5
    assert "justproxies/bytes/received" not in again.stats


@pytest.mark.crawl
def test_bad_price_stops_the_crawl_before_any_request(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    output = refused_at_startup(
        sandbox, gateway_env, tmp_path, env={"JUSTPROXIES_PRICE_PER_GB": "8 EUR"}
    )
    assert "JUSTPROXIES_PRICE_PER_GB (from the environment) must be a number" in (
        output
    )


@pytest.fixture
def squid_counting(squid_proxy_factory: Any) -> Iterator[tuple[Any, Path]]:
    """A private Squid that also logs each request's size as received and
    its answer's size as sent (``%>st``, ``%<st``: headers and bodies)."""
    # Squid drops root for its own user: the log goes where that user can write.
    folder = Path(tempfile.mkdtemp(prefix="squid-bytes-"))
    folder.chmod(0o777)
    log = folder / "bytes.log"
    squid = squid_proxy_factory(
        user=USER,
        password="squid-pass",
        host_names=HOSTS,
        extra_config=[
            "logformat jpbytes %>st %<st %ru",
            f"access_log stdio:{log} jpbytes",
        ],
    )
    yield squid, log
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.squid
@pytest.mark.crawl
def test_byte_count_agrees_with_squids_access_log(
    sandbox: Any, squid_counting: tuple[Any, Path], reactor: str, tmp_path: Path
) -> None:
    squid, log = squid_counting
    configure(sandbox, {"a.test": {}, "b.test": {}})
    port = sandbox.site_http_port
    requests = [{"url": f"http://a.test:{port}/item/{i}"} for i in range(1, 41)] + [
        {"url": f"http://b.test:{port}/bytes/{10000 + i}"} for i in range(20)
    ]
    result = run_crawl(
        tmp_path,
        reactor=reactor,
        requests=requests,
        settings={**ADDON, "LOG_LEVEL": "INFO"},
        env=squid_env(squid, password="squid-pass"),
    )
    assert result.reason == "finished", result.output[-3000:]
    assert result.statuses == {200: 60}
    entries = [
        line.split() for line in log.read_text().splitlines() if f":{port}/" in line
    ]
    assert len(entries) == 60, entries[-3:]
    squid_in = sum(int(entry[0]) for entry in entries)
    squid_out = sum(int(entry[1]) for entry in entries)
    sent = result.stats["justproxies/bytes/sent"]
    received = result.stats["justproxies/bytes/received"]
    print(f"sent: ours {sent}, Squid's {squid_in}")
    print(f"received: ours {received}, Squid's {squid_out}")
    assert _within(sent, squid_in), (sent, squid_in)
    assert _within(received, squid_out), (received, squid_out)
