"""What the service listens on and talks to: its HTTP listener, Redis, PostgreSQL, the SMTP
provider and the telemetry exporters. Each field declares its variable, parser, default and one
line of meaning (`setting`); `.env.example` and the README table are generated from them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import ClassVar, Literal

from mailsvc.settings.declare import ExternalVariable, setting, settings_group
from mailsvc.settings.values import (
    HostPort,
    Secret,
    acl_username,
    host_ports,
    int_in,
    non_empty,
    one_of,
    parse_bool,
    parse_host_port,
    positive_duration,
    secret_dsn,
    secret_dsns,
    secret_list,
    sender,
    single_line,
)

SmtpMode = Literal["stub", "smtp"]
SmtpTls = Literal["auto", "starttls", "implicit", "none"]
OtelExporter = Literal["otlp", "console", "none"]
OtlpProtocol = Literal["grpc", "http/protobuf"]

_exporter = one_of("otlp", "console", "none")
_protocol = one_of("grpc", "http/protobuf")


@settings_group
class HttpSettings:
    """Internal HTTP listener."""

    addr: HostPort = setting(
        "MAIL_INTERNAL_HTTP_ADDR",
        parse_host_port,
        default=HostPort("", 8080),
        doc='Listen address; ":8080" means all interfaces, "127.0.0.1:8080" loopback only.',
    )
    read_header_timeout: timedelta = setting(
        "MAIL_INTERNAL_HTTP_READ_HEADER_TIMEOUT",
        positive_duration,
        default=timedelta(seconds=2),
        doc="A request's head must arrive within this after it starts (or after connect).",
    )
    read_timeout: timedelta = setting(
        "MAIL_INTERNAL_HTTP_READ_TIMEOUT",
        positive_duration,
        default=timedelta(seconds=10),
        doc="The whole request (head and body) must arrive within this.",
    )
    idle_timeout: timedelta = setting(
        "MAIL_INTERNAL_HTTP_IDLE_TIMEOUT",
        positive_duration,
        default=timedelta(minutes=1),
        doc="A keep-alive connection is closed when no complete request head follows a response within this"
        " (stray bytes such as a bare CRLF do not count as a request).",
    )
    intake_tokens: tuple[Secret, ...] = setting(
        "MAIL_INTERNAL_HTTP_INTAKE_TOKENS",
        secret_list,
        default=(),
        doc="Bearer tokens allowed to POST /deliveries only (empty: no token checks, trusted network).",
    )
    operator_tokens: tuple[Secret, ...] = setting(
        "MAIL_INTERNAL_HTTP_OPERATOR_TOKENS",
        secret_list,
        default=(),
        doc="Bearer tokens allowed on every route (empty: no token checks, trusted network).",
    )
    max_body_bytes: int = 1024 * 1024  # SPEC's request bound; not a variable


@settings_group
class RedisSettings:
    """Redis."""

    master_addr: HostPort = setting(
        "MAIL_REDIS_MASTER_ADDR",
        parse_host_port,
        required=True,
        example="127.0.0.1:6379",
        doc="Redis master address, host:port (the command stream lives here).",
    )
    password: Secret = setting(
        "MAIL_REDIS_PASSWORD",
        Secret,
        required=True,
        allow_empty=True,
        example="",
        doc="Redis password; must be set, may be empty.",
    )
    username: str = setting(
        "MAIL_REDIS_USERNAME",
        acl_username,
        default="",
        doc="Redis ACL user for both clients (optional; empty: the default user). The service needs"
        " +xread +xinfo|stream +ping +client|setname on the command stream (+xadd for `mailsvc send`).",
    )
    replica_addrs: tuple[HostPort, ...] = setting(
        "MAIL_REDIS_REPLICA_ADDRS",
        host_ports,
        default=(),
        doc="Redis replica addresses; accepted for compatibility, the stream is always read from the master.",
    )
    db: int = setting("MAIL_REDIS_DB", int_in(0, 15), default=0, doc="Redis logical database number (0-15).")
    operation_timeout: timedelta = setting(
        "MAIL_REDIS_OPERATION_TIMEOUT",
        positive_duration,
        default=timedelta(seconds=1),
        doc="Bound on each Redis command (and on the startup PING).",
    )
    command_stream: str = setting(
        "MAIL_REDIS_COMMAND_STREAM",
        non_empty,
        default="mail:commands",
        doc="Stream key the notification service XADDs send_email commands to.",
    )
    event_stream: str = setting(
        "MAIL_REDIS_EVENT_STREAM",
        str.strip,
        default="mail:events",
        allow_empty=True,
        doc="Stream key delivery events are published to (CloudEvents attributes); empty: publishing off.",
    )
    event_stream_maxlen: int = setting(
        "MAIL_EVENT_STREAM_MAXLEN",
        int_in(1, 2**62),
        default=1_000_000,
        doc="The event stream is capped near this many entries (XADD MAXLEN ~).",
    )


@settings_group
class PostgresSettings:
    """PostgreSQL."""

    primary_dsn: Secret = setting(
        "MAIL_POSTGRES_PRIMARY_DSN",
        secret_dsn,
        required=True,
        example="postgresql://postgres@127.0.0.1:5432/mailsvc",
        doc="PostgreSQL primary DSN: all durable state. postgres:// or postgresql:// URL.",
    )
    replica_dsns: tuple[Secret, ...] = setting(
        "MAIL_POSTGRES_REPLICA_DSNS",
        secret_dsns,
        default=(),
        doc="Read replicas for operator GET routes (writes always use the primary).",
    )
    operation_timeout: timedelta = setting(
        "MAIL_POSTGRES_OPERATION_TIMEOUT",
        positive_duration,
        default=timedelta(seconds=5),
        doc="Bound on each statement (server-side statement_timeout; the client gives up 1s later) and on connecting.",
    )
    max_open_conns: int = setting(
        "MAIL_POSTGRES_MAX_OPEN_CONNS",
        int_in(2, 10_000),
        default=25,
        doc=(
            "Most connections per engine (kept pool plus overflow); the scheduler and result writer"
            " have 4 more of their own."
        ),
    )
    max_idle_conns: int = setting(
        "MAIL_POSTGRES_MAX_IDLE_CONNS",
        int_in(0, 10_000),
        default=10,
        doc="Connections kept open when idle (at most MAIL_POSTGRES_MAX_OPEN_CONNS).",
    )
    conn_max_lifetime: timedelta = setting(
        "MAIL_POSTGRES_CONN_MAX_LIFETIME",
        positive_duration,
        default=timedelta(minutes=30),
        doc="A connection older than this is replaced.",
    )


@settings_group
class SmtpSettings:
    """SMTP provider."""

    mode: SmtpMode = setting(
        "MAIL_SMTP_MODE",
        one_of("stub", "smtp"),
        default="stub",
        doc="stub (accept and record, nothing leaves; auth mail is suppressed) | smtp (real delivery).",
    )
    addr: HostPort | None = setting(
        "MAIL_SMTP_ADDR", parse_host_port, default=None, doc="SMTP server host:port; required in smtp mode."
    )
    username: str = setting(
        "MAIL_SMTP_USERNAME",
        str,
        default="",
        doc="SMTP AUTH user (sent only over TLS or to a loopback server: 127.0.0.0/8, ::1 or localhost).",
    )
    password: Secret = setting("MAIL_SMTP_PASSWORD", Secret, default=Secret(""), doc="SMTP AUTH password.")
    from_email: str = setting(
        "MAIL_SMTP_FROM_EMAIL",
        sender,
        default="mailsvc@localhost",
        example="",  # left unset: copied into a .env, the stub's sender would mask smtp mode's requirement
        doc="Envelope sender and From address (ASCII local part); required in smtp mode,"
        " mailsvc@localhost in stub mode.",
    )
    from_name: str = setting("MAIL_SMTP_FROM_NAME", single_line, default="", doc="Display name in From.")
    timeout: timedelta = setting(
        "MAIL_SMTP_TIMEOUT",
        positive_duration,
        default=timedelta(seconds=15),
        doc="Bound on the WHOLE attempt, connect to final reply.",
    )
    insecure_skip_verify: bool = setting(
        "MAIL_SMTP_INSECURE_SKIP_VERIFY",
        parse_bool,
        default=False,
        doc="Skip certificate verification (self-signed local capture servers only; never in production).",
    )
    tls: SmtpTls = setting(
        "MAIL_SMTP_TLS",
        one_of("auto", "starttls", "implicit", "none"),
        default="auto",
        doc="auto (implicit TLS on 465, none to loopback, otherwise required STARTTLS) | starttls | implicit | none.",
    )
    stub_outbox_dir: Path | None = setting(
        "MAIL_STUB_OUTBOX_DIR",
        Path,
        default=None,
        doc="Stub mode: also write every accepted message as <delivery_id>.eml into this folder.",
    )


@settings_group
class TelemetrySettings:
    """Telemetry (standard OpenTelemetry variables plus two switches)."""

    service_name: str = setting(
        "OTEL_SERVICE_NAME", single_line, default="mailsvc", doc="service.name resource attribute."
    )
    traces_exporter: OtelExporter = setting(
        "OTEL_TRACES_EXPORTER", _exporter, default="none", doc="otlp | console | none."
    )
    metrics_exporter: OtelExporter = setting(
        "OTEL_METRICS_EXPORTER", _exporter, default="none", doc="otlp | console | none."
    )
    otlp_protocol: OtlpProtocol = setting(
        "OTEL_EXPORTER_OTLP_PROTOCOL", _protocol, default="http/protobuf", doc="grpc | http/protobuf."
    )
    otlp_traces_protocol: OtlpProtocol | None = setting(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        _protocol,
        default=None,
        doc="Per-signal override of the protocol (empty: OTEL_EXPORTER_OTLP_PROTOCOL).",
    )
    otlp_metrics_protocol: OtlpProtocol | None = setting(
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        _protocol,
        default=None,
        doc="Per-signal override of the protocol (empty: OTEL_EXPORTER_OTLP_PROTOCOL).",
    )
    stdout_traces_enabled: bool = setting(
        "MAIL_OTEL_STDOUT_TRACES_ENABLED", parse_bool, default=False, doc="Also print spans to stdout."
    )
    stdout_metrics_enabled: bool = setting(
        "MAIL_OTEL_STDOUT_METRICS_ENABLED", parse_bool, default=False, doc="Also print metrics to stdout."
    )

    external_variables: ClassVar[tuple[ExternalVariable, ...]] = (
        ExternalVariable(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://localhost:4318",
            "Collector endpoint, read by the OpenTelemetry SDK itself (default http://localhost:4318 or :4317).",
        ),
    )
