"""The sandbox site (admission, pages, counters) and the control API, in-process."""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Coroutine
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from scrapy_justproxies.sandbox import HostPolicy, Sandbox, SandboxConfig
from scrapy_justproxies.sandbox.rawhttp import (
    RawResponse,
    connect,
    direct_request,
    proxy_request,
)

USER, PASSWORD = "demo", "demo-secret"
reactor: Any = _reactor  # zope interfaces confuse mypy without its plugin
T = TypeVar("T")


def bounded(
    seconds: float = 15.0,
) -> Callable[[Callable[..., Coroutine[Any, Any, T]]], Any]:
    """Run an async test in the reactor, failing (not hanging) after ``seconds``."""

    def decorate(fn: Callable[..., Coroutine[Any, Any, T]]) -> Any:
        @functools.wraps(fn)
        async def run(*args: Any, **kwargs: Any) -> T:
            work = Deferred.fromCoroutine(fn(*args, **kwargs))
            return await work.addTimeout(seconds, reactor)

        return pytest_twisted.ensureDeferred(run)

    return decorate


def sites(**policies: HostPolicy) -> SandboxConfig:
    return SandboxConfig(sites={f"{host}.test": p for host, p in policies.items()})


async def direct(sandbox: Sandbox, path: str, host: str = "a.test") -> RawResponse:
    return await direct_request(reactor, sandbox.addresses.site_http_port, host, path)


async def via_gateway(
    sandbox: Sandbox, path: str, *, user: str = USER, host: str = "a.test"
) -> RawResponse:
    return await proxy_request(
        reactor,
        ("127.0.0.1", sandbox.addresses.gateway_port),
        sandbox.addresses.site_url(host, path),
        user=user,
        password=PASSWORD,
    )


async def concurrently(*calls: Coroutine[Any, Any, T]) -> list[T]:
    results: list[T] = await gatherResults(
        [Deferred.fromCoroutine(call) for call in calls], consumeErrors=True
    )
    return results


async def pause(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def control(
    sandbox: Sandbox, method: str, path: str, payload: object = None
) -> RawResponse:
    body = b"" if payload is None else json.dumps(payload).encode()
    return await direct_request(
        reactor,
        sandbox.addresses.control_port,
        "127.0.0.1",
        path,
        method=method,
        body=body,
    )


# -- admission -------------------------------------------------------------------------


@bounded(20)
async def test_token_bucket_admits_rate_times_window_plus_burst() -> None:
    rate, burst = 20.0, 5
    async with Sandbox(sites(a=HostPolicy(rate=rate, burst=burst))) as sandbox:
        port = sandbox.addresses.site_http_port
        head = [("Host", f"a.test:{port}")]
        window = 1.5
        sandbox.reset()
        started = reactor.seconds()
        retry_afters: list[str | None] = []

        async def hammer() -> list[int]:
            conn = await connect(reactor, "127.0.0.1", port)
            statuses = []
            while reactor.seconds() - started < window:
                response = await conn.request("GET", "/", head)
                statuses.append(response.status)
                if response.status == 429:
                    retry_afters.append(response.header("Retry-After"))
            await conn.close()
            return statuses

        results = await concurrently(*(hammer() for _ in range(4)))
        elapsed = reactor.seconds() - started
        statuses = [s for result in results for s in result]
        admitted = statuses.count(200)
        assert (
            burst + rate * window * 0.85 - 2 <= admitted <= burst + rate * elapsed + 2
        )
        assert statuses.count(429) > admitted  # we really pushed past the limit
        assert all(value is not None and int(value) >= 1 for value in retry_afters)
        stats = sandbox.stats()["sites"]["a.test"]
        assert stats["admitted"] == admitted
        assert stats["rate_limited"] == stats["rejected_by_rate"] == statuses.count(429)
        per_second = stats["per_second"]
        assert sum(b["admitted"] for b in per_second) == admitted
        assert sum(b["rate_limited"] for b in per_second) == statuses.count(429)


@pytest.mark.parametrize("mode", ["seconds", "http-date", "none"])
@bounded()
async def test_retry_after_modes(mode: str) -> None:
    policy = HostPolicy(rate=0.5, burst=1, retry_after=mode)  # type: ignore[arg-type]
    async with Sandbox(sites(a=policy)) as sandbox:
        assert (await direct(sandbox, "/")).status == 200
        rejected = await direct(sandbox, "/")
        assert rejected.status == 429
        assert rejected.body
        value = rejected.header("Retry-After")
        if mode == "seconds":
            assert value == "2"  # one token every 2 s, rounded up
        elif mode == "http-date":
            assert value is not None
            delay = parsedate_to_datetime(value).timestamp() - time.time()
            assert 0.5 <= delay <= 4
        else:
            assert value is None


@bounded()
async def test_inflight_cap_rejects_over_the_cap() -> None:
    # The latency is long enough for all six to arrive while two are held.
    policy = HostPolicy(inflight_cap=2, latency_p50_ms=600)
    async with Sandbox(sites(a=policy)) as sandbox:
        responses = await concurrently(*(direct(sandbox, "/") for _ in range(6)))
        statuses = sorted(r.status for r in responses)
        assert statuses == [200, 200, 429, 429, 429, 429]
        assert {r.header("Retry-After") for r in responses if r.status == 429} == {"1"}
        stats = sandbox.stats()["sites"]["a.test"]
        assert stats["max_inflight"] == 2
        assert stats["rejected_by_inflight"] == 4
        assert stats["inflight"] == 0
        assert stats["completed"] == 2


@bounded()
async def test_max_inflight_tracks_concurrency_through_the_gateway() -> None:
    async with Sandbox(sites(a=HostPolicy(latency_p50_ms=600))) as sandbox:
        await concurrently(*(via_gateway(sandbox, "/") for _ in range(5)))
        await via_gateway(sandbox, "/", host="b.test")
        stats = sandbox.stats()
        assert stats["sites"]["a.test"]["max_inflight"] == 5
        assert stats["sites"]["b.test"]["max_inflight"] == 1
        assert stats["totals"]["max_inflight"] == 5
        assert (
            max(b["max_inflight"] for b in stats["sites"]["a.test"]["per_second"]) == 5
        )


@pytest.mark.parametrize(("limit_key", "admitted"), [("exit_ip", 4), ("host", 2)])
@bounded()
async def test_limit_key(limit_key: str, admitted: int) -> None:
    policy = HostPolicy(rate=0.01, burst=2, limit_key=limit_key)  # type: ignore[arg-type]
    async with Sandbox(sites(a=policy)) as sandbox:
        statuses = [
            (await via_gateway(sandbox, "/", user=f"demo-session-{session}")).status
            for session in ("s1", "s1", "s1", "s2", "s2", "s2")
        ]
        assert statuses.count(200) == admitted
        if limit_key == "exit_ip":
            assert statuses == [200, 200, 429, 200, 200, 429]


@bounded()
async def test_schedule_changes_the_rate_and_reset_restarts_it() -> None:
    # Unlimited until t=1 s, then a bucket that is not refilled before t=5 s.
    policy = HostPolicy(rate=None, burst=2, schedule=((1.0, 0.0), (5.0, None)))
    async with Sandbox(sites(a=policy)) as sandbox:
        sandbox.reset()
        early = [(await direct(sandbox, "/")).status for _ in range(8)]
        assert early == [200] * 8
        assert sandbox.site.now() < 1.0
        await pause(max(0.0, 1.1 - sandbox.site.now()))
        late = [await direct(sandbox, "/") for _ in range(4)]
        assert [r.status for r in late] == [200, 200, 429, 429]
        retry_after = int(late[-1].header("Retry-After") or 0)
        assert 3 <= retry_after <= 4  # until the schedule lifts the limit at t=5
        sandbox.reset()  # schedule time is 0 again: unlimited
        assert [(await direct(sandbox, "/")).status for _ in range(4)] == [200] * 4


@bounded()
async def test_latency_is_applied() -> None:
    async with Sandbox(sites(a=HostPolicy(latency_p50_ms=120))) as sandbox:
        started = reactor.seconds()
        await direct(sandbox, "/")
        assert reactor.seconds() - started >= 0.11
        started = reactor.seconds()
        await direct(sandbox, "/", host="fast.test")  # default policy: no latency
        assert reactor.seconds() - started < 1.0


def test_host_sampler_follows_the_policy() -> None:
    from scrapy_justproxies.sandbox.site import SiteApp  # noqa: PLC0415

    policy = HostPolicy(latency_p50_ms=40, latency_p95_ms=200, seed=3)
    app = SiteApp(reactor, sites(a=policy))
    sampler = app.sampler("a.test", policy)
    draws = sorted(sampler() for _ in range(4000))
    assert draws[2000] == pytest.approx(40, rel=0.1)
    assert draws[3800] == pytest.approx(200, rel=0.15)


# -- pages -------------------------------------------------------------------------------


@bounded()
async def test_catalog_pages_and_items() -> None:
    async with Sandbox(sites(shop=HostPolicy(pages=3, seed=1))) as sandbox:
        home = await direct(sandbox, "/", "shop.test")
        assert 'href="/catalog/1"' in home.text
        first = await direct(sandbox, "/catalog/1", "shop.test")
        assert re.findall(r'href="/item/(\d+)"', first.text) == [
            str(i) for i in range(1, 11)
        ]
        assert '<a rel="next" href="/catalog/2">' in first.text
        last = await direct(sandbox, "/catalog/3", "shop.test")
        assert 'rel="next"' not in last.text
        assert "/item/30" in last.text
        item = await direct(sandbox, "/item/30", "shop.test")
        assert '<h1 class="title">Item 30</h1>' in item.text
        assert re.search(r'<span class="price">\$\d+\.\d\d</span>', item.text)
        assert item.header("Content-Type") == "text/html; charset=utf-8"
        for missing in ("/catalog/4", "/catalog/0", "/item/31", "/nope", "/bytes/x"):
            assert (await direct(sandbox, missing, "shop.test")).status == 404, missing
        data = await direct(sandbox, "/bytes/12345", "shop.test")
        assert len(data.body) == 12345
        robots = await direct(sandbox, "/robots.txt", "shop.test")
        assert robots.status == 200
        statuses = sandbox.stats()["sites"]["shop.test"]["statuses"]
        assert statuses == {"200": 6, "404": 5}


@bounded()
async def test_echo_reports_the_request() -> None:
    async with Sandbox() as sandbox:
        response = await direct_request(
            reactor,
            sandbox.addresses.site_http_port,
            "Echo.Test",
            "/echo?x=1",
            method="POST",
            headers=[("X-Custom", "v")],
            body=b"payload",
        )
        echo = response.json()
        assert echo["method"] == "POST"
        assert echo["path"] == "/echo"
        assert echo["uri"] == "/echo?x=1"
        assert echo["host"] == "echo.test"
        assert echo["headers"]["x-custom"] == "v"
        assert echo["body"] == "payload"
        assert echo["peer_ip"] == "127.0.0.1"
        assert echo["via_gateway"] is False
        assert echo["tls"] is False


# -- counters and control API ------------------------------------------------------------


@bounded()
async def test_reset_zeroes_counters() -> None:
    async with Sandbox(sites(a=HostPolicy(rate=0.01, burst=1))) as sandbox:
        await via_gateway(sandbox, "/")
        await via_gateway(sandbox, "/")
        stats = sandbox.stats()
        assert stats["sites"]["a.test"]["admitted"] == 1
        assert stats["sites"]["a.test"]["rate_limited"] == 1
        assert stats["gateway"]["connections_accepted"] == 2
        sandbox.reset()
        stats = sandbox.stats()
        assert stats["elapsed"] < 0.5
        site = stats["sites"]["a.test"]
        assert (site["admitted"], site["rate_limited"], site["per_second"]) == (
            0,
            0,
            [],
        )
        assert site["distinct_exit_ips"] == 0
        assert stats["gateway"]["connections_accepted"] == 0
        assert stats["gateway"]["exit_ips"] == {}
        assert stats["totals"]["requests"] == 0
        # The bucket restarted full as well.
        assert (await via_gateway(sandbox, "/")).status == 200


@bounded()
async def test_control_api() -> None:
    async with Sandbox() as sandbox:
        assert (await control(sandbox, "GET", "/health")).json() == {"ok": True}
        await via_gateway(sandbox, "/")
        stats = (await control(sandbox, "GET", "/stats")).json()
        assert set(stats) == {"elapsed", "gateway", "sites", "totals"}
        assert stats["sites"]["a.test"]["admitted"] == 1
        assert stats["totals"]["admitted"] == 1
        assert stats["gateway"]["requests"] == 1

        bad = await control(
            sandbox, "POST", "/config", {"sites": {"a.test": {"rate": -1}}}
        )
        assert bad.status == 400
        assert "sites['a.test'].rate: must be >= 0" in bad.json()["error"]
        not_json = await control(sandbox, "POST", "/config", None)
        assert not_json.status == 400

        new = {"sites": {"a.test": {"rate": 0.01, "burst": 1}}}
        applied = await control(sandbox, "POST", "/config", new)
        assert applied.status == 200
        assert applied.json()["config"]["sites"]["a.test"]["burst"] == 1
        assert sandbox.config.sites["a.test"].rate == 0.01
        assert [(await via_gateway(sandbox, "/")).status for _ in range(2)] == [
            200,
            429,
        ]
        current = (await control(sandbox, "GET", "/config")).json()
        assert current["sites"]["a.test"]["rate"] == 0.01

        assert (await control(sandbox, "POST", "/reset", {})).json() == {"ok": True}
        assert sandbox.stats()["totals"]["requests"] == 0
        assert (await control(sandbox, "GET", "/reset")).status == 405
        assert (await control(sandbox, "GET", "/nothing")).status == 404
