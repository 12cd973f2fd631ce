"""Throw-away TLS material for the HTTPS site, generated at startup.

A private CA signs a default certificate for ``*.test``, ``localhost`` and
``127.0.0.1``.  Strict verifiers (service_identity, browsers) refuse a
wildcard directly under a TLD, so when a client sends SNI the server answers
with a certificate issued for exactly that name.  Clients that verify trust
:attr:`SandboxTLS.ca_pem`; the rest (Scrapy's default) just work.
"""

from __future__ import annotations

import datetime
import ipaddress
import threading
from collections import OrderedDict

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer  # type: ignore[import-untyped]

DEFAULT_DNS_NAMES = ("*.test", "localhost")
DEFAULT_IPS = ("127.0.0.1",)
_VALIDITY = datetime.timedelta(days=30)
_MAX_CACHED_NAMES = 1024


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "JustProxies sandbox"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class SandboxTLS:
    """The sandbox CA and the server side of the site's TLS."""

    def __init__(self) -> None:
        self._now = datetime.datetime.now(datetime.timezone.utc)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("JustProxies sandbox CA"))
            .issuer_name(_name("JustProxies sandbox CA"))
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - datetime.timedelta(hours=1))
            .not_valid_after(self._now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key()),
                critical=False,
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.default_cert = self.issue(DEFAULT_DNS_NAMES, DEFAULT_IPS)
        self._contexts: OrderedDict[str, SSL.Context] = OrderedDict()
        # The SNI callback runs inside OpenSSL; keep the cache consistent.
        self._lock = threading.Lock()
        self._default_context = self._context(self.default_cert)

    @property
    def ca_pem(self) -> bytes:
        return _pem(self.ca_cert)

    @property
    def cert_pem(self) -> bytes:
        return _pem(self.default_cert)

    def issue(
        self, dns_names: tuple[str, ...], ips: tuple[str, ...] = ()
    ) -> x509.Certificate:
        """A leaf certificate for these names, signed by the sandbox CA."""
        sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        common_name = dns_names[0] if dns_names else ips[0]
        return (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.ca_cert.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - datetime.timedelta(hours=1))
            .not_valid_after(self._now + _VALIDITY)
            .add_extension(
                x509.BasicConstraints(ca=False, path_length=None), critical=True
            )
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._leaf_key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.ca_key.public_key()
                ),
                critical=False,
            )
            .sign(self.ca_key, hashes.SHA256())
        )

    def _context(self, cert: x509.Certificate) -> SSL.Context:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.use_certificate(cert)
        context.use_privatekey(self._leaf_key)
        context.add_extra_chain_cert(self.ca_cert)
        context.set_tlsext_servername_callback(self._on_servername)
        return context

    def context_for(self, server_name: str | None) -> SSL.Context:
        if not server_name:
            return self._default_context
        name = server_name.lower().rstrip(".")
        with self._lock:
            context = self._contexts.get(name)
            if context is not None:
                self._contexts.move_to_end(name)
                return context
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            cert = self.issue((name,))
        else:
            cert = self.issue((), (str(ip),))
        context = self._context(cert)
        with self._lock:
            self._contexts[name] = context
            while len(self._contexts) > _MAX_CACHED_NAMES:
                self._contexts.popitem(last=False)
        return context

    def _on_servername(self, connection: SSL.Connection) -> None:
        raw = connection.get_servername()
        if not raw:
            return
        try:
            name = raw.decode("idna")
        except UnicodeError:
            return
        connection.set_context(self.context_for(name))

    def server_connection_creator(self) -> TLSServerConnectionCreator:
        return TLSServerConnectionCreator(self)


@implementer(IOpenSSLServerConnectionCreator)
class TLSServerConnectionCreator:
    """What ``listenSSL`` needs: a fresh server-side ``SSL.Connection``."""

    def __init__(self, tls: SandboxTLS) -> None:
        self._tls = tls

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self._tls.context_for(None), None)
