"""Static pools, a budget per exit IP (issue 11): ``bench/run.py --scenarios
static-exits`` (part of a full ``bench/run.py``) or ``python
bench/static_exits.py --out DIR``.

One site that limits each exit IP on its own: three static exits (sandbox
sessions pinned to 127.0.1.11-13) allowed 20, 10 and 5 requests/s (token
bucket per IP with the burst of every other scenario, 10, or ``--burst``;
2 is far stricter at these rates), answers P50 200 ms / P95 350 ms behind
the static pool's 90 ms hop. Variants, each a real crawl through the sandbox gateway:

* ``plugin``: ``JUSTPROXIES_STATIC_EXITS`` lists the three exits; each
  (exit, site) pair has its own slot and controller.
* ``one-controller``: the same three exits, taken in turn by each request's
  ``meta['justproxies_session']``, with one slot and one controller for the
  site (what the plugin did before per-exit budgets).
* ``exits-fixed``: per-exit slots, throttle off (each pair at the preset's
  per-IP start, 20).

Measured from the site's counters: each exit's 429 share (target <= 3%),
the admitted rate over the crawl and from its 5th second, against the 35
requests/s the three exits allow together (target >= 90%), URLs lost.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import metrics
from scenarios import BURST, P50_MS, P95_MS, hop_latency_ms

from scrapy_justproxies.presets import PRESETS
from scrapy_justproxies.sandbox import SandboxProcess, run_sandbox_process
from scrapy_justproxies.sandbox.crawl import run_crawl

NAME = "static-exits"
HOST = "static.test"
# session id -> (exit IP number, its own limit in requests/s)
EXITS = {"exit20": (11, 20.0), "exit10": (12, 10.0), "exit5": (13, 5.0)}
TOTAL_RATE = sum(rate for _, rate in EXITS.values())
VARIANTS = ("plugin", "one-controller", "exits-fixed")
TARGET_SHARE_429 = 0.03
TARGET_ADMITTED = 0.90


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sandbox_config(user: str, password: str, burst: float) -> dict[str, Any]:
    return {
        "gateway": {
            "users": {user: password},
            "hop_latency_ms": hop_latency_ms(PRESETS["static"]),
            "static_sessions": {name: index for name, (index, _) in EXITS.items()},
        },
        "sites": {
            HOST: {
                "limit_key": "exit_ip",
                "burst": burst,
                "exit_rates": {
                    f"127.0.1.{index}": rate for index, rate in EXITS.values()
                },
                "latency_p50_ms": P50_MS,
                "latency_p95_ms": P95_MS,
                "pages": 10_000,
            }
        },
    }


def run_variant(
    sandbox: SandboxProcess,
    variant: str,
    urls: int,
    workdir: Path,
    python: str,
    burst: float,
    trace: Path | None = None,
) -> dict[str, Any]:
    timeout = round(3 * urls / TOTAL_RATE)  # the one-controller variant is slow
    settings: dict[str, Any] = {
        "ADDONS": {"scrapy_justproxies.Addon": 100},
        "JUSTPROXIES_POOL": "static",
        "JUSTPROXIES_STATE_FILE": None,
        "CLOSESPIDER_TIMEOUT": timeout,
    }
    if trace is not None:
        trace.mkdir(parents=True, exist_ok=True)
        settings["JUSTPROXIES_TRACE"] = str(trace / f"{variant}.jsonl")
    names = list(EXITS)
    requests = [
        {"url": sandbox.site_url(HOST, f"/item/{i}")} for i in range(1, urls + 1)
    ]
    if variant == "one-controller":
        for i, request in enumerate(requests):
            request["meta"] = {"justproxies_session": names[i % len(names)]}
    else:
        settings["JUSTPROXIES_STATIC_EXITS"] = names
        if variant == "exits-fixed":
            settings["JUSTPROXIES_THROTTLE_ENABLED"] = False
    sandbox.client.configure(sandbox_config(sandbox.user, sandbox.password, burst))
    sandbox.client.reset()
    result = run_crawl(
        workdir / variant,
        reactor="asyncio",
        requests=requests,
        settings=settings,
        env={
            "JUSTPROXIES_GATEWAY": sandbox.gateway,
            "JUSTPROXIES_USER": sandbox.user,
            "JUSTPROXIES_PASSWORD": sandbox.password,
        },
        python=python,
        timeout=timeout + 90,
        log_level="INFO",
    )
    stats = sandbox.client.stats()
    site = stats["sites"].get(HOST, {})
    series = metrics.dense_series(site.get("per_second", []))
    by_ip = site.get("exits", {})
    exits = {}
    for name, (index, rate) in EXITS.items():
        counts = by_ip.get(f"127.0.1.{index}", {"admitted": 0, "rate_limited": 0})
        exits[name] = {
            "rate": rate,
            **counts,
            "share_429": metrics.share_429(counts["admitted"], counts["rate_limited"]),
        }
    record: dict[str, Any] = {
        "variant": variant,
        "reason": result.reason,
        "statuses": {str(k): v for k, v in result.statuses.items()},
        "lost": urls - result.statuses.get(200, 0),
        "wall_seconds": round(result.wall_seconds, 1),
        "exits": exits,
        "share_429": metrics.share_429(
            site.get("admitted", 0), site.get("rate_limited", 0)
        ),
        "limits_final": {
            key.removeprefix("justproxies/limit_final/"): value
            for key, value in result.stats.items()
            if key.startswith("justproxies/limit_final/")
        },
        "secret_leaked": sandbox.password in result.everything_written(),
        "series": [s.__dict__ for s in series],
    }
    span = metrics.active_span(series)
    if span is not None:
        first, last = span
        whole = metrics.window(series, first, last)
        steady = metrics.window(series, first + 4, last)
        for key, seconds in (("whole", whole), ("from_5th", steady)):
            if seconds:
                admitted = sum(s.admitted for s in seconds) / len(seconds)
                record[f"admitted_per_s_{key}"] = round(admitted, 2)
                record[f"admitted_share_{key}"] = round(admitted / TOTAL_RATE, 3)
    return record


def render(results: dict[str, Any], urls: int, burst: float) -> str:
    lines = [
        f"## {NAME}: three static exits allowed 20, 10 and 5 req/s on one site",
        "",
        f"{urls} URLs of `{HOST}` (token bucket per exit IP, burst "
        f"{burst:g}; P50 {P50_MS:g} ms / P95 {P95_MS:g} ms, hop "
        f"{hop_latency_ms(PRESETS['static']):g} ms). Targets: each exit's 429 "
        f"share <= {TARGET_SHARE_429:.0%}, admitted >= {TARGET_ADMITTED:.0%} of "
        f"{TOTAL_RATE:g} req/s.",
        "",
        "| variant | 429 exit20 | 429 exit10 | 429 exit5 | admitted, whole run | "
        "admitted from 5th s | lost | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, record in results.items():
        shares = [
            f"{record['exits'][name]['share_429']:.1%} "
            f"({record['exits'][name]['admitted']} ok)"
            for name in EXITS
        ]
        whole = record.get("admitted_per_s_whole")
        steady = record.get("admitted_per_s_from_5th")
        lines.append(
            f"| {variant} | {' | '.join(shares)} | "
            f"{whole} req/s ({record.get('admitted_share_whole', 0):.0%}) | "
            f"{steady} req/s ({record.get('admitted_share_from_5th', 0):.0%}) | "
            f"{record['lost']} | {record['wall_seconds']} |"
        )
    return "\n".join(lines) + "\n"


def run(
    out: Path,
    *,
    quick: bool = False,
    python: str = sys.executable,
    burst: float = BURST,
    variants: tuple[str, ...] = VARIANTS,
    trace: bool = False,
) -> dict[str, Any]:
    """The variants in one sandbox; writes static-exits.json and .md (and,
    with ``trace``, each crawl's JUSTPROXIES_TRACE under ``out/trace``)."""
    urls = 350 if quick else 1050  # 10 s or 30 s at the exits' 35 req/s
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    with run_sandbox_process(None) as sandbox:
        for variant in variants:
            log(f"{NAME} [{variant}] ...")
            results[variant] = run_variant(
                sandbox, variant, urls, out / "raw" / NAME, python, burst,
                out / "trace" if trace else None,
            )  # fmt: skip
            record = results[variant]
            log(
                "  429 by exit "
                + ", ".join(f"{n} {record['exits'][n]['share_429']:.1%}" for n in EXITS)
                + f"; admitted {record.get('admitted_share_whole')} of "
                f"{TOTAL_RATE:g} req/s (from 5th s "
                f"{record.get('admitted_share_from_5th')}); lost {record['lost']}"
            )
    markdown = render(results, urls, burst)
    (out / f"{NAME}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / f"{NAME}.md").write_text(markdown)
    print(markdown)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument(
        "--burst", type=float, default=BURST, help="per exit IP (default %(default)g)"
    )
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated, of %(default)s",
    )
    parser.add_argument(
        "--trace", action="store_true", help="write each crawl's JUSTPROXIES_TRACE"
    )
    args = parser.parse_args(argv)
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    run(
        args.out, quick=args.quick, python=args.python, burst=args.burst,
        variants=variants, trace=args.trace,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
