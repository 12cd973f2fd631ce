"""`scrapy crawl` in example_project/, as a user runs it: the add-on from
settings.py, the pool from the environment or -s, credentials from the
environment only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_crawl import configure, site

pytestmark = pytest.mark.crawl

PROJECT = Path(__file__).resolve().parent.parent / "example_project"


def scrapy_crawl(
    sandbox: Any,
    gateway_env: dict[str, str],
    tmp_path: Path,
    *args: str,
    pool: str = "mobile",
) -> tuple[subprocess.CompletedProcess[str], str]:
    start_url = f"https://shop.test:{sandbox.site_https_port}/catalog/1"
    log = tmp_path / "crawl.log"
    env = {
        "PATH": "/usr/bin:/bin",
        "JUSTPROXIES_POOL": pool,
        # Not the project's .scrapy/: every test starts cold.
        "JUSTPROXIES_STATE_FILE": str(tmp_path / "limits.json"),
        **gateway_env,
    }
    done = subprocess.run(
        [sys.executable, "-m", "scrapy", "crawl", "catalog", "-a", f"start_url={start_url}",
         "-O", str(tmp_path / "items.jsonl"), "-s", f"LOG_FILE={log}", "-s", "LOG_LEVEL=DEBUG", *args],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    return done, log.read_text() if log.exists() else ""


def test_pool_from_the_environment(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    configure(
        sandbox,
        {"shop.test": {"pages": 3, "latency_p50_ms": 100, "latency_p95_ms": 200}},
    )
    done, log = scrapy_crawl(sandbox, gateway_env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pool 'mobile'" in log
    assert "CONCURRENT_REQUESTS_PER_DOMAIN = 16 (pool preset, replacing" in log
    assert (
        "WARNING: JustProxies: settings.py has the startproject template lines" in log
    )
    items = (tmp_path / "items.jsonl").read_text().splitlines()
    assert len(items) == 30
    counters = site(sandbox, "shop.test")
    # Slow start from 4 may pass the preset's start (16) before any 429;
    # the throttle's cap is the preset's high end.
    assert 1 < counters["max_inflight"] <= 50
    assert counters["proxy_authorization_seen"] == 0
    assert counters["direct"] == 0
    for text in (log, done.stdout, done.stderr):
        assert sandbox.password not in text


def test_command_line_beats_the_environment(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    configure(sandbox, {"shop.test": {"pages": 1}})
    done, log = scrapy_crawl(
        sandbox,
        gateway_env,
        tmp_path,
        "-s",
        "JUSTPROXIES_POOL=datacenter",
        pool="mobile",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pool 'datacenter'" in log
    assert "CONCURRENT_REQUESTS = 200 (pool preset)" in log


def test_unknown_pool_fails_before_any_request(
    sandbox: Any, gateway_env: dict[str, str], tmp_path: Path
) -> None:
    configure(sandbox, {"shop.test": {}})
    done, log = scrapy_crawl(sandbox, gateway_env, tmp_path, pool="moblie")
    assert done.returncode != 0
    assert "JUSTPROXIES_POOL (from the environment) is 'moblie'" in done.stderr + log
    assert sandbox.client.stats()["gateway"]["connections_accepted"] == 0
