"""The scheduler's queue (scrapy_justproxies.queue) in real crawls: a strict
site's requests wait in the scheduler, not in the downloader, so the other
sites keep the crawl's whole concurrency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from scrapy.settings import default_settings

from tests.test_crawl import configure, site, urls
from tests.test_throttle import crawl

pytestmark = pytest.mark.crawl

STRICT = {"rate": 2, "burst": 2, "retry_after_seconds": 5, "latency_p50_ms": 100}
OPEN = {"latency_p50_ms": 200, "latency_p95_ms": 250}


def mixed(sandbox: Any, strict: int, per_strict: int) -> list[dict[str, Any]]:
    a, b = urls(sandbox, "a.test", strict), urls(sandbox, "b.test", strict * per_strict)
    return [
        r
        for i in range(strict)
        for r in [a[i], *b[per_strict * i : per_strict * (i + 1)]]
    ]


def open_site_low_seconds(sandbox: Any, below: int) -> list[int]:
    """b.test's whole seconds (first and last left out: partly used) whose
    peak in flight stayed below ``below``."""
    seconds = site(sandbox, "b.test")["per_second"]
    inner = [s for s in seconds[1:-1] if s["admitted"]]
    assert len(inner) >= 5, seconds
    return [s["t"] for s in inner if s["max_inflight"] < below]


def test_a_strict_site_leaves_the_crawls_concurrency_to_the_others(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path
) -> None:
    """1 a.test URL to 6 b.test URLs. a.test admits 2 requests/s (429 with
    Retry-After: 5 above), so its slot sends about one at a time. Its other
    requests used to wait in the slot's queue, where Scrapy counts them
    against CONCURRENT_REQUESTS: measured with Scrapy 2.19's default queue,
    b.test's peak in flight fell to 4 of the 8 in 4 of its 12 whole
    seconds. They wait in the scheduler now: b.test keeps its 8 (in that
    run, 8 in every second), and every a.test URL still completes."""
    configure(sandbox, {"a.test": STRICT, "b.test": OPEN})
    result = crawl(
        sandbox, gateway_env, tmp_path, mixed(sandbox, 60, 6), reactor,
        CONCURRENT_REQUESTS=8, CONCURRENT_REQUESTS_PER_DOMAIN=8,
    )  # fmt: skip
    assert result.statuses == {200: 420}, result.output[-3000:]
    assert result.stats["justproxies/scheduler/held_back"] > 0
    assert open_site_low_seconds(sandbox, below=6) == []


def test_a_queue_set_in_settings_py_is_kept(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    """The add-on sets SCHEDULER_PRIORITY_QUEUE below settings.py: a queue
    the user chose stays, and the crawl still works (without the guard:
    nothing is held back by it)."""
    configure(sandbox, {"a.test": {}})
    result = crawl(
        sandbox, gateway_env, tmp_path, urls(sandbox, "a.test", 20),
        SCHEDULER_PRIORITY_QUEUE="scrapy.pqueues.DownloaderAwarePriorityQueue",
    )  # fmt: skip
    assert result.statuses == {200: 20}, result.output[-3000:]
    assert (
        "SCHEDULER_PRIORITY_QUEUE = 'scrapy.pqueues.DownloaderAwarePriorityQueue' "
        "(settings.py): requests for a site at its limit wait in the downloader"
    ) in result.log
    assert "justproxies/scheduler/held_back" not in result.stats


def test_the_add_on_installs_the_queue(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    configure(sandbox, {"a.test": {}})
    result = crawl(sandbox, gateway_env, tmp_path, urls(sandbox, "a.test", 5))
    assert result.statuses == {200: 5}, result.output[-3000:]
    assert "SCHEDULER_PRIORITY_QUEUE: the plugin's per-site queue" in result.log


def test_a_jobdir_of_scrapys_default_queue_resumes(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    """A JOBDIR started with Scrapy's default queue (a job from before the
    plugin set its own) resumes: on Scrapy 2.13 the default keeps one flat
    list, which cannot be read per site, so that job keeps its queue and the
    start-up block says so; since 2.19 the default is downloader-aware,
    whose per-site layout the plugin's queue reads. Nothing is lost."""
    default = default_settings.SCHEDULER_PRIORITY_QUEUE
    configure(sandbox, {"a.test": {"latency_p50_ms": 1500}})
    jobdir = str(tmp_path / "job")
    requests = urls(sandbox, "a.test", 10)
    first = crawl(
        sandbox, gateway_env, tmp_path / "1", requests,
        JOBDIR=jobdir, CLOSESPIDER_TIMEOUT=2, CONCURRENT_REQUESTS=1,
        CONCURRENT_REQUESTS_PER_DOMAIN=1, SCHEDULER_PRIORITY_QUEUE=default,
    )  # fmt: skip
    assert first.reason == "closespider_timeout", first.output[-3000:]
    assert 0 < len(first.outcomes) < 10
    configure(sandbox, {"a.test": {}})
    resumed = crawl(sandbox, gateway_env, tmp_path / "2", [], JOBDIR=jobdir)
    assert resumed.reason == "finished", resumed.output[-3000:]
    done = list(first.outcomes) + list(resumed.outcomes)
    assert sorted(done) == sorted(r["url"] for r in requests)
    if default == "scrapy.pqueues.ScrapyPriorityQueue":
        expected = f"SCHEDULER_PRIORITY_QUEUE = {default!r} (Scrapy default)"
    else:
        expected = "SCHEDULER_PRIORITY_QUEUE: the plugin's per-site queue"
    assert expected in resumed.log


def test_a_jobdir_resumes_with_the_per_site_queue(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    """Paused with requests of two sites still in the scheduler's disk
    queues, resumed: every URL done once."""
    configure(sandbox, {"a.test": {"latency_p50_ms": 1500}, "b.test": {}})
    jobdir = str(tmp_path / "job")
    requests = urls(sandbox, "a.test", 10) + urls(sandbox, "b.test", 10)
    first = crawl(
        sandbox, gateway_env, tmp_path / "1", requests,
        JOBDIR=jobdir, CLOSESPIDER_TIMEOUT=2, CONCURRENT_REQUESTS=1,
        CONCURRENT_REQUESTS_PER_DOMAIN=1,
    )  # fmt: skip
    assert first.reason == "closespider_timeout", first.output[-3000:]
    configure(sandbox, {"a.test": {}, "b.test": {}})
    resumed = crawl(sandbox, gateway_env, tmp_path / "2", [], JOBDIR=jobdir)
    assert resumed.reason == "finished", resumed.output[-3000:]
    done = list(first.outcomes) + list(resumed.outcomes)
    assert sorted(done) == sorted(r["url"] for r in requests)
    assert "SCHEDULER_PRIORITY_QUEUE: the plugin's per-site queue" in resumed.log


def test_priority_goes_first_across_sites(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    """Sites take turns only among requests of the same priority: one at a
    time, b.test's priority-10 URLs all finish before a.test's priority-0
    ones, though a.test's were scheduled first (but for the first one or
    two, sent before b.test's were read from the spider's start)."""
    configure(sandbox, {"a.test": {}, "b.test": {}})
    low = urls(sandbox, "a.test", 5)
    high = [{**r, "priority": 10} for r in urls(sandbox, "b.test", 5)]
    result = crawl(
        sandbox, gateway_env, tmp_path, low + high,
        CONCURRENT_REQUESTS=1, CONCURRENT_REQUESTS_PER_DOMAIN=1,
    )  # fmt: skip
    assert result.statuses == {200: 10}, result.output[-3000:]
    order = [url.split("/")[2].split(":")[0] for url in result.outcomes]
    assert order[-3:] == ["a.test"] * 3, order
