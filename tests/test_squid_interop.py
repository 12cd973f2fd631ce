"""Interop with a widely used real proxy: Debian's Squid with Basic auth.

The plugin knows nothing of the sandbox: pointed at Squid it must crawl http
and https targets, and a wrong password must stop the crawl with the same
clear error. Squid resolves the sandbox site's names from its hosts file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scrapy_justproxies.sandbox.crawl import run_crawl
from tests.test_crawl import ADDON, configure, site, urls

pytestmark = [pytest.mark.squid, pytest.mark.crawl]

USER = "squid-user"
PASSWORD = "squid pass:w%rd"  # a space, a colon and a percent sign: quoting matters
HOSTS = ["a.test", "b.test"]


@pytest.fixture
def squid(squid_proxy_factory: Any) -> Any:
    return squid_proxy_factory(user=USER, password=PASSWORD, host_names=HOSTS)


def squid_env(squid: Any, password: str = PASSWORD) -> dict[str, str]:
    return {
        "JUSTPROXIES_GATEWAY": f"{squid.host}:{squid.port}",
        "JUSTPROXIES_USER": USER,
        "JUSTPROXIES_PASSWORD": password,
        "JUSTPROXIES_POOL": "residential",
    }


def test_crawl_through_squid_http_and_https(
    sandbox: Any, squid: Any, reactor: str, tmp_path: Path
) -> None:
    configure(sandbox, {"a.test": {}, "b.test": {}})
    requests = urls(sandbox, "a.test", 20) + urls(sandbox, "b.test", 20, https=True)
    result = run_crawl(
        tmp_path,
        reactor=reactor,
        requests=requests,
        settings=ADDON,
        env=squid_env(squid),
    )
    assert result.reason == "finished", result.output[-3000:]
    assert result.statuses == {200: 40}
    assert result.stats["justproxies/requests/proxied"] == 40
    for host in HOSTS:
        assert site(sandbox, host)["proxy_authorization_seen"] == 0
    # Squid logged every request as authenticated by our user.
    lines = [
        line
        for line in squid.access_log_lines()
        if "/item/" in line or "CONNECT" in line
    ]
    assert lines and all(USER in line for line in lines)
    assert PASSWORD not in result.everything_written()


@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
def test_wrong_password_at_squid_stops_the_crawl(
    sandbox: Any, squid: Any, tmp_path: Path, https: bool
) -> None:
    configure(sandbox, {"a.test": {}})
    result = run_crawl(
        tmp_path,
        reactor="asyncio",
        requests=urls(sandbox, "a.test", 50, https=https),
        settings=ADDON,
        env=squid_env(squid, password="wrong"),
    )
    assert result.reason == "justproxies_credentials_rejected", result.output[-3000:]
    assert result.log.count("Credentials rejected by the gateway") == 1
    assert site(sandbox, "a.test").get("admitted", 0) == 0
