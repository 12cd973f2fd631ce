"""The sandbox gateway over real loopback sockets, in the test reactor."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import pytest_twisted  # type: ignore[import-untyped]
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from scrapy_justproxies.sandbox import (
    GatewayConfig,
    HostPolicy,
    Sandbox,
    SandboxConfig,
)
from scrapy_justproxies.sandbox.policy import basic_authorization
from scrapy_justproxies.sandbox.rawhttp import (
    RawResponse,
    connect,
    direct_request,
    open_tunnel,
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


def gateway(sandbox: Sandbox) -> tuple[str, int]:
    return ("127.0.0.1", sandbox.addresses.gateway_port)


async def get(
    sandbox: Sandbox,
    path: str,
    *,
    host: str = "a.test",
    user: str | None = USER,
    password: str | None = PASSWORD,
    **kwargs: Any,
) -> RawResponse:
    url = sandbox.addresses.site_url(host, path)
    return await proxy_request(
        reactor, gateway(sandbox), url, user=user, password=password, **kwargs
    )


def auth(user: str = USER, password: str = PASSWORD) -> tuple[str, str]:
    return ("Proxy-Authorization", basic_authorization(user, password))


# -- auth ------------------------------------------------------------------------


@bounded()
async def test_good_auth_forwards_without_proxy_credentials() -> None:
    async with Sandbox() as sandbox:
        response = await get(sandbox, "/echo")
        assert response.status == 200
        echo = response.json()
        assert echo["via_gateway"] is True
        assert echo["peer_ip"].startswith("127.0.1.")
        assert echo["headers"]["x-justproxies-exit-ip"] == echo["peer_ip"]
        assert "proxy-authorization" not in echo["headers"]
        stats = sandbox.stats()
        assert stats["gateway"]["requests"] == 1
        assert stats["gateway"]["exit_ips"] == {echo["peer_ip"]: 1}
        site = stats["sites"]["a.test"]
        assert site["proxy_authorization_seen"] == 0
        assert site["via_gateway"] == 1
        assert site["direct"] == 0


@pytest.mark.parametrize(
    ("user", "password"),
    [
        (USER, "wrong"),
        (None, None),
        ("nobody", PASSWORD),
        ("demo-country-usa", PASSWORD),
    ],
)
@bounded()
async def test_bad_credentials_get_407(user: str | None, password: str | None) -> None:
    async with Sandbox() as sandbox:
        response = await get(sandbox, "/echo", user=user, password=password)
        assert response.status == 407
        assert response.header("Proxy-Authenticate") == 'Basic realm="justproxies"'
        assert response.body
        stats = sandbox.stats()
        assert stats["gateway"]["auth_failures"] == 1
        assert stats["gateway"]["requests"] == 0
        assert stats["totals"]["requests"] == 0


@bounded()
async def test_407_keeps_the_connection_usable() -> None:
    async with Sandbox() as sandbox:
        conn = await connect(reactor, *gateway(sandbox))
        url = sandbox.addresses.site_url("a.test", "/echo")
        host = [("Host", url.split("/")[2])]
        first = await conn.request("GET", url, host)
        assert first.status == 407
        second = await conn.request("GET", url, [*host, auth()])
        assert second.status == 200
        await conn.close()
        assert sandbox.stats()["gateway"]["connections_accepted"] == 1


@bounded()
async def test_username_parameters_are_parsed() -> None:
    async with Sandbox() as sandbox:
        response = await get(sandbox, "/echo", user="demo-country-de-session-s_1")
        assert response.status == 200
        stats = sandbox.stats()["gateway"]
        assert stats["countries"] == {"DE": 1}
        assert stats["sessions"] == {"s_1": response.json()["peer_ip"]}


@bounded()
async def test_sticky_session_keeps_one_exit_ip_rotation_uses_many() -> None:
    async with Sandbox() as sandbox:
        sticky = [
            (await get(sandbox, "/echo", user="demo-session-abc")).json()["peer_ip"]
            for _ in range(5)
        ]
        assert len(set(sticky)) == 1
        rotating = [(await get(sandbox, "/echo")).json()["peer_ip"] for _ in range(5)]
        assert len(set(rotating)) == 5
        assert sticky[0] not in rotating
        gateway_stats = sandbox.stats()["gateway"]
        # Pooled per exit IP: the sticky session reused one upstream connection.
        assert gateway_stats["upstream_connections"] == 1 + 5
        assert gateway_stats["upstream_reuses"] == 4
        assert sandbox.stats()["sites"]["a.test"]["distinct_exit_ips"] == 6


# -- forwarding ------------------------------------------------------------------


@bounded()
async def test_hop_by_hop_headers_are_stripped() -> None:
    async with Sandbox() as sandbox:
        headers = [
            ("Connection", "keep-alive, X-Private"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Trailer", "X-Sum"),
            ("Upgrade", "websocket"),
            ("X-Private", "secret"),
            ("X-JustProxies-Exit-IP", "1.2.3.4"),  # a spoof is replaced
            ("X-Kept", "yes"),
        ]
        echo = (await get(sandbox, "/echo", headers=headers)).json()
        sent = echo["headers"]
        for name in (
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
            "x-private",
            "proxy-authorization",
        ):
            assert name not in sent, name
        assert sent["x-kept"] == "yes"
        assert sent["x-justproxies-exit-ip"] == echo["peer_ip"]


@bounded()
async def test_request_bodies_are_forwarded() -> None:
    async with Sandbox() as sandbox:
        echo = (await get(sandbox, "/echo", method="POST", body=b"hello")).json()
        assert (echo["method"], echo["body"], echo["body_length"]) == (
            "POST",
            "hello",
            5,
        )
        # A chunked request body arrives de-chunked with a Content-Length.
        conn = await connect(reactor, *gateway(sandbox))
        url = sandbox.addresses.site_url("a.test", "/echo")
        head = [("Host", url.split("/")[2]), auth(), ("Transfer-Encoding", "chunked")]
        response = await conn.request(
            "PUT", url, head, b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        await conn.close()
        echo = response.json()
        assert echo["body"] == "abcde"
        assert echo["headers"]["content-length"] == "5"
        assert "transfer-encoding" not in echo["headers"]


@bounded()
async def test_keep_alive_one_client_connection_for_many_requests() -> None:
    async with Sandbox() as sandbox:
        conn = await connect(reactor, *gateway(sandbox))
        url = sandbox.addresses.site_url("a.test", "/item/1")
        head = [("Host", url.split("/")[2]), auth()]
        statuses = [(await conn.request("GET", url, head)).status for _ in range(4)]
        # HEAD carries a length but no body; the connection must stay in sync.
        head_response = await conn.request("HEAD", url, head)
        assert head_response.body == b""
        assert int(head_response.header("Content-Length") or 0) > 0
        last = await conn.request("GET", url, head)
        await conn.close()
        assert statuses == [200] * 4
        assert b'<h1 class="title">Item 1</h1>' in last.body
        stats = sandbox.stats()["gateway"]
        assert stats["connections_accepted"] == 1
        assert stats["requests"] == 6


@bounded()
async def test_pipelined_requests_are_answered_in_order() -> None:
    async with Sandbox() as sandbox:
        conn = await connect(reactor, *gateway(sandbox))
        authority = f"a.test:{sandbox.addresses.site_http_port}"
        raw = b"".join(
            f"GET http://{authority}/item/{i} HTTP/1.1\r\nHost: {authority}\r\n"
            f"Proxy-Authorization: {basic_authorization(USER, PASSWORD)}\r\n\r\n".encode()
            for i in (1, 2, 3)
        )
        conn.send_raw(raw)
        bodies = [(await conn.read_response()).body for _ in range(3)]
        await conn.close()
        for i, body in enumerate(bodies, 1):
            assert f"Item {i}</h1>".encode() in body


@bounded()
async def test_connection_close_is_honoured() -> None:
    async with Sandbox() as sandbox:
        conn = await connect(reactor, *gateway(sandbox))
        url = sandbox.addresses.site_url("a.test", "/")
        head = [("Host", url.split("/")[2]), auth(), ("Connection", "close")]
        response = await conn.request("GET", url, head)
        assert response.status == 200
        assert response.header("Connection") == "close"
        await conn.lost  # the gateway closes after the response


@bounded()
async def test_chunked_and_close_delimited_upstreams_are_reframed() -> None:
    class Chunky(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> int:
            # No Content-Length: twisted.web answers HTTP/1.1 with chunks.
            for part in (b"alpha-", b"beta-", b"gamma"):
                request.write(part)
            request.finish()
            return NOT_DONE_YET

    class CloseDelimited(Protocol):
        def dataReceived(self, data: bytes) -> None:
            if b"\r\n\r\n" in data:
                transport: Any = self.transport
                transport.write(b"HTTP/1.1 200 OK\r\n\r\nuntil-the-end")
                transport.loseConnection()

    site: Any = Site  # twisted.web is untyped
    resource: Any = Chunky
    chunky = reactor.listenTCP(0, site(resource()), interface="127.0.0.1")
    closer = reactor.listenTCP(
        0, Factory.forProtocol(CloseDelimited), interface="127.0.0.1"
    )
    try:
        async with Sandbox() as sandbox:
            conn = await connect(reactor, *gateway(sandbox))
            for port, expected in (
                (chunky.getHost().port, b"alpha-beta-gamma"),
                (closer.getHost().port, b"until-the-end"),
            ):
                url = f"http://localhost:{port}/"
                response = await conn.request(
                    "GET", url, [("Host", f"localhost:{port}"), auth()]
                )
                assert response.status == 200
                assert response.body == expected
                assert response.header("Transfer-Encoding") == "chunked"
            await conn.close()
            assert sandbox.stats()["gateway"]["connections_accepted"] == 1
    finally:
        await gatherResults([chunky.stopListening(), closer.stopListening()])


# -- CONNECT -----------------------------------------------------------------------


@bounded()
async def test_connect_tunnel_to_https_site_end_to_end() -> None:
    async with Sandbox() as sandbox:
        port = sandbox.addresses.site_https_port
        conn, response = await open_tunnel(
            reactor,
            gateway(sandbox),
            f"a.test:{port}",
            user="demo-session-t1",
            password=PASSWORD,
        )
        assert response.status == 200
        conn.start_tls("a.test", sandbox.ca_pem)  # verified against the sandbox CA
        head = [("Host", f"a.test:{port}")]
        first = (await conn.request("GET", "/echo", head)).json()
        second = await conn.request("GET", "/item/7", head)  # keep-alive in the tunnel
        await conn.close()
        assert first["tls"] is True
        assert first["via_gateway"] is True
        assert first["peer_ip"] == sandbox.stats()["gateway"]["sessions"]["t1"]
        assert "proxy-authorization" not in first["headers"]
        assert b"Item 7" in second.body
        stats = sandbox.stats()
        assert stats["gateway"]["connects"] == 1
        assert stats["gateway"]["requests"] == 0
        assert stats["sites"]["a.test"]["admitted"] == 2
        assert stats["sites"]["a.test"]["proxy_authorization_seen"] == 0


@bounded()
async def test_connect_needs_auth_and_can_retry_on_the_same_connection() -> None:
    async with Sandbox() as sandbox:
        target = f"a.test:{sandbox.addresses.site_https_port}"
        conn = await connect(reactor, *gateway(sandbox))
        refused = await conn.request("CONNECT", target, [("Host", target)])
        assert refused.status == 407
        accepted = await conn.request("CONNECT", target, [("Host", target), auth()])
        assert accepted.status == 200
        conn.start_tls("a.test", sandbox.ca_pem)
        response = await conn.request("GET", "/", [("Host", target)])
        await conn.close()
        assert response.status == 200
        assert sandbox.stats()["gateway"]["auth_failures"] == 1


@bounded()
async def test_large_bodies_stream_through_both_paths() -> None:
    size = 8_000_000
    async with Sandbox() as sandbox:
        plain = await get(sandbox, f"/bytes/{size}")
        assert len(plain.body) == size
        port = sandbox.addresses.site_https_port
        conn, _ = await open_tunnel(
            reactor, gateway(sandbox), f"a.test:{port}", user=USER, password=PASSWORD
        )
        conn.start_tls("a.test")
        tunneled = await conn.request(
            "GET", f"/bytes/{size}", [("Host", f"a.test:{port}")]
        )
        await conn.close()
        assert len(tunneled.body) == size


def _buffered(transport: Any) -> int:
    # Bytes Twisted holds for a slow reader (abstract.FileDescriptor internals).
    return len(transport.dataBuffer) + int(transport._tempDataLen)


@pytest.mark.parametrize("tunnel", [False, True])
@bounded()
async def test_flow_control_bounds_buffering_for_a_slow_client(tunnel: bool) -> None:
    size = 64_000_000
    async with Sandbox() as sandbox:
        if tunnel:
            port = sandbox.addresses.site_http_port  # a plain tunnel is enough
            conn, _ = await open_tunnel(
                reactor,
                gateway(sandbox),
                f"a.test:{port}",
                user=USER,
                password=PASSWORD,
            )
            conn.send_raw(
                f"GET /bytes/{size} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode()
            )
        else:
            conn = await connect(reactor, *gateway(sandbox))
            url = sandbox.addresses.site_url("a.test", f"/bytes/{size}")
            conn.send_raw(
                f"GET {url} HTTP/1.1\r\nHost: a.test\r\n"
                f"Proxy-Authorization: {basic_authorization(USER, PASSWORD)}\r\n\r\n".encode()
            )
        conn.tx.pauseProducing()  # a client that stops reading
        await deferLater(reactor, 0.6, lambda: None)
        (client,) = sandbox.gateway.clients
        assert _buffered(client.transport) < 4_000_000
        site = sandbox.stats()["sites"]["a.test"]
        assert site["inflight"] == 1  # the site is held back too, not finished
        conn.tx.abortConnection()
        await conn.lost


# -- refusals and failures ---------------------------------------------------------


@bounded()
async def test_non_test_hosts_get_502() -> None:
    async with Sandbox() as sandbox:
        response = await proxy_request(
            reactor,
            gateway(sandbox),
            "http://example.com/",
            user=USER,
            password=PASSWORD,
        )
        assert response.status == 502
        proxy_status = response.header("Proxy-Status") or ""
        assert proxy_status.startswith("justproxies-gateway;")
        assert "error=destination_ip_prohibited" in proxy_status
        conn, tunnel = await open_tunnel(
            reactor, gateway(sandbox), "example.com:443", user=USER, password=PASSWORD
        )
        await conn.close()
        assert tunnel.status == 502
        assert sandbox.stats()["gateway"]["blocked_targets"] == 2


@bounded()
async def test_https_absolute_uri_and_garbage_get_400() -> None:
    async with Sandbox() as sandbox:
        response = await proxy_request(
            reactor, gateway(sandbox), "https://a.test/", user=USER, password=PASSWORD
        )
        assert response.status == 400
        conn = await connect(reactor, *gateway(sandbox))
        conn.send_raw(b"NONSENSE\r\n\r\n")
        garbage = await conn.read_response()
        await conn.lost
        assert garbage.status == 400
        assert sandbox.stats()["gateway"]["bad_requests"] == 2


@bounded()
async def test_refused_target_gets_502_with_proxy_status() -> None:
    listener = reactor.listenTCP(
        0, Factory.forProtocol(Protocol), interface="127.0.0.1"
    )
    closed_port = listener.getHost().port
    await listener.stopListening()
    async with Sandbox() as sandbox:
        url = f"http://a.test:{closed_port}/"
        refused = await proxy_request(
            reactor, gateway(sandbox), url, user=USER, password=PASSWORD
        )
        assert refused.status == 502
        assert "error=connection_refused" in (refused.header("Proxy-Status") or "")
        assert sandbox.stats()["gateway"]["upstream_errors"] == 1


@pytest.mark.parametrize(
    ("settings", "status", "error"),
    [
        ({"fail_502": 1.0}, 502, "destination_unavailable"),
        ({"fail_503": 1.0}, 503, "connection_limit_reached"),
    ],
)
@bounded()
async def test_injected_gateway_errors(
    settings: dict[str, float], status: int, error: str
) -> None:
    config = SandboxConfig(gateway=GatewayConfig(**settings))  # type: ignore[arg-type]
    async with Sandbox(config) as sandbox:
        response = await get(sandbox, "/")
        assert response.status == status
        assert f"error={error}" in (response.header("Proxy-Status") or "")
        stats = sandbox.stats()
        assert stats["gateway"]["injected"][str(status)] == 1
        assert stats["totals"]["requests"] == 0  # never reached the site


@bounded()
async def test_injected_drop_closes_the_connection() -> None:
    async with Sandbox(SandboxConfig(gateway=GatewayConfig(drop=1.0))) as sandbox:
        with pytest.raises(ConnectionDone):
            await get(sandbox, "/")
        assert sandbox.stats()["gateway"]["injected"]["drop"] == 1


@bounded()
async def test_injected_failure_mix_and_live_reconfiguration() -> None:
    config = SandboxConfig(gateway=GatewayConfig(fail_502=0.3, fail_503=0.3, seed=5))
    async with Sandbox(config) as sandbox:
        statuses = [(await get(sandbox, "/")).status for _ in range(60)]
        injected = sandbox.stats()["gateway"]["injected"]
        assert injected["502"] == statuses.count(502) > 5
        assert injected["503"] == statuses.count(503) > 5
        assert statuses.count(200) > 5
        sandbox.configure(SandboxConfig())
        assert (await get(sandbox, "/")).status == 200


@bounded()
async def test_hop_latency_delays_each_request() -> None:
    config = SandboxConfig(gateway=GatewayConfig(hop_latency_ms=150))
    async with Sandbox(config) as sandbox:
        started = reactor.seconds()
        await get(sandbox, "/")
        assert reactor.seconds() - started >= 0.14


# -- the site's view -----------------------------------------------------------------


@bounded()
async def test_direct_requests_are_counted_as_direct() -> None:
    async with Sandbox() as sandbox:
        port = sandbox.addresses.site_http_port
        response = await direct_request(
            reactor, port, "a.test", "/echo", headers=[auth()]
        )
        echo = response.json()
        assert echo["via_gateway"] is False
        assert echo["peer_ip"] == "127.0.0.1"
        tls = await direct_request(
            reactor,
            sandbox.addresses.site_https_port,
            "b.test",
            "/",
            tls=True,
            ca_pem=sandbox.ca_pem,
        )
        assert tls.status == 200
        sites = sandbox.stats()["sites"]
        assert sites["a.test"]["direct"] == 1
        assert sites["a.test"]["via_gateway"] == 0
        assert sites["a.test"]["proxy_authorization_seen"] == 1  # a leak is visible
        assert sites["b.test"]["direct"] == 1


@bounded()
async def test_stop_closes_open_connections_and_tunnels() -> None:
    sandbox = Sandbox(SandboxConfig(sites={"a.test": HostPolicy(latency_p50_ms=5000)}))
    sandbox.start(reactor)
    idle = await connect(reactor, *gateway(sandbox))
    tunnel, _ = await open_tunnel(
        reactor,
        gateway(sandbox),
        f"a.test:{sandbox.addresses.site_http_port}",
        user=USER,
        password=PASSWORD,
    )
    tunnel.send_raw(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")  # held by the latency
    while sandbox.stats()["totals"]["inflight"] != 1:
        await deferLater(reactor, 0.02, lambda: None)
    await sandbox.stop()
    await idle.lost
    await tunnel.lost


@bounded()
async def test_expect_100_continue() -> None:
    async with Sandbox() as sandbox:
        conn = await connect(reactor, *gateway(sandbox))
        url = sandbox.addresses.site_url("a.test", "/echo")
        conn.send_raw(
            f"POST {url} HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\n"
            f"Proxy-Authorization: {basic_authorization(USER, PASSWORD)}\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        await deferLater(reactor, 0.2, lambda: None)
        assert conn._buffer.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        conn.send_raw(b"data")
        echo = (await conn.read_response("POST")).json()
        await conn.close()
        assert echo["body"] == "data"
        assert "expect" not in echo["headers"]


@bounded()
async def test_exit_ip_count_limits_the_pool_live() -> None:
    async with Sandbox() as sandbox:
        sandbox.configure(SandboxConfig(gateway=GatewayConfig(exit_ip_count=2)))
        peers = {(await get(sandbox, "/echo")).json()["peer_ip"] for _ in range(6)}
        assert peers == {"127.0.1.1", "127.0.1.2"}


def test_proxy_url_quotes_credentials() -> None:
    from scrapy_justproxies.sandbox import SandboxAddresses  # noqa: PLC0415

    addresses = SandboxAddresses("127.0.0.1", 1, 2, 3, 4)
    url = addresses.proxy_url("demo", "p@ss:w/rd", country="us", session="s1")
    assert url == "http://demo-country-us-session-s1:p%40ss%3Aw%2Frd@127.0.0.1:1"
    assert addresses.site_url("b.test", "/x", tls=True) == "https://b.test:3/x"
    assert addresses.control_url == "http://127.0.0.1:4"
