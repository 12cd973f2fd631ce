"""Unit tests of the benchmark's metrics and pure helpers.

.venv/bin/pytest bench/test_metrics.py
"""

from __future__ import annotations

import math
import time
import xml.etree.ElementTree as ET

import charts
import evaluate
import metrics as m
import pytest
import report
import scenarios
from cluster import ShareWatch
from metrics import Second
from scrapy.settings import Settings

from scrapy_justproxies.config import SharedStateConfig
from scrapy_justproxies.presets import PRESETS
from scrapy_justproxies.sandbox.redis_server import run_redis, server_binary
from scrapy_justproxies.shared import Budget, Counts, RedisStore, Report


def buckets(*rows: tuple[int, int, int, int]) -> list[dict[str, int]]:
    return [
        {"t": t, "admitted": a, "rate_limited": r, "max_inflight": i}
        for t, a, r, i in rows
    ]


def seconds(*admitted: int, start: int = 0) -> list[Second]:
    return [Second(start + i, a, 0, 0) for i, a in enumerate(admitted)]


# -- series ----------------------------------------------------------------------


def test_dense_series_fills_gaps_with_zeros() -> None:
    series = m.dense_series(buckets((1, 5, 1, 3), (4, 2, 0, 1)))
    assert [s.t for s in series] == [1, 2, 3, 4]
    assert series[1] == Second(2)
    assert series[0] == Second(1, 5, 1, 3)
    assert m.dense_series([]) == []


def test_active_span_ignores_seconds_without_answers() -> None:
    series = [Second(0), Second(1, 3), Second(2), Second(3, 0, 2), Second(4)]
    assert m.active_span(series) == (1, 3)
    assert m.active_span([Second(0), Second(1)]) is None


def test_full_seconds_drops_the_partial_edges() -> None:
    series = seconds(0, 3, 10, 10, 4, 0)
    assert [s.t for s in m.full_seconds(series)] == [2, 3]


def test_full_seconds_of_a_very_short_crawl_keeps_everything_active() -> None:
    assert [s.t for s in m.full_seconds(seconds(0, 3, 4))] == [1, 2]
    assert m.full_seconds([]) == []


def test_window_is_half_open() -> None:
    assert [s.t for s in m.window(seconds(1, 1, 1, 1), 1, 3)] == [1, 2]


# -- rates ---------------------------------------------------------------------------


def test_rate_at_follows_the_schedule() -> None:
    schedule = [(20.0, 20.0), (40.0, None)]
    assert m.rate_at(50.0, schedule, 0) == 50.0
    assert m.rate_at(50.0, schedule, 19.99) == 50.0
    assert m.rate_at(50.0, schedule, 20) == 20.0
    assert m.rate_at(50.0, schedule, 41) is None
    assert m.rate_at(None, [], 5) is None


def test_lognormal_mean() -> None:
    assert m.lognormal_mean_ms(200, 200) == 200
    assert m.lognormal_mean_ms(0, 0) == 0
    sigma = math.log(350 / 200) / m.Z95
    assert m.lognormal_mean_ms(200, 350) == pytest.approx(200 * math.exp(sigma**2 / 2))
    assert m.lognormal_mean_ms(200, 350) == pytest.approx(211.9, abs=0.1)


def test_littles_law_helpers() -> None:
    assert m.inflight_cap_rate(8, 200) == pytest.approx(40)
    assert m.ideal_concurrency(50, 200) == pytest.approx(10)


# -- metrics -----------------------------------------------------------------------


def test_goodput_share_averages_per_second_ratios() -> None:
    assert m.goodput_share(seconds(50, 25), m.constant(50)) == pytest.approx(0.75)


def test_goodput_share_uses_the_rate_in_force_each_second() -> None:
    rate = m.scheduled(50, [(2, 20)])
    assert m.goodput_share(seconds(50, 50, 20, 10), rate) == pytest.approx(0.875)


def test_goodput_share_skips_seconds_without_a_rate() -> None:
    rate = m.scheduled(None, [(1, 10)])
    assert m.goodput_share(seconds(99, 5), rate) == pytest.approx(0.5)
    assert m.goodput_share(seconds(99), m.constant(None)) is None
    assert m.goodput_share([], m.constant(5)) is None


def test_throughput_and_ratio() -> None:
    assert m.throughput(seconds(10, 20)) == 15
    assert m.throughput([]) is None
    assert m.ratio(15, 30) == 0.5
    assert m.ratio(None, 30) is None
    assert m.ratio(15, 0) is None


def test_share_429() -> None:
    assert m.share_429(75, 25) == 0.25
    assert m.share_429(0, 0) is None
    assert m.share_429_in([Second(0, 3, 1), Second(1, 5, 3)]) == pytest.approx(4 / 12)
    assert m.share_429_series([Second(0, 1, 1), Second(1)]) == [0.5, None]


def test_attempts_per_success() -> None:
    assert m.attempts_per_success(150, 100) == 1.5
    assert m.attempts_per_success(10, 0) is None


def test_lost_urls_splits_failures_and_cut_runs() -> None:
    lost = m.lost_urls(100, {"200": 80, "429": 5, "None": 3})
    assert (lost.failed, lost.cut, lost.total) == (8, 12, 20)
    assert m.lost_urls(10, {200: 10}).total == 0
    assert m.lost_urls(10, {}).cut == 10


def test_time_to_fraction() -> None:
    series = seconds(0, 10, 40, 46, 50, start=3)
    assert m.time_to_fraction(series, m.constant(50), start=4) == 2  # 46 >= 45
    assert m.time_to_fraction(series, m.constant(50), start=4, fraction=1.0) == 3
    assert m.time_to_fraction(series, m.constant(100), start=4) is None
    assert m.time_to_fraction(series, m.constant(None), start=4) is None


def test_time_to_fraction_after_a_change() -> None:
    rate = m.scheduled(20, [(3, 50)])
    series = seconds(20, 20, 20, 30, 40, 48)
    assert m.time_to_fraction(series, rate, start=0) == 0
    assert m.time_to_fraction(series, rate, start=3) == 2


def test_concurrency() -> None:
    series = [Second(0, 1, 0, 40), Second(1, 1, 0, 10), Second(2, 1, 0, 20)]
    conc = m.concurrency(series[1:], series)
    assert (conc.mean, conc.peak) == (15, 40)
    assert m.concurrency([], []).mean is None


def test_connections_and_cpu_per_request() -> None:
    assert m.connections_per_request(50, 1000) == 0.05
    assert m.connections_per_request(5, 0) is None
    assert m.cpu_ms_per_request(3.0, 1000) == 3.0
    assert m.cpu_ms_per_request(3.0, 0) is None


def test_both_active_is_the_overlap_of_full_seconds() -> None:
    a = seconds(0, 5, 5, 5, 5, 5, 5, 5)  # active 1..7, full 2..6
    b = seconds(0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2)  # active 3..10, full 4..9
    assert m.both_active(a, b) == (4, 7)
    assert m.both_active(seconds(1, 1, 1), seconds(0, 0, 0, 0, 0, 1, 1, 1)) is None
    assert m.both_active([], b) is None


# -- evaluation ---------------------------------------------------------------------


def _run(per_host: dict[str, list[tuple[int, int, int, int]]], **extra: object) -> dict:
    sites = {}
    for host, rows in per_host.items():
        sites[host] = {
            "per_second": buckets(*rows),
            "admitted": sum(r[1] for r in rows),
            "rate_limited": sum(r[2] for r in rows),
            "requests": sum(r[1] + r[2] for r in rows),
        }
    return {"sites": sites, **extra}


def test_evaluate_run_on_a_drop() -> None:
    scenario = scenarios.Scenario(
        "drop",
        "drop",
        "mobile",
        (scenarios.Site("a.test", 200, rate=50.0, schedule=((2.0, 20.0),)),),
        change_at=2.0,
        settle=1.0,
    )
    run = _run(
        {
            "a.test": [
                (0, 10, 0, 5),
                (1, 50, 0, 10),
                (2, 20, 20, 10),
                (3, 20, 0, 5),
                (4, 5, 0, 1),
            ]
        },
        statuses={"200": 100, "429": 1},
        crawler_requests=150,
        cpu_seconds=2.0,
        startup_cpu_seconds=0.5,
        gateway={"connections_accepted": 15},
        stats={
            "justproxies/limit_final/a.test": 4,
            "justproxies/limit_peak/a.test": 16,
        },
    )
    row = evaluate.evaluate_run(scenario, run)
    assert row["goodput"] == pytest.approx((1 + 1 + 1) / 3)  # full seconds 1..3
    assert row["share_429"] == pytest.approx(20 / 125)
    assert row["attempts_per_success"] == pytest.approx(1.25)
    assert (row["lost"], row["lost_failed"], row["lost_cut"]) == (100, 1, 99)
    assert row["t90"] == 1
    assert row["t90_after"] == 0
    assert row["share_429_after"] == 0.0  # seconds 3 and 4
    assert row["connections_per_request"] == pytest.approx(0.1)
    assert row["cpu_ms_per_request"] == pytest.approx(10.0)
    assert row["concurrency_mean"] == pytest.approx(25 / 3)
    assert row["concurrency_peak"] == 10
    assert row["client_limit"] == {"a.test": {"final": 4, "peak": 16, "adaptive": True}}


def test_evaluate_two_sites_per_site_goodput_while_both_active() -> None:
    scenario = scenarios.Scenario(
        "two",
        "two",
        "mobile",
        (
            scenarios.Site("a.test", 10, rate=50.0),
            scenarios.Site("b.test", 10, rate=20.0),
        ),
    )
    run = _run(
        {
            "a.test": [
                (0, 9, 0, 1),
                (1, 50, 0, 1),
                (2, 25, 0, 1),
                (3, 50, 0, 1),
                (4, 1, 0, 1),
            ],
            "b.test": [
                (0, 9, 0, 1),
                (1, 20, 0, 1),
                (2, 20, 0, 1),
                (3, 10, 0, 1),
                (4, 1, 0, 1),
            ],
        },
        statuses={"200": 20},
        settings={"CONCURRENT_REQUESTS_PER_DOMAIN": 16},
    )
    row = evaluate.evaluate_run(scenario, run)
    assert row["both_active"] == [1, 4]
    assert row["per_site"]["a.test"]["goodput_both_active"] == pytest.approx(2.5 / 3)
    assert row["per_site"]["b.test"]["goodput_both_active"] == pytest.approx(2.5 / 3)
    assert row["goodput"] == pytest.approx((70 / 70 + 45 / 70 + 60 / 70) / 3)
    assert row["client_limit"]["b.test"] == {
        "final": 16,
        "peak": 16,
        "adaptive": False,
    }


def test_evaluate_scenario_compares_no_limit_with_plain_scrapy() -> None:
    scenario = scenarios.Scenario(
        "no-limit",
        "n",
        "mobile",
        (scenarios.Site("a.test", 10),),
        kind=scenarios.UNLIMITED,
        variants=(*scenarios.VARIANTS, scenarios.PLAIN),
    )
    rows = {(0, 5, 0, 1), (1, 200, 0, 50), (2, 200, 0, 50), (3, 5, 0, 1)}
    plain = _run({"a.test": sorted(rows)}, statuses={"200": 10})
    plugin = _run(
        {"a.test": [(0, 5, 0, 1), (1, 100, 0, 50), (2, 200, 0, 50), (3, 5, 0, 1)]},
        statuses={"200": 10},
    )
    broken = {"error": "boom"}
    result = evaluate.evaluate_scenario(
        scenario, {"plugin": plugin, scenarios.PLAIN: plain, "fixed-low": broken}
    )
    assert set(result) == {"plugin", scenarios.PLAIN}
    assert result[scenarios.PLAIN]["goodput"] == 1.0
    assert result["plugin"]["goodput"] == pytest.approx(0.75)
    assert result["plugin"]["throughput"] == 150
    assert result["plugin"]["t90"] == 2


def test_ideal_seconds_follow_the_schedule() -> None:
    rate = m.scheduled(50, [(20, 20)])
    assert evaluate._ideal_seconds(1000, rate) == pytest.approx(20)
    assert evaluate._ideal_seconds(1500, rate) == pytest.approx(45)


# -- scenarios ------------------------------------------------------------------------


def test_interleave_spreads_by_share_and_keeps_order() -> None:
    merged = scenarios.interleave([[f"a{i}" for i in range(5)], ["b0", "b1"]])
    assert merged == ["a0", "b0", "a1", "a2", "a3", "b1", "a4"]


def test_select_scenarios() -> None:
    every = scenarios.build_scenarios()
    assert [s.name for s in scenarios.select(every, "drop,steady")] == [
        "drop",
        "steady",
    ]
    assert len(scenarios.select(every, "presets")) == 4
    assert scenarios.select(every, "mobile")[0].name == "preset-mobile"
    assert scenarios.select(every, None) == every
    with pytest.raises(ValueError, match="unknown scenario"):
        scenarios.select(every, "nope")


def test_scenarios_are_sized_for_their_phase() -> None:
    by_name = {s.name: s for s in scenarios.build_scenarios()}
    assert by_name["steady"].urls == 1000
    drop = by_name["drop"]
    assert drop.change_at == 20
    assert drop.sites[0].policy()["schedule"] == [[20.0, 20.0]]
    # Long enough to see the site after the change settle.
    assert evaluate._ideal_seconds(drop.urls, drop.sites[0].rate_at) >= 35
    rise = by_name["rise"]
    assert evaluate._ideal_seconds(rise.urls, rise.sites[0].rate_at) >= 35
    quick = {s.name: s for s in scenarios.build_scenarios(quick=True)}
    assert quick["steady"].urls < by_name["steady"].urls


def test_preset_scenarios_put_the_optimum_in_the_range_unless_capped() -> None:
    by_name = {s.name: s for s in scenarios.build_scenarios(max_rate=10_000)}
    for name, preset in PRESETS.items():
        site = by_name[f"preset-{name}"].sites[0]
        assert site.p50_ms == sum(preset.latency_p50_ms) / 2
        assert site.p95_ms == pytest.approx(1.6 * site.p50_ms)
        ideal = site.ideal_concurrency(0)
        assert ideal is not None
        assert preset.domain_concurrency_start < ideal < preset.domain_concurrency_max
    capped = {s.name: s for s in scenarios.build_scenarios(max_rate=100)}
    assert capped["preset-datacenter"].sites[0].rate == 100


def test_inflight_cap_rate_is_cap_over_mean_latency() -> None:
    site = scenarios.Site("a.test", 10, inflight_cap=8)
    assert site.rate_at(0) == pytest.approx(8 / (site.mean_latency_ms / 1000))
    assert site.ideal_concurrency(0) == 8


@pytest.mark.parametrize("variant", scenarios.ALL_VARIANTS)
def test_variant_specs(variant: str) -> None:
    preset = PRESETS["mobile"]
    spec = scenarios.variant_spec(
        variant, preset, timeout=30, gateway="127.0.0.1:1", user="u", password="p"
    )
    assert spec.settings["CLOSESPIDER_TIMEOUT"] == 30
    if variant == scenarios.PLAIN:
        assert "ADDONS" not in spec.settings
        assert spec.env == {}
        assert spec.meta == {"proxy": "http://u:p@127.0.0.1:1"}
        assert spec.settings["CONCURRENT_REQUESTS_PER_DOMAIN"] == 50
        assert spec.settings["CONCURRENT_REQUESTS"] == 50
        assert spec.settings["RETRY_TIMES"] == preset.retry_times
        return
    assert spec.settings["ADDONS"] == {"scrapy_justproxies.Addon": 100}
    assert spec.settings["JUSTPROXIES_POOL"] == "mobile"
    assert spec.env["JUSTPROXIES_PASSWORD"] == "p"
    assert spec.meta == {}
    expected = {
        "plugin": None,
        scenarios.PAUSE_SLOT: None,
        scenarios.START_HIGH: 50,
        scenarios.TRACE: 50,
        "fixed-low": 16,
        "fixed-high": 50,
        "autothrottle": 16,
        **dict.fromkeys(scenarios.LEARNING_VARIANTS),
        scenarios.RATE_FIRST: None,
    }[variant]
    assert spec.settings.get("CONCURRENT_REQUESTS_PER_DOMAIN") == expected
    adaptive = variant in (
        "plugin",
        scenarios.PAUSE_SLOT,
        scenarios.START_HIGH,
        scenarios.TRACE,
        *scenarios.LEARNING_VARIANTS,
        scenarios.RATE_FIRST,
    )
    assert spec.settings.get("JUSTPROXIES_THROTTLE_SLOW_START_RATE") == (
        scenarios.RATE_FIRST_RATE if variant == scenarios.RATE_FIRST else None
    )
    assert ("JUSTPROXIES_TRACE" in spec.settings) is (variant == scenarios.TRACE)
    assert spec.settings.get("JUSTPROXIES_THROTTLE_ENABLED", True) is adaptive
    assert spec.settings.get("JUSTPROXIES_RETRY_AFTER_MODE", "request") == (
        "slot" if variant == scenarios.PAUSE_SLOT else "request"
    )
    assert spec.settings.get("AUTOTHROTTLE_ENABLED", False) is (
        variant == "autothrottle"
    )
    assert "RETRY_TIMES" not in spec.settings


def test_bytes_per_success() -> None:
    assert m.bytes_per_success(2_000_000, 400) == 5000
    assert m.bytes_per_success(0, 400) is None
    assert m.bytes_per_success(1000, 0) is None


def test_learning_scenarios() -> None:
    """Issue 9: the hop latency is on, warm-start scenarios share a state
    file (and only they), the answer-time shift metrics per shift."""
    by_name = {s.name: s for s in scenarios.build_scenarios()}
    cold = by_name["cold-datacenter"]
    assert cold.sandbox_config("u", "p")["gateway"]["hop_latency_ms"] == 90
    assert by_name["steady"].sandbox_config("u", "p")["gateway"]["hop_latency_ms"] == (
        350
    )
    assert {s.name for s in by_name.values() if s.state} == {
        "warm-steady",
        "warm-lowered",
        "warm-kill",
    }
    # The lowered site starts from the file warm-steady left, run before it.
    names = list(by_name)
    lowered = by_name["warm-lowered"]
    assert lowered.state_from == "warm-steady"
    assert names.index("warm-steady") < names.index("warm-lowered")
    assert lowered.sites[0].rate == 20.0
    # The ideal client limit counts the gateway's hop (the site's in-flight
    # column does not): 50/s * (212 + 350) ms, against 50/s * 212 ms.
    steady = evaluate.ideal(by_name["steady"])
    assert steady["concurrency"] == pytest.approx(10.6, abs=0.1)
    assert steady["client_concurrency"] == pytest.approx(28.1, abs=0.1)
    spec = scenarios.variant_spec(
        scenarios.NO_SLOW_START, PRESETS["datacenter"], timeout=30,
        gateway="127.0.0.1:1", user="u", password="p", state_file="/x.json",
    )  # fmt: skip
    assert spec.settings["JUSTPROXIES_THROTTLE_SLOW_START"] == 0
    assert spec.settings["JUSTPROXIES_STATE_FILE"] == "/x.json"
    for variant, until in (("plugin-ramp-max", 0.0), ("plugin-ramp-start", 1.0)):
        assert scenarios.extra_variant(variant)
        spec = scenarios.variant_spec(
            variant, PRESETS["datacenter"], timeout=30,
            gateway="127.0.0.1:1", user="u", password="p",
        )  # fmt: skip
        assert spec.settings["JUSTPROXIES_THROTTLE_SLOW_START_UNTIL"] == until
        assert "JUSTPROXIES_THROTTLE_SLOW_START" not in spec.settings
    window = by_name["cold-fixed-window"].sites[0].policy()
    assert (window["limiter"], window["window_seconds"]) == ("fixed_window", 20.0)
    # The sliding window behind the slower pools' hops: the same 2 s window,
    # its count the pool's rate times it.
    for name, pool, count in (
        ("cold-residential-sliding-window", "residential", 100),
        ("cold-mobile-sliding-window", "mobile", 40),
    ):
        scenario = by_name[name]
        assert scenario.preset.name == pool
        policy = scenario.sites[0].policy()
        assert (policy["limiter"], policy["window_seconds"]) == ("sliding_window", 2.0)
        assert scenario.sites[0].rate * 2 == count
    # The small site: the rate-first start beside the default, on mobile.
    low = by_name["cold-low-rate"]
    assert low.preset.name == "mobile"
    assert (low.sites[0].rate, low.sites[0].burst) == (5.0, 10.0)
    assert {"plugin", scenarios.RATE_FIRST} <= set(low.variants)
    assert scenarios.extra_variant(scenarios.RATE_FIRST)
    assert not any(
        scenarios.RATE_FIRST in s.variants for s in by_name.values() if s is not low
    )
    shift = by_name["shift-rate"]
    seconds = [Second(t, 50, 10 if t in (20, 21) else 0, 10) for t in range(60)]
    figures = scenarios.shift_metrics(shift, seconds)
    assert figures is not None
    assert figures["20"]["rate_limited_3s"] == 20
    assert figures["40"]["share_429_from_5s"] == 0
    assert figures["20"]["goodput_from_5s"] == pytest.approx(1.0)
    assert scenarios.shift_metrics(cold, seconds) is None


# -- charts and report ------------------------------------------------------------------


def test_nice_steps() -> None:
    assert charts.nice_step(100) == 25
    assert charts.nice_step(7) == 2
    assert charts.nice_max(43) == 60
    assert charts.nice_max(1.05) == 1.5
    assert charts.nice_step(0) == 1


def test_svg_is_well_formed_with_a_line_per_variant() -> None:
    series = {
        "plugin": [Second(0, 5, 1, 4), Second(1, 50, 0, 11), Second(3, 20, 5, 9)],
        "fixed-high": m.dense_series(buckets((0, 9, 9, 16), (1, 50, 40, 16))),
    }
    svg = charts.scenario_svg(
        "drop & co",
        [charts.SiteChart("a.test", series, rate=m.scheduled(50, [(2, 20)]))],
        ["a <subtitle>"],
    )
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    lines = root.findall(f"{ns}polyline")
    colors = {line.get("stroke") for line in lines}
    assert {charts.COLORS["plugin"], charts.COLORS["fixed-high"]} <= colors
    assert "drop &amp; co" in svg


def test_background_load_is_what_nobody_of_ours_used() -> None:
    import run  # noqa: PLC0415 - imports Scrapy; only this test needs it

    before = {"wall": 0.0, "busy": 100.0, "sandbox": 10.0, "own": 1.0}
    after = {"wall": 10.0, "busy": 125.0, "sandbox": 13.0, "own": 1.5}
    load = run.background_load(before, after, crawler_cpu=11.5)
    assert load == {"sandbox_cpu_seconds": 3.0, "background_cores": 1.0}
    idle = run.background_load(before, {**after, "busy": 110.0}, crawler_cpu=11.5)
    assert idle["background_cores"] == 0.0


def test_report_renders_a_table_per_scenario() -> None:
    scenario = scenarios.build_scenarios(quick=True)[0]
    row = {
        "throughput": 45.0,
        "goodput": 0.9,
        "share_429": 0.02,
        "attempts_per_success": 1.02,
        "ok": 350,
        "lost": 0,
        "lost_failed": 0,
        "lost_cut": 0,
        "t90": 2,
        "concurrency_mean": 9.5,
        "concurrency_peak": 12,
        "client_limit": {"a.test": {"final": 9, "peak": 16, "adaptive": True}},
        "connections_per_request": 0.03,
        "cpu_ms_per_request": 3.5,
        "wall_seconds": 9.2,
    }
    results = {
        "meta": {
            "date": "d",
            "scrapy": "2.19.0",
            "twisted": "t",
            "python": "3",
            "plugin_version": "0.1.0",
            "commit": "abc",
            "nproc": 2,
            "cpu_model": "cpu",
            "platform": "Linux",
            "mode": "quick",
            "scenarios": ["steady"],
            "total_minutes": 1.0,
            "throttle": "present",
            "background_cores": {"mean": 0.1, "max": 0.6},
        },
        "scenarios": {
            "steady": {
                "metrics": {"plugin": row},
                "ideal": evaluate.ideal(scenario),
                "errors": {"fixed-low": "boom"},
                "observations": ["an observation"],
            }
        },
    }
    text = report.render(results, [scenario])
    assert "| `plugin` | 90% | 2.0% | 1.02 | 0 | 2 s | 9.5 / 12 | 9 (peak 16) |" in text
    assert "| `fixed-low` | failed: boom |" in text
    assert "| *ideal* | 100% |" in text
    assert "- an observation" in text
    assert "![steady](steady.svg)" in text
    assert "the machine was not idle" in text


def test_spend_line_compares_the_plugin_for_the_same_pages() -> None:
    mobile = scenarios.select(scenarios.build_scenarios(quick=True), "mobile")[0]
    rows = {
        "plugin": {"bytes_per_success": 600.0},
        "fixed-low": {"bytes_per_success": 600.0},
        "fixed-high": {"bytes_per_success": 750.0},
        "autothrottle": {"bytes_per_success": None},
    }
    line = report.spend_line(mobile, rows)
    pages = mobile.urls
    assert f"the plugin {600 * pages / 1e6:.2f} MB" in line
    assert "fixed concurrency 16" in line and "(+0%)" in line
    assert f"fixed concurrency 50 {750 * pages / 1e6:.2f} MB (-20%)" in line
    assert "AutoThrottle" not in line
    steady = scenarios.select(scenarios.build_scenarios(quick=True), "steady")[0]
    assert report.spend_line(steady, rows) == ""


def test_share_watch_waits_for_each_live_process_to_read_the_budget() -> None:
    """``bench/cluster.py``'s re-established shares, against Debian's
    redis-server written by the plugin's own heartbeat script: the seeder
    counts at its heartbeat; another process only at a heartbeat after a
    look found the budget (one before the write read no budget; one between
    the write and the look is counted at its next)."""
    pytest.importorskip("redis")
    if server_binary() is None:
        pytest.skip("Debian's redis-server is not installed")
    with run_redis() as server:
        config = SharedStateConfig.from_settings(
            Settings({"JUSTPROXIES_SHARED_STATE": server.url}), {}
        )
        store = RedisStore(config, ShareWatch.policy())
        watch = ShareWatch(server, store.key("s.test"), restarted_at=0.0)

        def beat(process: str) -> float:
            time.sleep(0.005)  # heartbeats in distinct Redis milliseconds
            report = Report(4, 4, 9, 12)
            return store.beat("s.test", process, report, Counts(), 600).now

        beat("b")  # before the budget: reads none
        watch.poll(live=2)
        assert watch.seeded_at is None
        seeded = beat("a")
        assert store.write("s.test", Budget(12, changed_at=seeded), 0, 600) == 1
        beat("b")  # after the write, before the look: counted at its next
        watch.poll(live=2)
        assert watch.seeded_at == seeded
        watch.poll(live=2)
        assert list(watch.beats) == ["p:a"]
        assert watch.seconds() is None
        last = beat("b")
        watch.poll(live=2)
        assert watch.done_at == pytest.approx(last, abs=1e-6)
        assert watch.seconds() == round(last, 2)  # from restarted_at 0
        watch.close()
        store.close()
