"""Real crawls that learn a site's limit and remember it between runs
(``JUSTPROXIES_STATE_FILE``): warm start, a corrupt file, ``kill -9``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from scrapy_justproxies.controller import (
    ControllerSettings,
    DomainController,
    Learned,
    LimitKind,
)
from scrapy_justproxies.presets import PRESETS
from scrapy_justproxies.report import read_trace
from scrapy_justproxies.sandbox.crawl import CHILD, run_crawl
from scrapy_justproxies.state import encode, load

try:  # tests/ is a package
    from tests.test_crawl import ADDON, configure, urls
except ImportError:  # pragma: no cover
    from test_crawl import ADDON, configure, urls  # type: ignore[no-redef]

pytestmark = pytest.mark.crawl

# 30 req/s at 40 ms: about 1-2 in flight, far below the mobile preset's 16.
SITE = {"limited.test": {"rate": 30, "burst": 5, "latency_p50_ms": 40,
                         "latency_p95_ms": 60}}  # fmt: skip
DAY = 86400.0


def crawl(
    sandbox: Any,
    gateway_env: dict[str, str],
    reactor: str,
    workdir: Path,
    state_file: Path,
    count: int = 240,
) -> Any:
    return run_crawl(
        workdir,
        reactor=reactor,
        requests=urls(sandbox, "limited.test", count),
        settings={**ADDON, "JUSTPROXIES_STATE_FILE": str(state_file)},
        env={**gateway_env, "JUSTPROXIES_POOL": "mobile"},
        log_level="INFO",
    )


def test_second_crawl_starts_at_the_learned_level(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path
) -> None:
    state_file = tmp_path / "limits.json"
    configure(sandbox, SITE)
    first = crawl(sandbox, gateway_env, reactor, tmp_path / "one", state_file)
    assert first.reason == "finished", first.output[-3000:]
    assert "justproxies/warm_start/limited.test" not in first.stats
    learned = load(state_file, now=time.time(), max_age=DAY).domains
    assert set(learned) == {"limited.test"}
    assert sandbox.password not in state_file.read_text()
    assert first.stats["justproxies/state/saved"] >= 1

    configure(sandbox, SITE)
    second = crawl(sandbox, gateway_env, reactor, tmp_path / "two", state_file)
    assert second.reason == "finished", second.output[-3000:]
    assert second.stats["justproxies/state/loaded"] == 1
    assert first.stats["justproxies/state/loaded"] == 0  # no file yet
    # It starts where that entry puts a controller of the mobile preset: the
    # level learned, or, with a rate learned, what that rate keeps in flight
    # (before, this asserted the level, and failed when the two differed).
    mobile = PRESETS["mobile"]
    settings = ControllerSettings(
        start=mobile.domain_concurrency_start, maximum=mobile.domain_concurrency_max
    )
    level = DomainController(settings, 0.0, learned=learned["limited.test"]).limit
    assert second.stats["justproxies/warm_start/limited.test"] == level
    assert second.stats["justproxies/limit_start/limited.test"] == level
    assert "1 domains start warm from" in second.log
    assert "limited.test at" in second.log


def test_corrupt_state_file_warns_once_and_starts_cold(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path
) -> None:
    state_file = tmp_path / "limits.json"
    state_file.write_text('{"format": "scrapy-justproxies/limits", "version": 1, "do')
    configure(sandbox, SITE)
    result = crawl(sandbox, gateway_env, reactor, tmp_path / "run", state_file, 120)
    assert result.reason == "finished", result.output[-3000:]
    assert result.statuses == {200: 120}
    assert result.log.count("ignoring the state file") == 1
    assert "justproxies/warm_start/limited.test" not in result.stats
    # The crawl learned anew and wrote a good file over the bad one.
    loaded = load(state_file, now=time.time(), max_age=DAY)
    assert loaded.warning is None
    assert "limited.test" in loaded.domains


def test_state_file_off(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path
) -> None:
    configure(sandbox, SITE)
    result = run_crawl(
        tmp_path,
        reactor=reactor,
        requests=urls(sandbox, "limited.test", 60),
        settings={**ADDON, "JUSTPROXIES_STATE_FILE": None},
        env={**gateway_env, "JUSTPROXIES_POOL": "mobile"},
    )
    assert result.reason == "finished", result.output[-3000:]
    assert "justproxies/state/saved" not in result.stats
    assert not list(tmp_path.rglob("*.json.lock"))
    assert not (tmp_path / ".scrapy").exists()


def test_default_state_file_is_in_the_project_data_dir(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path
) -> None:
    configure(sandbox, SITE)
    result = run_crawl(
        tmp_path,
        reactor=reactor,
        requests=urls(sandbox, "limited.test", 120),
        settings=ADDON,
        env={**gateway_env, "JUSTPROXIES_POOL": "mobile"},
    )
    assert result.reason == "finished", result.output[-3000:]
    default = tmp_path / ".scrapy" / "justproxies" / "limits.json"
    assert "limited.test" in load(default, now=time.time(), max_age=DAY).domains


def test_kill_9_leaves_a_state_file_the_next_crawl_starts_from(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path
) -> None:
    state_file = tmp_path / "limits.json"
    configure(sandbox, SITE)
    workdir = tmp_path / "killed"
    workdir.mkdir()
    spec = workdir / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "reactor": reactor,
                "requests": urls(sandbox, "limited.test", 3000),  # ~100 s
                "settings": {**ADDON, "JUSTPROXIES_STATE_FILE": str(state_file)},
                "log_file": str(workdir / "crawl.log"),
                "result_file": str(workdir / "result.json"),
            }
        )
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("JUSTPROXIES_")},
        **gateway_env,
        "JUSTPROXIES_POOL": "mobile",
    }
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(spec)],
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not state_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # killed while it keeps crawling (and saving)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    assert not (workdir / "result.json").exists()  # it never got to close
    loaded = load(state_file, now=time.time(), max_age=DAY)
    assert loaded.warning is None
    assert "limited.test" in loaded.domains

    configure(sandbox, SITE)
    second = crawl(sandbox, gateway_env, reactor, tmp_path / "two", state_file, 60)
    assert second.reason == "finished", second.output[-3000:]
    # It starts where that entry puts a controller of the mobile preset: the
    # level learned, or, with a rate learned, what that rate keeps in flight.
    mobile = PRESETS["mobile"]
    settings = ControllerSettings(
        start=mobile.domain_concurrency_start, maximum=mobile.domain_concurrency_max
    )
    entry = loaded.domains["limited.test"]
    start = DomainController(settings, 0.0, learned=entry).limit
    assert second.stats["justproxies/warm_start/limited.test"] == start


def traced_crawl(
    sandbox: Any,
    gateway_env: dict[str, str],
    reactor: str,
    workdir: Path,
    host: str,
    count: int,
    **settings: Any,
) -> list[dict[str, Any]]:
    """A cold mobile crawl of ``count`` URLs of ``host`` with a trace: its
    decisions for ``host``, once every URL ended 200 (nothing lost to the
    429s)."""
    trace = workdir / "trace.jsonl"
    result = run_crawl(
        workdir,
        reactor=reactor,
        requests=urls(sandbox, host, count),
        settings={
            **ADDON,
            "JUSTPROXIES_STATE_FILE": None,
            "JUSTPROXIES_TRACE": str(trace),
            **settings,
        },
        env={**gateway_env, "JUSTPROXIES_POOL": "mobile"},
    )
    assert result.reason == "finished", result.output[-3000:]
    assert result.statuses == {200: count}
    return [
        record
        for record in read_trace(trace)
        if record["type"] == "decision" and record["domain"] == host
    ]


def test_a_rate_limited_site_is_paced_at_the_rate_it_admits(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path
) -> None:
    # 30 req/s: the mobile preset's slow start overshoots it, the 429s climb,
    # and from then on sends are paced near the site's rate (the trace's
    # decisions say at what), not limited by concurrency alone.
    configure(sandbox, SITE)
    decisions = traced_crawl(
        sandbox, gateway_env, reactor, tmp_path, "limited.test", 360
    )
    paces = [record["pace"] for record in decisions if record["pace"] is not None]
    # The decisions say why if not (one failure in many runs, on a loaded
    # machine, left no trace of it).
    assert paces, f"the site was never paced: {decisions}"
    assert 30 * 0.5 <= paces[-1] <= 30 * 1.5


def test_a_rate_first_start_paces_a_new_domain_from_its_first_answer(
    sandbox: Any, gateway_env: dict[str, str], reactor: str, tmp_path: Path
) -> None:
    """``JUSTPROXIES_THROTTLE_SLOW_START_RATE``: a cold domain's slow start
    is paced (from 8 per second up), not the volleys of the default; its
    429s are retried, none lost."""
    configure(
        sandbox,
        {"small.test": {"rate": 5, "burst": 10, "latency_p50_ms": 40,
                        "latency_p95_ms": 60}},
    )  # fmt: skip
    decisions = traced_crawl(
        sandbox, gateway_env, reactor, tmp_path, "small.test", 60,
        JUSTPROXIES_THROTTLE_SLOW_START_RATE=8,
    )  # fmt: skip
    assert decisions
    # Paced throughout. Without the setting slow start's volleys grow
    # unpaced: its first decisions carry no pace (measured: four increases
    # within 0.15 s, then backoffs from a pace of 147/s).
    assert all(record["pace"] is not None for record in decisions), decisions
    # The 429s cut the ramp's pace: it had grown from 8/s to at most twice
    # the site's rate (each clean answer adds half a request a second), and
    # the first cut halves.
    cut = next((r for r in decisions if r["reason"] == "backoff"), None)
    assert cut is not None, decisions
    assert cut["pace"] <= 10, cut


def test_an_entry_older_than_the_state_max_age_starts_cold_and_is_dropped(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    """JUSTPROXIES_STATE_MAX_AGE: a domain learned longer ago starts cold,
    and such entries are dropped at the next save. The same file, two hours
    old, with the default (7 days) and with an hour."""
    at = time.time() - 7200
    entry = Learned(3, None, LimitKind.INFLIGHT, 0.05, at, 500)
    text = encode({"limited.test": entry, "gone.test": entry})
    mobile = PRESETS["mobile"]
    warm_level = DomainController(
        ControllerSettings(
            start=mobile.domain_concurrency_start,
            maximum=mobile.domain_concurrency_max,
        ),
        0.0,
        learned=entry,
    ).limit

    def crawl_from(name: str, **settings: Any) -> tuple[Any, Path]:
        state_file = tmp_path / f"{name}.json"
        state_file.write_text(text)
        configure(sandbox, SITE)
        result = run_crawl(
            tmp_path / name,
            reactor="asyncio",
            requests=urls(sandbox, "limited.test", 120),
            settings={**ADDON, "JUSTPROXIES_STATE_FILE": str(state_file), **settings},
            env={**gateway_env, "JUSTPROXIES_POOL": "mobile"},
            log_level="INFO",
        )
        assert result.reason == "finished", result.output[-3000:]
        assert result.statuses == {200: 120}
        return result, state_file

    young, young_file = crawl_from("default")
    assert young.stats["justproxies/state/loaded"] == 2
    assert young.stats["justproxies/warm_start/limited.test"] == warm_level
    assert "2 domains start warm from" in young.log
    assert "gone.test" in load(young_file, now=time.time(), max_age=DAY).domains

    old, old_file = crawl_from("hour", JUSTPROXIES_STATE_MAX_AGE=3600)
    assert old.stats["justproxies/state/loaded"] == 0
    assert "justproxies/warm_start/limited.test" not in old.stats
    assert old.stats["justproxies/limit_start/limited.test"] != warm_level
    assert "start warm" not in old.log
    saved = load(old_file, now=time.time(), max_age=DAY).domains
    assert "gone.test" not in saved  # dropped at the save
    assert saved["limited.test"].at > at  # learned afresh in this crawl
