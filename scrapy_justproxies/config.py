"""The one place that reads and validates the plugin's settings.

Every ``JUSTPROXIES_*`` value is resolved here with the documented
precedence -- ``scrapy crawl -s`` > environment > settings.py (or a spider's
``custom_settings``) > pool preset -- and checked before any request is sent.
A bad value raises :class:`JustProxiesConfigError` naming the setting and the
fix; the message never contains the password.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, urlsplit

from scrapy.settings import SETTINGS_PRIORITIES, BaseSettings

from .presets import PRESETS, PoolPreset

DEFAULT_GATEWAY_PORT: Final = 8080
DEFAULT_USERNAME_TEMPLATE: Final = "{user}[-country-{country}][-session-{session}]"
TEMPLATE_FIELDS: Final = frozenset({"user", "country", "session"})
_CMDLINE_PRIORITY: Final = SETTINGS_PRIORITIES["cmdline"]
_COUNTRY_RE: Final = re.compile(r"[A-Za-z]{2}")
_SESSION_RE: Final = re.compile(r"[A-Za-z0-9_]{1,64}")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})


class JustProxiesConfigError(ValueError):
    """A ``JUSTPROXIES_*`` setting is missing, malformed or impossible."""


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
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    """Where each JUSTPROXIES_* value came from (for the start-up log)."""

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
        user, password = reader.user(), reader.password()
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
            gateway=reader.gateway(),
            user=user,
            password=password,
            pool=pool,
            username_template=template,
            country=reader.country(),
            override_template_throttle=reader.bool(
                "JUSTPROXIES_OVERRIDE_TEMPLATE_THROTTLE", default=True
            ),
            sources=reader.sources,
        )

    def username(
        self, *, country: str | None = None, session: str | None = None
    ) -> str:
        """The gateway username with provider parameters for one request."""
        country = country if country is not None else self.country
        session = str(session) if session is not None else None
        if country is not None and not _COUNTRY_RE.fullmatch(country):
            raise ValueError(f"country {country!r} is not a two-letter code")
        if session is not None and not _SESSION_RE.fullmatch(session):
            raise ValueError(
                "session id must be 1-64 characters of letters, digits or _"
            )
        return self.username_template.render(
            self.user, country.lower() if country else None, session
        )

    def proxy_url(
        self, *, country: str | None = None, session: str | None = None
    ) -> str:
        """``http://user:password@host:port`` for ``request.meta['proxy']``.

        Percent-quoted, because Scrapy's HttpProxyMiddleware unquotes both
        parts before building ``Proxy-Authorization``.
        """
        assert self.gateway is not None
        user = quote(self.username(country=country, session=session), safe="")
        password = quote(self.password.reveal(), safe="")
        scheme, netloc = self.gateway.url.split("://", 1)
        return f"{scheme}://{user}:{password}@{netloc}"


class _Reader:
    """Resolves one ``JUSTPROXIES_*`` value at a time, remembering sources."""

    def __init__(self, settings: BaseSettings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self.environ = environ
        self.sources: dict[str, str] = {}

    def raw(self, name: str) -> Any:
        priority = self.settings.getpriority(name)
        if priority is not None and priority >= _CMDLINE_PRIORITY:
            source, value = "command line", self.settings.get(name)
        elif name in self.environ:
            source, value = "environment", self.environ[name]
        elif priority is not None and self.settings.get(name) is not None:
            source, value = "settings", self.settings.get(name)
        else:
            return None
        self.sources[name] = source
        return value

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
        try:
            number = kind(value)
        except (TypeError, ValueError):
            noun = "a whole number" if kind is int else "a number"
            raise JustProxiesConfigError(
                f"{self.where(name)} must be {noun}, not {value!r}."
            ) from None
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

    def gateway(self) -> Gateway:
        name = "JUSTPROXIES_GATEWAY"
        value = self.text(name)
        if value is None:
            raise JustProxiesConfigError(
                f"{name} is not set. Set it to your gateway's host:port, e.g. "
                f"export {name}=gw.example.net:8080 (port {DEFAULT_GATEWAY_PORT} "
                "when omitted), or set JUSTPROXIES_ENABLED=false to crawl "
                "without the gateway."
            )
        # Never echo a value that may carry credentials.
        shown = "the value" if "@" in value else repr(value)
        fix = "Use host:port or http://host:port"
        if "@" in value:
            raise JustProxiesConfigError(
                f"{self.where(name)} contains credentials. {fix} and put the "
                "credentials in JUSTPROXIES_USER and JUSTPROXIES_PASSWORD."
            )
        parsed = urlsplit(value if "://" in value else f"http://{value}")
        try:
            port = parsed.port
        except ValueError:
            raise JustProxiesConfigError(
                f"{self.where(name)}: {shown} has an invalid port. {fix}."
            ) from None
        if parsed.scheme != "http":
            raise JustProxiesConfigError(
                f"{self.where(name)}: {shown} uses scheme {parsed.scheme!r}; the "
                f"gateway speaks plain http (https targets go through CONNECT). {fix}."
            )
        if not parsed.hostname or parsed.path not in ("", "/") or parsed.query:
            raise JustProxiesConfigError(
                f"{self.where(name)}: {shown} is malformed. {fix}."
            )
        if port == 0:
            raise JustProxiesConfigError(
                f"{self.where(name)}: port 0 is not valid. {fix}."
            )
        return Gateway(parsed.hostname, port or DEFAULT_GATEWAY_PORT)

    def user(self) -> str:
        name = "JUSTPROXIES_USER"
        value = self.text(name)
        if value is None:
            raise JustProxiesConfigError(
                f"{name} is not set. Export your JustProxies username "
                f"(export {name}=...) or set it in settings.py."
            )
        if ":" in value or _CONTROL_RE.search(value) or " " in value:
            raise JustProxiesConfigError(
                f"{self.where(name)} must not contain ':', spaces or control "
                "characters (HTTP Basic auth cannot carry them)."
            )
        return value

    def password(self) -> Secret:
        name = "JUSTPROXIES_PASSWORD"
        value = self.raw(name)
        if value is None or (isinstance(value, str) and not value):
            raise JustProxiesConfigError(
                f"{name} is not set. Export it (export {name}=...) rather than "
                "writing it in settings.py, so it stays out of version control."
            )
        if not isinstance(value, str):
            raise JustProxiesConfigError(f"{self.where(name)} must be a string.")
        if _CONTROL_RE.search(value):
            raise JustProxiesConfigError(
                f"{self.where(name)} contains control characters (a stray newline?)."
            )
        return Secret(value)

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


@dataclass(frozen=True)
class Effective:
    """One Scrapy setting's value for this crawl and where it came from."""

    value: Any
    source: str


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
    ``JUSTPROXIES_OVERRIDE_TEMPLATE_THROTTLE`` is on.
    """
    preset_values = config.pool.scrapy_settings() if config.pool else {}
    template = (
        config.pool is not None
        and config.override_template_throttle
        and has_startproject_throttle(settings)
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
                preset_values[name], _SOURCE_BY_PRIORITY[TEMPLATE_OVERRIDE_PRIORITY]
            )
        elif priority > _ADDON_PRIORITY or (
            priority == _ADDON_PRIORITY and current != preset_values[name]
        ):
            result[name] = Effective(
                current, _SOURCE_BY_PRIORITY.get(priority, "settings")
            )
        else:
            result[name] = Effective(preset_values[name], "pool preset")
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
            try:
                value = kind(raw)
            except (TypeError, ValueError):
                raise JustProxiesConfigError(
                    f"{name} (from {values[name].source}) must be a number, "
                    f"not {raw!r}."
                ) from None
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
            try:
                domain_max = int(raw_max)
            except (TypeError, ValueError):
                raise JustProxiesConfigError(
                    f"{reader.where(max_name)} must be a whole number, not {raw_max!r}."
                ) from None
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
    stats_domains: int = 20
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
                minimum=0.0,
                maximum=300.0,
            ),
            retry_after_mode=reader.choice(
                "JUSTPROXIES_RETRY_AFTER_MODE", RETRY_AFTER_MODES, "request"
            ),
            group_www=reader.bool("JUSTPROXIES_GROUP_WWW", default=True),
            slot_groups=_slot_groups(reader.mapping("JUSTPROXIES_SLOT_GROUPS")),
            stats_domains=reader.number(
                "JUSTPROXIES_STATS_DOMAINS", int, default=20, minimum=0, maximum=1000
            ),
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
            or not all(isinstance(h, str) for h in hosts)
        ):
            raise JustProxiesConfigError(
                f"JUSTPROXIES_SLOT_GROUPS[{group!r}] must be a list of hostnames, "
                'e.g. {"example.com": ["cdn.example.net", "img.example.com"]}.'
            )
        for host in [group, *hosts]:
            groups[host.lower()] = group.lower()
    return groups
