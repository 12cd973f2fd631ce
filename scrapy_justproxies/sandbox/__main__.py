"""``python -m scrapy_justproxies.sandbox``: run the sandbox until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from .config import ConfigError, SandboxConfig
from .server import Sandbox, SandboxAddresses, check_loopback, default_reactor


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scrapy_justproxies.sandbox",
        description=(
            "Local stand-in for the JustProxies gateway and a rate-limited site."
        ),
    )
    parser.add_argument("--config", help="JSON file shaped like SandboxConfig")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--gateway-port", type=int, default=0)
    parser.add_argument("--site-port", type=int, default=0)
    parser.add_argument("--site-tls-port", type=int, default=0)
    parser.add_argument("--control-port", type=int, default=0)
    parser.add_argument(
        "--ready-file", help="write the listening addresses here (JSON)"
    )
    parser.add_argument("--ca-cert-file", help="write the HTTPS site's CA (PEM) here")
    parser.add_argument("--user", help="gateway user, always accepted")
    parser.add_argument("--password", help="password of --user")
    parser.add_argument(
        "--parent-pid",
        type=int,
        help="exit when this process is no longer our parent (no orphans)",
    )
    parser.add_argument(
        "--orphan-cleanup-dir",
        help="the parent's scratch directory, removed if we exit as an orphan",
    )
    return parser


def _stop_if_orphaned(reactor: Any, parent_pid: int, cleanup_dir: str | None) -> None:
    # A killed test runner must not leave a sandbox (or its files) behind.
    if os.getppid() != parent_pid and reactor.running:
        if cleanup_dir:
            shutil.rmtree(cleanup_dir, ignore_errors=True)
        reactor.stop()


def _fail(message: str) -> None:
    sys.stderr.write(message + "\n")


def _write_atomically(path: Path, data: bytes) -> None:
    # Readers poll for the file: it must appear complete or not at all.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def ready_info(
    addresses: SandboxAddresses, user: str, ca_cert: str | None
) -> dict[str, Any]:
    info: dict[str, Any] = {
        "gateway": addresses.gateway,
        "site_http_port": addresses.site_http_port,
        "site_https_port": addresses.site_https_port,
        "control": addresses.control_url,
        "user": user,
        "pid": os.getpid(),
        "host": addresses.host,
    }
    if ca_cert is not None:
        info["ca_cert"] = ca_cert
    return info


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        check_loopback(args.host)
        config = SandboxConfig.load(args.config) if args.config else SandboxConfig()
    except (ConfigError, ValueError) as error:
        _fail(f"sandbox: {error}")
        return 2
    pinned: dict[str, str] = {}
    if args.user is not None:
        password = args.password
        if password is None:
            password = config.gateway.users.get(args.user)
        if password is None:
            _fail("sandbox: --user needs --password")
            return 2
        pinned[args.user] = password
    user = args.user or next(iter(config.gateway.users), "")

    # Unexpected errors inside the reactor go to stderr; access logs do not.
    # (Any: zope interfaces are opaque to mypy without its plugin.)
    text: Any = textFileLogObserver(sys.stderr)
    warnings_only: Any = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    observer: Any = FilteringLogObserver(text, [warnings_only])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    reactor = default_reactor()
    sandbox = Sandbox(config, pinned_users=pinned)
    try:
        addresses = sandbox.start(
            reactor,
            host=args.host,
            gateway_port=args.gateway_port,
            site_port=args.site_port,
            site_tls_port=args.site_tls_port,
            control_port=args.control_port,
        )
    except Exception as error:  # e.g. a port in use
        _fail(f"sandbox: cannot listen: {error}")
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", sandbox.stop)
    if args.parent_pid is not None:
        watchdog = LoopingCall(
            _stop_if_orphaned, reactor, args.parent_pid, args.orphan_cleanup_dir
        )
        watchdog.clock = reactor
        watchdog.start(1.0, now=True)

    ca_cert = None
    if args.ca_cert_file:
        ca_cert = str(Path(args.ca_cert_file).resolve())
        _write_atomically(Path(ca_cert), sandbox.ca_pem)
    if args.ready_file:
        info = ready_info(addresses, user, ca_cert)
        _write_atomically(Path(args.ready_file), json.dumps(info).encode() + b"\n")
    sys.stdout.write(
        f"sandbox ready: gateway {addresses.gateway}"
        f" site http :{addresses.site_http_port} https :{addresses.site_https_port}"
        f" control :{addresses.control_port}\n"
    )
    sys.stdout.flush()
    # Started with "&" from a script, SIGINT arrives ignored; Twisted only
    # takes it over from Python's default handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    reactor.run()  # SIGTERM/SIGINT stop it; "before shutdown" closes everything
    return 0


if __name__ == "__main__":
    sys.exit(main())
