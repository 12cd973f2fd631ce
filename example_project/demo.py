"""`make demo`: crawl the example project through a gateway and summarise.

With JUSTPROXIES_GATEWAY, JUSTPROXIES_USER and JUSTPROXIES_PASSWORD in the
environment it crawls through the real gateway (a short crawl: 50 pages at
most, since pools are priced by the gigabyte); otherwise it starts the
bundled sandbox (an authenticating gateway and a rate-limiting HTTPS site on
loopback) and crawls that. Either way it runs `scrapy crawl catalog` exactly
as a user would, with JUSTPROXIES_POOL=mobile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scrapy_justproxies.sandbox import run_sandbox_process

HERE = Path(__file__).resolve().parent
OUTPUT = HERE.parent / "demo-output"
REPORT = OUTPUT / "report.html"
SITE = "shop.test"
PAGES = 40
SANDBOX_CONFIG: dict[str, Any] = {
    "gateway": {"users": {"demo": "demo-secret"}, "hop_latency_ms": 20},
    "sites": {
        # A mobile-like latency and a limit a little above what the mobile
        # preset starts at (16 / 0.3 s is about 53 requests/s): the throttle
        # raises the concurrency until the 429s begin, then settles.
        SITE: {
            "rate": 60,
            "burst": 20,
            "latency_p50_ms": 300,
            "latency_p95_ms": 500,
            "pages": PAGES,
        }
    },
}


def crawl(
    env: dict[str, str], start_url: str | None, extra: list[str]
) -> dict[str, Any]:
    OUTPUT.mkdir(exist_ok=True)
    stats_file = OUTPUT / "stats.json"
    stats_file.unlink(missing_ok=True)
    REPORT.unlink(missing_ok=True)
    (OUTPUT / "crawl.log").unlink(missing_ok=True)  # Scrapy appends to LOG_FILE
    command = [
        sys.executable, "-m", "scrapy", "crawl", "catalog",
        "-O", str(OUTPUT / "items.jsonl"),
        "-s", f"LOG_FILE={OUTPUT / 'crawl.log'}",
        "-s", f"JUSTPROXIES_TRACE={OUTPUT / 'trace.jsonl'}",
        "-s", f"JUSTPROXIES_REPORT={REPORT}",
        *(["-a", f"start_url={start_url}"] if start_url else []),
        *extra,
    ]  # fmt: skip
    print("$ JUSTPROXIES_POOL=mobile scrapy crawl catalog", " ".join(command[5:]))
    env = {**env, "JUSTPROXIES_POOL": "mobile", "CATALOG_STATS_FILE": str(stats_file)}
    started = time.monotonic()
    done = subprocess.run(command, cwd=HERE, env=env, check=False)
    elapsed = time.monotonic() - started
    if done.returncode != 0 or not stats_file.exists():
        print(f"The crawl failed (exit {done.returncode}); see {OUTPUT / 'crawl.log'}")
        sys.exit(1)
    stats: dict[str, Any] = json.loads(stats_file.read_text())
    stats["_elapsed"] = elapsed
    return stats


def summarise(stats: dict[str, Any], site: dict[str, Any] | None) -> None:
    items = stats.get("item_scraped_count", 0)
    lines = [
        "",
        "JustProxies demo summary",
        f"  finish reason           {stats.get('finish_reason')}",
        f"  pages downloaded        {stats.get('downloader/response_count', 0)}",
        f"  items scraped           {items}"
        f"  ({items / stats['_elapsed']:.1f}/s over {stats['_elapsed']:.1f} s)",
        f"  429 responses           {stats.get('justproxies/rate_limited/total', 0)}",
        f"  requests via gateway    {stats.get('justproxies/requests/proxied', 0)}",
        f"  bytes via gateway       {stats.get('justproxies/bytes/sent', 0)} sent, "
        f"{stats.get('justproxies/bytes/received', 0)} received "
        f"({stats.get('justproxies/bytes/rate_limited', 0)} for 429s)",
    ]
    if "justproxies/cost" in stats:
        lines.append(
            f"  cost (PRICE_PER_GB)     {stats['justproxies/cost']:.4f} "
            f"(429s: {stats.get('justproxies/cost/rate_limited', 0):.4f})"
        )
    for key, peak in sorted(stats.items()):
        if key.startswith("justproxies/limit_peak/"):
            domain = key.rsplit("/", 1)[1]
            lines.append(
                f"  concurrency {domain}: start {stats.get(f'justproxies/limit_start/{domain}')}, "
                f"peak {peak}, final {stats.get(f'justproxies/limit_final/{domain}')}"
            )
    if site is not None:
        lines += [
            f"  site: admitted / 429    {site['admitted']} / {site['rate_limited']}",
            f"  site: max in flight     {site['max_inflight']}",
            f"  site: Proxy-Authorization received {site['proxy_authorization_seen']},"
            f" direct requests {site['direct']}",
        ]
    lines.append(f"  items in {OUTPUT / 'items.jsonl'}, log in {OUTPUT / 'crawl.log'}")
    lines.append(f"  trace in {OUTPUT / 'trace.jsonl'}")
    print("\n".join(lines))
    if REPORT.exists():
        print(f"\nReport (open it in a browser): {REPORT}")


def main() -> None:
    env = dict(os.environ)
    if all(
        env.get(name)
        for name in ("JUSTPROXIES_GATEWAY", "JUSTPROXIES_USER", "JUSTPROXIES_PASSWORD")
    ):
        start_url = env.get("DEMO_START_URL")
        if not start_url:
            sys.exit(
                "Real credentials found: set DEMO_START_URL to the catalog to crawl."
            )
        print("Real credentials found: crawling through the JustProxies gateway.")
        stats = crawl(env, start_url, ["-s", "CLOSESPIDER_PAGECOUNT=50"])
        summarise(stats, None)
        return
    print("No JUSTPROXIES_* credentials in the environment: using the local sandbox.")
    with run_sandbox_process(SANDBOX_CONFIG) as sandbox:
        env.update(
            JUSTPROXIES_GATEWAY=sandbox.gateway,
            JUSTPROXIES_USER=sandbox.user,
            JUSTPROXIES_PASSWORD=sandbox.password,
        )
        start_url = f"https://{SITE}:{sandbox.site_https_port}/catalog/{{page}}"
        stats = crawl(env, start_url, ["-a", f"pages={PAGES}"])
        site = sandbox.client.stats()["sites"][SITE]
    summarise(stats, site)


if __name__ == "__main__":
    main()
