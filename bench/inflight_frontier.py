"""The in-flight-cap frontier in the seeded simulation (no crawl, seconds).

What any fixed-concurrency client can get from a site that caps requests in
flight behind a hop that delays every request on its way there (as the
sandbox's gateway does): for each fixed per-domain concurrency C, goodput
against cap ÷ mean answer time and the 429 share; then the plugin's
controller (the preset's start and maximum, slow start on) on the same
site. tests/sim_site.py's crawler and ``InflightCap``; every 429 is retried
a second later (the sandbox's ``Retry-After: 1``).

Then what no sender behind the hop can beat by much: perfectly regular
sends at a share of cap ÷ mean answer time (the hop does not matter to an
open loop; sends are evenly spaced, retries included), the most regular
arrivals there are. A sender that knows every request's age at the site
cannot do much better, because the hop is longer than the spread of the
site's answer time: when a request arrives, the places it finds are held by
requests sent after its own decision. ``--oracle`` measures that too: a
sender that knows every send, arrival and departure at once and the answer
time's distribution (not its draws) sends whenever the chance that its
request finds the site full is at most p (about 20 s of CPU per row).

    .venv/bin/python bench/inflight_frontier.py                 # both setups
    .venv/bin/python bench/inflight_frontier.py --seeds 10 --duration 120

The real crawls of the same sweep: ``bench/run.py --scenarios inflight-cap
--variants fixed-6,fixed-8,...`` (one command per four C: BENCH BUDGET).
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scenarios import hop_latency_ms  # noqa: E402

from scrapy_justproxies.controller import ControllerSettings  # noqa: E402
from scrapy_justproxies.presets import PRESETS  # noqa: E402
from tests.sim_site import (  # noqa: E402
    LATENCY_MEAN,
    LATENCY_P50,
    LATENCY_SIGMA,
    InflightCap,
    simulate,
)

CAP = 8
SETUPS = {
    # scenario: (pool, the first seconds skipped: none, the whole crawl counts)
    "inflight-cap": "mobile",
    "cold-residential-cap": "residential",
}
SWEEP = (6, 8, 10, 11, 12, 13, 14, 16, 20)
PACED = (0.70, 0.75, 0.78, 0.80, 0.85, 0.90, 1.00)
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


def paced(share: float, seed: int, duration: float) -> tuple[float, float]:
    """Regular sends at ``share`` of cap ÷ mean answer time to the cap:
    (goodput share, 429 share)."""
    rng = random.Random(seed)
    gap = LATENCY_MEAN / CAP / share
    busy: list[float] = []  # when the site's busy places free up
    ok = refused = 0
    mu = math.log(LATENCY_P50)
    for i in range(math.floor(duration / gap)):
        t = i * gap
        while busy and busy[0] <= t:
            heapq.heappop(busy)
            ok += 1
        if len(busy) < CAP:
            heapq.heappush(busy, t + rng.lognormvariate(mu, LATENCY_SIGMA))
        else:
            refused += 1
    return ok / duration / (CAP / LATENCY_MEAN), refused / max(1, ok + refused)


def _survives(age: float) -> float:
    """P(answer time > age) of the site's lognormal."""
    if age <= 0:
        return 1.0
    z = (math.log(age) - math.log(LATENCY_P50)) / (LATENCY_SIGMA * math.sqrt(2))
    return 0.5 * math.erfc(z)


def oracle(
    hop: float, p_full: float, seed: int, duration: float, step: float = 0.001
) -> tuple[float, float]:
    """The sender that knows everything but the next answer times, behind a
    constant ``hop`` on the way to the site: (goodput share, 429 share)."""
    rng = random.Random(seed)
    mu = math.log(LATENCY_P50)
    coming: list[float] = []  # arrival times of requests on their way
    at_site: list[tuple[float, float]] = []  # (arrived, leaves) of admitted
    ok = refused = 0
    for i in range(math.floor(duration / step)):
        t = i * step
        ok += sum(1 for _, leaves in at_site if leaves <= t)
        at_site = [(a, leaves) for a, leaves in at_site if leaves > t]
        for arrival in sorted(a for a in coming if a <= t):
            if len(at_site) < CAP:
                at_site.append(
                    (arrival, arrival + rng.lognormvariate(mu, LATENCY_SIGMA))
                )
            else:
                refused += 1
        coming = [a for a in coming if a > t]
        while True:
            lands = t + hop
            # Each place still held when this request lands: an admitted
            # one that has not left yet, or one on its way there.
            held = [_survives(lands - a) / _survives(t - a) for a, _ in at_site]
            held += [_survives(lands - a) for a in coming]
            # P(at least CAP of them held): a Poisson-binomial tail.
            dist = [1.0] + [0.0] * CAP
            for q in held:
                dist[CAP] += dist[CAP - 1] * q
                for k in range(CAP - 1, 0, -1):
                    dist[k] = dist[k] * (1 - q) + dist[k - 1] * q
                dist[0] *= 1 - q
            if dist[CAP] > p_full:
                break
            coming.append(lands)
    return ok / duration / (CAP / LATENCY_MEAN), refused / max(1, ok + refused)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=25.0)
    parser.add_argument(
        "--oracle",
        action="store_true",
        help="also the all-knowing sender behind each setup's hop (slow)",
    )
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
    print(
        "\nAny sender: regular sends (open loop, the hop does not matter)\n\n"
        "| sends, share of cap ÷ answer time | goodput | 429 share |\n|---|---|---|"
    )
    for share in PACED:
        runs = [paced(share, seed, args.duration) for seed in range(1, args.seeds + 1)]
        goodput = statistics.fmean(g for g, _ in runs)
        refused = statistics.fmean(r for _, r in runs)
        print(f"| {share:.0%} | {goodput:.1%} | {refused:.1%} |")
    if args.oracle:
        print(
            "\nAll-knowing sender: sends while P(its request finds the site "
            "full) <= p\n\n| hop | p | goodput | 429 share |\n|---|---|---|---|"
        )
        hops = sorted({hop_latency_ms(PRESETS[pool]) for pool in SETUPS.values()})
        for hop_ms in (0.0, 100.0, *hops):
            for p_full in (0.03, 0.06):
                runs = [
                    oracle(hop_ms / 1000, p_full, seed, args.duration)
                    for seed in range(1, args.seeds + 1)
                ]
                goodput = statistics.fmean(g for g, _ in runs)
                refused = statistics.fmean(r for _, r in runs)
                print(
                    f"| {hop_ms:.0f} ms | {p_full:g} | {goodput:.1%} | {refused:.1%} |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
