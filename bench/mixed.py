"""Mixed and broad crawls (issue 8): ``starvation`` and ``soak``.

``starvation``: a.test answers 429 with ``Retry-After: 20`` above 2 req/s,
b.test has no limit; pool mobile, ``CONCURRENT_REQUESTS = 16``, URLs 1 a :
4 b. b.test's rate is measured alone and next to a.test; target >= 0.90,
and every a.test URL completes.

``soak``: SITES sites x URLS URLs (5,000 x 10 in full) through the sandbox
gateway, the plugin against plain Scrapy (the proxy set by hand) at equal
concurrency; then both again with 4x the sites, same URL count (the URLs
dealt round-robin, so some sites get one more). Each site's URLs are spread
over the whole crawl: every site stays live throughout, the worst case for
per-site state. Targets: req/s >= 0.97x, CPU per request <= 1.05x, peak RSS
<= plain + 50 MB, ``justproxies/*`` stats keys <= 200, RSS at 4x the sites
within 20 MB; plain Scrapy's own growth at 4x the sites (its download slots
and their scheduler queues) is measured beside it.

Usage (never into bench/results; the machine is shared, wrap it)::

    flock /tmp/heavy.lock .venv/bin/python bench/mixed.py starvation --out /tmp/bench-x
    flock /tmp/heavy.lock .venv/bin/python bench/mixed.py soak --sites 5000 --out /tmp/bench-x

``--old PATH`` runs the plugin variants with ``PYTHONPATH=PATH`` too (a
checkout of an earlier version), for a before/after figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from scrapy_justproxies.sandbox import run_sandbox_process
from scrapy_justproxies.sandbox.crawl import CrawlResult, run_crawl

ADDON = {"ADDONS": {"scrapy_justproxies.Addon": 100}}


def configure(sandbox: Any, sites: dict[str, Any], default: Any = None) -> None:
    config: dict[str, Any] = {
        "gateway": {"users": {sandbox.user: sandbox.password}},
        "sites": sites,
    }
    if default is not None:
        config["default_site"] = default
    sandbox.client.configure(config)
    sandbox.client.reset()


def urls(sandbox: Any, host: str, count: int) -> list[dict[str, Any]]:
    port = sandbox.site_http_port
    return [{"url": f"http://{host}:{port}/item/{i}"} for i in range(1, count + 1)]


def env_of(sandbox: Any, old: str | None = None) -> dict[str, str]:
    env = {
        "JUSTPROXIES_GATEWAY": sandbox.gateway,
        "JUSTPROXIES_USER": sandbox.user,
        "JUSTPROXIES_PASSWORD": sandbox.password,
    }
    if old:
        env["PYTHONPATH"] = old
    return env


def host_rate(stats: dict[str, Any]) -> float:
    """Admitted requests per second over the host's whole seconds: between
    its first and last admitting second, both left out (partly used, they
    would bias a short span by up to a second)."""
    seconds = [b for b in stats["per_second"] if b["admitted"]]
    first, last = seconds[0]["t"], seconds[-1]["t"]
    inner = [b for b in stats["per_second"] if first < b["t"] < last]
    if len(inner) < 3:
        return sum(b["admitted"] for b in seconds) / (last - first + 1)
    return sum(b["admitted"] for b in inner) / len(inner)


def starvation(sandbox: Any, out: Path, old: str | None, a_urls: int) -> dict[str, Any]:
    b_policy = {"latency_p50_ms": 200, "latency_p95_ms": 350}
    a_policy = {
        "rate": 2,
        "burst": 2,
        "retry_after_seconds": 20,
        "latency_p50_ms": 200,
        "latency_p95_ms": 350,
    }
    settings = {**ADDON, "CONCURRENT_REQUESTS": 16, "LOG_LEVEL": "INFO"}
    env = {**env_of(sandbox), "JUSTPROXIES_POOL": "mobile"}
    b = urls(sandbox, "b.test", 4 * a_urls)
    a = urls(sandbox, "a.test", a_urls)
    mixed_order = [r for i in range(a_urls) for r in [a[i], *b[4 * i : 4 * i + 4]]]
    figures: dict[str, Any] = {}
    for label, python_path in [("plugin", None), ("old", old)]:
        if label == "old" and not python_path:
            continue
        run_env = {**env, **({"PYTHONPATH": python_path} if python_path else {})}
        configure(sandbox, {"b.test": b_policy})
        alone = run_crawl(out / label / "alone", reactor="asyncio", requests=b,
                          settings=settings, env=run_env, timeout=600)  # fmt: skip
        alone_rate = host_rate(sandbox.client.site_stats("b.test"))
        configure(sandbox, {"a.test": a_policy, "b.test": b_policy})
        mixed = run_crawl(out / label / "mixed", reactor="asyncio",
                          requests=mixed_order, settings=settings, env=run_env,
                          timeout=600)  # fmt: skip
        mixed_rate = host_rate(sandbox.client.site_stats("b.test"))
        a_done = sum(
            1 for r in a if mixed.outcomes.get(r["url"], {}).get("status") == 200
        )
        figures[label] = {
            "b_alone_req_s": round(alone_rate, 1),
            "b_mixed_req_s": round(mixed_rate, 1),
            "ratio": round(mixed_rate / alone_rate, 3),
            "a_completed": a_done,
            "a_urls": a_urls,
            "a_429s": sandbox.client.site_stats("a.test")["rate_limited"],
            "mixed_wall_s": round(mixed.wall_seconds, 1),
            "alone_reason": alone.reason,
            "mixed_reason": mixed.reason,
        }
        print(label, figures[label], flush=True)
    return figures


def soak_run(
    sandbox: Any,
    out: Path,
    label: str,
    sites: int,
    total: int,
    plain: bool,
    old: str | None = None,
) -> dict[str, Any]:
    configure(sandbox, {}, default={"latency_p50_ms": 20, "latency_p95_ms": 40})
    proxy = f"http://{sandbox.user}:{sandbox.password}@{sandbox.gateway}"
    port = sandbox.site_http_port
    # Round-robin: URL i of every site, then URL i + 1 of every site ...
    requests = [
        {"url": f"http://s{n % sites}.test:{port}/item/{n // sites + 1}"}
        for n in range(total)
    ]
    common = {
        "CONCURRENT_REQUESTS": 64,
        "CONCURRENT_REQUESTS_PER_DOMAIN": 8,
        "LOG_LEVEL": "INFO",
        "DNSCACHE_ENABLED": True,
    }
    if plain:
        requests = [{**r, "meta": {"proxy": proxy}} for r in requests]
        result = run_crawl(out / label, reactor="asyncio", requests=requests,
                           settings=common, timeout=3600)  # fmt: skip
    else:
        result = run_crawl(out / label, reactor="asyncio", requests=requests,
                           settings={**ADDON, **common}, env=env_of(sandbox, old),
                           timeout=3600)  # fmt: skip
    return summarize(result, total)


def summarize(result: CrawlResult, total: int) -> dict[str, Any]:
    done = result.statuses.get(200, 0)
    return {
        "urls": total,
        "ok": done,
        "reason": result.reason,
        "req_s": round(done / result.wall_seconds, 1),
        "cpu_ms_per_request": round(1000 * result.cpu_seconds / max(1, done), 3),
        "peak_rss_mb": round(result.max_rss_kb / 1024, 1),
        "justproxies_keys": len(
            [k for k in result.stats if k.startswith("justproxies/")]
        ),
    }


def soak(sandbox: Any, out: Path, sites: int, per_site: int, old: str | None) -> Any:
    total = sites * per_site
    figures: dict[str, Any] = {}
    for label, many, plain in [
        ("plain", sites, True),
        ("plugin", sites, False),
        ("plain_4x_sites", 4 * sites, True),
        ("plugin_4x_sites", 4 * sites, False),
    ]:
        figures[label] = soak_run(sandbox, out, label, many, total, plain=plain)
        print(label, figures[label], flush=True)
    if old:
        figures["old_plugin"] = soak_run(
            sandbox, out, "old", sites, total, plain=False, old=old
        )
    plain, plugin, wide_run, wide_plain = (
        figures["plain"],
        figures["plugin"],
        figures["plugin_4x_sites"],
        figures["plain_4x_sites"],
    )
    figures["ratios"] = {
        "req_s": round(plugin["req_s"] / plain["req_s"], 3),
        "cpu_per_request": round(
            plugin["cpu_ms_per_request"] / plain["cpu_ms_per_request"], 3
        ),
        "rss_over_plain_mb": round(plugin["peak_rss_mb"] - plain["peak_rss_mb"], 1),
        "rss_4x_sites_minus_1x_mb": round(
            wide_run["peak_rss_mb"] - plugin["peak_rss_mb"], 1
        ),
        "plain_rss_4x_sites_minus_1x_mb": round(
            wide_plain["peak_rss_mb"] - plain["peak_rss_mb"], 1
        ),
        # The plugin's own growth: what it adds beyond plain Scrapy's.
        "rss_growth_over_plain_growth_mb": round(
            (wide_run["peak_rss_mb"] - plugin["peak_rss_mb"])
            - (wide_plain["peak_rss_mb"] - plain["peak_rss_mb"]),
            1,
        ),
        "req_s_4x_sites": round(wide_run["req_s"] / wide_plain["req_s"], 3),
        "cpu_per_request_4x_sites": round(
            wide_run["cpu_ms_per_request"] / wide_plain["cpu_ms_per_request"], 3
        ),
        "rss_over_plain_4x_sites_mb": round(
            wide_run["peak_rss_mb"] - wide_plain["peak_rss_mb"], 1
        ),
    }
    print(figures, flush=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("starvation", "soak"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--old", default=None)
    parser.add_argument("--sites", type=int, default=5000)
    parser.add_argument("--urls", type=int, default=10, help="URLs per site")
    parser.add_argument("--a-urls", type=int, default=150)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with run_sandbox_process(None) as sandbox:
        if args.what == "starvation":
            figures = starvation(
                sandbox, args.out / "starvation", args.old, args.a_urls
            )
        else:
            figures = soak(sandbox, args.out / "soak", args.sites, args.urls, args.old)
    (args.out / f"{args.what}.json").write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
