"""`make demo-cluster`: three `scrapy crawl catalog` processes share one
site's budget through Redis.

Starts Debian's redis-server on loopback (a free port, a temporary
directory, no persistence), the bundled sandbox (an authenticating gateway
and a rate-limiting site) and three crawl processes of the example project,
each crawling a third of the catalog with
``JUSTPROXIES_SHARED_STATE=redis://...`` in its environment, exactly as a
user would run them side by side; then prints the combined summary.
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
from scrapy_justproxies.sandbox.redis_server import run_redis, server_binary

HERE = Path(__file__).resolve().parent
OUTPUT = HERE.parent / "demo-output" / "cluster"
SITE = "shop.test"
PAGES = 60
PROCESSES = 3
SANDBOX_CONFIG: dict[str, Any] = {
    "gateway": {"users": {"demo": "demo-secret"}, "hop_latency_ms": 20},
    "sites": {
        # The site counts requests from all processes together: 50 per second.
        SITE: {
            "rate": 50,
            "burst": 10,
            "latency_p50_ms": 200,
            "latency_p95_ms": 350,
            "pages": PAGES,
            "retry_after": "seconds",
        }
    },
}


def start(index: int, env: dict[str, str], start_url: str) -> subprocess.Popen[bytes]:
    workdir = OUTPUT / f"p{index}"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "crawl.log").unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "scrapy", "crawl", "catalog",
        "-a", f"start_url={start_url}", "-a", f"pages={PAGES}",
        "-a", f"part={index}/{PROCESSES}",
        "-O", str(workdir / "items.jsonl"),
        "-s", f"LOG_FILE={workdir / 'crawl.log'}",
        "-s", "JUSTPROXIES_STATE_FILE=None",
    ]  # fmt: skip
    print(
        f"$ JUSTPROXIES_SHARED_STATE=redis://:***@... scrapy crawl catalog "
        f"-a part={index}/{PROCESSES} ..."
    )
    env = {**env, "CATALOG_STATS_FILE": str(workdir / "stats.json")}
    (workdir / "stats.json").unlink(missing_ok=True)
    return subprocess.Popen(command, cwd=HERE, env=env)


def summarise(site: dict[str, Any], elapsed: float) -> None:
    lines = ["", "JustProxies cluster demo summary (3 processes, one site budget)"]
    items = 0
    for index in range(1, PROCESSES + 1):
        path = OUTPUT / f"p{index}" / "stats.json"
        stats = json.loads(path.read_text()) if path.exists() else {}
        items += stats.get("item_scraped_count", 0)
        lines.append(
            f"  process {index}: {stats.get('finish_reason')}, "
            f"{stats.get('item_scraped_count', 0)} items, "
            f"{stats.get('justproxies/rate_limited/total', 0)} 429s, "
            f"last share {stats.get(f'justproxies/shared/share/{SITE}')} of "
            f"{stats.get(f'justproxies/shared/site_limit/{SITE}')}, "
            f"{stats.get('elapsed_time_seconds', 0):.1f} s"
        )
    answers = site["admitted"] + site["rate_limited"]
    lines += [
        f"  items scraped           {items} ({items / elapsed:.1f}/s over "
        f"{elapsed:.1f} s)",
        f"  site: admitted / 429    {site['admitted']} / {site['rate_limited']}"
        f" ({site['rate_limited'] / max(1, answers):.1%} of answers were 429)",
        f"  site: max in flight     {site['max_inflight']}",
        f"  logs in {OUTPUT}/p*/crawl.log",
    ]
    print("\n".join(lines))


def main() -> None:
    if server_binary() is None:
        sys.exit("redis-server is not installed: apt-get install redis-server")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("JUSTPROXIES_") and k.lower() != "http_proxy"
    }
    with run_sandbox_process(SANDBOX_CONFIG) as sandbox, run_redis() as redis:
        env.update(
            JUSTPROXIES_GATEWAY=sandbox.gateway,
            JUSTPROXIES_USER=sandbox.user,
            JUSTPROXIES_PASSWORD=sandbox.password,
            JUSTPROXIES_SHARED_STATE=redis.url,
        )
        start_url = f"https://{SITE}:{sandbox.site_https_port}/catalog/{{page}}"
        started = time.monotonic()
        crawls = [start(i, env, start_url) for i in range(1, PROCESSES + 1)]
        codes = [crawl.wait() for crawl in crawls]
        elapsed = time.monotonic() - started
        site = sandbox.client.stats()["sites"][SITE]
    summarise(site, elapsed)
    if any(codes):
        sys.exit(f"a crawl failed (exit codes {codes})")


if __name__ == "__main__":
    main()
