"""Sandbox configuration: frozen dataclasses, validated on construction.

The same shape is used by ``--config FILE.json``, ``POST /config`` and the
in-process :class:`~scrapy_justproxies.sandbox.server.Sandbox`::

    {
      "gateway": {"users": {"demo": "demo-secret"}, "hop_latency_ms": 0, ...},
      "sites": {"a.test": {"rate": 5, "burst": 5, ...}},
      "default_site": {"rate": null, ...}
    }
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, cast

from .policy import MAX_EXIT_IPS, is_exit_ip, parse_proxy_username

LimitKey = Literal["host", "exit_ip"]
RetryAfterMode = Literal["seconds", "http-date", "none"]
ScheduleEntry = tuple[float, float | None]

LIMIT_KEYS: tuple[str, ...] = ("host", "exit_ip")
RETRY_AFTER_MODES: tuple[str, ...] = ("seconds", "http-date", "none")
LIMITERS: tuple[str, ...] = ("token_bucket", "fixed_window", "sliding_window", "gcra")
LatencyEntry = tuple[float, float, float]
DEFAULT_USER = "demo"
DEFAULT_PASSWORD = "demo-secret"  # noqa: S105 - a documented sandbox credential
MAX_PAGES = 1_000_000


class ConfigError(ValueError):
    """An invalid sandbox configuration; the message names the offending field."""


def _default_users() -> dict[str, str]:
    return {DEFAULT_USER: DEFAULT_PASSWORD}


# -- field checks --------------------------------------------------------------
# Each returns the normalised value or raises ConfigError("<field>: <problem>").


def _number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    # bool is an int subclass; JSON true must not silently become 1.0.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{name}: must be finite, got {value!r}")
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name}: must be >= {minimum:g}, got {value!r}")
    if maximum is not None and number > maximum:
        raise ConfigError(f"{name}: must be <= {maximum:g}, got {value!r}")
    return number


def _integer(
    name: str,
    value: object,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}: must be >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}: must be <= {maximum}, got {value!r}")
    return value


def _probability(name: str, value: object) -> float:
    try:
        return _number(name, value, minimum=0.0, maximum=1.0)
    except ConfigError:
        raise ConfigError(
            f"{name}: must be a probability between 0 and 1, got {value!r}"
        ) from None


def _choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{name}: must be one of {allowed}, got {value!r}")
    return value


def _set(obj: object, name: str, value: object) -> None:
    # Normalising inside __post_init__ of a frozen dataclass.
    object.__setattr__(obj, name, value)


def _check_keys(path: str, data: Mapping[str, Any], cls: type) -> None:
    known = [f.name for f in fields(cls)]
    for key in data:
        if key not in known:
            raise ConfigError(
                f"{path}: unknown field {key!r} (known: {', '.join(known)})"
            )


def _as_mapping(path: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a JSON object, got {value!r}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: keys must be strings, got {key!r}")
    return cast(Mapping[str, Any], value)


def _prefixed(path: str, error: ConfigError) -> ConfigError:
    return ConfigError(f"{path}.{error}")


# -- gateway -------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayConfig:
    """The forward proxy: credentials, per-hop latency and injected failures."""

    users: dict[str, str] = field(default_factory=_default_users)
    hop_latency_ms: float = 0.0
    exit_ip_count: int = 200
    fail_502: float = 0.0
    fail_503: float = 0.0
    drop: float = 0.0
    seed: int = 0
    static_sessions: dict[str, int] = field(default_factory=dict)
    """Session id -> exit IP number (1-254, i.e. 127.0.1.N): a static pool's
    sessions, each always leaving by the same IP, whatever the rotation."""

    def __post_init__(self) -> None:
        if not isinstance(self.static_sessions, Mapping):
            raise ConfigError(
                f"static_sessions: expected an object, got {self.static_sessions!r}"
            )
        static: dict[str, int] = {}
        for session, index in self.static_sessions.items():
            parsed = parse_proxy_username(f"u-session-{session}")
            if (
                not isinstance(session, str)
                or parsed is None
                or parsed.session != session
            ):
                raise ConfigError(
                    f"static_sessions: session ids are 1-64 letters, digits or _,"
                    f" got {session!r}"
                )
            static[session] = _integer(
                f"static_sessions[{session!r}]", index, minimum=1, maximum=MAX_EXIT_IPS
            )
        _set(self, "static_sessions", static)
        if not isinstance(self.users, Mapping):
            raise ConfigError(f"users: expected an object, got {self.users!r}")
        users: dict[str, str] = {}
        for user, password in self.users.items():
            if not isinstance(user, str) or not user or ":" in user:
                raise ConfigError(
                    f"users: user names must be non-empty strings without ':',"
                    f" got {user!r}"
                )
            if not isinstance(password, str):
                raise ConfigError(f"users[{user!r}]: password must be a string")
            parsed = parse_proxy_username(user)
            # A base name that itself looks like USER-country-CC or
            # USER-session-ID could never authenticate: refuse it up front.
            if parsed is None or parsed.base != user:
                raise ConfigError(
                    f"users: {user!r} ends in a -country-/-session- parameter,"
                    " which is ambiguous"
                )
            users[user] = password
        _set(self, "users", users)
        _set(
            self,
            "hop_latency_ms",
            _number(
                "hop_latency_ms", self.hop_latency_ms, minimum=0.0, maximum=60_000.0
            ),
        )
        _set(
            self,
            "exit_ip_count",
            _integer(
                "exit_ip_count", self.exit_ip_count, minimum=1, maximum=MAX_EXIT_IPS
            ),
        )
        for name in ("fail_502", "fail_503", "drop"):
            _set(self, name, _probability(name, getattr(self, name)))
        if self.fail_502 + self.fail_503 + self.drop > 1.0 + 1e-9:
            raise ConfigError(
                "fail_502 + fail_503 + drop: must not exceed 1, got"
                f" {self.fail_502 + self.fail_503 + self.drop:g}"
            )
        _set(self, "seed", _integer("seed", self.seed))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str = "gateway") -> GatewayConfig:
        data = _as_mapping(path, data)
        _check_keys(path, data, cls)
        try:
            return cls(**data)
        except ConfigError as error:
            raise _prefixed(path, error) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "users": dict(self.users),
            "hop_latency_ms": self.hop_latency_ms,
            "exit_ip_count": self.exit_ip_count,
            "fail_502": self.fail_502,
            "fail_503": self.fail_503,
            "drop": self.drop,
            "seed": self.seed,
            "static_sessions": dict(self.static_sessions),
        }


# -- site host policy ----------------------------------------------------------


def _schedule(value: object) -> tuple[ScheduleEntry, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ConfigError(
            f"schedule: expected a list of [seconds, rate] pairs, got {value!r}"
        )
    entries: list[ScheduleEntry] = []
    previous = -math.inf
    for index, entry in enumerate(value):
        name = f"schedule[{index}]"
        if (
            isinstance(entry, str | bytes)
            or not isinstance(entry, Sequence)
            or len(entry) != 2
        ):
            raise ConfigError(f"{name}: expected a [seconds, rate] pair, got {entry!r}")
        at = _number(f"{name}[0]", entry[0], minimum=0.0)
        rate = (
            None if entry[1] is None else _number(f"{name}[1]", entry[1], minimum=0.0)
        )
        if at <= previous:
            raise ConfigError(f"{name}: times must be strictly increasing, got {at:g}")
        previous = at
        entries.append((at, rate))
    return tuple(entries)


def _latency_schedule(value: object) -> tuple[LatencyEntry, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ConfigError(
            "latency_schedule: expected a list of [seconds, p50_ms, p95_ms], "
            f"got {value!r}"
        )
    entries: list[LatencyEntry] = []
    previous = -math.inf
    for index, entry in enumerate(value):
        name = f"latency_schedule[{index}]"
        if (
            isinstance(entry, str | bytes)
            or not isinstance(entry, Sequence)
            or len(entry) != 3
        ):
            raise ConfigError(
                f"{name}: expected [seconds, p50_ms, p95_ms], got {entry!r}"
            )
        at = _number(f"{name}[0]", entry[0], minimum=0.0)
        p50 = _number(f"{name}[1]", entry[1], minimum=0.0, maximum=60_000.0)
        p95 = _number(f"{name}[2]", entry[2], minimum=p50, maximum=60_000.0)
        if at <= previous:
            raise ConfigError(f"{name}: times must be strictly increasing, got {at:g}")
        previous = at
        entries.append((at, p50, p95))
    return tuple(entries)


@dataclass(frozen=True)
class HostPolicy:
    """How one virtual host of the target site admits and answers requests.

    ``rate`` is a token bucket in requests/second (``None`` = unlimited) with
    ``burst`` tokens; ``schedule`` entries ``(t, rate)`` replace the rate ``t``
    seconds after the counters' start/reset.  ``limiter`` picks how the rate
    is enforced: ``"token_bucket"`` (the default), ``"fixed_window"``
    (``rate * window_seconds`` requests per fixed window, ``Retry-After`` =
    the time to the window's end), ``"sliding_window"`` (at most ``rate *
    window_seconds`` requests in any ``window_seconds``: a sliding log;
    ``Retry-After`` = the time until the oldest leaves the window) or
    ``"gcra"`` (a leaky bucket as a meter, ``burst`` requests ahead of
    schedule at most).  Latency is lognormal with
    the given median and 95th percentile; ``latency_schedule`` entries
    ``(t, p50_ms, p95_ms)`` replace them ``t`` seconds after the start/reset.
    """

    rate: float | None = None
    burst: float = 10.0
    inflight_cap: int | None = None
    limit_key: LimitKey = "host"
    latency_p50_ms: float = 0.0
    latency_p95_ms: float = 0.0
    retry_after: RetryAfterMode = "seconds"
    retry_after_seconds: int | None = None
    """A fixed Retry-After instead of the time until a token is there; may be
    0, or negative for an HTTP-date already past (a site whose clock is
    behind)."""
    schedule: tuple[ScheduleEntry, ...] = ()
    pages: int = 1000
    seed: int = 0
    limiter: str = "token_bucket"
    window_seconds: float = 20.0
    latency_schedule: tuple[LatencyEntry, ...] = ()
    exit_rates: dict[str, float | None] = field(default_factory=dict)
    """Exit IP -> its own rate (``limit_key`` ``"exit_ip"`` only): a site
    that allows some IPs more than others. Other exits get ``rate``."""

    def __post_init__(self) -> None:
        if not isinstance(self.exit_rates, Mapping):
            raise ConfigError(
                f"exit_rates: expected an object, got {self.exit_rates!r}"
            )
        exit_rates: dict[str, float | None] = {}
        for address, rate in self.exit_rates.items():
            if not isinstance(address, str) or not is_exit_ip(address):
                raise ConfigError(
                    f"exit_rates: keys are exit IPs 127.0.1.N, got {address!r}"
                )
            exit_rates[address] = (
                None
                if rate is None
                else _number(f"exit_rates[{address!r}]", rate, minimum=0.0)
            )
        _set(self, "exit_rates", exit_rates)
        if exit_rates and self.limit_key != "exit_ip":
            raise ConfigError('exit_rates: needs limit_key "exit_ip"')
        _set(self, "limiter", _choice("limiter", self.limiter, LIMITERS))
        _set(
            self,
            "window_seconds",
            _number("window_seconds", self.window_seconds, minimum=0.001),
        )
        _set(self, "latency_schedule", _latency_schedule(self.latency_schedule))
        if self.rate is not None:
            _set(self, "rate", _number("rate", self.rate, minimum=0.0))
        # burst < 1 would never hold a whole token, i.e. reject everything.
        _set(self, "burst", _number("burst", self.burst, minimum=1.0))
        if self.inflight_cap is not None:
            _set(
                self,
                "inflight_cap",
                _integer("inflight_cap", self.inflight_cap, minimum=1),
            )
        _set(self, "limit_key", _choice("limit_key", self.limit_key, LIMIT_KEYS))
        p50 = _number(
            "latency_p50_ms", self.latency_p50_ms, minimum=0.0, maximum=60_000.0
        )
        p95 = _number(
            "latency_p95_ms", self.latency_p95_ms, minimum=0.0, maximum=60_000.0
        )
        if p50 == 0.0 and p95 > 0.0:
            raise ConfigError(
                "latency_p50_ms: must be > 0 when latency_p95_ms is set"
                " (a lognormal needs a positive median)"
            )
        if p95 < p50 and p95 != 0.0:
            raise ConfigError(
                f"latency_p95_ms: must be >= latency_p50_ms ({p50:g}), got {p95:g}"
            )
        _set(self, "latency_p50_ms", p50)
        # p95 omitted (0) with a median means constant latency.
        _set(self, "latency_p95_ms", p95 if p95 else p50)
        _set(
            self,
            "retry_after",
            _choice("retry_after", self.retry_after, RETRY_AFTER_MODES),
        )
        if self.retry_after_seconds is not None:
            _set(
                self,
                "retry_after_seconds",
                _integer(
                    "retry_after_seconds",
                    self.retry_after_seconds,
                    minimum=-86_400,
                    maximum=86_400,
                ),
            )
        _set(self, "schedule", _schedule(self.schedule))
        _set(self, "pages", _integer("pages", self.pages, minimum=1, maximum=MAX_PAGES))
        _set(self, "seed", _integer("seed", self.seed))

    def latency_at(self, t: float) -> tuple[float, float]:
        """``(p50_ms, p95_ms)`` in force at schedule time ``t``."""
        p50, p95 = self.latency_p50_ms, self.latency_p95_ms
        for at, p50_ms, p95_ms in self.latency_schedule:
            if at > t:
                break
            p50, p95 = p50_ms, p95_ms
        return p50, p95

    @property
    def unlimited(self) -> bool:
        """True when no token bucket is needed at all."""
        return (
            self.rate is None
            and all(rate is None for _, rate in self.schedule)
            and all(rate is None for rate in self.exit_rates.values())
        )

    def for_exit(self, address: str) -> HostPolicy:
        """The policy one exit IP meets: its own rate from ``exit_rates``."""
        if address not in self.exit_rates:
            return self
        return replace(self, rate=self.exit_rates[address], schedule=(), exit_rates={})

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], path: str = "default_site"
    ) -> HostPolicy:
        data = _as_mapping(path, data)
        _check_keys(path, data, cls)
        try:
            return cls(**data)
        except ConfigError as error:
            raise _prefixed(path, error) from None
        except TypeError as error:  # e.g. schedule given as a non-list
            raise ConfigError(f"{path}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "burst": self.burst,
            "inflight_cap": self.inflight_cap,
            "limit_key": self.limit_key,
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p95_ms": self.latency_p95_ms,
            "retry_after": self.retry_after,
            "retry_after_seconds": self.retry_after_seconds,
            "schedule": [[at, rate] for at, rate in self.schedule],
            "pages": self.pages,
            "seed": self.seed,
            "limiter": self.limiter,
            "window_seconds": self.window_seconds,
            "latency_schedule": [list(entry) for entry in self.latency_schedule],
            "exit_rates": dict(self.exit_rates),
        }


# -- whole sandbox -------------------------------------------------------------


def normalize_host(host: str) -> str:
    """Lower-case, without a trailing dot or port: the key used for ``sites``."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("["):  # [v6]:port
        return host.split("]", 1)[0] + "]"
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host


@dataclass(frozen=True)
class SandboxConfig:
    """Everything the sandbox does; replaceable live through ``POST /config``."""

    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    sites: dict[str, HostPolicy] = field(default_factory=dict)
    default_site: HostPolicy = field(default_factory=HostPolicy)

    def __post_init__(self) -> None:
        if not isinstance(self.gateway, GatewayConfig):
            raise ConfigError("gateway: expected a GatewayConfig")
        if not isinstance(self.default_site, HostPolicy):
            raise ConfigError("default_site: expected a HostPolicy")
        if not isinstance(self.sites, Mapping):
            raise ConfigError("sites: expected an object of host -> policy")
        sites: dict[str, HostPolicy] = {}
        for host, policy in self.sites.items():
            if not isinstance(host, str) or not normalize_host(host):
                raise ConfigError(f"sites: host names must be non-empty, got {host!r}")
            if not isinstance(policy, HostPolicy):
                raise ConfigError(f"sites[{host!r}]: expected a HostPolicy")
            sites[normalize_host(host)] = policy
        _set(self, "sites", sites)

    def policy_for(self, host: str) -> HostPolicy:
        return self.sites.get(normalize_host(host), self.default_site)

    def with_users(self, users: Mapping[str, str]) -> SandboxConfig:
        """A copy whose gateway also accepts ``users`` (they win on conflict)."""
        if not users:
            return self
        merged = {**self.gateway.users, **users}
        return replace(self, gateway=replace(self.gateway, users=merged))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SandboxConfig:
        data = _as_mapping("config", data)
        _check_keys("config", data, cls)
        gateway = GatewayConfig.from_dict(data.get("gateway", {}), "gateway")
        raw_sites = _as_mapping("sites", data.get("sites", {}))
        sites = {
            host: HostPolicy.from_dict(policy, f"sites[{host!r}]")
            for host, policy in raw_sites.items()
        }
        default_site = HostPolicy.from_dict(
            data.get("default_site", {}), "default_site"
        )
        return cls(gateway=gateway, sites=sites, default_site=default_site)

    @classmethod
    def from_json(cls, text: str | bytes) -> SandboxConfig:
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ConfigError(f"config: not valid JSON: {error}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> SandboxConfig:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"config: cannot read {path}: {error}") from None
        return cls.from_json(text)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gateway": self.gateway.to_dict(),
            "sites": {host: policy.to_dict() for host, policy in self.sites.items()},
            "default_site": self.default_site.to_dict(),
        }
