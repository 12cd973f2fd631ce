"""The plugin's CPU overhead at equal concurrency, in paired runs (issue 8).

The ``no-limit`` scenario (one site without a limit, pool mobile), crawled
by ``plugin-start-high`` (the plugin, per-domain concurrency at the preset's
high end from the first second) and ``plain-scrapy`` (no plugin, the proxy
in ``meta['proxy']`` by hand, same concurrency) alternately, PAIRS times.
Each run's CPU per request is the crawl process's CPU time minus an empty
crawl's (start-up), over the requests it downloaded. Each pair gives one
ratio plugin / plain; the median of the ratios is the figure (target
<= 1.05), reported with its spread. The order within a pair alternates, so
a machine growing busier or quieter over the run does not favour one side.

Usage (never into bench/results; the machine is shared, wrap it)::

    flock /tmp/heavy.lock .venv/bin/python bench/overhead.py --out /tmp/bench-x

``make bench`` runs it after ``bench/run.py`` (whose ``no-limit`` scenario
gives one pair of the same runs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from run import log, measure_startup, run_variant
from scenarios import PLAIN, START_HIGH, build_scenarios

from scrapy_justproxies.sandbox import run_sandbox_process

TARGET = 1.05


def cpu_ms_per_request(run: dict[str, Any]) -> float | None:
    requests = int(run.get("crawler_requests", 0))
    if run.get("error") or not requests:
        return None
    busy = max(0.0, float(run["cpu_seconds"]) - float(run["startup_cpu_seconds"]))
    return 1000.0 * busy / requests


def spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else ordered
    return {
        "median": round(statistics.median(ordered), 4),
        "min": round(ordered[0], 4),
        "max": round(ordered[-1], 4),
        "q1": round(quartiles[0], 4),
        "q3": round(quartiles[-1], 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="fewer URLs per run")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    if "/" in args.python:
        # The crawls run in their own directories: a relative path (such as
        # bench/pinned-python) would not be found from there.
        args.python = str(Path(args.python).resolve())
    scenario = next(
        s for s in build_scenarios(quick=args.quick) if s.name == "no-limit"
    )
    raw = args.out / "overhead"
    raw.mkdir(parents=True, exist_ok=True)
    pairs: list[dict[str, Any]] = []
    with run_sandbox_process(None) as sandbox:
        startup = measure_startup(sandbox, [START_HIGH, PLAIN], raw, args.python)
        for index in range(args.pairs):
            order = [PLAIN, START_HIGH] if index % 2 == 0 else [START_HIGH, PLAIN]
            cpu: dict[str, float | None] = {}
            for variant in order:
                run = run_variant(
                    sandbox,
                    scenario,
                    variant,
                    raw / f"{index}-{variant}",
                    args.python,
                    startup,
                )
                cpu[variant] = cpu_ms_per_request(run)
            plugin, plain = cpu[START_HIGH], cpu[PLAIN]
            ratio = plugin / plain if plugin and plain else None
            pairs.append(
                {
                    "plugin_ms": plugin,
                    "plain_ms": plain,
                    "ratio": ratio,
                    "first": order[0],
                }
            )
            log(
                f"pair {index + 1}/{args.pairs}: plugin {plugin or 0:.3f} ms, plain "
                f"{plain or 0:.3f} ms per request, ratio {ratio or 0:.3f}"
            )
    ratios = [p["ratio"] for p in pairs if p["ratio"] is not None]
    if not ratios:
        log("no pair completed")
        return 1
    summary = {
        "scenario": scenario.name,
        "urls": scenario.urls,
        "pairs": len(ratios),
        "startup_cpu_seconds": startup,
        "ratio": spread(ratios),
        "plugin_ms": spread([p["plugin_ms"] for p in pairs if p["ratio"]]),
        "plain_ms": spread([p["plain_ms"] for p in pairs if p["ratio"]]),
        "target": TARGET,
        "runs": pairs,
    }
    (args.out / "overhead.json").write_text(json.dumps(summary, indent=1))
    r = summary["ratio"]
    log(
        f"CPU per request, plugin / plain, {len(ratios)} pairs: median {r['median']:.3f}"
        f" (quartiles {r['q1']:.3f}-{r['q3']:.3f}, range {r['min']:.3f}-"
        f"{r['max']:.3f}); target <= {TARGET}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
