"""Hostile inputs (issue 7): every bad input gets a clear refusal, the
password is never printed, nothing goes direct by accident.

Real crawls through the sandbox's authenticating gateway (and Squid), in a
subprocess each; a few run `scrapy crawl` itself in a scratch project.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from scrapy.settings import Settings

from scrapy_justproxies.config import Config, JustProxiesConfigError, ThrottleConfig
from scrapy_justproxies.sandbox.crawl import REACTORS, CrawlResult, run_crawl
from tests.test_crawl import ADDON, configure, site, urls
from tests.test_squid_interop import HOSTS, PASSWORD, USER, squid_env

pytestmark = pytest.mark.crawl

LIST_USER = "listuser"
LIST_PASSWORD = "li5t:pa%ss/w#rd"  # a colon, a percent sign, a slash and a hash


def leaked(result: CrawlResult, user: str, password: str) -> list[str]:
    """The forms of the password found anywhere the crawl wrote."""
    written = result.everything_written()
    forms = {
        password,
        base64.b64encode(f"{user}:{password}".encode()).decode(),
        quote(password, safe=""),
        quote(password),
    }
    return sorted(form for form in forms if form in written)


def nothing_sent(sandbox: Any, *hosts: str) -> None:
    stats = sandbox.client.stats()
    assert stats["gateway"]["requests"] == 0
    assert stats["gateway"]["connects"] == 0
    for host in hosts:
        assert site(sandbox, host).get("admitted", 0) == 0


def failed_at_startup(result: CrawlResult) -> bool:
    return result.returncode != 0 or result.reason is None


def refused_at_startup(
    sandbox: Any,
    gateway_env: dict[str, str],
    tmp_path: Path,
    *,
    settings: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Crawl with ``settings`` and ``env`` that must stop the crawl before
    any request; checks that nothing was sent, returns the output and log."""
    configure(sandbox, {"a.test": {}})
    result = run_crawl(
        tmp_path,
        reactor="asyncio",
        requests=urls(sandbox, "a.test", 3),
        settings={**ADDON, **(settings or {})},
        env={**gateway_env, **(env or {})},
    )
    assert failed_at_startup(result)
    nothing_sent(sandbox, "a.test")
    return result.output + result.log


# -- 1. list-format gateways, never echoed ------------------------------------


@pytest.mark.parametrize("shape", ["host:port:user:pass", "user:pass:host:port"])
def test_provider_list_format_is_split_and_never_printed(
    sandbox: Any, tmp_path: Path, shape: str
) -> None:
    configure(sandbox, {"a.test": {}}, users={LIST_USER: LIST_PASSWORD})
    gateway = (
        f"{sandbox.gateway}:{LIST_USER}:{LIST_PASSWORD}"
        if shape.startswith("host")
        else f"{LIST_USER}:{LIST_PASSWORD}:{sandbox.gateway}"
    )
    result = run_crawl(
        tmp_path,
        reactor="asyncio",
        requests=urls(sandbox, "a.test", 3) + urls(sandbox, "a.test", 3, https=True),
        settings=ADDON,
        env={"JUSTPROXIES_GATEWAY": gateway},
    )
    assert result.reason == "finished", result.output[-3000:]
    assert result.statuses == {200: 6}
    assert "credentials belong in JUSTPROXIES_USER" in result.log
    assert site(sandbox, "a.test")["proxy_authorization_seen"] == 0
    assert leaked(result, LIST_USER, LIST_PASSWORD) == []


def test_unusable_list_format_fails_at_startup_without_printing_it(
    sandbox: Any, tmp_path: Path
) -> None:
    configure(sandbox, {"a.test": {}}, users={LIST_USER: LIST_PASSWORD})
    host = sandbox.gateway.rsplit(":", 1)[0]
    result = run_crawl(
        tmp_path,
        reactor="asyncio",
        requests=urls(sandbox, "a.test", 3),
        settings=ADDON,
        env={"JUSTPROXIES_GATEWAY": f"{host}:99999:{LIST_USER}:{LIST_PASSWORD}"},
    )
    assert failed_at_startup(result)
    assert "JUSTPROXIES_GATEWAY (from the environment)" in result.output + result.log
    nothing_sent(sandbox, "a.test")
    assert leaked(result, LIST_USER, LIST_PASSWORD) == []


# -- 2. empty means unset -------------------------------------------------------


def test_empty_enabled_means_on(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path
) -> None:
    configure(sandbox, {})
    base = f"http://127.0.0.1:{sandbox.site_http_port}"
    result = run_crawl(
        tmp_path,
        reactor=reactor,
        requests=[{"url": f"{base}/echo?{i}"} for i in range(3)],
        settings=ADDON,
        env={**gateway_env, "JUSTPROXIES_ENABLED": ""},
    )
    assert result.statuses == {200: 3}, result.output[-3000:]
    assert all(json.loads(o["body"])["via_gateway"] for o in result.outcomes.values())
    assert result.stats["justproxies/requests/proxied"] == 3


def test_unclear_enabled_is_a_startup_error(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    output = refused_at_startup(
        sandbox, gateway_env, tmp_path, env={"JUSTPROXIES_ENABLED": "maybe"}
    )
    assert "JUSTPROXIES_ENABLED (from the environment) must be true or false" in (
        output
    )


# -- 3, 4, 10. per-request meta -------------------------------------------------


def test_bad_meta_is_refused_never_direct_and_only_sent_requests_count(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path
) -> None:
    configure(sandbox, {})
    base = f"http://127.0.0.1:{sandbox.site_http_port}"  # reachable direct too
    refused = {
        "direct-string-false": {"justproxies_direct": "false"},
        "direct-string-zero": {"justproxies_direct": "0"},
        "direct-one": {"justproxies_direct": 1},
        "country": {"justproxies_country": "usa"},
        "session": {"justproxies_session": "has space"},
        "session-bool": {"justproxies_session": True},  # no id: not session "True"
    }
    requests = [
        *[
            {"url": f"{base}/echo?{name}", "meta": meta}
            for name, meta in refused.items()
        ],
        {
            "url": f"{base}/echo?session-again",
            "meta": {"justproxies_session": "has space"},
        },
        {"url": f"ftp://127.0.0.1:{sandbox.site_http_port}/file"},
        {"url": f"{base}/echo?empty-proxy", "meta": {"proxy": ""}},
        # Empty means unset, from meta too (before, both were refused).
        {"url": f"{base}/echo?empty-country", "meta": {"justproxies_country": ""}},
        {"url": f"{base}/echo?blank-session", "meta": {"justproxies_session": " "}},
        {"url": f"{base}/echo?direct-false", "meta": {"justproxies_direct": False}},
        {"url": f"{base}/echo?plain"},
        # Asked for direct, with an empty proxy from os.getenv: direct.
        {
            "url": f"{base}/echo?direct",
            "meta": {"justproxies_direct": True, "proxy": ""},
        },
    ]
    result = run_crawl(
        tmp_path, reactor=reactor, requests=requests, settings=ADDON, env=gateway_env
    )
    assert result.reason == "finished", result.output[-3000:]
    assert result.statuses == {200: 6, None: 8}
    sent = {
        url.rsplit("?", 1)[1]: json.loads(o["body"])
        for url, o in result.outcomes.items()
        if o.get("status")
    }
    assert set(sent) == {
        "empty-proxy", "empty-country", "blank-session", "direct-false", "plain",
        "direct",
    }  # fmt: skip
    assert [k for k, echo in sent.items() if not echo["via_gateway"]] == ["direct"]
    # Only the one that asked for it reached the site directly.
    assert (
        sum(s.get("direct", 0) for s in sandbox.client.stats()["sites"].values()) == 1
    )
    assert result.stats["justproxies/requests/proxied"] == 5
    assert result.stats["justproxies/requests/refused_meta"] == 7
    assert result.stats["justproxies/requests/direct"] == 1
    assert result.stats.get("justproxies/requests/own_proxy", 0) == 0
    errors = [line for line in result.log.splitlines() if "not sent: meta[" in line]
    # One line per meta key, not per request.
    assert len(errors) == 3, errors
    assert any("meta['justproxies_direct'] is " in e for e in errors)
    assert any("meta['justproxies_country'] is 'usa'; use a two" in e for e in errors)
    assert any("meta['justproxies_session'] is 'has space'; use" in e for e in errors)


# -- 5. download handlers -------------------------------------------------------


def test_untested_download_handler_fails_at_startup(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    configure(sandbox, {"a.test": {}})
    aiohttp = "scrapy.core.downloader.handlers._aiohttp.AiohttpDownloadHandler"
    result = run_crawl(
        tmp_path,
        reactor="asyncio",
        requests=urls(sandbox, "a.test", 3) + urls(sandbox, "a.test", 3, https=True),
        settings={**ADDON, "DOWNLOAD_HANDLERS": {"http": aiohttp, "https": aiohttp}},
        env=gateway_env,
    )
    assert failed_at_startup(result)
    assert "DOWNLOAD_HANDLERS['http'] is" in result.output + result.log
    assert "HTTP11DownloadHandler" in result.output + result.log
    nothing_sent(sandbox, "a.test")
    assert leaked(result, sandbox.user, sandbox.password) == []


# -- 6. a site's own 407 --------------------------------------------------------


def test_a_sites_own_407_is_an_ordinary_response(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path
) -> None:
    configure(sandbox, {"a.test": {}, "b.test": {}})
    port = sandbox.site_http_port
    requests = [
        {"url": f"http://a.test:{port}/status/407"},
        {"url": f"https://a.test:{sandbox.site_https_port}/status/407"},
        *urls(sandbox, "a.test", 10),
        *urls(sandbox, "b.test", 10),
    ]
    result = run_crawl(
        tmp_path, reactor=reactor, requests=requests, settings=ADDON, env=gateway_env
    )
    assert result.reason == "finished", result.output[-3000:]
    assert result.statuses == {200: 20, 407: 2}
    assert result.stats["justproxies/responses/site_407"] == 1  # the http one
    assert "Credentials rejected" not in result.log


def test_unmarked_407s_from_two_sites_stop_the_crawl(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    configure(sandbox, {"a.test": {}, "b.test": {}})
    port = sandbox.site_http_port
    requests = [
        {"url": f"http://a.test:{port}/status/407"},
        {"url": f"http://b.test:{port}/status/407"},
    ]
    result = run_crawl(
        tmp_path,
        reactor="asyncio",
        requests=requests,
        settings={
            **ADDON,
            "CONCURRENT_REQUESTS": 2,
            "CONCURRENT_REQUESTS_PER_DOMAIN": 1,
        },
        env=gateway_env,
    )
    assert result.reason == "justproxies_credentials_rejected", result.output[-3000:]


@pytest.mark.squid
def test_a_sites_own_407_through_squid_is_an_ordinary_response(
    sandbox: Any, squid_proxy_factory: Any, tmp_path: Path
) -> None:
    squid = squid_proxy_factory(user=USER, password=PASSWORD, host_names=HOSTS)
    configure(sandbox, {"a.test": {}, "b.test": {}})
    port = sandbox.site_http_port
    result = run_crawl(
        tmp_path,
        reactor="asyncio",
        requests=[
            {"url": f"http://a.test:{port}/status/407"},
            *urls(sandbox, "b.test", 5),
        ],
        settings=ADDON,
        env=squid_env(squid),
    )
    assert result.reason == "finished", result.output[-3000:]
    assert result.statuses == {200: 5, 407: 1}


# -- 7. IPv6 gateways -----------------------------------------------------------

RESOLVER_SETTING = (
    "TWISTED_DNS_RESOLVER" if "TWISTED_DNS_RESOLVER" in Settings() else "DNS_RESOLVER"
)


@pytest.fixture
def ipv6_gateway(sandbox: Any) -> Iterator[int]:
    """A plain TCP relay listening on [::1], in front of the sandbox gateway
    (which listens on 127.0.0.1): the crawl talks to the gateway over IPv6."""
    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    host, port = sandbox.gateway.rsplit(":", 1)
    stop = threading.Event()
    opened: list[socket.socket] = []

    def pipe(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection((host, int(port)))
            opened.extend((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    yield int(listener.getsockname()[1])
    stop.set()
    server.join(2)
    listener.close()
    for connection in opened:
        connection.close()


def test_ipv6_gateway_with_scrapys_default_resolver_is_refused_at_startup(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    configure(sandbox, {"a.test": {}})
    port = sandbox.gateway.rsplit(":", 1)[1]
    result = run_crawl(
        tmp_path,
        reactor="asyncio",
        requests=urls(sandbox, "a.test", 3),
        settings=ADDON,
        env={**gateway_env, "JUSTPROXIES_GATEWAY": f"[::1]:{port}"},
    )
    assert failed_at_startup(result)
    assert "is an IPv6 address" in result.output + result.log
    assert RESOLVER_SETTING in result.output + result.log
    nothing_sent(sandbox, "a.test")


def test_ipv6_gateway_with_the_hostname_resolver_carries_http_and_https(
    sandbox: Any,
    gateway_env: dict[str, str],
    reactor: str,
    tmp_path: Path,
    ipv6_gateway: int,
) -> None:
    configure(sandbox, {"a.test": {}})
    result = run_crawl(
        tmp_path,
        reactor=reactor,
        requests=urls(sandbox, "a.test", 3) + urls(sandbox, "a.test", 3, https=True),
        settings={
            **ADDON,
            RESOLVER_SETTING: "scrapy.resolver.CachingHostnameResolver",
        },
        env={**gateway_env, "JUSTPROXIES_GATEWAY": f"[::1]:{ipv6_gateway}"},
    )
    assert result.reason == "finished", result.output[-3000:]
    assert result.statuses == {200: 6}
    assert "routing through gateway http://[::1]:" in result.log
    assert site(sandbox, "a.test")["admitted"] == 6
    assert leaked(result, sandbox.user, sandbox.password) == []


# -- 12. custom_settings and the preset -----------------------------------------


def test_spider_custom_settings_pool_and_total_follow_the_precedence(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path
) -> None:
    configure(sandbox, {"a.test": {}})
    result = run_crawl(
        tmp_path,
        reactor=reactor,
        requests=urls(sandbox, "a.test", 5),
        settings=ADDON,
        custom_settings={"JUSTPROXIES_POOL": "datacenter", "CONCURRENT_REQUESTS": 33},
        env={**gateway_env, "JUSTPROXIES_POOL": ""},
    )
    assert result.reason == "finished", result.output[-3000:]
    assert "pool 'datacenter'" in result.log
    assert "CONCURRENT_REQUESTS = 33 (spider custom_settings)" in result.log
    assert "CONCURRENT_REQUESTS_PER_DOMAIN = 33 (pool preset)" in result.log
    assert "RETRY_TIMES = 3 (pool preset)" in result.log


# -- 11, 13. `scrapy crawl` and `scrapy settings` in a scratch project ----------

SPIDER = """
import scrapy


class Probe(scrapy.Spider):
    name = "probe"
    start_urls = ["http://a.test:1/"]

    def parse(self, response):
        pass
"""


def scratch_project(root: Path, reactor: str, settings: str = "") -> Path:
    (root / "probe" / "spiders").mkdir(parents=True)
    (root / "scrapy.cfg").write_text("[settings]\ndefault = probe.settings\n")
    (root / "probe" / "__init__.py").write_text("")
    (root / "probe" / "spiders" / "__init__.py").write_text("")
    (root / "probe" / "spiders" / "probe.py").write_text(SPIDER)
    reactor_path = {
        "asyncio": "twisted.internet.asyncioreactor.AsyncioSelectorReactor",
        "epoll": "twisted.internet.epollreactor.EPollReactor",
    }[reactor]
    (root / "probe" / "settings.py").write_text(
        'SPIDER_MODULES = ["probe.spiders"]\n'
        'ADDONS = {"scrapy_justproxies.Addon": 100}\n'
        f"TWISTED_REACTOR = {reactor_path!r}\n"
        "TELNETCONSOLE_ENABLED = False\n" + settings
    )
    return root


def scrapy_command(root: Path, args: list[str], env: dict[str, str]) -> Any:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("JUSTPROXIES_")
        and k.lower() not in {"http_proxy", "https_proxy", "all_proxy"}
    }
    return subprocess.run(
        [sys.executable, "-m", "scrapy", *args],
        cwd=root,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("reactor_name", REACTORS)
@pytest.mark.parametrize(
    ("env_change", "args", "message"),
    [
        (
            {"JUSTPROXIES_POOL": "mobil"},
            [],
            "JUSTPROXIES_POOL (from the environment) is 'mobil'",
        ),
        (
            {"JUSTPROXIES_POOL": "mobile"},
            ["-s", "CONCURRENT_REQUESTS=8", "-s", "CONCURRENT_REQUESTS_PER_DOMAIN=9"],
            "CONCURRENT_REQUESTS_PER_DOMAIN (9, from command line) is above",
        ),
        (
            {"JUSTPROXIES_GATEWAY": "127.0.0.1:9:u:Zq9-secret-pw:x"},
            [],
            "JUSTPROXIES_GATEWAY carries credentials that differ from JUSTPROXIES_PASSWORD",
        ),
    ],
    ids=["pool", "concurrency", "gateway"],
)
def test_scrapy_crawl_with_a_config_error_exits_non_zero_with_one_clear_line(
    tmp_path: Path,
    reactor_name: str,
    env_change: dict[str, str],
    args: list[str],
    message: str,
) -> None:
    root = scratch_project(tmp_path, reactor_name)
    env = {
        "JUSTPROXIES_GATEWAY": "127.0.0.1:9",
        "JUSTPROXIES_USER": "u",
        "JUSTPROXIES_PASSWORD": "Zq9-secret-pw",
        **env_change,
    }
    done = scrapy_command(root, ["crawl", "probe", *args], env)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert f"ERROR: JustProxies cannot start: {message}" in output, output[-3000:]
    assert output.count(message) == 1
    for noise in ("Traceback", "Task exception was never retrieved", "Unhandled"):
        assert noise not in output
    assert "Zq9-secret-pw" not in output
    assert "Spider opened" not in output


def test_scrapy_settings_shows_the_project_values_not_the_preset(
    tmp_path: Path,
) -> None:
    """The README's claim: `scrapy settings` does not run add-ons, so it
    shows settings.py's values; the crawl's start-up block shows the preset."""
    root = scratch_project(tmp_path, "asyncio")
    env = {
        "JUSTPROXIES_GATEWAY": "127.0.0.1:9",
        "JUSTPROXIES_USER": "u",
        "JUSTPROXIES_PASSWORD": "p",
        "JUSTPROXIES_POOL": "mobile",
    }
    done = scrapy_command(root, ["settings", "--get", "CONCURRENT_REQUESTS"], env)
    assert done.stdout.strip() == "16", done.stdout + done.stderr


# -- 13. a non-ASCII password and HTTPPROXY_AUTH_ENCODING -------------------------

UNICODE_USER = "unicodeuser"
UNICODE_PASSWORD = "pässwörd-ü"


@pytest.mark.parametrize("encoding", [None, "utf-8"])
def test_non_ascii_password_needs_the_gateways_encoding(
    sandbox: Any, tmp_path: Path, encoding: str | None
) -> None:
    """The README's note: Scrapy sends Basic credentials in latin-1 unless
    HTTPPROXY_AUTH_ENCODING says otherwise; a gateway that decodes UTF-8
    (the sandbox does) then refuses them, and the crawl stops on its 407."""
    configure(sandbox, {"a.test": {}}, users={UNICODE_USER: UNICODE_PASSWORD})
    settings: dict[str, Any] = {**ADDON}
    if encoding:
        settings["HTTPPROXY_AUTH_ENCODING"] = encoding
    result = run_crawl(
        tmp_path,
        reactor="asyncio",
        requests=urls(sandbox, "a.test", 3),
        settings=settings,
        env={
            "JUSTPROXIES_GATEWAY": sandbox.gateway,
            "JUSTPROXIES_USER": UNICODE_USER,
            "JUSTPROXIES_PASSWORD": UNICODE_PASSWORD,
        },
    )
    if encoding:
        assert result.reason == "finished", result.output[-3000:]
        assert result.statuses == {200: 3}
    else:
        assert result.reason == "justproxies_credentials_rejected", result.output
    assert leaked(result, UNICODE_USER, UNICODE_PASSWORD) == []
    latin1 = base64.b64encode(f"{UNICODE_USER}:{UNICODE_PASSWORD}".encode("latin-1"))
    assert latin1.decode() not in result.everything_written()


@pytest.mark.parametrize(
    "groups",
    [
        {"": ["a.test"]},
        {"a.test": [""]},
        {"a.test": ["b.test "]},
        {"a.test": ["cdn b.test"]},
        '{"a.test": "b.test"}',
    ],
)
def test_slot_groups_with_names_no_request_can_have_are_refused(groups: Any) -> None:
    with pytest.raises(JustProxiesConfigError, match="JUSTPROXIES_SLOT_GROUPS"):
        ThrottleConfig.from_settings(Settings({"JUSTPROXIES_SLOT_GROUPS": groups}), {})


@pytest.mark.parametrize(
    "value",
    [
        "gw.example.net:8080:alice:12345",
        "alice:12345:gw.example.net:8080",  # was host "alice", port 12345 (printed)
        "127.0.0.1:8080:alice:12345",
        "alice:12345:127.0.0.1:8080",
        "localhost:8080:alice:12345",
        "alice:12345:localhost:8080",
    ],
)
def test_list_format_with_a_numeric_password_is_split_the_right_way(
    value: str,
) -> None:
    config = Config.from_settings(Settings(), {"JUSTPROXIES_GATEWAY": value})
    assert config.gateway is not None
    assert config.gateway.port == 8080
    assert (config.user, config.password.reveal()) == ("alice", "12345")


def test_list_format_that_reads_both_ways_is_refused_without_echo() -> None:
    # Neither "gw" nor "alice" looks more like a host than the other.
    with pytest.raises(JustProxiesConfigError, match="either way") as info:
        Config.from_settings(Settings(), {"JUSTPROXIES_GATEWAY": "gw:8080:alice:12345"})
    assert "12345" not in str(info.value) and "alice" not in str(info.value)


# -- a plugin middleware disabled or out of order ---------------------------------

_ROUTER = "scrapy_justproxies.JustProxiesMiddleware"
_RATE_LIMIT = "scrapy_justproxies.JustProxiesRateLimitMiddleware"
_SCRUB = "scrapy_justproxies.JustProxiesScrubMiddleware"
_ALL = {_ROUTER: 745, _RATE_LIMIT: 940, _SCRUB: 950}


@pytest.mark.parametrize(
    ("changes", "extra", "message"),
    [
        ({_ROUTER: None}, {}, "every request would go out direct"),
        ({_SCRUB: None}, {}, "JustProxiesScrubMiddleware is not enabled"),
        ({_RATE_LIMIT: None}, {}, "JustProxiesRateLimitMiddleware is not in"),
        ({_RATE_LIMIT: 500}, {}, "not above RetryMiddleware's 550"),
        ({_ROUTER: 760}, {}, "not below HttpProxyMiddleware's 750"),
        (
            {"scrapy.downloadermiddlewares.httpproxy.HttpProxyMiddleware": None},
            {},
            "HttpProxyMiddleware is disabled",
        ),
        ({}, {"HTTPPROXY_ENABLED": False}, "HTTPPROXY_ENABLED is false"),
        # The cache placed above the scrubber: it would store the header.
        (
            {"scrapy.downloadermiddlewares.httpcache.HttpCacheMiddleware": 960},
            {"HTTPCACHE_ENABLED": True},
            "not above HttpCacheMiddleware's 960",
        ),
        (
            {"scrapy.downloadermiddlewares.httpcache.HttpCacheMiddleware": 945},
            {"HTTPCACHE_ENABLED": True},
            "not above HttpCacheMiddleware's 945",
        ),
    ],
    ids=[
        "router-off", "scrubber-off", "rate-limit-off", "rate-limit-below-retry",
        "router-after-httpproxy", "httpproxy-off", "httpproxy-disabled",
        "cache-above-scrubber", "cache-above-rate-limit",
    ],
)  # fmt: skip
def test_a_plugin_middleware_disabled_or_misplaced_is_refused_at_start(
    changes: dict[str, Any], extra: dict[str, Any], message: str
) -> None:
    """Every component checks the whole set: before, the add-on with the
    router set to None crawled direct with no warning, and a manual setup
    without the scrubber handed the credentials to spider callbacks."""
    from scrapy_justproxies.middleware import check_middlewares  # noqa: PLC0415

    settings = Settings({"DOWNLOADER_MIDDLEWARES": {**_ALL, **changes}, **extra})
    with pytest.raises(JustProxiesConfigError, match=re.escape(message)):
        check_middlewares(settings)
    check_middlewares(Settings({"DOWNLOADER_MIDDLEWARES": _ALL}))  # the fix


def test_the_add_on_with_the_router_disabled_sends_nothing_direct(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    output = refused_at_startup(
        sandbox, gateway_env, tmp_path,
        settings={"DOWNLOADER_MIDDLEWARES": {_ROUTER: None}},
    )  # fmt: skip
    assert "every request would go out direct" in output
    assert "JUSTPROXIES_ENABLED = False" in output
    assert "Traceback" not in output


def test_by_hand_without_the_add_on_the_spider_never_sees_the_credentials(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    """The README's three middlewares, no add-on: the callback's
    ``response.request.headers`` hold no Proxy-Authorization. (Without the
    scrubber the crawl does not start: see the test above.)"""
    configure(sandbox, {"a.test": {}})
    result = run_crawl(
        tmp_path,
        reactor="asyncio",
        requests=urls(sandbox, "a.test", 3),
        settings={"ADDONS": {}, "DOWNLOADER_MIDDLEWARES": _ALL},
        env=gateway_env,
    )
    assert result.statuses == {200: 3}, result.output[-3000:]
    for outcome in result.outcomes.values():
        names = [name.lower() for name in outcome["request_header_names"]]
        assert names and "proxy-authorization" not in names
    assert sandbox.password not in result.everything_written()


@pytest.fixture
def capturing_proxy() -> Iterator[tuple[str, list[bytes]]]:
    """A plain-http "proxy" that records each request's head and answers
    200 "ok" itself."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    heads: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn = server.accept()[0]
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                data = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                heads.append(data)
                with contextlib.suppress(OSError):
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                        b"Connection: close\r\n\r\nok"
                    )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", heads
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_a_proxy_set_after_httpproxy_never_gets_the_gateways_credentials(
    sandbox: Any,
    gateway_env: dict[str, str],
    capturing_proxy: tuple[str, list[bytes]],
    tmp_path: Path,
) -> None:
    """A user's middleware at 800 points some requests at its own proxy,
    after HttpProxyMiddleware (750) set the gateway's Proxy-Authorization:
    before, that proxy received the gateway's credentials."""
    other, heads = capturing_proxy
    configure(sandbox, {"a.test": {}})
    base = f"http://127.0.0.1:{sandbox.site_http_port}"
    result = run_crawl(
        tmp_path,
        reactor="asyncio",
        requests=[{"url": f"{base}/other/{i}"} for i in range(3)]
        + urls(sandbox, "a.test", 2),
        settings={
            **ADDON,
            "DOWNLOADER_MIDDLEWARES": {"tests.other_proxy.OtherProxyMiddleware": 800},
            "OTHER_PROXY": other,
        },
        env={**gateway_env, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert result.statuses == {200: 5}, result.output[-3000:]
    assert len(heads) == 3
    token = base64.b64encode(f"{sandbox.user}:{sandbox.password}".encode())
    for head in heads:
        assert b"proxy-authorization" not in head.lower()
        assert token not in head and sandbox.password.encode() not in head
    assert result.stats["justproxies/requests/credentials_withheld"] == 3
    assert result.log.count("changed meta['proxy'] of a request routed") == 1


@pytest.mark.parametrize("way", ["response", "exception"])
def test_the_router_also_takes_the_credentials_off_on_the_way_back(way: str) -> None:
    """Whatever sits between the scrubber (950) and the router (745), the
    request is clean again when it leaves the router for Retry, Redirect
    and the spider."""
    from scrapy import Request  # noqa: PLC0415
    from scrapy.http import Response  # noqa: PLC0415
    from scrapy.utils.test import get_crawler  # noqa: PLC0415

    from scrapy_justproxies.middleware import (  # noqa: PLC0415
        META_ROUTED,
        JustProxiesMiddleware,
    )

    crawler = get_crawler(
        settings_dict={
            **ADDON,
            "JUSTPROXIES_GATEWAY": "127.0.0.1:9",
            "JUSTPROXIES_USER": "u",
            "JUSTPROXIES_PASSWORD": "p",
            "JUSTPROXIES_STATE_FILE": None,
        }
    )
    crawler._apply_settings()  # the add-on's entries, as a crawl does
    router = JustProxiesMiddleware.from_crawler(crawler)
    gateway = "http://127.0.0.1:9"
    request = Request(
        "http://a.test/", meta={META_ROUTED: gateway, "_auth_proxy": gateway}
    )
    request.headers[b"Proxy-Authorization"] = b"Basic dTpw"
    if way == "response":
        router.process_response(request, Response(request.url, request=request))
    else:
        router.process_exception(request, TimeoutError())
    assert b"Proxy-Authorization" not in request.headers
    assert "_auth_proxy" not in request.meta
