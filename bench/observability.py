"""What the trace and the report cost (not part of `make bench`).

1. Rendering: a synthetic trace of an hour over 20 domains
   (tests/trace_gen.py), read and rendered to HTML, timed.
2. Tracing: the same crawl through the sandbox with JUSTPROXIES_TRACE off and
   on, alternated, CPU time of the crawl process per request.

Usage: ``python bench/observability.py [--urls 3000] [--rounds 3] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scrapy_justproxies.report import read_trace, render_report  # noqa: E402
from scrapy_justproxies.sandbox import run_sandbox_process  # noqa: E402
from scrapy_justproxies.sandbox.crawl import run_crawl  # noqa: E402
from tests.trace_gen import write_synthetic_trace  # noqa: E402

SITE = "a.test"


def time_render(out: Path, rounds: int) -> None:
    trace = out / "synthetic-1h-20-domains.jsonl"
    write_synthetic_trace(trace, seconds=3600, domains=20)
    took = []
    for _ in range(rounds):
        started = time.perf_counter()
        html = render_report(read_trace(trace))
        took.append(time.perf_counter() - started)
    (out / "synthetic-report.html").write_text(html)
    print(
        f"render: {trace.stat().st_size / 1e6:.1f} MB trace (1 h, 20 domains) -> "
        f"{len(html) / 1e6:.2f} MB HTML in {min(took):.2f} s best, "
        f"{statistics.median(took):.2f} s median of {rounds}"
    )


def time_trace(out: Path, urls: int, rounds: int) -> None:
    config = {
        "gateway": {"users": {"bench": "bench-secret"}},
        "sites": {SITE: {"latency_p50_ms": 20, "latency_p95_ms": 40}},
    }
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    with run_sandbox_process(config) as sandbox:
        env = {
            "JUSTPROXIES_GATEWAY": sandbox.gateway,
            "JUSTPROXIES_USER": sandbox.user,
            "JUSTPROXIES_PASSWORD": sandbox.password,
            "JUSTPROXIES_POOL": "mobile",
        }
        requests = [
            {"url": f"http://{SITE}:{sandbox.site_http_port}/item/{i % 1000 + 1}"}
            for i in range(urls)
        ]
        for round_ in range(rounds):
            for mode in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
                settings = {
                    "ADDONS": {"scrapy_justproxies.Addon": 100},
                    "CONCURRENT_REQUESTS_PER_DOMAIN": 50,
                    "LOG_LEVEL": "INFO",
                }
                if mode == "on":
                    settings["JUSTPROXIES_TRACE"] = str(out / "trace.jsonl")
                sandbox.client.reset()
                result = run_crawl(
                    out / f"crawl-{mode}",
                    reactor="asyncio",
                    requests=requests,
                    settings=settings,
                    env=env,
                )
                sent = int(result.stats.get("downloader/request_count", 0))
                assert result.reason == "finished", result.output[-2000:]
                cpu[mode].append(1000 * result.cpu_seconds / sent)
    off, on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    print(
        f"trace: CPU per request off {off:.3f} ms, on {on:.3f} ms "
        f"({on / off - 1:+.1%}), medians of {rounds} crawls of {urls} requests; "
        f"off {[round(v, 3) for v in cpu['off']]}, on {[round(v, 3) for v in cpu['on']]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-observability-"))
    out.mkdir(parents=True, exist_ok=True)
    time_render(out, args.rounds)
    time_trace(out, args.urls, args.rounds)


if __name__ == "__main__":
    main()
