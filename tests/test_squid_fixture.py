"""Prove the Squid fixture (tests/squid.py) with stdlib clients only.

Local "virtual host" servers on 127.0.0.1 (plain HTTP and TLS with a
self-signed certificate for a.test / b.test) are reached through a real
Squid with Basic auth, by name: Squid resolves the names from its generated
hosts file, never from DNS.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import http.server
import ipaddress
import secrets
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

try:  # tests/ on sys.path (rootdir-less test dir, pytest's default)
    import squid as squid_fixtures
except ImportError:  # tests/ is a package
    from tests import squid as squid_fixtures  # type: ignore[no-redef]

SquidProxy = squid_fixtures.SquidProxy

# Make the fixtures available here (harmless if a conftest also provides them).
squid_proxy_factory = squid_fixtures.squid_proxy_factory
squid_proxy = squid_fixtures.squid_proxy

pytestmark = pytest.mark.squid

TIMEOUT = 10.0  # every socket operation in this module


# --------------------------------------------------------------------------
# Local origin servers
# --------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class OriginServer:
    port: int
    scheme: str
    received: list[Received] = field(default_factory=list)
    ca_file: Path | None = None

    def requests_for(self, path: str) -> list[Received]:
        return [r for r in list(self.received) if r.path == path]


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    origin: OriginServer

    def do_GET(self) -> None:
        self.origin.received.append(
            Received(
                self.command,
                self.path,
                {k.lower(): v for k, v in self.headers.items()},
            )
        )
        body = f"{self.origin.scheme} {self.headers.get('Host')} {self.path}"
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _serve(
    scheme: str, context: ssl.SSLContext | None = None, ca_file: Path | None = None
) -> Iterator[OriginServer]:
    origin = OriginServer(port=0, scheme=scheme, ca_file=ca_file)
    handler = type("Handler", (_RecordingHandler,), {"origin": origin})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if context is not None:
        # Handshake lazily, in the per-connection thread, not in accept().
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    origin.port = int(server.server_address[1])
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield origin
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _self_signed(tmp_dir: Path, names: list[str]) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in names]
                + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file = tmp_dir / "cert.pem"
    key_file = tmp_dir / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture(scope="module")
def http_origin() -> Iterator[OriginServer]:
    with _serve("http") as origin:
        yield origin


@pytest.fixture(scope="module")
def tls_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OriginServer]:
    cert_file, key_file = _self_signed(
        tmp_path_factory.mktemp("tls"), list(squid_fixtures.DEFAULT_HOST_NAMES)
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    with _serve("https", context, ca_file=cert_file) as origin:
        yield origin


def _client_tls_context(origin: OriginServer) -> ssl.SSLContext:
    assert origin.ca_file is not None
    return ssl.create_default_context(cafile=str(origin.ca_file))


# --------------------------------------------------------------------------
# Stdlib proxy clients
# --------------------------------------------------------------------------


def _logged(proxy: SquidProxy, *needles: str) -> bool:
    """Whether an access.log line has all needles (waits: Squid logs a
    transaction, e.g. a tunnel, only when it ends)."""
    deadline = time.monotonic() + 5
    while True:
        if any(all(n in line for n in needles) for line in proxy.access_log_lines()):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _unique_path() -> str:
    return f"/t/{secrets.token_hex(6)}"


def _proxy_get(
    proxy: SquidProxy, url: str, auth: str | None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=TIMEOUT)
    try:
        headers = {} if auth is None else {"Proxy-Authorization": auth}
        conn.request("GET", url, headers=headers)
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and any bytes already read past the response head."""
    buf = b""
    deadline = time.monotonic() + TIMEOUT
    while b"\r\n\r\n" not in buf:
        assert time.monotonic() < deadline, "no response head from the proxy"
        chunk = sock.recv(4096)
        assert chunk, f"proxy closed the connection after {buf!r}"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("iso-8859-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, rest


@contextlib.contextmanager
def _connect(
    proxy: SquidProxy, target: str, auth: str | None
) -> Iterator[tuple[int, dict[str, str], bytes, socket.socket]]:
    sock = socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT)
    try:
        request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
        if auth is not None:
            request += f"Proxy-Authorization: {auth}\r\n"
        sock.sendall((request + "\r\n").encode("ascii"))
        status, headers, rest = _read_head(sock)
        yield status, headers, rest, sock
    finally:
        sock.close()


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


def test_apr1_hash_known_vector() -> None:
    # Same as `openssl passwd -apr1 -salt abcdefgh 'p@ss w:rd'`.
    assert (
        squid_fixtures.apr1_hash("p@ss w:rd", "abcdefgh")
        == "$apr1$abcdefgh$lUqTWUpOU46et7OXrkfsl."
    )
    assert squid_fixtures.apr1_hash("x").startswith("$apr1$")


def test_apr1_hash_accepted_by_basic_ncsa_auth(tmp_path: Path) -> None:
    squid_fixtures.require_squid()
    password = "p@ss w:rd%é"
    passwd = tmp_path / "passwd"
    passwd.write_text(f"u:{squid_fixtures.apr1_hash(password)}\n")
    # Squid sends "user password" URL-escaped (RFC 1738) to the helper.
    result = subprocess.run(
        [squid_fixtures.BASIC_NCSA_AUTH, str(passwd)],
        input=f"u {quote(password)}\nu {quote('wrong')}\n",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith("OK"), result
    assert lines[1].startswith("ERR"), result


def test_fixture_settings(squid_proxy: SquidProxy) -> None:
    assert squid_proxy.running
    assert squid_proxy.host == "127.0.0.1"
    assert squid_proxy.port > 0
    assert squid_proxy.user == squid_fixtures.DEFAULT_USER
    assert squid_proxy.password == squid_fixtures.DEFAULT_PASSWORD
    assert squid_proxy.host_names == ("a.test", "b.test")
    assert squid_proxy.url == f"http://127.0.0.1:{squid_proxy.port}"
    # Percent-encoded credentials, usable as a proxy URL.
    assert squid_proxy.authed_url == (
        f"http://scrapy-user:s3cr3t%20pass%3Aw%25rd@127.0.0.1:{squid_proxy.port}"
    )
    # The readiness probes went through Squid, authenticated, per host name.
    for name in squid_proxy.host_names:
        assert _logged(squid_proxy, f"http://{name}:", "_probe_", "TCP_MISS/200")


def test_factory_shares_instances(
    squid_proxy: SquidProxy, squid_proxy_factory: squid_fixtures.SquidProxyFactory
) -> None:
    assert squid_proxy_factory() is squid_proxy
    assert squid_proxy_factory(host_names=["A.test", "b.test"]) is squid_proxy


@pytest.mark.parametrize("name", ["a.test", "b.test"])
def test_http_get_through_squid(
    squid_proxy: SquidProxy, http_origin: OriginServer, name: str
) -> None:
    path = _unique_path()
    status, _, body = _proxy_get(
        squid_proxy,
        f"http://{name}:{http_origin.port}{path}",
        squid_proxy.proxy_authorization(),
    )
    assert status == 200
    assert body == f"http {name}:{http_origin.port} {path}".encode()
    (received,) = http_origin.requests_for(path)
    assert received.headers["host"] == f"{name}:{http_origin.port}"
    # Squid consumed the credentials: they never reach the origin.
    assert "proxy-authorization" not in received.headers
    assert _logged(squid_proxy, path, "TCP_MISS/200", squid_proxy.user)


@pytest.mark.parametrize("name", ["a.test", "b.test"])
def test_connect_tunnel_tls_through_squid(
    squid_proxy: SquidProxy, tls_origin: OriginServer, name: str
) -> None:
    path = _unique_path()
    target = f"{name}:{tls_origin.port}"  # a high port: no SSL_ports limit
    with _connect(squid_proxy, target, squid_proxy.proxy_authorization()) as (
        status,
        _,
        rest,
        sock,
    ):
        assert status == 200
        assert rest == b""
        context = _client_tls_context(tls_origin)
        with context.wrap_socket(sock, server_hostname=name) as tls:
            tls.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {target}\r\n"
                "Connection: close\r\n\r\n".encode("ascii")
            )
            response = http.client.HTTPResponse(tls)
            try:
                response.begin()
                body = response.read()
            finally:
                response.close()
    assert response.status == 200
    assert body == f"https {target} {path}".encode()
    (received,) = tls_origin.requests_for(path)
    assert "proxy-authorization" not in received.headers
    assert _logged(squid_proxy, f"CONNECT {target}", "TCP_TUNNEL/200")


def test_https_via_http_client_set_tunnel(
    squid_proxy: SquidProxy, tls_origin: OriginServer
) -> None:
    path = _unique_path()
    conn = http.client.HTTPSConnection(
        squid_proxy.host,
        squid_proxy.port,
        timeout=TIMEOUT,
        context=_client_tls_context(tls_origin),
    )
    conn.set_tunnel(
        "a.test",
        tls_origin.port,
        headers={"Proxy-Authorization": squid_proxy.proxy_authorization()},
    )
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 200
    assert body == f"https a.test:{tls_origin.port} {path}".encode()


BAD_CREDENTIALS = {
    "wrong password": (squid_fixtures.DEFAULT_USER, "not-the-password"),
    "wrong user": ("nobody-such", squid_fixtures.DEFAULT_PASSWORD),
    "no auth": None,
}


@pytest.mark.parametrize("creds", BAD_CREDENTIALS.values(), ids=BAD_CREDENTIALS)
def test_http_get_rejected_with_407(
    squid_proxy: SquidProxy,
    http_origin: OriginServer,
    creds: tuple[str, str] | None,
) -> None:
    path = _unique_path()
    auth = None if creds is None else squid_proxy.proxy_authorization(*creds)
    status, headers, _ = _proxy_get(
        squid_proxy, f"http://a.test:{http_origin.port}{path}", auth
    )
    assert status == 407
    assert headers["proxy-authenticate"].startswith("Basic ")
    assert 'realm="squid-fixture"' in headers["proxy-authenticate"]
    assert http_origin.requests_for(path) == []


@pytest.mark.parametrize("creds", BAD_CREDENTIALS.values(), ids=BAD_CREDENTIALS)
def test_connect_rejected_with_407(
    squid_proxy: SquidProxy,
    tls_origin: OriginServer,
    creds: tuple[str, str] | None,
) -> None:
    auth = None if creds is None else squid_proxy.proxy_authorization(*creds)
    before = len(tls_origin.received)
    with _connect(squid_proxy, f"a.test:{tls_origin.port}", auth) as (
        status,
        headers,
        _,
        _sock,
    ):
        assert status == 407
        assert headers["proxy-authenticate"].startswith("Basic ")
    assert len(tls_origin.received) == before


def test_right_password_still_works_after_wrong_one(
    squid_proxy: SquidProxy, http_origin: OriginServer
) -> None:
    url = f"http://a.test:{http_origin.port}{_unique_path()}"
    bad = squid_proxy.proxy_authorization(password="wrong")
    assert _proxy_get(squid_proxy, url, bad)[0] == 407
    assert _proxy_get(squid_proxy, url, squid_proxy.proxy_authorization())[0] == 200
    assert _proxy_get(squid_proxy, url, bad)[0] == 407


def test_unknown_host_fails_fast_without_dns(squid_proxy: SquidProxy) -> None:
    # Not in the hosts file: Squid may only ask 127.0.0.1:53 (nothing there).
    started = time.monotonic()
    status, _, _ = _proxy_get(
        squid_proxy, "http://not-mapped.test/", squid_proxy.proxy_authorization()
    )
    assert status in (502, 503, 504)
    assert time.monotonic() - started < 8


@pytest.mark.squid(user="other", password="pw-2", host_names=["c.test"])
def test_marker_selects_credentials_and_names(
    squid_proxy: SquidProxy, http_origin: OriginServer
) -> None:
    assert (squid_proxy.user, squid_proxy.password) == ("other", "pw-2")
    assert squid_proxy.host_names == ("c.test",)
    url = f"http://c.test:{http_origin.port}{_unique_path()}"
    assert _proxy_get(squid_proxy, url, squid_proxy.proxy_authorization())[0] == 200
    default = squid_proxy.proxy_authorization(
        squid_fixtures.DEFAULT_USER, squid_fixtures.DEFAULT_PASSWORD
    )
    assert _proxy_get(squid_proxy, url, default)[0] == 407


def test_start_squid_context_manager(tmp_path: Path, http_origin: OriginServer) -> None:
    port = squid_fixtures._free_port("127.0.0.1")
    with squid_fixtures.start_squid(
        tmp_path, user="cm", password="cm-pw", host_names=["d.test"], port=port
    ) as proxy:
        assert proxy.running
        assert proxy.port == port
        assert proxy.startup_seconds < 20
        path = _unique_path()
        url = f"http://d.test:{http_origin.port}{path}"
        assert _proxy_get(proxy, url, proxy.proxy_authorization())[0] == 200
        run_dir = proxy.run_dir
        service = proxy.service_name
    assert not proxy.running
    assert proxy.process.returncode is not None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    # Squid's shared-memory segments are gone, the logs stay below tmp_path.
    assert not list(Path("/dev/shm").glob(f"{service}-*"))
    assert proxy.log_dir.is_relative_to(tmp_path)
    assert path in proxy.access_log.read_text()
    if proxy.log_dir != run_dir:  # root: ran in a private dir, now removed
        assert not run_dir.exists()
    proxy.stop()  # idempotent


def test_missing_squid_skips_or_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SQUID_BIN", str(tmp_path / "no-such-squid"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="squid is not installed"):
        squid_fixtures.start_squid(tmp_path, user="u", password="p", host_names=[])
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        squid_fixtures.start_squid(tmp_path, user="u", password="p", host_names=[])


def test_busy_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http_origin: OriginServer
) -> None:
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        # An explicit port that is taken: a clear error, with Squid's log.
        started = time.monotonic()
        with pytest.raises(squid_fixtures.SquidStartError, match="Cannot bind"):
            squid_fixtures.start_squid(
                tmp_path, user="u", password="p", host_names=[], port=busy_port
            )
        assert time.monotonic() - started < 10
        # port=0 and the picked port is snatched before Squid binds: retried.
        real_free_port = squid_fixtures._free_port
        ports = iter([busy_port])
        monkeypatch.setattr(
            squid_fixtures,
            "_free_port",
            lambda host: next(ports, None) or real_free_port(host),
        )
        with squid_fixtures.start_squid(
            tmp_path, user="u", password="p", host_names=["e.test"]
        ) as proxy:
            assert proxy.port != busy_port
            url = f"http://e.test:{http_origin.port}/"
            assert _proxy_get(proxy, url, proxy.proxy_authorization())[0] == 200
