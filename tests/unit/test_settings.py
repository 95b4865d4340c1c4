from __future__ import annotations

import re
from dataclasses import Field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from devtools import settings_docs
from mailsvc.cli import main
from mailsvc.domain.mime import ascii_address
from mailsvc.settings import (
    HostPort,
    SettingsError,
    describe,
    format_duration,
    load_settings,
    parse_duration,
    parse_host_port,
)
from mailsvc.settings.declare import Problems, Variable, declarations, read_group, setting, settings_group
from mailsvc.settings.docs import TABLE_END, env_example, markdown_table, with_table
from mailsvc.settings.load import group_types
from mailsvc.settings.values import int_in, positive_duration

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
    assert equal.retention.idempotency_ttl == equal.retention.delivery_retention


def test_an_event_retention_longer_than_delivery_retention_fails_the_start() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({**BASE, "MAIL_EVENT_RETENTION": "49h", "MAIL_DELIVERY_RETENTION": "48h"})
    assert caught.value.problems == [
        "MAIL_EVENT_RETENTION: 49h must not exceed MAIL_DELIVERY_RETENTION (48h): an event never outlives its delivery"
    ]
    # the 168h default gives way to a shorter delivery retention instead (bootstrap takes the minimum)
    shorter = load_settings({**BASE, "MAIL_DELIVERY_RETENTION": "48h", "MAIL_IDEMPOTENCY_TTL": "1h"})
    assert shorter.retention.event_retention == timedelta(hours=168)


def test_event_stream_defaults_and_an_empty_name_turns_publishing_off() -> None:
    settings = load_settings(BASE)
    assert (settings.redis.event_stream, settings.redis.event_stream_maxlen) == ("mail:events", 1_000_000)
    assert settings.retention.event_retention == timedelta(hours=168)
    assert load_settings({**BASE, "MAIL_REDIS_EVENT_STREAM": ""}).redis.event_stream == ""
    assert load_settings({**BASE, "MAIL_REDIS_EVENT_STREAM": "x:ev"}).redis.event_stream == "x:ev"
    with pytest.raises(SettingsError, match="MAIL_EVENT_STREAM_MAXLEN"):
        load_settings({**BASE, "MAIL_EVENT_STREAM_MAXLEN": "0"})


def test_defaults_follow_the_spec() -> None:
    settings = load_settings(BASE)
    assert settings.http.addr == HostPort("", 8080)
    assert settings.http.read_header_timeout == timedelta(seconds=2)
    assert settings.http.read_timeout == timedelta(seconds=10)
    assert settings.http.idle_timeout == timedelta(minutes=1)
    assert settings.smtp.mode == "stub"
    assert settings.smtp.tls == "auto"
    assert settings.smtp.insecure_skip_verify is False
    assert settings.workers.concurrency == 16
    assert settings.retention.idempotency_ttl == timedelta(hours=24)
    assert settings.retention.delivery_retention == timedelta(hours=720)
    assert settings.retention.malformed_command_retention == timedelta(hours=168)
    assert settings.retention.cleanup_interval == timedelta(hours=1)
    assert settings.retry.base_delay == timedelta(seconds=30)
    assert settings.retry.max_delay == timedelta(hours=1)
    assert settings.retry.max_attempts == 10
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


def _declared() -> dict[str, tuple[Field[Any], Variable[Any]]]:
    return {
        variable.name: (item, variable) for group in group_types().values() for item, variable in declarations(group)
    }


def _env_example_values() -> dict[str, str]:
    """The variables `.env.example` sets (not the commented-out ones), as written."""
    lines = (REPO / ".env.example").read_text().splitlines()
    return dict(line.partition("=")[::2] for line in lines if re.match(r"(MAIL|OTEL)_", line))


def test_env_example_is_what_the_declarations_print() -> None:
    assert (REPO / ".env.example").read_text() == env_example(), "stale .env.example: run `make settings-docs`"


def test_readme_table_is_what_the_declarations_print() -> None:
    readme = (REPO / "README.md").read_text()
    assert markdown_table() in readme
    assert with_table(readme) == readme, "stale settings table in README.md: run `make settings-docs`"


def test_mailsvc_settings_prints_the_env_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["settings", "--env-example"]) == 0
    assert capsys.readouterr().out == (REPO / ".env.example").read_text()
    assert main(["settings", "--markdown"]) == 0
    assert capsys.readouterr().out == markdown_table()


def test_settings_docs_rewrites_both_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`make settings-docs`: the stale file and the stale table become what the declarations print,
    the README around the table stays as it was."""
    (tmp_path / ".env.example").write_text("MAIL_GONE=1\n")
    stale = f"# Title\n\nbefore\n\n{markdown_table().splitlines()[0]}\n| old | table |\n{TABLE_END}\nafter\n"
    (tmp_path / "README.md").write_text(stale)
    assert settings_docs.main(tmp_path) == 0
    assert (tmp_path / ".env.example").read_text() == env_example()
    assert (tmp_path / "README.md").read_text() == f"# Title\n\nbefore\n\n{markdown_table()}after\n"
    assert "rewritten" in capsys.readouterr().out


def test_env_example_lists_every_variable_with_a_comment() -> None:
    lines = (REPO / ".env.example").read_text().splitlines()
    listed = {}
    for index, line in enumerate(lines):
        match = re.match(r"#?\s*((?:MAIL|OTEL)_[A-Z0-9_]+)=", line)
        if match:
            listed[match.group(1)] = index
            assert lines[index - 1].startswith("#"), f"{match.group(1)} needs a comment line above it"
    assert set(listed) == set(_declared()) | {"OTEL_EXPORTER_OTLP_ENDPOINT"}
    assert set(_env_example_values()) == set(_declared())  # only the SDK's own endpoint is commented out


def test_defaults_round_trip_through_env_example() -> None:
    """Every value `.env.example` writes loads back as the declared default (a required variable
    as its parsed example): the formatter and the parsers agree, and copying the file changes nothing."""
    loaded = load_settings(_env_example_values())
    for name, group in group_types().items():
        for item, variable in declarations(group):
            expected = variable.parse(variable.example or "") if variable.required else item.default
            assert getattr(getattr(loaded, name), item.name) == expected, variable.name


def test_every_variable_the_settings_code_names_is_declared() -> None:
    """Names written out by hand (cross-field messages) cannot drift from the declarations."""
    source = "".join(path.read_text() for path in (REPO / "mailsvc" / "settings").glob("*.py"))
    named = set(re.findall(r"\b((?:MAIL|OTEL)_[A-Z0-9_]+)\b", source))
    assert named <= set(_declared()) | {"OTEL_EXPORTER_OTLP_ENDPOINT"}


def test_each_variable_is_declared_once_with_one_line_of_meaning() -> None:
    names = [variable.name for group in group_types().values() for _, variable in declarations(group)]
    assert len(names) == len(set(names))
    for _, variable in _declared().values():
        assert variable.doc.strip(), variable.name
        assert "\n" not in variable.doc, variable.name
        assert re.fullmatch(r"(MAIL|OTEL)_[A-Z0-9_]+", variable.name)


def test_describe_masks_secrets_and_names_every_group() -> None:
    settings = load_settings({**BASE, "MAIL_REDIS_PASSWORD": "hunter2", "MAIL_SMTP_PASSWORD": "smtp-secret"})
    described = describe(settings)
    assert list(described) == list(group_types())
    assert "hunter2" not in repr(described)
    assert "smtp-secret" not in repr(described)
    assert described["retry"]["max_attempts"] == "10"


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in BASE:
        monkeypatch.delenv(name, raising=False)
    dotenv = tmp_path / ".env"
    dotenv.write_text("\n".join(f"{k}={v}" for k, v in BASE.items()) + "\nMAIL_ATTEMPT_WORKER_CONCURRENCY=7\n")
    assert load_settings(dotenv=dotenv).workers.concurrency == 7


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1MiB", 1024 * 1024), ("512KiB", 512 * 1024), ("2097152", 2 * 1024 * 1024), ("1mib", 1024 * 1024),
     ("64 KiB", 64 * 1024), ("1MB", 1_000_000), ("4096B", 4096)],
)  # fmt: skip
def test_max_rendered_bytes_takes_byte_sizes(text: str, expected: int) -> None:
    assert load_settings(BASE).templates.max_rendered_bytes == 1024 * 1024  # SPEC §7 default: 1MiB
    assert load_settings({**BASE, "MAIL_MAX_RENDERED_BYTES": text}).templates.max_rendered_bytes == expected


@pytest.mark.parametrize("text", ["1.5MiB", "lots", "-1", "0", "1TiB", "100", "MiB", "1 Mi B"])
def test_max_rendered_bytes_refuses_what_is_not_a_usable_size(text: str) -> None:
    with pytest.raises(SettingsError, match="MAIL_MAX_RENDERED_BYTES: "):
        load_settings({**BASE, "MAIL_MAX_RENDERED_BYTES": text})


# --- the loader itself, on a group of its own ---------------------------------------------


@settings_group
class _Sample:
    """Sample."""

    needed: int = setting("SAMPLE_NEEDED", int_in(1, 9), required=True, example="1", doc="A required number.")
    delay: timedelta = setting("SAMPLE_DELAY", positive_duration, default=timedelta(seconds=5), doc="A duration.")
    fixed: int = 7  # not a variable: the loader leaves it alone


def _read(env: dict[str, str]) -> tuple[_Sample, list[str]]:
    problems = Problems()
    return read_group(_Sample, env, problems), problems.lines


def test_the_loader_parses_set_values_and_defaults_unset_or_blank_ones() -> None:
    assert _read({"SAMPLE_NEEDED": " 3 ", "SAMPLE_DELAY": "250ms"}) == (_Sample(3, timedelta(milliseconds=250)), [])
    assert _read({"SAMPLE_NEEDED": "3", "SAMPLE_DELAY": "  "}) == (_Sample(3), [])
    assert _read({"SAMPLE_NEEDED": "3"})[0].delay == timedelta(seconds=5)


def test_the_loader_ignores_variables_nothing_declares() -> None:
    assert _read({"SAMPLE_NEEDED": "3", "SAMPLE_NEDED": "x", "SAMPLE_FIXED": "9", "fixed": "9"}) == (_Sample(3), [])
    unknown = {"MAIL_NO_SUCH_SETTING": "x", "MAIL_REDIS_DATABASE": "nine", "MAIL_WORK_TEMPLATE_DIR": "/nowhere"}
    assert load_settings({**BASE, **unknown}) == load_settings(BASE)


def test_a_bad_value_and_a_missing_required_one_are_reported_in_one_error() -> None:
    sample, problems = _read({"SAMPLE_DELAY": "soon"})
    assert problems == [
        "SAMPLE_NEEDED: required but not set",
        "SAMPLE_DELAY: 'soon' is not a duration (use Go syntax such as 250ms, 2s, 1m30s, 24h)",
    ]
    assert sample == _Sample(1)  # stand-ins (the example, the default) that the caller never hands out
    env = {k: v for k, v in BASE.items() if k != "MAIL_POSTGRES_PRIMARY_DSN"}
    with pytest.raises(SettingsError) as caught:
        load_settings({**env, "MAIL_REDIS_DB": "16"})
    assert caught.value.problems == [
        "MAIL_REDIS_DB: 16 out of range 0-15",
        "MAIL_POSTGRES_PRIMARY_DSN: required but not set",
    ]
    assert str(caught.value) == "\n".join(caught.value.problems)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {"MAIL_POSTGRES_MAX_OPEN_CONNS": "4", "MAIL_POSTGRES_MAX_IDLE_CONNS": "5"},
            "MAIL_POSTGRES_MAX_IDLE_CONNS: must not exceed MAIL_POSTGRES_MAX_OPEN_CONNS",
        ),
        (
            {"MAIL_RETRY_BASE_DELAY": "2m", "MAIL_RETRY_MAX_DELAY": "1m"},
            "MAIL_RETRY_BASE_DELAY: must not exceed MAIL_RETRY_MAX_DELAY",
        ),
    ],
)
def test_each_cross_field_rule_reports_one_line(env: dict[str, str], problem: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({**BASE, **env})
    assert caught.value.problems == [problem]


@pytest.mark.parametrize(
    "env",
    [
        {"MAIL_POSTGRES_MAX_OPEN_CONNS": "lots", "MAIL_POSTGRES_MAX_IDLE_CONNS": "50"},
        {"MAIL_RETRY_BASE_DELAY": "2h", "MAIL_RETRY_MAX_DELAY": "1hour"},
        {"MAIL_IDEMPOTENCY_TTL": "1000h", "MAIL_DELIVERY_RETENTION": "30d"},
    ],
)
def test_a_cross_field_rule_stays_quiet_about_a_value_that_failed(env: dict[str, str]) -> None:
    """The failed value fell back to its default; comparing against that would blame the other."""
    with pytest.raises(SettingsError) as caught:
        load_settings({**BASE, **env})
    assert len(caught.value.problems) == 1, caught.value.problems


def test_a_group_needs_a_title_and_a_setting_one_line_of_meaning() -> None:
    with pytest.raises(TypeError, match="docstring"):

        @settings_group
        class _Untitled:
            value: int = setting("SAMPLE_VALUE", int, default=1, doc="A value.")

    with pytest.raises(ValueError, match="one non-empty line"):
        setting("SAMPLE_VALUE", int, default=1, doc="first line\nsecond line")
    with pytest.raises(TypeError, match="not both or neither"):
        setting("SAMPLE_VALUE", int, doc="Neither a default nor required.")  # type: ignore[call-overload]
