"""A local stand-in for the JustProxies gateway and a rate-limiting target site.

In a test reactor::

    sandbox = Sandbox(SandboxConfig(sites={"a.test": HostPolicy(rate=5)}))
    addresses = sandbox.start(reactor)
    ...
    await sandbox.stop()

As a process (blocking callers: demos, benchmarks, subprocess crawls)::

    with run_sandbox_process({"sites": {"a.test": {"rate": 5}}}) as sandbox:
        sandbox.proxy_url(session="s1"), sandbox.site_url("a.test", "/catalog/1")
        sandbox.client.stats()

Or ``python -m scrapy_justproxies.sandbox --ready-file ready.json``.
"""

from .client import (
    SandboxClient,
    SandboxClientError,
    SandboxProcess,
    run_sandbox_process,
)
from .config import ConfigError, GatewayConfig, HostPolicy, SandboxConfig
from .policy import basic_authorization, format_proxy_username, parse_proxy_username
from .server import Sandbox, SandboxAddresses

__all__ = [
    "ConfigError",
    "GatewayConfig",
    "HostPolicy",
    "Sandbox",
    "SandboxAddresses",
    "SandboxClient",
    "SandboxClientError",
    "SandboxConfig",
    "SandboxProcess",
    "basic_authorization",
    "format_proxy_username",
    "parse_proxy_username",
    "run_sandbox_process",
]
