"""What the benchmark runs: scenarios (sandbox site configs) and variants.

Pure data and settings builders; :mod:`run` does the running. Every scenario
is sized from one *phase length* (20 s in a full run, 6 s with ``--quick``):
URL counts are the site's rate times the time the crawl should take, so a
client that uses the whole rate finishes in about that time. The preset
scenarios use three quarters of a phase (they are four, and the whole run
should stay under 25 minutes on two cores).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import metrics

from scrapy_justproxies.presets import PRESETS, PoolPreset
from scrapy_justproxies.throttle import EXIT_SLOW_START_RATE

# The sandbox site's default latency in the scenarios that don't model a pool.
P50_MS = 200.0
P95_MS = 350.0
BURST = 10.0
# Above this, the crawler itself (one Scrapy process, about 3-4 ms of CPU per
# proxied request on the 2-core reference machine, where it tops out near
# 250-300 requests/s) would be the bottleneck, not the site's limit.
DEFAULT_MAX_RATE = 150.0

VARIANTS = ("plugin", "fixed-low", "fixed-high", "autothrottle")
PLAIN = "plain-scrapy"
# The plugin pausing the whole slot on Retry-After instead of delaying only
# the one request (JUSTPROXIES_RETRY_AFTER_MODE = "slot"): which serves better.
PAUSE_SLOT = "plugin-pause-slot"
# The plugin starting every domain at the high end: with no limit to find it
# stays there, so next to plain Scrapy it shows the overhead alone, at the
# same concurrency for the whole crawl.
START_HIGH = "plugin-start-high"
# The plugin (as START_HIGH) writing a JUSTPROXIES_TRACE: the trace's overhead.
TRACE = "plugin-trace"
# Issue 9 (learning): the second crawl of a warm-start scenario, a crawl
# killed with SIGKILL midway and the crawl after it, and the plugin without
# slow start (its first volley is the preset's start level at once).
WARM = "plugin-warm"
KILLED = "plugin-killed"
AFTER_KILL = "plugin-after-kill"
NO_SLOW_START = "plugin-no-slow-start"
LEARNING_VARIANTS = (WARM, KILLED, AFTER_KILL, NO_SLOW_START)
# The plugin slow-starting rate-first (JUSTPROXIES_THROTTLE_SLOW_START_RATE):
# by default on the low-rate scenario, elsewhere when named in --variants.
RATE_FIRST = "plugin-rate-first"
RATE_FIRST_RATE = EXIT_SLOW_START_RATE  # the pace static exits start at
ALL_VARIANTS = (
    *VARIANTS,
    PAUSE_SLOT,
    START_HIGH,
    TRACE,
    PLAIN,
    *LEARNING_VARIANTS,
    RATE_FIRST,
)
# ``fixed-<C>`` (e.g. ``fixed-12``): the throttle off and the per-domain
# concurrency fixed at C. Run on any scenario when named in --variants (never
# by default): a sweep of them is the frontier of fixed-concurrency clients.
FIXED_PREFIX = "fixed-"
# Issue 9, the ramp above the preset's start: the plugin doubles up to twice
# the start level, then grows the guide's way, +25% per clean window
# (JUSTPROXIES_THROTTLE_SLOW_START_UNTIL = 2, the default); these double up
# to the maximum (``plugin-ramp-max``, 0: before) or only up to the start
# (``plugin-ramp-start``, 1). Run on any scenario when named in --variants,
# never by default.
RAMP_VARIANTS: dict[str, float] = {"plugin-ramp-max": 0.0, "plugin-ramp-start": 1.0}
# The plugin as ``plugin``, writing a JUSTPROXIES_TRACE (moved to the crawl's
# work directory as trace.jsonl): its decisions, on any scenario when named.
TRACED = "plugin-traced"


def traced_file() -> Path:
    """Where a ``plugin-traced`` crawl writes its trace."""
    return Path(tempfile.gettempdir()) / f"bench-traced-{os.getpid()}.jsonl"


def extra_variant(variant: str) -> bool:
    """Run on any scenario when named in --variants, never by default."""
    return (
        variant in (TRACED, RATE_FIRST)
        or variant in RAMP_VARIANTS
        or fixed_concurrency(variant) is not None
    )


def fixed_concurrency(variant: str) -> int | None:
    """C of a ``fixed-<C>`` variant (None: not one)."""
    if variant.startswith(FIXED_PREFIX) and variant[len(FIXED_PREFIX) :].isdigit():
        value = int(variant[len(FIXED_PREFIX) :])
        return value if value >= 1 else None
    return None


# How each scenario kind turns into a "rate" for goodput.
RATE = "rate"  # token bucket: the rate in force (schedule included)
CAP = "cap"  # in-flight cap: cap ÷ mean latency
UNLIMITED = "unlimited"  # no limit: absolute req/s, compared with plain Scrapy


@dataclass(frozen=True)
class Site:
    """One virtual host of the sandbox site and the URLs crawled on it."""

    host: str
    urls: int
    rate: float | None = None
    schedule: tuple[tuple[float, float | None], ...] = ()
    inflight_cap: int | None = None
    p50_ms: float = P50_MS
    p95_ms: float = P95_MS
    burst: float = BURST
    limiter: str = "token_bucket"
    """The sandbox's limiter: token_bucket, fixed_window or gcra."""
    window_seconds: float = 20.0
    latency_schedule: tuple[tuple[float, float, float], ...] = ()
    """``(t, p50_ms, p95_ms)``: the site's answer time from ``t`` on."""

    @property
    def mean_latency_ms(self) -> float:
        return metrics.lognormal_mean_ms(self.p50_ms, self.p95_ms)

    def mean_latency_ms_at(self, t: float) -> float:
        p50, p95 = self.p50_ms, self.p95_ms
        for at, p50_ms, p95_ms in self.latency_schedule:
            if at <= t:
                p50, p95 = p50_ms, p95_ms
        return metrics.lognormal_mean_ms(p50, p95)

    def policy(self) -> dict[str, Any]:
        """The sandbox ``HostPolicy`` as JSON."""
        return {
            "limiter": self.limiter,
            "window_seconds": self.window_seconds,
            "latency_schedule": [list(entry) for entry in self.latency_schedule],
            "rate": self.rate,
            "burst": self.burst,
            "inflight_cap": self.inflight_cap,
            "latency_p50_ms": self.p50_ms,
            "latency_p95_ms": self.p95_ms,
            "retry_after": "seconds",
            "schedule": [[at, rate] for at, rate in self.schedule],
            # /item/N exists for N <= pages * 10.
            "pages": max(1000, math.ceil(self.urls / 10) + 1),
        }

    def rate_at(self, t: float) -> float | None:
        """The "rate" goodput is measured against at schedule second ``t``."""
        if self.inflight_cap is not None and self.rate is None:
            return metrics.inflight_cap_rate(
                self.inflight_cap, self.mean_latency_ms_at(t)
            )
        return metrics.rate_at(self.rate, self.schedule, t)

    def ideal_concurrency(self, t: float) -> float | None:
        """Little's law: what a client needs in flight to use the whole rate."""
        if self.inflight_cap is not None and self.rate is None:
            return float(self.inflight_cap)
        rate = self.rate_at(t)
        if rate is None:
            return None
        return metrics.ideal_concurrency(rate, self.mean_latency_ms_at(t))

    def describe(self) -> str:
        parts = []
        if self.rate is not None and self.limiter == "fixed_window":
            parts.append(
                f"{self.rate * self.window_seconds:g} per {self.window_seconds:g} s "
                "(fixed window)"
            )
        elif self.rate is not None and self.limiter == "sliding_window":
            parts.append(
                f"{self.rate * self.window_seconds:g} in any {self.window_seconds:g} s "
                "(sliding window)"
            )
        elif self.rate is not None and self.limiter == "gcra":
            parts.append(f"{self.rate:g} req/s (GCRA, burst {self.burst:g})")
        elif self.rate is not None:
            parts.append(f"{self.rate:g} req/s (burst {self.burst:g})")
        for at, rate in self.schedule:
            parts.append(
                f"{'no limit' if rate is None else f'{rate:g} req/s'} from t = {at:g} s"
            )
        if self.inflight_cap is not None:
            parts.append(f"in-flight cap {self.inflight_cap}")
        if not parts:
            parts.append("no limit")
        parts.append(
            f"latency P50 {self.p50_ms:g} ms / P95 {self.p95_ms:g} ms"
            f" (mean {self.mean_latency_ms:.0f} ms)"
        )
        for at, p50, p95 in self.latency_schedule:
            parts.append(f"P50 {p50:g} ms / P95 {p95:g} ms from t = {at:g} s")
        parts.append(f"{self.urls} URLs")
        return f"`{self.host}`: " + ", ".join(parts)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    pool: str
    sites: tuple[Site, ...]
    kind: str = RATE
    change_at: float | None = None
    """Schedule time of the rate change (drop, rise)."""
    settle: float = 10.0
    """How long after ``change_at`` the 429 share is judged again."""
    timeout: float = 35.0
    """``CLOSESPIDER_TIMEOUT`` of every run of this scenario."""
    variants: tuple[str, ...] = VARIANTS
    notes: tuple[str, ...] = ()
    state: bool = False
    """The plugin variants share one JUSTPROXIES_STATE_FILE (warm start);
    otherwise every crawl starts cold (the state file is off)."""
    shifts: tuple[float, ...] = ()
    """Schedule times where the site's answer time changes."""
    state_from: str | None = None
    """A warm-start scenario that starts from the state file another
    scenario of the same run left (run before it), not from an empty one."""

    @property
    def preset(self) -> PoolPreset:
        return PRESETS[self.pool]

    @property
    def hop_ms(self) -> float:
        """The gateway's hop: the middle of the pool's P50 range. It delays
        every answer, 429s included, as an exit node does."""
        return hop_latency_ms(self.preset)

    @property
    def urls(self) -> int:
        return sum(site.urls for site in self.sites)

    def sandbox_config(self, user: str, password: str) -> dict[str, Any]:
        return {
            "gateway": {"users": {user: password}, "hop_latency_ms": self.hop_ms},
            "sites": {site.host: site.policy() for site in self.sites},
        }


PAUSE_SLOT_NOTE = (
    f'`{PAUSE_SLOT}`: the plugin with `JUSTPROXIES_RETRY_AFTER_MODE = "slot"` '
    "(a 429's `Retry-After` pauses the whole slot) instead of the default "
    '`"request"` (only the rate-limited request waits).'
)


def _timeout(expected_seconds: float) -> float:
    """The run bound: the expected duration plus 30% (at least 12 s) headroom."""
    return float(math.ceil(expected_seconds + max(12.0, 0.3 * expected_seconds)))


def _limit_change(
    name: str,
    title: str,
    rates: tuple[float, float],
    phase: float,
    settle: float,
    **extra: Any,
) -> Scenario:
    """``a.test`` at ``rates[0]`` req/s, at ``rates[1]`` from t = ``phase``,
    with a phase's worth of URLs at each rate; judged again ``settle``
    seconds after the change."""
    before, after = rates
    site = Site(
        "a.test",
        round(before * phase + after * phase),
        rate=before,
        schedule=((phase, after),),
    )
    return Scenario(
        name,
        title,
        "mobile",
        (site,),
        change_at=phase,
        settle=settle,
        timeout=_timeout(2 * phase),
        **extra,
    )


def preset_burst(rate: float) -> float:
    """200 ms worth of the rate: the steady scenario's 10 tokens at 50 req/s.

    A fixed 10 tokens at 150 req/s would be 67 ms of slack: the opening
    volley of any client (its whole start concurrency at once) would mostly
    draw 429s, which says more about the volley than about the limit.
    """
    return max(BURST, round(rate / 5))


def preset_site_rate(preset: PoolPreset, mean_latency_ms: float) -> float:
    """A rate whose ideal concurrency is the middle of the preset's range."""
    middle = (preset.domain_concurrency_start + preset.domain_concurrency_max) / 2
    return middle / (mean_latency_ms / 1000.0)


def build_scenarios(
    *, quick: bool = False, max_rate: float = DEFAULT_MAX_RATE
) -> list[Scenario]:
    """Every scenario, sized for a full run (or a quick one)."""
    phase = 6.0 if quick else 20.0
    settle = float(round(phase / 2))
    tail = phase + 5  # how long two-sites and inflight-cap should take
    mobile = PRESETS["mobile"]
    steady_rate = 50.0
    scenarios: list[Scenario] = [
        Scenario(
            "steady",
            "Steady limit",
            "mobile",
            (Site("a.test", round(steady_rate * phase), rate=steady_rate),),
            timeout=_timeout(phase),
            variants=(*VARIANTS, PAUSE_SLOT),
            notes=(PAUSE_SLOT_NOTE,),
        ),
        _limit_change(
            "drop",
            "The site lowers its limit mid-crawl",
            (50.0, 20.0),
            phase,
            settle,
            variants=(*VARIANTS, PAUSE_SLOT),
            notes=(PAUSE_SLOT_NOTE,),
        ),
        _limit_change(
            "rise", "The site raises its limit mid-crawl", (20.0, 50.0), phase, settle
        ),
        Scenario(
            "two-sites",
            "Two sites with different limits at once",
            "mobile",
            (
                Site("a.test", round(50 * tail), rate=50.0),
                Site("b.test", round(20 * tail), rate=20.0),
            ),
            timeout=_timeout(tail),
            notes=(
                "URLs are interleaved in proportion to the two rates (5 a : 2 b), "
                "so a client that uses both limits finishes both sites together.",
            ),
        ),
        Scenario(
            "inflight-cap",
            "In-flight cap instead of a rate",
            "mobile",
            (
                Site(
                    "a.test",
                    round(
                        metrics.inflight_cap_rate(
                            8, metrics.lognormal_mean_ms(P50_MS, P95_MS)
                        )
                        * tail
                    ),
                    inflight_cap=8,
                ),
            ),
            kind=CAP,
            timeout=_timeout(tail),
            notes=(
                "The site answers 429 at once when 8 requests are in flight; the "
                '"rate" for goodput is cap ÷ mean latency.',
            ),
        ),
        Scenario(
            "no-limit",
            "No limit: the plugin's overhead",
            "mobile",
            (Site("a.test", round(200 * phase)),),
            kind=UNLIMITED,
            settle=settle,
            timeout=_timeout(phase),
            variants=(*VARIANTS, START_HIGH, TRACE, PLAIN),
            notes=(
                f"`{PLAIN}`: no add-on, the proxy in `meta['proxy']` by hand, the "
                f"same preset numbers with the per-domain concurrency at the high "
                f"end ({mobile.domain_concurrency_max} = `CONCURRENT_REQUESTS`), "
                "so Scrapy's own per-domain cap, which does not hold under the "
                "asyncio reactor on Scrapy 2.14+, makes no difference. Every "
                "variant runs under the asyncio reactor. Goodput is absolute "
                f"(req/s), and relative to `{PLAIN}`.",
                f"`{START_HIGH}`: the plugin (throttle on) with "
                "`CONCURRENT_REQUESTS_PER_DOMAIN` at the high end and "
                "`JUSTPROXIES_THROTTLE_SLOW_START = 0`, so it runs at "
                f"the same concurrency as `{PLAIN}` from the first second: its "
                "difference is the plugin's overhead alone; `plugin`'s also "
                "includes the ramp from the preset's low end.",
                f"`{TRACE}`: `{START_HIGH}` writing a `JUSTPROXIES_TRACE`; its CPU "
                f"per request against `{START_HIGH}`'s is the trace's overhead.",
            ),
        ),
    ]
    for name, preset in PRESETS.items():
        p50 = sum(preset.latency_p50_ms) / 2
        p95 = 1.6 * p50
        mean = metrics.lognormal_mean_ms(p50, p95)
        wanted = preset_site_rate(preset, mean)
        rate = float(round(min(wanted, max_rate)))
        ideal = metrics.ideal_concurrency(rate, mean)
        notes = [
            f"Site rate {rate:g} req/s at a mean latency of {mean:.0f} ms: ideal "
            f"concurrency {ideal:.0f}, against the preset's range "
            f"{preset.domain_concurrency_start}–{preset.domain_concurrency_max}."
        ]
        if rate < wanted:
            notes.append(
                f"The middle of the range would need {wanted:.0f} req/s; the rate "
                f"is capped at {max_rate:g} req/s (`--max-rate`) because one "
                "Scrapy process on this machine cannot push much more through the "
                "gateway, and the benchmark must measure the site's limit, not the "
                "crawler's CPU."
                + (
                    " So the optimum lies below the preset's low end: this run "
                    "tests backing off, not finding a level inside the range."
                    if ideal < preset.domain_concurrency_start
                    else ""
                )
            )
        scenarios.append(
            Scenario(
                f"preset-{name}",
                f"Pool preset `{name}`",
                name,
                (
                    Site(
                        "a.test",
                        round(rate * 0.75 * phase),
                        rate=rate,
                        burst=preset_burst(rate),
                        p50_ms=p50,
                        p95_ms=p95,
                    ),
                ),
                timeout=_timeout(0.75 * phase),
                notes=tuple(notes),
            )
        )
    scenarios += learning_scenarios(phase)
    return scenarios


def select(scenarios: list[Scenario], names: str | None) -> list[Scenario]:
    """The scenarios named in a comma list (``presets`` = the four presets)."""
    if not names:
        return scenarios
    by_name = {s.name: s for s in scenarios}
    wanted: list[str] = []
    for raw in names.split(","):
        name = raw.strip()
        if not name:
            continue
        if name == "presets":
            wanted += [s.name for s in scenarios if s.name.startswith("preset-")]
        elif name in by_name:
            wanted.append(name)
        elif f"preset-{name}" in by_name:
            wanted.append(f"preset-{name}")
        else:
            known = ", ".join([*by_name, "presets"])
            raise ValueError(f"unknown scenario {name!r} (known: {known})")
    return [by_name[n] for n in dict.fromkeys(wanted)]


def interleave(urls_by_site: list[list[str]]) -> list[str]:
    """Merge lists so each keeps its order and they spread evenly (by share)."""
    keyed = [
        ((i + 0.5) / len(urls), index, url)
        for index, urls in enumerate(urls_by_site)
        for i, url in enumerate(urls)
    ]
    return [url for _, _, url in sorted(keyed)]


@dataclass(frozen=True)
class RunSpec:
    """Everything :func:`run.run_crawl` needs for one variant."""

    settings: dict[str, Any]
    env: dict[str, str]
    meta: dict[str, Any]


def variant_spec(
    variant: str,
    preset: PoolPreset,
    *,
    timeout: float,
    gateway: str,
    user: str,
    password: str,
    state_file: str | None = None,
) -> RunSpec:
    """Settings, environment and per-request meta of one variant."""
    common: dict[str, Any] = {"CLOSESPIDER_TIMEOUT": timeout}
    if variant == PLAIN:
        settings = {
            **preset.scrapy_settings(),
            "CONCURRENT_REQUESTS": preset.domain_concurrency_max,
            "CONCURRENT_REQUESTS_PER_DOMAIN": preset.domain_concurrency_max,
            **common,
        }
        proxy = f"http://{user}:{password}@{gateway}"
        return RunSpec(settings, {}, {"proxy": proxy})
    env = {
        "JUSTPROXIES_GATEWAY": gateway,
        "JUSTPROXIES_USER": user,
        "JUSTPROXIES_PASSWORD": password,
    }
    settings = {
        "ADDONS": {"scrapy_justproxies.Addon": 100},
        "JUSTPROXIES_POOL": preset.name,
        **common,
    }
    # Cold unless the scenario shares a state file between its runs.
    settings["JUSTPROXIES_STATE_FILE"] = state_file
    if variant in ("plugin", TRACED, RATE_FIRST, *LEARNING_VARIANTS, *RAMP_VARIANTS):
        if variant == RATE_FIRST:
            settings["JUSTPROXIES_THROTTLE_SLOW_START_RATE"] = RATE_FIRST_RATE
        if variant in RAMP_VARIANTS:
            until = RAMP_VARIANTS[variant]
            settings["JUSTPROXIES_THROTTLE_SLOW_START_UNTIL"] = until
        if variant == TRACED:
            settings["JUSTPROXIES_TRACE"] = str(traced_file())
        if variant == NO_SLOW_START:
            settings["JUSTPROXIES_THROTTLE_SLOW_START"] = 0
    elif variant == PAUSE_SLOT:
        settings["JUSTPROXIES_RETRY_AFTER_MODE"] = "slot"
    elif variant in (START_HIGH, TRACE):
        settings["CONCURRENT_REQUESTS_PER_DOMAIN"] = preset.domain_concurrency_max
        # At the high end from the first request: no slow-start ramp, which
        # would send fewer requests in the same time (and spread the crawl's
        # fixed per-second CPU over fewer of them).
        settings["JUSTPROXIES_THROTTLE_SLOW_START"] = 0
        if variant == TRACE:
            trace = Path(tempfile.gettempdir()) / f"bench-trace-{os.getpid()}.jsonl"
            settings["JUSTPROXIES_TRACE"] = str(trace)
    elif (fixed := fixed_concurrency(variant)) is not None:
        settings["JUSTPROXIES_THROTTLE_ENABLED"] = False
        settings["CONCURRENT_REQUESTS_PER_DOMAIN"] = fixed
    elif variant in ("fixed-low", "fixed-high"):
        settings["JUSTPROXIES_THROTTLE_ENABLED"] = False
        settings["CONCURRENT_REQUESTS_PER_DOMAIN"] = (
            preset.domain_concurrency_start
            if variant == "fixed-low"
            else preset.domain_concurrency_max
        )
    elif variant == "autothrottle":
        settings["JUSTPROXIES_THROTTLE_ENABLED"] = False
        settings["AUTOTHROTTLE_ENABLED"] = True
        settings["CONCURRENT_REQUESTS_PER_DOMAIN"] = preset.domain_concurrency_start
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return RunSpec(settings, env, {})


# -- issue 9: learning (cold start, limiter kinds, answer-time shift, warm) -----


def hop_latency_ms(preset: PoolPreset) -> float:
    """The middle of the preset's P50 range: the gateway hop of every answer."""
    return sum(preset.latency_p50_ms) / 2


KILL_AFTER = 0.5
"""Share of the phase after which the ``plugin-killed`` crawl gets SIGKILL."""

LEARNING_NOTE = (
    "The gateway's hop latency (the middle of the pool's P50 range) delays "
    "every answer, 429s included. The plugin starts cold (state file off) "
    f"unless the scenario is a warm start. `{NO_SLOW_START}`: the plugin with "
    "`JUSTPROXIES_THROTTLE_SLOW_START = 0`, its first volley at the preset's "
    "start level."
)


def learning_scenarios(phase: float) -> list[Scenario]:
    """Cold start 3-5x above the knee (three pools and every limiter kind),
    answer-time shifts on a rate and an in-flight limit, warm starts."""
    cold_variants = ("plugin", NO_SLOW_START, "fixed-low", "autothrottle")
    mean = metrics.lognormal_mean_ms(P50_MS, P95_MS)
    cap_urls = round(metrics.inflight_cap_rate(8, mean) * phase)
    shift_schedule = ((phase, 150.0, 262.0), (2 * phase, 400.0, 700.0))
    out = [
        Scenario(
            "cold-datacenter",
            "Cold start, datacenter preset (start 50) on a 50 req/s site",
            "datacenter",
            (Site("a.test", round(50 * phase), rate=50.0),),
            timeout=_timeout(phase),
            variants=cold_variants,
            notes=(LEARNING_NOTE,),
        ),
        Scenario(
            "cold-residential-cap",
            "Cold start, residential preset (start 30) on an in-flight cap of 8",
            "residential",
            (Site("a.test", cap_urls, inflight_cap=8),),
            kind=CAP,
            timeout=_timeout(phase),
            variants=cold_variants,
            notes=(LEARNING_NOTE,),
        ),
        Scenario(
            "cold-residential-two",
            "Cold start, residential preset on two sites, 50 + 20 req/s",
            "residential",
            (
                Site("a.test", round(50 * phase), rate=50.0),
                Site("b.test", round(20 * phase), rate=20.0),
            ),
            timeout=_timeout(phase),
            variants=cold_variants,
            notes=(LEARNING_NOTE,),
        ),
    ]
    # A small site: 5 req/s with a burst of 10. Its knee is 2.8 in flight
    # (5/s x 0.56 s answers, the hop included): the mobile preset's start,
    # 16, is nearly six times above it.
    low_rate = 5.0
    out.append(
        Scenario(
            "cold-low-rate",
            "Cold start, mobile preset on a 5 req/s site (burst 10)",
            "mobile",
            (Site("a.test", round(low_rate * phase * 1.5), rate=low_rate),),
            timeout=_timeout(1.5 * phase),
            variants=(*cold_variants, RATE_FIRST),
            notes=(
                LEARNING_NOTE,
                f"`{RATE_FIRST}`: the plugin with "
                f"`JUSTPROXIES_THROTTLE_SLOW_START_RATE = {RATE_FIRST_RATE:g}`.",
            ),
        )
    )

    def limited_cold(
        name: str, title: str, pool: str, rate: float, limiter: str, **extra: Any
    ) -> Scenario:
        """A cold start of ``pool``'s preset on one site of ``limiter``."""
        return Scenario(
            name,
            f"Cold start, {pool} preset on {title}",
            pool,
            (
                Site(
                    "a.test",
                    round(rate * phase * 1.5),
                    rate=rate,
                    limiter=limiter,
                    **extra,
                ),
            ),
            timeout=_timeout(1.5 * phase),
            variants=cold_variants,
            notes=(LEARNING_NOTE,),
        )

    for limiter, title, extra in (
        ("fixed_window", "a fixed window, 1,000 per 20 s", {"window_seconds": 20.0}),
        ("sliding_window", "a sliding window, 100 per 2 s", {"window_seconds": 2.0}),
        ("gcra", "GCRA, 50 req/s, burst 10", {}),
    ):
        name = f"cold-{limiter.replace('_', '-')}"
        out.append(limited_cold(name, title, "datacenter", 50.0, limiter, **extra))
    # The same sliding window behind the slower pools' hops: slow start's
    # ramp spends the count over more answer times, so the site often frees
    # places soon after its first 429s (what it admitted a window before)
    # and the hold does not find it closed.
    for pool, count in (("residential", 100), ("mobile", 40)):
        out.append(
            limited_cold(
                f"cold-{pool}-sliding-window",
                f"a sliding window, {count} per 2 s",
                pool,
                count / 2,
                "sliding_window",
                window_seconds=2.0,
            )
        )
    for name, title, site, kind in (
        (
            "shift-rate",
            "Answer time 0.4 -> 0.15 -> 0.4 s on a 50 req/s site",
            Site(
                "a.test",
                round(50 * 3 * phase),
                rate=50.0,
                p50_ms=400.0,
                p95_ms=700.0,
                latency_schedule=shift_schedule,
            ),
            RATE,
        ),
        (
            "shift-cap",
            "Answer time 0.4 -> 0.15 -> 0.4 s on an in-flight cap of 8",
            Site(
                "a.test",
                round(8 * phase * (2 / (400 * 1.1 / 1000) + 1 / (150 * 1.1 / 1000))),
                inflight_cap=8,
                p50_ms=400.0,
                p95_ms=700.0,
                latency_schedule=shift_schedule,
            ),
            CAP,
        ),
    ):
        out.append(
            Scenario(
                name,
                title,
                "mobile",
                (site,),
                kind=kind,
                change_at=phase,
                settle=5.0,
                shifts=(phase, 2 * phase),
                timeout=_timeout(3 * phase),
                variants=("plugin", "fixed-low", "autothrottle"),
                notes=(LEARNING_NOTE,),
            )
        )
    out += [
        Scenario(
            "warm-steady",
            "Warm start: the steady crawl run twice",
            "mobile",
            (Site("a.test", round(50 * phase), rate=50.0),),
            timeout=_timeout(phase),
            variants=("plugin", WARM),
            state=True,
            notes=(
                LEARNING_NOTE,
                f"`plugin` runs first with an empty state file; `{WARM}` is the "
                "second crawl, from the file the first one left.",
            ),
        ),
        Scenario(
            "warm-lowered",
            "Warm start on a site that lowered its limit since (50 -> 20 req/s)",
            "mobile",
            (Site("a.test", round(20 * phase), rate=20.0),),
            change_at=0.0,
            settle=10.0,
            timeout=_timeout(phase),
            variants=(WARM,),
            state=True,
            state_from="warm-steady",
            notes=(
                LEARNING_NOTE,
                f"`{WARM}` starts from the state file `warm-steady` left (learned "
                "at 50 req/s; that scenario must run first in the same run) on a "
                "site that now admits 20 req/s. Target: like the drop scenario, "
                "429 share at most 5% from t = 10 s.",
            ),
        ),
        Scenario(
            "warm-kill",
            "Warm start after kill -9 of the first crawl",
            "mobile",
            (Site("a.test", round(50 * phase), rate=50.0),),
            timeout=_timeout(phase),
            variants=(KILLED, AFTER_KILL),
            state=True,
            notes=(
                LEARNING_NOTE,
                f"`{KILLED}` gets SIGKILL {KILL_AFTER * phase:g} s into the crawl "
                f"(its numbers cover that part only); `{AFTER_KILL}` starts from "
                "the state file it left.",
            ),
        ),
    ]
    return out


def shift_metrics(
    scenario: Scenario, seconds: list[metrics.Second]
) -> dict[str, Any] | None:
    """Per answer-time shift: the 429 share from 5 s after it to the next
    one, the goodput there against the phase's ideal, and the 429s in the
    3 s after it."""
    if not scenario.shifts:
        return None
    site = scenario.sites[0]
    ends = [*scenario.shifts[1:], math.inf]
    out: dict[str, Any] = {}
    for at, end in zip(scenario.shifts, ends, strict=True):
        later = [s for s in seconds if at + 5 <= s.t < end and s.answers]
        out[f"{at:g}"] = {
            "share_429_from_5s": metrics.share_429_in(later),
            "goodput_from_5s": metrics.goodput_share(later, site.rate_at),
            "rate_limited_3s": sum(
                s.rate_limited for s in seconds if at <= s.t < at + 3
            ),
        }
    return out


# -- several crawl processes on one site (issue 11; bench/cluster.py runs them) --

LOCAL = "local"  # each process its own budgets (no JUSTPROXIES_SHARED_STATE)
SHARED = "shared"  # one budget per site through Redis
CLUSTER_VARIANTS = (LOCAL, SHARED)


@dataclass(frozen=True)
class ClusterScenario:
    """Several crawl processes started together on one site."""

    name: str
    title: str
    site: Site
    processes: int = 3
    urls_per_process: int = 600
    variants: tuple[str, ...] = CLUSTER_VARIANTS
    kill_at: float | None = None
    """Seconds after the start: ``kill -9`` of the first process."""
    redis_outage: tuple[float, float] | None = None
    """(start, length) seconds: Redis stopped, then started again (empty)."""
    pool: str = "residential"

    @property
    def timeout(self) -> float:
        rate = self.site.rate or 50.0
        # An outage or a kill may slow the crawl: the bound is not the target.
        extra = 30.0 if self.kill_at or self.redis_outage else 0.0
        return _timeout(self.processes * self.urls_per_process / rate) + extra


def build_cluster_scenarios(quick: bool = False) -> list[ClusterScenario]:
    """Three processes on one 50 req/s site: alone, one of them killed, and
    Redis stopped for a while (the targets of issue 11)."""
    per_process = 200 if quick else 600
    site = Site("cluster.test", urls=3 * per_process, rate=50.0)
    return [
        ClusterScenario(
            "cluster-3",
            "3 processes, one 50 req/s site",
            site,
            urls_per_process=per_process,
        ),
        ClusterScenario(
            "cluster-kill",
            "3 processes, kill -9 of one after 12 s",
            site,
            urls_per_process=per_process,
            kill_at=8.0 if quick else 12.0,
        ),
        ClusterScenario(
            "cluster-redis-outage",
            "3 processes, Redis stopped for 10 s",
            site,
            urls_per_process=per_process,
            variants=(SHARED,),
            redis_outage=(8.0, 5.0) if quick else (10.0, 10.0),
        ),
    ]
