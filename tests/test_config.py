"""Settings resolution and validation: pure, no crawl."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler
from scrapy.settings import Settings

from scrapy_justproxies.config import (
    Concurrency,
    Config,
    JustProxiesConfigError,
    LearningConfig,
    Secret,
    ThrottleConfig,
    UsernameTemplate,
    check_download_handlers,
    effective_settings,
    in_force,
)
from scrapy_justproxies.presets import PRESETS

PASSWORD = "s3cr3t:p@ss/word"
GOOD = {
    "JUSTPROXIES_GATEWAY": "gw.example.net:8000",
    "JUSTPROXIES_USER": "alice",
    "JUSTPROXIES_PASSWORD": PASSWORD,
}


def settings(
    values: dict[str, object] | None = None, priority: str = "project"
) -> Settings:
    result = Settings()
    result.setdict(values or {}, priority=priority)
    return result


def test_reads_settings_py() -> None:
    config = Config.from_settings(settings(GOOD), {})
    assert config.enabled
    assert config.gateway is not None
    assert (config.gateway.host, config.gateway.port) == ("gw.example.net", 8000)
    assert config.user == "alice"
    assert config.password.reveal() == PASSWORD
    assert config.pool is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("gw.example.net", ("gw.example.net", 8080)),
        ("http://gw.example.net", ("gw.example.net", 8080)),
        ("http://gw.example.net:3128/", ("gw.example.net", 3128)),
        ("127.0.0.1:9", ("127.0.0.1", 9)),
    ],
)
def test_gateway_forms(value: str, expected: tuple[str, int]) -> None:
    config = Config.from_settings(settings({**GOOD, "JUSTPROXIES_GATEWAY": value}), {})
    assert config.gateway is not None
    assert (config.gateway.host, config.gateway.port) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("https://gw.example.net:8000", "scheme 'https'"),
        ("[::1]:8081", "IPv6"),
        ("http://[::1]:8081", "IPv6"),
        ("gw.example.net:notaport", "invalid port"),
        ("gw.example.net:70000", "invalid port"),
        ("gw.example.net:0", "port 0"),
        ("http://gw.example.net/path", "malformed"),
        ("http://:8000", "malformed"),
        ("socks5://gw.example.net:1080", "scheme 'socks5'"),
    ],
)
def test_malformed_gateway(value: str, message: str) -> None:
    with pytest.raises(JustProxiesConfigError, match="JUSTPROXIES_GATEWAY") as info:
        Config.from_settings(settings({**GOOD, "JUSTPROXIES_GATEWAY": value}), {})
    assert message in str(info.value)


def test_gateway_with_credentials_is_refused_without_echoing_them() -> None:
    value = f"http://alice:{PASSWORD}@gw.example.net:8000"
    with pytest.raises(JustProxiesConfigError, match="contains credentials") as info:
        Config.from_settings(settings({**GOOD, "JUSTPROXIES_GATEWAY": value}), {})
    assert PASSWORD not in str(info.value)
    assert "s3cr3t" not in str(info.value)


@pytest.mark.parametrize("missing", sorted(GOOD))
def test_missing_value_names_the_setting(missing: str) -> None:
    values = {k: v for k, v in GOOD.items() if k != missing}
    with pytest.raises(JustProxiesConfigError, match=missing) as info:
        Config.from_settings(settings(values), {})
    assert "export" in str(info.value) or "Set it" in str(info.value)


def test_disabled_needs_nothing_else() -> None:
    config = Config.from_settings(settings({"JUSTPROXIES_ENABLED": False}), {})
    assert not config.enabled


@pytest.mark.parametrize("value", ["bob:smith", "bob smith", "bob\nsmith"])
def test_bad_user(value: str) -> None:
    with pytest.raises(JustProxiesConfigError, match="JUSTPROXIES_USER"):
        Config.from_settings(settings({**GOOD, "JUSTPROXIES_USER": value}), {})


def test_password_with_newline_is_refused_without_echo() -> None:
    with pytest.raises(JustProxiesConfigError, match="JUSTPROXIES_PASSWORD") as info:
        Config.from_settings(settings({**GOOD, "JUSTPROXIES_PASSWORD": "abc\n"}), {})
    assert "abc" not in str(info.value)


def test_unknown_pool_lists_the_choices() -> None:
    with pytest.raises(JustProxiesConfigError) as info:
        Config.from_settings(settings({**GOOD}), {"JUSTPROXIES_POOL": "mobil"})
    text = str(info.value)
    assert "JUSTPROXIES_POOL (from the environment)" in text
    assert "'mobil'" in text
    for name in PRESETS:
        assert name in text


def test_pool_names_are_case_insensitive() -> None:
    config = Config.from_settings(settings({**GOOD, "JUSTPROXIES_POOL": "Mobile"}), {})
    assert config.pool is PRESETS["mobile"]


def test_precedence_cmdline_over_environment_over_settings() -> None:
    values = settings({**GOOD, "JUSTPROXIES_POOL": "datacenter"})
    # settings.py < environment
    config = Config.from_settings(values, {"JUSTPROXIES_POOL": "mobile"})
    assert config.pool is PRESETS["mobile"]
    assert config.sources["JUSTPROXIES_POOL"] == "environment"
    # environment < spider custom_settings? No: environment wins there too.
    values.set("JUSTPROXIES_POOL", "static", priority="spider")
    config = Config.from_settings(values, {"JUSTPROXIES_POOL": "mobile"})
    assert config.pool is PRESETS["mobile"]
    # -s on the command line beats the environment.
    values.set("JUSTPROXIES_POOL", "residential", priority="cmdline")
    config = Config.from_settings(values, {"JUSTPROXIES_POOL": "mobile"})
    assert config.pool is PRESETS["residential"]
    assert config.sources["JUSTPROXIES_POOL"] == "command line"


def test_credentials_from_environment_only() -> None:
    environ = {**GOOD, "JUSTPROXIES_ENABLED": "1"}
    config = Config.from_settings(settings(), environ)
    assert config.password.reveal() == PASSWORD
    assert config.sources["JUSTPROXIES_PASSWORD"] == "environment"


@pytest.mark.parametrize("text", ["maybe", "2"])
def test_bad_boolean(text: str) -> None:
    with pytest.raises(JustProxiesConfigError, match="JUSTPROXIES_ENABLED"):
        Config.from_settings(settings(GOOD), {"JUSTPROXIES_ENABLED": text})


def test_repr_and_str_never_show_the_password() -> None:
    config = Config.from_settings(settings(GOOD), {})
    for text in (
        repr(config),
        str(config),
        repr(config.password),
        f"{config.password}",
    ):
        assert PASSWORD not in text
        assert "s3cr3t" not in text
    with pytest.raises(TypeError):
        pickle.dumps(config.password)


def test_secret_equality() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"


def test_proxy_url_quotes_both_parts() -> None:
    config = Config.from_settings(settings(GOOD), {})
    url = config.proxy_url()
    assert url == "http://alice:s3cr3t%3Ap%40ss%2Fword@gw.example.net:8000"


@pytest.mark.parametrize(
    ("template", "country", "session", "expected"),
    [
        ("{user}[-country-{country}][-session-{session}]", None, None, "alice"),
        (
            "{user}[-country-{country}][-session-{session}]",
            "US",
            None,
            "alice-country-us",
        ),
        (
            "{user}[-country-{country}][-session-{session}]",
            None,
            "s1",
            "alice-session-s1",
        ),
        (
            "{user}[-country-{country}][-session-{session}]",
            "de",
            "x_2",
            "alice-country-de-session-x_2",
        ),
        (
            "customer-{user}[-cc-{country}][-sessid-{session}]",
            "fr",
            "9",
            "customer-alice-cc-fr-sessid-9",
        ),
        ("{user}", "fr", "9", "alice"),
    ],
)
def test_username_template(
    template: str, country: str | None, session: str | None, expected: str
) -> None:
    config = Config.from_settings(
        settings({**GOOD, "JUSTPROXIES_USERNAME_TEMPLATE": template}), {}
    )
    assert config.username(country=country, session=session) == expected


def test_default_country_and_override() -> None:
    config = Config.from_settings(settings({**GOOD, "JUSTPROXIES_COUNTRY": "GB"}), {})
    assert config.username() == "alice-country-gb"
    assert config.username(country="us") == "alice-country-us"


@pytest.mark.parametrize(
    "template",
    [
        "[-x-{country}]",
        "{user}[-c-{country}",
        "{user}]",
        "{user}-{zone}",
        "{user}[[-{country}]]",
        "{user}-{",
    ],
)
def test_bad_templates(template: str) -> None:
    with pytest.raises(JustProxiesConfigError, match="JUSTPROXIES_USERNAME_TEMPLATE"):
        Config.from_settings(
            settings({**GOOD, "JUSTPROXIES_USERNAME_TEMPLATE": template}), {}
        )


@pytest.mark.parametrize(
    ("country", "session"), [("usa", None), (None, "has space"), (None, "x" * 65)]
)
def test_bad_per_request_parameters(country: str | None, session: str | None) -> None:
    config = Config.from_settings(settings(GOOD), {})
    with pytest.raises(ValueError, match=r"country|session"):
        config.username(country=country, session=session)


def test_bad_default_country() -> None:
    with pytest.raises(JustProxiesConfigError, match="JUSTPROXIES_COUNTRY"):
        Config.from_settings(settings({**GOOD, "JUSTPROXIES_COUNTRY": "usa"}), {})


def test_template_parse_roundtrip() -> None:
    parsed = UsernameTemplate.parse("a-{user}[-c-{country}]z")
    assert parsed.segments == (
        (False, "a-{user}"),
        (True, "-c-{country}"),
        (False, "z"),
    )


# -- presets and the effective Scrapy settings --------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_applies_where_the_user_set_nothing(name: str) -> None:
    values = settings({**GOOD, "JUSTPROXIES_POOL": name})
    config = Config.from_settings(values, {})
    effective = effective_settings(values, config)
    preset = PRESETS[name]
    assert effective["CONCURRENT_REQUESTS"].value == preset.total_concurrency
    assert (
        effective["CONCURRENT_REQUESTS_PER_DOMAIN"].value
        == preset.domain_concurrency_start
    )
    assert effective["DOWNLOAD_TIMEOUT"].value == 20
    assert all(e.source == "pool preset" for e in effective.values())


def test_user_value_wins_over_preset() -> None:
    values = settings({**GOOD, "JUSTPROXIES_POOL": "mobile", "CONCURRENT_REQUESTS": 7})
    effective = effective_settings(values, Config.from_settings(values, {}))
    assert effective["CONCURRENT_REQUESTS"].value == 7
    assert effective["CONCURRENT_REQUESTS"].source == "settings.py"


def test_startproject_template_lines_are_replaced_and_labelled() -> None:
    values = settings(
        {
            **GOOD,
            "JUSTPROXIES_POOL": "mobile",
            "CONCURRENT_REQUESTS_PER_DOMAIN": 1,
            "DOWNLOAD_DELAY": 1,
        }
    )
    effective = effective_settings(values, Config.from_settings(values, {}))
    assert effective["CONCURRENT_REQUESTS_PER_DOMAIN"].value == 16
    assert effective["DOWNLOAD_DELAY"].value == 0
    assert "startproject" in effective["DOWNLOAD_DELAY"].source


def test_template_lines_kept_on_request_or_when_changed() -> None:
    base = {**GOOD, "JUSTPROXIES_POOL": "mobile", "DOWNLOAD_DELAY": 1}
    kept = settings(
        {
            **base,
            "CONCURRENT_REQUESTS_PER_DOMAIN": 1,
            "JUSTPROXIES_OVERRIDE_TEMPLATE_THROTTLE": False,
        }
    )
    effective = effective_settings(kept, Config.from_settings(kept, {}))
    assert effective["CONCURRENT_REQUESTS_PER_DOMAIN"].value == 1
    changed = settings({**base, "CONCURRENT_REQUESTS_PER_DOMAIN": 2})
    effective = effective_settings(changed, Config.from_settings(changed, {}))
    assert effective["CONCURRENT_REQUESTS_PER_DOMAIN"].value == 2
    assert effective["DOWNLOAD_DELAY"].value == 1


def test_concurrency_resolves_preset_numbers() -> None:
    values = settings({**GOOD, "JUSTPROXIES_POOL": "mobile"})
    numbers = Concurrency.resolve(values, Config.from_settings(values, {}), {})
    assert (numbers.total, numbers.domain_start, numbers.domain_max) == (50, 16, 50)
    assert numbers.retry_times == 1
    assert numbers.delay == 0


@pytest.mark.parametrize(
    ("values", "environ", "message"),
    [
        ({"CONCURRENT_REQUESTS": 0}, {}, "CONCURRENT_REQUESTS .* at least 1"),
        (
            {"CONCURRENT_REQUESTS": "many"},
            {},
            "CONCURRENT_REQUESTS .* must be a whole number",
        ),
        (
            {"CONCURRENT_REQUESTS_PER_DOMAIN": 60, "CONCURRENT_REQUESTS": 50},
            {},
            "CONCURRENT_REQUESTS_PER_DOMAIN \\(60",
        ),
        (
            {},
            {"JUSTPROXIES_DOMAIN_CONCURRENCY_MAX": "500"},
            "JUSTPROXIES_DOMAIN_CONCURRENCY_MAX .*between",
        ),
        ({}, {"JUSTPROXIES_DOMAIN_CONCURRENCY_MAX": "8"}, "between"),
        ({}, {"JUSTPROXIES_DOMAIN_CONCURRENCY_MAX": "lots"}, "whole number"),
        ({"DOWNLOAD_TIMEOUT": 0}, {}, "DOWNLOAD_TIMEOUT"),
        ({"RETRY_TIMES": -1}, {}, "RETRY_TIMES"),
    ],
)
def test_impossible_numbers(
    values: dict[str, object], environ: dict[str, str], message: str
) -> None:
    merged = settings({**GOOD, "JUSTPROXIES_POOL": "mobile", **values})
    with pytest.raises(JustProxiesConfigError, match=message):
        Concurrency.resolve(merged, Config.from_settings(merged, environ), environ)


# -- hostile inputs (issue 7, issue 8 section 5) -------------------------------

SECRET = "Zq9-secret-pw"


@pytest.mark.parametrize(
    "value",
    [
        f"gw.example.net:{SECRET}",
        f"alice:{SECRET}:gw.example.net:notaport",
        f"http://gw.example.net:8000/{SECRET}",
        f"{SECRET}://gw.example.net",
        f"gw.example.net:99999:alice:{SECRET}",
    ],
)
def test_gateway_errors_never_echo_the_value(value: str) -> None:
    with pytest.raises(JustProxiesConfigError, match="JUSTPROXIES_GATEWAY") as info:
        Config.from_settings(
            settings({"JUSTPROXIES_GATEWAY": value}), {"JUSTPROXIES_USER": "alice"}
        )
    assert SECRET not in str(info.value)
    assert "host:port" in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        f"gw.example.net:8000:alice:{SECRET}",
        f"alice:{SECRET}:gw.example.net:8000",
        f"gw.example.net:8000:alice:{SECRET}:with:colons",
    ],
    ids=["host:port:user:pass", "user:pass:host:port", "colons-in-password"],
)
def test_provider_list_formats_are_split_with_a_warning(value: str) -> None:
    config = Config.from_settings(settings(), {"JUSTPROXIES_GATEWAY": value})
    assert config.gateway is not None
    assert (config.gateway.host, config.gateway.port) == ("gw.example.net", 8000)
    assert config.user == "alice"
    assert config.password.reveal().startswith(SECRET)
    assert len(config.warnings) == 1
    assert "JUSTPROXIES_USER and JUSTPROXIES_PASSWORD" in config.warnings[0]
    assert SECRET not in config.warnings[0] and SECRET not in repr(config)


def test_list_format_credentials_conflicting_with_the_settings_are_refused() -> None:
    environ = {
        "JUSTPROXIES_GATEWAY": f"gw.example.net:8000:alice:{SECRET}",
        "JUSTPROXIES_PASSWORD": "another-password",
    }
    with pytest.raises(JustProxiesConfigError, match="differ") as info:
        Config.from_settings(settings(), environ)
    assert SECRET not in str(info.value)
    assert "another-password" not in str(info.value)
    same = {**environ, "JUSTPROXIES_PASSWORD": SECRET, "JUSTPROXIES_USER": "alice"}
    assert Config.from_settings(settings(), same).user == "alice"


@pytest.mark.parametrize("empty", ["", "  "])
def test_empty_environment_value_means_unset(empty: str) -> None:
    environ = {name: empty for name in ("JUSTPROXIES_ENABLED", "JUSTPROXIES_POOL")}
    config = Config.from_settings(settings(GOOD), environ)
    assert config.enabled
    assert config.pool is None
    spider = settings({**GOOD, "JUSTPROXIES_POOL": "datacenter"}, priority="spider")
    assert Config.from_settings(spider, environ).pool is PRESETS["datacenter"]
    disabled = settings({"JUSTPROXIES_ENABLED": False})
    assert not Config.from_settings(disabled, environ).enabled


@pytest.mark.parametrize("value", ["maybe", "2", "enabled", "nope"])
def test_enabled_must_be_a_clear_boolean(value: str) -> None:
    with pytest.raises(JustProxiesConfigError, match="JUSTPROXIES_ENABLED"):
        Config.from_settings(settings(GOOD), {"JUSTPROXIES_ENABLED": value})


@pytest.mark.parametrize("value", [2.7, True, False, "2.7", float("nan")])
def test_integer_settings_refuse_fractions_and_booleans(value: object) -> None:
    with pytest.raises(JustProxiesConfigError, match="JUSTPROXIES_RETRY_429_TIMES"):
        ThrottleConfig.from_settings(
            settings({"JUSTPROXIES_RETRY_429_TIMES": value}), {}
        )
    merged = settings({**GOOD, "CONCURRENT_REQUESTS": value})
    with pytest.raises(JustProxiesConfigError, match=r"CONCURRENT_REQUESTS .*whole"):
        Concurrency.resolve(merged, Config.from_settings(merged, {}), {})


def test_integral_floats_are_accepted_as_whole_numbers() -> None:
    throttle = ThrottleConfig.from_settings(
        settings({"JUSTPROXIES_RETRY_429_TIMES": 16.0}), {}
    )
    assert throttle.retry_429_times == 16
    merged = settings({**GOOD, "CONCURRENT_REQUESTS": 32.0})
    assert Concurrency.resolve(merged, Config.from_settings(merged, {}), {}).total == 32


@pytest.mark.parametrize("priority", ["project", "spider", "cmdline"])
def test_users_total_below_the_presets_start_wins(priority: str) -> None:
    values = settings(GOOD)
    values.setdict(
        {"JUSTPROXIES_POOL": "datacenter", "CONCURRENT_REQUESTS": 33},
        priority=priority,
    )
    config = Config.from_settings(values, {})
    numbers = Concurrency.resolve(values, config, {})
    assert (numbers.total, numbers.domain_start, numbers.domain_max) == (33, 33, 33)
    effective = effective_settings(values, config)
    assert effective["CONCURRENT_REQUESTS_PER_DOMAIN"].source == "pool preset"


def test_users_start_above_the_presets_total_wins() -> None:
    values = settings(
        {**GOOD, "JUSTPROXIES_POOL": "mobile", "CONCURRENT_REQUESTS_PER_DOMAIN": 60}
    )
    numbers = Concurrency.resolve(values, Config.from_settings(values, {}), {})
    assert (numbers.total, numbers.domain_start) == (60, 60)


@pytest.mark.parametrize(
    "handler",
    [
        "scrapy.core.downloader.handlers._aiohttp.AiohttpDownloadHandler",
        "scrapy.core.downloader.handlers._httpx.HttpxDownloadHandler",
        "scrapy.core.downloader.handlers.http2.H2DownloadHandler",
        "myproject.handlers.Custom",
    ],
)
def test_untested_download_handlers_are_refused(handler: str) -> None:
    with pytest.raises(JustProxiesConfigError, match=r"DOWNLOAD_HANDLERS\['https?'\]"):
        check_download_handlers(settings({"DOWNLOAD_HANDLERS": {"https": handler}}))


def test_scrapys_http11_handler_and_disabled_schemes_are_accepted() -> None:
    check_download_handlers(Settings())
    check_download_handlers(
        settings({"DOWNLOAD_HANDLERS": {"http": HTTP11DownloadHandler, "https": None}})
    )


@pytest.mark.parametrize("setting", ["DNS_RESOLVER", "TWISTED_DNS_RESOLVER"])
def test_ipv6_gateway_needs_the_hostname_resolver(setting: str) -> None:
    values = {**GOOD, "JUSTPROXIES_GATEWAY": "http://[::1]:8081"}
    current = "TWISTED_DNS_RESOLVER" if "TWISTED_DNS_RESOLVER" in Settings() else ""
    if setting != (current or "DNS_RESOLVER"):
        pytest.skip(f"{setting} is not this Scrapy's resolver setting")
    with pytest.raises(JustProxiesConfigError, match="IPv6") as info:
        Config.from_settings(settings(values), {})
    assert "CachingHostnameResolver" in str(info.value)
    values[setting] = "scrapy.resolver.CachingHostnameResolver"
    config = Config.from_settings(settings(values), {})
    assert config.gateway is not None
    assert (config.gateway.host, config.gateway.port) == ("::1", 8081)
    assert config.gateway.url == "http://[::1]:8081"


# -- hostile values the review found (a traceback, or silently wrong) -----------


def test_retry_after_max_below_one_second_is_refused() -> None:
    """It caps the backoff too: at 0 every 429 retry went out at once and
    the 20 retries were spent in milliseconds."""
    for value in (0, 0.5, -1):
        with pytest.raises(JustProxiesConfigError, match="JUSTPROXIES_RETRY_AFTER_MAX"):
            ThrottleConfig.from_settings(
                settings({"JUSTPROXIES_RETRY_AFTER_MAX": value}), {}
            )
    config = ThrottleConfig.from_settings(
        settings({"JUSTPROXIES_RETRY_AFTER_MAX": 1}), {}
    )
    assert config.retry_after_max == 1.0


@pytest.mark.parametrize("source", ["settings", "environment"])
def test_retry_after_max_above_300_seconds_is_refused(source: str) -> None:
    """README: between 1 and 300. 300 itself is taken; above it, a start-up
    error naming the setting and its range."""

    def read(value: object) -> ThrottleConfig:
        if source == "settings":
            return ThrottleConfig.from_settings(
                settings({"JUSTPROXIES_RETRY_AFTER_MAX": value}), {}
            )
        return ThrottleConfig.from_settings(
            settings(), {"JUSTPROXIES_RETRY_AFTER_MAX": str(value)}
        )

    assert read(300).retry_after_max == 300.0
    for value in (300.5, 301, 3600):
        with pytest.raises(JustProxiesConfigError) as error:
            read(value)
        assert "JUSTPROXIES_RETRY_AFTER_MAX" in str(error.value)
        assert "300" in str(error.value)


def test_throttle_log_interval_is_read_and_never_negative() -> None:
    assert ThrottleConfig.from_settings(settings(), {}).log_interval == 10.0
    config = ThrottleConfig.from_settings(
        settings({"JUSTPROXIES_THROTTLE_LOG_INTERVAL": 2.5}), {}
    )
    assert config.log_interval == 2.5
    from_env = ThrottleConfig.from_settings(
        settings(), {"JUSTPROXIES_THROTTLE_LOG_INTERVAL": "0"}
    )
    assert from_env.log_interval == 0.0
    with pytest.raises(JustProxiesConfigError, match="JUSTPROXIES_THROTTLE_LOG_INT"):
        ThrottleConfig.from_settings(
            settings({"JUSTPROXIES_THROTTLE_LOG_INTERVAL": -1}), {}
        )


@pytest.mark.parametrize(
    "value", [f"gw.example.net:8000:alice:pa[{SECRET}", f"[gw.example.net:{SECRET}"]
)
def test_a_gateway_with_an_unbalanced_bracket_is_a_clear_error(value: str) -> None:
    with pytest.raises(JustProxiesConfigError, match="JUSTPROXIES_GATEWAY") as info:
        Config.from_settings(settings(), {"JUSTPROXIES_GATEWAY": value})
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("name", ["JUSTPROXIES_TRACE", "JUSTPROXIES_REPORT"])
@pytest.mark.parametrize("value", ["None", "none", " off "])
def test_none_from_the_command_line_turns_a_file_off(name: str, value: str) -> None:
    """``-s JUSTPROXIES_TRACE=None`` arrives as the string "None": off, as
    for JUSTPROXIES_STATE_FILE, not a file called None."""
    from scrapy_justproxies.config import ObservabilityConfig  # noqa: PLC0415

    config = ObservabilityConfig.from_settings(settings({name: value}), {})
    assert config.trace_path is None and config.report_path is None


def test_none_from_the_command_line_means_no_static_exits() -> None:
    config = Config.from_settings(
        settings({**GOOD, "JUSTPROXIES_POOL": "static"}),
        {"JUSTPROXIES_STATIC_EXITS": "None"},
    )
    assert config.static_exits == ()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1:0/0", "port 0"),
        ("redis://127.0.0.1:6379/\u00b2", "database must be a number"),
        ("redis://127.0.0.1:6379/\u0663", "database must be a number"),
    ],
)
def test_shared_state_url_errors_are_clear(url: str, message: str) -> None:
    from scrapy_justproxies.config import SharedStateConfig  # noqa: PLC0415

    with pytest.raises(JustProxiesConfigError, match=message):
        SharedStateConfig.from_settings(settings({"JUSTPROXIES_SHARED_STATE": url}), {})


def test_a_redis_url_with_a_user_and_no_password_is_shown_masked() -> None:
    """``redis://secret@host`` is a password written without its ":" more
    often than a user name: never shown."""
    from scrapy_justproxies.config import SharedStateConfig  # noqa: PLC0415

    config = SharedStateConfig.from_settings(
        settings({"JUSTPROXIES_SHARED_STATE": f"redis://{SECRET}@127.0.0.1:6379/0"}),
        {},
    )
    assert config.url == "redis://***@127.0.0.1:6379/0"
    assert SECRET not in repr(config)


# -- issue 9: where slow start stops doubling -----------------------------------


def _learning(
    values: dict[str, object], environ: dict[str, str] | None = None
) -> LearningConfig:
    return LearningConfig.from_settings(
        settings({"JUSTPROXIES_STATE_FILE": None, **values}), environ or {}
    )


def _throttle(values: dict[str, object]) -> Any:
    """The throttle extension of a crawler with the add-on and ``values``."""
    from scrapy.utils.test import get_crawler  # noqa: PLC0415

    from scrapy_justproxies.throttle import JustProxiesThrottle  # noqa: PLC0415

    crawler = get_crawler(
        settings_dict={
            **GOOD,
            "ADDONS": {"scrapy_justproxies.Addon": 100},
            "JUSTPROXIES_STATE_FILE": None,
            **values,
        }
    )
    return JustProxiesThrottle.from_crawler(crawler)


def test_slow_start_until_is_read_and_defaults_to_twice_the_start() -> None:
    assert _learning({}).slow_start_until == 2.0
    name = "JUSTPROXIES_THROTTLE_SLOW_START_UNTIL"
    assert _learning({name: 1}).slow_start_until == 1.0
    assert _learning({name: "2.5"}).slow_start_until == 2.5
    assert _learning({}, {name: "1"}).slow_start_until == 1.0
    assert _learning({name: 0}).slow_start_until == 0.0


@pytest.mark.parametrize("value", [0.5, -1, "start", float("inf"), True])
def test_slow_start_until_refuses_what_is_not_0_or_a_multiple_of_1_up(
    value: object,
) -> None:
    with pytest.raises(
        JustProxiesConfigError, match="JUSTPROXIES_THROTTLE_SLOW_START_UNTIL"
    ):
        _learning({"JUSTPROXIES_THROTTLE_SLOW_START_UNTIL": value})


def test_slow_start_until_reaches_the_controller() -> None:
    throttle = _throttle({"JUSTPROXIES_THROTTLE_SLOW_START_UNTIL": 1})
    assert throttle.controller_settings.slow_start_until == 1.0


# -- a rate-first slow start for every domain ------------------------------------

SLOW_START_RATE = "JUSTPROXIES_THROTTLE_SLOW_START_RATE"


def test_slow_start_rate_is_read_and_off_by_default() -> None:
    assert _learning({}).slow_start_rate == 0.0
    assert _learning({SLOW_START_RATE: 8}).slow_start_rate == 8.0
    assert _learning({SLOW_START_RATE: "2.5"}).slow_start_rate == 2.5
    assert _learning({}, {SLOW_START_RATE: "4"}).slow_start_rate == 4.0
    assert _learning({SLOW_START_RATE: 0}).slow_start_rate == 0.0
    assert _learning({SLOW_START_RATE: 1}).slow_start_rate == 1.0  # the lowest
    assert _learning({SLOW_START_RATE: 10_000}).slow_start_rate == 10_000.0
    # Empty is unset, as for every setting (JUSTPROXIES_...= scrapy crawl).
    assert _learning({}, {SLOW_START_RATE: " "}).slow_start_rate == 0.0


@pytest.mark.parametrize(
    "value",
    [-1, -0.5, 0.001, 0.5, "fast", float("nan"), float("inf"), True, 10_001, "1e400"],
)
def test_slow_start_rate_refuses_what_is_not_a_pace(value: object) -> None:
    with pytest.raises(JustProxiesConfigError, match=SLOW_START_RATE):
        _learning({SLOW_START_RATE: value})


def test_slow_start_rate_without_slow_start_names_both_settings() -> None:
    """A rate-first start is a way of slow-starting: with slow start off the
    setting would be ignored, and silently."""
    with pytest.raises(JustProxiesConfigError) as raised:
        _learning({SLOW_START_RATE: 8, "JUSTPROXIES_THROTTLE_SLOW_START": 0})
    message = str(raised.value)
    assert SLOW_START_RATE in message
    assert "JUSTPROXIES_THROTTLE_SLOW_START above 0" in message
    # Off with slow start off is no conflict.
    off = _learning({SLOW_START_RATE: 0, "JUSTPROXIES_THROTTLE_SLOW_START": 0})
    assert (off.slow_start, off.slow_start_rate) == (0, 0.0)


def test_slow_start_rate_reaches_every_domain_and_the_exits_keep_their_own() -> None:
    """Every new domain's controller is paced from the rate set; a static
    exit's pairs take it too (they slow-start rate-first anyway, at
    ``EXIT_SLOW_START_RATE`` when it is unset)."""
    from scrapy_justproxies.throttle import EXIT_SLOW_START_RATE  # noqa: PLC0415

    off = _throttle({})
    assert off.controller_settings.slow_start_rate == 0.0
    assert off.exit_settings.slow_start_rate == EXIT_SLOW_START_RATE
    assert off.pace_for("a.test") is None  # volleys: unpaced
    on = _throttle({SLOW_START_RATE: 3})
    assert on.controller_settings.slow_start_rate == 3.0
    assert on.exit_settings.slow_start_rate == 3.0
    # A domain waits for a second 429 within ten answers; an exit's pair
    # cuts at its first (each counts against a small per-IP budget).
    assert on.controller_settings.slow_start_rate_strays == 10
    assert on.exit_settings.slow_start_rate_strays == 0
    assert on.pace_for("a.test") == pytest.approx(1 / 3)
    assert on.pace_for("b.test") == pytest.approx(1 / 3)


def test_slow_start_rate_when_slow_start_is_off_by_its_level_names_all_three() -> None:
    """Slow start is off as well when its first volley is not below the start
    level (CONCURRENT_REQUESTS_PER_DOMAIN): the rate would be ignored."""
    with pytest.raises(JustProxiesConfigError) as raised:
        _throttle({SLOW_START_RATE: 8, "CONCURRENT_REQUESTS_PER_DOMAIN": 4})
    message = str(raised.value)
    for name in (
        SLOW_START_RATE,
        "JUSTPROXIES_THROTTLE_SLOW_START",
        "CONCURRENT_REQUESTS_PER_DOMAIN (4)",
    ):
        assert name in message
    assert _throttle({SLOW_START_RATE: 8, "CONCURRENT_REQUESTS_PER_DOMAIN": 5})


def test_slow_start_rate_with_shared_budgets_warns_that_it_does_not_apply(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A shared site's opening is the shared budget's, unpaced: said at
    start-up, not found out from the 429s. (Redis on a closed loopback port,
    not required: the crawl would go on with budgets of its own.)"""
    values = {
        "JUSTPROXIES_SHARED_STATE": "redis://127.0.0.1:1/0",
        "JUSTPROXIES_SHARED_STATE_REQUIRED": False,
    }
    with caplog.at_level("WARNING", logger="scrapy_justproxies"):
        _throttle({**values, SLOW_START_RATE: 8})
    assert "does not apply to sites whose budget is shared" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="scrapy_justproxies"):
        _throttle(values)
    assert "SLOW_START_RATE" not in caplog.text


def test_the_slow_start_settings_are_in_the_trace_header() -> None:
    values = {
        **GOOD,
        "JUSTPROXIES_STATE_FILE": None,
        SLOW_START_RATE: 8,
        "JUSTPROXIES_THROTTLE_SLOW_START": 3,
        "JUSTPROXIES_THROTTLE_SLOW_START_UNTIL": 1.5,
    }
    header = in_force(settings(values), {})
    assert header[SLOW_START_RATE] == 8.0
    assert header["JUSTPROXIES_THROTTLE_SLOW_START"] == 3
    assert header["JUSTPROXIES_THROTTLE_SLOW_START_UNTIL"] == 1.5
