"""Real crawls: real Scrapy, through the sandbox's authenticating gateway, to
its rate-limiting site, under both reactors (and, via `make test`, on the
oldest and the newest supported Scrapy)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import scrapy

from scrapy_justproxies.presets import PRESETS
from scrapy_justproxies.sandbox.crawl import CrawlResult, run_crawl
from tests import pool_probe

pytestmark = pytest.mark.crawl

ADDON = {"ADDONS": {"scrapy_justproxies.Addon": 100}}
SCRAPY_214 = tuple(int(p) for p in scrapy.__version__.split(".")[:2]) >= (2, 14)
# The crawl's child imports tests.pool_probe from the repository's root.
ROOT = str(Path(__file__).resolve().parent.parent)


def configure(sandbox: Any, sites: dict[str, Any], **gateway: Any) -> None:
    sandbox.client.configure(
        {
            "gateway": {"users": {sandbox.user: sandbox.password}, **gateway},
            "sites": sites,
        }
    )
    sandbox.client.reset()


def urls(
    sandbox: Any, host: str, count: int, *, https: bool = False, path: str = "item"
) -> list[dict[str, Any]]:
    scheme, port = (
        ("https", sandbox.site_https_port)
        if https
        else ("http", sandbox.site_http_port)
    )
    return [
        {"url": f"{scheme}://{host}:{port}/{path}/{i}"} for i in range(1, count + 1)
    ]


def site(sandbox: Any, host: str) -> dict[str, Any]:
    stats: dict[str, Any] = sandbox.client.stats()["sites"].get(host, {})
    return stats


def assert_no_secret(result: CrawlResult, sandbox: Any) -> None:
    written = result.everything_written()
    assert sandbox.password not in written
    token = base64.b64encode(f"{sandbox.user}:{sandbox.password}".encode()).decode()
    assert token not in written


def test_200_urls_http_and_https_all_through_the_gateway(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path
) -> None:
    configure(sandbox, {"a.test": {"latency_p50_ms": 20, "latency_p95_ms": 40}})
    requests = urls(sandbox, "a.test", 100) + urls(sandbox, "a.test", 100, https=True)
    result = run_crawl(
        tmp_path,
        reactor=reactor,
        requests=requests,
        settings={**ADDON, "LOG_LEVEL": "DEBUG"},
        env={**gateway_env, "JUSTPROXIES_POOL": "mobile"},
    )
    assert result.reason == "finished", result.output[-3000:]
    assert result.statuses == {200: 200}
    counters = site(sandbox, "a.test")
    assert counters["admitted"] == 200
    assert counters["proxy_authorization_seen"] == 0
    assert counters["direct"] == 0
    gateway = sandbox.client.stats()["gateway"]
    assert gateway["auth_failures"] == 0
    assert result.stats["justproxies/requests/proxied"] == 200
    assert_no_secret(result, sandbox)
    # Keep-alive: at most one connection per place in flight for http and one
    # tunnel per place for https (slow start may take an open site to the
    # pool's maximum, 50), far fewer than one per request (200).
    peak = result.stats["justproxies/limit_peak/a.test"]
    assert gateway["connections_accepted"] <= 2 * peak < len(requests)


def test_per_domain_cap_holds(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path
) -> None:
    """CONCURRENT_REQUESTS = 100 with 8 per domain: the site never sees more
    than 8 at once (Scrapy 2.14+ alone lets ~all 100 through under asyncio)."""
    configure(sandbox, {"cap.test": {"latency_p50_ms": 150, "latency_p95_ms": 150}})
    result = run_crawl(
        tmp_path,
        reactor=reactor,
        requests=urls(sandbox, "cap.test", 120),
        settings={
            **ADDON,
            "CONCURRENT_REQUESTS": 100,
            "CONCURRENT_REQUESTS_PER_DOMAIN": 8,
            "JUSTPROXIES_THROTTLE_ENABLED": False,  # a fixed cap to count against
        },
        env=gateway_env,
    )
    assert result.statuses == {200: 120}, result.output[-3000:]
    counters = site(sandbox, "cap.test")
    assert counters["max_inflight"] <= 8
    assert counters["max_inflight"] >= 6  # and the cap was actually used
    # The one site's download slot is the one the plugin guarded.
    assert result.stats["justproxies/slots/guarded"] == 1


def test_scrapy_alone_overruns_the_cap_so_the_count_can_fail(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path
) -> None:
    """The same crawl without the plugin (proxy set by hand): shows the
    measurement above catches an overrun where Scrapy has one."""
    configure(sandbox, {"cap.test": {"latency_p50_ms": 150, "latency_p95_ms": 150}})
    gateway = f"http://{sandbox.user}:{sandbox.password}@{sandbox.gateway}"
    requests = [
        {**r, "meta": {"proxy": gateway}} for r in urls(sandbox, "cap.test", 120)
    ]
    result = run_crawl(
        tmp_path,
        reactor=reactor,
        requests=requests,
        settings={"CONCURRENT_REQUESTS": 100, "CONCURRENT_REQUESTS_PER_DOMAIN": 8},
    )
    assert result.statuses == {200: 120}, result.output[-3000:]
    peak = site(sandbox, "cap.test")["max_inflight"]
    if reactor == "asyncio" and SCRAPY_214:
        assert peak > 8, "Scrapy held the cap by itself: re-measure slots.py's need"
    else:
        assert peak <= 8


@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
def test_wrong_password_stops_with_one_clear_error(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path, https: bool
) -> None:
    configure(sandbox, {"a.test": {}})
    result = run_crawl(
        tmp_path,
        reactor=reactor,
        requests=urls(sandbox, "a.test", 200, https=https),
        settings=ADDON,
        env={
            **gateway_env,
            "JUSTPROXIES_PASSWORD": "not-the-password",
            "JUSTPROXIES_POOL": "mobile",
        },
    )
    assert result.reason == "justproxies_credentials_rejected", result.output[-3000:]
    errors = [
        line
        for line in result.log.splitlines()
        if "Credentials rejected by the gateway" in line
    ]
    assert len(errors) == 1
    assert "ERROR" in errors[0]
    counters = site(sandbox, "a.test")
    assert counters.get("admitted", 0) == 0
    assert counters.get("direct", 0) == 0
    failures = sandbox.client.stats()["gateway"]["auth_failures"]
    assert 1 <= failures <= 20  # a few in flight, no retry storm
    # Each 407 judged the gateway's is counted (those already in flight when
    # the first stopped the crawl too), none more than the gateway refused.
    assert 1 <= result.stats["justproxies/gateway/auth_rejected"] <= failures
    assert "not-the-password" not in result.everything_written()


@pytest.mark.parametrize(
    ("env_change", "needle"),
    [
        ({"JUSTPROXIES_PASSWORD": None}, "JUSTPROXIES_PASSWORD is not set"),
        ({"JUSTPROXIES_USER": None}, "JUSTPROXIES_USER is not set"),
        ({"JUSTPROXIES_GATEWAY": None}, "JUSTPROXIES_GATEWAY is not set"),
        (
            {"JUSTPROXIES_POOL": "mobil"},
            "JUSTPROXIES_POOL (from the environment) is 'mobil'",
        ),
        (
            {"JUSTPROXIES_GATEWAY": "ftp://127.0.0.1:1"},
            "JUSTPROXIES_GATEWAY (from the environment)",
        ),
    ],
    ids=["password", "user", "gateway", "pool", "gateway-scheme"],
)
def test_bad_input_fails_at_startup_before_any_request(
    sandbox: Any,
    gateway_env: dict[str, str],
    tmp_path: Path,
    env_change: dict[str, str | None],
    needle: str,
) -> None:
    configure(sandbox, {"a.test": {}})
    env = {**gateway_env, **env_change}
    result = run_crawl(
        tmp_path,
        reactor="asyncio",
        requests=urls(sandbox, "a.test", 5),
        settings=ADDON,
        env={k: v for k, v in env.items() if v is not None},
    )
    assert result.returncode != 0 or result.reason is None
    assert needle in result.output + result.log
    stats = sandbox.client.stats()
    assert stats["gateway"]["requests"] == 0
    assert stats["gateway"]["connects"] == 0
    assert site(sandbox, "a.test").get("admitted", 0) == 0
    assert sandbox.password not in result.everything_written()


def test_unreachable_gateway_stops_and_never_goes_direct(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path
) -> None:
    configure(sandbox, {})
    # The site itself is reachable directly on 127.0.0.1: a fallback would show.
    requests = [
        {"url": f"http://127.0.0.1:{sandbox.site_http_port}/item/{i}"}
        for i in range(60)
    ]
    result = run_crawl(
        tmp_path,
        reactor=reactor,
        requests=requests,
        settings={**ADDON, "RETRY_TIMES": 1},
        env={**gateway_env, "JUSTPROXIES_GATEWAY": "127.0.0.1:1"},
    )
    assert result.reason == "justproxies_gateway_unreachable", result.output[-3000:]
    assert (
        sum(s.get("direct", 0) for s in sandbox.client.stats()["sites"].values()) == 0
    )
    assert "could not be reached" in result.log


def test_direct_opt_out_and_own_proxy(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path
) -> None:
    configure(sandbox, {})
    base = f"http://127.0.0.1:{sandbox.site_http_port}"
    own = f"http://{sandbox.user}-session-own:{sandbox.password}@{sandbox.gateway}"
    requests = [
        {"url": f"{base}/echo?direct", "meta": {"justproxies_direct": True}},
        {"url": f"{base}/echo?own", "meta": {"proxy": own}},
        {"url": f"{base}/echo?proxied"},
    ]
    result = run_crawl(
        tmp_path, reactor=reactor, requests=requests, settings=ADDON, env=gateway_env
    )
    assert result.statuses == {200: 3}, result.output[-3000:]
    echoed = {
        url.rsplit("?", 1)[1]: json.loads(o["body"])
        for url, o in result.outcomes.items()
    }
    assert echoed["direct"]["via_gateway"] is False
    assert echoed["own"]["via_gateway"] is True
    assert echoed["proxied"]["via_gateway"] is True
    assert result.stats["justproxies/requests/direct"] == 1
    assert result.stats["justproxies/requests/own_proxy"] == 1
    assert result.stats["justproxies/requests/proxied"] == 1
    assert_no_secret(result, sandbox)


def test_sticky_sessions_and_rotation(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path
) -> None:
    configure(sandbox, {})
    # Over https the exit is chosen per CONNECT tunnel (and Scrapy reuses
    # tunnels), so rotation is checked on http, where it is per request.
    sticky = [
        {
            "url": f"{scheme}://a.test:{port}/echo?s{scheme}{i}",
            "meta": {"justproxies_session": "cart1"},
        }
        for scheme, port in (
            ("http", sandbox.site_http_port),
            ("https", sandbox.site_https_port),
        )
        for i in range(4)
    ]
    rotating = [
        {"url": f"http://a.test:{sandbox.site_http_port}/echo?r{i}"} for i in range(8)
    ]
    country = [
        {
            "url": f"http://a.test:{sandbox.site_http_port}/echo?c{i}",
            "meta": {"justproxies_country": "DE"},
        }
        for i in range(3)
    ]
    result = run_crawl(
        tmp_path,
        reactor=reactor,
        requests=sticky + rotating + country,
        settings=ADDON,
        env=gateway_env,
    )
    assert result.statuses == {200: 19}, result.output[-3000:]
    gateway = sandbox.client.stats()["gateway"]
    assert gateway["countries"] == {"DE": 3}
    assert "cart1" in gateway["sessions"]
    ips = {
        url.rsplit("?", 1)[1]: json.loads(o["body"])["peer_ip"]
        for url, o in result.outcomes.items()
    }
    assert len({ip for key, ip in ips.items() if key.startswith("s")}) == 1
    assert len({ip for key, ip in ips.items() if key.startswith("r")}) > 1


def test_no_credentials_in_jobdir_disk_queues(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    """Retries copy the Proxy-Authorization header HttpProxyMiddleware set;
    the scheduler pickles them to JOBDIR. An early stop leaves them there."""
    configure(
        sandbox, {"a.test": {"latency_p50_ms": 50, "latency_p95_ms": 80}}, fail_503=0.5
    )
    jobdir = tmp_path / "job"
    result = run_crawl(
        tmp_path,
        reactor="asyncio",
        requests=urls(sandbox, "a.test", 300),
        settings={
            **ADDON,
            "JOBDIR": str(jobdir),
            "CLOSESPIDER_PAGECOUNT": 40,
            "RETRY_TIMES": 5,
            "CONCURRENT_REQUESTS_PER_DOMAIN": 4,
        },
        env=gateway_env,
    )
    assert result.stats.get("retry/count", 0) > 0, result.output[-3000:]
    stored = b"".join(p.read_bytes() for p in jobdir.rglob("*") if p.is_file())
    assert b"a.test" in stored  # the queues really hold requests
    token = base64.b64encode(f"{sandbox.user}:{sandbox.password}".encode())
    assert token not in stored
    assert sandbox.password.encode() not in stored


def test_http_cache_never_stores_the_credentials(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    configure(sandbox, {})
    cache = tmp_path / "cache"
    result = run_crawl(
        tmp_path,
        reactor="asyncio",
        requests=urls(sandbox, "a.test", 5) + urls(sandbox, "a.test", 5, https=True),
        settings={**ADDON, "HTTPCACHE_ENABLED": True, "HTTPCACHE_DIR": str(cache)},
        env=gateway_env,
    )
    assert result.statuses == {200: 10}, result.output[-3000:]
    stored = b"".join(p.read_bytes() for p in cache.rglob("*") if p.is_file())
    assert b"a.test" in stored
    token = base64.b64encode(f"{sandbox.user}:{sandbox.password}".encode())
    assert token not in stored
    assert b"Proxy-Authorization" not in stored


def test_http_cache_without_the_scrubber_is_refused(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    configure(sandbox, {})
    result = run_crawl(
        tmp_path,
        reactor="asyncio",
        requests=urls(sandbox, "a.test", 2),
        settings={
            "DOWNLOADER_MIDDLEWARES": {"scrapy_justproxies.JustProxiesMiddleware": 745},
            "HTTPCACHE_ENABLED": True,
            "HTTPCACHE_DIR": str(tmp_path / "cache"),
        },
        env=gateway_env,
    )
    assert result.reason is None
    output = result.output + result.log
    assert "JustProxiesScrubMiddleware is not enabled" in output
    assert "Add it at 950" in output


def test_other_schemes_never_go_direct_and_copied_meta_is_safe(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    configure(sandbox, {})
    gateway_url = f"http://{sandbox.gateway}"
    copied = {"proxy": gateway_url, "_justproxies_gateway": gateway_url}
    base = f"http://127.0.0.1:{sandbox.site_http_port}"
    requests = [
        {"url": f"ftp://127.0.0.1:{sandbox.site_http_port}/file"},
        # A spider that copies response.meta, then asks for direct.
        *[
            {"url": f"{base}/echo?d{i}", "meta": {**copied, "justproxies_direct": True}}
            for i in range(3)
        ],
        *urls(sandbox, "a.test", 5),
    ]
    result = run_crawl(
        tmp_path, reactor="asyncio", requests=requests, settings=ADDON, env=gateway_env
    )
    assert result.reason == "finished", result.output[-3000:]
    assert result.stats["justproxies/requests/refused_scheme"] == 1
    assert result.statuses == {200: 8, None: 1}
    assert sandbox.client.stats()["gateway"]["auth_failures"] == 0


@pytest.mark.parametrize("pool", sorted(PRESETS))
def test_each_pool_is_in_force_in_a_crawl_with_a_connection_pool_of_its_total(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path, pool: str
) -> None:
    """README, *Pool presets*: each pool sets RETRY_TIMES,
    CONCURRENT_REQUESTS_PER_IP = 0 and DNSCACHE_ENABLED, and the plugin
    resizes the HTTP/1.1 handlers' connection pools (Scrapy sizes them once,
    from CONCURRENT_REQUESTS_PER_DOMAIN, the preset's start) to
    CONCURRENT_REQUESTS. Read from the running crawl's own objects."""
    configure(sandbox, {"a.test": {}})
    preset = PRESETS[pool]
    result = run_crawl(
        tmp_path,
        reactor="asyncio",
        requests=urls(sandbox, "a.test", 2) + urls(sandbox, "a.test", 2, https=True),
        settings={**ADDON, "EXTENSIONS": {pool_probe.PATH: 0}},
        env={**gateway_env, "JUSTPROXIES_POOL": pool, "PYTHONPATH": ROOT},
    )
    assert result.statuses == {200: 4}, result.output[-3000:]
    stats = result.stats
    for scheme in ("http", "https"):
        assert (
            stats[f"probe/max_persistent_per_host/{scheme}"]
            == preset.total_concurrency
            > preset.domain_concurrency_start  # Scrapy's own size
        )
    expected = {
        "CONCURRENT_REQUESTS": preset.total_concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": preset.domain_concurrency_start,
        "CONCURRENT_REQUESTS_PER_IP": 0,
        "DNSCACHE_ENABLED": True,
        "DOWNLOAD_DELAY": 0,
        "DOWNLOAD_TIMEOUT": preset.download_timeout,
        "RETRY_TIMES": preset.retry_times,
    }
    assert {name: stats[f"probe/setting/{name}"] for name in expected} == expected
