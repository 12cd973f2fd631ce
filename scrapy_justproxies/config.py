"""The one place that reads and validates the plugin's settings.

Every ``JUSTPROXIES_*`` value is resolved here with the documented
precedence -- ``scrapy crawl -s`` > environment > settings.py (or a spider's
``custom_settings``) > pool preset -- and checked before any request is sent.
A bad value raises :class:`JustProxiesConfigError` naming the setting and the
fix; the message never contains the password.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

from scrapy.settings import SETTINGS_PRIORITIES, BaseSettings
from scrapy.utils.python import global_object_name

from .presets import PRESETS, PoolPreset

DEFAULT_GATEWAY_PORT: Final = 8080
DEFAULT_USERNAME_TEMPLATE: Final = "{user}[-country-{country}][-session-{session}]"
TEMPLATE_FIELDS: Final = frozenset({"user", "country", "session"})
_CMDLINE_PRIORITY: Final = SETTINGS_PRIORITIES["cmdline"]
_COUNTRY_RE: Final = re.compile(r"[A-Za-z]{2}")
_SESSION_RE: Final = re.compile(r"[A-Za-z0-9_]{1,64}")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
_HOSTNAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")
_PORT_RE: Final = re.compile(r"[0-9]{1,5}")
GATEWAY_SHAPE: Final = "host:port or http://host:port (e.g. gw.example.net:8080)"
# The http/https download handlers the plugin is tested with (Scrapy's
# HTTP/1.1 handler, and its deprecated alias): every promise -- credentials
# only in Proxy-Authorization, a 407 over CONNECT stops the crawl, a refused
# gateway counted and stopped -- rests on how this handler behaves.
SUPPORTED_HTTP_HANDLERS: Final = frozenset(
    {
        "scrapy.core.downloader.handlers.http11.HTTP11DownloadHandler",
        "scrapy.core.downloader.handlers.http.HTTPDownloadHandler",
    }
)


class JustProxiesConfigError(ValueError):
    """A ``JUSTPROXIES_*`` setting is missing, malformed or impossible."""


class _DropTraceback(logging.Filter):
    """Drops the records that carry one given exception (its traceback)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.exc_info[1] is self.error)


def report_startup_error(logger: logging.Logger, error: JustProxiesConfigError) -> None:
    """Log a start-up error as one clear ERROR line, and keep the traceback
    Scrapy would print for the same exception out of the log.

    Scrapy re-raises anything raised while a crawler starts "so asyncio still
    logs it" ("Task exception was never retrieved", or Twisted's "Unhandled
    error in Deferred"); for a settings error that traceback only buries the
    message. Only records carrying this very exception are dropped; the exit
    code stays non-zero.
    """
    if getattr(error, "_reported", False):
        return  # a component's check, reported where it was found
    error._reported = True  # type: ignore[attr-defined]
    logger.error("JustProxies cannot start: %s", error)
    quiet = _DropTraceback(error)
    for name in ("asyncio", "twisted"):
        logging.getLogger(name).addFilter(quiet)


class Secret:
    """A string that never shows itself in a repr, str, log or traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:
        # Pickling would write the password into disk queues (JOBDIR).
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True)
class Gateway:
    host: str
    port: int

    @property
    def url(self) -> str:
        """The gateway's URL, without credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class StaticExit:
    """One fixed exit IP of a static pool: a session id the gateway maps to
    one IP, or a gateway endpoint (``host:port``) that always leaves by one.

    ``label`` names the exit in slot keys, stats, the trace and logs; it is
    the session id or ``host:port``, never a credential (endpoints that carry
    credentials are refused).
    """

    label: str
    session: str | None = None
    endpoint: Gateway | None = None


@dataclass(frozen=True)
class UsernameTemplate:
    """``{user}[-country-{country}][-session-{session}]``: bracketed segments
    are dropped when any field in them has no value."""

    source: str
    segments: tuple[tuple[bool, str], ...]  # (optional, format text)

    @classmethod
    def parse(cls, source: str) -> UsernameTemplate:
        segments: list[tuple[bool, str]] = []
        for match in re.finditer(r"\[([^\[\]]*)\]|([^\[\]]+)", source):
            optional, text = (
                match.group(1) is not None,
                match.group(1) or match.group(2),
            )
            segments.append((optional, text))
        if "".join(f"[{t}]" if o else t for o, t in segments) != source:
            raise ValueError("brackets must pair up and must not nest")
        fields_by_segment = [
            set(re.findall(r"\{(\w*)\}", text)) for _, text in segments
        ]
        unknown = set().union(*fields_by_segment) - TEMPLATE_FIELDS
        if unknown:
            raise ValueError(
                f"unknown field(s) {sorted(unknown)}; use {{user}}, "
                "{country} and {session}"
            )
        required = set().union(
            *(f for (o, _), f in zip(segments, fields_by_segment, strict=True) if not o)
        )
        if "user" not in required:
            raise ValueError("{user} must appear outside [optional] segments")
        literal = re.sub(r"\{\w+\}", "", source)
        if re.search(r"[{}]", literal):
            raise ValueError("stray { or }")
        if ":" in literal or _CONTROL_RE.search(literal) or " " in literal:
            raise ValueError(
                "':', spaces and control characters cannot be in a username"
            )
        return cls(source, tuple(segments))

    def render(self, user: str, country: str | None, session: str | None) -> str:
        values = {"user": user, "country": country or "", "session": session or ""}
        parts = []
        for optional, text in self.segments:
            names = re.findall(r"\{(\w+)\}", text)
            if optional and not all(values[name] for name in names):
                continue
            parts.append(text.format(**values))
        return "".join(parts)


@dataclass(frozen=True)
class Config:
    """Validated plugin configuration. Build it with :meth:`from_settings`."""

    enabled: bool
    gateway: Gateway | None = None
    user: str = ""
    password: Secret = field(default=Secret(""), repr=False)
    pool: PoolPreset | None = None
    username_template: UsernameTemplate = field(
        default=UsernameTemplate.parse(DEFAULT_USERNAME_TEMPLATE)
    )
    country: str | None = None
    override_template_throttle: bool = True
    static_exits: tuple[StaticExit, ...] = ()
    """``JUSTPROXIES_STATIC_EXITS``: the fixed-IP exits requests spread over
    (pool ``static`` only); empty: every request goes to the gateway as is."""
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    """Where each JUSTPROXIES_* value came from (for the start-up log)."""
    warnings: tuple[str, ...] = field(default=(), compare=False)
    """WARNING lines for the start-up log (never containing a credential)."""

    @classmethod
    def from_settings(
        cls, settings: BaseSettings, environ: Mapping[str, str]
    ) -> Config:
        reader = _Reader(settings, environ)
        enabled = reader.bool("JUSTPROXIES_ENABLED", default=True)
        if not enabled:
            return cls(enabled=False, sources=reader.sources)
        pool = reader.pool()
        template = reader.template()
        gateway, listed = reader.gateway()
        warnings: list[str] = []
        if listed is None:
            user, password = reader.user(), reader.password()
        else:
            user, password = reader.listed_credentials(*listed)
            warnings.append(
                f"{reader.where('JUSTPROXIES_GATEWAY')} carries a username and "
                "password (a host:port:user:pass or user:pass:host:port list); "
                "they are used, "
                "but credentials belong in JUSTPROXIES_USER and "
                "JUSTPROXIES_PASSWORD: set JUSTPROXIES_GATEWAY to host:port."
            )
        encoding = settings.get("HTTPPROXY_AUTH_ENCODING") or "latin-1"
        for name, value in (
            ("JUSTPROXIES_USER", user),
            ("JUSTPROXIES_PASSWORD", password),
        ):
            try:
                str(value.reveal() if isinstance(value, Secret) else value).encode(
                    encoding
                )
            except (UnicodeEncodeError, LookupError):
                raise JustProxiesConfigError(
                    f"{reader.where(name)} has characters HTTP Basic auth cannot send "
                    f"in HTTPPROXY_AUTH_ENCODING ({encoding!r}). Use that encoding's "
                    "characters, or set HTTPPROXY_AUTH_ENCODING to one your gateway "
                    "accepts (e.g. 'utf-8')."
                ) from None
        return cls(
            enabled=True,
            gateway=gateway,
            user=user,
            password=password,
            pool=pool,
            username_template=template,
            country=reader.country(),
            override_template_throttle=reader.bool(
                "JUSTPROXIES_OVERRIDE_TEMPLATE_THROTTLE", default=True
            ),
            static_exits=reader.static_exits(pool),
            sources=reader.sources,
            warnings=tuple(warnings),
        )

    def username(
        self, *, country: str | None = None, session: str | None = None
    ) -> str:
        """The gateway username with provider parameters for one request."""
        country = country if country is not None else self.country
        session = str(session) if session is not None else None
        problem = request_parameter_problem(country, session)
        if problem is not None:
            raise ValueError(f"{problem[0]}: {problem[1]}")
        return self.username_template.render(
            self.user, country.lower() if country else None, session
        )

    def proxy_url(
        self,
        *,
        country: str | None = None,
        session: str | None = None,
        endpoint: Gateway | None = None,
    ) -> str:
        """``http://user:password@host:port`` for ``request.meta['proxy']``;
        the gateway's, or a static exit's ``endpoint``.

        Percent-quoted, because Scrapy's HttpProxyMiddleware unquotes both
        parts before building ``Proxy-Authorization``.
        """
        gateway = endpoint or self.gateway
        assert gateway is not None
        user = quote(self.username(country=country, session=session), safe="")
        password = quote(self.password.reveal(), safe="")
        scheme, netloc = gateway.url.split("://", 1)
        return f"{scheme}://{user}:{password}@{netloc}"


def _is_ipv6(name: str) -> bool:
    try:
        ipaddress.IPv6Address(name)
    except ValueError:
        return False
    return True


def _looks_like_host(name: str) -> bool:
    """A dotted name or address, or localhost (a username seldom is)."""
    return "." in name or name.lower() == "localhost"


def request_parameter_problem(
    country: str | None, session: str | None
) -> tuple[str, str] | None:
    """``(which, what to use instead)`` when a per-request country or session
    cannot go into the gateway username; None when both can."""
    if country is not None and not _COUNTRY_RE.fullmatch(country):
        return "country", "use a two-letter country code such as 'us'"
    if session is not None and not _SESSION_RE.fullmatch(session):
        return "session", "use 1-64 characters of letters, digits or _"
    return None


class _Reader:
    """Resolves one ``JUSTPROXIES_*`` value at a time, remembering sources."""

    def __init__(self, settings: BaseSettings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self.environ = environ
        self.sources: dict[str, str] = {}

    def raw(self, name: str) -> Any:
        """The value with the highest precedence, or None.

        An empty value (or only spaces) is the same as no value, wherever it
        comes from: ``JUSTPROXIES_POOL= scrapy crawl`` must not override
        settings.py, nor ``JUSTPROXIES_ENABLED=`` turn the plugin off.
        """
        priority = self.settings.getpriority(name)
        candidates: list[tuple[str, Any]] = []
        if priority is not None and priority >= _CMDLINE_PRIORITY:
            candidates.append(("command line", self.settings.get(name)))
        if name in self.environ:
            candidates.append(("environment", self.environ[name]))
        if priority is not None and priority < _CMDLINE_PRIORITY:
            candidates.append(("settings", self.settings.get(name)))
        for source, value in candidates:
            if value is None or (isinstance(value, str) and not value.strip()):
                continue
            self.sources[name] = source
            return value
        return None

    def where(self, name: str) -> str:
        return f"{name} (from the {self.sources.get(name, 'settings')})"

    def bool(self, name: str, *, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise JustProxiesConfigError(
            f"{self.where(name)} must be true or false, not {value!r}."
        )

    def number(
        self,
        name: str,
        kind: type[int] | type[float],
        *,
        default: float,
        minimum: float,
        maximum: float = math.inf,
    ) -> Any:
        value = self.raw(name)
        if value is None:
            return kind(default)
        number = as_number(value, kind)
        if number is None:
            noun = "a whole number" if kind is int else "a number"
            raise JustProxiesConfigError(
                f"{self.where(name)} must be {noun}, not {value!r}."
            )
        if not minimum <= number <= maximum:
            bounds = (
                f"at least {minimum}"
                if maximum == math.inf
                else (f"between {minimum} and {maximum}")
            )
            raise JustProxiesConfigError(
                f"{self.where(name)} is {number}; it must be {bounds}."
            )
        return number

    def mapping(self, name: str) -> Mapping[str, Any]:
        """A dict setting; from the environment, as JSON."""
        value = self.raw(name)
        if value is None:
            return {}
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                value = None
        if isinstance(value, BaseSettings):
            value = value.copy_to_dict()
        if not isinstance(value, Mapping):
            raise JustProxiesConfigError(
                f"{self.where(name)} must be a dict (JSON in the environment), e.g. "
                '{"example.com": ["cdn.example.net"]}.'
            )
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.text(name) or default
        if value.lower() not in choices:
            raise JustProxiesConfigError(
                f"{self.where(name)} is {value!r}; use one of: {', '.join(choices)}."
            )
        return value.lower()

    def text(self, name: str) -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise JustProxiesConfigError(f"{self.where(name)} must be a string.")
        return value.strip() or None

    def pool(self) -> PoolPreset | None:
        name = self.text("JUSTPROXIES_POOL")
        if name is None:
            return None
        preset = PRESETS.get(name.lower())
        if preset is None:
            raise JustProxiesConfigError(
                f"{self.where('JUSTPROXIES_POOL')} is {name!r}, which is not a "
                f"JustProxies pool. Use one of: {', '.join(PRESETS)}."
            )
        return preset

    def template(self) -> UsernameTemplate:
        source = self.text("JUSTPROXIES_USERNAME_TEMPLATE") or DEFAULT_USERNAME_TEMPLATE
        try:
            return UsernameTemplate.parse(source)
        except ValueError as exc:
            raise JustProxiesConfigError(
                f"{self.where('JUSTPROXIES_USERNAME_TEMPLATE')} is invalid: {exc}. "
                f"The default is {DEFAULT_USERNAME_TEMPLATE!r}."
            ) from None

    def gateway(self) -> tuple[Gateway, tuple[str, str] | None]:
        """The gateway, and ``(user, password)`` when the value was in one of
        the providers' list formats, ``host:port:user:pass`` or
        ``user:pass:host:port``.

        The value is never echoed in an error: it may hold a password.
        """
        name = "JUSTPROXIES_GATEWAY"
        value = self.text(name)
        if value is None:
            raise JustProxiesConfigError(
                f"{name} is not set. Set it to your gateway's host:port, e.g. "
                f"export {name}=gw.example.net:8080 (port {DEFAULT_GATEWAY_PORT} "
                "when omitted), or set JUSTPROXIES_ENABLED=false to crawl "
                "without the gateway."
            )
        fix = f"Use {GATEWAY_SHAPE}"
        if "@" in value:
            raise JustProxiesConfigError(
                f"{self.where(name)} contains credentials. {fix} and put the "
                "credentials in JUSTPROXIES_USER and JUSTPROXIES_PASSWORD."
            )
        if "[" not in value and "//" not in value and value.count(":") >= 3:
            return self._listed_gateway(value)
        try:
            # urlsplit itself refuses an unbalanced "[" (e.g. in a password).
            parsed = urlsplit(value if "://" in value else f"http://{value}")
            port = parsed.port
        except ValueError:
            raise JustProxiesConfigError(
                f"{self.where(name)} has an invalid port (it must be a number from "
                f"1 to 65535). {fix}."
            ) from None
        if parsed.scheme != "http":
            scheme = (
                parsed.scheme if re.fullmatch(r"[a-z0-9+.-]+", parsed.scheme) else ""
            )
            raise JustProxiesConfigError(
                f"{self.where(name)} uses scheme {scheme!r}; the gateway speaks "
                f"plain http (https targets go through CONNECT). {fix}."
            )
        if parsed.hostname and ":" in parsed.hostname:
            self._check_ipv6_gateway(parsed.hostname)
        elif (
            not parsed.hostname
            or not _HOSTNAME_RE.fullmatch(parsed.hostname)
            or parsed.path not in ("", "/")
            or parsed.query
            or parsed.fragment
        ):
            raise JustProxiesConfigError(f"{self.where(name)} is malformed. {fix}.")
        if port == 0:
            raise JustProxiesConfigError(
                f"{self.where(name)}: port 0 is not valid. {fix}."
            )
        return Gateway(parsed.hostname, port or DEFAULT_GATEWAY_PORT), None

    def _check_ipv6_gateway(self, hostname: str) -> None:
        name = "JUSTPROXIES_GATEWAY"
        try:
            ipaddress.IPv6Address(hostname)
        except ValueError:
            raise JustProxiesConfigError(
                f"{self.where(name)} has a malformed IPv6 address. Use "
                f"{GATEWAY_SHAPE}, or http://[IPv6]:port."
            ) from None
        # Measured on Scrapy 2.13 and 2.19, both reactors: with the default
        # resolver (IPv4 names only) every http request fails "DNS lookup
        # failed ... ::1"; https, and http with this resolver, work.
        if resolver_path(self.settings) != HOSTNAME_RESOLVER:
            raise JustProxiesConfigError(
                f"{self.where(name)} is an IPv6 address, and Scrapy's default DNS "
                "resolver cannot connect http requests to it. Set "
                f"{resolver_setting(self.settings)} = {HOSTNAME_RESOLVER!r} in "
                "settings.py (or with -s), or use the gateway's IPv4 address."
            )

    def _listed_gateway(self, value: str) -> tuple[Gateway, tuple[str, str]]:
        parts = value.split(":")
        host_first = bool(_PORT_RE.fullmatch(parts[1]))  # host:port:user:pass
        host_last = bool(_PORT_RE.fullmatch(parts[-1]))  # user:pass:host:port
        if host_first and host_last:
            # A numeric password reads both ways; taken the wrong way, it
            # would be printed as the gateway's port. Go by which looks like
            # a host, and refuse when neither does more than the other.
            host_first, host_last = (
                _looks_like_host(parts[0]),
                _looks_like_host(parts[-2]),
            )
            if host_first == host_last:
                raise JustProxiesConfigError(
                    f"{self.where('JUSTPROXIES_GATEWAY')} reads either way as "
                    "host:port:user:pass or user:pass:host:port. Use "
                    f"{GATEWAY_SHAPE}, with the credentials in JUSTPROXIES_USER "
                    "and JUSTPROXIES_PASSWORD."
                )
        if host_first:  # the password may hold ':'
            host, port, user, password = (
                parts[0],
                parts[1],
                parts[2],
                ":".join(parts[3:]),
            )
        elif host_last:
            user, password = parts[0], ":".join(parts[1:-2])
            host, port = parts[-2], parts[-1]
        else:
            host = port = user = password = ""
        if not (
            _HOSTNAME_RE.fullmatch(host)
            and 1 <= int(port or 0) <= 65535
            and user
            and password
        ):
            raise JustProxiesConfigError(
                f"{self.where('JUSTPROXIES_GATEWAY')} is not in a form the plugin "
                f"knows. Use {GATEWAY_SHAPE}, with the credentials in "
                "JUSTPROXIES_USER and JUSTPROXIES_PASSWORD."
            )
        return Gateway(host, int(port)), (user, password)

    def listed_credentials(self, user: str, password: str) -> tuple[str, Secret]:
        """Credentials from the gateway's list format, checked against
        JUSTPROXIES_USER / JUSTPROXIES_PASSWORD when those are set too."""
        for name, listed in (
            ("JUSTPROXIES_USER", user),
            ("JUSTPROXIES_PASSWORD", password),
        ):
            own = self.raw(name)
            if own is not None and own != listed:
                raise JustProxiesConfigError(
                    f"JUSTPROXIES_GATEWAY carries credentials that differ from "
                    f"{self.where(name)}. Set JUSTPROXIES_GATEWAY to host:port and "
                    "keep the credentials in JUSTPROXIES_USER and "
                    "JUSTPROXIES_PASSWORD."
                )
        self.sources.setdefault("JUSTPROXIES_USER", self.sources["JUSTPROXIES_GATEWAY"])
        self.sources.setdefault(
            "JUSTPROXIES_PASSWORD", self.sources["JUSTPROXIES_GATEWAY"]
        )
        return self._checked_user("JUSTPROXIES_GATEWAY", user), self._checked_password(
            "JUSTPROXIES_GATEWAY", password
        )

    def user(self) -> str:
        name = "JUSTPROXIES_USER"
        value = self.text(name)
        if value is None:
            raise JustProxiesConfigError(
                f"{name} is not set. Export your JustProxies username "
                f"(export {name}=...) or set it in settings.py."
            )
        return self._checked_user(name, value)

    def _checked_user(self, name: str, value: str) -> str:
        if ":" in value or _CONTROL_RE.search(value) or " " in value:
            raise JustProxiesConfigError(
                f"{self.where(name)}: the username must not contain ':', spaces or "
                "control characters (HTTP Basic auth cannot carry them)."
            )
        return value

    def password(self) -> Secret:
        name = "JUSTPROXIES_PASSWORD"
        value = self.raw(name)
        if value is None:
            raise JustProxiesConfigError(
                f"{name} is not set. Export it (export {name}=...) rather than "
                "writing it in settings.py, so it stays out of version control."
            )
        if not isinstance(value, str):
            raise JustProxiesConfigError(f"{self.where(name)} must be a string.")
        return self._checked_password(name, value)

    def _checked_password(self, name: str, value: str) -> Secret:
        if _CONTROL_RE.search(value):
            raise JustProxiesConfigError(
                f"{self.where(name)}: the password contains control characters "
                "(a stray newline?)."
            )
        return Secret(value)

    def static_exits(self, pool: PoolPreset | None) -> tuple[StaticExit, ...]:
        """``JUSTPROXIES_STATIC_EXITS``: a list of session ids and/or gateway
        endpoints (``host:port``), each one fixed exit IP.

        From the environment (or ``-s``) as a JSON list or a comma-separated
        string. An entry is never echoed in an error: an endpoint pasted
        with its credentials would print them. Entries are named by position.
        """
        name = "JUSTPROXIES_STATIC_EXITS"
        value = self.raw(name)
        if value is None:
            return ()
        where = self.where(name)
        shape = (
            "a list of session ids (1-64 letters, digits or _) or gateway "
            "endpoints (host:port), e.g. ['exit1', 'exit2'] or "
            "['gw.example.net:10001', 'gw.example.net:10002']"
        )
        if isinstance(value, str):
            text = value.strip()
            if text.lower() == "none":
                return ()  # "-s JUSTPROXIES_STATIC_EXITS=None": unset
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except ValueError:
                    raise JustProxiesConfigError(
                        f"{where} is not a valid JSON list; use {shape}."
                    ) from None
            else:
                value = text.split(",")
        if isinstance(value, BaseSettings) or not isinstance(value, list | tuple):
            raise JustProxiesConfigError(f"{where} must be {shape}.")
        if not value:
            raise JustProxiesConfigError(
                f"{where} is an empty list: no exit to send requests through. "
                f"Use {shape}, or leave it unset to use the gateway's rotation."
            )
        if pool is None or pool.name != "static":
            raise JustProxiesConfigError(
                f"{where} lists static exits, but JUSTPROXIES_POOL is "
                f"{pool.name if pool else 'not set'!r}"
                "; exits with one fixed IP each belong to the static pool. Set "
                "JUSTPROXIES_POOL = 'static', or remove JUSTPROXIES_STATIC_EXITS."
            )
        exits: list[StaticExit] = []
        seen: dict[str, int] = {}
        for position, entry in enumerate(value, start=1):
            exit_ = self._static_exit(where, position, entry, shape)
            if exit_.label in seen:
                raise JustProxiesConfigError(
                    f"{where}: entries {seen[exit_.label]} and {position} are the "
                    "same exit; list each exit once."
                )
            seen[exit_.label] = position
            exits.append(exit_)
        return tuple(exits)

    def _static_exit(
        self, where: str, position: int, entry: Any, shape: str
    ) -> StaticExit:
        prefix = f"{where}: entry {position}"
        if not isinstance(entry, str) or not entry.strip():
            raise JustProxiesConfigError(
                f"{prefix} is not a non-empty string; use {shape}."
            )
        text = entry.strip()
        rest = text.split("://", 1)[-1]
        # user:pass@host:port, or the providers' host:port:user:pass lists
        if "@" in rest or (rest.count(":") >= 2 and "[" not in rest):
            raise JustProxiesConfigError(
                f"{prefix} contains credentials. List the endpoint as host:port "
                "and keep the credentials in JUSTPROXIES_USER and "
                "JUSTPROXIES_PASSWORD (every exit uses them)."
            )
        if ":" not in text and "/" not in text:
            if not _SESSION_RE.fullmatch(text):
                raise JustProxiesConfigError(
                    f"{prefix} is neither a session id (1-64 letters, digits or _) "
                    f"nor an endpoint with a port; use {shape}."
                )
            return StaticExit(label=text, session=text)
        parsed = urlsplit(text if "://" in text else f"http://{text}")
        try:
            port = parsed.port
        except ValueError:
            port = None
        hostname = parsed.hostname or ""
        if (
            parsed.scheme != "http"
            or port is None
            or not 1 <= port <= 65535
            or parsed.path not in ("", "/")
            or parsed.query
            or parsed.fragment
            or not (
                _HOSTNAME_RE.fullmatch(hostname)
                or (":" in hostname and _is_ipv6(hostname))
            )
        ):
            raise JustProxiesConfigError(
                f"{prefix} is not a valid endpoint; use host:port or "
                f"http://host:port with a port from 1 to 65535 ({shape})."
            )
        endpoint = Gateway(hostname.lower(), port)
        if ":" in hostname and resolver_path(self.settings) != HOSTNAME_RESOLVER:
            raise JustProxiesConfigError(
                f"{prefix} is an IPv6 endpoint, and Scrapy's default DNS resolver "
                f"cannot connect http requests to it. Set "
                f"{resolver_setting(self.settings)} = {HOSTNAME_RESOLVER!r}."
            )
        return StaticExit(label=endpoint.url.removeprefix("http://"), endpoint=endpoint)

    def country(self) -> str | None:
        name = "JUSTPROXIES_COUNTRY"
        value = self.text(name)
        if value is not None and not _COUNTRY_RE.fullmatch(value):
            raise JustProxiesConfigError(
                f"{self.where(name)} is {value!r}; use a two-letter country code "
                "such as 'us', or leave it unset for any country."
            )
        return value.lower() if value else None


_ADDON_PRIORITY: Final = SETTINGS_PRIORITIES["addon"]
_SOURCE_BY_PRIORITY: Final = {
    SETTINGS_PRIORITIES["default"]: "Scrapy default",
    SETTINGS_PRIORITIES["command"]: "Scrapy command default",
    SETTINGS_PRIORITIES["addon"]: "an add-on",
    SETTINGS_PRIORITIES["project"]: "settings.py",
    SETTINGS_PRIORITIES["spider"]: "spider custom_settings",
    SETTINGS_PRIORITIES["cmdline"]: "command line",
}
# What `scrapy startproject` writes into every new settings.py.
STARTPROJECT_THROTTLE: Final = {
    "CONCURRENT_REQUESTS_PER_DOMAIN": 1,
    "DOWNLOAD_DELAY": 1,
}
# The add-on writes its replacement of those lines just above settings.py's
# priority (20) and below custom_settings (30), so a spider still wins and the
# start-up log can tell the replacement from a user's own value.
TEMPLATE_OVERRIDE_PRIORITY: Final = SETTINGS_PRIORITIES["project"] + 1
_SOURCE_BY_PRIORITY[TEMPLATE_OVERRIDE_PRIORITY] = (
    "pool preset, replacing the startproject template's value"
)


class SourceKind(Enum):
    """Whose value a preset-managed Scrapy setting takes."""

    USER = "user"
    """Set by the user (settings.py, custom_settings, -s) or Scrapy's default."""
    PRESET = "preset"
    """The pool preset's value, where the user set nothing."""
    TEMPLATE_REPLACED = "template"
    """The preset's value in place of the startproject template's line."""


@dataclass(frozen=True)
class Effective:
    """One Scrapy setting's value for this crawl and where it came from."""

    value: Any
    source: str
    """Where it came from, for the start-up log."""
    kind: SourceKind = SourceKind.USER


def as_number(value: Any, kind: type[int] | type[float]) -> int | float | None:
    """``value`` as ``kind``, or None when it is not one.

    Booleans are refused (``True`` is no count), and a whole number may not
    come as a float with a fraction (``2.7`` would silently become 2); an
    integral float such as ``16.0`` is accepted.
    """
    if isinstance(value, bool):
        return None
    if kind is int and isinstance(value, float):
        return int(value) if value.is_integer() else None
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if isinstance(number, float) and not math.isfinite(number):
        return None
    return number


def has_startproject_throttle(settings: BaseSettings) -> bool:
    """True when settings.py still carries the startproject politeness lines
    (1 request at a time per domain, 1 s apart), which would throttle any
    proxy pool to one request per second per site."""
    project = SETTINGS_PRIORITIES["project"]
    return all(
        settings.getpriority(name) == project and settings.getfloat(name) == value
        for name, value in STARTPROJECT_THROTTLE.items()
    )


def replaced_startproject_throttle(settings: BaseSettings) -> bool:
    """True when the add-on replaced the startproject template lines."""
    return any(
        settings.getpriority(name) == TEMPLATE_OVERRIDE_PRIORITY
        for name in STARTPROJECT_THROTTLE
    )


def effective_settings(settings: BaseSettings, config: Config) -> dict[str, Effective]:
    """The value each preset-managed Scrapy setting takes in this crawl.

    A value the user set (settings.py, custom_settings, -s) wins over the
    preset, except the startproject template lines when
    ``JUSTPROXIES_OVERRIDE_TEMPLATE_THROTTLE`` is on. The preset's two
    concurrency numbers give way to the user's: a per-domain start above the
    user's ``CONCURRENT_REQUESTS`` is lowered to it, a crawl-wide total below
    the user's ``CONCURRENT_REQUESTS_PER_DOMAIN`` raised to it.
    """
    preset_values = config.pool.scrapy_settings() if config.pool else {}
    if preset_values and config.static_exits:
        # The static pool's range is per exit IP: the crawl as a whole may
        # use every exit's high end.
        preset_values["CONCURRENT_REQUESTS"] *= len(config.static_exits)
    template = (
        config.pool is not None
        and config.override_template_throttle
        and has_startproject_throttle(settings)
    )

    def set_by_user(name: str) -> bool:
        # settings.py, custom_settings and -s all sit above add-on priority.
        priority = settings.getpriority(name) or 0
        replaced = (
            template and name in STARTPROJECT_THROTTLE
        ) or priority == TEMPLATE_OVERRIDE_PRIORITY
        return priority > _ADDON_PRIORITY and not replaced

    if preset_values:
        total, start = "CONCURRENT_REQUESTS", "CONCURRENT_REQUESTS_PER_DOMAIN"
        if set_by_user(total) and not set_by_user(start):
            user_total = as_number(settings.get(total), int)
            if user_total is not None and user_total >= 1:
                preset_values[start] = min(preset_values[start], user_total)
        elif set_by_user(start) and not set_by_user(total):
            user_start = as_number(settings.get(start), int)
            if user_start is not None:
                preset_values[total] = max(preset_values[total], user_start)

    def is_users(name: str) -> bool:
        # At add-on priority: ours when it is the preset's value.
        priority = settings.getpriority(name) or 0
        return priority > _ADDON_PRIORITY or (
            priority == _ADDON_PRIORITY and settings.get(name) != preset_values[name]
        )

    result: dict[str, Effective] = {}
    names = list(preset_values) or [
        "CONCURRENT_REQUESTS",
        "CONCURRENT_REQUESTS_PER_DOMAIN",
        "DOWNLOAD_DELAY",
        "DOWNLOAD_TIMEOUT",
        "RETRY_TIMES",
    ]
    for name in names:
        priority = settings.getpriority(name) or 0
        current = settings.get(name)
        if name not in preset_values:
            result[name] = Effective(
                current, _SOURCE_BY_PRIORITY.get(priority, "settings")
            )
        elif template and name in STARTPROJECT_THROTTLE:
            result[name] = Effective(
                preset_values[name],
                _SOURCE_BY_PRIORITY[TEMPLATE_OVERRIDE_PRIORITY],
                SourceKind.TEMPLATE_REPLACED,
            )
        elif is_users(name):
            result[name] = Effective(
                current, _SOURCE_BY_PRIORITY.get(priority, "settings")
            )
        else:
            result[name] = Effective(
                preset_values[name], "pool preset", SourceKind.PRESET
            )
    return result


@dataclass(frozen=True)
class Concurrency:
    """The crawl's concurrency numbers, checked against each other."""

    total: int
    domain_start: int
    domain_max: int
    delay: float
    download_timeout: float
    retry_times: int

    @classmethod
    def resolve(
        cls, settings: BaseSettings, config: Config, environ: Mapping[str, str]
    ) -> Concurrency:
        values = effective_settings(settings, config)

        def number(name: str, kind: type[int] | type[float], minimum: float) -> Any:
            raw = values[name].value
            value = as_number(raw, kind)
            if value is None:
                noun = "a whole number" if kind is int else "a number"
                raise JustProxiesConfigError(
                    f"{name} (from {values[name].source}) must be {noun}, not {raw!r}."
                )
            if value < minimum:
                raise JustProxiesConfigError(
                    f"{name} (from {values[name].source}) is {value}; it must be "
                    f"at least {minimum}."
                )
            return value

        total = number("CONCURRENT_REQUESTS", int, 1)
        start = number("CONCURRENT_REQUESTS_PER_DOMAIN", int, 1)
        reader = _Reader(settings, environ)
        max_name = "JUSTPROXIES_DOMAIN_CONCURRENCY_MAX"
        raw_max = reader.raw(max_name)
        if raw_max is None:
            domain_max = config.pool.domain_concurrency_max if config.pool else total
            domain_max = max(start, min(domain_max, total))
        else:
            checked = as_number(raw_max, int)
            if checked is None:
                raise JustProxiesConfigError(
                    f"{reader.where(max_name)} must be a whole number, not {raw_max!r}."
                )
            domain_max = int(checked)
            if not start <= domain_max <= total:
                raise JustProxiesConfigError(
                    f"{reader.where(max_name)} is {domain_max}; it must lie between "
                    f"CONCURRENT_REQUESTS_PER_DOMAIN ({start}) and "
                    f"CONCURRENT_REQUESTS ({total}). Raise CONCURRENT_REQUESTS or "
                    f"lower {max_name}."
                )
        if start > total:
            raise JustProxiesConfigError(
                f"CONCURRENT_REQUESTS_PER_DOMAIN ({start}, from "
                f"{values['CONCURRENT_REQUESTS_PER_DOMAIN'].source}) is above "
                f"CONCURRENT_REQUESTS ({total}); no domain could ever reach it. "
                "Lower it or raise CONCURRENT_REQUESTS."
            )
        timeout = number("DOWNLOAD_TIMEOUT", float, 0.001)
        return cls(
            total=total,
            domain_start=start,
            domain_max=domain_max,
            delay=number("DOWNLOAD_DELAY", float, 0),
            download_timeout=timeout,
            retry_times=number("RETRY_TIMES", int, 0),
        )


DEFAULT_STATS_DOMAINS: Final = 20
"""Per-domain stats are kept for this many domains (the busiest ones)."""


def _stats_domains(reader: _Reader) -> int:
    """JUSTPROXIES_STATS_DOMAINS: the busiest domains that get their own
    stats (throttle) and the costliest (bytes, cost); the rest aggregate."""
    number: int = reader.number(
        "JUSTPROXIES_STATS_DOMAINS",
        int,
        default=DEFAULT_STATS_DOMAINS,
        minimum=0,
        maximum=1000,
    )
    return number


RETRY_AFTER_MODES: Final = ("request", "slot")


@dataclass(frozen=True)
class ThrottleConfig:
    """Settings of the adaptive concurrency extension and of 429 retries."""

    enabled: bool = True
    increase_factor: float = 1.25
    tolerated_share: float = 0.02
    log_interval: float = 10.0
    retry_429_times: int = 20
    retry_after_max: float = 30.0
    retry_after_mode: str = "request"
    group_www: bool = True
    slot_groups: Mapping[str, str] = field(default_factory=dict)
    """hostname -> the slot (budget) it shares, from JUSTPROXIES_SLOT_GROUPS."""
    stats_domains: int = DEFAULT_STATS_DOMAINS
    """How many domains (those with the most answers) get their own stats."""

    @classmethod
    def from_settings(
        cls, settings: BaseSettings, environ: Mapping[str, str]
    ) -> ThrottleConfig:
        reader = _Reader(settings, environ)
        return cls(
            enabled=reader.bool("JUSTPROXIES_THROTTLE_ENABLED", default=True),
            increase_factor=reader.number(
                "JUSTPROXIES_THROTTLE_INCREASE",
                float,
                default=1.25,
                minimum=1.01,
                maximum=4.0,
            ),
            tolerated_share=reader.number(
                "JUSTPROXIES_THROTTLE_TOLERATED_429_SHARE",
                float,
                default=0.02,
                minimum=0.0,
                maximum=0.5,
            ),
            log_interval=reader.number(
                "JUSTPROXIES_THROTTLE_LOG_INTERVAL", float, default=10.0, minimum=0.0
            ),
            retry_429_times=reader.number(
                "JUSTPROXIES_RETRY_429_TIMES", int, default=20, minimum=0
            ),
            retry_after_max=reader.number(
                "JUSTPROXIES_RETRY_AFTER_MAX",
                float,
                default=30.0,
                # It caps the backoff too: 0 would spend the 429 budget at once.
                minimum=1.0,
                maximum=300.0,
            ),
            retry_after_mode=reader.choice(
                "JUSTPROXIES_RETRY_AFTER_MODE", RETRY_AFTER_MODES, "request"
            ),
            group_www=reader.bool("JUSTPROXIES_GROUP_WWW", default=True),
            slot_groups=_slot_groups(reader.mapping("JUSTPROXIES_SLOT_GROUPS")),
            stats_domains=_stats_domains(reader),
        )

    def slot_key(self, hostname: str) -> str:
        """The download slot (concurrency budget) a hostname belongs to."""
        hostname = hostname.lower()
        if hostname in self.slot_groups:
            return self.slot_groups[hostname]
        if self.group_www and hostname.startswith("www."):
            return hostname[4:]
        return hostname


def _slot_groups(raw: Mapping[str, Any]) -> dict[str, str]:
    groups: dict[str, str] = {}
    for group, hosts in raw.items():
        if (
            not isinstance(group, str)
            or not isinstance(hosts, list | tuple)
            # "" or a space: no request's hostname, a group that never applies
            or not all(isinstance(h, str) and _HOSTNAME_RE.fullmatch(h) for h in hosts)
            or not _HOSTNAME_RE.fullmatch(group)
        ):
            raise JustProxiesConfigError(
                f"JUSTPROXIES_SLOT_GROUPS[{group!r}] must be a list of hostnames, "
                'e.g. {"example.com": ["cdn.example.net", "img.example.com"]}.'
            )
        for host in [group, *hosts]:
            groups[host.lower()] = group.lower()
    return groups


HOSTNAME_RESOLVER: Final = "scrapy.resolver.CachingHostnameResolver"


def resolver_setting(settings: BaseSettings) -> str:
    """The name of the setting that picks the reactor's DNS resolver:
    ``TWISTED_DNS_RESOLVER`` since Scrapy 2.14, ``DNS_RESOLVER`` before
    (still honoured there when set above the other)."""
    if "TWISTED_DNS_RESOLVER" not in settings:
        return "DNS_RESOLVER"
    old = settings.getpriority("DNS_RESOLVER") or 0
    new = settings.getpriority("TWISTED_DNS_RESOLVER") or 0
    default = SETTINGS_PRIORITIES["default"]
    return "DNS_RESOLVER" if old > default and old >= new else "TWISTED_DNS_RESOLVER"


def resolver_path(settings: BaseSettings) -> str:
    value = settings.get(resolver_setting(settings))
    if isinstance(value, str):
        return value
    return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}"


def check_download_handlers(settings: BaseSettings) -> None:
    """Refuse http/https download handlers the plugin is not tested with.

    Another handler may log the proxy URL with its password, report a 407
    over CONNECT differently (so it would not stop the crawl) or retry a
    refused gateway without end.
    """
    handlers = settings.getwithbase("DOWNLOAD_HANDLERS")
    for scheme in ("http", "https"):
        handler = handlers.get(scheme)
        if handler is None:
            continue  # scheme disabled: Scrapy refuses such requests itself
        path = (
            handler
            if isinstance(handler, str)
            else f"{getattr(handler, '__module__', '')}."
            f"{getattr(handler, '__qualname__', type(handler).__name__)}"
        )
        if path not in SUPPORTED_HTTP_HANDLERS:
            raise JustProxiesConfigError(
                f"DOWNLOAD_HANDLERS[{scheme!r}] is {path!r}, a download handler "
                "scrapy-justproxies is not tested with: it may log the gateway "
                "credentials or fail open. Remove that DOWNLOAD_HANDLERS entry to "
                "use Scrapy's default, "
                "'scrapy.core.downloader.handlers.http11.HTTP11DownloadHandler'."
            )


# -- observability (issue 10): bytes, money, trace, report ----------------------

MAX_PRICE_PER_GB: Final = 1e9
"""Above any currency's price of a gigabyte; keeps every cost finite."""


@dataclass(frozen=True)
class ObservabilityConfig:
    """What the crawl reports about itself: cost, trace file, HTML report."""

    price_per_gb: float | None = None
    """The pool's price per GB (10^9 bytes) in the user's currency; None: no
    money figures."""
    trace_path: str | None = None
    report_path: str | None = None
    stats_domains: int = DEFAULT_STATS_DOMAINS

    @classmethod
    def from_settings(
        cls, settings: BaseSettings, environ: Mapping[str, str]
    ) -> ObservabilityConfig:
        reader = _Reader(settings, environ)
        price: float | None = None
        if reader.raw("JUSTPROXIES_PRICE_PER_GB") is not None:
            # A finite bound: a price of 1e300 would print costs of inf.
            price = 0.0 + reader.number(  # 0.0 +: "-0" prints as 0.00
                "JUSTPROXIES_PRICE_PER_GB",
                float,
                default=0.0,
                minimum=0.0,
                maximum=MAX_PRICE_PER_GB,
            )
        trace_path = _path(reader, "JUSTPROXIES_TRACE")
        report_path = _path(reader, "JUSTPROXIES_REPORT")
        if report_path is not None:
            _check_report_path(reader, report_path, trace_path)
        return cls(
            price_per_gb=price,
            trace_path=trace_path,
            report_path=report_path,
            stats_domains=_stats_domains(reader),
        )


def _means_off(text: str) -> bool:
    """A file setting's text that turns it off: empty, or ``None``/``off``
    as ``-s NAME=None`` passes them (a string, not Python's None)."""
    return text.strip().lower() in ("", "none", "off")


def _path(reader: _Reader, name: str) -> str | None:
    value = reader.raw(name)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if value is not None and not isinstance(value, str):
        raise JustProxiesConfigError(
            f"{reader.where(name)} must be a file path (a string), not {value!r}."
        )
    path = (value or "").strip()
    if _means_off(path):
        return None
    path = os.path.expanduser(path)  # "~/x" from settings.py or -s: no shell
    if Path(path).is_dir():
        example = Path(path) / (
            "trace.jsonl" if name == "JUSTPROXIES_TRACE" else "report.html"
        )
        raise JustProxiesConfigError(
            f"{reader.where(name)} is a folder; give a file path, e.g. "
            f"{str(example)!r}."
        )
    return path


def _check_report_path(reader: _Reader, report: str, trace: str | None) -> None:
    """The report is written at close: refuse now what would fail then."""
    name = "JUSTPROXIES_REPORT"
    resolved = Path(report).resolve()
    if not resolved.parent.is_dir():
        raise JustProxiesConfigError(
            f"{name}: the folder {str(resolved.parent)!r} does not exist."
            " Create it, or give a path in an existing folder."
        )
    if trace is not None and Path(trace).resolve() == resolved:
        raise JustProxiesConfigError(
            f"{reader.where(name)} is the same file as JUSTPROXIES_TRACE: the "
            "report would overwrite the trace. Give them different names, e.g. "
            "trace.jsonl and report.html."
        )


SCRAPY_SCHEDULER: Final = "scrapy.core.scheduler.Scheduler"


def per_site_queue_fits(settings: BaseSettings) -> bool:
    """Whether the plugin's per-site scheduler queue can be used: not with
    slots per IP (their keys are known only once DNS has answered), nor to
    resume a JOBDIR written by a queue that is not per site (Scrapy's
    default keeps one flat list of priorities there); that job goes on with
    its own queue."""
    if settings.getint("CONCURRENT_REQUESTS_PER_IP"):
        return False
    jobdir = settings.get("JOBDIR")
    if not jobdir:
        return True
    try:
        state = json.loads(Path(jobdir, "requests.queue", "active.json").read_text())
    except (OSError, ValueError):
        return True  # a new job, or nothing Scrapy could resume anyway
    return not state or isinstance(state, dict)


def scheduler_queue_line(settings: BaseSettings, per_site_queue: str) -> str:
    """The start-up block's line on who holds a strict site's waiting
    requests: the plugin's per-site queue, or (another queue or scheduler)
    the downloader, where they count against CONCURRENT_REQUESTS."""

    def name(setting: str) -> str:
        value = settings.get(setting)
        return value if isinstance(value, str) else global_object_name(value)

    def source(setting: str) -> str:
        return _SOURCE_BY_PRIORITY.get(settings.getpriority(setting) or 0, "settings")

    scheduler, queue = name("SCHEDULER"), name("SCHEDULER_PRIORITY_QUEUE")
    if scheduler != SCRAPY_SCHEDULER:
        return (
            f"  SCHEDULER = {scheduler!r}: requests for a site at its limit "
            "wait in the downloader and count against CONCURRENT_REQUESTS"
        )
    if queue == per_site_queue:
        return (
            "  SCHEDULER_PRIORITY_QUEUE: the plugin's per-site queue (a site's "
            "requests wait in the scheduler until its slot has room)"
        )
    return (
        f"  SCHEDULER_PRIORITY_QUEUE = {queue!r} "
        f"({source('SCHEDULER_PRIORITY_QUEUE')}): requests for a site at its "
        "limit wait in the downloader and count against CONCURRENT_REQUESTS"
    )


def in_force(settings: BaseSettings, environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings this crawl runs with, resolved and validated, for the
    trace's header. No credentials: only the gateway URL without them."""
    config = Config.from_settings(settings, environ)
    if not config.enabled:
        return {"JUSTPROXIES_ENABLED": False}
    concurrency = Concurrency.resolve(settings, config, environ)
    throttle = ThrottleConfig.from_settings(settings, environ)
    observability = ObservabilityConfig.from_settings(settings, environ)
    learning = LearningConfig.from_settings(settings, environ)
    return {
        "JUSTPROXIES_POOL": config.pool.name if config.pool else None,
        "JUSTPROXIES_COUNTRY": config.country,
        "CONCURRENT_REQUESTS": concurrency.total,
        "CONCURRENT_REQUESTS_PER_DOMAIN": concurrency.domain_start,
        "JUSTPROXIES_DOMAIN_CONCURRENCY_MAX": concurrency.domain_max,
        "DOWNLOAD_DELAY": concurrency.delay,
        "DOWNLOAD_TIMEOUT": concurrency.download_timeout,
        "RETRY_TIMES": concurrency.retry_times,
        "JUSTPROXIES_THROTTLE_ENABLED": throttle.enabled,
        "JUSTPROXIES_THROTTLE_INCREASE": throttle.increase_factor,
        "JUSTPROXIES_THROTTLE_TOLERATED_429_SHARE": throttle.tolerated_share,
        "JUSTPROXIES_THROTTLE_SLOW_START": learning.slow_start,
        "JUSTPROXIES_THROTTLE_SLOW_START_UNTIL": learning.slow_start_until,
        "JUSTPROXIES_THROTTLE_SLOW_START_RATE": learning.slow_start_rate,
        "JUSTPROXIES_RETRY_429_TIMES": throttle.retry_429_times,
        "JUSTPROXIES_RETRY_AFTER_MAX": throttle.retry_after_max,
        "JUSTPROXIES_RETRY_AFTER_MODE": throttle.retry_after_mode,
        "JUSTPROXIES_PRICE_PER_GB": observability.price_per_gb,
        "JUSTPROXIES_STATS_DOMAINS": observability.stats_domains,
        # Labels only: session ids or host:port (entries with credentials
        # are refused at start-up).
        "JUSTPROXIES_STATIC_EXITS": [exit_.label for exit_ in config.static_exits],
    }


# -- learning: the warm-start state file (issue 9) ---------------------------

STATE_FILE_DEFAULT = "justproxies/limits.json"
"""Inside the project's data dir (``.scrapy``), as Scrapy puts HTTPCACHE_DIR."""
STATE_MAX_AGE_DEFAULT = 7 * 24 * 3600.0
SLOW_START_RATE_MIN: Final = 1.0
"""Sends per second a rate-first slow start may begin at, at least: Scrapy
keeps a slot's next send where a slower pace put it, even once the first
answer has raised the pace (a pace of 0.001 holds the second request
1,000 s)."""
SLOW_START_RATE_MAX: Final = 10_000.0
"""At most: above, it is no slow start (and a typo's extra zeros are
caught)."""


@dataclass(frozen=True)
class LearningConfig:
    """Where the learned limits are kept between crawls, and for how long."""

    state_file: str | None = None
    """Path of the state file; None: nothing is read or saved."""
    max_age: float = STATE_MAX_AGE_DEFAULT
    """Seconds after which a learned limit is ignored."""
    slow_start: int = 4
    """A cold domain's first volley; it doubles every answer time until the
    429s climb. 0: the first volley is CONCURRENT_REQUESTS_PER_DOMAIN."""
    slow_start_until: float = 2.0
    """Where slow start stops doubling, as a multiple of
    CONCURRENT_REQUESTS_PER_DOMAIN (then +JUSTPROXIES_THROTTLE_INCREASE per
    clean window); 0: it doubles up to the per-domain maximum."""
    slow_start_rate: float = 0.0
    """Above 0, slow start is rate-first: a cold domain's sends are paced
    from this many per second, the pace grows with each clean answer, a
    lone 429 holds it and a second within ten answers cuts it
    (``JUSTPROXIES_THROTTLE_SLOW_START_RATE``)."""

    @classmethod
    def from_settings(
        cls, settings: BaseSettings, environ: Mapping[str, str]
    ) -> LearningConfig:
        reader = _Reader(settings, environ)
        name = "JUSTPROXIES_STATE_FILE"
        value = reader.raw(name)
        explicitly_off = value is None and settings.getpriority(name) is not None
        if value is None and not explicitly_off:
            # Imported late: it looks for scrapy.cfg in the working directory.
            from scrapy.utils.project import data_path  # noqa: PLC0415

            state_file: str | None = data_path(STATE_FILE_DEFAULT)
        elif value is None:
            state_file = None
        elif isinstance(value, (str, os.PathLike)):
            text = os.fspath(value).strip()
            state_file = None if _means_off(text) else text
        else:
            raise JustProxiesConfigError(
                f"{reader.where(name)} must be a file path, or None to keep no "
                f"state, not {value!r}."
            )
        max_age = reader.number(
            "JUSTPROXIES_STATE_MAX_AGE",
            float,
            default=STATE_MAX_AGE_DEFAULT,
            minimum=0.0,
        )
        slow_start = reader.number(
            "JUSTPROXIES_THROTTLE_SLOW_START", int, default=4, minimum=0
        )
        until_name = "JUSTPROXIES_THROTTLE_SLOW_START_UNTIL"
        slow_start_until = reader.number(until_name, float, default=2.0, minimum=0.0)
        if 0 < slow_start_until < 1:
            raise JustProxiesConfigError(
                f"{reader.where(until_name)} is {slow_start_until}; it is a multiple "
                "of CONCURRENT_REQUESTS_PER_DOMAIN, so use 1 to stop slow start at "
                "it, more to stop above it, or 0 to let it double up to the "
                "per-domain maximum."
            )
        rate_name = "JUSTPROXIES_THROTTLE_SLOW_START_RATE"
        slow_start_rate = reader.number(
            rate_name, float, default=0.0, minimum=0.0, maximum=SLOW_START_RATE_MAX
        )
        if 0 < slow_start_rate < SLOW_START_RATE_MIN:
            raise JustProxiesConfigError(
                f"{reader.where(rate_name)} is {slow_start_rate}; it is the sends "
                f"per second a new domain starts at: use at least "
                f"{SLOW_START_RATE_MIN:g}, or 0 to slow-start by volleys."
            )
        if slow_start_rate and not slow_start:
            raise JustProxiesConfigError(
                f"{reader.where(rate_name)} is {slow_start_rate}, but slow start "
                "is off (JUSTPROXIES_THROTTLE_SLOW_START = 0): the rate-first start "
                "is a way of slow-starting. Set JUSTPROXIES_THROTTLE_SLOW_START "
                f"above 0 (default 4), or remove {rate_name}."
            )
        return cls(
            state_file=state_file,
            max_age=max_age,
            slow_start=slow_start,
            slow_start_until=slow_start_until,
            slow_start_rate=slow_start_rate,
        )


# -- shared state: one budget per site for many crawl processes (issue 11) ----

SHARED_STATE_SCHEMES: Final = ("redis", "rediss")


@dataclass(frozen=True)
class SharedStateConfig:
    """Where the budgets shared by several crawl processes live (Redis).

    ``url`` is None when ``JUSTPROXIES_SHARED_STATE`` is unset: every process
    keeps its own budgets, as without this feature.
    """

    url: str | None = None
    """The URL without its password (safe to log)."""
    host: str = ""
    port: int = 6379
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: Secret = field(default=Secret(""), repr=False)
    tls: bool = False
    required: bool = True
    """Unreachable at start: a start-up error (True) or a warning (False)."""
    prefix: str = "justproxies"
    """Prefix of every Redis key, so separate fleets can share one Redis."""

    @property
    def enabled(self) -> bool:
        return self.url is not None

    @classmethod
    def from_settings(
        cls, settings: BaseSettings, environ: Mapping[str, str]
    ) -> SharedStateConfig:
        reader = _Reader(settings, environ)
        name = "JUSTPROXIES_SHARED_STATE"
        value = reader.raw(name)
        required = reader.bool("JUSTPROXIES_SHARED_STATE_REQUIRED", default=True)
        prefix = reader.text("JUSTPROXIES_SHARED_STATE_PREFIX") or "justproxies"
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", prefix):
            raise JustProxiesConfigError(
                f"{reader.where('JUSTPROXIES_SHARED_STATE_PREFIX')} must be 1-64 "
                "letters, digits or _.:- characters, e.g. 'justproxies'."
            )
        if value is None or (isinstance(value, str) and not value.strip()):
            return cls(required=required, prefix=prefix)
        fix = (
            "Set it to redis://[:password@]host:port/db (rediss:// for TLS), "
            "or leave it unset to keep each process's budgets to itself."
        )
        if not isinstance(value, str):
            raise JustProxiesConfigError(f"{reader.where(name)} must be a URL. {fix}")
        try:
            parts = urlsplit(value.strip())
            port = parts.port
        except ValueError:
            raise JustProxiesConfigError(
                f"{reader.where(name)} is not a valid URL. {fix}"
            ) from None
        if parts.scheme not in SHARED_STATE_SCHEMES or not parts.hostname:
            raise JustProxiesConfigError(
                f"{reader.where(name)} must be a redis:// or rediss:// URL with a "
                f"host. {fix}"
            )
        if port == 0:
            raise JustProxiesConfigError(
                f"{reader.where(name)}: port 0 is not valid. {fix}"
            )
        port = port or 6379
        path = parts.path.strip("/")
        if path and not re.fullmatch(r"[0-9]{1,6}", path):
            raise JustProxiesConfigError(
                f"{reader.where(name)}: the database must be a number "
                f"(redis://host:6379/0), not {path!r}. {fix}"
            )
        if parts.query or parts.fragment:
            raise JustProxiesConfigError(
                f"{reader.where(name)} takes no query or fragment. {fix}"
            )
        password = unquote(parts.password or "")
        username = unquote(parts.username) if parts.username else None
        host = parts.hostname
        shown_host = f"[{host}]" if ":" in host else host
        # A username alone is shown masked too: redis://secret@host is a
        # password written without its ":" more often than a user name.
        user_part = ":***@" if password else ""
        if username:
            user_part = f"{username}:***@" if password else "***@"
        safe_url = f"{parts.scheme}://{user_part}{shown_host}:{port}/{int(path or 0)}"
        return cls(
            url=safe_url,
            host=host,
            port=port,
            db=int(path or 0),
            username=username,
            password=Secret(password),
            tls=parts.scheme == "rediss",
            required=required,
            prefix=prefix,
        )
