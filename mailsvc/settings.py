"""Typed, frozen process settings read from the environment (and `.env`), validated once.

Every problem is collected and reported together (`SettingsError.problems`, one line per
variable); the CLI prints them and exits with code 2.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

from mailsvc.domain.mime import ascii_address, make_message_id

T = TypeVar("T")

SmtpMode = Literal["stub", "smtp"]
SmtpTls = Literal["auto", "starttls", "implicit", "none"]
OtelExporter = Literal["otlp", "console", "none"]
OtlpProtocol = Literal["grpc", "http/protobuf"]
LOG_LEVELS = ("debug", "info", "warn", "warning", "error")


class SettingsError(Exception):
    """Raised with every configuration problem found, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Secret:
    """A string that never shows itself in `repr`/`str` (logs, tracebacks)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class HostPort:
    host: str  # "" means all interfaces
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        """An IP literal in 127.0.0.0/8 or `::1`, or the name `localhost` (SPEC §4). A name is
        never loopback for what it looks like: `127.mail.example.com` is a host on the internet."""
        if self.host.lower() == "localhost":
            return True
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return ip in _LOOPBACK_V4 if ip.version == 4 else ip == _LOOPBACK_V6


# explicit rather than `ip.is_loopback`, which newer Pythons (gh-117566) also give `::ffff:127.x`
_LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")
_LOOPBACK_V6 = ipaddress.ip_address("::1")


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> timedelta:
    """Parse a Go duration (`250ms`, `1m30s`, `24h`). `0` alone is allowed."""
    text = text.strip()
    if text == "0":
        return timedelta(0)
    if not text:
        raise ValueError("empty duration")
    pos, seconds = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(f"{text!r} is not a duration (use Go syntax such as 250ms, 2s, 1m30s, 24h)")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The inverse of `parse_duration`, for `.env.example` and messages (`1m30s`, `250ms`)."""
    ms = round(value.total_seconds() * 1000)
    if ms % 1000:
        return f"{ms}ms"
    secs = ms // 1000
    hours, rest = divmod(secs, 3600)
    minutes, secs = divmod(rest, 60)
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return out or "0s"


def parse_host_port(text: str) -> HostPort:
    """`host:port`, `[v6]:port` or `:port` (all interfaces)."""
    text = text.strip()
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]*):(\d+)", text)
    if not match:
        raise ValueError(f"{text!r} is not host:port")
    host = match.group(1) if match.group(1) is not None else match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 <= port < 65536:  # 0 picks a free port (tests); the bound one is logged
        raise ValueError(f"port {port} out of range 0-65535")
    return HostPort(host=host, port=port)


_BYTE_SIZE = re.compile(r"(\d+)\s*([kmg]i?b|b)?", re.IGNORECASE)
_BYTE_UNITS = {"b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def parse_byte_size(text: str) -> int:
    """A size in bytes: `1048576`, `512KiB`, `1MiB` (binary units), `1MB` (decimal), any case."""
    match = _BYTE_SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size in bytes (e.g. 1048576, 512KiB, 1MiB)")
    return int(match.group(1)) * _BYTE_UNITS[(match.group(2) or "b").lower()]


def _byte_size_in(low: int, high: int) -> Callable[[str], int]:
    def check(text: str) -> int:
        value = parse_byte_size(text)
        if not low <= value <= high:
            raise ValueError(f"{value} bytes is out of range {low}-{high}")
        return value

    return check


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parse_dsn(text: str) -> str:
    text = text.strip()
    if not re.match(r"^postgres(ql)?(\+asyncpg)?://", text):
        raise ValueError("must be a postgres:// or postgresql:// URL")
    return text


@dataclass(frozen=True)
class ProcessSettings:
    shutdown_timeout: timedelta = timedelta(seconds=30)
    log_level: str = "info"


@dataclass(frozen=True)
class HttpSettings:
    addr: HostPort = HostPort("", 8080)
    read_header_timeout: timedelta = timedelta(seconds=2)
    read_timeout: timedelta = timedelta(seconds=10)
    idle_timeout: timedelta = timedelta(minutes=1)
    intake_tokens: tuple[Secret, ...] = ()
    operator_tokens: tuple[Secret, ...] = ()
    max_body_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class RedisSettings:
    master_addr: HostPort
    password: Secret
    username: str = ""  # a Redis ACL user for both clients; empty: the default user
    replica_addrs: tuple[HostPort, ...] = ()
    db: int = 0
    operation_timeout: timedelta = timedelta(seconds=1)
    command_stream: str = "mail:commands"


@dataclass(frozen=True)
class PostgresSettings:
    primary_dsn: Secret
    replica_dsns: tuple[Secret, ...] = ()
    operation_timeout: timedelta = timedelta(seconds=5)
    max_open_conns: int = 25
    max_idle_conns: int = 10
    conn_max_lifetime: timedelta = timedelta(minutes=30)


@dataclass(frozen=True)
class SmtpSettings:
    mode: SmtpMode = "stub"
    addr: HostPort | None = None
    username: str = ""
    password: Secret = field(default_factory=lambda: Secret(""))
    from_email: str = ""
    from_name: str = ""
    timeout: timedelta = timedelta(seconds=15)
    insecure_skip_verify: bool = False
    tls: SmtpTls = "auto"
    stub_outbox_dir: Path | None = None


@dataclass(frozen=True)
class WorkSettings:
    template_dir: Path = Path("./templates")
    attempt_worker_concurrency: int = 16
    stream_block_timeout: timedelta = timedelta(seconds=2)
    stream_batch_size: int = 500
    operator_request_timeout: timedelta = timedelta(seconds=5)
    idempotency_ttl: timedelta = timedelta(hours=24)
    delivery_retention: timedelta = timedelta(hours=720)
    malformed_command_retention: timedelta = timedelta(hours=168)
    cleanup_interval: timedelta = timedelta(hours=1)
    retry_base_delay: timedelta = timedelta(seconds=30)
    retry_max_delay: timedelta = timedelta(hours=1)
    retry_max_attempts: int = 10
    max_rendered_bytes: int = 1024 * 1024  # each rendered body (text, HTML), in UTF-8 bytes


@dataclass(frozen=True)
class TelemetrySettings:
    service_name: str = "mailsvc"
    traces_exporter: OtelExporter = "none"
    metrics_exporter: OtelExporter = "none"
    otlp_protocol: OtlpProtocol = "http/protobuf"
    otlp_traces_protocol: OtlpProtocol | None = None
    otlp_metrics_protocol: OtlpProtocol | None = None
    stdout_traces_enabled: bool = False
    stdout_metrics_enabled: bool = False


@dataclass(frozen=True)
class Settings:
    process: ProcessSettings
    http: HttpSettings
    redis: RedisSettings
    postgres: PostgresSettings
    smtp: SmtpSettings
    work: WorkSettings
    telemetry: TelemetrySettings


class _Reader:
    """Reads variables from a mapping, collecting problems instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            self.problems.append(f"{name}: {exc}")
            return default

    def required(self, name: str, parse: Callable[[str], T], *, allow_empty: bool = False) -> T | None:
        raw = self.env.get(name)
        if raw is None or (raw.strip() == "" and not allow_empty):
            self.problems.append(f"{name}: required but not set")
            return None
        try:
            return parse(raw)
        except ValueError as exc:
            self.problems.append(f"{name}: {exc}")
            return None


def _positive(parse: Callable[[str], T]) -> Callable[[str], T]:
    def check(text: str) -> T:
        value = parse(text)
        if isinstance(value, timedelta) and value <= timedelta(0):
            raise ValueError("must be greater than zero")
        if isinstance(value, int) and value <= 0:
            raise ValueError("must be greater than zero")
        return value

    return check


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def check(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise ValueError(f"{value} out of range {low}-{high}")
        return value

    return check


def _choice(*options: str) -> Callable[[str], Any]:
    def check(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"{text!r} is not one of {', '.join(options)}")
        return value

    return check


def _addr_list(text: str) -> tuple[HostPort, ...]:
    return tuple(parse_host_port(item) for item in parse_list(text))


def _secrets(text: str) -> tuple[Secret, ...]:
    return tuple(Secret(item) for item in parse_list(text))


def _dsn_list(text: str) -> tuple[Secret, ...]:
    return tuple(Secret(parse_dsn(item)) for item in parse_list(text))


def _sender(text: str) -> str:
    """The From / envelope sender, checked by the rules the MIME builder applies to it (the `From`
    address and the `Message-ID` domain), so a sender every delivery would fail on fails the start."""
    value = text.strip()
    try:
        ascii_address(value)
        make_message_id(value.rpartition("@")[2])
    except ValueError as exc:
        raise ValueError(f"{value!r} cannot be the From address: {exc}") from None
    return value


def _no_crlf(text: str) -> str:
    if "\r" in text or "\n" in text:
        raise ValueError("must not contain line breaks")
    return text


def _acl_username(text: str) -> str:
    if any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError("must be a Redis ACL user name: no spaces or control characters")
    return text


def _stream_key(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def load_settings(env: Mapping[str, str] | None = None, *, dotenv: Path | None = Path(".env")) -> Settings:
    """Build settings from `env` (default: `os.environ` over the `.env` file); raise `SettingsError`."""
    if env is None:
        merged: dict[str, str] = {}
        if dotenv is not None and dotenv.is_file():
            from dotenv import dotenv_values

            merged.update({k: v for k, v in dotenv_values(dotenv).items() if v is not None})
        merged.update(os.environ)
        env = merged
    r = _Reader(env)
    pos_dur = _positive(parse_duration)

    process = ProcessSettings(
        shutdown_timeout=r.get("MAIL_SHUTDOWN_TIMEOUT", pos_dur, ProcessSettings.shutdown_timeout),
        log_level=r.get("MAIL_LOG_LEVEL", _choice(*LOG_LEVELS), ProcessSettings.log_level),
    )
    http = HttpSettings(
        addr=r.get("MAIL_INTERNAL_HTTP_ADDR", parse_host_port, HttpSettings.addr),
        read_header_timeout=r.get("MAIL_INTERNAL_HTTP_READ_HEADER_TIMEOUT", pos_dur, HttpSettings.read_header_timeout),
        read_timeout=r.get("MAIL_INTERNAL_HTTP_READ_TIMEOUT", pos_dur, HttpSettings.read_timeout),
        idle_timeout=r.get("MAIL_INTERNAL_HTTP_IDLE_TIMEOUT", pos_dur, HttpSettings.idle_timeout),
        intake_tokens=r.get("MAIL_INTERNAL_HTTP_INTAKE_TOKENS", _secrets, ()),
        operator_tokens=r.get("MAIL_INTERNAL_HTTP_OPERATOR_TOKENS", _secrets, ()),
    )
    redis_master = r.required("MAIL_REDIS_MASTER_ADDR", parse_host_port)
    redis_password = r.required("MAIL_REDIS_PASSWORD", Secret, allow_empty=True)
    redis = RedisSettings(
        master_addr=redis_master or HostPort("127.0.0.1", 6379),
        password=redis_password or Secret(""),
        username=r.get("MAIL_REDIS_USERNAME", _acl_username, ""),
        replica_addrs=r.get("MAIL_REDIS_REPLICA_ADDRS", _addr_list, ()),
        db=r.get("MAIL_REDIS_DB", _int_in(0, 15), 0),
        operation_timeout=r.get("MAIL_REDIS_OPERATION_TIMEOUT", pos_dur, RedisSettings.operation_timeout),
        command_stream=r.get("MAIL_REDIS_COMMAND_STREAM", _stream_key, RedisSettings.command_stream),
    )
    primary_dsn = r.required("MAIL_POSTGRES_PRIMARY_DSN", lambda t: Secret(parse_dsn(t)))
    postgres = PostgresSettings(
        primary_dsn=primary_dsn or Secret(""),
        replica_dsns=r.get("MAIL_POSTGRES_REPLICA_DSNS", _dsn_list, ()),
        operation_timeout=r.get("MAIL_POSTGRES_OPERATION_TIMEOUT", pos_dur, PostgresSettings.operation_timeout),
        max_open_conns=r.get("MAIL_POSTGRES_MAX_OPEN_CONNS", _int_in(2, 10_000), 25),
        max_idle_conns=r.get("MAIL_POSTGRES_MAX_IDLE_CONNS", _int_in(0, 10_000), 10),
        conn_max_lifetime=r.get("MAIL_POSTGRES_CONN_MAX_LIFETIME", pos_dur, PostgresSettings.conn_max_lifetime),
    )
    if postgres.max_idle_conns > postgres.max_open_conns:
        r.problems.append("MAIL_POSTGRES_MAX_IDLE_CONNS: must not exceed MAIL_POSTGRES_MAX_OPEN_CONNS")

    mode: SmtpMode = r.get("MAIL_SMTP_MODE", _choice("stub", "smtp"), "stub")
    if mode == "smtp":
        smtp_addr: HostPort | None = r.required("MAIL_SMTP_ADDR", parse_host_port)
        from_email = r.required("MAIL_SMTP_FROM_EMAIL", _sender) or ""
    else:
        smtp_addr = r.get("MAIL_SMTP_ADDR", parse_host_port, None)
        from_email = r.get("MAIL_SMTP_FROM_EMAIL", _sender, "mailsvc@localhost")
    outbox = r.get("MAIL_STUB_OUTBOX_DIR", str, "")
    smtp = SmtpSettings(
        mode=mode,
        addr=smtp_addr,
        username=r.get("MAIL_SMTP_USERNAME", str, ""),
        password=r.get("MAIL_SMTP_PASSWORD", Secret, Secret("")),
        from_email=from_email,
        from_name=r.get("MAIL_SMTP_FROM_NAME", _no_crlf, ""),
        timeout=r.get("MAIL_SMTP_TIMEOUT", pos_dur, SmtpSettings.timeout),
        insecure_skip_verify=r.get("MAIL_SMTP_INSECURE_SKIP_VERIFY", parse_bool, False),
        tls=r.get("MAIL_SMTP_TLS", _choice("auto", "starttls", "implicit", "none"), "auto"),
        stub_outbox_dir=Path(outbox) if outbox else None,
    )
    work = WorkSettings(
        template_dir=r.get("MAIL_TEMPLATE_DIR", Path, WorkSettings.template_dir),
        attempt_worker_concurrency=r.get("MAIL_ATTEMPT_WORKER_CONCURRENCY", _int_in(1, 1024), 16),
        stream_block_timeout=r.get("MAIL_STREAM_BLOCK_TIMEOUT", pos_dur, WorkSettings.stream_block_timeout),
        stream_batch_size=r.get("MAIL_STREAM_BATCH_SIZE", _int_in(1, 10_000), 500),
        operator_request_timeout=r.get("MAIL_OPERATOR_REQUEST_TIMEOUT", pos_dur, WorkSettings.operator_request_timeout),
        idempotency_ttl=r.get("MAIL_IDEMPOTENCY_TTL", pos_dur, WorkSettings.idempotency_ttl),
        delivery_retention=r.get("MAIL_DELIVERY_RETENTION", pos_dur, WorkSettings.delivery_retention),
        malformed_command_retention=r.get(
            "MAIL_MALFORMED_COMMAND_RETENTION", pos_dur, WorkSettings.malformed_command_retention
        ),
        cleanup_interval=r.get("MAIL_CLEANUP_INTERVAL", pos_dur, WorkSettings.cleanup_interval),
        retry_base_delay=r.get("MAIL_RETRY_BASE_DELAY", pos_dur, WorkSettings.retry_base_delay),
        retry_max_delay=r.get("MAIL_RETRY_MAX_DELAY", pos_dur, WorkSettings.retry_max_delay),
        retry_max_attempts=r.get("MAIL_RETRY_MAX_ATTEMPTS", _int_in(1, 1000), 10),
        max_rendered_bytes=r.get(
            "MAIL_MAX_RENDERED_BYTES", _byte_size_in(1024, 64 * 1024 * 1024), WorkSettings.max_rendered_bytes
        ),
    )
    if work.retry_base_delay > work.retry_max_delay:
        r.problems.append("MAIL_RETRY_BASE_DELAY: must not exceed MAIL_RETRY_MAX_DELAY")
    if work.idempotency_ttl > work.delivery_retention:
        # retention deletes the delivery and its key with it: a replay after that would send again
        r.problems.append(
            f"MAIL_IDEMPOTENCY_TTL: {format_duration(work.idempotency_ttl)} must not exceed MAIL_DELIVERY_RETENTION"
            f" ({format_duration(work.delivery_retention)}): a key must never outlive its delivery"
        )

    exporter = _choice("otlp", "console", "none")
    protocol = _choice("grpc", "http/protobuf")
    telemetry = TelemetrySettings(
        service_name=r.get("OTEL_SERVICE_NAME", _no_crlf, "mailsvc"),
        traces_exporter=r.get("OTEL_TRACES_EXPORTER", exporter, "none"),
        metrics_exporter=r.get("OTEL_METRICS_EXPORTER", exporter, "none"),
        otlp_protocol=r.get("OTEL_EXPORTER_OTLP_PROTOCOL", protocol, "http/protobuf"),
        otlp_traces_protocol=r.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", protocol, None),
        otlp_metrics_protocol=r.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", protocol, None),
        stdout_traces_enabled=r.get("MAIL_OTEL_STDOUT_TRACES_ENABLED", parse_bool, False),
        stdout_metrics_enabled=r.get("MAIL_OTEL_STDOUT_METRICS_ENABLED", parse_bool, False),
    )
    if r.problems:
        raise SettingsError(r.problems)
    return Settings(process, http, redis, postgres, smtp, work, telemetry)


def describe(settings: Settings) -> dict[str, Any]:
    """A loggable view of the settings: secrets stay masked through `Secret.__repr__`."""
    out: dict[str, Any] = {}
    for group in fields(settings):
        value = getattr(settings, group.name)
        out[group.name] = {f.name: str(getattr(value, f.name)) for f in fields(value)}
    return out
