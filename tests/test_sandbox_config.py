"""Sandbox configuration: defaults, JSON round trip and clear validation errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scrapy_justproxies.sandbox import (
    ConfigError,
    GatewayConfig,
    HostPolicy,
    SandboxConfig,
)


def test_defaults() -> None:
    config = SandboxConfig()
    assert config.gateway.users == {"demo": "demo-secret"}
    assert config.gateway.exit_ip_count == 200
    assert config.default_site.rate is None
    assert config.default_site.burst == 10
    assert config.default_site.pages == 1000
    assert config.policy_for("anything.test") is config.default_site


def test_round_trip_through_json() -> None:
    config = SandboxConfig(
        gateway=GatewayConfig(users={"u": "p"}, hop_latency_ms=5, fail_502=0.1),
        sites={
            "A.Test": HostPolicy(
                rate=2,
                burst=3,
                inflight_cap=4,
                limit_key="exit_ip",
                latency_p50_ms=10,
                latency_p95_ms=40,
                retry_after="http-date",
                schedule=[(0, 5), (10, None)],  # type: ignore[arg-type]
                pages=7,
                seed=9,
            )
        },
        default_site=HostPolicy(rate=None),
    )
    again = SandboxConfig.from_json(json.dumps(config.to_dict()))
    assert again == config
    assert again.sites["a.test"].schedule == ((0.0, 5.0), (10.0, None))
    assert again.policy_for("a.test:8080") is again.sites["a.test"]


def test_load_file(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"sites": {"b.test": {"rate": 1}}}))
    assert SandboxConfig.load(path).sites["b.test"].rate == 1.0
    with pytest.raises(ConfigError, match="cannot read"):
        SandboxConfig.load(tmp_path / "missing.json")


def test_p95_defaults_to_p50() -> None:
    assert HostPolicy(latency_p50_ms=30).latency_p95_ms == 30


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"gateway": {"fail_502": 1.5}}, "gateway.fail_502: must be a probability"),
        ({"gateway": {"fail_502": 0.6, "fail_503": 0.6}}, "must not exceed 1"),
        ({"gateway": {"exit_ip_count": 0}}, "gateway.exit_ip_count: must be >= 1"),
        ({"gateway": {"exit_ip_count": 255}}, "must be <= 254"),
        ({"gateway": {"hop_latency_ms": -1}}, "gateway.hop_latency_ms"),
        ({"gateway": {"users": {"a:b": "x"}}}, "without ':'"),
        ({"gateway": {"users": {"x-session-y": "p"}}}, "ambiguous"),
        ({"gateway": {"users": {"x": 1}}}, "password must be a string"),
        ({"gateway": {"fail502": 0.1}}, "unknown field 'fail502'"),
        ({"gateway": {"seed": 1.5}}, "gateway.seed: expected an integer"),
        ({"sites": {"a.test": {"rate": -1}}}, "sites['a.test'].rate: must be >= 0"),
        ({"sites": {"a.test": {"rate": "fast"}}}, "expected a number"),
        ({"sites": {"a.test": {"rate": True}}}, "expected a number"),
        ({"sites": {"a.test": {"burst": 0.5}}}, "burst: must be >= 1"),
        ({"sites": {"a.test": {"inflight_cap": 0}}}, "inflight_cap: must be >= 1"),
        ({"sites": {"a.test": {"limit_key": "ip"}}}, "limit_key: must be one of"),
        ({"sites": {"a.test": {"retry_after": "x"}}}, "retry_after: must be one of"),
        ({"sites": {"a.test": {"pages": 0}}}, "pages: must be >= 1"),
        ({"sites": {"a.test": {"latency_p95_ms": 5}}}, "latency_p50_ms: must be > 0"),
        (
            {"sites": {"a.test": {"latency_p50_ms": 50, "latency_p95_ms": 10}}},
            "latency_p95_ms: must be >= latency_p50_ms",
        ),
        ({"sites": {"a.test": {"schedule": [[1, 2], [1, 3]]}}}, "strictly increasing"),
        ({"sites": {"a.test": {"schedule": [[1]]}}}, "schedule[0]: expected a"),
        ({"sites": {"a.test": {"schedule": "soon"}}}, "schedule: expected a list"),
        ({"sites": {"a.test": {"schedule": [[-1, 2]]}}}, "schedule[0][0]"),
        ({"sites": {"a.test": {"schedule": [[1, -2]]}}}, "schedule[0][1]"),
        ({"sites": {"a.test": 5}}, "sites['a.test']: expected a JSON object"),
        ({"sites": []}, "sites: expected a JSON object"),
        ({"default_site": {"rate": float("nan")}}, "default_site.rate: must be finite"),
        ({"sitez": {}}, "config: unknown field 'sitez'"),
        ([], "config: expected a JSON object"),
    ],
)
def test_validation_errors(data: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        SandboxConfig.from_dict(data)
    assert message in str(info.value)


def test_invalid_json() -> None:
    with pytest.raises(ConfigError, match="not valid JSON"):
        SandboxConfig.from_json("{")


def test_with_users_merges() -> None:
    config = SandboxConfig(gateway=GatewayConfig(users={"a": "1"}))
    merged = config.with_users({"b": "2"})
    assert merged.gateway.users == {"a": "1", "b": "2"}
    assert config.gateway.users == {"a": "1"}
