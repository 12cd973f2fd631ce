"""Run a real Squid (Debian's ``squid`` package) with Basic auth for tests.

This is a fixture *module*, not a conftest: a conftest imports what it needs,
e.g. ``from squid import squid_proxy, squid_proxy_factory`` (or
``from tests.squid import ...`` when ``tests`` is importable as a package).

Public API
----------
``start_squid(tmp_dir, *, user, password, host_names, port=0, ...)``
    Start a private Squid and return a running :class:`SquidProxy` (also a
    context manager).  ``port=0`` picks a free port on 127.0.0.1.
``SquidProxy``
    ``host``, ``port``, ``user``, ``password``, ``host_names``, ``url``,
    ``authed_url``, ``proxy_authorization()``, ``access_log`` /
    ``access_log_lines()``, ``cache_log``, ``running``, ``stop()``.
``squid_proxy_factory`` (session-scoped fixture)
    A callable ``factory(*, user=..., password=..., host_names=...)``
    returning a Squid shared by every test asking for the same settings;
    all of them are stopped at the end of the session.
``squid_proxy`` (fixture)
    The shared Squid with the default credentials and host names
    (``a.test``, ``b.test``), or with those given by the test's
    ``@pytest.mark.squid(user=..., password=..., host_names=[...])``.

The host names need not (and should not) resolve: Squid gets a generated
``hosts_file`` mapping each of them to 127.0.0.1 and never uses real DNS, so
a test serves "virtual hosts" on 127.0.0.1 and asks for
``http://a.test:PORT/`` through the proxy.

When Squid is not installed the test is skipped, unless the ``CI``
environment variable is set: there it fails, because the interop tests
must run in CI (``.ci/install-system-packages`` installs Squid).
"""

from __future__ import annotations

import base64
import contextlib
import glob
import hashlib
import http.client
import http.server
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import pytest

__all__ = [
    "BASIC_NCSA_AUTH",
    "DEFAULT_HOST_NAMES",
    "DEFAULT_PASSWORD",
    "DEFAULT_USER",
    "SquidProxy",
    "SquidProxyFactory",
    "SquidStartError",
    "apr1_hash",
    "basic_credentials",
    "find_squid",
    "require_squid",
    "squid_proxy",
    "squid_proxy_factory",
    "start_squid",
]

DEFAULT_USER = "scrapy-user"
DEFAULT_PASSWORD = "s3cr3t pass:w%rd"  # space, colon, percent: escaping paths
DEFAULT_HOST_NAMES: tuple[str, ...] = ("a.test", "b.test")

BASIC_NCSA_AUTH = "/usr/lib/squid/basic_ncsa_auth"
_SQUID_CANDIDATES = ("/usr/sbin/squid", "/usr/local/sbin/squid")
# Unprivileged users Squid may switch to when started as root (it refuses to
# run as root); Debian's package is built --with-default-user=proxy.
_EFFECTIVE_USERS = ("proxy", "squid", "nobody")
_PROBE_PATH = "/__squid_fixture_probe__"
_SHM_DIR = "/dev/shm"


class SquidStartError(RuntimeError):
    """Squid is installed but could not be started (details in the message)."""


# --------------------------------------------------------------------------
# Installation checks
# --------------------------------------------------------------------------


def _in_ci() -> bool:
    value = os.environ.get("CI", "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


def find_squid() -> str | None:
    """Path of the squid binary, or None ($SQUID_BIN overrides the search)."""
    override = os.environ.get("SQUID_BIN")
    if override:
        return override if os.access(override, os.X_OK) else None
    found = shutil.which("squid")
    if found:
        return found
    for candidate in _SQUID_CANDIDATES:  # /usr/sbin is not on every PATH
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def require_squid() -> str:
    """Return the squid binary; skip the test (fail it when $CI is set)."""
    squid = find_squid()
    problem = None
    if squid is None:
        problem = "squid is not installed"
    elif not os.access(BASIC_NCSA_AUTH, os.X_OK):
        problem = f"squid's Basic auth helper {BASIC_NCSA_AUTH} is missing"
    if problem is None:
        assert squid is not None
        return squid
    message = (
        f"{problem} (Debian: run .ci/install-system-packages, "
        "i.e. apt-get install squid)"
    )
    if _in_ci():
        pytest.fail(
            f"{message}; CI is set, so the Squid interop tests "
            "must run instead of being skipped",
            pytrace=False,
        )
    pytest.skip(message)


# --------------------------------------------------------------------------
# Password hash (Apache MD5, "$apr1$"), accepted by basic_ncsa_auth
# --------------------------------------------------------------------------

_ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _to64(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ITOA64[value & 0x3F])
        value >>= 6
    return "".join(chars)


def apr1_hash(password: str, salt: str | None = None) -> str:
    """Apache's MD5-crypt, the same as ``openssl passwd -apr1``.

    Pure Python so that the fixture needs neither htpasswd (apache2-utils)
    nor the openssl binary, and no deprecated ``crypt`` module.
    """
    if salt is None:
        salt = "".join(secrets.choice(_ITOA64) for _ in range(8))
    salt_b = salt.encode("ascii")[:8]
    pw = password.encode("utf-8")
    magic = b"$apr1$"

    def md5(data: bytes = b"") -> Any:
        return hashlib.md5(data, usedforsecurity=False)

    ctx = md5(pw + magic + salt_b)
    alt = md5(pw + salt_b + pw).digest()
    remaining = len(pw)
    while remaining > 0:
        ctx.update(alt[: min(16, remaining)])
        remaining -= 16
    i = len(pw)
    while i:
        ctx.update(b"\x00" if i & 1 else pw[:1])
        i >>= 1
    final = ctx.digest()
    for i in range(1000):
        step = md5()
        step.update(pw if i & 1 else final)
        if i % 3:
            step.update(salt_b)
        if i % 7:
            step.update(pw)
        step.update(final if i & 1 else pw)
        final = step.digest()
    f = final
    encoded = (
        _to64((f[0] << 16) | (f[6] << 8) | f[12], 4)
        + _to64((f[1] << 16) | (f[7] << 8) | f[13], 4)
        + _to64((f[2] << 16) | (f[8] << 8) | f[14], 4)
        + _to64((f[3] << 16) | (f[9] << 8) | f[15], 4)
        + _to64((f[4] << 16) | (f[10] << 8) | f[5], 4)
        + _to64(f[11], 2)
    )
    return f"$apr1${salt_b.decode('ascii')}${encoded}"


def basic_credentials(user: str, password: str) -> str:
    """Value of a Basic ``Proxy-Authorization`` header (UTF-8 credentials)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


# --------------------------------------------------------------------------
# The running proxy
# --------------------------------------------------------------------------


# Runs beside each Squid (python -I -S -c WATCHDOG squid_pid service [dir]),
# its stdin a pipe from the test process: EOF means the test process died
# without stop() (SIGKILL, CI timeout...), and Squid, in a session of its own,
# would outlive it.  Then: SIGTERM Squid, SIGKILL its group if it lingers,
# remove its shared memory and its private run dir.  stop() kills the
# watchdog first, so it never acts on a reaped (maybe reused) pid.
_WATCHDOG = """
import glob, os, shutil, signal, sys, time
pid, service, run_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
signal.signal(signal.SIGINT, signal.SIG_IGN)
sys.stdin.buffer.read()
try:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        os.kill(pid, 0)
        time.sleep(0.1)
    os.killpg(pid, signal.SIGKILL)
except OSError:
    pass
time.sleep(0.5)
for leftover in glob.glob("/dev/shm/" + service + "-*"):
    try:
        os.unlink(leftover)
    except OSError:
        pass
if run_dir:
    shutil.rmtree(run_dir, ignore_errors=True)
"""


def _start_watchdog(
    proc: subprocess.Popen[bytes], service_name: str, private_run_dir: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            _WATCHDOG,
            str(proc.pid),
            service_name,
            private_run_dir,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _shutdown(
    proc: subprocess.Popen[bytes],
    watchdog: subprocess.Popen[bytes],
    service_name: str,
    timeout: float,
    run_dir: Path,
    keep_logs_in: Path | None,
) -> None:
    """Stop Squid (SIGTERM, then SIGKILL of its process group) and clean up.

    Kept out of SquidProxy so that weakref.finalize can call it at exit.
    """
    with contextlib.suppress(ProcessLookupError):
        watchdog.kill()
    watchdog.wait()
    if watchdog.stdin is not None:
        watchdog.stdin.close()
    try:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # start_new_session=True: the group is Squid and its helpers.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=10)
        else:
            proc.wait()
    finally:
        _remove_shm(service_name)
        if keep_logs_in is not None:
            # run_dir was a private directory outside tmp_dir (see
            # _make_run_dir): keep the logs where the caller expects them.
            with contextlib.suppress(OSError):
                keep_logs_in.mkdir(parents=True, exist_ok=True)
                for name in ("access.log", "cache.log", "squid.out", "squid.conf"):
                    src = run_dir / name
                    if src.exists():
                        shutil.copyfile(src, keep_logs_in / name)
            shutil.rmtree(run_dir, ignore_errors=True)


def _remove_shm(service_name: str) -> None:
    # Squid 5 creates /dev/shm/<service>-cf__*.shm even without SMP workers
    # and leaves them behind when it dies abnormally (or is SIGKILLed).
    for leftover in glob.glob(os.path.join(_SHM_DIR, f"{service_name}-*")):
        with contextlib.suppress(OSError):
            os.unlink(leftover)


class SquidProxy:
    """A running Squid on ``host:port`` requiring Basic ``user``/``password``."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        user: str,
        password: str,
        host_names: tuple[str, ...],
        run_dir: Path,
        process: subprocess.Popen[bytes],
        watchdog: subprocess.Popen[bytes],
        service_name: str,
        stop_timeout: float,
        keep_logs_in: Path | None,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.host_names = host_names
        self.run_dir = run_dir
        self._keep_logs_in = keep_logs_in
        self.process = process
        self.service_name = service_name
        self.startup_seconds: float = 0.0
        self._finalizer = weakref.finalize(
            self,
            _shutdown,
            process,
            watchdog,
            service_name,
            stop_timeout,
            run_dir,
            keep_logs_in,
        )

    # -- addresses ---------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no credentials)."""
        return f"http://{self.host}:{self.port}"

    @property
    def authed_url(self) -> str:
        """``http://USER:PASSWORD@127.0.0.1:PORT``, percent-encoded."""
        return (
            f"http://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}"
        )

    def proxy_authorization(
        self, user: str | None = None, password: str | None = None
    ) -> str:
        """``Proxy-Authorization`` value for these (default: the right) creds."""
        return basic_credentials(
            self.user if user is None else user,
            self.password if password is None else password,
        )

    # -- logs --------------------------------------------------------------

    @property
    def log_dir(self) -> Path:
        """Where the logs are: run_dir, or (when run_dir was a private
        directory outside tmp_dir, see _make_run_dir) their copy below
        tmp_dir once stopped."""
        if self._keep_logs_in is None or self.run_dir.exists():
            return self.run_dir
        return self._keep_logs_in

    @property
    def access_log(self) -> Path:
        return self.log_dir / "access.log"

    @property
    def cache_log(self) -> Path:
        return self.log_dir / "cache.log"

    def access_log_lines(self) -> list[str]:
        """Squid's access.log entries so far (the fixture's own readiness
        probes are for ``/__squid_fixture_probe__``)."""
        try:
            return self.access_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    # -- lifecycle ---------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._finalizer.alive and self.process.poll() is None

    def terminate(self) -> None:
        """Send SIGTERM without waiting (stop() then waits and cleans up);
        lets several Squids shut down (about 2 s each) in parallel."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """Terminate Squid (SIGTERM, SIGKILL after the timeout); idempotent."""
        self._finalizer()

    def __enter__(self) -> SquidProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"<SquidProxy {self.host}:{self.port} user={self.user!r} "
            f"hosts={list(self.host_names)} {state}>"
        )


# --------------------------------------------------------------------------
# Starting
# --------------------------------------------------------------------------


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _effective_user() -> pwd.struct_passwd | None:
    """The unprivileged user Squid switches to, when we are root."""
    if os.geteuid() != 0:
        return None
    for name in _EFFECTIVE_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise SquidStartError(
        f"running as root but none of the users {_EFFECTIVE_USERS} exists "
        "for Squid's cache_effective_user"
    )


def _traversable_by(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` can reach ``path`` (x on it and every ancestor)."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for directory in (path, *path.parents):
        st = directory.stat()
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _make_run_dir(
    tmp_dir: Path, user: pwd.struct_passwd | None
) -> tuple[Path, Path | None]:
    """A fresh directory for conf, passwd, hosts, logs, pid and cores.

    Returns (run_dir, keep_logs_in).  Normally run_dir is inside tmp_dir.
    As root, Squid runs as ``user`` (e.g. proxy), which must reach run_dir;
    pytest's tmp_path sits below a 0700 directory, so then run_dir is a
    private directory in the system temp dir instead, removed on stop after
    its logs are copied to ``keep_logs_in`` (inside tmp_dir).
    """
    tmp_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="squid-", dir=tmp_dir))
    if user is None or _traversable_by(run_dir.parent, user):
        keep_logs_in = None
    else:
        run_dir.rmdir()
        keep_logs_in = tmp_dir / run_dir.name
        run_dir = Path(tempfile.mkdtemp(prefix="squid-"))
        if not _traversable_by(run_dir.parent, user):
            shutil.rmtree(run_dir, ignore_errors=True)
            raise SquidStartError(
                f"user {user.pw_name!r} can reach neither {tmp_dir} nor "
                f"{run_dir.parent}; Squid (run as that user) needs its files"
            )
    if user is not None:
        os.chown(run_dir, user.pw_uid, user.pw_gid)
    run_dir.chmod(0o755)
    return run_dir, keep_logs_in


def _write(path: Path, text: str, user: pwd.struct_passwd | None, mode: int) -> None:
    path.write_text(text)
    path.chmod(mode)
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)


def _validate(user: str, password: str, host_names: Sequence[str]) -> tuple[str, ...]:
    if not user or any(c in user for c in ":\r\n\t \0"):
        raise ValueError(f"unusable Squid user name {user!r}")
    if any(c in password for c in "\r\n\0"):
        raise ValueError("the Squid password may not contain CR, LF or NUL")
    if isinstance(host_names, str):
        raise TypeError("host_names must be a list of names, not one string")
    names: list[str] = []
    for name in host_names:
        if not name or any(c.isspace() or c in "#/:[]" for c in name):
            raise ValueError(f"unusable host name {name!r}")
        if name.lower() not in names:
            names.append(name.lower())
    return tuple(names)


def render_squid_conf(
    *,
    host: str,
    port: int,
    run_dir: Path,
    effective_user: str | None,
    extra_config: Iterable[str] = (),
) -> str:
    """The squid.conf used by start_squid (files named relative to run_dir)."""
    lines = [
        "# Generated by tests/squid.py: a private, throw-away Squid.",
        f"http_port {host}:{port}",
        "visible_hostname squid-fixture.test",
        "",
        "# Basic auth against a passwd file ($apr1$ hash)",
        f"auth_param basic program {BASIC_NCSA_AUTH} {run_dir / 'passwd'}",
        "auth_param basic children 5 startup=1 idle=1",
        "auth_param basic realm squid-fixture",
        "auth_param basic credentialsttl 1 minute",
        "acl authed proxy_auth REQUIRED",
        "",
        "# Only local clients, only authenticated ones (407 otherwise).",
        "# Deliberately no Safe_ports / SSL_ports rules (CONNECT to any port)",
        "# and no 'deny to_localhost': the targets are on 127.0.0.1.",
        "http_access deny !localhost",
        "http_access deny !authed",
        "http_access allow authed",
        "http_access deny all",
        "",
        "# Name resolution: only the generated hosts file, never real DNS.",
        f"hosts_file {run_dir / 'hosts'}",
        "dns_nameservers 127.0.0.1",
        "# Names not in it fail in ~1.5 s (nothing answers on 127.0.0.1:53;",
        "# Squid answers 502/503) instead of waiting for the 30 s default.",
        "dns_timeout 1 second",
        "dns_retransmit_interval 100 milliseconds",
        "negative_dns_ttl 1 second",
        "udp_outgoing_address 127.0.0.1",
        "udp_incoming_address 127.0.0.1",
        "",
        "# No caching, nothing outside run_dir, no extra daemons.",
        "cache deny all",
        "cache_mem 8 MB",
        "netdb_filename none",
        "pinger_enable off",
        "icp_port 0",
        "htcp_port 0",
        "logfile_rotate 0",
        f"pid_filename {run_dir / 'squid.pid'}",
        f"cache_log {run_dir / 'cache.log'}",
        f"access_log stdio:{run_dir / 'access.log'}",
        "cache_store_log none",
        f"coredump_dir {run_dir}",
        "shutdown_lifetime 0 seconds",
    ]
    if effective_user is not None:
        lines += [
            "# Started as root: Squid refuses to keep running as root.",
            f"cache_effective_user {effective_user}",
        ]
    extra = list(extra_config)
    if extra:
        lines += ["", "# extra_config", *extra]
    return "\n".join(lines) + "\n"


class _ProbeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    token = b""

    def do_GET(self) -> None:
        body = self.token
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _probe_server() -> Iterator[tuple[int, bytes]]:
    token = secrets.token_hex(8).encode()
    handler = type("ProbeHandler", (_ProbeHandler,), {"token": token})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield int(server.server_address[1]), token
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _probe(
    proxy: SquidProxy, name: str, probe_port: int, token: bytes, timeout: float
) -> str | None:
    """One authenticated GET through Squid; None if fine, else what went wrong."""
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=timeout)
    try:
        conn.request(
            "GET",
            f"http://{name}:{probe_port}{_PROBE_PATH}",
            headers={"Proxy-Authorization": proxy.proxy_authorization()},
        )
        response = conn.getresponse()
        body = response.read()
    except OSError as exc:  # includes http.client errors' socket causes
        return f"{name}: {exc!r}"
    except http.client.HTTPException as exc:
        return f"{name}: {exc!r}"
    finally:
        conn.close()
    if response.status != 200 or body != token:
        return f"{name}: HTTP {response.status} {body[:200]!r}"
    return None


def _log_tail(run_dir: Path, lines: int = 40) -> str:
    parts = []
    for name in ("squid.out", "cache.log"):
        path = run_dir / name
        with contextlib.suppress(OSError):
            text = path.read_text(errors="replace").splitlines()
            relevant = [line for line in text if "| Processing: " not in line]
            header = f"--- {path} (last lines) ---"
            parts.append("\n".join([header, *relevant[-lines:]]))
    return "\n".join(parts)


def _bind_failed(run_dir: Path) -> bool:
    with contextlib.suppress(OSError):
        log = (run_dir / "cache.log").read_text(errors="replace")
        return "Cannot bind socket" in log or "Unable to open HTTP Socket" in log
    return False


def start_squid(
    tmp_dir: str | os.PathLike[str],
    *,
    user: str,
    password: str,
    host_names: Sequence[str],
    port: int = 0,
    host: str = "127.0.0.1",
    startup_timeout: float = 20.0,
    stop_timeout: float = 10.0,
    extra_config: Iterable[str] = (),
) -> SquidProxy:
    """Start Squid on ``host:port`` (``port=0``: a free one) with Basic auth.

    Every name in ``host_names`` resolves (for Squid only) to 127.0.0.1.
    Returns once an authenticated request through Squid to each name
    (answered by a throw-away local server) has succeeded, within
    ``startup_timeout`` seconds overall.  Skips (or fails, with $CI set) when
    Squid is missing; raises SquidStartError when it does not come up.
    """
    squid = require_squid()
    names = _validate(user, password, host_names)
    extra = list(extra_config)
    tmp_dir = Path(tmp_dir)
    eff_user = _effective_user()
    deadline = time.monotonic() + startup_timeout
    attempts = 5 if port == 0 else 1
    failures: list[str] = []
    for _attempt in range(attempts):
        chosen_port = port or _free_port(host)
        run_dir, keep_logs_in = _make_run_dir(tmp_dir, eff_user)
        _write(run_dir / "passwd", f"{user}:{apr1_hash(password)}\n", eff_user, 0o640)
        _write(
            run_dir / "hosts",
            "".join(f"127.0.0.1 {name}\n" for name in names),
            eff_user,
            0o644,
        )
        conf = run_dir / "squid.conf"
        _write(
            conf,
            render_squid_conf(
                host=host,
                port=chosen_port,
                run_dir=run_dir,
                effective_user=eff_user.pw_name if eff_user else None,
                extra_config=extra,
            ),
            eff_user,
            0o644,
        )
        service_name = "sqfx" + secrets.token_hex(6)  # -n: alphanumeric only
        started = time.monotonic()
        with open(run_dir / "squid.out", "wb") as out:
            proc = subprocess.Popen(
                [squid, "-N", "-n", service_name, "-f", str(conf)],
                cwd=run_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            watchdog = _start_watchdog(
                proc, service_name, str(run_dir) if keep_logs_in else ""
            )
        except BaseException:
            proc.kill()
            proc.wait()
            _remove_shm(service_name)
            raise
        proxy = SquidProxy(
            host=host,
            port=chosen_port,
            user=user,
            password=password,
            host_names=names,
            run_dir=run_dir,
            process=proc,
            watchdog=watchdog,
            service_name=service_name,
            stop_timeout=stop_timeout,
            keep_logs_in=keep_logs_in,
        )
        try:
            error = _wait_until_ready(proxy, names, deadline)
        except BaseException:
            proxy.stop()
            raise
        if error is None:
            proxy.startup_seconds = time.monotonic() - started
            return proxy
        retry = port == 0 and proc.poll() is not None and _bind_failed(run_dir)
        failures.append(f"{error}\n{_log_tail(run_dir)}")
        proxy.stop()
        if not retry or time.monotonic() >= deadline:
            break
    raise SquidStartError(
        f"Squid did not become ready within {startup_timeout:.0f}s:\n"
        + "\n".join(failures)
    )


def _logged_listening(proxy: SquidProxy) -> bool:
    # cache.log: "Accepting HTTP Socket connections at conn3
    #             local=127.0.0.1:PORT remote=[::] FD 12 flags=9"
    try:
        log = proxy.cache_log.read_text(errors="replace")
    except OSError:
        return False
    local = f" local={proxy.host}:{proxy.port} "
    return any(
        "Accepting HTTP Socket connections at " in line and local in line
        for line in log.splitlines()
    )


def _wait_until_ready(
    proxy: SquidProxy, names: tuple[str, ...], deadline: float
) -> str | None:
    """Poll until Squid accepts and proxies; None when ready, else why not."""
    # 1. Squid logs that it listens.  (Not just "the port accepts": that
    #    could be whoever else holds the port while Squid dies of "Cannot
    #    bind".)
    while not _logged_listening(proxy):
        if proxy.process.poll() is not None:
            return f"squid exited with status {proxy.process.returncode}"
        if time.monotonic() >= deadline:
            return "squid did not log that it listens"
        time.sleep(0.05)
    # 2. Real proxied, authenticated requests (auth helper, hosts_file,
    #    forwarding to 127.0.0.1) to every configured name.
    pending = list(names) or ["127.0.0.1"]
    last_error = "no probe ran"
    with _probe_server() as (probe_port, token):
        while pending:
            if proxy.process.poll() is not None:
                return f"squid exited with status {proxy.process.returncode}"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return f"proxied probe request failed: {last_error}"
            error = _probe(
                proxy,
                pending[0],
                probe_port,
                token,
                timeout=max(0.5, min(5.0, remaining)),
            )
            if error is None:
                pending.pop(0)
            else:
                last_error = error
                time.sleep(0.1)
    return None


# --------------------------------------------------------------------------
# pytest fixtures
# --------------------------------------------------------------------------


class SquidProxyFactory:
    """Starts Squids on demand, sharing one per (user, password, host_names)."""

    def __init__(self, tmp_dir_maker: Callable[[], Path]) -> None:
        self._tmp_dir_maker = tmp_dir_maker
        self._shared: dict[tuple[str, str, tuple[str, ...]], SquidProxy] = {}
        self._all: list[SquidProxy] = []

    def __call__(
        self,
        *,
        user: str = DEFAULT_USER,
        password: str = DEFAULT_PASSWORD,
        host_names: Sequence[str] = DEFAULT_HOST_NAMES,
        shared: bool = True,
        **kwargs: Any,
    ) -> SquidProxy:
        """A running Squid; ``shared=False`` (or extra start_squid kwargs such
        as ``extra_config``) gives a private one.  All stop at session end."""
        names = _validate(user, password, host_names)
        key = (user, password, names)
        shared = shared and not kwargs
        if shared:
            existing = self._shared.get(key)
            if existing is not None and existing.running:
                return existing
        proxy = start_squid(
            self._tmp_dir_maker(),
            user=user,
            password=password,
            host_names=names,
            **kwargs,
        )
        self._all.append(proxy)
        if shared:
            self._shared[key] = proxy
        return proxy

    def stop_all(self) -> None:
        for proxy in self._all:
            proxy.terminate()
        while self._all:
            self._all.pop().stop()
        self._shared.clear()


@pytest.fixture(scope="session")
def squid_proxy_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[SquidProxyFactory]:
    """Session-wide factory: ``squid_proxy_factory(user=, password=,
    host_names=)`` returns a running :class:`SquidProxy`."""
    factory = SquidProxyFactory(lambda: tmp_path_factory.mktemp("squid"))
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def squid_proxy(
    request: pytest.FixtureRequest, squid_proxy_factory: SquidProxyFactory
) -> SquidProxy:
    """The shared Squid for this test's settings.

    Defaults: DEFAULT_USER / DEFAULT_PASSWORD / ("a.test", "b.test");
    override with ``@pytest.mark.squid(user=..., password=...,
    host_names=[...])``.
    """
    marker = request.node.get_closest_marker("squid")
    settings: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    unknown = set(settings) - {"user", "password", "host_names"}
    if unknown:
        raise TypeError(f"unknown @pytest.mark.squid arguments: {sorted(unknown)}")
    return squid_proxy_factory(**settings)
