"""Blocking helpers for tests, demos and benchmarks (stdlib only).

* :class:`SandboxClient` talks to the control API.
* :func:`run_sandbox_process` runs ``python -m scrapy_justproxies.sandbox`` in
  a subprocess and waits until it is listening::

      with run_sandbox_process({"sites": {"a.test": {"rate": 5}}}) as sandbox:
          proxy = sandbox.proxy_url(session="s1")
          ...
          print(sandbox.client.stats()["sites"]["a.test"]["rate_limited"])
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, cast
from urllib.parse import quote

from .config import DEFAULT_PASSWORD, DEFAULT_USER, SandboxConfig
from .policy import format_proxy_username

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class SandboxClientError(RuntimeError):
    """The control API refused a call; ``status`` and ``message`` say why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"sandbox control API answered {status}: {message}")
        self.status = status
        self.message = message


class SandboxClient:
    """The control API over plain urllib (no proxy, whatever the environment says)."""

    def __init__(self, control_url: str, timeout: float = 10.0) -> None:
        self.control_url = control_url.rstrip("/")
        self.timeout = timeout
        # HTTP_PROXY in the environment must not capture loopback control calls.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _call(self, method: str, path: str, payload: object = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(  # noqa: S310 - http:// to loopback only
            self.control_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            with error:
                body = error.read()
            try:
                message = str(json.loads(body).get("error", body))
            except (ValueError, AttributeError):
                message = body.decode("utf-8", "replace")
            raise SandboxClientError(error.code, message) from None

    def health(self) -> bool:
        try:
            return bool(self._call("GET", "/health").get("ok"))
        except (OSError, SandboxClientError):
            return False

    def stats(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._call("GET", "/stats"))

    def site_stats(self, host: str) -> dict[str, Any]:
        """Counters of one virtual host (zeros if it has seen nothing yet)."""
        return cast(dict[str, Any], self.stats()["sites"].get(host.lower(), {}))

    def reset(self) -> None:
        self._call("POST", "/reset", {})

    def get_config(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._call("GET", "/config"))

    def configure(self, config: Mapping[str, Any] | SandboxConfig) -> dict[str, Any]:
        """Replace the whole config; raises :class:`SandboxClientError` if invalid."""
        payload = (
            config.to_dict() if isinstance(config, SandboxConfig) else dict(config)
        )
        return cast(dict[str, Any], self._call("POST", "/config", payload)["config"])


class SandboxProcess:
    """A sandbox in a child process; a context manager that starts and stops it.

    ``user``/``password`` are passed with ``--user/--password`` and stay valid
    even after ``client.configure()`` replaces the rest of the config.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | SandboxConfig | None = None,
        *,
        user: str = DEFAULT_USER,
        password: str = DEFAULT_PASSWORD,
        host: str = "127.0.0.1",
        gateway_port: int = 0,
        site_port: int = 0,
        site_tls_port: int = 0,
        control_port: int = 0,
        startup_timeout: float = 20.0,
        stop_timeout: float = 5.0,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(config, SandboxConfig):
            config = config.to_dict()
        # Validate here so a bad config fails in the caller, not in the child.
        self.config = SandboxConfig.from_dict(config or {})
        self.user = user
        self.password = password
        self.host = host
        self._ports = (gateway_port, site_port, site_tls_port, control_port)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.python = python or sys.executable
        self.env = dict(env) if env is not None else None
        self.ready: dict[str, Any] | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._tmpdir: Path | None = None
        self._log: Any = None
        self._client: SandboxClient | None = None

    # -- what callers use --

    def _ready(self) -> dict[str, Any]:
        if self.ready is None:
            raise RuntimeError("the sandbox process is not running; call start()")
        return self.ready

    @property
    def gateway(self) -> str:
        """``127.0.0.1:PORT`` of the proxy gateway."""
        return str(self._ready()["gateway"])

    @property
    def gateway_port(self) -> int:
        return int(self.gateway.rsplit(":", 1)[1])

    @property
    def site_http_port(self) -> int:
        return int(self._ready()["site_http_port"])

    @property
    def site_https_port(self) -> int:
        return int(self._ready()["site_https_port"])

    @property
    def control_url(self) -> str:
        return str(self._ready()["control"])

    @property
    def ca_cert_path(self) -> str:
        """PEM file of the CA behind the HTTPS site's certificates."""
        return str(self._ready()["ca_cert"])

    @property
    def pid(self) -> int:
        return int(self._ready()["pid"])

    @property
    def client(self) -> SandboxClient:
        if self._client is None:
            self._client = SandboxClient(self.control_url)
        return self._client

    def proxy_url(
        self, *, country: str | None = None, session: str | None = None
    ) -> str:
        """``http://USER[-country-CC][-session-ID]:PASSWORD@127.0.0.1:PORT``."""
        name = quote(
            format_proxy_username(self.user, country=country, session=session), safe=""
        )
        return f"http://{name}:{quote(self.password, safe='')}@{self.gateway}"

    def site_url(
        self, host: str = "a.test", path: str = "/", *, tls: bool = False
    ) -> str:
        scheme, port = (
            ("https", self.site_https_port) if tls else ("http", self.site_http_port)
        )
        return f"{scheme}://{host}:{port}{path}"

    def output(self) -> str:
        """What the child printed so far (stdout and stderr), for diagnostics."""
        if self._tmpdir is None:
            return ""
        try:
            return (self._tmpdir / "sandbox.log").read_text("utf-8", "replace")
        except OSError:
            return ""

    # -- lifecycle --

    def start(self) -> SandboxProcess:
        if self.process is not None:
            raise RuntimeError("the sandbox process was already started")
        self._tmpdir = Path(tempfile.mkdtemp(prefix="justproxies-sandbox-"))
        config_path = self._tmpdir / "config.json"
        config_path.write_text(json.dumps(self.config.to_dict()), "utf-8")
        ready_path = self._tmpdir / "ready.json"
        gateway_port, site_port, site_tls_port, control_port = self._ports
        argv = [
            self.python,
            "-m",
            "scrapy_justproxies.sandbox",
            "--config",
            str(config_path),
            "--host",
            self.host,
            "--gateway-port",
            str(gateway_port),
            "--site-port",
            str(site_port),
            "--site-tls-port",
            str(site_tls_port),
            "--control-port",
            str(control_port),
            "--ready-file",
            str(ready_path),
            "--ca-cert-file",
            str(self._tmpdir / "ca.pem"),
            "--user",
            self.user,
            "--password",
            self.password,
            "--parent-pid",
            str(os.getpid()),
            "--orphan-cleanup-dir",
            str(self._tmpdir),
        ]
        env = dict(os.environ if self.env is None else self.env)
        # The child must import this very package, installed or not.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p
        )
        self._log = (self._tmpdir / "sandbox.log").open("wb")
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            self.ready = self._wait_ready(ready_path)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, ready_path: Path) -> dict[str, Any]:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if ready_path.exists():
                # Written as tmp + rename, so a visible file is complete.
                return cast(dict[str, Any], json.loads(ready_path.read_text("utf-8")))
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(
                    f"the sandbox exited with code {code} before it was ready:\n"
                    f"{self.output()[-4000:]}"
                )
            time.sleep(0.02)
        raise TimeoutError(
            f"the sandbox was not ready within {self.startup_timeout:g} s:\n"
            f"{self.output()[-4000:]}"
        )

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after ``stop_timeout``; returns the exit code."""
        code: int | None = None
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(self.stop_timeout)
            code = process.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        self.ready = None
        self._client = None
        return code

    def __enter__(self) -> SandboxProcess:
        if self.process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_sandbox_process(
    config: Mapping[str, Any] | SandboxConfig | None = None,
    *,
    user: str = DEFAULT_USER,
    password: str = DEFAULT_PASSWORD,
    host: str = "127.0.0.1",
    gateway_port: int = 0,
    site_port: int = 0,
    site_tls_port: int = 0,
    control_port: int = 0,
    startup_timeout: float = 20.0,
    stop_timeout: float = 5.0,
    python: str | None = None,
    env: Mapping[str, str] | None = None,
) -> SandboxProcess:
    """A :class:`SandboxProcess`, started by ``with`` (or by ``.start()``)."""
    return SandboxProcess(
        config,
        user=user,
        password=password,
        host=host,
        gateway_port=gateway_port,
        site_port=site_port,
        site_tls_port=site_tls_port,
        control_port=control_port,
        startup_timeout=startup_timeout,
        stop_timeout=stop_timeout,
        python=python,
        env=env,
    )
