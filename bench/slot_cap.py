"""Does CONCURRENT_REQUESTS_PER_DOMAIN hold? Scrapy alone vs with the plugin.

One run, side by side: for each Scrapy (the interpreters given) and each
reactor, crawl 300 URLs of one site that admits 50 requests/s (token bucket,
burst 10, latency P50 200 ms / P95 350 ms) with CONCURRENT_REQUESTS = 100 and
CONCURRENT_REQUESTS_PER_DOMAIN = 8, through the sandbox gateway; once with
the proxy set by hand (Scrapy alone) and once with the plugin's add-on.
Prints a Markdown table of the most requests the site saw in flight at once,
the share of 429 answers, and the URLs lost after Scrapy's retries. The plugin's throttle is off here, so
its column shows the static cap of 8 alone.

    python bench/slot_cap.py [PYTHON ...]   (default: .venv and .venv-oldest)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from scrapy_justproxies.sandbox import run_sandbox_process
from scrapy_justproxies.sandbox.crawl import REACTORS, run_crawl

ROOT = Path(__file__).resolve().parent.parent
HOST = "limited.test"
URLS = 300
SITE = {"rate": 50, "burst": 10, "latency_p50_ms": 200, "latency_p95_ms": 350}
SETTINGS = {"CONCURRENT_REQUESTS": 100, "CONCURRENT_REQUESTS_PER_DOMAIN": 8}


def measure(
    sandbox: Any, python: str, reactor: str, plugin: bool, workdir: Path
) -> dict[str, Any]:
    sandbox.client.configure(
        {"gateway": {"users": {sandbox.user: sandbox.password}}, "sites": {HOST: SITE}}
    )
    sandbox.client.reset()
    base = f"http://{HOST}:{sandbox.site_http_port}/item"
    requests: list[dict[str, Any]] = [
        {"url": f"{base}/{i}"} for i in range(1, URLS + 1)
    ]
    env: dict[str, str] = {}
    settings: dict[str, Any] = dict(SETTINGS)
    if plugin:
        settings["ADDONS"] = {"scrapy_justproxies.Addon": 100}
        # The static cap only: the throttle would move the limit.
        settings["JUSTPROXIES_THROTTLE_ENABLED"] = False
        env = {
            "JUSTPROXIES_GATEWAY": sandbox.gateway,
            "JUSTPROXIES_USER": sandbox.user,
            "JUSTPROXIES_PASSWORD": sandbox.password,
        }
    else:
        proxy = f"http://{sandbox.user}:{sandbox.password}@{sandbox.gateway}"
        requests = [{**r, "meta": {"proxy": proxy}} for r in requests]
    result = run_crawl(
        workdir,
        reactor=reactor,
        requests=requests,
        settings=settings,
        env=env,
        python=python,
        log_level="INFO",
    )
    site = sandbox.client.stats()["sites"][HOST]
    answered = site["admitted"] + site["rate_limited"]
    return {
        "scrapy": result.scrapy_version,
        "peak": site["max_inflight"],
        "share_429": site["rate_limited"] / answered if answered else 0.0,
        "lost": URLS - result.statuses.get(200, 0),
    }


def main(pythons: list[str]) -> None:
    rows = []
    with run_sandbox_process(None) as sandbox, tempfile.TemporaryDirectory() as tmp:
        for python in pythons:
            for reactor in REACTORS:
                alone = measure(sandbox, python, reactor, False, Path(tmp) / "a")
                plugin = measure(sandbox, python, reactor, True, Path(tmp) / "p")
                rows.append((alone["scrapy"], reactor, alone, plugin))
    print(
        "| Scrapy | reactor | alone: peak in flight | alone: 429 share | alone: URLs lost "
        "| plugin: peak in flight | plugin: 429 share | plugin: URLs lost |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for version, reactor, alone, plugin in rows:
        print(
            f"| {version} | {reactor} | {alone['peak']} | {alone['share_429']:.0%} | {alone['lost']} "
            f"| {plugin['peak']} | {plugin['share_429']:.0%} | {plugin['lost']} |"
        )


if __name__ == "__main__":
    given = sys.argv[1:] or [
        str(p)
        for p in (ROOT / ".venv/bin/python", ROOT / ".venv-oldest/bin/python")
        if p.exists()
    ]
    main(given)
