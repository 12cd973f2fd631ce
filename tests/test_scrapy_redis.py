"""scrapy-redis workers with shared budgets: two real ``RedisSpider``
processes with scrapy-redis's scheduler and dupefilter, sharing one site's
budget through the same Debian ``redis-server``, crawl through the sandbox
gateway to a rate-limited site.

What can go wrong there and is checked: a 429's retry goes back through
scrapy-redis's queue (pickled into Redis, possibly taken by the other
worker) and must neither be dropped by its dupefilter nor carry the
gateway's credentials into Redis; each URL is fetched once in all."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from scrapy_justproxies.sandbox.crawl import start_crawl
from scrapy_justproxies.sandbox.redis_server import RedisServer, server_binary
from tests.test_crawl import ADDON, assert_no_secret, configure, site, urls

redis = pytest.importorskip("redis")
pytest.importorskip("scrapy_redis")

HOST = "redis-workers.test"
# 429s from the start: the preset starts above what the site admits.
SITE = {
    "rate": 20,
    "burst": 4,
    "latency_p50_ms": 100,
    "latency_p95_ms": 200,
    "retry_after": "seconds",
    "pages": 1000,
}
URLS = 160


class SecretWatch(threading.Thread):
    """Reads every key in Redis over and over while the crawl runs, looking
    for the gateway's password or its ``Proxy-Authorization`` token in what
    scrapy-redis pickled there (queued requests, retries among them)."""

    def __init__(self, server: RedisServer, secrets: list[bytes]) -> None:
        super().__init__(daemon=True)
        self.db = redis.Redis(
            host="127.0.0.1", port=server.port, password=server.password
        )
        self.secrets = secrets
        self.found: list[str] = []
        self.scans = 0
        self.stop = threading.Event()

    def values(self, key: bytes) -> list[bytes]:
        kind = self.db.type(key)
        if kind == b"zset":
            return list(self.db.zrange(key, 0, -1))
        if kind == b"list":
            return list(self.db.lrange(key, 0, -1))
        if kind == b"hash":
            return [v for pair in self.db.hgetall(key).items() for v in pair]
        if kind == b"set":
            return list(self.db.smembers(key))
        if kind == b"string":
            return [self.db.get(key) or b""]
        return []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                for key in self.db.scan_iter(count=1000):
                    values = self.values(key)
                    for value in [key, *values]:
                        for secret in self.secrets:
                            if secret in value:
                                self.found.append(key.decode())
                self.scans += 1
            except redis.RedisError:
                pass  # the server went away at the end of the test
            time.sleep(0.05)


@pytest.mark.skipif(server_binary() is None, reason="no redis-server")
def test_two_redis_spiders_share_the_queue_the_dupefilter_and_the_budget(
    sandbox: Any,
    gateway_env: dict[str, str],
    reactor: str,
    tmp_path: Path,
    redis_server: RedisServer,
) -> None:
    configure(sandbox, {HOST: SITE})
    db = redis.Redis(
        host="127.0.0.1",
        port=redis_server.port,
        password=redis_server.password,
        decode_responses=True,
    )
    wanted = [u["url"] for u in urls(sandbox, HOST, URLS)]
    db.rpush("list:start_urls", *wanted)
    token = base64.b64encode(f"{sandbox.user}:{sandbox.password}".encode())
    watch = SecretWatch(redis_server, [sandbox.password.encode(), token])
    watch.start()
    settings: dict[str, Any] = {
        **ADDON,
        "JUSTPROXIES_STATE_FILE": None,
        "JUSTPROXIES_SHARED_STATE": redis_server.url,
        "SCHEDULER": "scrapy_redis.scheduler.Scheduler",
        "DUPEFILTER_CLASS": "scrapy_redis.dupefilter.RFPDupeFilter",
        "SCHEDULER_PERSIST": True,
        "REDIS_URL": redis_server.url,
        "REDIS_START_URLS_BATCH_SIZE": 40,
        "MAX_IDLE_TIME_BEFORE_CLOSE": 4,
        "CONCURRENT_REQUESTS": 32,
    }
    crawls = [
        start_crawl(
            tmp_path / f"w{index}",
            reactor=reactor,
            requests=[],
            settings=settings,
            env={**gateway_env, "JUSTPROXIES_POOL": "residential"},
            log_level="INFO",
            spider="redis",
        )
        for index in range(2)
    ]
    results = [crawl.wait(240) for crawl in crawls]
    watch.stop.set()
    watch.join(5)

    fetched: dict[str, int] = {}
    for result in results:
        assert result.reason == "finished", result.output[-3000:]
        assert "] ERROR:" not in result.log, result.log[-3000:]
        for url, outcome in result.outcomes.items():
            assert outcome["status"] == 200, (url, outcome)
            fetched[url] = fetched.get(url, 0) + 1
        # The start-up block says who holds a strict site's waiting requests.
        assert "SCHEDULER = 'scrapy_redis.scheduler.Scheduler': requests" in result.log
        assert_no_secret(result, sandbox)
        assert redis_server.password not in result.everything_written()
    # Every URL once: none lost to a 429, none twice (one dupefilter).
    assert sorted(fetched) == sorted(wanted)
    assert set(fetched.values()) == {1}
    stats = [result.stats for result in results]
    # The site was rate-limited, and its 429s were retried through the
    # shared queue, which never held the gateway's credentials.
    limited = sum(s.get("justproxies/rate_limited/total", 0) for s in stats)
    assert limited > 0
    assert site(sandbox, HOST)["admitted"] == URLS
    # Every URL and every 429's retry went through scrapy-redis's queue.
    enqueued = sum(s.get("scheduler/enqueued/redis", 0) for s in stats)
    assert enqueued == URLS + limited
    # The watch read Redis all along (a queued request lives there only
    # until a worker pops it, so catching some is likely, not certain).
    assert watch.scans > 10
    assert watch.found == []
    # Both workers crawled, under one shared budget for the site.
    assert all(s.get("response_received_count", 0) > 0 for s in stats)
    assert all(s.get("justproxies/shared/heartbeats", 0) > 0 for s in stats)
    assert max(s.get(f"justproxies/shared/processes_max/{HOST}", 0) for s in stats) == 2
