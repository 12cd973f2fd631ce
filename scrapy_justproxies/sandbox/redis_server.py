"""Debian's ``redis-server`` on loopback for tests, the demo and the
benchmark: a free port, its own temporary directory, no persistence (a
restart comes back empty, as a lost Redis would), a password.

Stdlib only (the readiness check speaks RESP itself), so the sandbox does not
need redis-py.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_binary() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


@dataclass
class RedisServer:
    """One ``redis-server`` process; :meth:`start`, :meth:`stop` (the
    process, not the object: it can be started again on the same port)."""

    password: str
    port: int = field(default_factory=free_port)
    directory: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="jp-redis-"))
    )
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        binary = server_binary()
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed (Debian: apt-get install redis-server)"
            )
        self.process = subprocess.Popen(  # noqa: S603 - our own arguments
            [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--save", "",
                "--appendonly", "no",
                "--requirepass", self.password,
                "--logfile", str(self.directory / "redis.log"),
                "--daemonize", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited ({self.process.returncode}); see "
                    f"{self.directory / 'redis.log'}"
                )
            if self.ping():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def ping(self) -> bool:
        try:
            return self.command("PING") == "+PONG"
        except OSError:
            return False

    def command(self, *words: str) -> str:
        """One command (after AUTH), the raw first line of its reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            payload = _resp("AUTH", self.password) + _resp(*words)
            sock.sendall(payload)
            data = b""
            while data.count(b"\r\n") < 2:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            if words[0].upper() in {"INFO"}:
                # A bulk string: read all of it.
                header = data.split(b"\r\n")[1]
                size = int(header[1:])
                while len(data.split(b"\r\n", 2)[2]) < size:
                    data += sock.recv(65536)
                return data.split(b"\r\n", 2)[2][:size].decode()
            return data.split(b"\r\n")[1].decode()

    def info(self, section: str) -> dict[str, str]:
        text = self.command("INFO", section)
        return dict(
            line.split(":", 1)
            for line in text.splitlines()
            if ":" in line and not line.startswith("#")
        )

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def _resp(*words: str) -> bytes:
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        encoded = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(encoded), encoded))
    return b"".join(parts)


@contextlib.contextmanager
def run_redis(password: str | None = None) -> Iterator[RedisServer]:
    server = RedisServer(password=password or f"rp{secrets.token_hex(8)}")
    server.start()
    try:
        yield server
    finally:
        server.cleanup()
