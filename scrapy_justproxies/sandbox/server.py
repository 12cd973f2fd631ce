"""The in-process sandbox: gateway, site (HTTP + HTTPS) and control API."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.server import Site

from .config import SandboxConfig
from .control import ControlResource
from .gateway import Gateway
from .policy import format_proxy_username
from .site import SiteApp, SiteResource
from .tls import SandboxTLS

CONTROL_HOST = "127.0.0.1"


def default_reactor() -> Any:
    from twisted.internet import reactor  # noqa: PLC0415 - pick the installed one

    return reactor


def check_loopback(host: str) -> None:
    """The sandbox must never listen beyond this machine."""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"the sandbox only listens on loopback addresses, not {host!r}")


@dataclass(frozen=True)
class SandboxAddresses:
    """Where a running sandbox listens."""

    host: str
    gateway_port: int
    site_http_port: int
    site_https_port: int
    control_port: int

    @property
    def gateway(self) -> str:
        """``host:port`` of the gateway, as in the ready file."""
        return f"{self.host}:{self.gateway_port}"

    @property
    def control_url(self) -> str:
        return f"http://{CONTROL_HOST}:{self.control_port}"

    def proxy_url(
        self,
        user: str,
        password: str,
        *,
        country: str | None = None,
        session: str | None = None,
    ) -> str:
        """``http://USER[-country-CC][-session-ID]:PASSWORD@host:port``."""
        name = format_proxy_username(user, country=country, session=session)
        return (
            f"http://{quote(name, safe='')}:{quote(password, safe='')}@{self.gateway}"
        )

    def site_url(
        self, host: str = "a.test", path: str = "/", *, tls: bool = False
    ) -> str:
        """A URL of the site under virtual host ``host``."""
        scheme, port = (
            ("https", self.site_https_port) if tls else ("http", self.site_http_port)
        )
        return f"{scheme}://{host}:{port}{path}"


class _TrackedWrapper(ProtocolWrapper):
    lost_waiter: Deferred[None] | None = None

    def makeConnection(self, transport: Any) -> None:
        with contextlib.suppress(AttributeError, OSError):
            transport.setTcpNoDelay(True)
        super().makeConnection(transport)  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        waiter = self.lost_waiter
        if waiter is not None:
            self.lost_waiter = None
            waiter.callback(None)


class _TrackingFactory(WrappingFactory):
    """Remembers live connections of a twisted.web site so stop() can end them."""

    protocol = _TrackedWrapper

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)  # type: ignore[no-untyped-call]
        self.noisy = False

    def close_all(self) -> list[Deferred[None]]:
        waits: list[Deferred[None]] = []
        for proto in list(self.protocols):
            assert isinstance(proto, _TrackedWrapper)
            waiter: Deferred[None] = Deferred()
            proto.lost_waiter = waiter
            waits.append(waiter)
            transport: Any = proto.transport
            transport.abortConnection()
        return waits


class _QuietSite(Site):
    noisy = False

    def log(self, request: Any) -> None:
        """No access log: the counters are the record."""


class Sandbox:
    """Gateway + site + control API in the current reactor.

    ``pinned_users`` are always accepted by the gateway, even after a
    ``/config`` that does not list them (the CLI's ``--user``).
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        pinned_users: Mapping[str, str] | None = None,
    ) -> None:
        self._pinned = dict(pinned_users or {})
        self._config = (config or SandboxConfig()).with_users(self._pinned)
        self._reactor: Any = None
        self._ports: list[Any] = []
        self._factories: list[_TrackingFactory] = []
        self._gateway: Gateway | None = None
        self._site: SiteApp | None = None
        self._tls: SandboxTLS | None = None
        self._addresses: SandboxAddresses | None = None

    # -- properties --

    @property
    def config(self) -> SandboxConfig:
        return self._config

    @property
    def addresses(self) -> SandboxAddresses:
        if self._addresses is None:
            raise RuntimeError("the sandbox is not running")
        return self._addresses

    @property
    def ca_pem(self) -> bytes:
        """PEM of the CA that signs the HTTPS site's certificates."""
        if self._tls is None:
            raise RuntimeError("the sandbox is not running")
        return self._tls.ca_pem

    @property
    def gateway(self) -> Gateway:
        if self._gateway is None:
            raise RuntimeError("the sandbox is not running")
        return self._gateway

    @property
    def site(self) -> SiteApp:
        if self._site is None:
            raise RuntimeError("the sandbox is not running")
        return self._site

    # -- lifecycle --

    def start(
        self,
        reactor: Any = None,
        *,
        host: str = "127.0.0.1",
        gateway_port: int = 0,
        site_port: int = 0,
        site_tls_port: int = 0,
        control_port: int = 0,
    ) -> SandboxAddresses:
        """Listen on every port (0 = any free one) and return the addresses."""
        if self._addresses is not None:
            raise RuntimeError("the sandbox is already running")
        check_loopback(host)
        host = "127.0.0.1" if host == "localhost" else host  # listenTCP wants an IP
        reactor = reactor if reactor is not None else default_reactor()
        self._reactor = reactor
        self._tls = SandboxTLS()
        self._gateway = Gateway(reactor, self._config.gateway)
        self._gateway.noisy = False
        self._site = SiteApp(reactor, self._config)
        site = _QuietSite(SiteResource(self._site))  # type: ignore[no-untyped-call]
        control = _QuietSite(  # type: ignore[no-untyped-call]
            ControlResource(
                stats=self.stats,
                reset=self.reset,
                get_config=lambda: self._config,
                configure=self.configure,
            )
        )
        try:
            gateway_listener = reactor.listenTCP(
                gateway_port, self._gateway, interface=host
            )
            self._ports.append(gateway_listener)
            site_factory = _TrackingFactory(site)
            self._factories.append(site_factory)
            site_listener = reactor.listenTCP(site_port, site_factory, interface=host)
            self._ports.append(site_listener)
            tls_factory = _TrackingFactory(site)
            self._factories.append(tls_factory)
            tls_listener = reactor.listenSSL(
                site_tls_port,
                tls_factory,
                self._tls.server_connection_creator(),
                interface=host,
            )
            self._ports.append(tls_listener)
            control_factory = _TrackingFactory(control)
            self._factories.append(control_factory)
            control_listener = reactor.listenTCP(
                control_port, control_factory, interface=CONTROL_HOST
            )
            self._ports.append(control_listener)
        except Exception:
            for port in self._ports:
                port.stopListening()
            self._ports.clear()
            self._factories.clear()
            raise
        self._addresses = SandboxAddresses(
            host=host,
            gateway_port=gateway_listener.getHost().port,
            site_http_port=site_listener.getHost().port,
            site_https_port=tls_listener.getHost().port,
            control_port=control_listener.getHost().port,
        )
        return self._addresses

    def stop(self) -> Deferred[None]:
        """Stop listening, close every connection; fires once all are gone."""
        if self._addresses is None:
            return succeed(None)
        waits: list[Deferred[Any]] = [
            maybeDeferred(port.stopListening) for port in self._ports
        ]
        if self._gateway is not None:
            waits.append(self._gateway.stop())
        for factory in self._factories:
            waits += factory.close_all()
        self._ports.clear()
        self._factories.clear()
        self._addresses = None
        done: Deferred[None] = gatherResults(waits).addCallback(lambda _: None)
        return done

    async def __aenter__(self) -> Sandbox:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- control --

    def configure(self, config: SandboxConfig) -> None:
        """Replace the configuration live; new limits apply to new requests."""
        self._config = config.with_users(self._pinned)
        if self._gateway is not None:
            self._gateway.configure(self._config.gateway)
        if self._site is not None:
            self._site.configure(self._config)

    def reset(self) -> None:
        """Zero the counters and restart the schedule clock and buckets."""
        if self._gateway is not None:
            self._gateway.stats.reset()
        if self._site is not None:
            self._site.reset()

    def stats(self) -> dict[str, Any]:
        gateway = self._gateway.stats.to_dict() if self._gateway is not None else {}
        sites = self._site.stats() if self._site is not None else {}
        totals = self._site.totals() if self._site is not None else {}
        elapsed = self._site.now() if self._site is not None else 0.0
        return {
            "elapsed": round(elapsed, 3),
            "gateway": gateway,
            "sites": sites,
            "totals": totals,
        }
