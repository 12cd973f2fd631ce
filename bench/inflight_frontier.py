"""The in-flight-cap frontier in the seeded simulation (no crawl, seconds).

What any fixed-concurrency client can get from a site that caps requests in
flight behind a hop that delays every request on its way there (as the
sandbox's gateway does): for each fixed per-domain concurrency C, goodput
against cap ÷ mean answer time and the 429 share; then the plugin's
controller (the preset's start and maximum, slow start on) on the same
site. tests/sim_site.py's crawler and ``InflightCap``; every 429 is retried
a second later (the sandbox's ``Retry-After: 1``).

    .venv/bin/python bench/inflight_frontier.py                 # both setups
    .venv/bin/python bench/inflight_frontier.py --seeds 10 --duration 120

The real crawls of the same sweep: ``bench/run.py --scenarios inflight-cap
--variants fixed-6,fixed-8,...`` (one command per four C: BENCH BUDGET).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scenarios import hop_latency_ms  # noqa: E402

from scrapy_justproxies.controller import ControllerSettings  # noqa: E402
from scrapy_justproxies.presets import PRESETS  # noqa: E402
from tests.sim_site import LATENCY_MEAN, InflightCap, simulate  # noqa: E402

CAP = 8
SETUPS = {
    # scenario: (pool, the first seconds skipped: none, the whole crawl counts)
    "inflight-cap": "mobile",
    "cold-residential-cap": "residential",
}
SWEEP = (6, 8, 10, 11, 12, 13, 14, 16, 20)
TARGET_429 = 0.03


def measure(
    pool: str, fixed: int | None, seeds: int, duration: float
) -> tuple[float, float]:
    """Mean goodput share and 429 share over ``seeds`` runs."""
    preset = PRESETS[pool]
    hop = hop_latency_ms(preset) / 1000
    settings = (
        None
        if fixed is not None
        else ControllerSettings(
            start=preset.domain_concurrency_start,
            maximum=preset.domain_concurrency_max,
        )
    )
    ideal = CAP / LATENCY_MEAN
    goodputs, shares = [], []
    for seed in range(1, seeds + 1):
        run = simulate(
            InflightCap(CAP),
            settings,
            seed=seed,
            duration=duration,
            fixed_limit=fixed,
            hop=hop,
            site_429_latency=False,
        )
        goodputs.append(run.goodput(0, duration) / ideal)
        shares.append(run.share_429())
    return statistics.fmean(goodputs), statistics.fmean(shares)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=25.0)
    args = parser.parse_args(argv)
    print(
        f"Simulated: in-flight cap {CAP}, answer time P50 200 / P95 350 ms "
        f"(mean {LATENCY_MEAN * 1000:.0f} ms, ideal {CAP / LATENCY_MEAN:.1f}/s), "
        f"{args.duration:g} s, {args.seeds} seeds; goodput against the ideal, "
        "429 share of the site's answers."
    )
    for name, pool in SETUPS.items():
        hop = hop_latency_ms(PRESETS[pool])
        print(f"\n{name} (pool {pool}, hop {hop:.0f} ms)\n")
        print("| client | goodput | 429 share |")
        print("|---|---|---|")
        best: tuple[float, int] | None = None
        for c in SWEEP:
            goodput, share = measure(pool, c, args.seeds, args.duration)
            if share <= TARGET_429 and (best is None or goodput > best[0]):
                best = (goodput, c)
            print(f"| fixed {c} | {goodput:.1%} | {share:.1%} |")
        goodput, share = measure(pool, None, args.seeds, args.duration)
        print(f"| plugin's controller | {goodput:.1%} | {share:.1%} |")
        if best is not None:
            print(
                f"\nBest fixed C at <= {TARGET_429:.0%} 429s: {best[1]} ({best[0]:.1%})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
