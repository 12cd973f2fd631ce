"""Run one real Scrapy crawl in a subprocess and collect what happened.

Tests and the benchmark use this: each crawl gets a fresh process, hence a
fresh reactor of the kind asked for (``asyncio`` or ``epoll``) and the Scrapy
of the interpreter given (so one run can compare Scrapy versions). The child
is :mod:`scrapy_justproxies.sandbox.crawl_child`.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REACTORS = ("asyncio", "epoll")
CHILD = Path(__file__).with_name("crawl_child.py")


@dataclass
class CrawlResult:
    returncode: int
    reason: str | None
    stats: dict[str, Any]
    outcomes: dict[str, Any]
    log: str
    output: str
    scrapy_version: str = ""
    cpu_seconds: float = 0.0
    """User + system CPU time of the crawl process (the crawler's cost)."""
    wall_seconds: float = 0.0
    max_rss_kb: int = 0
    """Peak resident memory of the crawl process, KiB."""

    @property
    def statuses(self) -> dict[int | None, int]:
        """How many URLs ended with each final status (None: an error)."""
        return dict(Counter(o.get("status") for o in self.outcomes.values()))

    def everything_written(self) -> str:
        """Every byte the crawl wrote: log, stdout/stderr, stats, results."""
        return "\n".join(
            [self.log, self.output, json.dumps(self.stats), json.dumps(self.outcomes)]
        )


def run_crawl(
    workdir: Path,
    *,
    reactor: str,
    requests: list[dict[str, Any]],
    settings: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    python: str = sys.executable,
    timeout: float = 180,
    log_level: str = "DEBUG",
    custom_settings: dict[str, Any] | None = None,
) -> CrawlResult:
    """Crawl ``requests`` (``{"url": ..., "meta": {...}}``) and report.

    The child's environment is this one minus ``JUSTPROXIES_*`` and proxy
    variables, plus ``env``: nothing leaks in from the caller's shell.
    """
    workdir, spec_path, child_env = _prepare(
        workdir,
        reactor=reactor,
        requests=requests,
        settings=settings,
        env=env,
        log_level=log_level,
        custom_settings=custom_settings,
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(  # noqa: S603 - our own child script
        [python, str(CHILD), str(spec_path)],
        env=child_env,
        # The crawl's own directory: relative paths it writes (the default
        # JUSTPROXIES_STATE_FILE under .scrapy/) stay with it.
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    wall_seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return _collect(
        workdir,
        done.returncode,
        done.stdout + done.stderr,
        wall_seconds=wall_seconds,
        cpu_seconds=(after.ru_utime - before.ru_utime)
        + (after.ru_stime - before.ru_stime),
    )


def _prepare(
    workdir: Path,
    *,
    reactor: str,
    requests: list[dict[str, Any]],
    settings: dict[str, Any] | None,
    env: dict[str, str] | None,
    log_level: str,
    custom_settings: dict[str, Any] | None,
    spider: str = "list",
) -> tuple[Path, Path, dict[str, str]]:
    """Write the child's spec; the work dir, the spec's path and the
    child's environment."""
    if reactor not in REACTORS:
        raise ValueError(f"reactor must be one of {REACTORS}")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = workdir / "spec.json"
    for stale in (workdir / "result.json", workdir / "crawl.log"):
        stale.unlink(missing_ok=True)
    spec_path.write_text(
        json.dumps(
            {
                "reactor": reactor,
                "spider": spider,
                "requests": requests,
                "settings": {"LOG_LEVEL": log_level, **(settings or {})},
                "custom_settings": custom_settings or {},
                "log_file": str(workdir / "crawl.log"),
                "result_file": str(workdir / "result.json"),
            }
        )
    )
    child_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("JUSTPROXIES_")
        and k.lower() not in {"http_proxy", "https_proxy", "all_proxy"}
    }
    child_env.update(env or {})
    return workdir, spec_path, child_env


def _collect(
    workdir: Path,
    returncode: int,
    output: str,
    *,
    wall_seconds: float,
    cpu_seconds: float = 0.0,
) -> CrawlResult:
    """What the child left in ``workdir``, as a result."""
    result_path = workdir / "result.json"
    log_path = workdir / "crawl.log"
    result: dict[str, Any] = (
        json.loads(result_path.read_text()) if result_path.exists() else {}
    )
    return CrawlResult(
        returncode=returncode,
        reason=result.get("reason"),
        stats=result.get("stats", {}),
        outcomes=result.get("outcomes", {}),
        log=log_path.read_text() if log_path.exists() else "",
        output=output,
        scrapy_version=result.get("scrapy_version", ""),
        cpu_seconds=cpu_seconds,
        wall_seconds=wall_seconds,
        max_rss_kb=int(result.get("max_rss_kb", 0)),
    )


@dataclass
class RunningCrawl:
    """A crawl started by :func:`start_crawl`: still running (or killed)."""

    process: subprocess.Popen[str]
    workdir: Path
    started: float

    def wait(self, timeout: float = 180) -> CrawlResult:
        try:
            stdout, stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            stdout, stderr = self.process.communicate()
        return _collect(
            self.workdir,
            self.process.returncode,
            stdout + stderr,
            wall_seconds=time.monotonic() - self.started,
        )


def start_crawl(
    workdir: Path,
    *,
    reactor: str,
    requests: list[dict[str, Any]],
    settings: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    python: str = sys.executable,
    log_level: str = "DEBUG",
    custom_settings: dict[str, Any] | None = None,
    spider: str = "list",
) -> RunningCrawl:
    """Like :func:`run_crawl`, but returns at once: several crawls can run
    side by side (one site's budget shared by many processes), and one can
    be killed (``.process.kill()``). ``.wait()`` collects the result (no CPU
    time: the children overlap). ``spider="redis"``: a scrapy-redis
    ``RedisSpider`` that takes its URLs from the Redis list
    ``list:start_urls`` instead of ``requests``."""
    workdir, spec_path, child_env = _prepare(
        workdir,
        reactor=reactor,
        requests=requests,
        settings=settings,
        env=env,
        log_level=log_level,
        custom_settings=custom_settings,
        spider=spider,
    )
    process = subprocess.Popen(  # noqa: S603 - our own child script
        [python, str(CHILD), str(spec_path)],
        env=child_env,
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return RunningCrawl(process, workdir, time.monotonic())
