from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from mailsvc.domain.mime import ascii_address
from mailsvc.settings import (
    HostPort,
    SettingsError,
    format_duration,
    load_settings,
    parse_duration,
    parse_host_port,
)

REPO = Path(__file__).resolve().parents[2]
BASE = {
    "MAIL_REDIS_MASTER_ADDR": "127.0.0.1:6379",
    "MAIL_REDIS_PASSWORD": "",
    "MAIL_POSTGRES_PRIMARY_DSN": "postgresql://postgres@127.0.0.1/db",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("250ms", timedelta(milliseconds=250)),
        ("2s", timedelta(seconds=2)),
        ("1m30s", timedelta(seconds=90)),
        ("24h", timedelta(hours=24)),
        ("1.5h", timedelta(minutes=90)),
        ("0", timedelta(0)),
        ("1h2m3s4ms", timedelta(hours=1, minutes=2, seconds=3, milliseconds=4)),
    ],
)
def test_go_durations_parse(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "10", "5 s", "1d", "s", "1m30", "-1s", "1s1"])
def test_invalid_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", ["250ms", "2s", "1m30s", "24h", "720h", "1h1m1s"])
def test_format_duration_round_trips(value: str) -> None:
    assert format_duration(parse_duration(value)) == value


def test_host_port_forms() -> None:
    assert parse_host_port(":8080") == HostPort("", 8080)
    assert parse_host_port("127.0.0.1:25") == HostPort("127.0.0.1", 25)
    assert parse_host_port("[::1]:2525") == HostPort("::1", 2525)
    assert parse_host_port("mail.example.com:587").host == "mail.example.com"
    assert parse_host_port("127.0.0.1:25").is_loopback
    assert not parse_host_port(":8080").is_loopback
    for bad in ("8080", "host", "host:99999", "host:port", "a:b:1"):
        with pytest.raises(ValueError):
            parse_host_port(bad)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.10.20.30", "127.255.255.255", "::1", "localhost", "LocalHost"])
def test_loopback_is_a_loopback_ip_literal_or_localhost(host: str) -> None:
    assert HostPort(host, 25).is_loopback


@pytest.mark.parametrize(
    "host",
    [
        "127.mail.example.com",  # a name that merely starts with 127.
        "127.0.0.1.example.com",
        "127.0.0.1.nip.io",
        "localhost.example.com",
        "128.0.0.1",
        "10.0.0.1",
        "0.0.0.0",
        "::",
        "::ffff:127.0.0.1",  # not the literal the SPEC names
        "",  # all interfaces
    ],
)
def test_nothing_else_is_loopback(host: str) -> None:
    assert not HostPort(host, 25).is_loopback


SMTP = {**BASE, "MAIL_SMTP_MODE": "smtp", "MAIL_SMTP_ADDR": "mx.example.com:587"}


@pytest.mark.parametrize(
    "sender",
    ["noreply@example.com", "no-reply+mail@mail.example.com", "ops@bücher.example", "svc@localhost", "a@[192.0.2.1]"],
)
def test_a_sender_the_mime_builder_takes_is_accepted(sender: str) -> None:
    assert load_settings({**SMTP, "MAIL_SMTP_FROM_EMAIL": sender}).smtp.from_email == sender


@pytest.mark.parametrize(
    "sender",
    ["josé@example.com", "no reply@example.com", '"quoted"@example.com', "noreply", "a@b@example.com", "a@-x-"],
)
def test_a_sender_the_mime_builder_refuses_fails_the_start(sender: str) -> None:
    for mode in (SMTP, BASE):  # stub mode builds the same From header
        with pytest.raises(SettingsError) as caught:
            load_settings({**mode, "MAIL_SMTP_FROM_EMAIL": sender})
        assert [p.split(":")[0] for p in caught.value.problems] == ["MAIL_SMTP_FROM_EMAIL"]
        with pytest.raises(ValueError):  # the builder's own verdict, which the check follows
            ascii_address(sender)


def test_an_idempotency_ttl_longer_than_retention_fails_the_start() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({**BASE, "MAIL_IDEMPOTENCY_TTL": "49h", "MAIL_DELIVERY_RETENTION": "48h"})
    assert caught.value.problems == [
        "MAIL_IDEMPOTENCY_TTL: 49h must not exceed MAIL_DELIVERY_RETENTION (48h): a key must never outlive its delivery"
    ]
    with pytest.raises(SettingsError, match="MAIL_IDEMPOTENCY_TTL"):
        load_settings({**BASE, "MAIL_DELIVERY_RETENTION": "12h"})  # against the 24h default TTL
    equal = load_settings({**BASE, "MAIL_IDEMPOTENCY_TTL": "48h", "MAIL_DELIVERY_RETENTION": "48h"})
    assert equal.work.idempotency_ttl == equal.work.delivery_retention


def test_defaults_follow_the_spec() -> None:
    settings = load_settings(BASE)
    assert settings.http.addr == HostPort("", 8080)
    assert settings.http.read_header_timeout == timedelta(seconds=2)
    assert settings.http.read_timeout == timedelta(seconds=10)
    assert settings.http.idle_timeout == timedelta(minutes=1)
    assert settings.smtp.mode == "stub"
    assert settings.smtp.tls == "auto"
    assert settings.smtp.insecure_skip_verify is False
    assert settings.work.attempt_worker_concurrency == 16
    assert settings.work.idempotency_ttl == timedelta(hours=24)
    assert settings.work.delivery_retention == timedelta(hours=720)
    assert settings.work.malformed_command_retention == timedelta(hours=168)
    assert settings.work.cleanup_interval == timedelta(hours=1)
    assert settings.work.retry_base_delay == timedelta(seconds=30)
    assert settings.work.retry_max_delay == timedelta(hours=1)
    assert settings.work.retry_max_attempts == 10
    assert settings.redis.command_stream == "mail:commands"


def test_missing_required_values_are_all_reported() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({})
    names = [p.split(":")[0] for p in caught.value.problems]
    assert names == ["MAIL_REDIS_MASTER_ADDR", "MAIL_REDIS_PASSWORD", "MAIL_POSTGRES_PRIMARY_DSN"]


def test_empty_redis_password_is_allowed_but_must_be_set() -> None:
    assert load_settings(BASE).redis.password.reveal() == ""
    env = {k: v for k, v in BASE.items() if k != "MAIL_REDIS_PASSWORD"}
    with pytest.raises(SettingsError, match="MAIL_REDIS_PASSWORD: required"):
        load_settings(env)


def test_redis_username_is_optional_and_must_be_an_acl_name() -> None:
    assert load_settings(BASE).redis.username == ""
    assert load_settings({**BASE, "MAIL_REDIS_USERNAME": "mailsvc"}).redis.username == "mailsvc"
    for bad in ("mail svc", "mail\tsvc", "mail\x00svc"):
        with pytest.raises(SettingsError, match="MAIL_REDIS_USERNAME"):
            load_settings({**BASE, "MAIL_REDIS_USERNAME": bad})


def test_smtp_mode_requires_address_and_sender() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({**BASE, "MAIL_SMTP_MODE": "smtp"})
    assert [p.split(":")[0] for p in caught.value.problems] == ["MAIL_SMTP_ADDR", "MAIL_SMTP_FROM_EMAIL"]
    ok = load_settings(
        {**BASE, "MAIL_SMTP_MODE": "smtp", "MAIL_SMTP_ADDR": "mx:25", "MAIL_SMTP_FROM_EMAIL": "a@b.example"}
    )
    assert ok.smtp.addr == HostPort("mx", 25)


INVALID = {
    "MAIL_SHUTDOWN_TIMEOUT": "soon",
    "MAIL_LOG_LEVEL": "loud",
    "MAIL_INTERNAL_HTTP_ADDR": "8080",
    "MAIL_INTERNAL_HTTP_READ_HEADER_TIMEOUT": "0",
    "MAIL_INTERNAL_HTTP_READ_TIMEOUT": "10",
    "MAIL_INTERNAL_HTTP_IDLE_TIMEOUT": "-1m",
    "MAIL_REDIS_REPLICA_ADDRS": "a:1,b",
    "MAIL_REDIS_DB": "sixteen",
    "MAIL_REDIS_OPERATION_TIMEOUT": "1x",
    "MAIL_POSTGRES_REPLICA_DSNS": "mysql://x",
    "MAIL_POSTGRES_OPERATION_TIMEOUT": "fast",
    "MAIL_POSTGRES_MAX_OPEN_CONNS": "0",
    "MAIL_POSTGRES_MAX_IDLE_CONNS": "-2",
    "MAIL_POSTGRES_CONN_MAX_LIFETIME": "forever",
    "MAIL_SMTP_MODE": "carrier-pigeon",
    "MAIL_SMTP_TIMEOUT": "15",
    "MAIL_SMTP_INSECURE_SKIP_VERIFY": "maybe",
    "MAIL_SMTP_TLS": "ssl3",
    "MAIL_ATTEMPT_WORKER_CONCURRENCY": "0",
    "MAIL_STREAM_BLOCK_TIMEOUT": "2",
    "MAIL_STREAM_BATCH_SIZE": "many",
    "MAIL_OPERATOR_REQUEST_TIMEOUT": "x",
    "MAIL_IDEMPOTENCY_TTL": "1 day",
    "MAIL_DELIVERY_RETENTION": "30d",
    "MAIL_MALFORMED_COMMAND_RETENTION": "7d",
    "MAIL_CLEANUP_INTERVAL": "hourly",
    "MAIL_RETRY_BASE_DELAY": "30",
    "MAIL_RETRY_MAX_DELAY": "1hour",
    "MAIL_RETRY_MAX_ATTEMPTS": "0",
    "OTEL_TRACES_EXPORTER": "jaeger",
    "OTEL_METRICS_EXPORTER": "prometheus",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "udp",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "udp",
    "MAIL_OTEL_STDOUT_TRACES_ENABLED": "sometimes",
    "MAIL_OTEL_STDOUT_METRICS_ENABLED": "2",
}


@pytest.mark.parametrize(("name", "value"), sorted(INVALID.items()))
def test_each_invalid_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({**BASE, name: value})
    assert any(p.startswith(f"{name}:") for p in caught.value.problems), caught.value.problems


def test_every_invalid_value_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({**BASE, **INVALID})
    reported = {p.split(":")[0] for p in caught.value.problems}
    assert set(INVALID) <= reported


def test_secrets_never_show_in_repr() -> None:
    settings = load_settings(
        {
            **BASE,
            "MAIL_REDIS_PASSWORD": "hunter2",
            "MAIL_SMTP_PASSWORD": "smtp-secret",
            "MAIL_INTERNAL_HTTP_INTAKE_TOKENS": "tok-a,tok-b",
            "MAIL_POSTGRES_PRIMARY_DSN": "postgresql://u:pgpass@h/db",
        }
    )
    text = repr(settings)
    for secret in ("hunter2", "smtp-secret", "tok-a", "pgpass"):
        assert secret not in text
    assert [t.reveal() for t in settings.http.intake_tokens] == ["tok-a", "tok-b"]


def _settings_variables() -> set[str]:
    source = (REPO / "mailsvc" / "settings.py").read_text()
    return set(re.findall(r'"((?:MAIL|OTEL)_[A-Z0-9_]+)"', source))


def test_env_example_lists_every_variable_with_a_comment() -> None:
    lines = (REPO / ".env.example").read_text().splitlines()
    listed = {}
    for index, line in enumerate(lines):
        match = re.match(r"#?\s*((?:MAIL|OTEL)_[A-Z0-9_]+)=", line)
        if match:
            listed[match.group(1)] = index
            assert lines[index - 1].startswith("#"), f"{match.group(1)} needs a comment line above it"
    assert _settings_variables() <= set(listed)
    assert set(listed) - {"OTEL_EXPORTER_OTLP_ENDPOINT"} <= _settings_variables()


def test_env_example_values_parse() -> None:
    env = dict(BASE)
    for line in (REPO / ".env.example").read_text().splitlines():
        if re.match(r"(MAIL|OTEL)_", line):
            name, _, value = line.partition("=")
            env[name] = value
    load_settings(env)


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in BASE:
        monkeypatch.delenv(name, raising=False)
    dotenv = tmp_path / ".env"
    dotenv.write_text("\n".join(f"{k}={v}" for k, v in BASE.items()) + "\nMAIL_ATTEMPT_WORKER_CONCURRENCY=7\n")
    assert load_settings(dotenv=dotenv).work.attempt_worker_concurrency == 7


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1MiB", 1024 * 1024), ("512KiB", 512 * 1024), ("2097152", 2 * 1024 * 1024), ("1mib", 1024 * 1024),
     ("64 KiB", 64 * 1024), ("1MB", 1_000_000), ("4096B", 4096)],
)  # fmt: skip
def test_max_rendered_bytes_takes_byte_sizes(text: str, expected: int) -> None:
    assert load_settings(BASE).work.max_rendered_bytes == 1024 * 1024  # SPEC §7 default: 1MiB
    assert load_settings({**BASE, "MAIL_MAX_RENDERED_BYTES": text}).work.max_rendered_bytes == expected


@pytest.mark.parametrize("text", ["1.5MiB", "lots", "-1", "0", "1TiB", "100", "MiB", "1 Mi B"])
def test_max_rendered_bytes_refuses_what_is_not_a_usable_size(text: str) -> None:
    with pytest.raises(SettingsError, match="MAIL_MAX_RENDERED_BYTES: "):
        load_settings({**BASE, "MAIL_MAX_RENDERED_BYTES": text})
