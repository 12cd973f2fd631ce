"""``python -m scrapy_justproxies.sandbox`` as a child process, used with the stdlib."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scrapy_justproxies.sandbox import (
    ConfigError,
    SandboxClientError,
    SandboxProcess,
    basic_authorization,
    run_sandbox_process,
)

CONFIG = {"sites": {"a.test": {"rate": 1000, "burst": 1000}}}


@pytest.fixture(scope="module")
def alice_sandbox() -> Iterator[SandboxProcess]:
    """A process of our own: --user alice must survive reconfiguration."""
    with run_sandbox_process(CONFIG, user="alice", password="p@ss:word") as process:
        yield process


@pytest.fixture
def fresh(alice_sandbox: SandboxProcess) -> SandboxProcess:
    alice_sandbox.client.configure(CONFIG)
    alice_sandbox.client.reset()
    return alice_sandbox


def proxy_get(
    sandbox: SandboxProcess,
    conn: http.client.HTTPConnection,
    path: str,
    user: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    url = sandbox.site_url("a.test", path)
    auth = basic_authorization(user or sandbox.user, sandbox.password)
    conn.request("GET", url, headers={"Proxy-Authorization": auth})
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def gateway_connection(sandbox: SandboxProcess) -> http.client.HTTPConnection:
    host, port = sandbox.gateway.rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=10)


def test_ready_file_and_properties(fresh: SandboxProcess) -> None:
    ready: dict[str, Any] = fresh.ready or {}
    for key in (
        "gateway",
        "site_http_port",
        "site_https_port",
        "control",
        "user",
        "pid",
    ):
        assert key in ready
    assert ready["user"] == "alice"
    assert "password" not in ready
    assert "p@ss:word" not in json.dumps(ready)
    assert fresh.gateway.startswith("127.0.0.1:")
    assert fresh.process is not None and fresh.pid == fresh.process.pid
    assert fresh.client.health()
    assert "sandbox ready: gateway 127.0.0.1:" in fresh.output()
    assert fresh.proxy_url(session="s1").startswith(
        "http://alice-session-s1:p%40ss%3Aword@"
    )


def test_stdlib_client_through_the_gateway_keeps_alive(fresh: SandboxProcess) -> None:
    conn = gateway_connection(fresh)
    try:
        results = [proxy_get(fresh, conn, "/echo") for _ in range(3)]
    finally:
        conn.close()
    for status, _, body in results:
        echo = json.loads(body)
        assert status == 200
        assert echo["via_gateway"] is True
        assert "proxy-authorization" not in echo["headers"]
    stats = fresh.client.stats()
    assert stats["gateway"]["connections_accepted"] == 1
    assert stats["gateway"]["requests"] == 3
    assert fresh.client.site_stats("a.test")["admitted"] == 3


def test_stdlib_https_through_connect_verifies_the_sandbox_ca(
    fresh: SandboxProcess,
) -> None:
    host, port = fresh.gateway.rsplit(":", 1)
    context = ssl.create_default_context(cafile=fresh.ca_cert_path)
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    auth = basic_authorization(f"{fresh.user}-session-tls", fresh.password)
    conn.set_tunnel("a.test", fresh.site_https_port, {"Proxy-Authorization": auth})
    try:
        conn.request("GET", "/echo")
        echo = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    assert echo["tls"] is True
    assert echo["via_gateway"] is True
    stats = fresh.client.stats()["gateway"]
    assert stats["connects"] == 1
    assert stats["sessions"]["tls"] == echo["peer_ip"]


def test_configure_reset_and_pinned_user(fresh: SandboxProcess) -> None:
    with pytest.raises(SandboxClientError) as info:
        fresh.client.configure({"sites": {"a.test": {"burst": 0}}})
    assert info.value.status == 400
    assert "sites['a.test'].burst" in info.value.message

    fresh.client.configure(
        {
            "gateway": {"users": {"bob": "pw"}},
            "sites": {"a.test": {"rate": 0.01, "burst": 1}},
        }
    )
    conn = gateway_connection(fresh)
    try:
        # --user stays valid even though the new config lists only bob.
        first = proxy_get(fresh, conn, "/")
        second = proxy_get(fresh, conn, "/")
    finally:
        conn.close()
    assert first[0] == 200
    assert second[0] == 429
    assert int(second[1]["Retry-After"]) >= 1
    assert fresh.client.get_config()["gateway"]["users"].keys() == {"bob", "alice"}
    assert fresh.client.site_stats("a.test")["rate_limited"] == 1
    fresh.client.reset()
    assert fresh.client.site_stats("a.test")["rate_limited"] == 0


def test_sigterm_stops_the_process_cleanly() -> None:
    process = run_sandbox_process()
    process.start()
    assert process.client.health()
    assert process.stop() == 0
    with pytest.raises(RuntimeError, match="not running"):
        _ = process.gateway


def test_startup_failure_is_reported() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(RuntimeError, match="cannot listen"):
            run_sandbox_process(gateway_port=port, startup_timeout=15).start()


def test_invalid_config_fails_in_the_caller() -> None:
    with pytest.raises(ConfigError, match=r"gateway\.fail_502"):
        run_sandbox_process({"gateway": {"fail_502": 2}})


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_orphaned_sandbox_exits_by_itself() -> None:
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\n"
            "from scrapy_justproxies.sandbox import run_sandbox_process\n"
            "process = run_sandbox_process().start()\n"
            "print(process.pid, process.ca_cert_path, flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],  # where the package is importable
    )
    try:
        assert parent.stdout is not None
        pid_text, ca_cert_path = parent.stdout.readline().split()
        child = int(pid_text)
        scratch = Path(ca_cert_path).parent
        assert _alive(child)
        parent.kill()  # no chance to clean up: the child must notice alone
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child)
        assert not scratch.exists()  # the orphan removed its parent's files
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
